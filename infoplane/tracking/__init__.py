"""Recording while a network trains: which epochs (:mod:`~infoplane.tracking.schedule`), the I/O-free recorder
(:mod:`~infoplane.tracking.recorder`), the :class:`~infoplane.tracking.tracker.Tracker` that decides when to estimate
and write, and ``torch.distributed`` (:mod:`~infoplane.tracking.distributed`)."""

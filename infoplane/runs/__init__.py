"""The run directory: its format (:mod:`~infoplane.runs.format`), what goes in ``meta.json``
(:mod:`~infoplane.runs.meta`), its lifecycle and what infoplane may delete (:mod:`~infoplane.runs.lifecycle`), the
writer (:mod:`~infoplane.runs.writer`), the reader (:mod:`~infoplane.runs.reader`) and re-estimation from saved
activations (:mod:`~infoplane.runs.reestimate`)."""

"""Plug-ins for the frameworks researchers train and watch runs with.

Each module imports its framework only when used, and a missing framework raises an ImportError that names
the extra to install:

- :mod:`infoplane.integrations.lightning`: ``InfoPlaneCallback`` for PyTorch Lightning (``infoplane[lightning]``)
- :mod:`infoplane.integrations.huggingface`: ``InfoPlaneTrainerCallback`` for ``transformers.Trainer``
  (``infoplane[huggingface]``)
- :mod:`infoplane.integrations.tensorboard`: ``TensorBoardSink`` (``infoplane[tensorboard]``)
- :mod:`infoplane.integrations.wandb`: ``WandbSink`` (``infoplane[wandb]``)
- :mod:`infoplane.integrations.sinks`: the sink protocol the tracker writes rows through, and ``as_sinks`` (both
  owned by :mod:`infoplane.tracking.sinks`), with what the backends share (:mod:`infoplane.integrations.backend`)
"""

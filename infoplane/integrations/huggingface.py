"""Hugging Face ``transformers``: record the information plane while a ``Trainer`` trains.

The callback probes at the end of each epoch, on the main process only, and records epoch 0 when training
begins. Hidden states are taken from modules chosen by name (by default every block of the model's first
``nn.ModuleList``, e.g. ``bert.encoder.layer.0``, ``.1``, ...) and pooled over tokens as the user chooses:
``"cls"`` (the first token), ``"mean"`` (over the real tokens, following the probe inputs' ``attention_mask``)
or ``"flatten"``. Needs ``pip install 'infoplane[huggingface]'``.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

from torch import nn

from infoplane.integrations.backend import require

if TYPE_CHECKING:
    from infoplane.runs.reader import Run
    from infoplane.tracking.tracker import Tracker

__all__ = ["InfoPlaneTrainerCallback", "block_names"]

_transformers = require("transformers", "huggingface", "infoplane.integrations.huggingface")
# The base class comes from the transformers installed at run time; its type is unknown here.
_TrainerCallback: Any = _transformers.TrainerCallback


def block_names(model: nn.Module) -> list[str]:
    """Names of the blocks of a model's first ``nn.ModuleList`` that holds parameters (the transformer layers).

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    list of str
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and any(True for _ in module.parameters()):
            return [f"{name}.{i}" for i in range(len(module))]
    raise ValueError(f"{type(model).__name__} has no nn.ModuleList of blocks; pass layers= with module names")


def _round_epoch(value):
    e = round(float(value or 0.0))
    if abs(float(value or 0.0) - e) > 1e-6:
        raise ValueError(f"the trainer reports a fractional epoch {value}; InfoPlaneTrainerCallback probes at "
                         f"epoch ends only")
    return int(e)


class InfoPlaneTrainerCallback(_TrainerCallback):
    """A ``transformers.TrainerCallback`` recording the information plane of the model being trained.

    Parameters
    ----------
    inputs : dict of tensors, tensor, or a non-shuffling DataLoader
        Probe inputs passed to the model (``model(**inputs)`` for a dict such as ``{"input_ids": ...,
        "attention_mask": ...}``), or batches of them with ``labels``.
    labels : tensor or array of int [N], or None with a loader
    layers : list of str, dict or None
        Module names or glob patterns (each pooled with ``pool``), or a dict from name to a pooling
        (``"cls"``, ``"mean"``, ``"flatten"``) or a callable on the module's output. Default: every block of
        the model's first ``nn.ModuleList`` (see :func:`block_names`).
    pool : {"cls", "mean", "flatten"}, default "cls"
        Pooling of the names given as a list (or chosen by default).
    out : str, os.PathLike or None, optional
        Run directory; default ``<args.output_dir>/infoplane``. None keeps the run in memory (:attr:`run`).
    **tracker_options
        Any other :class:`infoplane.Tracker` keyword (``estimators``, ``schedule``, ``loggers``, ``resume``,
        ``overwrite``, ...).

    Attributes
    ----------
    run : infoplane.Run or None
        The recorded run, after training.
    path : str or None
        The run directory.
    """

    _DEFAULT = object()

    def __init__(self, inputs: Any, labels: Any = None, *, layers: Any = None, pool: str = "cls", out: Any = _DEFAULT,
                 **tracker_options: Any) -> None:
        from infoplane.capture.hooks import POOLINGS, as_probe_tensors

        if pool not in POOLINGS:
            raise ValueError(f"pool must be one of {list(POOLINGS)}, got {pool!r}")
        self.inputs, self.labels = as_probe_tensors(inputs, labels)
        self.layers, self.pool, self.out = layers, pool, out
        self.tracker_options = dict(tracker_options)
        self.tracker: Optional[Tracker] = None
        self.run: Optional[Run] = None
        self.path: Optional[str] = None

    def _layers(self, model):
        layers = self.layers
        if layers is None:
            layers = block_names(model)
        if isinstance(layers, str):
            layers = [layers]
        if isinstance(layers, dict):
            return layers
        return {name: self.pool for name in layers}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Optional[nn.Module] = None,
                       **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.tracker is not None:
            return
        from infoplane.tracking.tracker import Tracker

        out = os.path.join(args.output_dir, "infoplane") if self.out is self._DEFAULT else self.out
        self.tracker = Tracker(model, self.inputs, self.labels, layers=self._layers(model), out=out,
                               **self.tracker_options)
        self.path = self.tracker.path
        self.tracker.step(_round_epoch(state.epoch))

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Optional[nn.Module] = None,
                     **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.step(_round_epoch(state.epoch))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            tracker.close()
            self.run = tracker.run

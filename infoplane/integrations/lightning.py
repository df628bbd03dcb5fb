"""PyTorch Lightning: record the information plane of a LightningModule while a ``Trainer`` fits it.

::

    trainer = Trainer(max_epochs=30, callbacks=[InfoPlaneCallback(x_probe, y_probe, schedule=every(1))])

Works with ``pytorch_lightning`` and with ``lightning.pytorch`` (whichever is installed; the callback is an
instance of both packages' ``Callback`` when both are). Needs ``pip install 'infoplane[lightning]'``.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from infoplane.runs.reader import Run
    from infoplane.tracking.tracker import Tracker

__all__ = ["InfoPlaneCallback"]


def _callback_bases():
    bases = []
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            bases.append(importlib.import_module(name).Callback)
        except ImportError:
            continue
    if not bases:
        raise ImportError("infoplane.integrations.lightning needs PyTorch Lightning: "
                          "pip install 'infoplane[lightning]' (or install lightning)")
    return tuple(dict.fromkeys(bases))


_LOG_DIR = object()  # sentinel: the run directory follows the trainer's log directory


def _numeric_metrics(metrics):
    out = {}
    for name, value in dict(metrics or {}).items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if name not in ("seed", "epoch") and v == v:  # NaN metrics are left out, never stored as "absent"
            out[name] = v
    return out


# mypy cannot follow bases unpacked at run time (from whichever Lightning is installed).
class InfoPlaneCallback(*_callback_bases()):  # type: ignore[misc]
    """Record the information plane of the LightningModule being fitted.

    Epoch ``e`` is the network after ``e`` epochs of training, as everywhere in infoplane: epoch 0 is recorded
    when training starts, then epoch ``e`` at the end of each training epoch whose number of completed epochs
    is in the schedule. Only the global-zero process probes. The probe pass leaves no hook on the model
    (hooks live for one forward pass), and the tracker is closed at the end of training, at fit end, and on an
    exception (then its run stays resumable).

    Parameters
    ----------
    inputs : tensor, tuple/dict of tensors, or a non-shuffling DataLoader of ``(inputs, labels)``
        Probe inputs, as for :class:`infoplane.Tracker` (passed to the LightningModule's ``forward``).
    labels : tensor or array of int [N], or None with a loader
    out : str, os.PathLike or None, optional
        Run directory. Default: ``<trainer.log_dir>/infoplane`` (the TensorBoard logger's version directory,
        or ``default_root_dir`` without a logger). None keeps the run in memory (:attr:`run`).
    log_to_loggers : bool, default True
        Also log scalars and the final figure through the trainer's TensorBoard and W&B loggers (other
        loggers are left alone).
    log_metrics : bool, default True
        Store the trainer's numeric ``callback_metrics`` (e.g. a logged ``train_loss``) in ``metrics.csv``.
    **tracker_options
        Any :class:`infoplane.Tracker` keyword: ``layers``, ``estimators``, ``schedule``, ``seed``, ``loggers``,
        ``resume``, ``overwrite``, ...

    Attributes
    ----------
    tracker : infoplane.Tracker or None
        The tracker while training runs.
    run : infoplane.Run or None
        The recorded run (after fit).
    path : str or None
        The run directory.

    Notes
    -----
    Checkpoints: :meth:`state_dict` flushes the tracker (so the run directory holds every epoch up to the
    checkpoint) and stores the run directory; a trainer resumed with ``ckpt_path=`` restores it through
    :meth:`load_state_dict` and continues the same run directory, recording no epoch twice.
    """

    def __init__(self, inputs: Any, labels: Any = None, *, out: Any = _LOG_DIR, log_to_loggers: bool = True,
                 log_metrics: bool = True, **tracker_options: Any) -> None:
        super().__init__()
        from infoplane.capture.hooks import as_probe_tensors

        # Validated now, so that a bad probe set fails before the trainer starts.
        self.inputs, self.labels = as_probe_tensors(inputs, labels)
        self.out = out
        self.log_to_loggers = bool(log_to_loggers)
        self.log_metrics = bool(log_metrics)
        self.tracker_options = dict(tracker_options)
        for key in ("out", "model", "inputs", "labels"):
            if key in self.tracker_options:
                raise TypeError(f"InfoPlaneCallback sets {key!r} itself")
        self.tracker: Optional[Tracker] = None
        self.run: Optional[Run] = None
        self.path: Optional[str] = None
        self._restored_path = None

    # --------------------------------------------------------------------------------------------- helpers
    def _run_dir(self, trainer):
        if self._restored_path is not None:
            return self._restored_path
        if self.out is _LOG_DIR:
            base = trainer.log_dir or trainer.default_root_dir
            return os.path.join(base, "infoplane")
        return None if self.out is None else os.fspath(self.out)

    def _sinks(self, trainer):
        from infoplane.tracking.sinks import as_sinks

        sinks = as_sinks(self.tracker_options.get("loggers"))
        if self.log_to_loggers:
            for logger in trainer.loggers:
                try:
                    sinks.extend(as_sinks(logger))
                except (TypeError, ImportError):
                    continue  # e.g. a CSVLogger: it cannot show scalars by tag or figures
        return sinks

    def _step(self, trainer, epoch):
        metrics = _numeric_metrics(trainer.callback_metrics) if self.log_metrics and epoch > 0 else {}
        self.tracker.step(int(epoch), **metrics)

    # ------------------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Not on_fit_start: a resumed trainer restores its epoch counter only after that hook.
        if not trainer.is_global_zero or self.tracker is not None:
            return
        from infoplane.tracking.tracker import Tracker

        options = dict(self.tracker_options)
        options["loggers"] = self._sinks(trainer)
        path = self._run_dir(trainer)
        if self._restored_path is not None:
            options["resume"], options["overwrite"] = True, False
        self.tracker = Tracker(pl_module, self.inputs, self.labels, out=path, **options)
        self.path = self.tracker.path
        self._step(trainer, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker is not None:
            # current_epoch still counts from 0 here: after it, current_epoch + 1 epochs are complete.
            self._step(trainer, trainer.current_epoch + 1)

    def _close(self):
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            tracker.close()
            self.run = tracker.run

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            tracker.__exit__(type(exception), exception, exception.__traceback__)
            self.run = tracker.run

    # ----------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The run directory (and the epochs written), after writing every buffered epoch."""
        if self.tracker is not None:
            self.tracker.flush()
        return {"path": self.path, "epochs": [] if self.tracker is None else
                sorted({int(r.epoch) for r in self.tracker.run.rows})}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the run directory stored in a checkpoint."""
        self._restored_path = state_dict.get("path")

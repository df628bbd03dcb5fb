"""Sinks: where a tracker logs its rows besides the run directory (TensorBoard, W&B, your own).

A sink is any object with two methods:

- ``log_rows(rows, run)``: called each time the tracker writes estimated rows (:class:`infoplane.runs.writer.Row`
  tuples, sorted by seed, epoch, layer, estimator); ``run`` is the run so far (an in-memory
  :class:`~infoplane.runs.reader.Run`), which tells the sink the seeds, layers and estimators.
- ``close(run)``: called once when the tracker closes, with the complete run (draw the final figure here).

A sink may also have ``log_gradients(records, run)``: called with the gradient statistics
(:class:`infoplane.runs.gradfile.GradientRecord` lines) written with those rows, when the tracker records them.

:func:`as_sinks` turns what users pass as ``Tracker(loggers=...)`` into sinks; the TensorBoard and W&B sinks
themselves live in :mod:`infoplane.integrations`, imported only when such a logger is given.
"""
from __future__ import annotations

import os
from typing import Any, Protocol, Sequence

from infoplane.runs.format import Row
from infoplane.runs.reader import Run

__all__ = ["Sink", "as_sinks"]


class Sink(Protocol):
    """What ``Tracker(loggers=...)`` logs through (see the module's documentation)."""

    def log_rows(self, rows: Sequence[Row], run: Run) -> None: ...

    def close(self, run: Run) -> None: ...


def _is_lightning_logger(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return hasattr(obj, "experiment") and ("lightning" in module)


def as_sinks(loggers: Any) -> list[Sink]:
    """Sinks for ``Tracker(loggers=...)``.

    Parameters
    ----------
    loggers : None, object or list of objects
        Each one of: a sink (``log_rows`` and ``close``); a TensorBoard ``SummaryWriter`` (anything with
        ``add_scalar`` and ``add_figure``); a directory path (a new TensorBoard log directory); a W&B run
        (``wandb.init(...)``); a Lightning ``TensorBoardLogger`` or ``WandbLogger``.

    Returns
    -------
    list of sinks
    """
    if loggers is None:
        return []
    if isinstance(loggers, (list, tuple)):
        items = list(loggers)
    else:
        items = [loggers]
    return [_as_sink(x) for x in items]


def _as_sink(obj: Any) -> Sink:
    if hasattr(obj, "log_rows") and hasattr(obj, "close"):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        from infoplane.integrations.tensorboard import TensorBoardSink
        return TensorBoardSink(obj)
    if _is_lightning_logger(obj):
        name = type(obj).__name__
        if "TensorBoard" in name:
            from infoplane.integrations.tensorboard import TensorBoardSink
            return TensorBoardSink(obj.experiment)
        if "Wandb" in name:
            from infoplane.integrations.wandb import WandbSink
            return WandbSink(obj.experiment)
        raise TypeError(f"loggers: a Lightning {name} cannot show infoplane's scalars; use a TensorBoardLogger or "
                        f"a WandbLogger")
    if hasattr(obj, "add_scalar") and hasattr(obj, "add_figure"):
        from infoplane.integrations.tensorboard import TensorBoardSink
        return TensorBoardSink(obj)
    if (type(obj).__module__ or "").startswith("wandb") and hasattr(obj, "log") and hasattr(obj, "define_metric"):
        from infoplane.integrations.wandb import WandbSink
        return WandbSink(obj)
    raise TypeError(f"loggers: cannot log to a {type(obj).__name__}; pass a TensorBoard SummaryWriter or log "
                    f"directory, a wandb run, a Lightning TensorBoardLogger/WandbLogger, or an object with "
                    f"log_rows(rows, run) and close(run)")

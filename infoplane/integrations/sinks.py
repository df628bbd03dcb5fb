"""Sinks: where a tracker logs its rows besides the run directory (TensorBoard, W&B, your own).

A sink is any object with two methods:

- ``log_rows(rows, run)``: called each time the tracker writes estimated rows (:class:`infoplane.runs.writer.Row`
  tuples, sorted by seed, epoch, layer, estimator); ``run`` is the run so far (an in-memory
  :class:`~infoplane.runs.writer.Run`), which tells the sink the seeds, layers and estimators.
- ``close(run)``: called once when the tracker closes, with the complete run (draw the final figure here).

:func:`as_sinks` turns what users pass as ``Tracker(loggers=...)`` into sinks. The scalar tags and the figure
are the same in every backend (:func:`scalar_tags`, :func:`plane_figure`).
"""
from __future__ import annotations

import math
import os
from collections import defaultdict

__all__ = ["as_sinks", "scalar_tags", "plane_figure", "rows_by_epoch", "log_run", "require", "as_run"]

#: Fields logged as scalars (lower bounds only when the estimator gives them).
FIELDS = ("ixt", "ity", "ixt_lower", "ity_lower")


def require(module, extra, what):
    """Import ``module`` or raise an ImportError naming the extra that installs it.

    Parameters
    ----------
    module : str
        Importable name (``"tensorboard"``).
    extra : str
        infoplane extra that installs it (``"tensorboard"``).
    what : str
        What needs it, for the message.

    Returns
    -------
    module
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{what} needs {module.split('.')[0]}: pip install 'infoplane[{extra}]' "
                          f"({err})") from None


def scalar_tags(row, n_seeds=1):
    """The scalar tags and values of one row.

    Parameters
    ----------
    row : Row
    n_seeds : int
        With several seeds, each tag ends in ``/seed<seed>`` so that the seeds' curves stay apart.

    Returns
    -------
    list of (str, float)
        ``("infoplane/<estimator>/ixt/<layer>", bits)`` and the same for ``ity`` (and the lower bounds when
        present); NaN values (absent) are left out.
    """
    suffix = f"/seed{row.seed}" if n_seeds > 1 else ""
    out = []
    for field in FIELDS:
        value = float(getattr(row, field))
        if not math.isnan(value):
            out.append((f"infoplane/{row.estimator}/{field}/{row.layer}{suffix}", value))
    return out


def as_run(run):
    """A :class:`~infoplane.runs.writer.Run` from a Run or a run directory."""
    from infoplane.runs.writer import Run, load_run

    if isinstance(run, Run):
        return run
    if isinstance(run, (str, os.PathLike)):
        return load_run(run)
    raise TypeError(f"expected an infoplane Run or the path of a run directory, got {type(run).__name__}")


def rows_by_epoch(rows):
    """Rows grouped by epoch, in epoch order: ``[(epoch, [rows])]``."""
    groups = defaultdict(list)
    for r in rows:
        groups[int(r.epoch)].append(r)
    return sorted(groups.items())


def plane_figure(run, estimator):
    """The epoch-coloured information plane of ``run`` for one estimator (a matplotlib Figure).

    The caller closes it (``matplotlib.pyplot.close(fig)``).
    """
    import warnings

    from infoplane import plot

    with warnings.catch_warnings():
        # A saturation note is drawn on the figure itself; the logger need not repeat it as a warning.
        warnings.simplefilter("ignore", plot.SaturationWarning)
        return plot.information_plane(run, estimator)


def log_run(run, sink):
    """Log a finished run (a Run or its directory) through a sink: every row, then the figure (what
    ``infoplane export`` does)."""
    run = as_run(run)
    sink.log_rows(list(run.rows), run)
    sink.close(run)


def _is_lightning_logger(obj):
    module = type(obj).__module__ or ""
    return hasattr(obj, "experiment") and ("lightning" in module)


def as_sinks(loggers):
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


def _as_sink(obj):
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

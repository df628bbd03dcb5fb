"""What the logger backends (:mod:`~infoplane.integrations.tensorboard`, :mod:`~infoplane.integrations.wandb`)
share, so that every backend logs the same things: the scalar tags of a row (:func:`scalar_tags`) and of a line
of gradient statistics (:func:`gradient_tags`), the figure
(:func:`plane_figure`), rows grouped by epoch, logging a finished run (:func:`log_run`), and :func:`require`, the
ImportError that names the extra to install.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from infoplane.runs.format import Row, SharpnessRow
from infoplane.runs.gradfile import GradientRecord
from infoplane.runs.reader import Run, as_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["scalar_tags", "gradient_tags", "sharpness_tags", "plane_figure", "rows_by_epoch", "log_run", "require",
           "as_run", "FIELDS", "GRADIENT_FIELDS"]

#: Fields logged as scalars (lower bounds only when the estimator gives them).
FIELDS = ("ixt", "ity", "ixt_lower", "ity_lower")
#: Gradient statistics logged as scalars.
GRADIENT_FIELDS = ("mean_norm", "std_norm", "snr")


def require(module: str, extra: str, what: str) -> Any:
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


def scalar_tags(row: Row, n_seeds: int = 1) -> list[tuple[str, float]]:
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
        present); NaN values (absent) are left out. A side variable's row gives only
        ``("infoplane/<estimator>/ity[<target>]/<layer>", bits)`` (its I(X;T) is the labels' row's).
    """
    suffix = f"/seed{row.seed}" if n_seeds > 1 else ""
    target = getattr(row, "target", "")
    if target:
        value = float(row.ity)
        return [] if math.isnan(value) else [(f"infoplane/{row.estimator}/ity[{target}]/{row.layer}{suffix}", value)]
    out = []
    for field in FIELDS:
        value = float(getattr(row, field))
        if not math.isnan(value):
            out.append((f"infoplane/{row.estimator}/{field}/{row.layer}{suffix}", value))
    return out


def gradient_tags(record: GradientRecord, n_seeds: int = 1) -> list[tuple[str, float]]:
    """The scalar tags and values of one line of gradient statistics.

    Parameters
    ----------
    record : GradientRecord
    n_seeds : int
        With several seeds, each tag ends in ``/seed<seed>``.

    Returns
    -------
    list of (str, float)
        ``("infoplane/gradients/<field>/<layer>", value)`` for ``mean_norm``, ``std_norm`` and ``snr``; absent
        values (a frozen layer, an epoch without steps) and an infinite SNR (no spread) are left out.
    """
    suffix = f"/seed{record.seed}" if n_seeds > 1 else ""
    out = []
    for field in GRADIENT_FIELDS:
        value = float(getattr(record, field))
        if math.isfinite(value):
            out.append((f"infoplane/gradients/{field}/{record.layer}{suffix}", value))
    return out


def sharpness_tags(row: SharpnessRow, n_seeds: int = 1) -> list[tuple[str, float]]:
    """The scalar tag of one sharpness line: ``("sharpness/<measure>", value)`` (``/seed<seed>`` appended with
    several seeds); a NaN value is left out.

    Parameters
    ----------
    row : SharpnessRow
    n_seeds : int

    Returns
    -------
    list of (str, float)
    """
    suffix = f"/seed{row.seed}" if n_seeds > 1 else ""
    value = float(row.value)
    return [] if math.isnan(value) else [(f"sharpness/{row.measure}{suffix}", value)]


def rows_by_epoch(rows: Iterable[Any]) -> list[tuple[int, list[Any]]]:
    """Rows (table rows, gradient records or sharpness lines) grouped by epoch, in epoch order:
    ``[(epoch, [rows])]``."""
    groups = defaultdict(list)
    for r in rows:
        groups[int(r.epoch)].append(r)
    return sorted(groups.items())


def plane_figure(run: Run, estimator: Optional[str]) -> Figure:
    """The epoch-coloured information plane of ``run`` for one estimator (a matplotlib Figure).

    The caller closes it (``matplotlib.pyplot.close(fig)``).
    """
    import warnings

    from infoplane import plot

    with warnings.catch_warnings():
        # A saturation note is drawn on the figure itself; the logger need not repeat it as a warning.
        warnings.simplefilter("ignore", plot.SaturationWarning)
        return plot.information_plane(run, estimator)


def log_run(run: Union[Run, str, os.PathLike], sink: Any) -> None:
    """Log a finished run (a Run or its directory) through a sink: every row, its gradient statistics (for a
    sink with ``log_gradients``), then the figure (what ``infoplane export`` does)."""
    run = as_run(run)
    sink.log_rows(list(run.rows), run)
    if run.gradients and hasattr(sink, "log_gradients"):
        sink.log_gradients(list(run.gradients.records), run)
    if run.sharpness and hasattr(sink, "log_sharpness"):
        sink.log_sharpness(list(run.sharpness.rows), run)
    sink.close(run)

"""What the logger backends (:mod:`~infoplane.integrations.tensorboard`, :mod:`~infoplane.integrations.wandb`)
share, so that every backend logs the same things: the scalar tags of a row (:func:`scalar_tags`), the figure
(:func:`plane_figure`), rows grouped by epoch, logging a finished run (:func:`log_run`), and :func:`require`, the
ImportError that names the extra to install.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from infoplane.runs.format import Row
from infoplane.runs.reader import Run, as_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["scalar_tags", "plane_figure", "rows_by_epoch", "log_run", "require", "as_run", "FIELDS"]

#: Fields logged as scalars (lower bounds only when the estimator gives them).
FIELDS = ("ixt", "ity", "ixt_lower", "ity_lower")


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


def rows_by_epoch(rows: Iterable[Row]) -> list[tuple[int, list[Row]]]:
    """Rows grouped by epoch, in epoch order: ``[(epoch, [rows])]``."""
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
    """Log a finished run (a Run or its directory) through a sink: every row, then the figure (what
    ``infoplane export`` does)."""
    run = as_run(run)
    sink.log_rows(list(run.rows), run)
    sink.close(run)

"""What the theory adds to a plane: the bound I(T;Y) <= min(I(X;T), H(Y)), the information-bottleneck curve of a
known p(x, y), and the points where the estimates break the data-processing inequality along a chain.

Each is drawn light and under the data (or, for the flags, as hollow rings around the points), so that it hides
no point of the plane; none changes the axes' limits.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from infoplane.bounds import IBCurve, ib_curve
from infoplane.runs.reader import Run
from infoplane.viz.drawing import add_note
from infoplane.viz.stats import ceilings, chain_report

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["draw_bound", "as_ib_curve", "draw_ib_curve", "draw_chain_flags", "BOUND_STYLE", "IB_STYLE"]

#: The bound min(I(X;T), H(Y)): a light line under every point.
BOUND_STYLE: dict[str, Any] = {"color": "0.72", "linewidth": 0.9, "linestyle": "-", "zorder": 0.8}
#: The information-bottleneck curve.
IB_STYLE: dict[str, Any] = {"color": "tab:blue", "linewidth": 1.2, "alpha": 0.45, "zorder": 0.9}


def draw_bound(ax: Axes, run: Run) -> None:
    """Draw I(T;Y) <= min(I(X;T), H(Y)) (for a continuous side variable, which has no ceiling: I(T;Z) <= I(X;T)).

    Parameters
    ----------
    ax : matplotlib Axes
        A plane whose limits are already set (:func:`infoplane.viz.drawing.limits`).
    run : Run
    """
    _, h_y = ceilings(run)
    right = max(ax.get_xlim()[1], ax.get_ylim()[1]) * 10  # beyond the axes: the line runs off the figure
    if h_y is None:
        xs, ys = [0.0, right], [0.0, right]
    else:
        xs, ys = [0.0, h_y, right], [0.0, h_y, h_y]
    ax.plot(xs, ys, scalex=False, scaley=False, label="_bound", **BOUND_STYLE)


def as_ib_curve(value: Any) -> IBCurve:
    """An :class:`~infoplane.bounds.IBCurve`, or one computed from a joint distribution ``p_xy[x, y]``.

    Parameters
    ----------
    value : IBCurve or array-like [|X|, |Y|]

    Returns
    -------
    IBCurve
    """
    if isinstance(value, IBCurve):
        return value
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"ib_curve must be an IBCurve (infoplane.ib_curve(p_xy)) or a joint distribution "
                        f"p_xy[x, y]; got {type(value).__name__}") from None
    return ib_curve(arr)


def draw_ib_curve(ax: Axes, curve: IBCurve, *, label: Optional[str] = "IB curve") -> None:
    """Draw the information-bottleneck curve, continued flat at I(X;Y) beyond its last point.

    Parameters
    ----------
    ax : matplotlib Axes
    curve : IBCurve
    label : str or None
        Legend entry (drawn only where the axes' legend is built from labelled artists).
    """
    right = max(ax.get_xlim()[1], float(curve.ixt[-1])) * 10
    xs = np.append(curve.ixt, right)
    ys = np.append(curve.ity, curve.ity[-1])
    ax.plot(xs, ys, scalex=False, scaley=False, label=label, **IB_STYLE)


def draw_chain_flags(ax: Axes, run: Run, estimator: Optional[str], mx: np.ndarray, my: np.ndarray,
                     tol: float = 0.0) -> int:
    """Ring the points where a layer holds more than the layer before it (:func:`infoplane.viz.stats.chain_report`).

    Nothing is drawn for a run whose layers are known not to form a chain (a skip connection): the inequality
    does not apply there, and a note below the axes says so.

    Parameters
    ----------
    ax : matplotlib Axes
    run : Run
    estimator : str or None
    mx, my : numpy.ndarray [n_epochs, n_layers]
        The drawn points (seed medians of I(X;T) and I(T;Y)).
    tol : float
        See :func:`infoplane.viz.stats.chain_report`.

    Returns
    -------
    int
        The number of violations found.
    """
    rep = chain_report(run, estimator, tol=tol)
    if rep.applies is False:
        add_note(ax, "not a chain: no data-processing check", color="0.45")
        return 0
    bad = rep.ixt | rep.ity
    if bad.any():
        e, j = np.nonzero(bad)
        ax.scatter(mx[e, j], my[e, j], s=90, facecolors="none", edgecolors="red", linewidths=0.9, zorder=3.5,
                   label="_chain_flags")
        add_note(ax, f"red rings: a layer above the one before it ({rep.count}x, data-processing inequality)",
                 color="red")
    return rep.count

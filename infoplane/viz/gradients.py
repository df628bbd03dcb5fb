"""The gradient figure: the norm of the mean and of the standard deviation of each layer's mini-batch gradients
against epoch, log-log, one colour per layer, and each layer's drift-to-diffusion transition marked (the layout
of Shwartz-Ziv & Tishby's figure), with the signal-to-noise ratio beside it.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import numpy as np

# isort: off
# drawing chooses a headless backend, when none is configured, before pyplot is imported.
from infoplane.viz.drawing import add_note, data_name, fraction_label, mark_incomplete, run_name

import matplotlib.pyplot as plt  # noqa: E402
# isort: on
from matplotlib.lines import Line2D  # noqa: E402

from infoplane.runs.reader import Run  # noqa: E402
from infoplane.viz.stats import as_run, median, quartiles, transitions  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["gradients"]


def gradients(run: Union[Run, str, os.PathLike], *, window: int = 5, threshold: float = 1.0, snr: bool = True) -> Figure:
    """Mean and standard deviation of each layer's gradient norm against epoch, with the transition marked.

    Left: per layer (one colour each), the norm of the mean gradient (solid) and the norm of the element-wise
    standard deviation (dashed) over each recorded epoch's mini-batches, log-log (epochs without optimiser
    steps, such as 0, are left out); a dotted vertical line marks each layer's transition from drift to
    diffusion (:func:`infoplane.viz.stats.transitions`). Right (``snr=True``): their ratio with the threshold.
    With several seeds, lines are medians over seeds, with the interquartile range shaded.

    Parameters
    ----------
    run : Run or path
        A run recorded with gradient statistics (``Tracker(gradients=True)``, or ``infoplane track``).
    window : int, default 5
        Recorded epochs per running-median window of the transition rule.
    threshold : float, default 1.0
        SNR below which the gradients' fluctuations dominate their mean.
    snr : bool, default True
        Draw the SNR panel.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        The run has no gradient statistics.
    """
    run = as_run(run)
    g = run.gradients
    if not g:
        raise ValueError(f"{run!r} has no gradient statistics; record them with Tracker(..., gradients=True) or "
                         f"`infoplane track` (without --no-gradients)")
    marks = transitions(run, window=window, threshold=threshold)
    fig, axes = plt.subplots(1, 2 if snr else 1, figsize=(11 if snr else 6, 4.2), layout="constrained",
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    x = g.epochs.astype(float)
    mean, std, ratio = g.get("mean_norm"), g.get("std_norm"), g.get("snr")
    handles = []
    for j, layer in enumerate(g.layers):
        if layer in g.frozen:
            continue
        colour = colours(j % 10)
        for k, (values, style) in enumerate(((mean, "-"), (std, "--"), (ratio, "-"))):
            if k == 2 and not snr:
                break
            ax = axes[0, 1 if k == 2 else 0]
            # an infinite SNR, or a zero spread (one batch per epoch), is off the log axis
            column = values[:, :, j]
            values = np.where(np.isfinite(column) & (column > 0), column, np.nan)
            med = median(values)
            ok = np.isfinite(med) & (x > 0)
            ax.plot(x[ok], med[ok], style, color=colour, linewidth=1.2)
            if values.shape[0] > 1:
                lo, hi = quartiles(values)
                ax.fill_between(x[ok], lo[ok], hi[ok], color=colour, alpha=0.15, linewidth=0)
        epoch = marks.get(layer)
        if epoch is not None and epoch > 0:
            for ax in axes[0]:
                ax.axvline(epoch, color=colour, linestyle=":", linewidth=1.2)
        handles.append(Line2D([], [], color=colour, label=layer if epoch is None else f"{layer} (transition {epoch})"))
    handles += [Line2D([], [], color="0.3", linestyle="-", label="norm of mean"),
                Line2D([], [], color="0.3", linestyle="--", label="norm of std")]
    left = axes[0, 0]
    _log_axes(left)
    left.set_xlabel("Epoch")
    left.set_ylabel("Gradient norm")
    # Below the panels, where it covers no line.
    fig.legend(handles=handles, title="Layer", fontsize=8, title_fontsize=8, loc="outside lower center",
               ncols=min(4, len(handles)))
    if snr:
        right = axes[0, 1]
        _log_axes(right)  # before the threshold line, which is no data
        right.axhline(threshold, color="0.35", linestyle="--", linewidth=1)
        right.set_xlabel("Epoch")
        right.set_ylabel("SNR (norm of mean / norm of std)")
    mark_incomplete(left, run)
    # Facts the run does not record are left out rather than shown as "n/a".
    parts = [p for p in (run_name(run), data_name(run), fraction_label(run)) if p] + ["gradient statistics"]
    if len(g.seeds) > 1:
        parts.append(f"median of {len(g.seeds)} seeds")
    parts.append(f"transition: running median of {window}, SNR < {threshold:g}")
    fig.suptitle(" | ".join(parts), fontsize=10)
    return fig


def _log_axes(ax: Axes) -> None:
    """Log-log axes; where nothing positive was drawn (one batch per epoch has no spread, hence no SNR; epoch 0
    alone has no x > 0), the axis stays linear and a note below says why it is empty."""
    # data lines only (the transition and threshold lines are drawn in axes coordinates on one side)
    drawn = [np.asarray(line.get_xydata(), dtype=float).reshape(-1, 2) for line in ax.get_lines()
             if line.get_transform() is ax.transData]
    points = np.concatenate(drawn) if drawn else np.empty((0, 2))
    for column, set_scale in ((0, ax.set_xscale), (1, ax.set_yscale)):
        values = points[:, column]
        if (values[np.isfinite(values)] > 0).any():
            set_scale("log")
    if not len(points):
        add_note(ax, "nothing to draw on log axes: no epoch with more than one optimiser step", color="0.35")

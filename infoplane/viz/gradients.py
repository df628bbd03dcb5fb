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
from infoplane.viz.drawing import data_name, fraction_label, mark_incomplete, run_name

import matplotlib.pyplot as plt  # noqa: E402
# isort: on
from matplotlib.lines import Line2D  # noqa: E402

from infoplane.runs.reader import Run  # noqa: E402
from infoplane.viz.stats import as_run, median, quartiles, transitions  # noqa: E402

if TYPE_CHECKING:
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
            values = np.where(np.isfinite(values[:, :, j]), values[:, :, j], np.nan)  # inf SNR: off the log axis
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
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("Epoch")
    left.set_ylabel("Gradient norm")
    left.legend(handles=handles, title="Layer", fontsize=8, title_fontsize=8)
    if snr:
        right = axes[0, 1]
        right.axhline(threshold, color="0.35", linestyle="--", linewidth=1)
        right.set_xscale("log")
        right.set_yscale("log")
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

"""Figures of flatness and memorisation beside the plane: the sharpness measures against epochs, Zhang et al.'s
two figures of a corruption sweep, and the information plane coloured (or sized) by a measure.

Every function takes runs (:class:`~infoplane.runs.reader.Run` or their directories) and returns a matplotlib
``Figure``; with ``out`` it also writes it (.png, .pdf or .svg). With several seeds, lines are medians over seeds
with shaded interquartile bands.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

# isort: off
# drawing chooses a headless backend, when none is configured, before pyplot is imported.
from infoplane.viz.drawing import (MARKERS, class_note, data_name, fraction_label, limits, mark_incomplete, run_name,
                                   plot_title)

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
# isort: on
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from infoplane.runs.reader import Run  # noqa: E402
from infoplane.viz.stats import as_run, median, quartiles, values  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["sharpness_curves", "memorization_curves", "corruption_error", "corruption_level", "plane"]

RunLike = Union[Run, str, os.PathLike]
FORMATS = (".png", ".pdf", ".svg")

#: How each measure reads on an axis (value units in brackets).
LABELS = {
    "hessian_top_eigenvalue": "top Hessian eigenvalue",
    "hessian_trace": "Hessian trace",
    "sam_sharpness": "SAM sharpness [loss]",
    "adaptive_sharpness": "adaptive (ASAM) sharpness [loss]",
    "random_sharpness": "random-direction sharpness [loss]",
}


def _save(fig: Figure, out: Union[str, os.PathLike, None]) -> Figure:
    if out is None:
        return fig
    path = os.fspath(out)
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise ValueError(f"out={path!r}: figures are written as .png, .pdf or .svg; give one of those extensions")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=150)
    return fig


def _epoch_axis(ax: Axes) -> None:
    # symlog keeps epoch 0 on a log-like axis: linear on [0, 1], logarithmic beyond.
    ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("Epoch")
    ax.set_xlim(left=0)


def _band(ax: Axes, x: np.ndarray, vals: np.ndarray, label: Optional[str], color: Any) -> None:
    """Median over seeds (rows of ``vals``) and, with several seeds, the interquartile band."""
    med = median(vals)
    ok = np.isfinite(med)
    ax.plot(x[ok], med[ok], color=color, marker="o", markersize=3, linewidth=1.2, label=label)
    if vals.shape[0] > 1:
        lo, hi = quartiles(vals)
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.2, linewidth=0)


def sharpness_curves(run: RunLike, measures: Optional[Sequence[str]] = None, *,
                     out: Union[str, os.PathLike, None] = None) -> Figure:
    """Each sharpness measure of a run against epoch, one panel per measure.

    Parameters
    ----------
    run : Run or path
        A run recorded with ``Tracker(sharpness=...)`` or ``infoplane track --sharpness``.
    measures : list of str, optional
        Which measures (default: all the run has).
    out : str or os.PathLike, optional
        Also write the figure there.

    Returns
    -------
    matplotlib.figure.Figure
        Median over seeds and interquartile band (several seeds); where a measure gives SAM's one-step value
        too, it is drawn dashed beside the multi-step one.
    """
    run = as_run(run)
    if not run.sharpness:
        raise ValueError(f"{run!r} has no sharpness measures; record them with Tracker(sharpness=...) or "
                         f"`infoplane track --sharpness ...`")
    names = list(run.sharpness.measures if measures is None else measures)
    for name in names:
        if name not in run.sharpness.measures:
            raise ValueError(f"no sharpness measure {name!r} in this run; measures: {run.sharpness.measures}")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.2, 4.2 * cols), 3.4 * rows), layout="constrained",
                             squeeze=False)
    x = run.epochs.astype(float)
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.set_visible(False)
            continue
        name = names[k]
        _band(ax, x, run.sharpness.get(name), "multi-step" if name in ("sam_sharpness", "adaptive_sharpness")
              else None, "C0")
        one = run.sharpness.get(name, "one_step")
        if np.isfinite(one).any():
            med = median(one)
            ok = np.isfinite(med)
            ax.plot(x[ok], med[ok], color="C1", linestyle="--", linewidth=1, label="one-step")
            ax.legend(fontsize=7)
        ax.set_ylabel(LABELS.get(name, name), fontsize=8)
        _epoch_axis(ax)
    # Facts the run does not record are left out rather than shown as "n/a".
    parts = [p for p in (run_name(run), "sharpness", data_name(run), fraction_label(run)) if p]
    if len(run.seeds) > 1:
        parts.append(f"median of {len(run.seeds)} seeds")
    if not run.complete:
        parts.append("INCOMPLETE run")
    subset = run.sharpness.settings.get("subset")
    if isinstance(subset, list) and subset:
        rows = len(subset[0]) if isinstance(subset[0], list) else len(subset)
        parts.append(f"{rows} training rows")
    fig.suptitle(" | ".join(parts), fontsize=8 if len(names) == 1 else 9)
    return _save(fig, out)


def corruption_level(run: Run) -> Optional[float]:
    """The fraction of corrupted training labels recorded in a run's ``meta.json``, or None when it says nothing.

    ``meta["corruption"]`` (the settings of :func:`infoplane.data.corrupt`): ``random_labels`` counts as 1,
    otherwise ``label_noise``.
    """
    entry = run.meta.get("corruption")
    if not isinstance(entry, dict):
        return None
    settings = entry.get("settings", entry)
    if settings.get("random_labels"):
        return 1.0
    level = settings.get("label_noise")
    return None if level is None else float(level)


def _levels(runs: Sequence[RunLike], levels: Optional[Sequence[float]]) -> tuple[list[Run], list[float]]:
    loaded = [as_run(r) for r in runs]
    if not loaded:
        raise ValueError("give at least one run")
    if levels is not None:
        if len(levels) != len(loaded):
            raise ValueError(f"levels gives {len(levels)} corruption level(s) for {len(loaded)} run(s); give one "
                             f"per run")
        return loaded, [float(v) for v in levels]
    found = [corruption_level(r) for r in loaded]
    missing = [str(r.path or repr(r)) for r, v in zip(loaded, found) if v is None]
    if missing:
        raise ValueError(f"the corruption level of {', '.join(missing)} is not in its meta.json; pass levels= (one "
                         f"fraction of corrupted labels per run)")
    return loaded, [float(v) for v in found if v is not None]


def memorization_curves(runs: Sequence[RunLike], levels: Optional[Sequence[float]] = None, *,
                        metric: str = "train_loss", out: Union[str, os.PathLike, None] = None) -> Figure:
    """Training loss against epoch, one line per corruption level (Zhang et al. 2017, figure 1a).

    Parameters
    ----------
    runs : list of Run or paths
        One run per corruption level.
    levels : list of float, optional
        Each run's fraction of corrupted labels; default: read from each run's ``meta.json``.
    metric : str, default "train_loss"
        The metric drawn (any of ``run.metric_names``).
    out : str or os.PathLike, optional
        Also write the figure there.

    Returns
    -------
    matplotlib.figure.Figure
    """
    loaded, found = _levels(runs, levels)
    fig, ax = plt.subplots(figsize=(6.0, 4.2), layout="constrained")
    order = np.argsort(found, kind="stable")
    cmap = plt.get_cmap("viridis")
    for rank, i in enumerate(order):
        run = loaded[i]
        if metric not in run.metric_names:
            raise ValueError(f"{run!r} has no metric {metric!r}; metrics: {run.metric_names}")
        colour = cmap(rank / max(1, len(order) - 1))
        _band(ax, run.epochs.astype(float), run.metric(metric), f"{found[i]:g}", colour)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(bottom=0)
    _epoch_axis(ax)
    ax.legend(title="corrupted labels", fontsize=8, title_fontsize=8)
    return _save(fig, out)


def corruption_error(runs: Sequence[RunLike], levels: Optional[Sequence[float]] = None, *,
                     metric: str = "test_acc", out: Union[str, os.PathLike, None] = None) -> Figure:
    """Test error after training against the fraction of corrupted labels (Zhang et al. 2017, figure 1c).

    The error is ``1 - metric`` at each run's last recorded epoch (the trained network), one point per seed.

    Parameters
    ----------
    runs : list of Run or paths
    levels : list of float, optional
        Each run's fraction of corrupted labels; default: read from each run's ``meta.json``.
    metric : str, default "test_acc"
        An accuracy metric of the runs (``train_acc`` gives the training error).
    out : str or os.PathLike, optional
        Also write the figure there.

    Returns
    -------
    matplotlib.figure.Figure
        Median over seeds joined by a line, each seed a faint point, the interquartile range as an error bar.
    """
    loaded, found = _levels(runs, levels)
    rates, meds, lo, hi = [], [], [], []
    fig, ax = plt.subplots(figsize=(5.2, 4.2), layout="constrained")
    for run, level in sorted(zip(loaded, found), key=lambda p: p[1]):
        if metric not in run.metric_names or not len(run.epochs):
            raise ValueError(f"{run!r} has no metric {metric!r}; metrics: {run.metric_names}")
        error = 1.0 - run.metric(metric)[:, -1]
        error = error[np.isfinite(error)]
        if not len(error):
            raise ValueError(f"{run!r}: {metric!r} is missing at its last epoch")
        ax.scatter(np.full(len(error), level), error, s=10, color="C0", alpha=0.3, linewidths=0)
        rates.append(level)
        meds.append(float(np.median(error)))
        lo.append(float(np.percentile(error, 25)))
        hi.append(float(np.percentile(error, 75)))
    m = np.array(meds)
    ax.errorbar(rates, m, yerr=[m - np.array(lo), np.array(hi) - m], color="C0", marker="o", markersize=4,
                capsize=3, linewidth=1.2)
    ax.set_xlabel("fraction of corrupted labels")
    ax.set_ylabel("test error" if metric.startswith("test") else f"1 - {metric}")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(bottom=0)
    return _save(fig, out)


def _quantity(run: Run, spec: str) -> tuple[np.ndarray, str]:
    """``[n_epochs]`` values (median over seeds) of ``epoch``, ``sharpness:<measure>`` or ``metric:<name>``."""
    if spec == "epoch":
        return run.epochs.astype(float), "Epoch"
    kind, _, name = spec.partition(":")
    if kind == "sharpness" and name:
        if name not in run.sharpness.measures:
            raise ValueError(f"no sharpness measure {name!r} in this run; measures: {run.sharpness.measures}")
        return median(run.sharpness.get(name)), LABELS.get(name, name)
    if kind == "metric" and name:
        if name not in run.metric_names:
            raise ValueError(f"no metric {name!r} in this run; metrics: {run.metric_names}")
        return median(run.metric(name)), name
    raise ValueError(f"{spec!r}: give 'epoch', 'sharpness:<measure>' or 'metric:<name>'")


def plane(run: RunLike, estimator: Optional[str] = None, *, color_by: str = "epoch", size_by: Optional[str] = None,
          ax: Optional[Axes] = None, out: Union[str, os.PathLike, None] = None) -> Figure:
    """The information plane (median over seeds) with each point's colour, and optionally size, given by a
    quantity of its epoch.

    Parameters
    ----------
    run : Run or path
    estimator : str or None
        Estimator name; None = the run's first.
    color_by : str, default "epoch"
        ``"epoch"``, ``"sharpness:<measure>"`` (e.g. ``"sharpness:hessian_top_eigenvalue"``) or
        ``"metric:<name>"`` (e.g. ``"metric:test_acc"``); the median over seeds at each epoch. A positive
        quantity spanning more than a decade gets a logarithmic colour scale.
    size_by : str, optional
        The same choices, for the marker area (from 6 to 90 points^2 over the quantity's range).
    ax : matplotlib Axes, optional
        Draw into it; default a new figure.
    out : str or os.PathLike, optional
        Also write the figure there.

    Returns
    -------
    matplotlib.figure.Figure
        Epochs where the colour quantity is missing are drawn as grey rings.
    """
    run = as_run(run)
    ixt, ity = values(run, estimator)
    mx, my = median(ixt), median(ity)
    colour, colour_label = _quantity(run, color_by)
    fig: Any
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 5.0), layout="constrained")
    else:
        fig = ax.figure
    have = np.isfinite(colour)
    positive = colour[have]
    if len(positive) and positive.min() > 0 and positive.max() / positive.min() > 10:
        norm: mcolors.Normalize = mcolors.LogNorm(positive.min(), positive.max())
    else:
        norm = mcolors.Normalize(*(positive.min(), positive.max()) if len(positive) else (0, 1))
    sizes = np.full(len(run.epochs), 22.0)
    if size_by is not None:
        size, size_label = _quantity(run, size_by)
        ok = np.isfinite(size)
        if ok.any():
            low, high = np.nanmin(size), np.nanmax(size)
            sizes = np.where(ok, 6 + 84 * (size - low) / (high - low if high > low else 1.0), 6.0)
    cmap = plt.get_cmap("viridis")
    handles = []
    for j, layer in enumerate(run.layers):
        ok = np.isfinite(mx[:, j]) & np.isfinite(my[:, j])
        marker = MARKERS[j % len(MARKERS)]
        ax.plot(mx[ok, j], my[ok, j], color="0.75", linewidth=0.6, zorder=1)
        sc = ax.scatter(mx[ok & have, j], my[ok & have, j], c=colour[ok & have], cmap=cmap, norm=norm,
                        s=sizes[ok & have], marker=marker, edgecolors="none", zorder=3)
        ax.scatter(mx[ok & ~have, j], my[ok & ~have, j], s=sizes[ok & ~have], marker=marker, facecolors="none",
                   edgecolors="0.6", linewidths=0.8, zorder=2)
        handles.append(Line2D([], [], linestyle="none", marker=marker, color="0.3", label=layer))
    limits(ax, run, ixt, ity)
    note = class_note(run)
    if note:
        handles.append(Line2D([], [], linestyle="none", label=note))
    ax.legend(handles=handles, title="Layer", fontsize=8, title_fontsize=8, loc="best", framealpha=0.8)
    mark_incomplete(ax, run)
    bar = fig.colorbar(sc, ax=ax)
    bar.set_label(colour_label)
    title = plot_title(run, estimator)
    if size_by is not None:
        title += f"\nmarker size: {size_label}"
    ax.set_title(title, fontsize=9)
    return _save(fig, out)

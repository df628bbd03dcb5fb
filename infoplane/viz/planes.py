"""Information-plane figures from a recorded :class:`~infoplane.runs.writer.Run`.

Every function takes a ``Run`` (from :func:`infoplane.load_run` or ``Tracker.run``) or the path of a run
directory, and returns a matplotlib ``Figure``; nothing here calls ``plt.show``. When no matplotlib backend is
configured (no ``MPLBACKEND``, none in ``matplotlibrc``, ``matplotlib.use`` not called, pyplot not yet imported),
importing this module selects the non-interactive ``Agg`` backend so that figures work on headless machines; a
backend chosen by the user is never replaced.

Visual conventions (see ``docs/plotting.md``):

- one point per (recorded epoch, layer), coloured by epoch with the ``gnuplot`` colormap; the colour scale is
  ``log(epoch + 1)`` when the epochs are log-spaced (see :func:`epoch_norm`), linear otherwise;
- the layers of one epoch joined by a thin grey line, one marker shape per layer;
- axes from 0 to the ceilings log2 N (I(X;T)) and H(Y) (I(T;Y)), drawn as dashed lines;
- several seeds: the per-seed median, and each epoch's interquartile range as a faint rectangle.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union, overload

import numpy as np

# isort: off
# drawing chooses a headless backend, when none is configured, before pyplot is imported.
from infoplane.viz.drawing import (CMAP, MARKERS, TRANSITION_LABEL, TRANSITION_STYLE,  # noqa: F401
                                   SaturationWarning, by_fraction, check_same_data, class_note, colorbar, epoch_norm,
                                   limits, mark_incomplete, mark_missing, outside_legend, plot_title, run_path,
                                   run_titles, runs_list, text_width, transition_points, warn_saturation, wrap_parts)

import matplotlib.pyplot as plt  # noqa: E402
# isort: on
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from infoplane.runs.reader import Run  # noqa: E402
from infoplane.viz.drawing import RunsLike  # noqa: E402
from infoplane.viz.gradients import gradients  # noqa: E402
from infoplane.viz.overlays import IB_STYLE, as_ib_curve, draw_bound, draw_chain_flags, draw_ib_curve  # noqa: E402
from infoplane.viz.stats import SATURATION_SHARE, SATURATION_TOL, saturated_layers  # noqa: E402,F401 (public names of plot)
from infoplane.viz.stats import as_run as _as_run  # noqa: E402
from infoplane.viz.stats import median as _median  # noqa: E402
from infoplane.viz.stats import plane_scale as _plane_scale  # noqa: E402
from infoplane.viz.stats import quartiles as _quartiles  # noqa: E402
from infoplane.viz.stats import values as _values  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

#: A run or its directory.
RunLike = Union[Run, str, os.PathLike]

__all__ = ["information_plane", "compare", "curves", "write_figures", "saturated_layers", "epoch_norm",
           "SaturationWarning"]

FORMATS = (".png", ".pdf", ".svg")


# ---------------------------------------------------------------------------------------------- planes
def _draw_plane(ax, run, estimator, norm, all_seeds, legend=True, ib=None, chain_flags=True):
    if estimator is not None and estimator not in run.estimators:
        mark_missing(ax, run, estimator)
        return []
    ixt, ity = _values(run, estimator)
    cmap = plt.get_cmap(CMAP)
    epochs = run.epochs
    mx, my = _median(ixt), _median(ity)  # [n_epochs, n_layers]

    if all_seeds and len(run.seeds) > 1:
        for s in range(len(run.seeds)):
            for j in range(len(run.layers)):
                ok = np.isfinite(ixt[s, :, j]) & np.isfinite(ity[s, :, j])
                ax.scatter(ixt[s, ok, j], ity[s, ok, j], c=epochs[ok], cmap=cmap, norm=norm, s=8, alpha=0.25,
                           marker=MARKERS[j % len(MARKERS)], linewidths=0, zorder=2)
    elif len(run.seeds) > 1:
        (x25, x75), (y25, y75) = _quartiles(ixt), _quartiles(ity)
        ok = np.isfinite(x25) & np.isfinite(y25)
        boxes = [[(x25[e, j], y25[e, j]), (x75[e, j], y25[e, j]), (x75[e, j], y75[e, j]), (x25[e, j], y75[e, j])]
                 for e, j in zip(*np.nonzero(ok))]
        box_colours = cmap(norm(epochs[np.nonzero(ok)[0]].astype(float)))
        ax.add_collection(PolyCollection(boxes, facecolors=box_colours, edgecolors="none", alpha=0.12,
                                         zorder=1.5))

    # Thin grey line through the layers of each epoch, in model order.
    segments = []
    for e in range(len(epochs)):
        ok = np.isfinite(mx[e]) & np.isfinite(my[e])
        if ok.sum() > 1:
            segments.append(np.column_stack([mx[e, ok], my[e, ok]]))
    ax.add_collection(LineCollection(segments, colors="0.5", linewidths=0.5, alpha=0.6, zorder=2.5))

    handles = []
    for j, layer in enumerate(run.layers):
        ok = np.isfinite(mx[:, j]) & np.isfinite(my[:, j])
        marker = MARKERS[j % len(MARKERS)]
        ax.scatter(mx[ok, j], my[ok, j], c=epochs[ok], cmap=cmap, norm=norm, s=22, marker=marker,
                   edgecolors="none", zorder=3, label=layer)
        handles.append(Line2D([], [], linestyle="none", marker=marker, color="0.3", label=layer))
    marks = transition_points(run, estimator)  # each layer's drift-to-diffusion epoch on its trajectory
    if marks:
        ax.scatter([m[2] for m in marks], [m[3] for m in marks], **TRANSITION_STYLE)
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="black",
                              label=TRANSITION_LABEL))
    limits(ax, run, ixt, ity, estimator)
    handles += theory(ax, run, estimator, mx, my, ib, chain_flags)
    if legend:
        note = class_note(run)
        if note:
            handles.append(Line2D([], [], linestyle="none", label=note))
        outside_legend(ax, handles)
    mark_incomplete(ax, run)
    return warn_saturation(ax, run, estimator)


@overload
def information_plane(run: RunLike, estimator: Optional[str] = ..., ax: None = ..., *,
                      all_seeds: bool = ..., target: Optional[str] = ..., ib_curve: Any = ...,
                      chain_flags: bool = ..., label: Optional[str] = ...) -> Figure: ...
@overload
def information_plane(run: RunLike, estimator: Optional[str] = ..., ax: Optional[Axes] = ..., *,
                      all_seeds: bool = ..., target: Optional[str] = ..., ib_curve: Any = ...,
                      chain_flags: bool = ..., label: Optional[str] = ...) -> Union[Figure, SubFigure]: ...
def information_plane(run: RunLike, estimator: Optional[str] = None, ax: Optional[Axes] = None, *,
                      all_seeds: bool = False, target: Optional[str] = None, ib_curve: Any = None,
                      chain_flags: bool = True, label: Optional[str] = None) -> Union[Figure, SubFigure]:
    """Draw one run's information plane.

    Parameters
    ----------
    run : Run or str or os.PathLike
        A run, or its directory.
    estimator : str or None
        Estimator name (``run.estimators``); None = the run's first.
    ax : matplotlib Axes or None
        Draw into this axes (its figure gets the colourbar); None creates a new figure.
    all_seeds : bool, default False
        With several seeds, also draw every seed's points faintly (instead of the interquartile boxes).
    target : str or None
        A side variable of the run (``run.targets``): draw (I(X;T), I(T;Z)) instead of (I(X;T), I(T;Y)).
    ib_curve : IBCurve, array-like p_xy[x, y], or None
        Also draw the information-bottleneck curve (:func:`infoplane.ib_curve`) of the data's joint
        distribution, given as a curve or as ``p_xy`` (computed here). Every point above it is an estimation error.
    chain_flags : bool, default True
        Ring the points that break the data-processing inequality along the layers (see
        :func:`infoplane.viz.stats.chain_report`); nothing is flagged for a network that is not a chain.
    label : str, optional
        The run's name in the title; default: ``meta["name"]`` (``Tracker(..., name=...)``), else the run
        directory's name.

    Returns
    -------
    matplotlib.figure.Figure
        The new figure, or the one holding ``ax`` (a ``SubFigure`` when ``ax`` sits in one).

    Notes
    -----
    Every plane also carries the bound I(T;Y) <= min(I(X;T), H(Y)) as a light line under the points.

    Warns
    -----
    SaturationWarning
        When a layer's I(X;T) is at log2 N for most recorded epochs (see :func:`saturated_layers`); the figure
        carries the same note, below the axes (notes and the legend sit outside the axes, over no point).
    """
    run = _as_run(run).for_target(target)
    _values(run, estimator)  # fail on an empty run or unknown estimator before creating a figure
    ib = None if ib_curve is None else as_ib_curve(ib_curve)
    fig: Union[Figure, SubFigure]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 5.0), layout="constrained")
    else:
        fig = ax.figure
    norm = epoch_norm(run)
    _draw_plane(ax, run, estimator, norm, all_seeds, ib=ib, chain_flags=chain_flags)
    ax.set_title(plot_title(run, estimator, label, text_width(ax, 9)), fontsize=9)
    colorbar(fig, norm, ax)
    return fig


def compare(runs: RunsLike, estimator: Optional[str] = None, *, all_seeds: bool = False,
            titles: Optional[Sequence[str]] = None, target: Optional[str] = None) -> Figure:
    """Information planes of several runs side by side (e.g. 5% vs 85% training data).

    One panel per run, ordered by training fraction (or as given, with ``titles``), with shared axes and one
    colour scale (one colourbar).

    Parameters
    ----------
    runs : list of Run or paths
        Runs on the same data set and probe set.
    estimator : str or None
        Estimator name; None = each run's first.
    all_seeds : bool, default False
        See :func:`information_plane`.
    titles : list of str, optional
        One label per run (e.g. "tanh", "ReLU"), shown in place of its name; the panels then keep the order of
        ``runs``.
    target : str or None
        A side variable every run has: draw (I(X;T), I(T;Z)) (see :func:`information_plane`).

    Each panel names its run (``titles``, else ``meta["name"]``, else the run directory's name) and what
    differs between the runs (training fraction, estimator and its settings, reduction, seed count); what
    they share is the figure's title. A run that holds no estimates of ``estimator`` gets an empty panel that
    says so.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        When the runs' data sets (``meta["data"]``), N or H(Y) differ, or no run holds ``estimator``.
    """
    runs = runs_list([r.for_target(target) for r in runs_list(runs, "compare")], "compare")
    _check_some_hold(runs, estimator)
    check_same_data(runs)
    if titles is None:
        runs = by_fraction(runs)
    elif len(titles) != len(runs):
        raise ValueError(f"titles has {len(titles)} entries for {len(runs)} runs")
    norm = epoch_norm(runs)
    # Panels share their axes only when they plot the same measure: Rényi values have their own scale and ticks.
    share = len({_plane_scale(r, estimator).measure for r in runs
                 if estimator is None or estimator in r.estimators}) <= 1
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 1.2, 4.6), sharex=share, sharey=share,
                             layout="constrained", squeeze=False)
    axes = axes[0]
    same_layers = all(r.layers == runs[0].layers for r in runs)
    shared, own = run_titles(runs, estimator, titles)
    tops = []
    for i, (ax, run) in enumerate(zip(axes, runs)):
        _draw_plane(ax, run, estimator, norm, all_seeds, legend=(i == len(runs) - 1 or not same_layers))
        # Read each panel's limits now: the axes are shared, so the next panel overwrites them.
        tops.append((ax.get_xlim()[1], ax.get_ylim()[1]))
        ax.set_title(wrap_parts(own[i], text_width(ax, 9)), fontsize=9)
        if i and ax.get_ylabel() == axes[0].get_ylabel():  # said once, unless this panel measures another thing
            ax.set_ylabel("")
    if share:  # shared axes must hold every panel's ceiling and data
        xmax = max(t[0] for t in tops)
        ymax = max(t[1] for t in tops)
        axes[0].set_xlim(-0.03 / 1.03 * xmax, xmax)
        axes[0].set_ylim(-0.03 / 1.03 * ymax, ymax)
    if shared:
        fig.suptitle(wrap_parts(shared, int(fig.get_figwidth() * 72 / 6)), fontsize=10)
    colorbar(fig, norm, list(axes))
    return fig


def theory(ax: Axes, run: Run, estimator: Optional[str], mx: np.ndarray, my: np.ndarray, ib: Any = None,
           chain_flags: bool = True) -> list:
    """The bound, the IB curve and the chain flags on a drawn plane (:mod:`infoplane.viz.overlays`).

    Returns
    -------
    list
        Legend handles for what was drawn besides the bound.
    """
    handles: list = []
    if _plane_scale(run, estimator).measure == "shannon":  # a Shannon bound says nothing of Rényi values
        draw_bound(ax, run)
    if ib is not None:
        draw_ib_curve(ax, ib)
        handles.append(Line2D([], [], label="IB curve", **IB_STYLE))
    if chain_flags:
        draw_chain_flags(ax, run, estimator, mx, my)
    return handles
def _check_some_hold(runs, estimator):
    """Fail, as a single run would, unless at least one run holds ``estimator`` (the others get a note)."""
    holding = [r for r in runs if estimator is None or estimator in r.estimators]
    for r in holding or runs[:1]:
        _values(r, estimator)


# ---------------------------------------------------------------------------------------------- curves
def _epoch_axis(ax):
    # symlog keeps epoch 0 on a log-like axis: linear on [0, 1], logarithmic beyond.
    ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("Epoch")
    ax.set_xlim(left=0)


def _band(ax, x, values, label, color, marker=None):
    """Median line of ``values`` ([n_seeds, n_epochs]) with its interquartile band when there are seeds."""
    med = _median(values)
    ok = np.isfinite(med)
    ax.plot(x[ok], med[ok], color=color, marker=marker, markersize=3, linewidth=1.2, label=label)
    if values.shape[0] > 1:
        lo, hi = _quartiles(values)
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.2, linewidth=0)


def curves(run: RunLike, estimator: Optional[str] = None, *, label: Optional[str] = None) -> Figure:
    """I(X;T) and I(T;Y) of each layer, and the recorded metrics, against epoch.

    Top row: I(X;T) and I(T;Y) per layer with their ceilings log2 N and H(Y) dashed. Bottom row (only when the
    run has metrics): metrics whose name contains ``loss``, then the others (e.g. accuracy). The epoch axis is
    symmetric-log (linear on [0, 1], logarithmic above) so that epoch 0 is shown. With several seeds, lines are
    medians over seeds with shaded interquartile bands.

    Parameters
    ----------
    run : Run or path
    estimator : str or None
        Estimator name; None = the run's first.
    label : str, optional
        The run's name in the title (see :func:`information_plane`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    run = _as_run(run)
    ixt, ity = _values(run, estimator)
    names = list(run.metric_names)
    losses = [n for n in names if "loss" in n.lower()]
    others = [n for n in names if n not in losses]
    groups = [g for g in (losses, others) if g]
    nrows = 1 + (len(groups) > 0)
    fig, axes = plt.subplots(nrows, 2, figsize=(10, 3.6 * nrows), layout="constrained", squeeze=False)
    x = run.epochs.astype(float)
    colours = plt.get_cmap("tab10")
    scale = _plane_scale(run, estimator)
    for ax, values, ceiling, label in ((axes[0, 0], ixt, scale.x_ceiling, scale.x_label),
                                       (axes[0, 1], ity, scale.y_ceiling, scale.y_label)):
        for j, layer in enumerate(run.layers):
            _band(ax, x, values[:, :, j], layer, colours(j % 10), MARKERS[j % len(MARKERS)])
        if ceiling is not None:
            ax.axhline(ceiling, color="0.35", linestyle="--", linewidth=1)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(label)
        _epoch_axis(ax)
    axes[0, 0].legend(title="Layer", fontsize=8, title_fontsize=8)
    for k in range(2):
        if nrows == 1:
            break
        ax = axes[1, k]
        if k >= len(groups):
            ax.set_visible(False)
            continue
        for i, name in enumerate(groups[k]):
            _band(ax, x, run.metric(name), name, colours(i % 10))
        ax.set_ylabel("loss" if groups[k] is losses else "metric")
        ax.legend(fontsize=8)
        _epoch_axis(ax)
    fig.suptitle(plot_title(run, estimator, label, int(fig.get_figwidth() * 72 / 6)), fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------ write files
def _check_out(out: Union[str, os.PathLike, None]) -> tuple[Optional[str], Optional[str]]:
    """``(kind, path)``: ``("file", path)`` for a .png/.pdf/.svg name, ``("dir", path)``, or ``(None, None)``."""
    if out is None:
        return None, None
    out = os.fspath(out)
    ext = os.path.splitext(out)[1].lower()
    if ext in FORMATS:
        return "file", out
    if ext[1:] in _other_formats():
        raise ValueError(f"out={out!r}: figures are written as .png, .pdf or .svg; give one of those extensions, "
                         f"or a directory")
    if os.path.isfile(out):
        raise ValueError(f"out={out!r} is an existing file without a .png/.pdf/.svg extension; give a figure file "
                         f"name or a directory")
    return "dir", out


def _other_formats():
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes()) - {f[1:] for f in FORMATS}


def _save(fig, path, written):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fig.savefig(path, dpi=150)
    finally:
        plt.close(fig)
    written.append(path)


def _file_tag(run, estimator):
    """The estimator's name as it appears in figure file names (so that two estimators never share a file)."""
    name = run.estimators[0] if estimator is None else estimator
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_figures(runs: RunsLike, out: Union[str, os.PathLike, None] = None,
                  estimator: Optional[str] = None, *, labels: Optional[Sequence[str]] = None) -> list[str]:
    """Write the standard figures of one or more runs (what ``infoplane plot`` does).

    For each run: ``plane-<estimator>.png`` (information plane) and ``curves-<estimator>.png`` (quantities and
    metrics against epoch) in its run directory, and ``gradients.png`` (:func:`infoplane.viz.gradients.gradients`)
    when the run has gradient statistics. With two or more runs, also ``compare-<estimator>.png`` (side
    by side, by training fraction) in the parent directory of the first run given. The estimator's name in each
    file name keeps the figures of several estimators apart; an incomplete run says so on its figures.

    ``out`` redirects output:

    - a file name ending in ``.png``, ``.pdf`` or ``.svg``: the main figure (``compare`` for 2+ runs, ``plane``
      for one run) is written there, in that format, instead of its default place;
    - any other name is a directory: ``compare-<estimator>.png`` goes there, and so do the per-run figures of
      runs that have no directory (in-memory runs, e.g. ``Tracker(out=None).run``), as ``plane-<estimator>.png``
      / ``curves-<estimator>.png`` (one run) or ``plane-<estimator>-<i>.png`` / ``curves-<estimator>-<i>.png``
      (``i`` = position in ``runs``).

    Parameters
    ----------
    runs : Run, path, or list of them
    out : str, os.PathLike or None
    estimator : str or None
        Estimator name; None = each run's first. Runs that do not hold it get no figures of their own and an
        empty panel that says so in the comparison.
    labels : list of str, optional
        One name per run for the titles (default: ``meta["name"]``, else the run directory's name); the
        comparison then keeps the order of ``runs``.

    Returns
    -------
    list of str
        Paths of the files written.

    Raises
    ------
    ValueError
        For a directory that is not a run, an in-memory run without ``out``, mismatched data sets, an
        unsupported file extension, no run holding ``estimator``, or a ``labels`` list of another length.
    """
    runs = runs_list(runs, "write_figures")
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"labels has {len(labels)} entries for {len(runs)} runs; give one per run")
    kind, out = _check_out(out)
    # _check_out gives a path with every kind, None only with none.
    out_dir = out if kind == "dir" else (os.path.dirname(out) or "." if kind == "file" and out is not None else None)
    _check_some_hold(runs, estimator)
    if len(runs) > 1:
        check_same_data(runs)

    targets = []  # (run, label, plane path or None, curves path)
    for i, run in enumerate(runs):
        if estimator is not None and estimator not in run.estimators:
            continue
        run_dir = run_path(run)
        if run_dir is None:
            if out_dir is None:
                raise ValueError(f"run {i} ({run!r}) has no directory; pass out= (a directory or a .png/.pdf/.svg "
                                 f"file) to say where its figures go")
            run_dir, suffix = out_dir, ("" if len(runs) == 1 else f"-{i}")
        else:
            suffix = ""
        tag = _file_tag(run, estimator)
        plane = None if (kind == "file" and len(runs) == 1) else os.path.join(run_dir, f"plane-{tag}{suffix}.png")
        label = None if labels is None else labels[i]
        targets.append((run, label, plane, os.path.join(run_dir, f"curves-{tag}{suffix}.png"),
                        os.path.join(run_dir, f"gradients{suffix}.png")))

    written: list[str] = []
    for run, label, plane, curve_path, gradient_path in targets:
        _save(information_plane(run, estimator, label=label), plane or out, written)
        _save(curves(run, estimator, label=label), curve_path, written)
        if run.gradients:
            _save(gradients(run), gradient_path, written)
    if len(runs) > 1:
        name = f"compare-{_file_tag(runs[0], estimator)}.png"
        if kind == "file":
            target = out
        elif kind == "dir":
            assert out is not None
            target = os.path.join(out, name)
        else:
            first = run_path(runs[0])
            assert first is not None  # without out, a run that has no directory was refused above
            target = os.path.join(os.path.dirname(os.path.abspath(first)), name)
        _save(compare(runs, estimator, titles=labels), target, written)
    return written


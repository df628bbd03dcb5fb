"""Animated information planes: GIF (core dependencies) or MP4 (the ``[video]`` extra).

:func:`animate` is re-exported as ``infoplane.plot.animate``. The frames follow the static plane's conventions
(see ``docs/plotting.md``): colour = epoch on the ``gnuplot`` colormap, one marker shape per layer, the layers of
the current epoch joined by a grey line, seeds as the median with the interquartile range as a faint rectangle,
axes fixed from 0 to the ceilings log2 N and H(Y).

pyplot is imported inside the functions; :mod:`infoplane.viz.drawing`, imported first, chooses a headless backend
when none is configured.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

from infoplane._validate import check_int
from infoplane.viz.drawing import (
    CMAP,
    MARKERS,
    TRANSITION_LABEL,
    TRANSITION_STYLE,
    RunsLike,
    by_fraction,
    check_same_data,
    colorbar,
    epoch_norm,
    limits,
    log_axis,
    mark_missing,
    outside_legend,
    run_titles,
    run_tracks,
    runs_list,
    text_width,
    transition_points,
    warn_saturation,
    wrap_parts,
)
from infoplane.viz.overlays import draw_bound
from infoplane.viz.stats import plane_scale, values

__all__ = ["animate", "frame_epochs", "frame_size"]

#: Frame size in pixels: PANEL_WIDTH per run plus COLORBAR_WIDTH, by HEIGHT.
PANEL_WIDTH, COLORBAR_WIDTH, HEIGHT = 420, 100, 460
DPI = 100
FORMATS = (".gif", ".mp4")


def frame_size(n_runs: int) -> tuple[int, int]:
    """Default frame size ``(width, height)`` in pixels of an animation of ``n_runs`` runs side by side.

    Parameters
    ----------
    n_runs : int

    Returns
    -------
    tuple of int
        ``(PANEL_WIDTH * n_runs + COLORBAR_WIDTH, HEIGHT)`` = ``(420 n + 100, 460)``.
    """
    return PANEL_WIDTH * int(n_runs) + COLORBAR_WIDTH, HEIGHT


def frame_epochs(runs: RunsLike, frames: Optional[int] = None) -> np.ndarray:
    """The epoch shown in each frame, shared by all runs (they move in sync).

    Parameters
    ----------
    runs : Run, path, or list of them
    frames : int or None
        None: one frame per recorded epoch (the union of the runs' epochs). An int: that many frames, evenly
        spaced from the first to the last recorded epoch on a ``log(epoch + 1)`` axis when the epochs are
        log-spaced (the rule of :func:`infoplane.viz.planes.epoch_norm`), on a linear axis otherwise; such epochs are
        fractional and the values shown are interpolated on the same axis.

    Returns
    -------
    ndarray of float
        Epochs, increasing.
    """
    runs = runs_list(runs)
    epochs = np.unique(np.concatenate([r.epochs for r in runs])).astype(float)
    if epochs.size == 0:
        raise ValueError("no recorded epochs yet; nothing to animate")
    if frames is None:
        return epochs
    frames = check_int(frames, "frames", minimum=1, what="a positive integer or None (one frame per recorded epoch)")
    lo, hi = epochs[0], epochs[-1]
    if frames == 1:
        return np.array([hi])
    if log_axis(runs, epochs):
        return np.expm1(np.linspace(np.log1p(lo), np.log1p(hi), int(frames)))
    return np.linspace(lo, hi, int(frames))


def _writer(ext, fps):
    from matplotlib import animation

    if ext == ".gif":
        return animation.PillowWriter(fps=fps), {}
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ImportError("writing MP4 needs the ffmpeg binary of imageio-ffmpeg: pip install 'infoplane[video]' "
                          "(or write a .gif, which needs nothing extra)") from None
    # FFMpegWriter pipes raw frames to the ffmpeg executable that the wheel ships; yuv420p plays everywhere.
    return (animation.FFMpegWriter(fps=fps, codec="h264", extra_args=["-pix_fmt", "yuv420p"]),
            {"animation.ffmpeg_path": imageio_ffmpeg.get_ffmpeg_exe()})


def _check_out(out):
    out = os.fspath(out)
    ext = os.path.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"out={out!r}: animations are written as .gif or .mp4; give one of those extensions")
    if os.path.isdir(out):
        raise ValueError(f"out={out!r} is a directory; give a .gif or .mp4 file name")
    return out, ext


def animate(runs: RunsLike, out: Union[str, os.PathLike] = "plane.gif", *, estimator: Optional[str] = None,
            frames: Optional[int] = None, fps: Optional[float] = None, trail: int = 8,
            size: Optional[tuple[int, int]] = None, titles: Optional[Sequence[str]] = None) -> Union[str, os.PathLike]:
    """Write an animated information plane: the points move through the recorded epochs.

    Each frame shows every layer's point at one epoch (the median over seeds, with the seeds' interquartile range
    as a faint rectangle), the layers of that epoch joined by a grey line, and a trail through the layer's
    previous ``trail`` frames that fades with age. Colour is the epoch (``gnuplot``, the colour scale of the
    static figures, with the current epoch marked on the colourbar), and the epoch is written above the panels.
    The axes stay fixed from 0 to the ceilings log2 N and H(Y) (further if an estimate exceeds them), with the
    ceilings dashed. Several runs (e.g. 5% and 85% of the data) animate side by side, in sync, ordered by
    training fraction (as given with ``titles``). A run still being written is drawn as far as it goes, holds its
    last recorded point afterwards, and is marked *incomplete* in its panel title. Saturated layers carry the
    note of the static plane below the axes (and a ``SaturationWarning``); the legend sits beside the axes, so
    that nothing drawn over the plane hides a point. Each panel names its run and what differs between the runs,
    as in :func:`infoplane.plot.compare`; a run that holds no estimates of ``estimator`` gets a panel that says
    so.

    Parameters
    ----------
    runs : Run, path, or list of them
        Runs on the same data and probe set.
    out : str or os.PathLike, default "plane.gif"
        ``.gif`` (Pillow, which comes with matplotlib) or ``.mp4`` (H.264 through the ffmpeg binary of the
        ``[video]`` extra, ``pip install 'infoplane[video]'``).
    estimator : str or None
        Estimator name (any of ``run.estimators``); None = each run's first.
    frames : int or None
        None: one frame per recorded epoch. An int: that many frames, evenly spaced in ``log(epoch + 1)`` for
        log-spaced epochs (linearly otherwise), with values interpolated on that axis (see :func:`frame_epochs`).
    fps : float or None
        Frames per second; None aims at about 12 seconds, between 4 and 25 frames per second.
    trail : int, default 8
        Number of previous frames each layer's fading trail spans (0: no trail).
    size : (int, int) or None
        Frame size ``(width, height)`` in pixels; None = :func:`frame_size` = ``(420 * len(runs) + 100, 460)``.
        Rounded up to even numbers (H.264 needs them).
    titles : list of str, optional
        One label per run, shown in place of its name (``meta["name"]``, else the run directory's name); the
        panels then keep the order of ``runs``.

    Returns
    -------
    str or os.PathLike
        The path written (``out`` as given).

    Raises
    ------
    ValueError
        For a directory that is not a run, a run without recorded epochs, an unknown estimator, runs of different
        data, or an extension other than ``.gif`` / ``.mp4``.
    ImportError
        For ``.mp4`` without the ``[video]`` extra.
    """
    out, ext = _check_out(out)
    runs = runs_list(runs)
    holding = [r for r in runs if estimator is None or estimator in r.estimators]
    for r in holding or runs[:1]:
        values(r, estimator)  # an empty run or an estimator no run holds fails before any drawing
    check_same_data(runs)
    if titles is None:
        runs = by_fraction(runs)
    elif len(titles) != len(runs):
        raise ValueError(f"titles has {len(titles)} entries for {len(runs)} runs")
    check_int(trail, "trail", minimum=0, what="a non-negative integer (frames)")
    times = frame_epochs(runs, frames)
    width, height = frame_size(len(runs)) if size is None else (int(size[0]), int(size[1]))
    if width < 64 or height < 64:
        raise ValueError(f"size={size!r}: give at least 64 x 64 pixels")
    width, height = width + width % 2, height + height % 2
    if fps is None:
        fps = min(25, max(4, round(len(times) / 12)))
    writer, rc = _writer(ext, fps)

    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib import animation
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.lines import Line2D

    log = log_axis(runs, times)
    tracks = [run_tracks(r, estimator, times, log) if r in holding else None for r in runs]
    norm = epoch_norm(runs)
    cmap = plt.get_cmap(CMAP)
    colours = cmap(norm(np.clip(times, norm.vmin, norm.vmax)))

    fig, grid = plt.subplots(1, len(runs), figsize=(width / DPI, height / DPI), dpi=DPI, sharex=True,
                             sharey=True, layout="constrained", squeeze=False)
    axes = list(grid[0])
    same_layers = all(r.layers == runs[0].layers for r in runs)
    shared, own = run_titles(runs, estimator, titles)
    tops, panels = [], []
    for i, (ax, run, tr) in enumerate(zip(axes, runs, tracks)):
        label = wrap_parts([p for p in own[i] if p != "INCOMPLETE run"], text_width(ax, 9))
        if not run.meta.get("complete", False):
            label += f"\nincomplete: recorded up to epoch {int(run.epochs[-1])}"
        ax.set_title(label, fontsize=9, color="darkred" if not run.meta.get("complete", False) else "black")
        if tr is None:
            mark_missing(ax, run, estimator)
            continue
        ixt, ity = values(run, estimator)
        limits(ax, run, ixt, ity, estimator)
        if plane_scale(run, estimator).measure == "shannon":  # a Shannon bound says nothing of Rényi values
            draw_bound(ax, run)
        tops.append((ax.get_xlim()[1], ax.get_ylim()[1]))
        warn_saturation(ax, run, estimator)
        if i and ax.get_ylabel() == axes[0].get_ylabel():  # said once, unless this panel measures another thing
            ax.set_ylabel("")
        boxes = PolyCollection([], facecolors="none", edgecolors="none", alpha=0.2, zorder=1.5)
        ax.add_collection(boxes)
        trails = LineCollection([], linewidths=1.6, zorder=2, capstyle="round")
        ax.add_collection(trails)
        (join,) = ax.plot([], [], color="0.5", linewidth=0.8, alpha=0.8, zorder=2.5)
        points = [ax.scatter([], [], s=40, marker=MARKERS[j % len(MARKERS)], edgecolors="0.15",
                             linewidths=0.4, zorder=3, label=layer) for j, layer in enumerate(run.layers)]
        # each layer's drift-to-diffusion transition, shown on its trajectory from the frame that reaches it
        marks = [(epoch, ax.scatter([x], [y], **TRANSITION_STYLE)) for _, epoch, x, y in transition_points(run, estimator)]
        for _, ring in marks:
            ring.set_visible(False)
        if i == len(runs) - 1 or not same_layers:
            handles = [Line2D([], [], linestyle="none", marker=MARKERS[j % len(MARKERS)],
                              color="0.3", label=layer) for j, layer in enumerate(run.layers)]
            if marks:
                handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                                      markeredgecolor="black", label=TRANSITION_LABEL))
            # Beside the axes, in a fixed place: inside, any place would cover some point of some frame.
            outside_legend(ax, handles)
        panels.append((tr, boxes, trails, join, points, marks))
    xmax, ymax = max(t[0] for t in tops), max(t[1] for t in tops)
    axes[0].set_xlim(-0.03 / 1.03 * xmax, xmax)
    axes[0].set_ylim(-0.03 / 1.03 * ymax, ymax)
    cb = colorbar(fig, norm, axes)
    marker = cb.ax.axhline(times[0], color="cyan", linewidth=2.5)
    head = wrap_parts(shared, int(width / DPI * 72 / 6))
    approx = frames is not None
    title = fig.suptitle(" ", fontsize=10)

    def draw(k):
        epoch = times[k]
        shown = f"epoch {epoch:.0f}" if not approx or float(epoch).is_integer() else f"epoch {epoch:.1f}"
        title.set_text(f"{head}\n{shown}" if head else shown)
        marker.set_ydata([epoch, epoch])
        first = max(0, k - trail)
        for tr, boxes, trails, join, points, marks in panels:
            for at, ring in marks:
                ring.set_visible(bool(epoch >= at))
            x, y = tr["x"][k], tr["y"][k]
            ok = np.isfinite(x) & np.isfinite(y)
            for j, sc in enumerate(points):
                sc.set_offsets(np.array([[x[j], y[j]]]) if ok[j] else np.empty((0, 2)))
                sc.set_facecolor(colours[k])
            join.set_data(x[ok], y[ok])
            segments, seg_colours = [], []
            for f in range(first, k):
                age = (k - f) / (trail + 1)  # 0 for the newest segment, towards 1 for the oldest
                for j in range(len(x)):
                    a = (tr["x"][f, j], tr["y"][f, j])
                    b = (tr["x"][f + 1, j], tr["y"][f + 1, j])
                    if np.all(np.isfinite(a + b)):
                        segments.append([a, b])
                        seg_colours.append((*colours[f + 1][:3], 0.85 * (1 - age)))
            trails.set_segments(segments)
            trails.set_color(seg_colours if seg_colours else "none")
            if "x25" in tr:
                x0, x1, y0, y1 = (tr[q][k] for q in ("x25", "x75", "y25", "y75"))
                has = np.isfinite(x0) & np.isfinite(x1) & np.isfinite(y0) & np.isfinite(y1)
                boxes.set_verts([[(x0[j], y0[j]), (x1[j], y0[j]), (x1[j], y1[j]), (x0[j], y1[j])]
                                 for j in np.nonzero(has)[0]])
                boxes.set_facecolor(colours[k])
        return []

    draw(0)
    # Lay the figure out once, then freeze it, so that changing texts do not shift the axes between frames.
    fig.canvas.draw()
    fig.set_layout_engine("none")
    try:  # the folder first: an animation that is never saved would warn when it is collected
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    except BaseException:
        plt.close(fig)
        raise
    anim = animation.FuncAnimation(fig, draw, frames=len(times), interval=1000 / fps, blit=False, repeat=False)
    try:
        with matplotlib.rc_context(rc):
            anim.save(os.fspath(out), writer=writer, dpi=DPI)
    finally:
        plt.close(fig)
    return out

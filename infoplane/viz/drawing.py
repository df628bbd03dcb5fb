"""What the static figures, the animations and the HTML report share: labels and titles, the colour scale of
epochs, the ceilings and axis limits, the saturation note, the checks on several runs, and the per-frame tracks.

When no matplotlib backend is configured (no ``MPLBACKEND``, none in ``matplotlibrc``, ``matplotlib.use`` not
called, pyplot not yet imported), importing this module selects the non-interactive ``Agg`` backend, so that
figures and animations work on headless machines; a backend chosen by the user is never replaced.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import textwrap
import warnings
from types import FrameType
from typing import TYPE_CHECKING, Optional, Sequence, Union, cast

import matplotlib
import numpy as np


def _choose_backend():
    # Only when nothing chose a backend: ``_get_backend_or_none`` is None while matplotlib would still pick one
    # automatically (an interactive one on a desktop, which a batch job must not open).
    if "matplotlib.pyplot" in sys.modules or os.environ.get("MPLBACKEND"):
        return
    get = getattr(matplotlib.rcParams, "_get_backend_or_none", None)
    if get is not None and get() is None:
        matplotlib.use("Agg")


_choose_backend()

from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar
    from matplotlib.figure import Figure, SubFigure
    from matplotlib.legend import Legend

from infoplane.runs.reader import Run  # noqa: E402
from infoplane.viz.stats import (  # noqa: E402
    SATURATION_TOL,
    as_run,
    ceilings,
    log_spaced,
    median,
    plane_scale,
    quartiles,
    saturated_layers,
    transitions,
    values,
)

CMAP = "gnuplot"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")

#: What the drawing functions take for runs: a Run, a run directory, or a list of them.
RunsLike = Union[Run, str, os.PathLike, Sequence[Union[Run, str, os.PathLike]]]


class SaturationWarning(UserWarning):
    """I(X;T) of a layer sits at its ceiling log2 N for most recorded epochs, so the estimator's resolution
    (bins, or KDE noise), not the network, sets the plotted value."""


def run_path(run: Run) -> Optional[str]:
    """The run's directory, or None for an in-memory run."""
    path = run.path
    return None if path is None else os.fspath(path)


def data_name(run: Run) -> Optional[str]:
    """The data set's name (or path) from ``meta.json``, or None when the run does not say."""
    data = run.meta.get("data")
    if isinstance(data, dict):
        data = data.get("name", data.get("path"))
    return None if data is None else str(data)


def estimator_entry(run: Run, estimator: Optional[str]) -> dict:
    """The estimator's entry in ``meta["estimators"]`` (``{"name": ...}`` alone when the run does not list it)."""
    name = run.estimators[0] if estimator is None else estimator
    for entry in run.meta.get("estimators", []) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    return {"name": name}


def format_setting(value: object) -> str:
    """A setting as shown on a figure: numbers to 4 significant digits (``0.04``, never
    ``0.04000000000000001``), lists in brackets, nested settings as ``key=value`` pairs."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_setting(v) for v in value) + "]"
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={format_setting(v)}" for k, v in value.items() if k != "name") + ")"
    return str(value)


def estimator_label(run: Run, estimator: Optional[str]) -> str:
    """The estimator's name with its settings, e.g. ``binning (bins=30, range=[-1, 1])``, numbers rounded."""
    entry = estimator_entry(run, estimator)
    settings = entry.get("settings") or {}
    # A setting left to each layer (None, e.g. the noise variance read from the network) is said once, not as None.
    per_layer = "per layer" if any(v is None for v in settings.values()) else None
    params = ", ".join([f"{k}={format_setting(v)}" for k, v in settings.items()
                        if k not in ("kind", "name") and v is not None] + ([per_layer] if per_layer else []))
    return f"{entry['name']} ({params})" if params else entry["name"]


def fraction_label(run: Run) -> Optional[str]:
    """The training fraction as a label, e.g. ``85% training data``; None when the run does not record one."""
    return None if run.fraction is None else f"{100 * run.fraction:.4g}% training data"


def run_name(run: Run) -> Optional[str]:
    """The run's name: ``meta["name"]`` (``Tracker(..., name=...)``), else its directory's name (the study's, for
    the ``fraction-*`` directories of ``infoplane track``, whose fraction the titles give anyway), else None."""
    name = run.meta.get("name")
    if isinstance(name, str) and name:
        return name
    path = run_path(run)
    if not path:
        return None
    path = os.path.abspath(path)
    base, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    return parent if base.startswith("fraction-") and parent else base


def reduction_label(run: Run) -> str:
    """The layer reduction, e.g. ``reduce=pca:4`` or ``reduce=(conv1=channel-mean)``; ``reduce=flatten`` when
    the layers were flattened (the default)."""
    reduce = run.meta.get("reduce")
    spec = reduce.get("spec") if isinstance(reduce, dict) else None
    return f"reduce={format_setting(spec) if spec is not None else 'flatten'}"


def seeds_label(run: Run) -> str:
    """``median of K seeds``, or ``1 seed``."""
    return f"median of {len(run.seeds)} seeds" if len(run.seeds) > 1 else "1 seed"


# Facts at their defaults (flattened layers, one seed), left out of a title when every run shown has them.
_DEFAULT_FACTS = {"reduce": "reduce=flatten", "seeds": "1 seed"}


def _facts(run: Run, estimator: Optional[str]) -> dict[str, Optional[str]]:
    if estimator is not None and estimator not in run.estimators:
        est_label: Optional[str] = estimator
    else:
        est_label = estimator_label(run, estimator)
    return {"data": data_name(run), "fraction": fraction_label(run), "estimator": est_label,
            "reduce": reduction_label(run), "seeds": seeds_label(run)}


def run_titles(runs: Sequence[Run], estimator: Optional[str] = None,
               names: Optional[Sequence[Optional[str]]] = None) -> tuple[list[str], list[list[str]]]:
    """What tells the runs shown apart: the facts they share, and each run's own.

    Each run's own parts start with its name (``names[i]`` when given, else :func:`run_name`), followed by the
    facts that differ between the runs (training fraction, estimator and its settings, reduction, seed count);
    the shared facts (data, and those that agree) are given once. A fact a run does not record is left out, as
    are the defaults (no reduction, one seed) when every run has them.

    Parameters
    ----------
    runs : list of Run
    estimator : str or None
        The estimator shown; None = each run's first.
    names : list of (str or None), optional
        A label per run that replaces its name.

    Returns
    -------
    (list of str, list of list of str)
        The shared parts, and the parts of each run.
    """
    facts = [_facts(r, estimator) for r in runs]
    shared: list[str] = []
    own: list[list[str]] = []
    for i, run in enumerate(runs):
        name = names[i] if names is not None and names[i] else run_name(run)
        own.append([name] if name else [])
    for key in facts[0]:
        vals = [f[key] for f in facts]
        if all(v == vals[0] for v in vals):
            if vals[0] is not None and vals[0] != _DEFAULT_FACTS.get(key):
                shared.append(vals[0])
        else:
            for parts, v in zip(own, vals):
                if v is not None:
                    parts.append(v)
    for parts, run in zip(own, runs):
        if not run.complete:
            parts.append("INCOMPLETE run")
    return shared, own


def wrap_parts(parts: Sequence[str], width: int, sep: str = " | ", newline: str = "\n") -> str:
    """``parts`` joined by ``sep``, broken into lines of at most ``width`` characters between parts (and inside
    a part, between words, only where it does not fit on a line of its own), never cutting a word."""
    lines: list[str] = []
    line = ""
    for part in parts:
        pieces = textwrap.wrap(part, max(8, width), break_long_words=False, break_on_hyphens=False) or [""]
        for k, piece in enumerate(pieces):
            joined = f"{line}{sep if k == 0 else ' '}{piece}" if line else piece
            if line and len(joined) > width:
                lines.append(line)
                line = piece
            else:
                line = joined
    if line:
        lines.append(line)
    return newline.join(lines)


def root_figure(ax: Axes) -> Figure:
    """The figure that holds ``ax``, through any subfigure (``.figure`` of a Figure is itself)."""
    return cast("Figure", getattr(ax.figure, "figure", ax.figure))


def text_width(ax: Axes, fontsize: float) -> int:
    """About how many characters of ``fontsize`` points fit across ``ax``."""
    fig = root_figure(ax)
    width_pt = ax.get_position().width * fig.get_size_inches()[0] * 72
    return max(20, int(width_pt / (0.6 * fontsize)))


def plot_title(run: Run, estimator: Optional[str], name: Optional[str] = None, width: int = 80) -> str:
    """A figure's title: the run's name, data, fraction, estimator, reduction, seeds, and whether the run is
    incomplete, wrapped at ``width`` characters; facts the run does not record are left out."""
    shared, _ = run_titles([run], estimator)
    name = name or run_name(run)
    parts = ([name] if name else []) + shared + ([] if run.complete else ["INCOMPLETE run"])
    return wrap_parts(parts, width)


NOTE_GID = "infoplane-note"


def add_note(ax: Axes, text: str, color: str = "darkred") -> None:
    """Write ``text`` below ``ax``, under its x label and any earlier note, wrapped to the axes' width: notes sit
    outside the axes so that they never cover a data point."""
    fontsize = 8
    earlier = [t for t in ax.texts if t.get_gid() == NOTE_GID]
    anchor = earlier[-1] if earlier else ax.xaxis.label
    ax.annotate(textwrap.fill(text, text_width(ax, fontsize), break_on_hyphens=False), xy=(0, 0),
                xycoords=("axes fraction", anchor), xytext=(0, -4), textcoords="offset points", ha="left",
                va="top", fontsize=fontsize, color=color, gid=NOTE_GID, annotation_clip=False)


INCOMPLETE_NOTE = "incomplete run: still being written, or interrupted"


def mark_incomplete(ax: Axes, run: Run) -> None:
    """Say below the axes that the run was not closed normally, so a partial plane is never taken for a whole
    one."""
    if not run.complete:
        add_note(ax, INCOMPLETE_NOTE)


def mark_missing(ax: Axes, run: Run, estimator: Optional[str]) -> None:
    """Say in an empty panel that the run holds no estimates of ``estimator`` (and which ones it holds)."""
    ax.text(0.5, 0.5, textwrap.fill(f"no {estimator} estimates in this run (it holds: "
                                    f"{', '.join(run.estimators) or 'none'})", 36),
            transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3")


def class_note(run: Run) -> Optional[str]:
    """The class names for a legend, when the labels were given as names."""
    names = run.class_names
    if not names:
        return None
    shown = ", ".join(str(n) for n in names[:6]) + (f", ... ({len(names)})" if len(names) > 6 else "")
    return f"Y: {shown}"


def schedule_kind(run: Run) -> Optional[str]:
    """The recording schedule's kind from ``meta.json`` (``"log"``, ...), or None."""
    schedule = run.meta.get("schedule")
    return schedule.get("kind") if isinstance(schedule, dict) else None


def epoch_norm(runs: RunsLike) -> mcolors.Normalize:
    """The colour normalisation shared by the given runs' epochs.

    The scale is logarithmic in ``epoch + 1`` (so epoch 0 sits at the bottom of the scale) when the epochs are
    log-spaced: every run's schedule in ``meta.json`` is ``log_schedule``, or the recorded epochs span at least
    two decades (``(max + 1) / (min + 1) >= 100``) with at least a quarter of them below the geometric midpoint
    ``sqrt((min + 1) (max + 1))``. Otherwise it is linear. Either way the limits are the first and last epoch.

    Parameters
    ----------
    runs : Run, path, or list of them

    Returns
    -------
    matplotlib.colors.Normalize
        ``Normalize`` or a ``FuncNorm`` of ``log1p``; ``vmin`` / ``vmax`` are the smallest and largest epoch.
    """
    # Only a list or tuple is taken as several runs; anything else is one run (as_run names what it cannot read).
    items = runs if isinstance(runs, (list, tuple)) else [cast(Union[Run, str, os.PathLike], runs)]
    loaded = [as_run(r) for r in items]
    epochs = np.unique(np.concatenate([r.epochs for r in loaded])) if loaded else np.array([])
    if epochs.size == 0:
        raise ValueError("no recorded epochs; nothing to colour")
    kinds = {schedule_kind(r) for r in loaded}
    lo, hi = float(epochs[0]), float(epochs[-1])
    if log_spaced(epochs, kinds.pop() if len(kinds) == 1 else None):
        return mcolors.FuncNorm((np.log1p, np.expm1), vmin=lo, vmax=hi)
    return mcolors.Normalize(vmin=lo, vmax=hi)


def colorbar(fig: Union[Figure, SubFigure], norm: mcolors.Normalize, ax: Union[Axes, Sequence[Axes]]) -> Colorbar:
    """The epoch colour bar beside ``ax``; on a log scale its ticks are round epochs and the last one."""
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=ax, label="Epoch")
    if isinstance(norm, mcolors.FuncNorm):
        # Round epochs (0, 10, 100, ...) and the last one, rather than the locator's picks on a function scale.
        lo, hi = norm.vmin, norm.vmax
        assert lo is not None and hi is not None  # epoch_norm gives its FuncNorm both limits
        ticks = [lo] + [10.0**k for k in range(1, 12) if lo < 10.0**k <= hi]
        if np.log1p(hi) - np.log1p(ticks[-1]) > 0.15 * (np.log1p(hi) - np.log1p(lo)):
            ticks.append(hi)
        cb.set_ticks(ticks)
        cb.set_ticklabels([f"{t:g}" for t in ticks])
    return cb


def estimator_kind(run: Run, estimator: Optional[str]) -> Optional[str]:
    """The estimator's kind (``"binning"``, ``"kde"``, ...) from its settings; the inner one for a permutation null."""
    settings = estimator_entry(run, estimator).get("settings") or {}
    if settings.get("kind") == "with-null":  # a permutation null around another estimator: the inner one's kind
        settings = settings.get("estimator") or {}
    return settings.get("kind")


def is_noise_based(run: Run, estimator: Optional[str]) -> bool:
    """Whether the estimator adds noise (KDE or noisy), so that its noise variance sets its resolution."""
    # Both noise-based estimators saturate for the same reason: a noise variance small against the spacing.
    return estimator_kind(run, estimator) in ("kde", "noisy")


# Why a layer sits at log2 N, per estimator kind: the note must not blame a setting the estimator does not have.
_SATURATION_CAUSES: dict[Optional[str], str] = {
    "kde": "the KDE noise variance (the estimator's resolution), not the network, drives it",
    # The noise of `noisy` is the network's own: saturation is then a fact about that noisy network.
    "noisy": "at the network's own noise level every probe sample stays distinguishable in it",
    "binning": "the bin choice, not the network, drives it",
    "discrete": "every probe sample keeps its own exact value, so the probe set's size caps it",
    "renyi": "the kernel width (sigma), not the network, may drive it",
}

# What to try instead, per estimator kind (and grid, for binning): only changes that measure the same network.
_SATURATION_ADVICE: dict[Optional[str], str] = {
    "binning-range": "Try fewer bins or a range that covers the activations (for ReLU: --range 0 MAX, "
                     "Binning(range=(0, MAX))), adaptive bins, or the KDE estimator.",
    "binning-width": "Try a wider bin (--bin-width, Binning(width=...)), adaptive bins, or the KDE estimator.",
    "binning-adaptive": "Try fewer bins (--bins), or the KDE estimator.",
    "kde": "Try a larger noise_var (--noise-var; it is the estimator's resolution), or reduce wide layers "
           "(--reduce channel-mean or pca:K), and keep only conclusions that survive the change.",
    "noisy": "Do not raise noise_var: the noise is part of the network, and another variance measures another "
             "network. Check that it is the network's (Noisy() without noise_var reads it from add_noise and the "
             "layer's reduction); a network trained with more noise (add_noise(model, std) with a larger std), or "
             "a narrower reduction (pca:K with a small K), is a different question about the network.",
    "discrete": "The exact value is right for this quantised network; fewer quantisation levels "
                "(quantize(model, bits=...)) or a larger probe set change what is measured.",
    "renyi": "Try a larger kernel width (Renyi(sigma=...)) and keep only conclusions that survive the change.",
}


def saturation_message(run: Run, estimator: Optional[str], layers: Sequence[str]) -> str:
    """The note on saturated ``layers``, with the cause that fits the estimator."""
    cause = _SATURATION_CAUSES.get(estimator_kind(run, estimator),
                                   "the estimator's resolution, not the network, may drive it")
    names = ", ".join(layers)
    return f"I(X;T) of layer{'s' if len(layers) > 1 else ''} {names} is saturated at log2 N: {cause}"


def saturation_advice(run: Run, estimator: Optional[str]) -> str:
    """What to try about a saturated layer, right for the estimator's kind (and a binning's grid)."""
    kind = estimator_kind(run, estimator)
    if kind == "binning":
        settings = estimator_entry(run, estimator).get("settings") or {}
        if settings.get("kind") == "with-null":
            settings = settings.get("estimator") or {}
        kind = ("binning-adaptive" if settings.get("adaptive") else
                "binning-width" if settings.get("width") is not None else "binning-range")
    return _SATURATION_ADVICE.get(kind, "Compare with another estimator, and keep only conclusions that survive "
                                        "the change.")


def _caller_level() -> int:
    """``stacklevel`` that points a warning at the first frame outside :mod:`infoplane.viz` (the user's call), since
    the planes, the animations and the report all warn through here."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame: Optional[FrameType] = sys._getframe(1)
    level = 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def warn_saturation(ax: Axes, run: Run, estimator: Optional[str]) -> list[str]:
    """Note saturated layers below ``ax`` and warn (:class:`SaturationWarning`); returns those layers."""
    layers = saturated_layers(run, estimator)
    if not layers:
        return []
    msg = saturation_message(run, estimator, layers)
    add_note(ax, msg)
    where = " | ".join(p for p in (run_name(run), data_name(run), fraction_label(run)) if p)
    advice = saturation_advice(run, estimator)
    warnings.warn(f"{where + ': ' if where else ''}{msg} (within {SATURATION_TOL:.0%} of log2 N = "
                  f"{ceilings(run)[0]:.2f} bits for most recorded epochs). {advice}", SaturationWarning,
                  stacklevel=_caller_level())
    return layers


def limits(ax: Axes, run: Run, ixt: np.ndarray, ity: np.ndarray, estimator: Optional[str] = None) -> None:
    """Axes from 0 to the ceilings of the estimator's measure (or the data, when larger or the ceiling is
    unknown), ceilings dashed and named outside the axes (on a top and a right axis), labels by the measure."""
    scale = plane_scale(run, estimator)
    for ceiling, data, set_lim, line in ((scale.x_ceiling, ixt, ax.set_xlim, ax.axvline),
                                         (scale.y_ceiling, ity, ax.set_ylim, ax.axhline)):
        finite = data[np.isfinite(data)]
        top = max([v for v in (ceiling, finite.max() if finite.size else None) if v is not None] or [1.0])
        top = top if top > 0 else 1.0
        set_lim(-0.03 * top, 1.03 * top)
        if ceiling is not None:
            line(ceiling, color="0.35", linestyle="--", linewidth=1, zorder=1)
    # The ceilings' names as ticks of a secondary axis: outside the axes, where no point can be.
    if scale.x_ceiling is not None:
        top_axis = ax.secondary_xaxis("top")
        top_axis.set_xticks([scale.x_ceiling], labels=[scale.x_name], fontsize=7, color="0.35")
        top_axis.tick_params(length=3, color="0.35", pad=1)
    if scale.y_ceiling is not None:
        right_axis = ax.secondary_yaxis("right")
        right_axis.set_yticks([scale.y_ceiling], labels=[scale.y_name], fontsize=7, color="0.35")
        right_axis.tick_params(length=3, color="0.35", pad=1)
    ax.set_xlabel(scale.x_label)
    ax.set_ylabel(scale.y_label)


def outside_legend(ax: Axes, handles: list) -> Legend:
    """The layer legend to the right of ``ax``, past the ceiling's name, where it covers no point."""
    fig = root_figure(ax)
    # 0.4 inch clears the right axis that names the I(T;Y) ceiling.
    where = ax.transAxes + ScaledTranslation(0.4, 0, fig.dpi_scale_trans)
    return ax.legend(handles=handles, title="Layer", fontsize=8, title_fontsize=8, loc="upper left",
                     bbox_to_anchor=(1.0, 1.0), bbox_transform=where, borderaxespad=0, framealpha=0.8)


def check_same_data(runs: Sequence[Run]) -> None:
    """Raise ValueError naming the first two runs (in the order given) whose data or probe set differ."""
    labels = [run_path(r) or f"run #{i}" + (f" ({fraction_label(r)})" if r.fraction is not None else "")
              for i, r in enumerate(runs)]
    first = runs[0]
    for label, other in zip(labels[1:], runs[1:]):
        a, b = data_name(first), data_name(other)
        if a is not None and b is not None and a != b:
            raise ValueError(f"cannot compare runs on different data sets: {labels[0]} has data {a!r}, "
                             f"{label} has data {b!r}")
        for what, x, y in (("N", first.n, other.n), ("H(Y)", first.h_y, other.h_y)):
            if x is not None and y is not None and not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(f"cannot compare runs on different probe sets: {labels[0]} has {what} = "
                                 f"{x:g}, {label} has {what} = {y:g}; their axes would not match")


def by_fraction(runs: Sequence[Run]) -> list[Run]:
    """The runs by training fraction, those without one last."""
    # Stable sort: runs without a fraction go last, in the order given.
    return sorted(runs, key=lambda r: (r.fraction is None, r.fraction or 0.0))


# ---------------------------------------------------------------------------------------------- frames
def runs_list(runs: RunsLike, caller: str = "animate") -> list[Run]:
    """A non-empty list of runs from a run, a path, or a list of them.

    Parameters
    ----------
    runs : Run, path, or list of them
    caller : str, default "animate"
        The function named in the error for an empty list.

    Returns
    -------
    list of Run
    """
    items = [runs] if isinstance(runs, (Run, str, os.PathLike)) else runs
    loaded = [as_run(r) for r in items]
    if not loaded:
        raise ValueError(f"{caller} needs at least one run")
    return loaded


def log_axis(runs: Sequence[Run], epochs: np.ndarray) -> bool:
    """Whether frames move along ``log(epoch + 1)``: the rule of :func:`epoch_norm`."""
    kinds = {schedule_kind(r) for r in runs}
    return log_spaced(epochs, kinds.pop() if len(kinds) == 1 else None)


def _interp(u_known, values, u):
    """``values`` ([n_epochs, n_layers], NaN where absent) at positions ``u`` per layer: linear between recorded
    epochs, NaN before a layer's first, its last value after its last (a run still being written holds still)."""
    out = np.full((len(u), values.shape[1]), np.nan)
    for j in range(values.shape[1]):
        ok = np.isfinite(values[:, j])
        if ok.any():
            out[:, j] = np.interp(u, u_known[ok], values[ok, j], left=np.nan)
    return out


def run_tracks(run: Run, estimator: Optional[str], times: np.ndarray, log: bool) -> dict[str, np.ndarray]:
    """Per-frame medians and quartiles of one run: dict of ``[n_frames, n_layers]`` arrays (bits)."""
    ixt, ity = values(run, estimator)
    axis = np.log1p if log else (lambda e: np.asarray(e, dtype=float))
    known, u = axis(run.epochs.astype(float)), axis(times)
    out = {"x": _interp(known, median(ixt), u), "y": _interp(known, median(ity), u)}
    if len(run.seeds) > 1:
        (x25, x75), (y25, y75) = quartiles(ixt), quartiles(ity)
        for key, q in (("x25", x25), ("x75", x75), ("y25", y25), ("y75", y75)):
            out[key] = _interp(known, q, u)
    return out




#: How a layer's drift-to-diffusion transition is marked on its trajectory (planes and animations).
TRANSITION_STYLE = dict(s=110, facecolors="none", edgecolors="black", linewidths=1.3, zorder=4)
TRANSITION_LABEL = "drift to diffusion"


def transition_points(run: Run, estimator: Optional[str] = None) -> list[tuple[int, int, float, float]]:
    """Where each layer's gradient transition sits on its plane trajectory: ``(layer index, epoch, I(X;T),
    I(T;Y))`` at the first recorded plane epoch at or after the transition (seed medians; default rule of
    :func:`infoplane.viz.stats.transitions`). Empty for a run without gradient statistics."""
    marks = transitions(run)
    if not marks:
        return []
    ixt, ity = (median(a) for a in values(run, estimator))
    out = []
    for j, layer in enumerate(run.layers):
        epoch = marks.get(layer)
        if epoch is None:
            continue
        at = np.flatnonzero((run.epochs >= epoch) & np.isfinite(ixt[:, j]) & np.isfinite(ity[:, j]))
        if len(at):
            out.append((j, int(run.epochs[at[0]]), float(ixt[at[0], j]), float(ity[at[0], j])))
    return out

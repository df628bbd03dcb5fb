"""A self-contained interactive HTML report of one or more runs, drawn with Plotly (the ``[report]`` extra).

:func:`report` is exported as ``infoplane.report``. Everything interactive (epoch slider, play button, hover,
estimator toggle) is Plotly's own: the page holds plotly.js inline and one figure description, and no
hand-written JavaScript. Statistics (medians, quartiles, saturation, frame epochs) come from
:mod:`infoplane.viz.planes` and :mod:`infoplane.viz.animation`, so the report shows what the static figures and the
animations show.
"""
from __future__ import annotations

import html
import json
import math
import os
import shlex
from typing import Optional, Sequence, Union

import numpy as np

from infoplane.runs.reader import Run
from infoplane.viz import stats as S

__all__ = ["report"]

#: Layer colours (matplotlib's tab10, as in the static curves figure), cycled.
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf")
#: Plotly marker symbols matching infoplane.viz.drawing.MARKERS.
SYMBOLS = ("circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "star",
           "triangle-left", "triangle-right", "hexagon", "pentagon")
PLANE_H, SLIDER_H, ROW_H, ROW_GAP, TOP, BOTTOM = 470, 160, 210, 70, 120, 50


def _plotly():
    try:
        import plotly
        import plotly.graph_objects as go
        import plotly.io as pio
    except ImportError:
        raise ImportError("infoplane.report needs Plotly: pip install 'infoplane[report]'") from None
    return plotly, go, pio


def _clean(a):
    """A list for Plotly with None where ``a`` is NaN (JSON has no NaN)."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float).ravel()]


def _axis(kind, n):
    return f"{kind}{'' if n == 1 else n}"


def _layout_key(kind, n):
    return f"{kind}axis{'' if n == 1 else n}"


def _estimator_names(runs):
    names = []
    for r in runs:
        names.extend(e for e in r.estimators if e not in names)
    return names


#: What a settings cell says for a fact the run does not record (a row of such cells alone is left out).
UNRECORDED = "not recorded"


def _command(meta):
    caller = meta.get("caller")
    if isinstance(caller, list):
        return shlex.join(str(c) for c in caller)
    return None if caller is None else str(caller)


def _settings_rows(runs, D):
    """(label, [cell per run]) rows of the settings panel, as plain text."""
    from infoplane._version import __version__

    def schedule(r):
        s = r.meta.get("schedule")
        if not isinstance(s, dict):
            return None
        params = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("kind", "epochs"))
        return f"{s.get('kind')} ({params}); {len(r.epochs)} epochs recorded" if params else \
            f"{s.get('kind')}; {len(r.epochs)} epochs recorded"

    def split(r):
        s = r.meta.get("split")
        if not isinstance(s, dict):
            return None
        parts = [f"{k}={s[k]}" for k in ("kind", "fraction", "probe", "fixed", "seeds") if k in s]
        for part in ("train", "test"):
            if isinstance(s.get(part), list) and s[part] and isinstance(s[part][0], list):
                parts.append(f"{part} size {len(s[part][0])}")
        return ", ".join(parts)

    def estimators(r):
        out = []
        for e in r.meta.get("estimators", []) or []:
            settings = {k: v for k, v in (e.get("settings") or {}).items() if k != "name"}
            out.append(f"{e.get('name')}: {json.dumps(settings)}")
        return "\n".join(out) or ", ".join(r.estimators)

    def status(r):
        if r.meta.get("complete"):
            return f"complete ({r.meta.get('start_time')} to {r.meta.get('end_time')})"
        last = int(r.epochs[-1]) if len(r.epochs) else None
        return f"INCOMPLETE: still being written or interrupted; recorded up to epoch {last}"

    def model(r):
        m = r.meta.get("model")
        if not isinstance(m, dict):
            return None
        layers = ", ".join(f"{l.get('name')} ({l.get('width')})" for l in r.meta.get("layers", []))
        return f"{m.get('class')}, {m.get('n_parameters')} parameters; layers {layers}"

    def version(r):
        v = r.meta.get("versions")
        return f"{v.get('infoplane')} (torch {v.get('torch')})" if isinstance(v, dict) else None

    def ceilings(r):
        log2_n, h_y = S.ceilings(r)
        parts = [f"N = {r.n}" if r.n else None, None if log2_n is None else f"log2 N = {log2_n:.4g} bits",
                 None if h_y is None else f"H(Y) = {h_y:.4g} bits"]
        return ", ".join(p for p in parts if p) or None

    def training(r):
        # The effective settings (optimizer Adam, lr 0.0004, ...); entries a run does not know are left out.
        t = r.meta.get("training")
        if not isinstance(t, dict):
            return None
        shown = [f"{k.replace('_', ' ')} {v if isinstance(v, str) else json.dumps(v)}" for k, v in t.items()
                 if v is not None]
        return ", ".join(shown) or None

    rows = [("run", D.run_name), ("run directory", lambda r: r.path or "(in memory)"), ("status", status),
            ("data", D.data_name), ("training fraction", D.fraction_label), ("reduction", D.reduction_label),
            ("split", split), ("seeds", lambda r: ", ".join(map(str, r.seeds))), ("schedule", schedule),
            ("estimators", estimators), ("probe set", ceilings), ("model", model), ("training", training),
            ("command", lambda r: _command(r.meta)), ("infoplane version of the run", version)]
    table = []
    for label, fn in rows:
        cells = [fn(r) for r in runs]
        if any(c is not None for c in cells):  # a fact no run records is left out
            table.append((label, [UNRECORDED if c is None else c for c in cells]))
    table.append(("infoplane version of this report", [__version__] * len(runs)))
    return table


def _settings_html(runs, labels, D):
    head = "".join(f"<th>{html.escape(l)}</th>" for l in labels)
    body = "".join(f"<tr><th>{html.escape(label)}</th>"
                   + "".join(f"<td><pre>{html.escape(str(c))}</pre></td>" for c in cells) + "</tr>"
                   for label, cells in _settings_rows(runs, D))
    return (f'<section id="settings"><h2>Settings</h2><table class="settings"><tr><th></th>{head}</tr>{body}'
            f"</table></section>")


def _run_labels(runs, titles, D):
    """Each run's name and what sets it apart from the others, on one line."""
    _, own = D.run_titles(runs, None, titles)
    return [" | ".join(parts) or f"run {i + 1}" for i, parts in enumerate(own)]


def _page_title(runs, titles, D):
    """The facts the runs share, then the runs' names."""
    shared, own = D.run_titles(runs, None, titles)
    names = [parts[0] for parts in own if parts]
    return " | ".join(shared + ([", ".join(names)] if names else [])) or "information plane"


def report(runs: Union[Run, str, os.PathLike, Sequence[Union[Run, str, os.PathLike]]],
           out: Union[str, os.PathLike] = "report.html", *, frames: Optional[int] = None, trail: int = 8,
           titles: Optional[Sequence[str]] = None, title: Optional[str] = None) -> str:
    """Write one self-contained interactive HTML report of one or more runs.

    The page opens offline: plotly.js is inlined (about 5 MB) and nothing is fetched from the network. It holds:

    - the information plane of every run side by side with one shared scale, the axes fixed at the ceilings
      log2 N and H(Y) (dashed); an **epoch slider** and a **play** button move the points through the recorded
      epochs (each layer's point, its trail through the previous ``trail`` frames, the layers of the epoch
      joined); with several seeds each point is the median with the interquartile range as error bars;
      **hover** shows layer, epoch, I(X;T) and I(T;Y) with their seed quartiles;
    - below, per run, I(X;T) and I(T;Y) of each layer against epoch (median and interquartile band), and the
      metrics (loss, then the others, e.g. accuracy), and the sharpness measures of runs that recorded them;
    - a **dropdown** switching every panel between the estimators the runs hold (shown when there are several);
    - for runs with gradient statistics, a **gradients** section: the norm of the mean and of the standard
      deviation of each layer's mini-batch gradients against epoch (log-log, seed medians) and a table of each
      layer's drift-to-diffusion transition epoch (:func:`infoplane.viz.stats.transitions`, default rule);
    - the saturation warnings of :func:`infoplane.viz.planes.saturated_layers` (on the planes and in a list), a
      banner for runs still being written (incomplete), and a **settings** panel: data, training fraction,
      split, seeds, schedule, estimators with their settings, probe size and ceilings, model, training
      settings, the command that made the run and the infoplane versions.

    Parameters
    ----------
    runs : Run, path, or list of them
        Runs on the same data and probe set (e.g. 5% and 85% of the data).
    out : str or os.PathLike, default "report.html"
    frames : int or None
        Slider positions: None = one per recorded epoch; an int = that many epochs, evenly spaced on a
        ``log(epoch + 1)`` axis for log-spaced epochs, with interpolated values (see
        :func:`infoplane.viz.animation.frame_epochs`).
    trail : int, default 8
        Frames of trail behind each point.
    titles : list of str, optional
        One label per run, shown in place of its name (``meta["name"]``, else the run directory's name); the
        panels then keep the order of ``runs`` (otherwise ordered by fraction).
    title : str, optional
        Page title; default: what the runs share (data, estimator, ...) and their names.

    Every panel names its run and what differs between the runs shown (fraction, estimator and its settings,
    reduction, seed count). Notes (saturation) sit below the planes and the ceilings' names beside the axes, so
    that nothing covers a point; a run without estimates of the selected estimator gets a panel that says so.
    Estimators of another measure (matrix-based Rényi) get their own axis titles and ceilings.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        A directory that is not a run, a run without recorded epochs, runs of different data.
    ImportError
        Without Plotly (``pip install 'infoplane[report]'``).
    """
    from infoplane.viz import animation as A
    from infoplane.viz import drawing as D

    out = os.fspath(out)
    if os.path.isdir(out):
        raise ValueError(f"out={out!r} is a directory; give an .html file name")
    runs = D.runs_list(runs)
    for r in runs:
        S.values(r, None)  # a run without epochs fails with the static figures' message
    if titles is not None and len(titles) != len(runs):
        raise ValueError(f"titles has {len(titles)} entries for {len(runs)} runs")
    D.check_same_data(runs)
    if titles is None:
        runs = D.by_fraction(runs)
    elif len(titles) != len(runs):
        raise ValueError(f"titles has {len(titles)} entries for {len(runs)} runs")
    plotly, go, pio = _plotly()
    fig, notes = _figure(runs, _run_labels(runs, titles, D), frames, trail, go, A, D, titles)
    page_title = title or _page_title(runs, titles, D)
    # include_plotlyjs=True writes plotly.js into the page itself; full_html=False lets us add the panels.
    # auto_play=False: the page opens on the last epoch and moves only when asked (Play or the slider).
    body = pio.to_html(fig, include_plotlyjs=True, full_html=False, div_id="plane", auto_play=False,
                       config={"displaylogo": False, "responsive": True})
    incomplete = [l for r, l in zip(runs, _run_labels(runs, titles, D)) if not r.meta.get("complete", False)]
    banner = "".join(f'<p class="incomplete">Incomplete run ({html.escape(l)}): it is still being written or '
                     f"was interrupted; this report shows the epochs recorded so far.</p>" for l in incomplete)
    warn = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    warn_html = f'<section id="saturation"><h2>Saturation warnings</h2><ul>{warn}</ul></section>' if notes else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(page_title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em 2em; color: #222; }}
.incomplete {{ background: #fdd; border: 1px solid #a00; padding: .4em .8em; color: #800; }}
table.settings {{ border-collapse: collapse; font-size: 13px; }}
table.settings th, table.settings td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left;
  vertical-align: top; }}
table.settings pre {{ margin: 0; white-space: pre-wrap; font-family: inherit; max-width: 60em; }}
#saturation li {{ color: #8b0000; }}
</style></head>
<body>
<h1>{html.escape(page_title)}</h1>
{banner}
{body}
{_gradients_html(runs, _run_labels(runs, titles, D), go, pio)}
{warn_html}
{_settings_html(runs, _run_labels(runs, titles, D), D)}
<p>Made by infoplane {html.escape(_version())} with Plotly {html.escape(plotly.__version__)}.</p>
</body></html>
"""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return out


def _gradients_html(runs, labels, go, pio):
    """The gradients section: one log-log panel per run that has gradient statistics, and the transitions."""
    have = [(r, l) for r, l in zip(runs, labels) if r.gradients]
    if not have:
        return ""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(have), subplot_titles=[l for _, l in have], shared_yaxes=True)
    rows = []
    for c, (run, label) in enumerate(have, 1):
        g = run.gradients
        marks = S.transitions(run)
        x = g.epochs.astype(float)
        for j, layer in enumerate(g.layers):
            if layer in g.frozen:
                continue
            colour = TAB10[j % len(TAB10)]
            for field, dash, what in (("mean_norm", "solid", "norm of mean"), ("std_norm", "dash", "norm of std")):
                med = S.median(np.where(np.isfinite(g.get(field)), g.get(field), np.nan))[:, j]
                ok = np.isfinite(med) & (x > 0)
                fig.add_trace(go.Scatter(x=x[ok].tolist(), y=_clean(med[ok]), mode="lines", name=f"{layer}: {what}",
                                         line=dict(color=colour, dash=dash), legendgroup=layer,
                                         showlegend=c == 1), row=1, col=c)
            epoch = marks.get(layer)
            if epoch:
                fig.add_vline(x=epoch, line=dict(color=colour, dash="dot", width=1), row=1, col=c)
            rows.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(layer)}</td>"
                        f"<td>{'none yet' if epoch is None else epoch}</td></tr>")
    fig.update_xaxes(type="log", title_text="Epoch")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="Gradient norm", col=1)
    fig.update_layout(height=420, margin=dict(t=60, b=40))
    body = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id="gradients",
                       config={"displaylogo": False, "responsive": True})
    table = ('<table class="settings"><tr><th>run</th><th>layer</th><th>drift to diffusion (epoch)</th></tr>'
             + "".join(rows) + "</table>")
    return (f'<section id="gradients-section"><h2>Gradients</h2><p>Norm of the mean (solid) and of the '
            f"element-wise standard deviation (dashed) of each layer's mini-batch gradients over each recorded "
            f"epoch; dotted lines mark the transition (running median of 5 recorded epochs, SNR below 1 to the "
            f"end).</p>{body}{table}</section>")


def _version():
    from infoplane._version import __version__

    return __version__


def _figure(runs, labels, frames, trail, go, A, D, titles=None):
    """The Plotly figure (planes, curves, slider, play button, estimator menu) and the saturation notes."""
    R = len(runs)
    estimators = _estimator_names(runs)
    times = A.frame_epochs(runs, frames)
    log = D.log_axis(runs, times)
    approx = frames is not None
    epoch_text = [f"{t:.0f}" if not approx or float(t).is_integer() else f"{t:.1f}" for t in times]
    metric_names = []
    for r in runs:
        metric_names.extend(m for m in r.metric_names if m not in metric_names)
    losses = [m for m in metric_names if "loss" in m.lower()]
    others = [m for m in metric_names if m not in losses]
    # Sharpness measures (sharpness.csv) get a row of their own, drawn like the metrics.
    sharp = []
    for r in runs:
        sharp.extend(f"sharpness:{m}" for m in r.sharpness.measures if f"sharpness:{m}" not in sharp)
    rows = ["I(X;T) [bits]", "I(T;Y) [bits]"] + (["loss"] if losses else []) + (["metric"] if others else []) \
        + (["sharpness"] if sharp else [])
    metric_groups = [g for g in (losses, others, sharp) if g]
    n_rows = len(rows)
    # Per estimator: the panels' titles, the saturation notes (below the planes) and the axes' scales.
    width = max(30, int(170 / R))
    panel_titles, sat_text, scales = {}, {}, {}
    for est in estimators:
        _, own = D.run_titles(runs, est, titles)
        panel_titles[est] = [_wrap_parts(parts, width, D) for parts in own]
        sat_text[est] = [_sat_note(run, est, D, width) if est in run.estimators else None for run in runs]
        scales[est] = [S.plane_scale(run, est) for run in runs]
    title_lines = max(t.count("<br>") + 1 for ts in panel_titles.values() for t in ts)
    note_lines = max([t.count("<br>") + 1 for ts in sat_text.values() for t in ts if t] + [0])
    note_h = 16 * note_lines + 14 if note_lines else 0
    top_margin = TOP + 18 * (title_lines - 1)
    total = PLANE_H + SLIDER_H + note_h + n_rows * ROW_H + (n_rows - 1) * ROW_GAP
    layout = {"height": total + top_margin + BOTTOM, "margin": {"t": top_margin, "b": BOTTOM, "l": 70, "r": 50},
              "hovermode": "closest", "template": "plotly_white", "showlegend": True,
              "legend": {"title": {"text": "Layer"}, "orientation": "h", "x": 0, "xanchor": "left",
                         "y": 1 + (55 + 18 * (title_lines - 1)) / total, "yanchor": "bottom"}}
    gap = 0.06 / R if R > 1 else 0.0

    def col_domain(c):
        return [c / R + (gap if c else 0), (c + 1) / R - (gap if c < R - 1 else 0)]

    # Axes: the planes are 1..R; curve row i, column c is R + i * R + c + 1.
    plane_top = 1.0
    plane_bottom = 1 - PLANE_H / total
    xmax = max([s_.x_ceiling for sc in scales.values() for s_ in sc if s_.x_ceiling] + [1.0])
    ymax = max([s_.y_ceiling for sc in scales.values() for s_ in sc if s_.y_ceiling] + [1.0e-9])
    for r in runs:
        for e in r.estimators:
            ixt, ity = r.get("ixt", estimator=e), r.get("ity", estimator=e)
            for a, name in ((ixt, "x"), (ity, "y")):
                fin = a[np.isfinite(a)]
                if fin.size:
                    if name == "x":
                        xmax = max(xmax, float(fin.max()))
                    else:
                        ymax = max(ymax, float(fin.max()))
    ymax = ymax if ymax > 1e-9 else 1.0
    shapes, base_ann = [], []
    est_ann = {e: [] for e in estimators}  # annotations, shapes and axis titles that follow the estimator menu
    est_shapes = {e: [] for e in estimators}
    est_axes = {e: {} for e in estimators}
    dash = {"color": "#595959", "dash": "dash", "width": 1}
    for c, run in enumerate(runs):
        n = c + 1
        layout[_layout_key("x", n)] = {"domain": col_domain(c), "anchor": _axis("y", n),
                                       "title": {"text": scales[estimators[0]][c].x_label},
                                       "range": [-0.03 * xmax, 1.03 * xmax], "zeroline": False}
        layout[_layout_key("y", n)] = {"domain": [plane_bottom, plane_top], "anchor": _axis("x", n),
                                       "range": [-0.03 * ymax, 1.03 * ymax], "zeroline": False,
                                       "title": {"text": scales[estimators[0]][c].y_label if n == 1 else ""}}
        for est in estimators:
            sc = scales[est][c]
            est_axes[est][f"{_layout_key('x', n)}.title.text"] = sc.x_label
            if n == 1:
                est_axes[est][f"{_layout_key('y', n)}.title.text"] = sc.y_label
            text = panel_titles[est][c]
            if not run.meta.get("complete", False):
                text += (f"<br><span style='color:darkred'>incomplete: recorded up to epoch "
                         f"{int(run.epochs[-1])}</span>")
            # Above the ceiling's name, which sits on the plane's top edge.
            est_ann[est].append({"text": text, "xref": f"{_axis('x', n)} domain", "yref": "paper", "x": 0.5,
                                 "y": plane_top, "yshift": 16, "yanchor": "bottom", "showarrow": False,
                                 "font": {"size": 13}})
            if est not in run.estimators:
                est_ann[est].append({"text": _wrap(f"no {est} estimates in this run (it holds: "
                                                   f"{', '.join(run.estimators)})", 30),
                                     "xref": f"{_axis('x', n)} domain", "yref": f"{_axis('y', n)} domain",
                                     "x": 0.5, "y": 0.5, "showarrow": False, "font": {"size": 13, "color": "#555"}})
                continue
            # The ceilings' names outside the plot area: above its top edge and right of its right edge.
            if sc.x_ceiling is not None:
                est_shapes[est].append({"type": "line", "xref": _axis("x", n), "yref": f"{_axis('y', n)} domain",
                                        "x0": sc.x_ceiling, "x1": sc.x_ceiling, "y0": 0, "y1": 1, "line": dash})
                est_ann[est].append({"text": sc.x_name, "xref": _axis("x", n), "yref": f"{_axis('y', n)} domain",
                                     "x": sc.x_ceiling, "y": 1, "yanchor": "bottom", "showarrow": False,
                                     "font": {"size": 10, "color": "#595959"}})
            if sc.y_ceiling is not None:
                est_shapes[est].append({"type": "line", "xref": f"{_axis('x', n)} domain", "yref": _axis("y", n),
                                        "x0": 0, "x1": 1, "y0": sc.y_ceiling, "y1": sc.y_ceiling, "line": dash})
                if sc.measure == "shannon":  # the bound I(T;Y) <= min(I(X;T), H(Y)): light, under the points
                    est_shapes[est].append({"type": "line", "xref": _axis("x", n), "yref": _axis("y", n), "x0": 0,
                                            "y0": 0, "x1": sc.y_ceiling, "y1": sc.y_ceiling, "layer": "below",
                                            "line": {"color": "#b8b8b8", "width": 1}})
                est_ann[est].append({"text": sc.y_name, "xref": f"{_axis('x', n)} domain", "yref": _axis("y", n),
                                     "x": 1, "y": sc.y_ceiling, "xanchor": "left", "showarrow": False,
                                     "font": {"size": 10, "color": "#595959"}})
            if sat_text[est][c]:
                est_ann[est].append({"text": sat_text[est][c], "xref": f"{_axis('x', n)} domain", "yref": "paper",
                                     "x": 0, "y": plane_bottom - 50 / total, "xanchor": "left", "yanchor": "top",
                                     "align": "left", "showarrow": False, "font": {"size": 11, "color": "darkred"}})
    # Shared scales as explicit ranges: every run and estimator of a row on one y range, one epoch range for all
    # (Plotly's axis "matches" left the matched axes at their empty-axis defaults here).
    xs = np.concatenate([_epoch_x(r.epochs, log) for r in runs])
    pad = 0.02 * (xs.max() - xs.min() or 1.0)
    x_range = [float(xs.min() - pad), float(xs.max() + pad)]
    y_ranges = [_row_range(runs, rows, i, metric_groups, D) for i in range(n_rows)]
    for i, row in enumerate(rows):
        top = 1 - (PLANE_H + SLIDER_H + note_h + i * (ROW_H + ROW_GAP)) / total
        for c, run in enumerate(runs):
            n = R + i * R + c + 1
            layout[_layout_key("x", n)] = {
                "domain": col_domain(c), "anchor": _axis("y", n), **_epoch_ticks(times, log), "range": x_range,
                "title": {"text": ("epoch (log scale)" if log else "epoch") if i == n_rows - 1 else ""}}
            layout[_layout_key("y", n)] = {"domain": [max(0.0, top - ROW_H / total), top], "anchor": _axis("x", n),
                                           "title": {"text": row if c == 0 else ""}, "range": y_ranges[i]}
            for est in estimators if i < 2 else ():
                sc = scales[est][c]
                ceiling = sc.x_ceiling if i == 0 else sc.y_ceiling
                if ceiling is not None and est in run.estimators:
                    est_shapes[est].append({"type": "line", "xref": f"{_axis('x', n)} domain",
                                            "yref": _axis("y", n), "x0": 0, "x1": 1, "y0": ceiling, "y1": ceiling,
                                            "line": dash})
                if c == 0:
                    est_axes[est][f"{_layout_key('y', n)}.title.text"] = sc.x_label if i == 0 else sc.y_label
            if i < 2 and c == 0:
                layout[_layout_key("y", n)]["title"]["text"] = est_axes[estimators[0]][
                    f"{_layout_key('y', n)}.title.text"]
            if i == 0:
                base_ann.append({"text": labels[c], "xref": f"{_axis('x', n)} domain", "yref": "paper",
                                 "x": 0.5, "y": top, "yanchor": "bottom", "showarrow": False,
                                 "font": {"size": 12}})
    layout["shapes"] = shapes

    traces, owner, plane_idx = [], [], []  # owner: estimator name, or None for traces shown with every one
    notes = []
    frame_data = [[] for _ in times]
    for est in estimators:
        for c, run in enumerate(runs):
            if est not in run.estimators:
                continue
            n = c + 1
            tr = D.run_tracks(run, est, times, log)
            seeds = len(run.seeds) > 1
            k_end = len(times) - 1

            # The helpers are called within this iteration; the defaults bind this run's tracks all the same.
            def point(j, k, layer, tr=tr, seeds=seeds):
                x, y = tr["x"][k, j], tr["y"][k, j]
                q = [tr[key][k, j] if seeds else np.nan for key in ("x25", "x75", "y25", "y75")]
                d = {"x": _clean([x]), "y": _clean([y]), "customdata": [[epoch_text[k]] + _clean(q)]}
                if seeds:
                    d["error_x"] = {"type": "data", "symmetric": False, "array": _clean([q[1] - x]),
                                    "arrayminus": _clean([x - q[0]]), "thickness": 1, "width": 0}
                    d["error_y"] = {"type": "data", "symmetric": False, "array": _clean([q[3] - y]),
                                    "arrayminus": _clean([y - q[2]]), "thickness": 1, "width": 0}
                return d

            def trail_of(j, k, tr=tr):
                f0 = max(0, k - trail)
                ages = np.arange(f0, k + 1)
                return {"x": _clean(tr["x"][f0:k + 1, j]), "y": _clean(tr["y"][f0:k + 1, j]),
                        "marker": {"opacity": _clean(0.15 + 0.6 * (ages - f0 + 1) / (k - f0 + 1)),
                                   "color": TAB10[j % 10], "size": 6}}

            def join_of(k, tr=tr):
                ok = np.isfinite(tr["x"][k]) & np.isfinite(tr["y"][k])
                return {"x": _clean(tr["x"][k][ok]), "y": _clean(tr["y"][k][ok])}

            quart = ("<br>seed quartiles: I(X;T) [%{customdata[1]:.3f}, %{customdata[2]:.3f}], "
                     "I(T;Y) [%{customdata[3]:.3f}, %{customdata[4]:.3f}]" if seeds else "<br>one seed")
            for j, layer in enumerate(run.layers):
                plane_idx.append(len(traces))
                traces.append({"type": "scatter", "mode": "lines+markers", "xaxis": _axis("x", n),
                               "yaxis": _axis("y", n), "name": f"{layer} trail", "showlegend": False,
                               "hoverinfo": "skip", "line": {"color": TAB10[j % 10], "width": 1.5},
                               "opacity": 0.6, **trail_of(j, k_end)})
                owner.append(est)
                for k in range(len(times)):
                    frame_data[k].append(trail_of(j, k))
            plane_idx.append(len(traces))
            traces.append({"type": "scatter", "mode": "lines", "xaxis": _axis("x", n), "yaxis": _axis("y", n),
                           "name": "layers of the epoch", "showlegend": False, "hoverinfo": "skip",
                           "line": {"color": "#808080", "width": 1}, **join_of(k_end)})
            owner.append(est)
            for k in range(len(times)):
                frame_data[k].append(join_of(k))
            for j, layer in enumerate(run.layers):
                plane_idx.append(len(traces))
                traces.append({"type": "scatter", "mode": "markers", "xaxis": _axis("x", n),
                               "yaxis": _axis("y", n), "name": str(layer), "legendgroup": str(layer),
                               "showlegend": c == 0,
                               "marker": {"color": TAB10[j % 10], "symbol": SYMBOLS[j % len(SYMBOLS)], "size": 12,
                                          "line": {"color": "#222", "width": 1}},
                               "hovertemplate": (f"<b>layer {html.escape(str(layer))}</b> ({html.escape(labels[c])}, "
                                                 f"{html.escape(est)})<br>epoch %{{customdata[0]}}<br>"
                                                 "I(X;T) = %{x:.3f} bits<br>I(T;Y) = %{y:.3f} bits" + quart
                                                 + "<extra></extra>"),
                               **point(j, k_end, layer)})
                owner.append(est)
                for k in range(len(times)):
                    frame_data[k].append(point(j, k, layer))
            # Curves against epoch, one row per quantity.
            ex = _epoch_x(run.epochs, log)
            for i, field in enumerate(("ixt", "ity")):
                a = run.get(field, estimator=est)
                med, (q1, q3) = S.median(a), S.quartiles(a)
                n_ax = R + i * R + c + 1
                name = "I(X;T)" if field == "ixt" else "I(T;Y)"
                for j, layer in enumerate(run.layers):
                    ok = np.isfinite(med[:, j])
                    if seeds and ok.any():
                        traces.append({"type": "scatter", "mode": "lines", "xaxis": _axis("x", n_ax),
                                       "yaxis": _axis("y", n_ax), "fill": "toself", "line": {"width": 0},
                                       "fillcolor": _rgba(TAB10[j % 10], 0.2), "hoverinfo": "skip",
                                       "showlegend": False, "name": f"{layer} IQR",
                                       "x": _clean(np.concatenate([ex[ok], ex[ok][::-1]])),
                                       "y": _clean(np.concatenate([q3[ok, j], q1[ok, j][::-1]]))})
                        owner.append(est)
                    custom = [[int(e)] + _clean([q1[t, j], q3[t, j]]) for t, e in enumerate(run.epochs) if ok[t]]
                    traces.append({"type": "scatter", "mode": "lines+markers", "xaxis": _axis("x", n_ax),
                                   "yaxis": _axis("y", n_ax), "name": str(layer), "legendgroup": str(layer),
                                   "showlegend": False, "line": {"color": TAB10[j % 10], "width": 1.5},
                                   "marker": {"symbol": SYMBOLS[j % len(SYMBOLS)], "size": 5},
                                   "x": _clean(ex[ok]), "y": _clean(med[ok, j]), "customdata": custom,
                                   "hovertemplate": (f"<b>layer {html.escape(str(layer))}</b> ({html.escape(est)})"
                                                     f"<br>epoch %{{customdata[0]}}<br>{name} = %{{y:.3f}} bits"
                                                     + ("<br>seed quartiles [%{customdata[1]:.3f}, "
                                                        "%{customdata[2]:.3f}]" if seeds else "")
                                                     + "<extra></extra>")})
                    owner.append(est)
            sat = S.saturated_layers(run, est)
            if sat:
                notes.append(f"{labels[c]}, estimator {est}: {D.saturation_message(run, est, sat)}")
    # Metrics: not tied to an estimator, shown with every one.
    for i, group in enumerate(metric_groups):
        for c, run in enumerate(runs):
            n_ax = R + (2 + i) * R + c + 1
            ex = _epoch_x(run.epochs, log)
            seeds = len(run.seeds) > 1
            for m_i, name in enumerate(group):
                if not _has_series(run, name):
                    continue
                a = _series(run, name)
                med, (q1, q3) = S.median(a), S.quartiles(a)
                ok = np.isfinite(med)
                colour = TAB10[m_i % 10]
                if seeds and ok.any():
                    traces.append({"type": "scatter", "mode": "lines", "xaxis": _axis("x", n_ax),
                                   "yaxis": _axis("y", n_ax), "fill": "toself", "line": {"width": 0},
                                   "fillcolor": _rgba(colour, 0.2), "hoverinfo": "skip", "showlegend": False,
                                   "name": f"{name} IQR", "x": _clean(np.concatenate([ex[ok], ex[ok][::-1]])),
                                   "y": _clean(np.concatenate([q3[ok], q1[ok][::-1]]))})
                    owner.append(None)
                custom = [[int(e)] + _clean([q1[t], q3[t]]) for t, e in enumerate(run.epochs) if ok[t]]
                traces.append({"type": "scatter", "mode": "lines", "xaxis": _axis("x", n_ax),
                               "yaxis": _axis("y", n_ax), "name": name, "showlegend": False,
                               "line": {"color": colour, "width": 1.5}, "x": _clean(ex[ok]), "y": _clean(med[ok]),
                               "customdata": custom,
                               "hovertemplate": (f"<b>{html.escape(name)}</b><br>epoch %{{customdata[0]}}<br>"
                                                 "%{y:.4g}" + ("<br>seed quartiles [%{customdata[1]:.4g}, "
                                                               "%{customdata[2]:.4g}]" if seeds else "")
                                                 + "<extra></extra>")})
                owner.append(None)
            if c == 0:
                base_ann.append({"text": ", ".join(group), "xref": f"{_axis('x', n_ax)} domain",
                                 "yref": f"{_axis('y', n_ax)} domain", "x": 0.99, "y": 0.98, "xanchor": "right",
                                 "yanchor": "top", "showarrow": False, "font": {"size": 11}})

    first = estimators[0]
    for t, o in zip(traces, owner):
        t["visible"] = o is None or o == first
    layout["annotations"] = base_ann + est_ann[first]
    layout["shapes"] = shapes + est_shapes[first]
    menus = []
    duration = max(40, min(400, int(12000 / max(1, len(times)))))
    menus.append({"type": "buttons", "direction": "left", "showactive": False, "x": 0, "xanchor": "left",
                  "y": plane_bottom - (60 + note_h) / total, "yanchor": "top", "pad": {"t": 0, "r": 10},
                  "buttons": [
                      {"label": "Play", "method": "animate",
                       "args": [None, {"frame": {"duration": duration, "redraw": False}, "fromcurrent": False,
                                       "transition": {"duration": 0}, "mode": "immediate"}]},
                      {"label": "Pause", "method": "animate",
                       "args": [[None], {"frame": {"duration": 0, "redraw": False}, "mode": "immediate",
                                         "transition": {"duration": 0}}]}]})
    if len(estimators) > 1:
        buttons = []
        for est in estimators:
            vis = [o is None or o == est for o in owner]
            buttons.append({"label": f"estimator: {est}", "method": "update",
                            "args": [{"visible": vis}, {"annotations": base_ann + est_ann[est],
                                                        "shapes": shapes + est_shapes[est], **est_axes[est]}]})
        menus.append({"type": "dropdown", "direction": "down", "x": 1, "xanchor": "right",
                      "y": layout["legend"]["y"], "yanchor": "bottom", "showactive": True, "active": 0,
                      "buttons": buttons})
    layout["updatemenus"] = menus
    layout["sliders"] = [{
        "active": len(times) - 1, "x": 0.12, "len": 0.88, "xanchor": "left",
        "y": plane_bottom - (40 + note_h) / total,
        "yanchor": "top", "pad": {"t": 0}, "currentvalue": {"prefix": "epoch ", "font": {"size": 13}},
        "transition": {"duration": 0},
        "steps": [{"label": epoch_text[k], "method": "animate",
                   "args": [[str(k)], {"mode": "immediate", "frame": {"duration": 0, "redraw": False},
                                       "transition": {"duration": 0}}]} for k in range(len(times))]}]
    # Every trace is listed in every frame, the unchanged ones with no data: when a frame names only some traces
    # of a figure, Plotly's animation redraws each subplot from those alone and the curves would vanish.
    moving = dict(zip(plane_idx, range(len(plane_idx))))
    frames_ = [go.Frame(name=str(k), data=[frame_data[k][moving[t]] if t in moving else {} for t in range(len(traces))],
                        traces=list(range(len(traces)))) for k in range(len(times))]
    fig = go.Figure(data=traces, layout=layout, frames=frames_)
    return fig, notes


def _has_series(run, name):
    """Whether ``run`` has the curve ``name``: a metric, or ``sharpness:<measure>``."""
    if name.startswith("sharpness:"):
        return name.partition(":")[2] in run.sharpness.measures
    return name in run.metric_names


def _series(run, name):
    """``[n_seeds, n_epochs]`` values of a metric or of ``sharpness:<measure>``."""
    if name.startswith("sharpness:"):
        return run.sharpness.get(name.partition(":")[2])
    return run.metric(name)


def _row_range(runs, rows, i, metric_groups, D):
    """y range of curve row ``i``, shared by the runs (and estimators): from 0 (or the lowest value) to the
    largest value or ceiling, with a margin."""
    values = []
    for r in runs:
        if i < 2:
            field = ("ixt", "ity")[i]
            values += [r.get(field, estimator=e) for e in r.estimators]
            ceiling = S.ceilings(r)[i]
            if ceiling is not None:
                values.append(np.array([ceiling]))
        else:
            values += [_series(r, m) for m in metric_groups[i - 2] if _has_series(r, m)]
    flat = np.concatenate([np.ravel(v) for v in values]) if values else np.array([])
    flat = flat[np.isfinite(flat)]
    lo, hi = (min(0.0, float(flat.min())), float(flat.max())) if flat.size else (0.0, 1.0)
    span = (hi - lo) or 1.0
    return [lo - 0.03 * span if lo < 0 else -0.03 * span, hi + 0.05 * span]


def _epoch_x(epochs, log):
    """Positions of epochs on the curves' x axis: log10(epoch + 1) for log-spaced epochs, else the epoch."""
    e = np.asarray(epochs, dtype=float)
    return np.log10(e + 1) if log else e


def _epoch_ticks(times, log):
    # A linear axis over log10(epoch + 1) with ticks labelled in epochs, rather than Plotly's log axis type: that
    # keeps epoch 0, and Plotly left log-axis subplots empty once animation frames were added to the figure.
    if not log:
        return {"type": "linear"}
    hi = float(np.max(times))
    marks = [0] + [10 ** k for k in range(0, 12) if 10 ** k <= hi]
    if math.log10(hi + 1) - math.log10(marks[-1] + 1) > 0.3:
        marks.append(int(round(hi)))
    return {"type": "linear", "tickvals": [math.log10(m + 1) for m in marks], "ticktext": [str(m) for m in marks]}


def _wrap(text, width=44):
    import textwrap

    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, width, break_on_hyphens=False))


def _wrap_parts(parts, width, D):
    """A title's parts, escaped and wrapped at ``width`` characters into Plotly's line breaks."""
    return D.wrap_parts([html.escape(p) for p in parts], width, newline="<br>")


def _sat_note(run, est, D, width):
    """The saturation note of one run and estimator, wrapped, or None when no layer is saturated."""
    layers = S.saturated_layers(run, est)
    return _wrap(D.saturation_message(run, est, layers), width) if layers else None


def _rgba(hex_colour, alpha):
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"

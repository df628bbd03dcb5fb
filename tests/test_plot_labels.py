"""What the figures say and where: every panel names its run and what sets it apart, settings are rounded and
titles wrapped, unknown facts are left out, an estimator's own scale is used, and no note covers a data point
(checked on the rendered pixels)."""
import json
import math
import re
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection

import infoplane
import infoplane.plot as ip
from infoplane.cli.main import main
from infoplane.estimators import KDE, Binning, Renyi, WithNull
from infoplane.runs.writer import Row, Run, RunWriter
from infoplane.tracking.schedule import every

LAYERS = ["h1", "h2", "h3", "out"]
N = 1024
LOG2_N = 10.0
H_Y = 1.0
SCHEDULE = every(3, 30)


def _meta(estimators=None, fraction=0.8, reduce=None, data="toy", h_y=H_Y, n_classes=2):
    estimators = estimators or [{"kind": "binning", "name": "binning", "bins": 30, "range": [-1.0, 1.0]}]
    meta = {"layers": [{"name": l} for l in LAYERS], "n": N, "log2_n": LOG2_N, "h_y": h_y, "n_classes": n_classes,
            "estimators": [{"name": s["name"], "settings": s} for s in estimators],
            "schedule": SCHEDULE.to_json(), "seeds": [0], "fraction": fraction, "complete": True}
    if data is not None:
        meta["data"] = data
    if reduce is not None:
        meta["reduce"] = {"spec": reduce}
    return meta


def _rows(names=("binning",), fraction=0.8, points=None):
    """One seed; ``points`` maps a layer to its (I(X;T), I(T;Y)) at every epoch (default: spread inside)."""
    points = points or {"h1": (0.7 * LOG2_N, 0.9), "h2": (0.5 * LOG2_N, 0.8), "h3": (0.3 * LOG2_N, 0.6),
                        "out": (0.1 * LOG2_N, 0.3)}
    return [Row(0, fraction, int(e), layer, name, x + 0.002 * e, y, math.nan, math.nan)
            for name in names for e in SCHEDULE.epochs for layer, (x, y) in points.items()]


def _write(path, meta, rows):
    writer = RunWriter(path, meta)
    writer.add_rows(rows)
    writer.finish()
    return str(path)


# A saturated run with points exactly where notes used to be drawn: a layer high in the top left (the old
# saturation box), one in the bottom right (the old incomplete note), and the saturated layers at log2 N.
HIDDEN = {"h1": (0.995 * LOG2_N, 0.97), "h2": (0.98 * LOG2_N, 0.05), "h3": (0.85 * LOG2_N, 0.03),
          "out": (0.12 * LOG2_N, 0.8)}


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def plane_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def ceiling_levels(ax):
    """The heights of the dashed horizontal lines (the I(T;Y) ceiling)."""
    return [line.get_ydata()[0] for line in ax.lines
            if line.get_linestyle() == "--" and len(set(np.atleast_1d(line.get_ydata()))) == 1
            and len(set(np.atleast_1d(line.get_xdata()))) > 1]


def titles(fig):
    return [ax.get_title() for ax in plane_axes(fig)]


# ------------------------------------------------------------------------------------------ telling runs apart
def test_runs_that_differ_only_in_reduction_get_distinct_panels_named_after_their_directories(tmp_path):
    # As `infoplane track --out cnn-pca ...` writes them: the study's directory holds fraction-0.8.
    dirs = [_write(tmp_path / name / "fraction-0.8", _meta(reduce=spec), _rows())
            for name, spec in (("cnn-cmean", "channel-mean"), ("cnn-pca", "pca:4"), ("cnn-flat", None))]
    fig = ip.compare(dirs)
    shown = titles(fig)
    assert len(set(shown)) == 3
    for title, name, spec in zip(shown, ("cnn-cmean", "cnn-pca", "cnn-flat"), ("channel-mean", "pca:4", "flatten")):
        assert title.startswith(name) and f"reduce={spec}" in title
    # What they share is said once, above the panels, and not repeated in each.
    suptitle = fig.get_suptitle()
    assert "toy" in suptitle and "80% training data" in suptitle and "binning" in suptitle
    assert not any("80% training data" in t for t in shown)
    # A label given by the user replaces the directory's name.
    fig = ip.compare(dirs, titles=["A", "B", "C"])
    assert [t.split(" | ")[0] for t in titles(fig)] == ["A", "B", "C"]
    # The report: distinct panel titles with the reduction, and a page title that does not repeat the fraction.
    pytest.importorskip("plotly")
    page = open(infoplane.report(dirs, out=tmp_path / "r.html"), encoding="utf-8").read()
    head = re.search("<title>(.*)</title>", page).group(1)
    assert head.count("80% training data") == 1 and all(n in head for n in ("cnn-cmean", "cnn-pca", "cnn-flat"))
    for spec in ("reduce=channel-mean", "reduce=pca:4", "reduce=flatten"):
        assert spec in page


def test_settings_are_rounded_and_long_titles_wrap_without_cutting_a_word():
    settings = {"kind": "noisy", "name": "noisy", "noise_var": 0.04000000000000001, "samples": 512, "seed": 0,
                "precision": "float32", "control_variate": True, "memory_budget": 268435456,
                "threshold": 1.2345678e-05}
    run = Run(_meta([settings], reduce={"conv1": "channel-mean", "conv2": "channel-mean", "fc": "pca:4"}),
              _rows(("noisy",)))
    for fig in (ip.information_plane(run), ip.curves(run)):
        title = fig.get_suptitle() or titles(fig)[0]
        assert "noise_var=0.04" in title and "0.04000000000000001" not in title and "threshold=1.235e-05" in title
        # Wrapped between words, every word whole: the lines rejoined give back the one-line title.
        assert "\n" in title
        assert " ".join(title.split()) == " ".join(title.replace("\n", " ").split())
        for word in ("precision=float32,", "control_variate=True,", "samples=512,"):
            assert word in title.replace("\n", " ")
        fig.canvas.draw()
        artist = fig._suptitle if fig.get_suptitle() else plane_axes(fig)[0].title
        box = artist.get_window_extent()
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # the title fits in the figure: nothing cut at its edges


def test_unknown_facts_are_left_out_never_shown_as_na(tmp_path):
    meta = _meta(data=None, fraction=None)  # a Lightning run, or the README's own loop: no data name, no fraction
    run = Run(meta, _rows(fraction=None))
    other = Run(_meta(data=None, fraction=None, reduce="pca:4"), _rows(fraction=None))
    texts = [ip.information_plane(run).axes[0].get_title(), ip.curves(run).get_suptitle()]
    fig = ip.compare([run, other])
    texts += titles(fig) + [fig.get_suptitle()]
    assert all("n/a" not in t and "fraction" not in t for t in texts), texts
    pytest.importorskip("plotly")
    page = open(infoplane.report([run, other], out=tmp_path / "r.html"), encoding="utf-8").read()
    assert "n/a" not in _own_text(page)


def _own_text(page):
    """The report's page without plotly.js itself (whose minified code holds "n/a" as division)."""
    return re.sub(r"<script[^>]*>(?:(?!</script>).){200000,}</script>", "", page, flags=re.S)


def test_a_run_without_the_chosen_estimator_gets_a_panel_that_says_so(tmp_path):
    kde = {"kind": "kde", "name": "kde", "noise_var": 0.1}
    both = _write(tmp_path / "both", _meta([Binning().settings(), kde]), _rows(("binning", "kde")))
    only = _write(tmp_path / "only", _meta(), _rows())
    fig = ip.compare([both, only], estimator="kde")
    empty = [ax for ax in plane_axes(fig) if any("no kde estimates in this run" in t.get_text() for t in ax.texts)]
    assert len(empty) == 1 and "it holds: binning" in " ".join(t.get_text() for t in empty[0].texts).replace("\n", " ")
    assert not [c for c in empty[0].collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    # The files: the run that has it gets its own figures, the comparison shows both.
    written = ip.write_figures([both, only], estimator="kde", out=tmp_path / "figs")
    assert sorted(p.split("/")[-1] for p in written) == ["compare-kde.png", "curves-kde.png", "plane-kde.png"]
    with pytest.raises(ValueError, match="not in this run"):
        ip.compare([only, only], estimator="kde")  # no run holds it: an error, as for one run
    pytest.importorskip("plotly")
    page = open(infoplane.report([both, only], out=tmp_path / "r.html"), encoding="utf-8").read()
    assert "no kde estimates in this run" in page


def test_renyi_values_get_their_own_axes_and_ceilings_not_shannons():
    assert Renyi().measure == "renyi" and WithNull(Renyi(ixt_from="identity")).measure == "renyi"
    assert Binning().measure == KDE().measure == "shannon"
    h_y = 0.4690  # unbalanced labels: H(Y) < log2 K = 1, so the two ceilings are told apart
    settings = Renyi(alpha=2.0).settings()
    run = Run(_meta([settings], h_y=h_y, n_classes=2), _rows(("renyi",)))
    fig = ip.information_plane(run)
    ax = plane_axes(fig)[0]
    horizontal = ceiling_levels(ax)
    assert horizontal == [pytest.approx(1.0)] and not any(math.isclose(v, h_y) for v in horizontal)
    assert "Rényi" in ax.get_xlabel() and "Rényi" in ax.get_ylabel() and "alpha=2" in ax.get_ylabel()
    names = [t.get_text() for child in ax.child_axes for t in child.get_xticklabels() + child.get_yticklabels()]
    assert "log2 K" in names and "H(Y)" not in names
    curve_axes = ip.curves(run).axes[:2]
    levels = ceiling_levels(curve_axes[1])
    assert levels == [pytest.approx(1.0)] and "Rényi" in curve_axes[1].get_ylabel()
    # Shannon estimates keep H(Y); side by side with Rényi ones, each panel keeps its own labels and ceilings.
    shannon = Run(_meta(h_y=h_y), _rows())
    ax = plane_axes(ip.information_plane(shannon))[0]
    assert ceiling_levels(ax) == [pytest.approx(h_y)]
    left, right = plane_axes(ip.compare([shannon, run], titles=["binned", "renyi"]))
    assert left.get_ylabel() == "I(T;Y) [bits]" and "Rényi" in right.get_ylabel()
    assert ceiling_levels(left) == [pytest.approx(h_y)] and ceiling_levels(right) == [pytest.approx(1.0)]
    # ... and its own scale: the Rényi panel's axes are not shared, and its ticks are labelled
    import matplotlib.pyplot as plt

    plt.gcf().canvas.draw()
    assert not right.get_shared_y_axes().joined(left, right)
    assert any(t.get_text() for t in right.get_yticklabels()) and any(t.get_text() for t in left.get_yticklabels())


# ------------------------------------------------------------------------------------------ no note over data
def _points(fig):
    """Display coordinates of every plotted point of the planes."""
    out = []
    for ax in plane_axes(fig):
        for coll in ax.collections:
            if isinstance(coll, PathCollection) and len(coll.get_offsets()):
                out.append(ax.transData.transform(np.asarray(coll.get_offsets(), dtype=float)))
    return np.concatenate(out)


def _notes(fig):
    """Everything drawn that is not data, axes or titles: texts, annotations, legends, the ceilings' names."""
    out = list(fig.texts) + list(fig.legends)
    for ax in fig.axes:
        out += list(ax.texts) + list(ax.child_axes) + ([ax.get_legend()] if ax.get_legend() else [])
    return out


def assert_notes_cover_no_point(fig):
    """Render with and without the notes (the layout frozen in between): every point's pixels are the same."""
    if not hasattr(fig.canvas, "buffer_rgba"):  # a closed pyplot figure keeps a bare canvas
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    fig.set_layout_engine("none")
    fig.canvas.draw()
    with_notes = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    notes = _notes(fig)
    assert notes, "the case must have notes to check"
    for artist in notes:
        artist.set_visible(False)
    fig.canvas.draw()
    without = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    height = without.shape[0]
    pts = _points(fig)
    assert len(pts) >= 4
    for x, y in pts:
        r, c = int(round(height - y)), int(round(x))
        window = (slice(max(r - 2, 0), r + 3), slice(max(c - 2, 0), c + 3))
        assert (without[window] != 255).any(), "the point itself must be drawn"
        assert np.array_equal(with_notes[window], without[window]), f"a note covers the point at ({x:.0f}, {y:.0f})"


def _hidden_run(complete=False):
    meta = _meta(data="digits")
    meta["complete"] = complete
    return Run(meta, _rows(points=HIDDEN))


def test_no_note_or_legend_covers_a_point_of_a_plane_or_a_comparison():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = ip.information_plane(_hidden_run())
        assert any(issubclass(w.category, ip.SaturationWarning) for w in caught)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "saturated" in texts and "incomplete run" in texts
    assert_notes_cover_no_point(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = ip.compare([_hidden_run(), _hidden_run(True)], titles=["a", "b"])
    assert_notes_cover_no_point(fig)


def test_no_note_or_legend_covers_a_point_of_an_animation_frame(tmp_path, monkeypatch):
    shown = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: shown.append(fig) or close(fig))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ip.animate(_hidden_run(), tmp_path / "a.gif", frames=2)
    assert_notes_cover_no_point(shown[-1])  # the last frame, as written


def _inside(ann, layout):
    """Whether a Plotly annotation's anchor lies inside a plane's plot area, towards its inside."""
    def frac(ref, value, axis):
        if ref.endswith(" domain"):
            return value
        rng = layout[f"{axis}axis{ref[1:]}"]["range"]
        return (value - rng[0]) / (rng[1] - rng[0])

    if ann["xref"] == "paper" or ann["yref"] == "paper" or ann.get("yshift"):
        return False
    x, y = frac(ann["xref"], ann["x"], "x"), frac(ann["yref"], ann["y"], "y")
    outside = ((x >= 1 and ann.get("xanchor") == "left") or (y >= 1 and ann.get("yanchor") == "bottom")
               or (x <= 0 and ann.get("xanchor") == "right") or (y <= 0 and ann.get("yanchor") == "top"))
    return 0 <= x <= 1 and 0 <= y <= 1 and not outside


def test_the_report_puts_its_notes_outside_the_planes(tmp_path, monkeypatch):
    pio = pytest.importorskip("plotly.io")
    figures = []
    to_html = pio.to_html
    monkeypatch.setattr(pio, "to_html", lambda fig, **kw: figures.append(fig) or to_html(fig, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        infoplane.report([_hidden_run()], out=tmp_path / "r.html")
    layout = json.loads(figures[0].to_json())["layout"]
    texts = [a["text"] for a in layout["annotations"]]
    assert any("saturated" in t for t in texts) and "log2 N" in texts and "H(Y)" in texts
    inside = [a["text"] for a in layout["annotations"] if a["xref"].split(" ")[0] == "x" and _inside(a, layout)]
    assert inside == []


# ------------------------------------------------------------------------------------------ names and labels
def test_tracker_name_and_cli_labels_name_the_runs(tmp_path, capsys):
    x, y = torch.randn(64, 3), torch.arange(64) % 2
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    tracker = infoplane.Tracker(model, x, y, schedule=[0, 1], out=tmp_path / "run-dir", name="my baseline")
    tracker.step(0)
    tracker.step(1)
    tracker.close()
    run = infoplane.load_run(tmp_path / "run-dir")
    assert run.meta["name"] == "my baseline"
    with pytest.warns(ip.SaturationWarning, match="my baseline"):  # 64 samples in 30 bins: saturated
        assert ip.information_plane(run).axes[0].get_title().startswith("my baseline")
    with pytest.raises(ValueError, match="name"):
        infoplane.Tracker(model, x, y, out=None, name="a", meta={"name": "b"})
    a = _write(tmp_path / "a", _meta(reduce="pca:4"), _rows())
    b = _write(tmp_path / "b", _meta(), _rows())
    assert main(["plot", a, b, "--label", "only one"]) == 2
    assert "one --label per RUN_DIR" in capsys.readouterr().err
    assert main(["plot", a, b, "--label", "L1", "--label", "L2", "--out", str(tmp_path / "c.svg")]) == 0
    svg = (tmp_path / "c.svg").read_text()
    assert "L1" in svg and "L2" in svg
    pytest.importorskip("plotly")
    assert main(["report", a, b, "--label", "first", "--label", "second", "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert re.search("<title>[^<]*first, second[^<]*</title>", page)


def test_wrap_parts_breaks_between_parts_and_never_inside_a_word():
    from infoplane.viz.drawing import format_setting, wrap_parts

    parts = ["cnn-pca", "80% training data", "noisy (noise_var=0.04, samples=512, seed=0, precision=float32)"]
    text = wrap_parts(parts, 30)
    assert all(len(line) <= 30 for line in text.split("\n"))
    # A line break stands in for the separator; every word is whole.
    assert [w for w in text.split() if w != "|"] == " ".join(parts).split()
    assert wrap_parts(parts, 200) == " | ".join(parts)
    assert [format_setting(v) for v in (0.1 + 0.2, 1e-3, 30, [-1.0, 1.0], True, "pca:4")] == \
        ["0.3", "0.001", "30", "[-1, 1]", "True", "pca:4"]

"""Figures of infoplane.plot, checked through the matplotlib objects they contain (no pixel comparisons)."""
import math
import os
import subprocess
import sys
import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import infoplane
import infoplane.plot as ip
from infoplane.runs.writer import Row, Run, RunWriter
from infoplane.tracking.schedule import every, log_schedule

LAYERS = ["h1", "h2", "h3", "out"]
N = 1000
H_Y = 1.0


def _meta(seeds, fraction, schedule, data="toy", n=N, h_y=H_Y, layers=LAYERS):
    return {"layers": [{"name": l} for l in layers], "n": n, "log2_n": math.log2(n), "h_y": h_y,
            "estimators": [{"name": "binning",
                            "settings": {"kind": "binning", "name": "binning", "bins": 30, "range": [-1, 1]}}],
            "schedule": schedule.to_json(), "seeds": list(seeds), "fraction": fraction, "data": data}


def _rows(seeds, fraction, epochs, rng, ixt=None, layers=LAYERS, n=N):
    rows = []
    for s in seeds:
        for e in epochs:
            for layer in layers:
                x = rng.uniform(0, math.log2(n)) if ixt is None else ixt
                rows.append(Row(s, fraction, int(e), layer, "binning", x, rng.uniform(0, H_Y), math.nan, math.nan))
    return rows


def make_run(seeds=(0,), fraction=0.5, schedule=None, ixt=None, data="toy", n=N, metrics=True, seed=0):
    """An in-memory run with random coordinates inside the ceilings; ``ixt`` fixes every I(X;T)."""
    schedule = schedule or every(3, 30)
    rng = np.random.default_rng(seed)
    epochs = schedule.epochs
    met = {(s, int(e)): {"train_loss": rng.uniform(), "test_acc": rng.uniform()} for s in seeds for e in epochs}
    return Run(_meta(seeds, fraction, schedule, data=data, n=n), _rows(seeds, fraction, epochs, rng, ixt, n=n),
               met if metrics else None, ["train_loss", "test_acc"] if metrics else ())


def write_run(path, **kw):
    """The same run written to disk through the store's writer."""
    run = make_run(**kw)
    writer = RunWriter(path, run.meta)
    writer.add_rows(run.rows)
    for s in run.seeds:
        for i, e in enumerate(run.epochs):
            writer.add_metrics(s, int(e), {m: float(run.metric(m, seed=s)[i]) for m in run.metric_names})
    writer.finish()
    return os.fspath(path)


@pytest.fixture(autouse=True)
def _no_show_and_cleanup(monkeypatch):
    def show(*a, **k):
        raise AssertionError("infoplane.plot must never call plt.show")

    monkeypatch.setattr(plt, "show", show)
    yield
    plt.close("all")


def plane_axes(fig):
    """The plotting axes of a figure (colourbar axes excluded)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def layer_scatters(ax):
    """The per-layer point sets (labelled with the layer name), in drawing order."""
    return [c for c in ax.collections if c.get_label() in LAYERS]


# ------------------------------------------------------------------------------------------------- plane
def test_plane_points_colours_and_axes_follow_the_run():
    run = make_run()
    fig = ip.information_plane(run)
    (ax,) = plane_axes(fig)
    scatters = layer_scatters(ax)
    assert [s.get_label() for s in scatters] == LAYERS
    ixt, ity = run.get("ixt", seed=0), run.get("ity", seed=0)
    for j, sc in enumerate(scatters):
        np.testing.assert_allclose(sc.get_offsets(), np.column_stack([ixt[:, j], ity[:, j]]))
        np.testing.assert_array_equal(sc.get_array(), run.epochs)
        assert (sc.norm.vmin, sc.norm.vmax) == (run.epochs.min(), run.epochs.max())
        assert sc.get_cmap().name == "gnuplot"
    # Distinct markers, and the legend names the layers.
    assert len({tuple(map(tuple, sc.get_paths()[0].vertices)) for sc in scatters}) == len(LAYERS)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == LAYERS
    # Axes from 0 to the ceilings (small margin), with dashed ceiling lines.
    log2_n = math.log2(N)
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert x0 <= 0 and log2_n <= x1 <= 1.06 * log2_n
    assert y0 <= 0 and H_Y <= y1 <= 1.06 * H_Y
    dashed = [l for l in ax.lines if l.get_linestyle() == "--"]
    assert any(np.allclose(l.get_xdata(), log2_n) for l in dashed)
    assert any(np.allclose(l.get_ydata(), H_Y) for l in dashed)
    # One colourbar, labelled Epoch, spanning the epochs.
    (cb_ax,) = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert cb_ax.get_ylabel() == "Epoch"
    title = ax.get_title()
    assert "toy" in title and "50%" in title and "binning" in title and "bins=30" in title


def test_plane_joins_the_layers_of_each_epoch():
    run = make_run()
    ax = plane_axes(ip.information_plane(run))[0]
    (lines,) = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    segments = lines.get_segments()
    ixt, ity = run.get("ixt", seed=0), run.get("ity", seed=0)
    assert len(segments) == len(run.epochs)
    for e, seg in enumerate(segments):
        np.testing.assert_allclose(seg, np.column_stack([ixt[e], ity[e]]))


def test_plane_draws_into_a_given_axes_and_accepts_a_path(tmp_path):
    path = write_run(tmp_path / "run")
    fig, ax = plt.subplots()
    assert ip.information_plane(path, ax=ax) is fig
    assert [s.get_label() for s in layer_scatters(ax)] == LAYERS


def test_missing_meta_keys_do_not_break_the_plane():
    run = make_run()
    meta = {k: v for k, v in run.meta.items() if k not in ("data", "fraction", "schedule", "estimators")}
    bare = Run(meta, run.rows)
    fig = ip.information_plane(bare)
    # What the run does not record is left out, never shown as "n/a".
    title = plane_axes(fig)[0].get_title()
    assert "n/a" not in title and "binning" in title


def test_log_spaced_epochs_get_a_log_colour_scale_that_handles_epoch_0():
    run = make_run(schedule=log_schedule(2000, 40))
    assert run.epochs[0] == 0
    norm = ip.epoch_norm(run)
    assert isinstance(norm, matplotlib.colors.FuncNorm)
    assert (norm.vmin, norm.vmax) == (0, run.epochs.max())
    mapped = norm(run.epochs.astype(float))
    assert np.all(np.isfinite(mapped)) and mapped[0] == 0 and math.isclose(mapped[-1], 1)
    # log(epoch + 1) puts the geometric middle of the schedule in the middle of the colour scale.
    mid = math.sqrt(run.epochs.max() + 1) - 1
    assert math.isclose(float(norm(mid)), 0.5, rel_tol=1e-9)
    # The same epochs without the schedule's name are recognised by their spacing alone.
    meta = {k: v for k, v in run.meta.items() if k != "schedule"}
    assert isinstance(ip.epoch_norm(Run(meta, run.rows)), matplotlib.colors.FuncNorm)
    # Evenly spaced epochs, even over a wide range, stay linear.
    even = make_run(schedule=every(50, 3000))
    assert type(ip.epoch_norm(even)) is matplotlib.colors.Normalize
    ip.information_plane(run)  # draws with the log scale


def test_plane_works_with_a_matplotlib_style():
    run = make_run()
    with plt.style.context("ggplot"):
        fig = ip.information_plane(run)
        ax = plane_axes(fig)[0]
        assert matplotlib.colors.same_color(ax.get_facecolor(), matplotlib.rcParams["axes.facecolor"])
    assert len(layer_scatters(ax)) == len(LAYERS)


# ------------------------------------------------------------------------------------------------- seeds
def test_several_seeds_plot_the_median_with_interquartile_boxes():
    run = make_run(seeds=(0, 1, 2, 4, 7))
    ax = plane_axes(ip.information_plane(run))[0]
    ixt, ity = run.get("ixt"), run.get("ity")
    for j, sc in enumerate(layer_scatters(ax)):
        np.testing.assert_allclose(sc.get_offsets()[:, 0], np.median(ixt[:, :, j], axis=0))
        np.testing.assert_allclose(sc.get_offsets()[:, 1], np.median(ity[:, :, j], axis=0))
    (boxes,) = [c for c in ax.collections if type(c).__name__ == "PolyCollection"]
    corners = np.array([p.vertices[:4] for p in boxes.get_paths()])
    assert len(corners) == len(run.epochs) * len(LAYERS)
    q = np.percentile(ixt, [25, 75], axis=0).reshape(2, -1)  # [2, epochs * layers], epoch-major like the boxes
    np.testing.assert_allclose(corners[:, :, 0].min(axis=1), q[0])
    np.testing.assert_allclose(corners[:, :, 0].max(axis=1), q[1])
    assert "median of 5 seeds" in ax.get_title()


def test_all_seeds_draws_every_seed_faintly():
    run = make_run(seeds=(0, 1, 2))
    ax = plane_axes(ip.information_plane(run, all_seeds=True))[0]
    faint = [c for c in ax.collections if c.get_label() not in LAYERS and c.get_alpha() is not None
             and c.get_alpha() < 0.5 and type(c).__name__ == "PathCollection"]
    assert len(faint) == len(run.seeds) * len(LAYERS)
    drawn = np.concatenate([c.get_offsets()[:, 0] for c in faint])
    np.testing.assert_allclose(np.sort(drawn), np.sort(run.get("ixt").ravel()))


# ----------------------------------------------------------------------------------------------- compare
def test_compare_orders_panels_by_fraction_and_shares_one_colour_scale():
    runs = [make_run(fraction=0.85, schedule=every(2, 40), seed=1), make_run(fraction=0.05, seed=2),
            make_run(fraction=0.45, schedule=every(5, 20), seed=3)]
    fig = ip.compare(runs)
    axes = plane_axes(fig)
    assert len(axes) == len(runs)
    titles = [ax.get_title() for ax in axes]
    assert [t.split("%")[0] for t in titles] == ["5", "45", "85"]
    all_epochs = np.concatenate([r.epochs for r in runs])
    for ax in axes:
        for sc in layer_scatters(ax):
            assert (sc.norm.vmin, sc.norm.vmax) == (all_epochs.min(), all_epochs.max())
        assert ax.get_xlim() == axes[0].get_xlim() and ax.get_ylim() == axes[0].get_ylim()
    assert len([a for a in fig.axes if a.get_label() == "<colorbar>"]) == 1
    # The middle panel shows the 45% run's own points.
    first = layer_scatters(axes[1])[0]
    np.testing.assert_allclose(first.get_offsets()[:, 0], runs[2].get("ixt", seed=0)[:, 0])


def test_compare_refuses_different_data_sets():
    with pytest.raises(ValueError, match=r"different data sets.*'digits'.*'tishby12'"):
        ip.compare([make_run(data="digits"), make_run(data="tishby12")])
    with pytest.raises(ValueError, match=r"N = 1000.*N = 4096"):
        ip.compare([make_run(), make_run(n=4096)])


# ------------------------------------------------------------------------------------------------ curves
def test_curves_plot_information_and_metrics_against_epoch():
    run = make_run(seeds=(0, 1, 2))
    fig = ip.curves(run)
    ax_ixt, ax_ity, ax_loss, ax_other = fig.axes
    for ax, field in ((ax_ixt, "ixt"), (ax_ity, "ity")):
        assert ax.get_xscale() == "symlog"  # log-like, with epoch 0 on the axis
        lines = [l for l in ax.lines if l.get_label() in LAYERS]
        assert [l.get_label() for l in lines] == LAYERS
        for j, line in enumerate(lines):
            np.testing.assert_array_equal(line.get_xdata(), run.epochs)
            np.testing.assert_allclose(line.get_ydata(), np.median(run.get(field)[:, :, j], axis=0))
    assert any(np.allclose(l.get_ydata(), math.log2(N)) for l in ax_ixt.lines if l.get_linestyle() == "--")
    (loss,) = [l for l in ax_loss.lines if l.get_label() == "train_loss"]
    np.testing.assert_allclose(loss.get_ydata(), np.median(run.metric("train_loss"), axis=0))
    assert [l.get_label() for l in ax_other.lines] == ["test_acc"]


def test_curves_without_metrics_has_only_the_information_panels():
    fig = ip.curves(make_run(metrics=False))
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2


# ------------------------------------------------------------------------------------------------ files
def _magic(path):
    with open(path, "rb") as f:
        return f.read(5)


def test_write_figures_for_runs_on_disk(tmp_path):
    a = write_run(tmp_path / "runs" / "f85", fraction=0.85)
    b = write_run(tmp_path / "runs" / "f05", fraction=0.05)
    before = plt.get_fignums()
    paths = ip.write_figures([a, b])
    expected = [os.path.join(a, "plane-binning.png"), os.path.join(a, "curves-binning.png"), os.path.join(b, "plane-binning.png"),
                os.path.join(b, "curves-binning.png"), str(tmp_path / "runs" / "compare-binning.png")]
    assert sorted(paths) == sorted(expected)
    assert all(_magic(p) == b"\x89PNG\r" for p in paths)
    assert plt.get_fignums() == before  # every figure it made is closed


@pytest.mark.parametrize("ext,magic", [(".pdf", b"%PDF-"), (".svg", b"<?xml"), (".png", b"\x89PNG\r")])
def test_write_figures_main_figure_format_follows_the_extension(tmp_path, ext, magic):
    a = write_run(tmp_path / "a", fraction=0.1)
    b = write_run(tmp_path / "b", fraction=0.9)
    out = tmp_path / "figs" / f"compare{ext}"
    paths = ip.write_figures([a, b], out=out)
    assert str(out) in paths and _magic(out) == magic
    assert not os.path.exists(tmp_path / "compare-binning.png")
    # A single run: the plane goes to out, the curves stay in the run directory.
    single = tmp_path / f"plane{ext}"
    paths = ip.write_figures(a, out=single)
    assert sorted(paths) == sorted([str(single), os.path.join(a, "curves-binning.png")]) and _magic(single) == magic


def test_write_figures_in_memory_runs_need_out(tmp_path):
    run = make_run()
    with pytest.raises(ValueError, match="pass out="):
        ip.write_figures(run)
    paths = ip.write_figures(run, out=tmp_path / "figs")
    assert sorted(paths) == sorted([str(tmp_path / "figs" / "plane-binning.png"), str(tmp_path / "figs" / "curves-binning.png")])
    assert all(_magic(p) == b"\x89PNG\r" for p in paths)


def test_not_a_run_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not an infoplane run directory"):
        ip.write_figures(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        ip.information_plane(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"\.png, \.pdf or \.svg"):
        ip.write_figures(make_run(), out=tmp_path / "plane.jpg")
    with pytest.raises(TypeError, match="Run or the path"):
        ip.curves(42)


def test_write_figures_refuses_mismatched_data_sets(tmp_path):
    a = write_run(tmp_path / "a", data="digits")
    b = write_run(tmp_path / "b", data="tishby12")
    with pytest.raises(ValueError, match="different data sets"):
        ip.write_figures([a, b])
    assert not os.path.exists(os.path.join(a, "plane-binning.png"))  # refused before writing anything


# ------------------------------------------------------------------------------------------- saturation
def test_saturated_run_warns_and_says_so_on_the_figure():
    run = make_run(ixt=math.log2(N))
    assert ip.saturated_layers(run) == LAYERS
    with pytest.warns(ip.SaturationWarning, match="saturated at log2 N") as record:
        fig = ip.information_plane(run)
    assert issubclass(ip.SaturationWarning, UserWarning)
    saturation = [w for w in record if issubclass(w.category, ip.SaturationWarning)]
    assert saturation[0].filename == __file__  # points at the caller, not at infoplane's internals
    texts = [t.get_text() for t in plane_axes(fig)[0].texts]
    assert any("saturated" in t and "bin choice" in t for t in texts)


@pytest.mark.parametrize("settings, cause", [
    ({"kind": "binning", "bins": 30}, "bin choice"),
    ({"kind": "with-null", "estimator": {"kind": "binning", "bins": 30}}, "bin choice"),
    ({"kind": "kde", "noise_var": 0.1}, "noise variance"),
    ({"kind": "discrete"}, "own exact value"),
    ({"kind": "knn", "k": 3}, "estimator's resolution"),
])
def test_saturation_note_names_the_cause_of_the_estimator_kind(settings, cause):
    # An exact estimator has no bins to blame; a permutation null is read through the estimator it wraps.
    run = make_run(ixt=math.log2(N))
    run.meta["estimators"][0]["settings"] = settings
    with pytest.warns(ip.SaturationWarning, match=cause):
        fig = ip.information_plane(run)
    texts = " ".join(" ".join(t.get_text().split()) for t in plane_axes(fig)[0].texts)
    assert cause in texts and ("bin choice" in texts) == (cause == "bin choice")


def test_saturation_counts_the_share_of_epochs_per_layer():
    run = make_run(schedule=every(3, 27))  # 10 epochs, 0, 3, ..., 27: an even count
    log2_n = math.log2(N)
    n_epochs = len(run.epochs)
    # h1 at the ceiling for just over half the epochs, h2 for just under half, h3 at 96% of it throughout.
    rows = []
    for r in run.rows:
        e = list(run.epochs).index(r.epoch)
        if r.layer == "h1" and e <= n_epochs // 2:
            r = r._replace(ixt=log2_n)
        elif r.layer == "h2" and e < n_epochs // 2:
            r = r._replace(ixt=log2_n)
        elif r.layer == "h3":
            r = r._replace(ixt=0.96 * log2_n)
        elif r.layer in ("h1", "h2"):
            r = r._replace(ixt=0.5 * log2_n)
        rows.append(r)
    assert n_epochs % 2 == 0
    assert ip.saturated_layers(Run(run.meta, rows)) == ["h1", "h3"]


def test_unsaturated_run_does_not_warn():
    run = make_run()  # I(X;T) uniform on [0, log2 N]: about 5% of points near the ceiling
    assert ip.saturated_layers(run) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ip.SaturationWarning)
        fig = ip.information_plane(run)
    assert not any("saturated" in t.get_text() for t in plane_axes(fig)[0].texts)


# ----------------------------------------------------------------------------------------- integration
def test_plane_of_a_tracked_run():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    tracker = infoplane.Tracker(model, x, y, schedule=[0, 1, 2], fraction=0.5)
    for epoch in range(3):
        tracker.step(epoch, loss=1.0 / (epoch + 1))
    tracker.close()
    run = tracker.run
    with warnings.catch_warnings():  # 5 tanh units on 64 random inputs: every sample gets its own bin
        warnings.simplefilter("ignore", ip.SaturationWarning)
        ax = plane_axes(ip.information_plane(run))[0]
    scatters = [c for c in ax.collections if c.get_label() in run.layers]
    assert len(scatters) == len(run.layers)
    np.testing.assert_allclose(scatters[0].get_offsets()[:, 0], run.get("ixt", seed=0)[:, 0])
    assert ax.get_xlim()[1] >= math.log2(64)


# --------------------------------------------------------------------------------------------- backend
@pytest.mark.parametrize("env,expected", [(None, "agg"), ("svg", "svg")])
def test_backend_is_agg_only_when_none_is_configured(env, expected):
    environ = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if env:
        environ["MPLBACKEND"] = env
    code = "import infoplane.plot, matplotlib; print(matplotlib.get_backend().lower())"
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_compare_axes_hold_every_panels_data():
    # Shared axes report the last panel's limits; an estimate above the ceiling in the first panel must still show.
    big = make_run(fraction=0.1, ixt=math.log2(N) * 1.5)
    small = make_run(fraction=0.9)
    fig = ip.compare([big, small])
    ax = plane_axes(fig)[0]
    assert ax.get_xlim()[1] >= math.log2(N) * 1.5


def test_figures_of_two_estimators_do_not_overwrite_each_other(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x, y = torch.randn(40, 3), torch.arange(40) % 2
    with infoplane.Tracker(model, x, y, out=tmp_path / "r",
                    estimators=[infoplane.Binning(bins=30, range=(-1, 1)), infoplane.KDE(noise_var=0.1)]) as t:
        t.step(0)
        t.step(1)
    first = ip.write_figures(tmp_path / "r")
    second = ip.write_figures(tmp_path / "r", estimator="kde")
    assert not set(first) & set(second)
    assert sorted(os.path.basename(p) for p in first + second) == [
        "curves-binning.png", "curves-kde.png", "plane-binning.png", "plane-kde.png"]


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def test_an_incomplete_run_says_so_on_the_figure(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    t = infoplane.Tracker(model, torch.randn(40, 3), torch.arange(40) % 2, out=tmp_path / "r")
    t.step(0)
    t.flush()
    fig = ip.information_plane(tmp_path / "r")  # still being written
    assert any("incomplete run" in s for s in _texts(fig)) and any("INCOMPLETE" in s for s in _texts(fig))
    plt.close(fig)
    t.close()
    fig = ip.information_plane(tmp_path / "r")
    assert not any("incomplete" in s.lower() for s in _texts(fig))
    plt.close(fig)


def test_class_names_appear_in_the_legend(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    names = np.array(["cat", "dog"])[np.arange(40) % 2]
    with infoplane.Tracker(model, torch.randn(40, 3), names, out=tmp_path / "r") as t:
        t.step(0)
    fig = ip.information_plane(tmp_path / "r")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "Y: cat, dog" in legend
    plt.close(fig)

"""Figures of sharpness and of a corruption sweep, checked through the matplotlib objects they hold."""
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

import infoplane.plot as ip
from infoplane.runs.format import SharpnessRow
from infoplane.runs.writer import Row, Run

LAYERS = ["h1", "h2"]
EPOCHS = [0, 1, 3, 9]


def make_run(seeds=(0, 1, 2), level=None, seed=0):
    rng = np.random.default_rng(seed)
    meta = {"layers": [{"name": l} for l in LAYERS], "n": 64, "log2_n": 6.0, "h_y": 1.0, "seeds": list(seeds),
            "estimators": [{"name": "binning", "settings": {"kind": "binning"}}], "fraction": 0.8, "data": "toy"}
    if level is not None:
        meta["corruption"] = {"label_noise": level, "random_labels": False}
    rows = [Row(s, 0.8, e, l, "binning", rng.uniform(0, 6), rng.uniform(0, 1), math.nan, math.nan)
            for s in seeds for e in EPOCHS for l in LAYERS]
    metrics = {(s, e): {"train_loss": rng.uniform(), "test_acc": rng.uniform()} for s in seeds for e in EPOCHS}
    sharp = [SharpnessRow(s, e, "hessian_top_eigenvalue", float(10 ** (e / 3) + s), loss=0.5, iterations=3,
                          converged=True) for s in seeds for e in EPOCHS]
    sharp += [SharpnessRow(s, e, "sam_sharpness", 0.01 * (e + s), rho=0.05, one_step=0.005 * (e + s))
              for s in seeds for e in EPOCHS]
    return Run(meta, rows, metrics, ["train_loss", "test_acc"], sharpness=sharp)


def _line_with(ax, n):
    return [line for line in ax.get_lines() if len(line.get_xdata()) == n]


def test_sharpness_curves_are_seed_medians():
    run = make_run()
    fig = ip.sharpness_curves(run)
    eig_ax, sam_ax = [ax for ax in fig.axes if ax.get_visible()]
    line = _line_with(eig_ax, len(EPOCHS))[0]
    expected = [np.median([10 ** (e / 3) + s for s in (0, 1, 2)]) for e in EPOCHS]
    np.testing.assert_allclose(line.get_ydata(), expected)
    one_step = [ln for ln in sam_ax.get_lines() if ln.get_linestyle() == "--"][0]
    np.testing.assert_allclose(one_step.get_ydata(), [0.005 * (e + 1) for e in EPOCHS])
    assert len(eig_ax.collections) == 1  # the interquartile band
    plt.close(fig)
    with pytest.raises(ValueError, match="no sharpness measures"):
        ip.sharpness_curves(Run(run.meta, run.rows))


def test_corruption_figures_read_the_level_from_meta_or_take_it(tmp_path):
    runs = [make_run(level=p, seed=i) for i, p in enumerate((0.5, 0.0, 1.0))]
    fig = ip.corruption_error(runs, out=tmp_path / "err.png")
    ax = fig.axes[0]
    errbar = ax.containers[0]
    xs, ys = errbar.lines[0].get_xdata(), errbar.lines[0].get_ydata()
    assert list(xs) == [0.0, 0.5, 1.0]
    by_level = {p: r for p, r in zip((0.5, 0.0, 1.0), runs)}
    for x, y in zip(xs, ys):
        assert y == pytest.approx(np.median(1 - by_level[x].metric("test_acc")[:, -1]))
    assert (tmp_path / "err.png").exists()
    plt.close(fig)
    fig = ip.memorization_curves(runs)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["0", "0.5", "1"]
    plt.close(fig)
    bare = [Run({k: v for k, v in r.meta.items() if k != "corruption"}, r.rows, r._metrics, r.metric_names)
            for r in runs]
    with pytest.raises(ValueError, match="pass levels="):
        ip.memorization_curves(bare)
    plt.close(ip.memorization_curves(bare, levels=[0.5, 0.0, 1.0]))
    assert ip.corruption_level(Run({"corruption": {"random_labels": True}}, [])) == 1.0


def test_plane_coloured_by_a_measure():
    run = make_run()
    fig = ip.plane(run, color_by="sharpness:hessian_top_eigenvalue", size_by="metric:test_acc")
    ax = fig.axes[0]
    coloured = [c for c in ax.collections if c.get_array() is not None and len(c.get_array())]
    expected = [np.median([10 ** (e / 3) + s for s in (0, 1, 2)]) for e in EPOCHS]
    np.testing.assert_allclose(coloured[0].get_array(), expected)
    assert fig.axes[1].get_ylabel() == "top Hessian eigenvalue"
    assert coloured[0].norm.__class__.__name__ == "LogNorm"  # more than a decade
    plt.close(fig)
    with pytest.raises(ValueError, match="sharpness:<measure>"):
        ip.plane(run, color_by="flatness")
    with pytest.raises(ValueError, match="no sharpness measure 'hessian_trace'"):
        ip.plane(run, color_by="sharpness:hessian_trace")


def test_report_has_a_sharpness_row(tmp_path):
    pytest.importorskip("plotly")
    import infoplane

    path = infoplane.report([make_run()], out=tmp_path / "r.html")
    text = open(path, encoding="utf-8").read()
    assert "sharpness:hessian_top_eigenvalue" in text and "sharpness:sam_sharpness" in text


def test_tensorboard_export_has_sharpness_tags(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from infoplane.integrations.tensorboard import export_tensorboard

    run = make_run(seeds=(0, 1))
    export_tensorboard(run, tmp_path / "tb")
    scalars = {}
    for path in (tmp_path / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = {e.step: e.value for e in acc.Scalars(tag)}
    assert scalars["sharpness/hessian_top_eigenvalue/seed1"][9] == pytest.approx(10 ** 3 + 1)
    assert scalars["sharpness/sam_sharpness/seed0"][3] == pytest.approx(0.03)

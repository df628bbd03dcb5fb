"""Animations (GIF, MP4) and the interactive HTML report, on small runs recorded here; the report is loaded in
headless Chromium and checked in the DOM that Plotly rendered."""
import html
import math
import os
import shlex
import subprocess
import sys
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import infoplane
import infoplane.plot as ip
from infoplane.cli.main import main
from infoplane.data import stratified_split, tishby12
from infoplane.viz.animation import frame_epochs, frame_size
from infoplane.viz.stats import median as _median

CHROMIUM = "/usr/bin/chromium"
EPOCHS = 10
SCHEDULE = infoplane.log_schedule(EPOCHS, 6)


def record(out, fraction, seeds=(0, 1), epochs=EPOCHS, close=True):
    """A small tanh network on a quarter of the 12-bit task, trained on ``fraction`` of it, two estimators."""
    x, y = tishby12()
    x, y = x[::16], y[::16]
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(nn.Sequential(nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 2)))
    train_idx, _ = stratified_split(y.numpy(), fraction, seed=0)
    opts = [torch.optim.Adam(m.parameters(), lr=0.05) for m in models]
    tracker = infoplane.Tracker(models, x, y, seeds=list(seeds), schedule=SCHEDULE, fraction=fraction,
                                estimators=[infoplane.Binning(bins=30, range=(-1, 1)), infoplane.KDE(noise_var=0.1)],
                                meta={"data": "tishby12-quarter"}, out=out, overwrite=True)
    tracker.step(0)  # epoch 0: the initialisation; epoch e: the network after e epochs of training
    for epoch in range(1, epochs + 1):
        losses = []
        for model, opt in zip(models, opts):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[train_idx]), y[train_idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        tracker.step(epoch, train_loss=float(np.mean(losses)), train_acc=0.5)
    if close:
        tracker.close()
    else:
        tracker.flush()  # what a long run does every flush_seconds: the table holds the epochs so far
    return tracker


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = record(root / "frac-0.25", 0.25).path
    b = record(root / "frac-0.85", 0.85).path
    # Still being written: three of the ten epochs trained, the tracker left open (meta.json says complete=false).
    open_tracker = record(root / "frac-0.5", 0.5, epochs=3, close=False)
    yield a, b, open_tracker.path
    open_tracker.close()


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ip.SaturationWarning)
        yield


def gif_frames(path):
    im = Image.open(path)
    frames = []
    for i in range(im.n_frames):
        im.seek(i)
        frames.append(np.asarray(im.convert("RGB")))
    return im.size, frames


# --------------------------------------------------------------------------------------------------- animate
def test_gif_has_one_frame_per_recorded_epoch_at_the_documented_size(runs, tmp_path, quiet):
    a, b, _ = runs
    out = ip.animate([b, a], out=tmp_path / "plane.gif")
    assert out == os.fspath(tmp_path / "plane.gif")
    size, frames = gif_frames(out)
    epochs = infoplane.load_run(a).epochs
    assert len(frames) == len(epochs) == len(SCHEDULE.epochs)
    assert size == frame_size(2) == (420 * 2 + 100, 460)
    # The run's values differ between its first and last epoch, so do the frames, and not only in the title
    # (the top 12% holds the data set, estimator and epoch text).
    run = infoplane.load_run(a)
    assert not np.allclose(_median(run.get("ixt"))[0], _median(run.get("ixt"))[-1])
    changed = np.any(frames[0] != frames[-1], axis=2)
    assert changed[int(0.12 * size[1]):].sum() > 50


def test_gif_with_a_chosen_frame_count_and_size(runs, tmp_path, quiet):
    a, _, _ = runs
    out = ip.animate(a, out=tmp_path / "few.gif", frames=7, size=(321, 240), estimator="kde")
    size, frames = gif_frames(out)
    assert len(frames) == 7 and size == (322, 240)  # rounded up to even numbers


def test_frame_epochs_are_log_spaced_for_log_schedules_and_linear_otherwise(runs):
    a, _, _ = runs
    run = infoplane.load_run(a)
    lo, hi = float(run.epochs[0]), float(run.epochs[-1])
    np.testing.assert_array_equal(frame_epochs(run), run.epochs.astype(float))
    got = frame_epochs(run, 5)
    u = np.linspace(math.log(lo + 1), math.log(hi + 1), 5)
    np.testing.assert_allclose(got, [math.exp(v) - 1 for v in u], rtol=1e-12)
    # Evenly spaced epochs 0, 3, 6, ...: a linear axis (the rule of the static colour scale).
    spread = {int(e): 3 * i for i, e in enumerate(run.epochs)}
    linear = infoplane.Run({**run.meta, "schedule": infoplane.every(3, 3 * len(spread)).to_json()},
                           [r._replace(epoch=spread[r.epoch]) for r in run.rows])
    last = 3 * (len(spread) - 1)
    np.testing.assert_allclose(frame_epochs(linear, 4), [0, last / 3, 2 * last / 3, last])
    with pytest.raises(ValueError, match="frames must be a positive integer"):
        frame_epochs(run, 0)


def test_interpolated_frames_hit_the_recorded_medians_at_recorded_epochs(runs):
    from infoplane.viz.drawing import run_tracks

    a, _, _ = runs
    run = infoplane.load_run(a)
    times = run.epochs.astype(float)
    tr = run_tracks(run, "binning", times, log=True)
    np.testing.assert_allclose(tr["x"], np.nanmedian(run.get("ixt", "binning"), axis=0))
    np.testing.assert_allclose(tr["y75"], np.nanpercentile(run.get("ity", "binning"), 75, axis=0))
    # Half way between two recorded epochs on the log(epoch + 1) axis: the mean of their medians.
    e0, e1 = times[-2], times[-1]
    mid = math.exp((math.log(e0 + 1) + math.log(e1 + 1)) / 2) - 1
    half = run_tracks(run, "binning", np.array([mid]), log=True)["x"][0]
    np.testing.assert_allclose(half, (tr["x"][-2] + tr["x"][-1]) / 2)


def test_mp4_opens_and_has_its_frames(runs, tmp_path, quiet):
    imageio = pytest.importorskip("imageio")  # the test extra installs it
    a, b, _ = runs
    out = ip.animate([a, b], out=tmp_path / "plane.mp4", frames=6, size=(480, 240))
    reader = imageio.get_reader(out, format="FFMPEG")
    try:
        assert reader.count_frames() == 6
        assert reader.get_data(0).shape == (240, 480, 3)
    finally:
        reader.close()


def test_mp4_without_the_video_extra_names_it(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"infoplane\[video\]"):
        ip.animate(runs[0], out=tmp_path / "plane.mp4")
    assert not (tmp_path / "plane.mp4").exists()


def test_animate_rejects_bad_arguments(runs, tmp_path):
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        ip.animate(runs[0], out=tmp_path / "plane.avi")
    with pytest.raises(ValueError, match="is not an infoplane run directory"):
        ip.animate(tmp_path, out=tmp_path / "plane.gif")
    with pytest.raises(ValueError, match="estimator 'nope' is not in this run"):
        ip.animate(runs[0], out=tmp_path / "plane.gif", estimator="nope")


# ------------------------------------------------------------------------------------------- command line
def test_both_commands_exit_2_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    for command, out in (("animate", "plane.gif"), ("report", "report.html")):
        assert main([command, str(tmp_path), "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert "is not an infoplane run directory" in err and err.startswith("infoplane: error:")
        assert not (tmp_path / out).exists()


def test_both_commands_work_on_a_run_still_being_written(runs, tmp_path, capsys):
    _, _, incomplete = runs
    run = infoplane.load_run(incomplete)
    assert run.meta["complete"] is False and len(run.epochs) < len(SCHEDULE.epochs)
    assert main(["animate", incomplete, "--out", str(tmp_path / "inc.gif")]) == 0
    _, frames = gif_frames(tmp_path / "inc.gif")
    assert len(frames) == len(run.epochs)
    assert main(["report", incomplete, "--out", str(tmp_path / "inc.html")]) == 0
    text = (tmp_path / "inc.html").read_text()
    assert "Incomplete run" in text and f"recorded up to epoch {run.epochs[-1]}" in text
    assert capsys.readouterr().out.split() == [str(tmp_path / "inc.gif"), str(tmp_path / "inc.html")]


# -------------------------------------------------------------------------------------------------- report
class _Urls(HTMLParser):
    """Every src/href attribute value of a page."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def external(page):
    parser = _Urls()
    parser.feed(page)
    return [u for u in parser.urls if u.strip().lower().startswith(("http:", "https:", "//"))]


def expected_traces(run, estimator):
    """Scatter traces drawn for one run with ``estimator`` selected: per layer a trail and a point, the line
    joining the layers; per layer and quantity a median curve (and an IQR band with seeds); per metric the same."""
    band = 2 if len(run.seeds) > 1 else 1
    if estimator not in run.estimators:
        return band * len(run.metric_names)
    return 2 * len(run.layers) + 1 + 2 * len(run.layers) * band + band * len(run.metric_names)


def test_report_is_self_contained_and_describes_the_runs(runs, tmp_path):
    pytest.importorskip("plotly")
    a, b, inc = runs
    out = infoplane.report([b, a, inc], out=tmp_path / "report.html")
    page = open(out, encoding="utf-8").read()
    assert external(page) == []
    assert "<script src" not in page and "Plotly.newPlot" in page  # plotly.js inlined
    run = infoplane.load_run(a)
    for text in (f"infoplane {infoplane.__version__}", html.escape(shlex.join(run.meta["caller"])),
                 html.escape('"bins": 30'), html.escape('"noise_var": 0.1'), "tishby12-quarter", "25% training data",
                 "estimator: kde", "seed quartiles", "Incomplete run"):
        assert text in page, text


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (.ci/run installs Debian's "
                                                          f"chromium package)")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    pytest.importorskip("plotly")
    a, b, inc = runs
    loaded = [infoplane.load_run(p) for p in (a, inc, b)]  # by fraction: 0.25, 0.5, 0.85
    out = infoplane.report([b, a, inc], out=tmp_path / "report.html")
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", f"file://{os.path.abspath(out)}"]
    # The timeout only guards against a hung browser; virtual time lets the page's scripts finish first.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # The plot rendered: one SVG group per drawn trace (the first estimator's, plus the metrics).
    assert dom.count('class="trace scatter') == sum(expected_traces(r, "binning") for r in loaded)
    assert dom.count('class="xy"') >= 1 and 'class="main-svg"' in dom
    # The epoch slider (one tick per recorded epoch), the play button and the estimator menu.
    epochs = np.unique(np.concatenate([r.epochs for r in loaded]))
    assert dom.count('class="slider-container"') == 1
    assert dom.count('class="slider-tick-rect"') == len(epochs)
    assert ">Play<" in dom and ">estimator: binning<" in dom
    # The settings panel, the incomplete banner, the saturation list when there is one.
    assert dom.count('id="settings"') == 1 and ">command</th>" in dom
    assert "Incomplete run" in dom
    assert external(dom) == []  # nothing the page created points to the network either

"""Per-layer gradient statistics against gradients collected by hand and reduced with numpy."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import optimizer as optim_hooks

from infoplane.tracking.gradients import GradientStats


def make_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))


def data(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 2, (n,), generator=g)


def oracle(samples):
    """numpy: norm of the mean and norm of the element-wise population std over the steps."""
    s = np.stack([np.concatenate([g.numpy().astype(np.float64).ravel() for g in step]) for step in samples])
    mean_norm = np.linalg.norm(s.mean(0))
    std_norm = np.linalg.norm(s.std(0))
    return mean_norm, std_norm


def train(net, x, y, *, batch=16, micro=1, stats=None, scaler=None, collect=None, layers=(0, 2, 4)):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    for i0 in range(0, len(x), batch):
        opt.zero_grad()
        xb, yb = x[i0:i0 + batch], y[i0:i0 + batch]
        for xm, ym in zip(xb.chunk(micro), yb.chunk(micro)):
            loss = loss_fn(net(xm), ym) / micro
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(opt)
        if collect is not None:
            collect.append([[net[k].weight.grad.clone() for k in (layer,)] for layer in layers])
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


@pytest.mark.parametrize("micro", [1, 4])
def test_statistics_equal_numpy_on_hand_collected_gradients(micro):
    x, y = data()
    net = make_net()
    collected = []
    with GradientStats({"0": net[0], "2": net[2], "4": net[4]}) as stats:
        train(net, x, y, micro=micro, collect=collected)
    rows = stats.read()
    assert [r.layer for r in rows] == ["0", "2", "4"]
    for k, row in enumerate(rows):
        mean_norm, std_norm = oracle([step[k] for step in collected])
        assert row.batches == 4 and not row.frozen  # one sample per optimiser step, not per backward()
        assert row.mean_norm == pytest.approx(mean_norm, rel=1e-12)
        assert row.std_norm == pytest.approx(std_norm, rel=1e-12)
        assert row.snr == pytest.approx(mean_norm / std_norm, rel=1e-12)


def test_statistics_are_the_same_without_a_one_call_copy_of_all_gradients(monkeypatch):
    x, y = data()
    rows = []
    for one_call in (True, False):
        if not one_call:  # a torch without torch._foreach_copy_: the gradients are copied one by one
            monkeypatch.delattr(torch, "_foreach_copy_", raising=False)
        net = make_net()
        with GradientStats({"0": net[0], "2": net[2], "4": net[4]}) as stats:
            train(net, x, y)
        rows.append(stats.read())
    assert rows[0] == rows[1]


def test_a_new_period_starts_after_each_read_and_detach_stops_listening():
    x, y = data()
    net = make_net()
    stats = GradientStats({"0": net[0]}).attach()
    train(net, x, y)
    assert stats.read()[0].batches == 4
    collected = []
    train(net, x, y, batch=32, collect=collected, layers=(0,))
    row = stats.read()[0]
    assert row.batches == 2
    assert row.mean_norm == pytest.approx(oracle([s[0] for s in collected])[0], rel=1e-12)
    stats.detach()
    train(net, x, y)
    assert stats.read()[0].batches == 0


def test_grad_scaler_gives_the_unscaled_statistics():
    x, y = data()
    plain, scaled = make_net(), make_net()
    with GradientStats({"2": plain[2]}) as a:
        train(plain, x, y)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with GradientStats({"2": scaled[2]}) as b:
        train(scaled, x, y, scaler=scaler)
    ra, rb = a.read()[0], b.read()[0]
    assert rb.batches == ra.batches == 4
    assert rb.mean_norm == pytest.approx(ra.mean_norm, rel=1e-6)
    assert rb.std_norm == pytest.approx(ra.std_norm, rel=1e-6)


def test_frozen_layers_are_reported_as_such_and_shared_weights_count_in_each_layer():
    x, y = data()
    net = make_net()
    net[0].weight.requires_grad_(False)
    tied = nn.Linear(5, 4)
    tied.weight = net[2].weight  # one Parameter held by two layers
    collected = []
    with GradientStats({"0": net[0], "2": net[2], "tied": tied}) as stats:
        train(net, x, y, collect=collected, layers=(2,))
    frozen, layer, other = stats.read()
    assert frozen.frozen and frozen.batches == 0 and frozen.mean_norm is None and frozen.snr is None
    assert (layer.mean_norm, layer.std_norm, layer.batches) == (other.mean_norm, other.std_norm, other.batches)
    assert layer.batches == 4 and not layer.frozen
    assert layer.mean_norm == pytest.approx(oracle([s[0] for s in collected])[0], rel=1e-12)
    with pytest.raises(ValueError, match="no tracked layer has a trainable weight"):
        GradientStats({"0": net[0]})


def test_tracking_gradients_changes_training_by_not_a_single_bit():
    x, y = data()
    a, b = make_net(), make_net()
    train(a, x, y)
    with GradientStats({"0": b[0], "4": b[4]}):
        train(b, x, y)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_float64_accumulation_keeps_a_tiny_spread_under_a_large_mean():
    # Drift phase: the mean is 1e8 times the spread; E[g^2] - E[g]^2 in float64 would lose it entirely.
    w = nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))
    layer = nn.Module()
    layer.weight = w
    opt = torch.optim.SGD([w], lr=0.0)
    rng = np.random.default_rng(0)
    samples = [1e4 + 1e-4 * rng.standard_normal((3, 3)) for _ in range(50)]
    with GradientStats({"w": layer}) as stats:
        for s in samples:
            w.grad = torch.from_numpy(s)
            opt.step()
    row = stats.read()[0]
    expected = np.linalg.norm(np.stack(samples).std(0))
    assert row.std_norm == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(row.snr) and row.snr > 1e7


def test_the_transition_is_the_first_epoch_after_which_the_smoothed_snr_stays_below_one():
    from infoplane.tracking.gradients import phase_transition

    epochs = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128])
    snr = np.array([9.0, 8.0, 7.0, 3.0, 0.5, 2.0, 0.4, 0.3, 0.2])
    # window 1: no smoothing; the last value at or above 1 is at epoch 16, so diffusion starts at 32
    assert phase_transition(epochs, snr, window=1) == 32
    # window 3: the spike at 16 is smoothed away (median of 0.5, 2.0, 0.4 = 0.5), but epoch 8's window
    # (3.0, 0.5, 2.0) has median 2.0, so diffusion starts at 16
    assert phase_transition(epochs, snr, window=3) == 16
    assert phase_transition(epochs, snr * 10, window=3, threshold=10.0) == 16  # rescaling changes nothing
    assert phase_transition(epochs, np.full(9, 2.0)) is None  # never diffusive
    assert phase_transition(epochs, np.full(9, 0.5)) == 0  # diffusive from the start
    assert phase_transition(epochs, np.full(9, np.nan)) is None
    with_gap = snr.copy()
    with_gap[5] = np.nan
    assert phase_transition(epochs, with_gap, window=1) == 8
    with pytest.raises(ValueError, match="strictly increasing"):
        phase_transition([0, 2, 1], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="window must be a positive integer"):
        phase_transition(epochs, snr, window=0)


# ------------------------------------------------------------------------------- through the Tracker and the run
def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))


def _epochs(net, x, y, epochs, tracker=None, collect=None, frozen_first=False):
    """Three mini-batches per epoch; ``collect[e]`` gets the weight gradients of each step of epoch e."""
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01)
    if tracker is not None:
        tracker.step(0)
    for epoch in range(1, epochs + 1):
        for i0 in range(0, len(x), 22):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i0:i0 + 22]), y[i0:i0 + 22]).backward()
            if collect is not None:
                collect.setdefault(epoch, []).append([net[k].weight.grad.clone() for k in (0, 2, 4)])
            opt.step()
        if tracker is not None:
            tracker.step(epoch)


def test_tracker_records_each_recorded_epochs_own_steps_and_the_run_reads_them_back(tmp_path):
    from infoplane import Tracker, load_run
    from infoplane.runs.gradfile import GRADIENT_FIELDS

    x, y = data()
    plain, tracked = _mlp(), _mlp()
    _epochs(plain, x, y, 3)
    hooks = len(optim_hooks._global_optimizer_pre_hooks)
    collected = {}
    with Tracker(tracked, x, y, gradients=True, schedule=[0, 1, 3], out=tmp_path / "run") as t:
        assert len(optim_hooks._global_optimizer_pre_hooks) == hooks + 1
        _epochs(tracked, x, y, 3, tracker=t, collect=collected)
    assert len(optim_hooks._global_optimizer_pre_hooks) == hooks  # removed on close
    for pa, pb in zip(plain.parameters(), tracked.parameters()):  # training unchanged to the bit
        assert torch.equal(pa, pb)
    run = load_run(tmp_path / "run")
    g = run.gradients
    assert g.layers == run.layers == ["1", "3", "4"] and g.seeds == [0] and g.epochs.tolist() == [0, 1, 3]
    # epoch 0: no optimiser step yet, so no values (empty cells, not zeros)
    assert np.all(g.get("batches", seed=0)[0] == 0) and np.all(np.isnan(g.get("snr", seed=0)[0]))
    for row, epoch in ((1, 1), (2, 3)):  # epoch 3: its own three steps, not epoch 2's
        for j in range(3):  # the Tanh layers "1", "3" are fed by the Linear layers 0 and 2; "4" is its own
            mean_norm, std_norm = oracle([step[j:j + 1] for step in collected[epoch]])
            assert g.get("batches", seed=0)[row, j] == 3
            assert g.get("mean_norm", seed=0)[row, j] == pytest.approx(mean_norm, rel=1e-12)
            assert g.get("std_norm", seed=0)[row, j] == pytest.approx(std_norm, rel=1e-12)
            assert g.get("snr", seed=0)[row, j] == pytest.approx(mean_norm / std_norm, rel=1e-12)
    header = (tmp_path / "run" / "gradients.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == GRADIENT_FIELDS
    assert np.array_equal(t.run.gradients.get("snr"), g.get("snr"), equal_nan=True)
    df = run.to_pandas()
    assert {"grad_mean_norm", "grad_std_norm", "grad_snr", "grad_batches"} <= set(df.columns)
    # resuming after a cut-short epoch: its table rows are gone, its gradient lines are dropped, then recorded once
    table = (tmp_path / "run" / "infoplane.csv").read_text().splitlines()
    (tmp_path / "run" / "infoplane.csv").write_text("\n".join(l for l in table if l.split(",")[2] != "3") + "\n")
    again = _mlp()
    with Tracker(again, x, y, gradients=True, schedule=[0, 1, 3], out=tmp_path / "run", resume=True) as t2:
        _epochs(again, x, y, 3, tracker=t2)
    lines = (tmp_path / "run" / "gradients.csv").read_text().splitlines()[1:]
    assert len(lines) == len({tuple(l.split(",")[:3]) for l in lines}) == 9
    # a run recorded without them has none
    with Tracker(_mlp(), x, y, schedule=[0], out=tmp_path / "plain") as t3:
        t3.step(0)
    assert not load_run(tmp_path / "plain").gradients and not (tmp_path / "plain" / "gradients.csv").exists()


def test_tracker_refuses_gradients_of_untrainable_layers_and_reports_frozen_ones(tmp_path):
    from infoplane import Tracker

    x, y = data()
    net = _mlp()
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no tracked layer has a trainable weight"):
        Tracker(net, x, y, gradients=True, out=tmp_path / "frozen")
    assert not (tmp_path / "frozen").exists()
    net = _mlp()
    net[0].weight.requires_grad_(False)
    with Tracker(net, x, y, gradients=True, schedule=[1]) as t:
        _epochs(net, x, y, 1, tracker=t)
    g = t.run.gradients
    assert g.frozen == ["1"]
    hooks = len(optim_hooks._global_optimizer_pre_hooks)
    with pytest.raises(RuntimeError, match="in the loop"):
        with Tracker(net, x, y, gradients=True, schedule=[1]):
            raise RuntimeError("in the loop")
    assert len(optim_hooks._global_optimizer_pre_hooks) == hooks  # removed on error too
    assert np.isnan(g.get("mean_norm", seed=0)[0, 0]) and g.get("batches", seed=0)[0, 0] == 0
    assert g.get("batches", seed=0)[0, 1] == 3


# ------------------------------------------------------------------------------------ the trainer and the CLI
def test_fit_gives_each_epochs_statistics_per_seed_on_the_stacked_and_the_one_by_one_engines():
    from infoplane.train import fit

    x, y = data()
    build = lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))  # noqa: E731
    momentum = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
    got = {}
    for vectorize in (True, False):
        seen = []
        result = fit(build, x, y, np.arange(64), seeds=2, epochs=2, batch_size=16, optimizer=momentum,
                     vectorize=vectorize, fused=False, gradients={"1": ["0.weight"], "2": ["2.weight"]},
                     callback=lambda e, m, metrics, seen=seen: seen.append(metrics.gradients))
        assert result.vectorized is vectorize
        got[vectorize] = seen
    stacked, single = got[True], got[False]
    assert all(r.batches == 0 and r.mean_norm is None for rows in stacked[0] for r in rows)  # epoch 0
    for epoch in (1, 2):
        for seed in (0, 1):
            for a, b in zip(stacked[epoch][seed], single[epoch][seed]):
                assert a.layer == b.layer and a.batches == b.batches == 4
                assert a.mean_norm == pytest.approx(b.mean_norm, rel=1e-4)
                assert a.std_norm == pytest.approx(b.std_norm, rel=1e-4)
    assert stacked[1][0][0].mean_norm != pytest.approx(stacked[1][1][0].mean_norm, rel=1e-3)  # seeds differ
    # full-batch descent: one step per epoch, no spread, and the same training as a batch of every row
    seen = []
    full = fit(build, x, y, np.arange(64), seeds=1, epochs=2, batch_size="full", gradients={"1": ["0.weight"]},
               fused=False, callback=lambda e, m, metrics: seen.append(metrics.gradients))
    whole = fit(build, x, y, np.arange(64), seeds=1, epochs=2, batch_size=64, fused=False)
    for pa, pb in zip(full.members[0].parameters(), whole.members[0].parameters()):
        assert torch.equal(pa, pb)
    row = seen[2][0][0]
    assert row.batches == 1 and row.std_norm == 0.0 and row.snr == math.inf
    with pytest.raises(ValueError, match='"full"'):
        fit(build, x, y, np.arange(64), seeds=1, epochs=1, batch_size="half")


def test_track_records_gradients_by_default_and_reads_a_full_batch_from_the_model_file(tmp_path, capsys):
    from infoplane import load_run
    from infoplane.cli.main import main

    model = tmp_path / "net.py"
    model.write_text("import torch\nfrom torch import nn\nbatch_size = 'full'\n"
                     "def build_model():\n    return nn.Sequential(nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 2))\n"
                     "def optimizer(params):\n    return torch.optim.SGD(params, lr=0.1, momentum=0.9)\n")
    args = ["track", str(model), "--epochs", "2", "--seeds", "2", "--quiet", "--no-plot", "--fraction", "0.1"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    run = load_run(tmp_path / "a" / "fraction-0.1")
    assert run.meta["training"]["batch_size"] == "full"
    g = run.gradients
    assert g.seeds == [0, 1] and g.layers == ["1", "2"] and g.epochs.tolist() == [0, 1, 2]
    assert g.get("batches")[:, 0].max() == 0 and np.all(g.get("batches")[:, 1:] == 1)
    assert np.all(g.get("mean_norm")[:, 1:] > 0) and np.all(g.get("std_norm")[:, 1:] == 0)
    assert main(args + ["--out", str(tmp_path / "b"), "--no-gradients", "--batch-size", "100"]) == 0
    run = load_run(tmp_path / "b" / "fraction-0.1")
    assert not run.gradients and run.meta["training"]["batch_size"] == 100
    with pytest.raises(SystemExit) as exited:
        main(args + ["--out", str(tmp_path / "c"), "--batch-size", "half"])
    assert exited.value.code == 2
    assert "a positive integer or full" in capsys.readouterr().err


# -------------------------------------------------------------------------------- figures, loggers, report
@pytest.mark.filterwarnings("ignore:.*is saturated at log2 N")  # 64 probe samples: the plane saturates, by design
def test_figures_loggers_and_report_show_the_statistics_and_the_transition(tmp_path):
    import glob

    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import infoplane
    from infoplane import plot
    from infoplane.runs.gradfile import GradientRecord
    from infoplane.runs.reader import Run
    from infoplane.tracking.gradients import phase_transition
    from infoplane.viz.drawing import transition_points

    x, y = data()
    models = [_mlp(0), _mlp(1)]
    with infoplane.Tracker(models, x, y, gradients=True, schedule=[0, 1, 2], out=tmp_path / "run",
                           loggers=str(tmp_path / "tb")) as t:
        t.step(0)
        opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in models]
        for epoch in (1, 2):
            for m, opt in zip(models, opts):
                for i0 in (0, 32):
                    opt.zero_grad()
                    nn.functional.cross_entropy(m(x[i0:i0 + 32]), y[i0:i0 + 32]).backward()
                    opt.step()
            t.step(epoch)
    run = infoplane.load_run(tmp_path / "run")
    scalars = {}
    for path in glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents.*"), recursive=True):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    assert scalars["infoplane/gradients/snr/3/seed1"][2] == pytest.approx(run.gradients.get("snr", seed=1)[2, 1],
                                                                          rel=1e-6)
    assert 0 not in scalars["infoplane/gradients/mean_norm/1/seed0"]  # epoch 0 has no values to log
    written = plot.write_figures(run)
    assert str(tmp_path / "run" / "gradients.png") in written
    infoplane.Tracker(_mlp(), x, y, out=tmp_path / "run", overwrite=True).close()  # its own figure: replaceable

    # A run whose layer "1" is diffusive from epoch 1 on: the rule, the figures and the report agree.
    snr = {"1": [math.nan, 0.5, 0.4], "3": [math.nan, 5.0, 4.0], "4": [math.nan, 3.0, 2.0]}
    records = [GradientRecord(s, e, layer, 1.0 if e else math.nan, (1.0 / v[i]) if e else math.nan, v[i], 2 * (e > 0),
                              False) for s in (0, 1) for layer, v in snr.items() for i, e in enumerate((0, 1, 2))]
    fake = Run(t.run.meta, t.run.rows, gradients=records)
    assert plot.transitions(fake, window=1) == {"1": phase_transition([1, 2], [0.5, 0.4], window=1), "3": None,
                                               "4": None} == {"1": 1, "3": None, "4": None}
    assert plot.transitions(fake, window=1, threshold=4.5) == {"1": 1, "3": 2, "4": 1}
    marks = transition_points(fake)
    assert [(j, e) for j, e, _, _ in marks] == [(0, 1)]
    assert marks[0][2:] == (np.median(fake.get("ixt")[:, 1, 0]), np.median(fake.get("ity")[:, 1, 0]))
    fig = plot.information_plane(fake)
    assert "drift to diffusion" in [tx.get_text() for tx in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    fig = plot.gradients(fake, window=1)
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == fig.axes[0].get_yscale() == "log"
    assert any(list(line.get_xdata()) == [1, 1] for line in fig.axes[0].get_lines())  # the transition, marked
    plt.close(fig)
    assert plot.animate(fake, tmp_path / "a.gif", frames=2, size=(240, 180)).endswith("a.gif")
    page = open(infoplane.report(fake, tmp_path / "r.html"), encoding="utf-8").read()
    assert "<h2>Gradients</h2>" in page and "drift to diffusion" in page
    with pytest.raises(ValueError, match="no gradient statistics"):
        plot.gradients(Run(t.run.meta, t.run.rows))


def test_moments_handed_over_by_a_trainer_give_the_rows_of_the_hooks():
    from infoplane.train.loop import EpochGradients

    class HandEngine:
        """Trains each member with its own SGD and hands over the moments of each epoch's steps, computed with
        numpy, as a compiled trainer does through gather_gradients / gradient_moments."""

        def __init__(self, members):
            self.members = members
            self.opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in members]
            self.names, self.samples = None, []

        def gather_gradients(self, names):
            self.names = names

        def train_epoch(self, x, y):
            for i0 in range(0, len(x), 16):
                step = []
                for m, opt in zip(self.members, self.opts):
                    opt.zero_grad()
                    nn.functional.cross_entropy(m(x[i0:i0 + 16]), y[i0:i0 + 16]).backward()
                    step.append({n: m.get_parameter(n).grad.numpy().astype(np.float64).copy() for n in self.names})
                    opt.step()
                self.samples.append(step)

        def gradient_moments(self, names):
            out = {}
            for n in names:
                g = np.stack([[s[n] for s in step] for step in self.samples])  # [steps, seeds, ...]
                axes = tuple(range(1, g.ndim - 1))  # the elements, after the mean over steps
                out[n] = (len(g), (g.mean(0) ** 2).sum(axes), g.var(0).sum(axes))
            self.samples = []
            return out

    x, y = data()
    members, twins = [_mlp(0), _mlp(1)], [_mlp(0), _mlp(1)]
    layers = {"1": ["0.weight"], "both": ["2.weight", "0.weight"]}
    engine = HandEngine(members)
    hand = EpochGradients(engine, layers)
    assert engine.names == ["0.weight", "2.weight", "0.weight"]
    engine.train_epoch(x, y)
    got = hand.read()
    for seed, twin in enumerate(twins):
        with GradientStats({k: [twin.get_parameter(n) for n in v] for k, v in layers.items()}) as stats:
            opt = torch.optim.SGD(twin.parameters(), lr=0.1)
            for i0 in range(0, len(x), 16):
                opt.zero_grad()
                nn.functional.cross_entropy(twin(x[i0:i0 + 16]), y[i0:i0 + 16]).backward()
                opt.step()
        for a, b in zip(got[seed], stats.read()):
            assert (a.layer, a.batches, a.frozen) == (b.layer, b.batches, b.frozen) == (a.layer, 4, False)
            assert a.mean_norm == pytest.approx(b.mean_norm, rel=1e-9)
            assert a.std_norm == pytest.approx(b.std_norm, rel=1e-9)

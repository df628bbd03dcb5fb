import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import infoplane
from infoplane.estimators import KDE, Binning
from infoplane.runs.writer import read_table

HERE = Path(__file__).parent
BIN = Binning(bins=30, range=(-1, 1))


def tanh_net(dims=(12, 10, 7, 5, 4, 3, 2), seed=0):
    torch.manual_seed(seed)
    mods = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*mods[:-1])


def data(n=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, 12), generator=g).float()
    return x, (x[:, :6].sum(1) > x[:, 6:].sum(1)).long()


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def train_epoch(net, opt, x, y):
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def key(r):
    return (r.seed, r.epoch, r.layer, r.estimator)


def as_tuples(rows):
    return [tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in r) for r in rows]


# ----------------------------------------------------------------------------------------------- recording
def test_tracks_the_schedule_and_matches_direct_estimates(tmp_path):
    x, y = data()
    net = tanh_net()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    schedule = infoplane.log_schedule(30, 12)
    tracker = infoplane.Tracker(net, x, y, estimators=[BIN], schedule=schedule, out=tmp_path / "r")
    assert tracker.layers == ["1", "3", "5", "7", "9", "10"]  # 5 hidden after tanh + softmax output
    # Epoch e is the network after e epochs of training: epoch 0 before training, then one step per epoch.
    with torch.no_grad():
        tracker.step(0, loss=nn.functional.cross_entropy(net(x), y).item())
    for epoch in range(1, 31):
        loss = train_epoch(net, opt, x, y)
        tracker.step(epoch, loss=loss)
        assert hook_count(net) == 0  # nothing attached while training
    tracker.close()
    run = infoplane.load_run(tmp_path / "r")
    np.testing.assert_array_equal(run.epochs, schedule.epochs)
    assert run.ixt.shape == (len(schedule), 6)
    assert run.n == 128 and run.log2_n == 7.0
    p = np.bincount(y.numpy()) / 128
    assert run.h_y == pytest.approx(-(p * np.log2(p)).sum())
    # The last recorded epoch equals the estimator applied by hand to the trained net.
    with torch.no_grad():
        h = torch.tanh(net[0](x))
        out = torch.softmax(net(x), 1)
    last = BIN(torch.stack([h]), y)
    assert run.ixt[-1, 0] == last.ixt.item() and run.ity[-1, 0] == last.ity.item()
    assert run.ixt[-1, 5] == BIN(out[None], y).ixt.item()
    assert np.isfinite(run.metric("loss", seed=0)).all()
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["complete"] and meta["schedule"] == schedule.to_json() and meta["seeds"] == [0]
    assert [l["width"] for l in meta["layers"]] == [10, 7, 5, 4, 3, 2]
    assert set(meta["versions"]) >= {"torch", "numpy", "infoplane", "python"}
    assert as_tuples(tracker.run.rows) == as_tuples(run.rows)


def test_unscheduled_epochs_return_at_once():
    x, y = data()
    tracker = infoplane.Tracker(tanh_net(), x, y, schedule=[0, 4], out=None)
    assert [tracker.step(e) for e in range(6)] == [True, False, False, False, True, False]
    with pytest.raises(ValueError, match="already recorded"):
        tracker.step(4)
    tracker.close()
    assert tracker.run.epochs.tolist() == [0, 4]
    with pytest.raises(RuntimeError, match="closed"):
        tracker.step(0)


def test_batched_estimation_equals_epoch_by_epoch():
    x, y = data(64)
    ests = [BIN, KDE(noise_var=1e-2)]
    runs = []
    for buffer_bytes in (0, 2**30):  # flush after every epoch vs. one batched call at close
        net = tanh_net()
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        with infoplane.Tracker(net, x, y, estimators=ests, buffer_bytes=buffer_bytes) as t:
            for epoch in range(5):
                train_epoch(net, opt, x, y)
                t.step(epoch)
        runs.append(t.run)
    np.testing.assert_array_equal(runs[0].get("ixt", "binning"), runs[1].get("ixt", "binning"))
    np.testing.assert_array_equal(runs[0].get("ity", "binning"), runs[1].get("ity", "binning"))
    for f in ("ixt", "ity", "ixt_lower", "ity_lower"):
        np.testing.assert_allclose(runs[0].get(f, "kde"), runs[1].get(f, "kde"), rtol=1e-9, atol=1e-12)


def test_several_seeds_equal_separate_trackers():
    x, y = data(64)
    nets = [tanh_net(seed=s) for s in (3, 7)]
    joint = infoplane.Tracker(nets, x, y, seeds=[3, 7], fraction=0.25, schedule=[0, 1],
                              meta={"data": "random bits", "caller": "infoplane track"})
    singles = [infoplane.Tracker(n, x, y, seed=s, fraction=0.25, schedule=[0, 1]) for n, s in zip(nets, (3, 7))]
    for epoch in range(2):
        joint.step(epoch, loss=[0.5, 0.25])
        for t in singles:
            t.step(epoch)
    for t in [joint, *singles]:
        t.close()
    rows = joint.run.rows
    assert {r.seed for r in rows} == {3, 7} and {r.fraction for r in rows} == {0.25}
    assert sorted(as_tuples(rows)) == sorted(as_tuples(singles[0].run.rows + singles[1].run.rows))
    assert joint.run.ixt.shape == (2, 2, 6)
    np.testing.assert_array_equal(joint.run.metric("loss"), [[0.5, 0.5], [0.25, 0.25]])
    assert joint.run.fraction == 0.25 and joint.run.meta["fraction"] == 0.25
    assert joint.run.meta["data"] == "random bits" and joint.run.meta["caller"] == "infoplane track"


def test_tracking_leaves_training_bit_identical():
    x, y = data(96)

    def train(track):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 2))
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        tracker = infoplane.Tracker(net, x, y, estimators=[BIN, KDE(noise_var=0.1)]) if track else None
        for epoch in range(4):
            for idx in torch.randperm(96).split(32):  # shuffling and dropout draw from the global RNG
                train_epoch(net, opt, x[idx], y[idx])
            if tracker:
                tracker.step(epoch, loss=0.0)
        if tracker:
            tracker.close()
            assert len(tracker.run.epochs) == 4
        return [t.clone() for t in net.state_dict().values()], torch.get_rng_state()

    (plain, rng_plain), (tracked, rng_tracked) = train(False), train(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, tracked))
    assert torch.equal(rng_plain, rng_tracked)


# ------------------------------------------------------------------------------------------- hook lifetime
def test_hooks_removed_with_block_and_exception(tmp_path):
    x, y = data()
    net = tanh_net()
    with infoplane.Tracker(net, x, y, out=tmp_path / "a") as t:
        t.step(0)
    assert hook_count(net) == 0 and json.loads((tmp_path / "a" / "meta.json").read_text())["complete"]

    with pytest.raises(KeyError, match="user error"):
        with infoplane.Tracker(net, x, y, out=tmp_path / "b") as t:
            t.step(0)
            t.step(1)
            raise KeyError("user error")
    assert hook_count(net) == 0
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["complete"] is False
    assert infoplane.load_run(tmp_path / "b").epochs.tolist() == [0, 1]  # buffered epochs were kept


def test_hooks_removed_when_the_probe_fails():
    class Boom(nn.Module):
        armed = False

        def forward(self, h):
            if self.armed:
                raise RuntimeError("boom")
            return h

    x, y = data()
    net = nn.Sequential(nn.Linear(12, 4), nn.Tanh(), Boom(), nn.Linear(4, 2))
    t = infoplane.Tracker(net, x, y)
    net[2].armed = True
    with pytest.raises(RuntimeError, match="boom"):
        t.step(0)
    assert hook_count(net) == 0


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs():
    x, y = data()
    with pytest.raises(ValueError, match="cannot take the probe inputs.*mat1 and mat2"):
        infoplane.Tracker(nn.Sequential(nn.Linear(5, 2)), x, y)
    with pytest.raises(ValueError, match="127 labels for 128 input"):
        infoplane.Tracker(tanh_net(), x, y[:-1])
    with pytest.raises(ValueError, match="layers is empty"):
        infoplane.Tracker(tanh_net(), x, y, layers=[])
    with pytest.raises(ValueError, match=r"'encoder\.\*' matches no layer; valid layer names: \['0', '1'"):
        infoplane.Tracker(tanh_net(), x, y, layers=["encoder.*"])
    with pytest.raises(ValueError, match="unknown estimator setting"):
        infoplane.Tracker(tanh_net(), x, y, estimators=[{"kind": "binning", "bins": 30, "colour": "red"}])
    with pytest.raises(TypeError, match="estimator objects"):
        infoplane.Tracker(tanh_net(), x, y, estimators=["binning"])
    with pytest.raises(ValueError, match="unique"):
        infoplane.Tracker(tanh_net(), x, y, estimators=[BIN, Binning(bins=10, range=(-1, 1))])
    with pytest.raises(ValueError, match="other layers than model 0"):
        infoplane.Tracker([tanh_net(), tanh_net((12, 6, 2))], x, y)
    with pytest.raises(ValueError, match="one distinct integer per model"):
        infoplane.Tracker([tanh_net(), tanh_net()], x, y, seeds=[1])
    with pytest.raises(ValueError, match="keep_activations"):
        infoplane.Tracker(tanh_net(), x, y, keep_activations=True)
    with pytest.raises(ValueError, match="may not set"):
        infoplane.Tracker(tanh_net(), x, y, meta={"seeds": [4]})
    t = infoplane.Tracker(tanh_net(), x, y)
    with pytest.raises(ValueError, match="one per model"):
        t.step(0, loss=[1.0, 2.0])


def test_non_finite_activations_name_layer_and_epoch():
    x, y = data()
    net = tanh_net()
    t = infoplane.Tracker(net, x, y)
    t.step(0)
    with torch.no_grad():
        net[4].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer '5' has non-finite activations .* at epoch 3"):
        t.step(3)


def test_non_finite_activations_of_one_member_of_a_stacked_ensemble_name_its_seed():
    x, y = data()
    nets = [tanh_net() for _ in range(3)]
    t = infoplane.Tracker(nets, x, y, seeds=[10, 11, 12])
    t.step(0)
    assert t._session.recorder._stacked.exact is True  # the ensemble is probed in one stacked pass
    with torch.no_grad():
        nets[1][4].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer '5' has non-finite activations .* at epoch 3 \(seed 11\)"):
        t.step(3)


# ------------------------------------------------------------------------------------- run directory & resume
def test_existing_run_and_resume_with_other_settings(tmp_path):
    x, y = data()
    with infoplane.Tracker(tanh_net(), x, y, out=tmp_path / "r", schedule=[0, 1]) as t:
        t.step(0)
    with pytest.raises(ValueError, match="already holds an infoplane run"):
        infoplane.Tracker(tanh_net(), x, y, out=tmp_path / "r", schedule=[0, 1])
    with pytest.raises(ValueError, match="settings differ.*estimators"):
        infoplane.Tracker(tanh_net(), x, y, out=tmp_path / "r", schedule=[0, 1], resume=True,
                          estimators=[Binning(bins=20, range=(-1, 1))])
    with pytest.raises(ValueError, match="settings differ.*probe"):
        infoplane.Tracker(tanh_net(), x, 1 - y, out=tmp_path / "r", schedule=[0, 1], resume=True)
    assert infoplane.load_run(tmp_path / "r").epochs.tolist() == [0]  # untouched by the refusals
    t = infoplane.Tracker(tanh_net(), x, y, out=tmp_path / "r", schedule=[0, 1], resume=True)
    assert [t.step(0), t.step(1)] == [False, True]  # epoch 0 is done: no recompute
    t.close()
    assert infoplane.load_run(tmp_path / "r").epochs.tolist() == [0, 1]


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    script = [sys.executable, str(HERE / "_killme_track.py")]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    # The helper pauses after recording epoch 5 (it signals through one pipe, then blocks reading another that
    # is never written): the kill lands exactly there, whatever the machine's load.
    signal_r, signal_w = os.pipe()
    wait_r, wait_w = os.pipe()
    env = dict(os.environ, INFOPLANE_TEST_SIGNAL_FD=str(signal_w), INFOPLANE_TEST_WAIT_FD=str(wait_r))
    proc = subprocess.Popen(script + [str(killed), "--pause-after", "5"], stdout=subprocess.PIPE, text=True,
                            env=env, pass_fds=(signal_w, wait_r))
    os.close(signal_w)
    os.close(wait_r)
    with os.fdopen(signal_r) as signals:
        paused = signals.readline() == "paused\n"  # "" if the process ended first: no hang
    os.kill(proc.pid, signal.SIGKILL)
    out = proc.communicate(timeout=600)[0]  # hang guard only
    os.close(wait_w)
    assert paused, "the tracking process ended before its pause point"
    printed = [int(l.split()[1]) for l in out.splitlines() if l.startswith("recorded")]
    assert printed == [0, 1, 2, 3, 4, 5]
    table = killed / "infoplane.csv"
    assert not json.loads((killed / "meta.json").read_text())["complete"]
    done = {r.epoch for r in read_table(table)}
    assert done <= set(printed) and len(done) >= len(printed) - 2  # the buffer holds two epochs at most

    out = subprocess.run(script + [str(killed), "--resume"], capture_output=True, text=True, check=True).stdout
    recomputed = json.loads(out.splitlines()[-1])["recorded"]
    assert sorted(set(recomputed) | done) == list(range(41)) and not set(recomputed) & done
    assert len(set(recomputed) & set(printed)) <= 2  # the buffer holds two epochs: nothing more is lost
    subprocess.run(script + [str(clean)], capture_output=True, check=True)

    a, b = infoplane.load_run(killed), infoplane.load_run(clean)
    assert len({key(r) for r in a.rows}) == len(a.rows) == 41 * 3  # nothing duplicated; epochs 0 .. 40
    assert sorted(as_tuples(a.rows)) == sorted(as_tuples(b.rows))
    np.testing.assert_array_equal(a.metric("loss"), b.metric("loss"))
    assert json.loads((killed / "meta.json").read_text())["complete"]


# ------------------------------------------------------------------------------- saved activations, estimate
def test_keep_activations_and_estimate_reproduce_the_table(tmp_path):
    x, y = data(64)
    net = tanh_net()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    with infoplane.Tracker(net, x, y, estimators=[BIN], out=tmp_path / "r", keep_activations=True,
                           seeds=[5], schedule=infoplane.every(2, 8), buffer_bytes=0) as t:
        for epoch in range(8):
            t.step(epoch, loss=train_epoch(net, opt, x, y))
    with np.load(tmp_path / "r" / "activations" / "5" / "6.npz", allow_pickle=False) as z:
        assert sorted(z.files, key=int) == t.layers and z["3"].shape == (64, 7) and z["3"].dtype == np.float32
    original = infoplane.load_run(tmp_path / "r")
    again = infoplane.estimate(tmp_path / "r")  # same estimator: same table
    assert as_tuples(again.rows) == as_tuples(original.rows)
    coarse = Binning(bins=2, range=(-1, 1), name="coarse")  # its edges are a subset of the 30-bin ones
    other = infoplane.estimate(tmp_path / "r", [coarse], out=tmp_path / "coarse")
    stored = infoplane.load_run(tmp_path / "coarse")
    assert stored.estimators == ["coarse"] and as_tuples(stored.rows) == as_tuples(other.rows)
    assert (stored.ixt <= original.ixt + 1e-12).all() and (stored.ixt < original.ixt).any()
    np.testing.assert_array_equal(stored.metric("loss"), original.metric("loss"))
    with pytest.raises(ValueError, match="no saved activations"):
        infoplane.estimate(tmp_path / "coarse")


def test_float64_models_and_numpy_inputs_are_probed_in_the_models_dtype():
    import numpy as np
    from torch import nn

    x = np.random.default_rng(0).normal(size=(64, 4))          # float64 numpy
    y = np.arange(64) % 2
    for dtype in (torch.float32, torch.float64):
        model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).to(dtype)
        with infoplane.Tracker(model, x, y, schedule=[0]) as tracker:
            assert tracker.step(0)
        assert tracker.run.get("ixt").shape == (1, 1, 2)


def test_non_finite_activations_at_epoch_0_are_not_called_divergence():
    x, y = data()
    net = tanh_net()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"at epoch 0, the initialisation, before any training") as info:
        with infoplane.Tracker(net, x, y) as t:
            t.step(0)
    assert "diverged" not in str(info.value) and "probe inputs" in str(info.value)


def test_closing_before_the_last_scheduled_epoch_warns_and_leaves_the_run_incomplete(tmp_path):
    # The loop of a common mistake: step(epoch) before each epoch's update records 0, 2 and never epoch 4.
    x, y = data()
    net = tanh_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.warns(infoplane.UnfinishedScheduleWarning, match=r"last epoch of its schedule, 4"):
        with infoplane.Tracker(net, x, y, schedule=infoplane.every(2, 4), out=tmp_path / "r", flush_seconds=None) as t:
            for epoch in range(4):
                t.step(epoch)
                train_epoch(net, opt, x, y)
    run = infoplane.load_run(tmp_path / "r")
    assert run.epochs.tolist() == [0, 2] and not run.complete
    # Resumed and stepped to the end, the same run is complete; an open-ended schedule never warns.
    with infoplane.Tracker(net, x, y, schedule=infoplane.every(2, 4), out=tmp_path / "r", resume=True,
                           flush_seconds=None) as t:
        assert t.step(4)
    assert infoplane.load_run(tmp_path / "r").complete
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", infoplane.UnfinishedScheduleWarning)
        with infoplane.Tracker(net, x, y, schedule=infoplane.every(2)) as t:
            t.step(0)
    assert t.run.complete


def test_timings_by_layer_and_estimator_reach_the_run_and_the_optimizer_its_meta(tmp_path):
    x, y = data()
    net = tanh_net()
    opt = torch.optim.SGD([{"params": net[0].parameters()}, {"params": net[2:].parameters()}], lr=0.1)
    ests = [Binning(bins=30, range=(-1, 1)), KDE(noise_var=1e-2)]
    with infoplane.Tracker(net, x, y, schedule=[0, 1, 2], estimators=ests, out=tmp_path / "r", optimizer=opt,
                           flush_seconds=None) as t:
        for epoch in range(3):
            t.step(epoch)
    timings = t.timings
    assert set(timings["layers"]) == set(t.layers) and set(timings["estimators"]) == {"binning", "kde"}
    assert all(v > 0 for v in [*timings["layers"].values(), *timings["estimators"].values()])
    # Each estimator call is counted once under its layer and once under its estimator, within the total.
    assert math.isclose(sum(timings["layers"].values()), sum(timings["estimators"].values()), rel_tol=1e-9)
    assert sum(timings["layers"].values()) <= timings["estimate"]
    assert timings["layer_epochs"] == 3 * len(t.layers)
    meta = infoplane.load_run(tmp_path / "r").meta
    assert meta["timings"] == json.loads(json.dumps(timings))
    assert meta["training"] == {"optimizer": "SGD", "lr": 0.1}
    page = infoplane.report(tmp_path / "r", out=tmp_path / "r.html")  # the settings panel shows them
    assert "optimizer SGD, lr 0.1" in Path(page).read_text()
    # A resumed run adds its session's timings to the stored ones.
    with infoplane.Tracker(net, x, y, schedule=[0, 1, 2, 3], estimators=ests, out=tmp_path / "r",
                           resume=True) as t2:
        t2.step(3)
    again = infoplane.load_run(tmp_path / "r").meta["timings"]
    assert again["layer_epochs"] == 4 * len(t.layers)
    assert again["estimators"]["kde"] == pytest.approx(timings["estimators"]["kde"] + t2.timings["estimators"]["kde"])
    opt.param_groups[1]["lr"] = 0.5
    from infoplane.runs.meta import describe_optimizer
    assert describe_optimizer(opt) == {"optimizer": "SGD", "lr": [0.1, 0.5]}


def test_a_refused_resume_names_each_differing_setting_with_both_values(tmp_path):
    x, y = data()
    with infoplane.Tracker(tanh_net(), x, y, out=tmp_path / "r", schedule=[0, 1]) as t:
        t.step(0), t.step(1)
    with pytest.raises(ValueError) as info:
        infoplane.Tracker(tanh_net(), x, y, out=tmp_path / "r", schedule=[0, 2], resume=True,
                          estimators=[Binning(bins=20, range=(-1, 1))])
    err = info.value
    assert err.keys == ["estimators", "schedule"]
    text = str(err)
    assert "estimators[0].settings.bins: stored 30, now 20" in text and "schedule.epochs: stored [0, 1], now [0, 2]" in text
    # A schedule that continues the stored one to later epochs is accepted: the run is trained further.
    with infoplane.Tracker(tanh_net(), x, y, out=tmp_path / "r", schedule=[0, 1, 3], resume=True) as t:
        assert [t.step(1), t.step(3)] == [False, True]
    run = infoplane.load_run(tmp_path / "r")
    assert run.epochs.tolist() == [0, 1, 3] and run.complete and run.meta["schedule"]["epochs"] == [0, 1, 3]

"""A kill loses at most about flush_seconds of work, whatever the estimators cost.

Every process here runs on a fake clock that only the script advances: the caller's training adds a fixed time per
epoch and a slow estimator adds a fixed time per layer-epoch it is given. The kills come at the k-th call of an
estimator (the process sends itself SIGKILL there), so where each kill lands, what was written before it and what
the clock read are all deterministic: no sleeps, no races.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import infoplane
from infoplane.runs.writer import read_table
from infoplane.tracking import tracker as tracker_mod

REPO = Path(__file__).resolve().parents[1]
TANH = str(REPO / "examples" / "tishby_tanh.py")

BUDGET = 10.0  # flush_seconds (the default)

# The caller's own loop: a tiny tanh net (3 recorded layers), a real binning estimator and a slow fake one.
OWN_LOOP = r"""
import os, signal, sys
import torch
from torch import nn
import infoplane
from infoplane.estimators import Binning
from infoplane.runs import writer as writer_mod
from infoplane.tracking import tracker as tracker_mod

out, log_path, kill_at, resume, pause_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
EPOCHS, STEP_S, COST_S, PAUSE_S = 60, 0.1, 0.1, 30.0
now = [0.0]
tracker_mod._clock = lambda: now[0]
log = open(log_path, "a")


def event(*words):
    log.write(" ".join(map(str, words)) + "\n")
    log.flush()


add_rows = writer_mod.RunWriter.add_rows


def logged_add_rows(self, rows):
    add_rows(self, rows)
    event("write", now[0], *sorted({r.epoch for r in rows}))


writer_mod.RunWriter.add_rows = logged_add_rows


class Slow:
    name, has_lower, calls = "slow", False, 0

    def settings(self):
        return {"kind": "custom", "name": "slow"}

    def __call__(self, acts, labels):
        Slow.calls += 1
        event("call", now[0], acts.shape[0])
        if Slow.calls == kill_at:
            now[0] += COST_S * acts.shape[0] / 2  # killed halfway through this call
            event("kill", now[0])
            os.kill(os.getpid(), signal.SIGKILL)
        now[0] += COST_S * acts.shape[0]
        # One value per item, computed item by item: the same bits in any batch.
        ixt = torch.stack([a.double().abs().sum() for a in acts])
        ity = torch.stack([a.double().abs().max() for a in acts])
        return type("R", (), {"ixt": ixt, "ity": ity})()


torch.set_num_threads(1)
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
x = torch.randint(0, 2, (64, 12), generator=g).float()
y = (x[:, :6].sum(1) > x[:, 6:].sum(1)).long()
net = nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2))
opt = torch.optim.SGD(net.parameters(), lr=0.5)
with infoplane.Tracker(net, x, y, estimators=[Binning(bins=30, range=(-1, 1)), Slow()], out=out,
                       schedule=infoplane.every(1, EPOCHS), resume=resume) as tracker:
    for epoch in range(EPOCHS + 1):
        loss = nn.functional.cross_entropy(net(x), y)
        if epoch > 0:  # epoch 0 is the initialisation
            opt.zero_grad()
            loss.backward()
            opt.step()
            now[0] += STEP_S
        if epoch == pause_at:
            now[0] += PAUSE_S  # the caller does something long (an evaluation) that the tracker cannot foresee
        event("step", now[0], epoch)
        tracker.step(epoch, loss=loss.item())
event("end", now[0])
"""
# One epoch of the slow estimator on the 3 layers, and the caller's time per epoch (fake seconds).
OWN_EPOCH_COST, OWN_STEP = 3 * 0.1, 0.1


def own_loop(tmp_path, out, kill_at=0, resume=False, pause_at=-1):
    script = tmp_path / "own_loop.py"
    script.write_text(OWN_LOOP)
    log = tmp_path / f"log-{out.name}-{kill_at}-{int(resume)}.txt"
    p = subprocess.run([sys.executable, str(script), str(out), str(log), str(kill_at), str(int(resume)),
                        str(pause_at)], capture_output=True, text=True, timeout=600)
    return p, parse(log)


def parse(log):
    events = []
    for line in log.read_text().splitlines():
        kind, t, *rest = line.split()
        events.append((kind, float(t), [int(v) for v in rest]))
    return events


def rows_on_disk(out):
    return read_table(os.path.join(out, "infoplane.csv"))


def key(r):
    return r.seed, r.epoch, r.layer, r.estimator


def check_kill(out, events, clean_rows, per_epoch_cost, step_s, every_epoch_bound=True):
    """After a kill: the run loads, holds only rows of the uninterrupted run, none twice, and what is lost is
    within the budget. Returns the kill's (time, epochs lost)."""
    kill = [t for kind, t, _ in events if kind == "kill"]
    assert len(kill) == 1, events[-5:]
    kill = kill[0]
    run = infoplane.load_run(out)
    assert run.meta["complete"] is False
    rows = rows_on_disk(out)
    assert len({key(r) for r in rows}) == len(rows)  # nothing written twice
    clean = {key(r): r for r in clean_rows}
    assert all(clean[key(r)] == r for r in rows)  # every row is the uninterrupted run's, bit for bit
    on_disk = {r.epoch for r in rows}
    stepped = {e[0]: t for kind, t, e in events if kind == "step"}
    lost = {e: t for e, t in stepped.items() if e not in on_disk}
    # The bound: the write the kill interrupted would have ended at most one epoch's estimation and one step of
    # the caller after `flush_seconds` (it is decided one step ahead, with costs measured one epoch earlier).
    slack = per_epoch_cost + step_s + 1e-9
    writes = [t for kind, t, _ in events if kind == "write" and t <= kill]
    started = min(t for kind, t, _ in events if kind == "step")
    assert kill - max(writes, default=started) <= BUDGET + slack, (kill, writes[-3:])
    if every_epoch_bound:  # no surprise in the caller's timing: only epochs of the last budget interval are lost
        assert all(kill - t <= BUDGET + slack for t in lost.values()), (kill, lost)
    return kill, sorted(lost)


def test_own_loop_kills_lose_at_most_the_budget_and_resume_bit_for_bit(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    p, events = own_loop(tmp_path, clean)
    assert p.returncode == 0, p.stderr
    clean_rows = rows_on_disk(clean)
    assert len(clean_rows) == 61 * 3 * 2
    sizes = [e[0] for kind, _, e in events if kind == "call"]
    # The first epoch is written alone (it times the estimators), then batches of about 25 epochs: fast epochs
    # still share one estimator call per layer, but no batch costs more than the budget.
    assert sizes[:3] == [1, 1, 1] and max(sizes) * OWN_EPOCH_COST <= BUDGET + OWN_EPOCH_COST
    assert max(sizes) >= 20
    # Kill in the first call, in the first batch after it, in a later one, and then let it finish.
    lost_any = False
    for resume, kill_at in ((False, 1), (True, 6), (True, 8)):
        p, events = own_loop(tmp_path, killed, kill_at=kill_at, resume=resume)
        assert p.returncode == -9, p.stderr
        _, lost = check_kill(killed, events, clean_rows, OWN_EPOCH_COST, OWN_STEP)
        lost_any |= bool(lost)
    assert lost_any
    p, events = own_loop(tmp_path, killed, resume=True)
    assert p.returncode == 0, p.stderr
    a, b = infoplane.load_run(killed), infoplane.load_run(clean)
    assert sorted(rows_on_disk(killed), key=key) == sorted(clean_rows, key=key)
    np.testing.assert_array_equal(a.metric("loss"), b.metric("loss"))
    assert a.meta["complete"] is True


def test_a_backlog_after_a_pause_is_written_in_batches_that_fit_the_budget(tmp_path):
    # At epoch 45 the caller pauses 30 s with 19 epochs buffered: the tracker, already late, writes one
    # epoch at once and the rest in a batch that fits a fresh budget; a kill in it loses at most that budget.
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    p, events = own_loop(tmp_path, clean, pause_at=45)
    assert p.returncode == 0, p.stderr
    clean_rows = rows_on_disk(clean)
    writes = [(t, e) for kind, t, e in events if kind == "write"]
    paused = next(t for kind, t, e in events if kind == "step" and e == [45])
    after = [e for t, e in writes if t > paused]
    assert len(after[0]) == 1 and len(after[1]) > 1  # one epoch first, then the rest of the backlog
    calls = [t for kind, t, _ in events if kind == "call"]
    first_after = next(i for i, t in enumerate(calls) if t >= paused)
    kill_at = first_after + 3 + 2  # the second call (layer) of the batch after that single epoch
    p, events = own_loop(tmp_path, killed, kill_at=kill_at, pause_at=45)
    assert p.returncode == -9, p.stderr
    check_kill(killed, events, clean_rows, OWN_EPOCH_COST, OWN_STEP, every_epoch_bound=False)
    p, _ = own_loop(tmp_path, killed, resume=True, pause_at=45)
    assert p.returncode == 0, p.stderr
    assert sorted(rows_on_disk(killed), key=key) == sorted(clean_rows, key=key)


class Slow:
    """A fake estimator that costs `cost` fake seconds per layer-epoch on `clock`."""

    name, has_lower = "slow", False

    def __init__(self, clock, cost):
        self.clock, self.cost, self.sizes = clock, cost, []

    def settings(self):
        return {"kind": "custom", "name": "slow"}

    def __call__(self, acts, labels):
        self.sizes.append(acts.shape[0])
        self.clock.now += self.cost * acts.shape[0]
        return type("R", (), {"ixt": acts.double().abs().sum((-2, -1)), "ity": torch.zeros(acts.shape[0])})()


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def tracker(tmp_path, monkeypatch, cost, **kw):
    clock = FakeClock()
    monkeypatch.setattr(tracker_mod, "_clock", clock)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    slow = Slow(clock, cost)
    t = infoplane.Tracker(net, torch.randn(40, 3), torch.arange(40) % 2, estimators=[slow], out=tmp_path / "r",
                          **kw)
    return t, clock, slow


def test_a_costly_buffer_is_cut_into_writes_within_the_budget(tmp_path, monkeypatch):
    t, clock, slow = tracker(tmp_path, monkeypatch, cost=1.0)
    t.step(0)  # written at once: times the estimator (2 layers, 1 s per layer-epoch)
    for e in range(1, 5):
        t.step(e)
    assert slow.sizes == [1, 1] and len(t._recorder.buffer) == 4  # 8 s of estimation: not yet due
    clock.now += 100  # the caller is away long before closing: already late, the tracker writes one epoch...
    t.close()
    assert slow.sizes == [1, 1, 1, 1, 3, 3]  # ... then the rest, which fits a fresh budget, in one batch
    assert infoplane.load_run(tmp_path / "r").epochs.tolist() == [0, 1, 2, 3, 4]


def test_cheap_estimators_keep_their_batches(tmp_path, monkeypatch):
    t, clock, slow = tracker(tmp_path, monkeypatch, cost=1e-4)
    for e in range(300):
        clock.now += 0.01
        t.step(e)
    t.close()
    # After the first epoch, everything recorded within the budget (10 s: ~1000 fast epochs) is one batch.
    assert slow.sizes == [1, 1, 299, 299]


def test_an_estimator_slower_than_the_budget_writes_every_epoch(tmp_path, monkeypatch):
    t, clock, slow = tracker(tmp_path, monkeypatch, cost=20.0)
    for e in range(4):
        clock.now += 0.01
        t.step(e)
        assert infoplane.load_run(tmp_path / "r").epochs.tolist() == list(range(e + 1))
    t.close()
    assert slow.sizes == [1] * 8


# -------------------------------------------------------------------------------------------- infoplane track
# The CLI on the 12-bit task: the whole process runs on a fake clock (its checkpoint cadence too), each tracker
# step advances it by the caller's time per epoch, and binning is made slow (fake seconds per layer-epoch).
CLI = r"""
import os, signal, sys, time
now = [0.0]
time.monotonic = lambda: now[0]  # this process only: the CLI's checkpoints and the tracker's budget
from infoplane.estimators import Binning
from infoplane.runs import writer as writer_mod
from infoplane.tracking import tracker as tracker_mod
from infoplane.cli.main import main

log_path, kill_at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
STEP_S, COST_S = 0.1, 0.5
tracker_mod._clock = lambda: now[0]
log = open(log_path, "a")


def event(*words):
    log.write(" ".join(map(str, words)) + "\n")
    log.flush()


calls, binning = [0], Binning.__call__


def slow_binning(self, acts, labels):
    calls[0] += 1
    if calls[0] == kill_at:
        now[0] += COST_S * acts.shape[0] / 2
        event("kill", now[0])
        os.kill(os.getpid(), signal.SIGKILL)
    now[0] += COST_S * acts.shape[0]
    return binning(self, acts, labels)


Binning.__call__ = slow_binning
step = tracker_mod.Tracker.step


def timed_step(self, epoch, **metrics):
    now[0] += STEP_S
    event("step", now[0], epoch)
    return step(self, epoch, **metrics)


tracker_mod.Tracker.step = timed_step
add_rows = writer_mod.RunWriter.add_rows


def logged_add_rows(self, rows):
    add_rows(self, rows)
    event("write", now[0], *sorted({r.epoch for r in rows}))


writer_mod.RunWriter.add_rows = logged_add_rows
sys.exit(main(argv))
"""
CLI_EPOCH_COST, CLI_STEP = 6 * 0.5, 0.1  # 6 recorded layers


def cli(tmp_path, out, kill_at=0, resume=False):
    script = tmp_path / "cli.py"
    script.write_text(CLI)
    log = tmp_path / f"cli-{out.name}-{kill_at}-{int(resume)}.txt"
    cmd = ["track", TANH, "--fraction", "0.8", "--epochs", "30", "--schedule", "every:1", "--quiet", "--no-plot",
           "--out", str(out)] + (["--resume"] if resume else [])
    p = subprocess.run([sys.executable, str(script), str(log), str(kill_at), *cmd], capture_output=True, text=True,
                       timeout=600, cwd=REPO)
    return p, parse(log)


def test_track_resume_after_kills_equals_the_uninterrupted_run(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    p, events = cli(tmp_path, clean)
    assert p.returncode == 0, p.stderr
    clean_rows = rows_on_disk(clean / "fraction-0.8")
    assert {r.epoch for r in clean_rows} == set(range(31))
    for resume, kill_at in ((False, 3), (True, 10), (True, 17)):
        p, events = cli(tmp_path, killed, kill_at=kill_at, resume=resume)
        assert p.returncode == -9, p.stderr
        check_kill(killed / "fraction-0.8", events, clean_rows, CLI_EPOCH_COST, CLI_STEP)
    p, _ = cli(tmp_path, killed, resume=True)
    assert p.returncode == 0, p.stderr
    assert sorted(rows_on_disk(killed / "fraction-0.8"), key=key) == sorted(clean_rows, key=key)
    a, b = (infoplane.load_run(d / "fraction-0.8") for d in (killed, clean))
    for name in b.metric_names:
        np.testing.assert_array_equal(a.metric(name), b.metric(name))
    assert json.loads((killed / "fraction-0.8" / "meta.json").read_text())["complete"] is True


def test_the_budget_can_be_changed_while_open(tmp_path, monkeypatch):
    t, clock, slow = tracker(tmp_path, monkeypatch, cost=1.0)
    t.step(0)
    t.step(1)
    assert len(t._recorder.buffer) == 1
    t.flush_seconds = 0  # from now on every epoch is written at once
    t.step(2)
    assert infoplane.load_run(tmp_path / "r").epochs.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="flush_seconds must be a number >= 0 or None"):
        t.flush_seconds = -1
    t.close()


def test_training_checkpoints_are_spaced_so_that_saving_costs_at_most_a_twentieth():
    from infoplane.experiment.fraction import CHECKPOINT_SECONDS, CHECKPOINT_SHARE, checkpoint_interval

    assert CHECKPOINT_SECONDS == 1.0 and CHECKPOINT_SHARE == 0.05
    assert checkpoint_interval(0.0) == 1.0 and checkpoint_interval(0.05) == 1.0  # cheap saves: once a second
    for cost in (0.06, 0.2, 1.5):
        interval = checkpoint_interval(cost)
        assert interval > 1.0 and cost / interval == pytest.approx(CHECKPOINT_SHARE)

"""Nothing recorded is lost: unclosed trackers, kills, errors in step(), and non-finite estimates."""
import gc
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

import infoplane
from infoplane.runs.writer import read_table
from infoplane.tracking import tracker as tracker_mod
from infoplane.tracking.tracker import UnclosedTrackerWarning


def make(out, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(60, 3), torch.arange(60) % 2
    return infoplane.Tracker(model, x, y, out=out, **kw)


def epochs_on_disk(out):
    return sorted({r.epoch for r in read_table(os.path.join(out, "infoplane.csv"))})


UNCLOSED_SCRIPT = """
import sys, torch
from torch import nn
import infoplane
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
t = infoplane.Tracker(model, torch.randn(60, 3), torch.arange(60) % 2, out=sys.argv[1], flush_seconds=None)
for e in range(4):
    t.step(e)
# the script ends without t.close()
"""


def test_an_unclosed_tracker_writes_its_buffer_at_exit_and_warns(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", UNCLOSED_SCRIPT, str(out)], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert epochs_on_disk(out) == [0, 1, 2, 3]
    assert p.stderr.count("UnclosedTrackerWarning") == 1 and "close() was not called" in p.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] is False  # resumable, not mistaken for a finished run
    assert not (out / ".infoplane.lock").exists()


def test_a_collected_tracker_writes_its_buffer_and_warns(tmp_path):
    out = tmp_path / "run"
    t = make(out, flush_seconds=None)
    t.step(0)
    t.step(1)
    assert epochs_on_disk(out) == []
    with pytest.warns(UnclosedTrackerWarning, match="close\\(\\) was not called"):
        del t
        gc.collect()
    assert epochs_on_disk(out) == [0, 1]
    assert infoplane.load_run(out).meta["complete"] is False
    with make(out, resume=True) as t2:  # the lock went with the tracker
        t2.step(2)
    assert epochs_on_disk(out) == [0, 1, 2]


def test_a_closed_tracker_does_not_warn(tmp_path, recwarn):
    t = make(tmp_path / "run")
    t.step(0)
    t.close()
    del t
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, UnclosedTrackerWarning)]


def test_an_error_in_step_keeps_the_epochs_recorded_before_it(tmp_path):
    out = tmp_path / "run"
    t = make(out, flush_seconds=None)
    t.step(0)
    t.step(1)
    with pytest.raises(ValueError, match="already recorded"):
        t.step(1)
    assert epochs_on_disk(out) == [0, 1]  # written at once, not at some later close()
    with pytest.raises(TypeError, match="not a number"):
        t.step(2, loss="high")
    t.step(2)
    t.close()
    assert epochs_on_disk(out) == [0, 1, 2]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_default_flush_policy_writes_within_ten_seconds(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(tracker_mod.time, "monotonic", clock)
    out = tmp_path / "run"
    t = make(out)
    assert t.flush_seconds == 10
    t.step(0)
    clock.now += 4
    t.step(1)
    assert epochs_on_disk(out) == []  # still batching: fast epochs share one estimator call
    clock.now += 6.5
    t.step(2)  # the oldest buffered epoch is 10.5 s old: what was buffered is written first
    assert epochs_on_disk(out) == [0, 1]
    clock.now += 3
    t.step(3)
    assert epochs_on_disk(out) == [0, 1]
    clock.now += 7
    t.step(4)
    assert epochs_on_disk(out) == [0, 1, 2, 3]
    t.close()
    assert epochs_on_disk(out) == [0, 1, 2, 3, 4]


KILL_SCRIPT = """
import sys, torch
from torch import nn
import infoplane
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
with infoplane.Tracker(model, torch.randn(60, 3), torch.arange(60) % 2, out=sys.argv[1], flush_seconds=0) as t:
    for e in range(3):
        t.step(e)
    print("recorded", flush=True)
    sys.stdin.read()  # wait here until the test kills us
"""


def test_a_kill_loses_nothing_already_due(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "recorded"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=120)
    finally:
        p.stdin.close()
    assert epochs_on_disk(out) == [0, 1, 2]
    with make(out, resume=True, flush_seconds=0) as t:
        assert [t.step(e) for e in range(4)] == [False, False, False, True]
    assert epochs_on_disk(out) == [0, 1, 2, 3]


class NaNAt:
    """A custom estimator that fails (non-finite) on one layer."""

    name, has_lower = "fragile", False

    def __init__(self, layer_width):
        self.width = layer_width

    def settings(self):
        return {"kind": "custom"}

    def __call__(self, acts, labels):
        value = torch.full(acts.shape[:-2], math.nan if acts.shape[-1] == self.width else 1.0)
        return type("R", (), {"ixt": value, "ity": torch.zeros(acts.shape[:-2])})()


def test_a_non_finite_estimate_is_an_error_naming_layer_and_epoch(tmp_path):
    out = tmp_path / "run"
    t = make(out, estimators=[NaNAt(layer_width=5)], flush_seconds=None)
    t.step(0)
    with pytest.raises(ValueError, match=r"non-finite ixt \(nan\) for layer '1' at epoch 0 \(seed 0\)"):
        t.close()
    assert epochs_on_disk(out) == []  # never stored as an empty ("not applicable") cell
    assert infoplane.load_run(out).meta["complete"] is False
    t._finalizer.detach()
    t._writer.finish(complete=False)

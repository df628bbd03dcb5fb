"""The run directory's lifecycle: what is a run, what overwrite may delete, and the writer's lock."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import infoplane
from infoplane.runs import lifecycle as rundir
from infoplane.runs.lifecycle import RunLockedError
from infoplane.runs.writer import RunWriter


def small_tracker(out, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(40, 3), torch.arange(40) % 2
    return infoplane.Tracker(model, x, y, out=out, **kw)


def record(out, epochs=(0, 1), **kw):
    with small_tracker(out, **kw) as t:
        for e in epochs:
            t.step(e)
    return t


def test_overwrite_refuses_a_run_holding_foreign_files_and_lists_them(tmp_path):
    out = tmp_path / "run"
    record(out, keep_activations=True)
    (out / "thesis.tex").write_text("three years of work")
    (out / "activations" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"did not write \(activations/notes.txt, thesis.tex\)"):
        record(out, overwrite=True, keep_activations=True)
    assert (out / "thesis.tex").read_text() == "three years of work"
    assert (out / "activations" / "notes.txt").exists()
    assert len(infoplane.load_run(out).epochs) == 2  # the run itself untouched too


def test_overwrite_removes_only_infoplanes_files(tmp_path):
    out = tmp_path / "run"
    record(out, epochs=(0, 1, 2), keep_activations=True)
    (out / "train_state.pt").write_bytes(b"state")  # the CLI's checkpoint is infoplane's too
    record(out, epochs=(0,), overwrite=True)
    assert sorted(os.listdir(out)) == ["infoplane.csv", "meta.json", "metrics.csv"]
    assert infoplane.load_run(out).epochs.tolist() == [0]


def test_a_meta_json_without_the_format_marker_is_not_a_run(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"author": "someone else"}))
    (out / "data.bin").write_bytes(b"x")
    assert not rundir.is_run(out)
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ValueError, match="holds no infoplane run"):
            record(out, **kw)
    assert sorted(os.listdir(out)) == ["data.bin", "meta.json"]


def test_symlinks_are_foreign_and_never_followed(tmp_path):
    out = tmp_path / "run"
    record(out, keep_activations=True)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "1.npz").write_bytes(b"keep me")
    os.symlink(precious, out / "activations" / "7")
    os.symlink(precious / "1.npz", out / "infoplane.csv.tmp1")
    found = rundir.foreign_entries(out)
    assert found == ["activations/7", "infoplane.csv.tmp1"]
    with pytest.raises(ValueError, match="did not write"):
        rundir.clear(out)
    assert (precious / "1.npz").read_bytes() == b"keep me"


def test_clear_refuses_a_non_run(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(rundir.NotARunError, match="no meta.json"):
        rundir.clear(tmp_path)
    assert (tmp_path / "x.txt").exists()


def test_a_second_writer_in_the_same_process_is_refused_with_the_pid(tmp_path):
    out = tmp_path / "run"
    t = small_tracker(out)
    t.step(0)
    with pytest.raises(RunLockedError, match=f"being written by process {os.getpid()} "):
        small_tracker(out, resume=True)
    t.close()
    with small_tracker(out, resume=True) as t2:  # free again once closed
        t2.step(1)
    assert infoplane.load_run(out).epochs.tolist() == [0, 1]
    assert not (out / ".infoplane.lock").exists()


LOCK_HOLDER = """
import sys
from infoplane.runs.lifecycle import RunLock
lock = RunLock(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
lock.release()
"""


def test_a_writer_in_another_process_is_refused_with_its_pid(tmp_path):
    out = tmp_path / "run"
    record(out, epochs=(0,))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # blocks until the lock is held: no race
        with pytest.raises(RunLockedError, match=f"process {holder.pid} "):
            small_tracker(out, resume=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)
    with small_tracker(out, resume=True) as t:
        t.step(1)
    assert infoplane.load_run(out).epochs.tolist() == [0, 1]


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    record(out, epochs=(0,))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".infoplane.lock").write_text(f"{dead.stdout.strip()} on somewhere\n")
    with small_tracker(out, resume=True) as t:
        t.step(1)
    assert infoplane.load_run(out).epochs.tolist() == [0, 1]


KILLED_HOLDER = """
import os, sys
from infoplane.runs.lifecycle import RunLock
lock = RunLock(sys.argv[1])
print("locked", flush=True)
os.kill(os.getpid(), 9)
"""


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path):
    out = tmp_path / "run"
    record(out, epochs=(0,))
    p = subprocess.run([sys.executable, "-c", KILLED_HOLDER, str(out)], capture_output=True, text=True)
    assert p.returncode == -9 and p.stdout.strip() == "locked"
    assert (out / ".infoplane.lock").exists()  # left behind by the kill
    with small_tracker(out, resume=True) as t:
        t.step(1)
    assert infoplane.load_run(out).epochs.tolist() == [0, 1]


def test_refusals_happen_before_anything_is_created(tmp_path):
    out = tmp_path / "run"
    record(out, epochs=(0,))
    before = sorted(os.listdir(out))
    with pytest.raises(rundir.RunExistsError, match="resume=True.*overwrite=True"):
        small_tracker(out)
    assert sorted(os.listdir(out)) == before


def test_memory_writer_needs_no_directory():
    w = RunWriter(None, {"seeds": [0], "layers": [], "estimators": []})
    w.finish()
    assert w.run().meta["complete"] is True


def test_activation_files_are_recognised_as_own(tmp_path):
    out = tmp_path / "run"
    record(out, epochs=(0, 1), keep_activations=True, seeds=[5])
    assert rundir.foreign_entries(out) == []
    assert sorted(os.listdir(out / "activations" / "5")) == ["0.npz", "1.npz"]
    assert np.load(out / "activations" / "labels.npy").shape == (40,)

"""`infoplane track` / `infoplane plot` end to end on tiny budgets, and every bad input's message and exit status."""
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import infoplane
from infoplane.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TANH = str(REPO / "examples" / "tishby_tanh.py")


def read_rows(run_dir):
    with open(Path(run_dir) / "infoplane.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_track_end_to_end(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["track", TANH, "--fraction", "0.05", "--fraction", "0.85", "--epochs", "3", "--seeds", "2",
               "--out", str(out), "--quiet", "--no-plot", "--estimator", "binning", "--estimator", "kde"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fraction 0.05" in text and "fraction 0.85" in text and "I(X;T)" in text
    for f in ("0.05", "0.85"):
        run = infoplane.load_run(out / f"fraction-{f}")
        assert run.meta["complete"] and run.fraction == float(f)
        assert run.epochs.tolist() == infoplane.log_schedule(3, 400).epochs.tolist()
        assert run.seeds == [0, 1] and len(run.layers) == 6 and run.estimators == ["binning", "kde"]
        rows = read_rows(out / f"fraction-{f}")
        assert len(rows) == len(run.epochs) * 6 * 2 * 2  # epochs x layers x seeds x estimators
        for field in ("ixt", "ity"):
            values = run.get(field, "binning")
            assert np.all(np.isfinite(values)) and np.all(values >= -1e-9) and np.all(values <= 12 + 1e-9)
        train = run.meta["split"]["train"]
        assert len(train) == 2 and len(train[0]) == round(float(f) * 4096) and train[0] != train[1]
        assert run.metric("test_acc").shape == (2, len(run.epochs))
        # The final training state stays, so that the run can be trained on to more epochs.
        assert infoplane.train.load_state(out / f"fraction-{f}" / "train_state.pt")["epoch"] == 3


def test_original_split_and_reproducible_seeds(tmp_path):
    args = ["track", TANH, "--fraction", "0.05", "--epochs", "2", "--quiet", "--no-plot", "--split", "original"]
    assert main(args + ["--out", str(tmp_path / "a"), "--seeds", "2"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--seeds", "2"]) == 0
    a, b = (infoplane.load_run(tmp_path / x / "fraction-0.05") for x in "ab")
    split = a.meta["split"]
    assert split["train"][0] == list(range(205)) and split["test"][0] == list(range(round(0.8 * 4096), 4096))
    ixt_a, ixt_b = a.get("ixt"), b.get("ixt")
    assert np.array_equal(ixt_a, ixt_b)                     # same seeds: same numbers
    assert not np.array_equal(ixt_a[0, -1], ixt_a[1, -1])   # different seeds: different networks


PAUSING = str(REPO / "tests" / "_pausing_model.py")
# 2 seeds x 2048 training rows (fraction 0.5 of the 4096 samples) in batches of 256: 16 steps per epoch.
STEPS_PER_EPOCH = 2 * 2048 // 256


def start_paused(cmd, after_epochs):
    """Start `cmd` and return it once it is paused at the first step after `after_epochs` epochs.

    The model file writes to a pipe when it gets there and then blocks on another pipe that is never written to,
    so the test decides exactly where the process is interrupted; no clock is involved.
    """
    signal_r, signal_w = os.pipe()
    wait_r, wait_w = os.pipe()
    env = dict(os.environ, INFOPLANE_TEST_SIGNAL_FD=str(signal_w), INFOPLANE_TEST_WAIT_FD=str(wait_r),
               INFOPLANE_TEST_PAUSE_STEP=str(after_epochs * STEPS_PER_EPOCH + 1))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, pass_fds=(signal_w, wait_r), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    os.close(signal_w)
    os.close(wait_r)
    with os.fdopen(signal_r) as signals:
        line = signals.readline()  # "" (end of file) if the process ended without pausing: no hang
    if line != "paused\n":
        proc.kill()
        raise AssertionError(f"the run ended before its pause point: {proc.communicate(timeout=600)[1]}")
    return proc, wait_w


def finish(proc, wait_w):
    err = proc.communicate(timeout=600)[1]  # hang guard only
    os.close(wait_w)
    return err


# `python -m infoplane.cli.main`, with Ctrl-C restored to Python's default handler first: a process started from a
# shell's background job (`make test &` in a script) inherits SIGINT ignored, and Python then keeps it ignored.
_CLI_WITH_CTRL_C = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "runpy.run_module('infoplane.cli.main', run_name='__main__', alter_sys=True)")


def pausing_cmd(out):
    return [sys.executable, "-c", _CLI_WITH_CTRL_C, "track", PAUSING, "--fraction", "0.5", "--epochs", "6",
            "--seeds", "2", "--quiet", "--no-plot", "--schedule", "every:1", "--out", str(out)]


def test_resume_after_kill_completes_identically(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert subprocess.run(pausing_cmd(whole), cwd=REPO, capture_output=True).returncode == 0
    proc, wait_w = start_paused(pausing_cmd(part), after_epochs=3)
    proc.send_signal(signal.SIGKILL)  # killed in the middle of the run, at the 4th epoch's first step
    finish(proc, wait_w)
    assert proc.returncode == -signal.SIGKILL
    partial = infoplane.load_run(part / "fraction-0.5")
    assert not partial.meta.get("complete")
    # an unfinished run is never mistaken for a complete one
    assert main(pausing_cmd(part)[3:]) == 2
    assert main(pausing_cmd(part)[3:] + ["--resume"]) == 0
    a, b = (read_rows(d / "fraction-0.5") for d in (whole, part))
    key = lambda r: (r["seed"], int(r["epoch"]), r["layer"], r["estimator"])  # noqa: E731
    assert sorted(map(key, b)) == sorted(map(key, a))  # nothing missing, nothing duplicated
    assert sorted(b, key=key) == sorted(a, key=key)     # identical numbers
    assert {int(r["epoch"]) for r in a} == set(range(7))  # epochs 0 (initialisation) .. 6 (trained network)


def test_ctrl_c_saves_what_was_measured_and_exits_130(tmp_path):
    proc, wait_w = start_paused(pausing_cmd(tmp_path), after_epochs=2)
    proc.send_signal(signal.SIGINT)
    err = finish(proc, wait_w)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    run = infoplane.load_run(tmp_path / "fraction-0.5")
    assert not run.meta["complete"]
    assert run.epochs.tolist() == [0, 1, 2]  # every epoch recorded before the interrupt was written


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("source,code,message", [
    ("import torch\nx = 1\n", 2, "defines neither build_model nor model"),
    ("def helper():\n    return 1 / 0\nvalue = helper()\n", 2, "ZeroDivisionError"),
    ("import torch.nn as nn\ndef build_model():\n    return nn.Sequential(nn.Linear(10, 2))\n", 1,
     "cannot take the probe inputs"),
    ("import torch.nn as nn\nmodel = nn.Sequential(nn.Linear(12, 2))\n", 2, "single `model`"),
])
def test_bad_model_files(tmp_path, capsys, source, code, message):
    path = write(tmp_path, "net.py", source)
    out = tmp_path / "out"
    rc = main(["track", path, "--epochs", "2", "--seeds", "2", "--quiet", "--no-plot", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == code and err.startswith("infoplane: error: ") and message in err.splitlines()[0]
    if "ZeroDivision" in message:
        assert "line 2" in err and "net.py" in err
    for meta in out.glob("*/meta.json"):  # nothing that looks like a finished run is left behind
        assert '"complete": true' not in meta.read_text()


@pytest.mark.parametrize("args,message", [
    (["--fraction", "0"], "0 < F <= 1"),
    (["--fraction", "abc"], "expected a number"),
    (["--seeds", "0"], "positive integer"),
    (["--schedule", "weekly"], "--schedule"),
    (["--data", "missing.npz"], "missing.npz"),
    (["--probe", "train", "--seeds", "2"], "--fixed-split"),
    (["--resume", "--overwrite"], "exclude each other"),
])
def test_usage_errors_exit_2_with_one_line_first(tmp_path, capsys, args, message):
    rc = main_exit(["track", TANH, "--epochs", "2", "--quiet", "--no-plot", "--out", str(tmp_path)] + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err.splitlines()[0]


def test_labels_not_matching_data(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((10, 12), np.float32), labels=np.zeros(9, np.int64))
    rc = main(["track", TANH, "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--quiet", "--no-plot",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "labels" in capsys.readouterr().err.splitlines()[0]


def main_exit(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_help_documents_the_model_file_contract():
    out = subprocess.run([sys.executable, "-m", "infoplane.cli.main", "track", "--help"], cwd=REPO,
                         capture_output=True, text=True).stdout
    for name in ("build_model()", "model", "data()", "optimizer(parameters)", "loss", "layers", "train_step"):
        assert name in out


def test_plot_command(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["track", TANH, "--fraction", "0.1", "--fraction", "0.5", "--epochs", "2", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "figure:" in printed and (out / "compare-binning.png").exists() and (out / "fraction-0.1" / "plane-binning.png").exists()
    target = tmp_path / "both.pdf"
    assert main(["plot", str(out / "fraction-0.1"), str(out / "fraction-0.5"), "--out", str(target)]) == 0
    assert target.read_bytes().startswith(b"%PDF") and str(target) in capsys.readouterr().out

    assert main(["plot", str(tmp_path)]) == 2
    assert "not an infoplane run directory" in capsys.readouterr().err.splitlines()[0]

    digits = str(REPO / "examples" / "digits_mlp.py")
    assert main(["track", digits, "--epochs", "1", "--quiet", "--no-plot", "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    assert main(["plot", str(out / "fraction-0.1"), str(tmp_path / "d" / "fraction-0.8")]) == 2
    assert "data" in capsys.readouterr().err.splitlines()[0]


def test_resume_refuses_changed_settings_and_checks_every_fraction_first(tmp_path, capsys):
    out = tmp_path / "o"
    base = ["track", TANH, "--epochs", "2", "--quiet", "--no-plot", "--out", str(out)]
    assert main(base + ["--fraction", "0.5"]) == 0
    meta = infoplane.load_run(out / "fraction-0.5").meta
    assert meta["caller"][:3] == ["infoplane", "track", TANH]
    capsys.readouterr()
    assert main(base + ["--fraction", "0.5", "--resume", "--lr", "0.1"]) == 2
    assert "training.lr: stored 0.0004, now 0.1 (--lr)" in capsys.readouterr().err.splitlines()[0]
    # a fraction too small for any training sample is refused before the first fraction trains or is replaced
    assert main(base + ["--fraction", "0.5", "--fraction", "0.0001", "--overwrite"]) == 2
    assert "0.0001" in capsys.readouterr().err.splitlines()[0]
    assert infoplane.load_run(out / "fraction-0.5").meta["complete"]  # the old run was left alone
    assert main(base + ["--fraction", "0.5", "--overwrite", "--range", "1", "-1"]) == 2
    assert main(base + ["--fraction", "0.5", "--overwrite", "--seed", "-1"]) == 2

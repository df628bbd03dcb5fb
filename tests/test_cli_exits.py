"""`infoplane track` / `infoplane plot`: the epoch convention, exit statuses and messages of settings problems
(found before anything trains), --verbose, the --data note, and plotting a directory of fraction-* runs."""
from pathlib import Path

import numpy as np
from torch import nn

import infoplane
from infoplane.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TANH = str(REPO / "examples" / "tishby_tanh.py")


def track(tmp_path, *args, out="o"):
    return main(["track", *args, "--quiet", "--no-plot", "--out", str(tmp_path / out)])


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_schedule_records_the_trained_network(tmp_path, capsys):
    # Epoch e is the network after e epochs: 0 is the initialisation, and the last is the trained network.
    assert track(tmp_path, TANH, "--epochs", "3", "--schedule", "every:1", out="a") == 0
    assert infoplane.load_run(tmp_path / "a" / "fraction-0.8").epochs.tolist() == [0, 1, 2, 3]
    assert "final epoch 3" in capsys.readouterr().out
    assert track(tmp_path, TANH, "--epochs", "5", "--schedule", "every:2", out="b") == 0
    run = infoplane.load_run(tmp_path / "b" / "fraction-0.8")
    assert run.epochs.tolist() == [0, 2, 4, 5]
    assert np.isfinite(run.metric("train_acc")[:, -1]).all()  # the summary's accuracy is the trained network's
    assert "final epoch 5" in capsys.readouterr().out


def test_fractions_sharing_a_directory_are_refused_before_training(tmp_path, capsys):
    assert track(tmp_path, TANH, "--epochs", "1", "--fraction", "0.1", "--fraction", "0.1000001") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "fraction-0.1" in first and "0.1000001" in first
    assert not (tmp_path / "o").exists()  # nothing was trained or written


def test_bad_layers_name_in_the_model_file_is_a_usage_error(tmp_path, capsys):
    path = write(tmp_path, "net.py", "from torch import nn\nlayers = ['7', 'nope']\n"
                                     "def build_model():\n    return nn.Sequential(nn.Linear(12, 4), nn.Tanh(), "
                                     "nn.Linear(4, 2))\n")
    assert track(tmp_path, path, "--epochs", "1") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("infoplane: error: layers = ") and "net.py" in first and "'nope'" in first
    assert not (tmp_path / "o").exists()


def test_loss_that_does_not_fit_the_output_is_a_usage_error_naming_the_loss(tmp_path, capsys):
    path = write(tmp_path, "net.py", "from torch import nn\nloss = nn.MSELoss()\n"
                                     "def build_model():\n    return nn.Sequential(nn.Linear(12, 4), nn.Tanh(), "
                                     "nn.Linear(4, 2))\n")
    assert track(tmp_path, path, "--epochs", "1") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "MSELoss" in first and "does not fit the model's output" in first
    assert not (tmp_path / "o").exists()


def test_lr_with_the_model_files_optimizer_is_a_usage_error(tmp_path, capsys):
    path = write(tmp_path, "net.py", "import torch\nfrom torch import nn\n"
                                     "def optimizer(p):\n    return torch.optim.SGD(p, lr=0.1)\n"
                                     "def build_model():\n    return nn.Sequential(nn.Linear(12, 2))\n")
    assert track(tmp_path, path, "--epochs", "1", "--lr", "0.01") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "--lr" in first and "optimizer()" in first and "lr=" not in first


def test_the_library_error_names_the_python_arguments_and_the_cli_its_options(tmp_path):
    import pytest

    from infoplane.cli.main import as_flags
    from infoplane.experiment import ConfigError
    from infoplane.experiment import track as track_fn

    path = write(tmp_path, "net.py", "import torch\nfrom torch import nn\n"
                                     "def optimizer(p):\n    return torch.optim.SGD(p, lr=0.1)\n"
                                     "def build_model():\n    return nn.Sequential(nn.Linear(12, 2))\n")
    with pytest.raises(ConfigError) as info:
        track_fn(path, epochs=1, lr=0.01, out=tmp_path / "lib", progress=False)
    err = info.value
    assert err.argument == "lr" and "`lr`" in str(err) and "--" not in str(err)
    assert as_flags(str(err), err.arguments).startswith("--lr sets the rate")
    with pytest.raises(ConfigError) as info:
        track_fn(path, probe="train", seeds=2, epochs=1, out=tmp_path / "lib2", progress=False)
    assert info.value.arguments == ("probe", "fixed_split") and "`fixed_split=True`" in str(info.value)
    # The translation: flags for the arguments an error names, values unquoted, other backquotes kept.
    assert as_flags("`probe='train'` needs `fixed_split=True`; `model` is fine", ["probe", "fixed_split"]) == \
        "--probe train needs --fixed-split; `model` is fine"
    assert as_flags("`seed` and `lr`", ["seed"]) == "--seed and `lr`"
    assert as_flags("`ray_gpus=0` with `ray=True`") == "--ray-gpus 0 with --ray"


def test_resuming_with_other_recorded_settings_is_a_usage_error(tmp_path, capsys):
    assert track(tmp_path, TANH, "--epochs", "2") == 0
    capsys.readouterr()
    assert track(tmp_path, TANH, "--epochs", "2", "--resume", "--estimator", "kde") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "--estimator" in first and "--overwrite" in first and "=True" not in first
    assert track(tmp_path, TANH, "--epochs", "2", "--resume", "--schedule", "every:1") == 2
    assert "--schedule" in capsys.readouterr().err.splitlines()[0]
    assert infoplane.load_run(tmp_path / "o" / "fraction-0.8").meta["complete"]  # left alone


def test_verbose_shows_the_traceback(tmp_path, capsys):
    # The network cannot take the 12-bit inputs: a failure while running (status 1).
    path = write(tmp_path, "net.py", "from torch import nn\ndef build_model():\n    return nn.Linear(10, 2)\n")
    assert track(tmp_path, path, "--epochs", "1", out="a") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--verbose" in err
    assert track(tmp_path, path, "--epochs", "1", "--verbose", out="b") == 1
    err = capsys.readouterr().err
    assert err.startswith("infoplane: error: ") and "Traceback (most recent call last)" in err


def test_data_option_replacing_the_files_data_prints_one_note(tmp_path, capsys):
    path = write(tmp_path, "net.py", "import torch\nfrom torch import nn\n"
                                     "def data():\n    raise RuntimeError('not used')\n"
                                     "def build_model():\n    return nn.Sequential(nn.Linear(12, 3), nn.Tanh(), "
                                     "nn.Linear(3, 2))\n")
    rc = main(["track", path, "--data", "tishby12", "--epochs", "1", "--no-plot", "--out", str(tmp_path / "o")])
    assert rc == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "data()" in line]
    assert len(notes) == 1 and notes[0].startswith("note: --data tishby12") and "net.py" in notes[0]


def test_data_errors_name_the_file_once(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((10, 12), np.float32), labels=-np.ones(10, np.int64))
    assert track(tmp_path, TANH, "--data", str(tmp_path / "d.npz"), "--epochs", "1") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.count("d.npz") == 1 and first.startswith("infoplane: error: --data")


def test_plot_finds_the_fraction_runs_inside_a_directory(tmp_path, capsys):
    assert track(tmp_path, TANH, "--epochs", "1", "--fraction", "0.5", "--fraction", "0.1") == 0
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "o" / "compare-binning.png").exists() and "compare-binning.png" in printed
    for f in ("0.1", "0.5"):
        assert (tmp_path / "o" / f"fraction-{f}" / "plane-binning.png").exists()
    assert main(["plot", str(tmp_path)]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.count("not an infoplane run directory") == 1 and "fraction-*" in first


def test_an_output_that_cannot_be_created_is_exit_2_before_training(tmp_path, capsys):
    a_file = write(tmp_path, "a-file", "")
    outs = [f"{a_file}/x"]  # a parent that is a file
    outs += [p for p in ("/proc/nt", "/sys/nt") if Path(p).parent.is_dir()]  # virtual filesystems (Linux)
    for out in outs:
        assert main(["track", TANH, "--epochs", "1", "--quiet", "--no-plot", "--out", out]) == 2
        err = capsys.readouterr().err
        first = err.splitlines()[0]
        assert first.startswith(f"infoplane: error: cannot create run directory {out}/fraction-0.8: "), first
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("**/meta.json"))
    assert track(tmp_path, TANH, "--epochs", "1", "--tensorboard", f"{a_file}/tb") == 2
    assert "cannot create --tensorboard directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was trained or written


def test_plot_animate_report_export_agree_on_an_unwritable_out(tmp_path, capsys):
    import gc
    import warnings

    x, y = infoplane.data.tishby12()
    net = nn.Sequential(nn.Linear(12, 3), nn.Tanh(), nn.Linear(3, 2))
    with infoplane.Tracker(net, x[::32], y[::32], schedule=[0, 1], out=tmp_path / "run") as t:
        t.step(0), t.step(1)
    run, bad = str(tmp_path / "run"), write(tmp_path, "a-file", "") + "/sub"
    commands = [["plot", run, "--out", f"{bad}/p.png"], ["animate", run, "--out", f"{bad}/a.gif"],
                ["report", run, "--out", f"{bad}/r.html"], ["export", run, "--tensorboard", f"{bad}/tb"]]
    for command in commands:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main(command)
            gc.collect()  # an animation that was never saved warns when it is collected
        err = capsys.readouterr().err
        assert code == 2, (command, err)
        assert err.startswith(f"infoplane: error: cannot write {command[-2]} {command[-1]}: "), err
        assert "Not a directory" in err and "Traceback" not in err
        assert not [str(w.message) for w in caught if "Animation" in str(w.message)]


def test_non_finite_outputs_at_epoch_0_are_reported_as_such(tmp_path, capsys):
    path = write(tmp_path, "net.py", "import torch\nfrom torch import nn\n"
                                     "def build_model():\n    net = nn.Sequential(nn.Linear(12, 4), nn.Tanh(), "
                                     "nn.Linear(4, 2))\n    with torch.no_grad():\n"
                                     "        net[0].bias[0] = float('nan')\n    return net\n")
    assert track(tmp_path, path, "--epochs", "1") == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert "at epoch 0, the initialisation, before any training" in first and "diverged" not in first


def test_a_refused_resume_names_the_settings_and_both_values(tmp_path, capsys):
    small = ["--fraction", "0.05", "--probe", "train"]
    assert track(tmp_path, TANH, "--epochs", "2", *small) == 0
    meta = infoplane.load_run(tmp_path / "o" / "fraction-0.05").meta
    # The effective training settings, defaults resolved: no nulls.
    assert {k: meta["training"][k] for k in ("optimizer", "lr", "batch_size", "loss", "epochs")} == \
        {"optimizer": "Adam", "lr": 4e-4, "batch_size": 256, "loss": "CrossEntropyLoss()", "epochs": 2}
    capsys.readouterr()
    assert track(tmp_path, TANH, "--epochs", "2", *small, "--resume", "--lr", "0.01", "--batch-size", "64") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "training.lr: stored 0.0004, now 0.01 (--lr)" in first
    assert "training.batch_size: stored 256, now 64 (--batch-size)" in first and "--overwrite" in first
    assert track(tmp_path, TANH, "--epochs", "1", *small, "--resume") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "training.epochs: stored 2, now 1 (--epochs)" in first and "not cut short" in first


def test_resume_with_more_epochs_trains_a_finished_run_on(tmp_path, capsys):
    # What is guaranteed: the rows of the epochs so far are kept byte for byte; training continues from the
    # saved state (weights, optimiser moments, the per-seed batch-order and dropout streams), so every later
    # epoch is the one an uninterrupted run of the longer length trains, and is recorded where the schedule
    # asked for it (here log:400, whose epochs up to 2 are the same for 2 and 4 epochs).
    args = ["--seeds", "2", "--fraction", "0.05", "--fixed-split", "--probe", "train"]  # a small probe set
    assert track(tmp_path, TANH, "--epochs", "2", *args, out="ext") == 0
    run_dir = tmp_path / "ext" / "fraction-0.05"
    before = (run_dir / "infoplane.csv").read_text().splitlines()
    assert track(tmp_path, TANH, "--epochs", "4", *args, "--resume", out="ext") == 0
    assert track(tmp_path, TANH, "--epochs", "4", *args, out="full") == 0
    after = (run_dir / "infoplane.csv").read_text().splitlines()
    assert after[:len(before)] == before
    extended, full = infoplane.load_run(run_dir), infoplane.load_run(tmp_path / "full" / "fraction-0.05")
    assert extended.complete and extended.epochs.tolist() == full.epochs.tolist() == [0, 1, 2, 3, 4]
    for field in ("ixt", "ity"):
        assert np.array_equal(extended.get(field), full.get(field))
    assert np.array_equal(extended.metric("train_loss"), full.metric("train_loss"))
    assert extended.meta["training"]["epochs"] == 4
    assert [e["after"] for e in extended.meta["extended"]] == [2]
    # The same command again finds the extended run complete, and leaves it alone.
    assert track(tmp_path, TANH, "--epochs", "4", *args, "--resume", out="ext") == 0
    assert infoplane.load_run(run_dir).meta == extended.meta
    # A run without its final training state (removed here) cannot be trained on: said before training.
    (tmp_path / "full" / "fraction-0.05" / "train_state.pt").unlink()
    capsys.readouterr()
    assert track(tmp_path, TANH, "--epochs", "6", *args, "--resume", out="full") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "no training state to continue from" in first and "--overwrite" in first

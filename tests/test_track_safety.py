"""`infoplane track` deletes only infoplane's files and applies the one label rule to any data it is given."""
import json
from pathlib import Path

import numpy as np

import infoplane
from infoplane.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TANH = str(REPO / "examples" / "tishby_tanh.py")


def track(out, *extra):
    return main(["track", TANH, "--fraction", "0.8", "--epochs", "1", "--quiet", "--out", str(out), *extra])


def test_overwrite_never_deletes_a_users_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert track(out) == 0
    thesis = out / "fraction-0.8" / "thesis.tex"
    thesis.write_text("three years of work")
    assert track(out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "thesis.tex" in err and "--overwrite" in err
    assert thesis.read_text() == "three years of work"
    thesis.unlink()
    assert track(out, "--overwrite") == 0  # only infoplane's files: replaced
    assert infoplane.load_run(out / "fraction-0.8").meta["complete"] is True


def test_a_directory_that_is_not_a_run_is_never_written(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "fraction-0.8").mkdir(parents=True)
    (out / "fraction-0.8" / "meta.json").write_text(json.dumps({"mine": True}))
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert track(out, *extra) == 2
        assert "holds no infoplane run" in capsys.readouterr().err
    assert json.loads((out / "fraction-0.8" / "meta.json").read_text()) == {"mine": True}


def write_npz(path, labels):
    rng = np.random.default_rng(0)
    np.savez(path, inputs=rng.random((40, 12)).astype(np.float32), labels=labels)


def test_float_labels_are_refused_not_truncated(tmp_path, capsys):
    data = tmp_path / "d.npz"
    write_npz(data, np.where(np.arange(40) % 2, 1.2, 0.7))
    assert track(tmp_path / "out", "--data", str(data)) == 2
    err = capsys.readouterr().err
    assert "non-integer values such as [0.7, 1.2, 0.7]" in err and "whole numbers" in err


def test_class_names_in_an_npz_reach_the_run(tmp_path):
    data = tmp_path / "d.npz"
    write_npz(data, np.array(["yes", "no"])[np.arange(40) % 2])
    assert track(tmp_path / "out", "--data", str(data)) == 0
    run = infoplane.load_run(tmp_path / "out" / "fraction-0.8")
    assert run.class_names == ["no", "yes"]

"""`infoplane track` on corrupted data: the draw is recorded, checked on resume, and the clean labels tracked."""
from pathlib import Path

import numpy as np
import pytest

import infoplane
from infoplane.cli.main import main
from infoplane.data import corrupt

REPO = Path(__file__).resolve().parents[1]
TANH = str(REPO / "examples" / "tishby_tanh.py")


def _entropy(z):
    p = np.bincount(z) / len(z)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def test_label_noise_is_drawn_per_seed_recorded_and_the_clean_labels_tracked(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (96, 12)).astype(np.float32)
    y = (x[:, :3].sum(1) % 2).astype(np.int64)
    np.savez(tmp_path / "d.npz", inputs=x, labels=y)
    args = ["track", TANH, "--data", str(tmp_path / "d.npz"), "--epochs", "2", "--quiet", "--no-plot",
            "--fraction", "0.5", "--out", str(tmp_path / "o")]
    assert main(args + ["--label-noise", "0.5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "I(T;y_clean) per layer" in out and "chain check:" in out
    run = infoplane.load_run(tmp_path / "o" / "fraction-0.5")
    want = corrupt(x, y, label_noise=0.5, seed=3)  # the same draw, made here
    got = run.corruption  # one row per seed
    np.testing.assert_array_equal(got["corrupted"], [want.corrupted])
    np.testing.assert_array_equal(got["labels"], [want.y])
    np.testing.assert_array_equal(got["clean_labels"], y)
    assert run.meta["corruption"]["label_noise"] == 0.5 and run.meta["corruption"]["seeds"] == [3]
    # Y is what the network saw (the corrupted labels); the clean ones are the side variable y_clean.
    assert run.h_y == pytest.approx(_entropy(want.y))
    assert run.targets == ["y_clean"]
    assert run.meta["targets"][0]["h"] == pytest.approx(_entropy(y))
    itz = run.get("ity", target="y_clean")
    assert np.isfinite(itz).all() and (itz <= _entropy(y) + 1e-12).all()
    # Accuracies against both label sets: they differ at most by the share of the part's labels that differ.
    differs = want.y != y
    for part in ("train", "test"):
        idx = np.asarray(run.meta["split"][part][0])
        gap = np.abs(run.metric(f"{part}_acc", seed=3) - run.metric(f"{part}_acc_clean", seed=3))
        assert np.isfinite(gap).all() and (gap <= differs[idx].mean() + 1e-12).all()
    # A resumed run must draw the same corruption.
    assert main(args + ["--label-noise", "0.2", "--seed", "3", "--resume"]) == 2
    assert "corruption" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--label-noise", "1.5"], "0 <= P <= 1"),
    (["--label-noise", "0.3", "--random-labels"], "--random-labels"),
    (["--shuffled-pixels", "--gaussian-inputs"], "--shuffled-pixels"),
])
def test_corruption_options_are_checked_before_training(tmp_path, capsys, extra, message):
    try:
        rc = main(["track", TANH, "--epochs", "1", "--quiet", "--no-plot", "--out", str(tmp_path / "o"), *extra])
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o" / "fraction-0.8").exists()

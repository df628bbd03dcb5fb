"""`infoplane track` on corrupted data draws the corruption once per seed: seed s trains, is probed and is measured
on `corrupt(x, y, seed=s)`, exactly as a run of seed s alone."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import infoplane
from infoplane.data import corrupt
from infoplane.experiment import ConfigError, track
from infoplane.runs.format import CORRUPTION, read_corruption

REPO = Path(__file__).resolve().parents[1]
TANH = str(REPO / "examples" / "tishby_tanh.py")
TANH_Q8 = str(REPO / "examples" / "tishby_tanh_q8.py")
# A loss of its own keeps the fused kernel out: the seeds train as one stacked torch ensemble.
STACKED = """
import torch.nn.functional as F
from torch import nn

def build_model():
    return nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 2))

def loss(output, target):
    return F.cross_entropy(output, target)
"""


def _data(n=96):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (n, 12)).astype(np.float32)
    return x, (x[:, :3].sum(1) % 2).astype(np.int64)


def _track(out, seeds, seed, model=TANH, **options):
    x, y = _data()
    options.setdefault("estimators", [infoplane.Binning(bins=30, range=(-1, 1))])
    options.setdefault("epochs", 2)
    return track(model, data=(x, y), fractions=[0.5], seeds=seeds, seed=seed, out=out, progress=False,
                 log=lambda line: None, **options)[0]


def _entropy(z):
    p = np.unique(z, return_counts=True)[1] / len(z)
    return float(-(p * np.log2(p)).sum())


def _plug_in_mi(t, y):
    """I(T;Y) in bits by counting: H(Y) - H(Y|T), T's rows as symbols."""
    _, t_id = np.unique(t, axis=0, return_inverse=True)
    t_id = t_id.reshape(-1)
    h_y_given_t = sum(np.mean(t_id == v) * _entropy(y[t_id == v]) for v in np.unique(t_id))
    return _entropy(y) - h_y_given_t


def test_each_seed_draws_its_own_corruption_and_the_run_stores_every_draw(tmp_path):
    x, y = _data()
    run = _track(tmp_path / "o", seeds=2, seed=3, label_noise=0.5, shuffled_pixels=True)
    got = run.corruption
    assert got["seeds"].tolist() == [3, 4] and got["labels"].shape == (2, len(y))
    for i, s in enumerate((3, 4)):
        want = corrupt(x, y, label_noise=0.5, shuffled_pixels=True, seed=s)
        np.testing.assert_array_equal(got["corrupted"][i], want.corrupted)
        np.testing.assert_array_equal(got["labels"][i], want.y)
        np.testing.assert_array_equal(got["feature_order"][i], want.feature_order)
        np.testing.assert_array_equal(x[:, want.feature_order], want.x)  # what the order means
    np.testing.assert_array_equal(got["clean_labels"], y)
    assert not np.array_equal(got["labels"][0], got["labels"][1])
    assert not np.array_equal(got["feature_order"][0], got["feature_order"][1])
    settings = run.meta["corruption"]
    assert settings["draw"] == "per seed" and settings["seeds"] == [3, 4] and "seed" not in settings
    assert settings["n_corrupted"] == [int(got["corrupted"][i].sum()) for i in range(2)]
    # Each seed's H(Y) is that of its own probe labels (probe "all": the whole data set); the run's is the largest.
    h = [_entropy(got["labels"][i]) for i in range(2)]
    assert run.meta["h_y_seeds"] == pytest.approx(h) and run.h_y == pytest.approx(max(h))
    assert run.meta["h_y_from"] == "the largest of h_y_seeds"
    assert "h_y_seeds" not in run.for_target("y_clean").meta  # Z is shared: its H(Z) is the one ceiling
    # Each seed's stratified split is stratified on its own labels, drawn with its seed, as it would be alone.
    for i, s in enumerate((3, 4)):
        train, test = infoplane.data.stratified_split(got["labels"][i], 0.5, seed=s)
        assert run.meta["split"]["train"][i] == train.tolist() and run.meta["split"]["test"][i] == test.tolist()


@pytest.mark.parametrize("engine,options", [
    ("fused", {"label_noise": 0.5, "shuffled_pixels": True}),
    ("one at a time", {"random_labels": True, "gaussian_inputs": True, "vectorize": False}),
    ("stacked", {"label_noise": 0.3, "random_pixels": True}),
])
def test_each_seed_of_an_ensemble_equals_a_run_of_that_seed_alone(tmp_path, engine, options):
    model = TANH
    if engine == "stacked":
        model = str(tmp_path / "stacked.py")
        Path(model).write_text(STACKED)
    ensemble = _track(tmp_path / "all", seeds=2, seed=5, model=model, **options)
    for i, s in enumerate((5, 6)):
        alone = _track(tmp_path / str(s), seeds=1, seed=s, model=model, **options)
        np.testing.assert_array_equal(ensemble.corruption["labels"][i], alone.corruption["labels"][0])
        for value in ("ixt", "ity"):
            np.testing.assert_array_equal(ensemble.get(value)[i], alone.get(value)[0])
        assert ensemble.metric_names == alone.metric_names
        for name in alone.metric_names:
            np.testing.assert_array_equal(ensemble.metric(name, seed=s), alone.metric(name, seed=s))
        assert ensemble.meta["h_y_seeds"][i] == alone.meta["h_y_seeds"][0]
        assert ensemble.meta["split"]["train"][i] == alone.meta["split"]["train"][0]


def test_each_seed_is_measured_and_scored_against_the_labels_it_trained_on(tmp_path):
    """A quantised network's exact plug-in I(T;Y), counted here from the saved activations, is that of each seed's
    own labels (and I(T;Y_clean) that of the clean ones); so are the accuracies."""
    run = _track(tmp_path / "o", seeds=2, seed=1, model=TANH_Q8, label_noise=0.6,
                 estimators=[infoplane.Discrete()], keep_activations=True)
    drawn = run.corruption
    clean = drawn["clean_labels"]
    assert not np.array_equal(drawn["labels"][0], drawn["labels"][1])
    saved = np.load(tmp_path / "o" / "fraction-0.5" / "activations" / "labels.npy")
    np.testing.assert_array_equal(saved, drawn["labels"])  # one row per seed, for estimate()
    ity, ity_clean = run.get("ity", "discrete"), run.get("ity", "discrete", target="y_clean")
    differs = 0
    for i, s in enumerate(run.seeds):
        own, other = drawn["labels"][i], drawn["labels"][1 - i]
        for k, epoch in enumerate(run.epochs):
            with np.load(tmp_path / "o" / "fraction-0.5" / "activations" / str(s) / f"{int(epoch)}.npz") as z:
                acts = {layer: z[layer] for layer in run.layers}
            for j, layer in enumerate(run.layers):
                assert ity[i, k, j] == pytest.approx(_plug_in_mi(acts[layer], own), abs=1e-9)
                assert ity_clean[i, k, j] == pytest.approx(_plug_in_mi(acts[layer], clean), abs=1e-9)
                differs += abs(_plug_in_mi(acts[layer], other) - ity[i, k, j]) > 1e-6
            # The output layer holds the class probabilities: accuracy against the seed's labels and the clean ones.
            predicted = acts[run.layers[-1]].argmax(1)
            for part in ("train", "test"):
                rows = np.asarray(run.meta["split"][part][i])
                assert run.metric(f"{part}_acc", seed=s)[k] == pytest.approx(np.mean(predicted[rows] == own[rows]))
                assert run.metric(f"{part}_acc_clean", seed=s)[k] == pytest.approx(
                    np.mean(predicted[rows] == clean[rows]))
    assert differs  # the other seed's labels give other values: the check above tells them apart
    # estimate() again from the saved activations: each seed against its own row of labels.np
    again = infoplane.estimate(tmp_path / "o" / "fraction-0.5", estimators=[infoplane.Discrete()],
                               out=tmp_path / "again")
    np.testing.assert_allclose(again.get("ity", "discrete"), ity, rtol=0, atol=1e-12)


def test_resume_checks_every_seeds_draw(tmp_path):
    out = tmp_path / "o"
    _track(out, seeds=2, seed=0, label_noise=0.4, schedule=[0, 1, 2, 3])
    run_dir = out / "fraction-0.5"
    # Other corruption settings are refused before anything trains, naming the setting.
    with pytest.raises(ConfigError, match="corruption"):
        _track(out, seeds=2, seed=0, label_noise=0.3, resume=True, schedule=[0, 1, 2, 3])
    # The same draws continue: trained on to 3 epochs, every seed is where a straight 3-epoch run puts it.
    longer = _track(out, seeds=2, seed=0, label_noise=0.4, resume=True, epochs=3, schedule=[0, 1, 2, 3])
    straight = _track(tmp_path / "straight", seeds=2, seed=0, label_noise=0.4, epochs=3, schedule=[0, 1, 2, 3])
    assert longer.epochs.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(longer.get("ity"), straight.get("ity"))
    np.testing.assert_array_equal(longer.metric("train_acc_clean"), straight.metric("train_acc_clean"))
    # The second seed's draw changed on disk (its meta.json entry kept): resuming, here to more epochs, refuses it.
    stored = read_corruption(run_dir)
    stored["labels"][1, 0] = 1 - stored["labels"][1, 0]
    np.savez(run_dir / CORRUPTION, **stored)
    with pytest.raises(ValueError, match="other draws of the corrupted data"):
        _track(out, seeds=2, seed=0, label_noise=0.4, resume=True, epochs=4, schedule=[0, 1, 2, 3, 4])


def test_a_run_of_an_earlier_release_with_one_shared_draw_reads_per_seed(tmp_path):
    x, y = _data()
    run = _track(tmp_path / "o", seeds=3, seed=0, label_noise=0.5)
    run_dir = tmp_path / "o" / "fraction-0.5"
    old = corrupt(x, y, label_noise=0.5, seed=0)  # what earlier releases stored: one draw for every seed
    np.savez(run_dir / CORRUPTION, corrupted=old.corrupted, labels=old.y, clean_labels=old.clean_labels)
    got = infoplane.load_run(run_dir).corruption
    assert got["seeds"].tolist() == run.seeds == [0, 1, 2]
    assert got["corrupted"].shape == got["labels"].shape == (3, len(y))
    for i in range(3):
        np.testing.assert_array_equal(got["labels"][i], old.y)
        np.testing.assert_array_equal(got["corrupted"][i], old.corrupted)
    np.testing.assert_array_equal(got["clean_labels"], y)
    with pytest.raises(ValueError, match="one draw shared by every seed"):
        read_corruption(run_dir)
    # Its meta.json says the same (no "draw"): it is not continued on per-seed draws.
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["corruption"] = {**{k: v for k, v in old.settings.items()}, "sha1": "0" * 40}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="one corrupted draw shared by every seed"):
        _track(tmp_path / "o", seeds=3, seed=0, label_noise=0.5, resume=True, epochs=3)


def test_per_seed_probe_sets_are_checked(tmp_path):
    nets = [torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()) for _ in range(2)]
    x = torch.randn(10, 3)
    y = torch.arange(10) % 2
    with pytest.raises(ValueError, match="one probe set per model"):
        infoplane.Tracker(nets, x, [y, y], per_seed=True)
    with pytest.raises(ValueError, match="differ in size"):
        infoplane.Tracker(nets, [x, x[:8]], [y, y[:8]], per_seed=True)
    with infoplane.Tracker(nets, [x, x], [y, 1 - y], per_seed=True, schedule=[0]) as t:
        t.step(0)
    assert t.run.meta["h_y_seeds"] == [1.0, 1.0] and t.run.meta["probe"]["per_seed"] is True

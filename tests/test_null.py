"""Permutation null of I(T;Y): batched with the real estimate, equal to separate calls, and meaningful."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

import infoplane
from infoplane import Tracker
from infoplane.estimators import KDE, Binning, Noisy, WithNull, from_settings, permutation_null
from infoplane.estimators.null import permutations_of


def _plugin_ity(acts, labels, edges):
    """Plug-in I(T;Y) in bits of a binned layer, from sklearn (oracle)."""
    codes = np.unique(np.digitize(acts, edges), axis=0, return_inverse=True)[1].ravel()
    return mutual_info_score(codes, labels) / math.log(2)


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_equals_separate_calls(seed):
    g = torch.Generator().manual_seed(seed)
    acts = torch.tanh(torch.randn(3, 200, 2, generator=g))
    labels = torch.randint(0, 2, (200,), generator=g)
    est = Binning(bins=8, range=(-1, 1))
    res = permutation_null(est, acts, labels, permutations=6, seed=seed)
    perms = permutations_of(200, 6, seed)
    for b in range(3):
        real = float(est(acts[b], labels).ity)
        assert float(res.ity[b]) == real and float(res.ixt[b]) == float(est(acts[b], labels).ixt)
        null = [float(est(acts[b], labels[p]).ity) for p in perms]
        assert float(res.ity_null[b]) == pytest.approx(np.mean(null), abs=1e-12)
        assert float(res.ity_null_sd[b]) == pytest.approx(np.std(null, ddof=1), abs=1e-12)
        # ... and the binned values themselves against sklearn's plug-in MI
        edges = np.linspace(-1, 1, 8)[1:-1]
        assert real == pytest.approx(_plugin_ity(acts[b].numpy(), labels.numpy(), edges), abs=1e-9)
    # Chunked calls (a tiny memory budget) give the same numbers.
    small = permutation_null(est, acts, labels, permutations=6, seed=seed, memory_budget=1)
    assert torch.equal(small.ity_null, res.ity_null) and torch.equal(small.ity, res.ity)


def test_noisy_and_kde_batched_equal_separate_calls():
    g = torch.Generator().manual_seed(4)
    acts = torch.randn(60, 2, generator=g, dtype=torch.float64)
    labels = torch.arange(60) % 3
    perms = permutations_of(60, 4, 9)
    for est in (Noisy(noise_var=0.1, samples=200), KDE(noise_var=0.1, precision="float64")):
        res = WithNull(est, permutations=4, seed=9)(acts, labels)
        null = [float(est(acts, labels[p]).ity) for p in perms]
        assert float(res.ity) == pytest.approx(float(est(acts, labels).ity), abs=1e-10)
        assert float(res.ity_null) == pytest.approx(np.mean(null), abs=1e-10)
        assert float(res.ity_null_sd) == pytest.approx(np.std(null, ddof=1), abs=1e-10)
    assert hasattr(WithNull(KDE())(acts, labels), "ity_lower")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_independent_labels_lie_within_the_null(seed):
    g = torch.Generator().manual_seed(seed)
    acts = torch.tanh(torch.randn(400, 3, generator=g))
    labels = torch.randint(0, 2, (400,), generator=g)  # independent of the layer
    res = permutation_null(Binning(bins=10, range=(-1, 1)), acts, labels, permutations=30, seed=seed)
    assert float(res.ity_null) > 0.05  # the plug-in bias the null exposes
    assert abs(float(res.ity - res.ity_null)) < 4 * float(res.ity_null_sd)


@pytest.mark.parametrize("seed", [0, 1])
def test_dependent_labels_lie_far_above_the_null(seed):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(400, 2, generator=g)
    labels = (acts[:, 0] > 0).long()  # a function of the layer
    for est in (Binning(bins=10, range=(-1, 1)), Noisy(noise_var=0.05, samples=300)):
        res = WithNull(est, permutations=10, seed=seed)(acts, labels)
        assert float(res.ity - res.ity_null) > 10 * float(res.ity_null_sd)


def test_custom_estimator_and_settings():
    class Custom:
        name, has_lower = "custom", False

        def settings(self):
            return {"kind": "custom"}

        def __call__(self, acts, labels):
            a = torch.as_tensor(acts)
            y = torch.as_tensor(labels).to(a.dtype)
            val = (a[..., 0] * (y - y.mean(-1, keepdim=True))).mean(-1).abs()
            return type("R", (), {"ixt": val * 0, "ity": val})()

    acts = torch.randn(2, 50, 1)
    res = WithNull(Custom(), permutations=5)(acts, torch.arange(50) % 2)
    assert res.ity.shape == (2,) and res.ity_null.shape == (2,)
    w = WithNull(Noisy(noise_var=0.1), permutations=7, seed=3)
    assert w.name == "noisy" and w.kind == "with-null"
    assert w.fields == ("ixt", "ity", "ixt_se", "ity_se", "ity_null", "ity_null_sd")
    assert from_settings(w.settings()) == w
    assert infoplane.WithNull is WithNull
    with pytest.raises(ValueError, match="permutations"):
        WithNull(Binning(bins=30, range=(-1, 1)), permutations=1)
    with pytest.raises(TypeError, match="estimator"):
        WithNull(object())


def test_tracker_stores_null_and_standard_errors(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x, y = torch.randn(80, 3), torch.arange(80) % 2
    ests = [WithNull(Noisy(noise_var=0.1, samples=100), permutations=3), Binning(bins=30, range=(-1, 1))]
    with Tracker(model, x, y, estimators=ests, schedule=[0, 1], out=tmp_path / "run") as tr:
        tr.step(0)
        tr.step(1)
    run = infoplane.load_run(tmp_path / "run")
    for field in ("ixt_se", "ity_se", "ity_null", "ity_null_sd"):
        assert np.isfinite(run.get(field, estimator="noisy")).all()
        assert np.isnan(run.get(field, estimator="binning")).all()  # not produced: empty cells
    header = (tmp_path / "run" / "infoplane.csv").read_text().splitlines()[0]
    assert header.endswith("ixt_se,ity_se,ity_null,ity_null_sd,target")


def test_with_null_takes_memory_budget():
    acts, labels = torch.rand(3, 30, 2), torch.arange(30) % 2
    est = WithNull(Binning(), permutations=3, memory_budget=1)
    want = permutation_null(Binning(), acts, labels, permutations=3, memory_budget=1)
    got = est(acts, labels)
    assert torch.equal(got.ity_null, want.ity_null) and torch.equal(got.ity_null_sd, want.ity_null_sd)
    assert est.settings()["memory_budget"] == 1 and from_settings(est.settings()) == est
    assert "memory_budget" not in WithNull(Binning()).settings()
    for kw, match in [(dict(permutations=True), "permutations must be an integer >= 2"),
                      (dict(memory_budget=0), "memory_budget must be a positive finite number")]:
        with pytest.raises(ValueError, match=match):
            permutation_null(Binning(), acts, labels, **kw)
        with pytest.raises(ValueError, match=match):
            WithNull(Binning(), **kw)

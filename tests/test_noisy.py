"""noisy_mi: Monte-Carlo mixture entropy of a noisy layer, checked against independent oracles computed here."""
import math

import numpy as np
import pytest
import torch

import infoplane
from infoplane.estimators import Noisy, from_settings, kde_mi, noisy_mi

LN2 = math.log(2)


def _quadrature_1d(centres, labels, s2):
    """I(X;T') and I(T';Y) in bits of a 1-D Gaussian mixture by numerical integration on a fine grid."""
    c = np.asarray(centres, dtype=np.float64).ravel()
    s = math.sqrt(s2)
    grid = np.linspace(c.min() - 12 * s, c.max() + 12 * s, 40001)
    dens = np.exp(-(grid[:, None] - c[None, :]) ** 2 / (2 * s2)) / math.sqrt(2 * math.pi * s2)

    def entropy(p):
        integrand = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1)), 0.0)
        return np.trapezoid(integrand, grid)

    h = entropy(dens.mean(axis=1))
    ixt = h - 0.5 * math.log(2 * math.pi * math.e * s2)
    h_cond = sum((labels == k).mean() * entropy(dens[:, labels == k].mean(axis=1)) for k in np.unique(labels))
    return ixt / LN2, (h - h_cond) / LN2


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("control", [True, False])
def test_matches_quadrature_in_one_dimension(seed, control):
    rng = np.random.default_rng(seed)
    c = np.concatenate([rng.normal(-1, 0.6, 150), rng.normal(1, 0.6, 150)])[:, None]
    y = np.repeat([0, 1], 150)
    s2 = 0.05
    ixt_true, ity_true = _quadrature_1d(c, y, s2)
    r = noisy_mi(c, y, noise_var=s2, samples=2048, seed=seed, control_variate=control)
    assert abs(float(r.ixt) - ixt_true) <= 4 * float(r.ixt_se) + 1e-3
    assert abs(float(r.ity) - ity_true) <= 4 * float(r.ity_se) + 1e-3


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("s2", [0.01, 0.1, 1.0])
def test_between_kde_bounds(seed, s2):
    g = torch.Generator().manual_seed(seed)
    acts = torch.tanh(2 * torch.randn(3, 120, 3, generator=g, dtype=torch.float64))  # a batch of 3 layers
    labels = torch.randint(0, 3, (120,), generator=g)
    k = kde_mi(acts, labels, noise_var=s2, precision="float64")
    for control in (True, False):
        r = noisy_mi(acts, labels, noise_var=s2, samples=1024, seed=seed, control_variate=control)
        assert r.ixt.shape == (3,)
        assert torch.all(r.ixt >= k.ixt_lower - 4 * r.ixt_se)
        assert torch.all(r.ixt <= k.ixt + 4 * r.ixt_se)


def test_one_centre_gives_zero():
    acts = torch.full((64, 3), 0.37, dtype=torch.float64)
    r = noisy_mi(acts, torch.arange(64) % 2, noise_var=0.01, samples=256)
    assert abs(float(r.ixt)) < 1e-9 and abs(float(r.ity)) < 1e-9


@pytest.mark.parametrize("classes", [2, 3])
def test_far_apart_centres_give_log2_n_and_h_y(classes):
    acts = torch.arange(50.0, dtype=torch.float64)[:, None] * 100
    labels = torch.arange(50) % classes  # 25/25, or 17/17/16
    r = noisy_mi(acts, labels, noise_var=1e-2, samples=512)
    p = np.bincount(labels.numpy()) / 50
    assert float(r.ixt) == pytest.approx(math.log2(50), abs=1e-9)
    # Every draw gives log(N / N_y); the control variate removes the class-frequency noise entirely.
    assert float(r.ity) == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-9)
    assert float(r.ixt_se) < 1e-9 and float(r.ity_se) < 1e-9


@pytest.mark.parametrize("d,s2", [(1, 0.01), (2, 0.05)])
def test_gaussian_limit_closed_form(d, s2):
    # Centres from N(0, I_d): the mixture tends to N(0, (1 + s2) I), so I -> 1/2 log2 det(I + I / s2).
    closed = 0.5 * math.log2(np.linalg.det(np.eye(d) + np.eye(d) / s2))
    estimates = []
    for seed in range(3):
        g = torch.Generator().manual_seed(1000 + seed)
        centres = torch.randn(4096, d, generator=g, dtype=torch.float64)
        r = noisy_mi(centres, torch.arange(4096) % 2, noise_var=s2, samples=1024, seed=seed)
        assert float(r.ixt_se) < 0.004 * closed  # the control variate makes the Monte-Carlo error small
        # One set of 4096 centres departs from the Gaussian limit by about a percent (and below it on
        # average: entropy is concave); the average over centre sets is within 1%.
        assert abs(float(r.ixt) - closed) < 0.02 * closed
        estimates.append(float(r.ixt))
    assert abs(np.mean(estimates) - closed) < 0.01 * closed


def test_standard_error_shrinks_as_one_over_sqrt_samples():
    g = torch.Generator().manual_seed(5)
    acts = torch.randn(200, 2, generator=g, dtype=torch.float64)
    labels = torch.arange(200) % 2
    for control in (True, False):
        small = noisy_mi(acts, labels, noise_var=0.1, samples=1000, seed=1, control_variate=control)
        large = noisy_mi(acts, labels, noise_var=0.1, samples=16000, seed=1, control_variate=control)
        ratio = float(small.ixt_se / large.ixt_se)
        assert 3.0 < ratio < 5.4  # sqrt(16) = 4


def test_reproducible_and_batch_independent():
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(4, 80, 3, generator=g)
    labels = torch.randint(0, 2, (80,), generator=g)
    a = noisy_mi(acts, labels, noise_var=0.05, samples=300, seed=7)
    b = noisy_mi(acts, labels, noise_var=0.05, samples=300, seed=7)
    c = noisy_mi(acts, labels, noise_var=0.05, samples=300, seed=8)
    assert torch.equal(a.ixt, b.ixt) and torch.equal(a.ity_se, b.ity_se)
    assert not torch.equal(a.ixt, c.ixt)
    # Draws are shared across the batch: an item alone gives the same numbers as inside the batch.
    one = noisy_mi(acts[2].numpy(), labels.numpy(), noise_var=0.05, samples=300, seed=7, memory_budget=4096)
    assert float(one.ixt) == pytest.approx(float(a.ixt[2]), abs=1e-12)
    assert float(one.ity) == pytest.approx(float(a.ity[2]), abs=1e-12)
    # The global RNG is neither used nor moved.
    state = torch.get_rng_state()
    noisy_mi(acts, labels, noise_var=0.05, samples=100)
    assert torch.equal(state, torch.get_rng_state())


def test_float32_agrees_with_float64():
    g = torch.Generator().manual_seed(4)
    acts = torch.randn(2, 150, 4, generator=g)
    labels = torch.arange(150) % 3
    a = noisy_mi(acts, labels, noise_var=0.1, samples=500, precision="float64")
    b = noisy_mi(acts, labels, noise_var=0.1, samples=500, precision="float32")
    assert torch.allclose(a.ixt, b.ixt, atol=1e-3) and torch.allclose(a.ity, b.ity, atol=1e-3)


def test_clamped_to_range():
    g = torch.Generator().manual_seed(6)
    acts = torch.randn(100, 2, generator=g)
    labels = torch.randint(0, 2, (100,), generator=g)
    r = noisy_mi(acts, labels, noise_var=100.0, samples=200)  # huge noise: true values near 0
    assert float(r.ixt) >= 0 and float(r.ity) >= 0
    assert float(r.ixt) <= math.log2(100)


def test_config_object():
    est = Noisy(noise_var=0.1, samples=100, seed=3)
    assert est.name == "noisy" and est.kind == "noisy" and not est.has_lower
    assert est.fields == ("ixt", "ity", "ixt_se", "ity_se")
    assert from_settings(est.settings()) == est
    assert infoplane.Noisy is Noisy
    r = est(torch.rand(2, 40, 3), torch.arange(40) % 2)
    assert r.ixt.shape == (2,) and r.ixt_se.shape == (2,)


@pytest.mark.parametrize("kw,match", [(dict(noise_var=0), "noise_var"), (dict(noise_var=0.1, samples=1), "samples"),
                                      (dict(noise_var=0.1, seed=1.5), "seed"),
                                      (dict(noise_var=0.1, precision="half"), "precision")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        noisy_mi(torch.rand(10, 2), torch.arange(10) % 2, **kw)
    with pytest.raises(ValueError, match=match):
        Noisy(**kw)


def test_noisy_object_takes_control_variate():
    acts, labels = torch.rand(2, 50, 2), torch.arange(50) % 2
    est = Noisy(0.05, samples=100, control_variate=False)
    want = noisy_mi(acts, labels, noise_var=0.05, samples=100, control_variate=False)
    got = est(acts, labels)
    assert torch.equal(got.ixt, want.ixt) and torch.equal(got.ity_se, want.ity_se)
    assert est.settings()["control_variate"] is False and from_settings(est.settings()) == est
    assert "control_variate" not in Noisy(0.05).settings()  # the default is not written: older runs read back
    with pytest.raises(ValueError, match="control_variate must be True or False"):
        Noisy(0.05, control_variate=1)


def test_noise_var_by_position_is_deprecated():
    acts, labels = torch.rand(40, 2), torch.arange(40) % 2
    with pytest.warns(DeprecationWarning, match="noise_var"):
        old = noisy_mi(acts, labels, 0.05, samples=64)
    new = noisy_mi(acts, labels, noise_var=0.05, samples=64)
    assert torch.equal(old.ixt, new.ixt) and torch.equal(old.ity, new.ity)

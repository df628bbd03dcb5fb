"""kde_mi against closed forms, a float64 numpy evaluation of the same formula, and a Monte-Carlo truth."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from infoplane.estimators import KDE, kde_mi

LN2 = math.log(2)


def pairwise_estimate(h, labels, s2, divisor):
    """Reference in float64 numpy (nats): -(1/N) sum_i log (1/N) sum_j exp(-D_ij / (divisor s2)), all and per class."""
    def one(x):
        d = cdist(x, x, "sqeuclidean")
        return -np.mean(logsumexp(-d / (divisor * s2), axis=1) - np.log(len(x)))
    ixt = one(h)
    cond = sum((labels == c).mean() * one(h[labels == c]) for c in np.unique(labels))
    return ixt, ixt - cond


def mc_truth(h, s2, rng, m=20000):
    """Monte-Carlo I(X; h(X) + N(0, s2 I)) in nats with its standard error, from the definition."""
    n, d = h.shape
    idx = rng.integers(0, n, size=m)
    t = h[idx] + rng.normal(scale=math.sqrt(s2), size=(m, d))
    logk = -cdist(t, h, "sqeuclidean") / (2 * s2)
    terms = logk[np.arange(m), idx] - (logsumexp(logk, axis=1) - math.log(n))
    return terms.mean(), terms.std(ddof=1) / math.sqrt(m)


@pytest.mark.parametrize("seed,n,d,s2", [(0, 20, 1, 0.3), (1, 30, 2, 0.5), (2, 16, 3, 1.0), (3, 40, 2, 0.05),
                                         (4, 12, 5, 2.0)])
def test_bounds_bracket_monte_carlo_truth(seed, n, d, s2):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d))
    labels = rng.integers(0, 2, size=n)
    k = kde_mi(h, labels, noise_var=s2, precision="float64")
    truth, se = mc_truth(h, s2, rng)
    lower, upper = float(k.ixt_lower) * LN2, float(k.ixt) * LN2
    assert lower - 4 * se <= truth <= upper + 4 * se
    assert lower < upper


def test_two_point_hand_check():
    # Points 1.5 apart in 1-D with s = 1: closed forms of both bounds, and the documented values.
    h = np.array([[0.0], [1.5]])
    k = kde_mi(h, np.array([0, 1]), noise_var=1.0, precision="float64")
    upper = math.log(2) - math.log1p(math.exp(-1.5**2 / 2))
    lower = math.log(2) - math.log1p(math.exp(-1.5**2 / 8))
    assert float(k.ixt) * LN2 == pytest.approx(upper, abs=1e-12)
    assert float(k.ixt_lower) * LN2 == pytest.approx(lower, abs=1e-12)
    assert upper == pytest.approx(0.4120, abs=1e-4) and lower == pytest.approx(0.1308, abs=1e-4)
    # truth by quadrature, computed here: I = H(mixture) - H(N(0, 1))
    from scipy.integrate import quad
    from scipy.stats import norm
    p = lambda t: 0.5 * (norm.pdf(t) + norm.pdf(t - 1.5))
    h_mix = quad(lambda t: -p(t) * math.log(p(t)), -12, 13.5, limit=200)[0]
    truth = h_mix - 0.5 * math.log(2 * math.pi * math.e)
    assert truth == pytest.approx(0.22117, abs=1e-4)
    assert lower < truth < upper


def test_far_apart_points_give_log2_n_and_huge_noise_gives_zero():
    n = 50
    h = np.arange(n, dtype=np.float64)[:, None] * 10.0
    labels = np.arange(n) % 2
    far = kde_mi(h, labels, noise_var=1e-3)
    for v in (far.ixt, far.ixt_lower):
        assert float(v) == pytest.approx(math.log2(n), abs=1e-9)
    assert float(far.ity) == pytest.approx(1.0, abs=1e-9)  # balanced binary labels, every point identified
    flat = kde_mi(h / 1e6, labels, noise_var=1e6, precision="float64")
    for v in (flat.ixt, flat.ixt_lower, flat.ity, flat.ity_lower):
        assert abs(float(v)) < 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float64_matches_numpy_formula(seed):
    rng = np.random.default_rng(seed)
    h = np.tanh(rng.normal(scale=1.5, size=(2, 300, 6)))
    labels = rng.integers(0, 3, size=300)
    s2 = [1e-3, 0.05, 0.5][seed]
    k = kde_mi(h, labels, noise_var=s2, precision="float64")
    for b in range(2):
        up = pairwise_estimate(h[b], labels, s2, 2.0)
        lo = pairwise_estimate(h[b], labels, s2, 8.0)
        assert float(k.ixt[b]) == pytest.approx(up[0] / LN2, abs=1e-9)
        assert float(k.ity[b]) == pytest.approx(up[1] / LN2, abs=1e-9)
        assert float(k.ixt_lower[b]) == pytest.approx(lo[0] / LN2, abs=1e-9)
        assert float(k.ity_lower[b]) == pytest.approx(lo[1] / LN2, abs=1e-9)


@pytest.mark.parametrize("s2", [1e-3, 1e-1])
def test_float32_default_within_1e4_bits_of_float64(s2):
    rng = np.random.default_rng(4)
    h = torch.tanh(torch.from_numpy(rng.normal(scale=2.0, size=(3, 1500, 10))).float())
    labels = torch.from_numpy(rng.integers(0, 2, size=1500))
    a = kde_mi(h, labels, noise_var=s2)
    b = kde_mi(h.double(), labels, noise_var=s2, precision="float64")
    for f in ("ixt", "ity", "ixt_lower", "ity_lower"):
        assert torch.max(torch.abs(getattr(a, f) - getattr(b, f))) < 1e-4


def test_blocks_do_not_change_the_result():
    rng = np.random.default_rng(5)
    h = rng.normal(size=(257, 4))
    labels = rng.integers(0, 3, size=257)
    whole = kde_mi(h, labels, noise_var=0.2, precision="float64")
    blocked = kde_mi(h, labels, noise_var=0.2, precision="float64", memory_budget=16 * 257 * 8)  # 16 rows a block
    for f in ("ixt", "ity", "ixt_lower", "ity_lower"):
        assert float(getattr(whole, f)) == pytest.approx(float(getattr(blocked, f)), abs=1e-12)


def test_batched_equals_per_item_and_permutations_change_nothing():
    rng = np.random.default_rng(6)
    h = torch.from_numpy(rng.normal(size=(2, 3, 120, 4)))
    labels = torch.from_numpy(rng.integers(0, 2, size=120))
    whole = kde_mi(h, labels, noise_var=0.3, precision="float64")
    for idx in np.ndindex(2, 3):
        one = kde_mi(h[idx], labels, noise_var=0.3, precision="float64")
        assert float(one.ixt) == float(whole.ixt[idx]) and float(one.ity_lower) == float(whole.ity_lower[idx])
    perm, units = torch.from_numpy(rng.permutation(120)), torch.from_numpy(rng.permutation(4))
    p = kde_mi(h[0, 0][perm][:, units], labels[perm], noise_var=0.3, precision="float64")
    assert float(p.ixt) == pytest.approx(float(whole.ixt[0, 0]), abs=1e-12)
    assert float(p.ity) == pytest.approx(float(whole.ity[0, 0]), abs=1e-12)


def test_ixt_within_bounds_and_config_object():
    rng = np.random.default_rng(7)
    h = rng.normal(size=(4, 80, 3))
    labels = rng.integers(0, 2, size=80)
    k = KDE(noise_var=0.05)(h, labels)
    assert torch.all(k.ixt_lower <= k.ixt + 1e-9)
    assert torch.all((k.ixt >= -1e-9) & (k.ixt <= math.log2(80) + 1e-9))
    assert k.ixt.shape == (4,) and k.ixt.dtype == torch.float64


@pytest.mark.parametrize("n,budget", [(20_000, 512 * 2**20), (20_000, 2**20), (4096, 10**9), (10, 1)])
def test_pairwise_blocks_stay_within_the_memory_budget(n, budget):
    from infoplane.estimators.kde import _block_rows

    rows = _block_rows(n, 4, budget)
    assert 1 <= rows <= n
    assert rows == 1 or 2 * rows * n * 4 <= budget  # two [rows, N] float32 buffers, never the N x N matrix
    assert rows * n < n * n or n <= 256


def test_reduced_precision_matmul_setting_is_restored_and_ignored():
    rng = np.random.default_rng(8)
    h = torch.from_numpy(np.tanh(rng.normal(size=(200, 6)))).float()
    labels = torch.from_numpy(rng.integers(0, 2, size=200))
    ref = kde_mi(h, labels, noise_var=1e-3)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        got = kde_mi(h, labels, noise_var=1e-3)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert float(got.ixt) == float(ref.ixt) and float(got.ity_lower) == float(ref.ity_lower)


@pytest.mark.parametrize("kw,match", [(dict(noise_var=True), "noise_var must be a positive finite number; got True"),
                                      (dict(precision="half"), r"precision must be one of \['float32', 'float64'\]"),
                                      (dict(memory_budget=-1), "memory_budget must be a positive finite number")])
def test_bad_options_named_the_same_way_by_function_and_object(kw, match):
    with pytest.raises(ValueError, match=match):
        kde_mi(torch.rand(10, 2), torch.arange(10) % 2, **kw)
    with pytest.raises(ValueError, match=match):
        KDE(**kw)

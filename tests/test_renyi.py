"""Matrix-based Rényi entropy and MI against a plain numpy eigvalsh evaluation and exact cases."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from infoplane.estimators import Renyi, from_settings, renyi_entropy, renyi_mi


# ------------------------------------------------------------------ plain numpy reference (bits)
def np_entropy(k, alpha):
    a = k / np.trace(k)
    lam = np.clip(np.linalg.eigvalsh(a), 0, None)
    return math.log2((lam**alpha).sum()) / (1 - alpha)


def np_gram(x, sigma):
    return np.exp(-cdist(x, x, "sqeuclidean") / (2 * sigma**2))


def np_silverman(x):
    n, d = x.shape
    s = math.sqrt(x.var(axis=0, ddof=1).sum())
    return s * (4 / (d + 2)) ** (1 / (d + 4)) * n ** (-1 / (d + 4))


# ------------------------------------------------------------------ agreement with numpy
@pytest.mark.parametrize("seed,alpha", [(0, 1.01), (1, 1.5), (2, 3.0), (3, 2.0), (4, 0.7)])
def test_equals_numpy_eigvalsh(seed, alpha):
    rng = np.random.default_rng(seed)
    x = np.tanh(rng.normal(size=(150, 3)) * 2)
    y = rng.integers(0, 3, size=150)
    kx = np_gram(x, np_silverman(x))
    assert float(renyi_entropy(x, alpha=alpha)) == pytest.approx(np_entropy(kx, alpha), abs=1e-6)
    assert float(renyi_entropy(x, alpha=alpha, sigma=0.4)) == pytest.approx(np_entropy(np_gram(x, 0.4), alpha), abs=1e-6)
    ky = (y[:, None] == y[None, :]).astype(float)
    r = renyi_mi(x, y, alpha=alpha)
    s_y = np_entropy(ky, alpha) if alpha >= 1 else None  # eigvalsh's +-1e-17 zeros break x^alpha, alpha < 1
    if s_y is not None:
        assert float(r.s_b) == pytest.approx(s_y, abs=1e-6)
        assert float(r.mi) == pytest.approx(np_entropy(kx, alpha) + s_y - np_entropy(kx * ky, alpha), abs=1e-6)
    # two Gaussian kernels: the joint is their Hadamard product
    z = x[:, :1] + 0.3 * rng.normal(size=(150, 1))
    kz = np_gram(z, np_silverman(z))
    r = renyi_mi(x, z, alpha=alpha)
    want = np_entropy(kx, alpha) + np_entropy(kz, alpha) - np_entropy(kx * kz, alpha)
    assert float(r.mi) == pytest.approx(want, abs=1e-6)
    assert float(r.s_ab) == pytest.approx(np_entropy(kx * kz, alpha), abs=1e-6)


def test_alpha_two_frobenius_equals_eigen_route():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(300, 4))
    a = np_gram(x, 1.3) / 300
    eig = np_entropy(a * 300, 2.0)
    frob = -math.log2((a * a).sum())
    assert frob == pytest.approx(eig, abs=1e-9)
    assert float(renyi_entropy(x, alpha=2.0, sigma=1.3)) == pytest.approx(eig, abs=1e-9)


# ------------------------------------------------------------------ exact cases
def test_identity_and_all_ones():
    n = 64
    far = np.arange(n, dtype=float)[:, None] * 100.0  # K = I up to exp(-5000)
    for alpha in (0.5, 1.01, 2.0, 4.0):
        assert float(renyi_entropy(far, alpha=alpha, sigma=1.0)) == pytest.approx(math.log2(n), abs=1e-9)
        assert float(renyi_entropy(np.ones((n, 3)), alpha=alpha)) == pytest.approx(0.0, abs=1e-9)  # K = all ones
    assert float(renyi_entropy(far, alpha=1.0, sigma=1.0)) == pytest.approx(math.log2(n), abs=1e-9)


@pytest.mark.parametrize("alpha", [1.01, 2.0, 3.0])
def test_delta_kernel_gives_renyi_entropy_of_class_frequencies(alpha):
    rng = np.random.default_rng(4)
    y = rng.choice(5, size=400, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    p = np.bincount(y) / len(y)
    want = math.log2((p**alpha).sum()) / (1 - alpha)
    assert float(renyi_entropy(y, alpha=alpha)) == pytest.approx(want, abs=1e-12)
    ky = (y[:, None] == y[None, :]).astype(float)
    assert want == pytest.approx(np_entropy(ky, alpha), abs=1e-6)


def test_ranges_batches_and_no_self_information_identity():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 200, 2))
    y = rng.integers(0, 2, size=200)
    r = renyi_mi(x, y)
    assert r.mi.shape == (3,)
    for i in range(3):
        single = renyi_mi(x[i], y)
        assert float(r.mi[i]) == pytest.approx(float(single.mi), abs=1e-12)
        assert 0 <= float(r.mi[i]) <= min(float(r.s_a[i]), float(r.s_b[i]))
    # I(A;A) with Gaussian kernels is S(A) + S(A) - S(K*K): K*K has width sigma/sqrt(2), so it is not S(A)
    s = float(renyi_entropy(x[0], sigma=0.5))
    same = renyi_mi(x[0], x[0], sigma_a=0.5, sigma_b=0.5)
    assert float(same.s_ab) == pytest.approx(float(renyi_entropy(x[0], sigma=0.5 / math.sqrt(2))), abs=1e-9)
    assert float(same.s_a) == pytest.approx(s, abs=1e-12)


# ------------------------------------------------------------------ randomized route
def test_randomized_within_stated_error_at_4096():
    # 16 far-apart clusters of 256 points: the Gram is exactly block diagonal (cross terms underflow to 0), so
    # numpy gets the exact spectrum block by block; the randomized route sees one N = 4096 matrix.
    rng = np.random.default_rng(1)
    blocks = [rng.normal(size=(256, 3)) + 1e3 * c for c in range(16)]
    x = np.concatenate(blocks)
    lam = np.concatenate([np.linalg.eigvalsh(np_gram(b, 0.5)) for b in blocks]) / 4096
    lam = np.clip(lam, 0, None)
    alpha = 1.01
    exact = math.log2((lam**alpha).sum()) / (1 - alpha)
    got = float(renyi_entropy(x, alpha=alpha, sigma=0.5, method="randomized"))
    assert abs(got - exact) < 0.05  # stated error: 0.05 bits at N = 4096 with the defaults


def test_randomized_close_to_exact_on_smooth_data():
    rng = np.random.default_rng(3)
    x = np.tanh(rng.normal(size=(768, 6)) * 2)
    exact = float(renyi_entropy(x, alpha=1.01, method="exact"))
    got = float(renyi_entropy(x, alpha=1.01, method="randomized"))
    assert abs(got - exact) < 0.05


# ------------------------------------------------------------------ config object
def test_config_object():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 5))
    acts = np.tanh(np.stack([x[:, :3], 2 * x[:, :3]]))
    y = (x[:, 0] > 0).astype(int)
    r = Renyi(inputs=x)(acts, y)
    assert r.ixt.shape == (2,)
    assert float(r.ixt[1]) == pytest.approx(float(renyi_mi(x, acts[1]).mi), abs=1e-12)
    assert float(r.ity[0]) == pytest.approx(float(renyi_mi(acts[0], y).mi), abs=1e-12)
    ident = Renyi(ixt_from="identity", sigma=0.7)
    assert not ident.needs_inputs
    r2 = ident(acts, y)
    assert float(r2.ixt[0]) == pytest.approx(float(renyi_entropy(acts[0], sigma=0.7)), abs=1e-12)
    for est in (Renyi(alpha=2, method="exact"), ident):
        assert from_settings(est.settings()) == est
    with pytest.raises(ValueError, match="inputs"):
        Renyi()(acts, y)
    with pytest.raises(ValueError, match="sigma"):
        Renyi(sigma="scott")
    with pytest.raises(ValueError, match="whole numbers"):
        renyi_entropy(np.array([0.5, 1.0, 2.0]))
    assert torch.is_tensor(r.ity)


def test_renyi_object_takes_memory_budget():
    est = Renyi(ixt_from="identity", method="randomized", probes=4, steps=6, memory_budget=1)
    assert est.settings()["memory_budget"] == 1 and from_settings(est.settings()) == est
    assert "memory_budget" not in Renyi().settings()
    acts, y = torch.rand(2, 30, 2), torch.arange(30) % 2
    # the budget only decides whether the Gram matrix is kept or rebuilt: the same numbers either way
    kept = Renyi(ixt_from="identity", method="randomized", probes=4, steps=6)(acts, y)
    assert torch.allclose(est(acts, y).ixt, kept.ixt, atol=1e-9)


def test_alpha_by_position_is_deprecated():
    x, y = torch.rand(25, 2), torch.arange(25) % 2
    with pytest.warns(DeprecationWarning, match="alpha"):
        old = renyi_mi(x, y, 2.0)
    assert torch.equal(old.mi, renyi_mi(x, y, alpha=2.0).mi)
    with pytest.warns(DeprecationWarning, match="alpha"):
        old = renyi_entropy(x, 1.5)
    assert torch.equal(old, renyi_entropy(x, alpha=1.5))

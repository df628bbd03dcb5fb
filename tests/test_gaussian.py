"""gaussian_mi against closed forms and against a plain numpy computation inside the test."""
import math

import numpy as np
import pytest
import torch

from infoplane.estimators import GaussianResult, gaussian_mi


def numpy_gaussian_mi(a, b):
    """1/2 log2(det Caa det Cbb / det C) with numpy's covariance and determinants."""
    c = np.cov(np.concatenate([a, b], axis=1), rowvar=False)
    da = a.shape[1]
    return 0.5 * math.log2(np.linalg.det(c[:da, :da]) * np.linalg.det(c[da:, da:]) / np.linalg.det(c))


def test_equals_numpy_on_a_batch_with_shared_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 3))
    w = rng.standard_normal((4, 3, 2))
    t = np.einsum("nd,bdk->bnk", x, w) + 0.5 * rng.standard_normal((4, 500, 2))
    r = gaussian_mi(torch.from_numpy(x), torch.from_numpy(t))
    assert isinstance(r, GaussianResult) and r.mi.shape == (4,) and r.mi.dtype == torch.float64
    expected = [numpy_gaussian_mi(x, t[i]) for i in range(4)]
    np.testing.assert_allclose(r.mi.numpy(), expected, rtol=1e-10)


def test_a_linear_gaussian_channel_matches_its_closed_form():
    # T = W X + noise, X ~ N(0, I): I(X;T) = 1/2 log2 det(I + W W^T / s2)
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -0.5]], dtype=torch.float64)
    s2 = 0.25
    x = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    t = x @ w.T + math.sqrt(s2) * torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    exact = 0.5 * math.log2(float(torch.linalg.det(torch.eye(2, dtype=torch.float64) + w @ w.T / s2)))
    assert float(gaussian_mi(x, t).mi) == pytest.approx(exact, abs=0.01)


def test_correlated_pair_and_independence():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(100_000, 1, generator=g, dtype=torch.float64)
    rho = 0.9
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(100_000, 1, generator=g, dtype=torch.float64)
    assert float(gaussian_mi(x, y).mi) == pytest.approx(-0.5 * math.log2(1 - rho**2), abs=0.01)
    z = torch.randn(100_000, 2, generator=g, dtype=torch.float64)
    assert 0.0 <= float(gaussian_mi(x, z).mi) < 1e-3


@pytest.mark.parametrize("seed", range(40))
def test_a_deterministic_relation_is_refused_with_the_reason(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match="singular.*infinite.*add_noise"):
        gaussian_mi(x, x[:, :2] @ torch.ones(2, 2, dtype=torch.float64))  # two equal units: b is singular
    with pytest.raises(ValueError, match="a and b together"):
        gaussian_mi(x, x[:, :2] @ torch.randn(2, 2, generator=g, dtype=torch.float64))  # b a function of a
    with pytest.raises(ValueError, match="singular"):
        gaussian_mi(x, torch.ones(300, 1, dtype=torch.float64))  # a constant unit


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="more samples than dimensions"):
        gaussian_mi(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="paired sample by sample"):
        gaussian_mi(torch.randn(50, 2), torch.randn(40, 2))
    with pytest.raises(ValueError, match="batch dimensions"):
        gaussian_mi(torch.randn(2, 50, 2), torch.randn(3, 50, 2))

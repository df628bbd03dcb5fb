"""infoplane.data.corrupt: label noise and input corruptions, checked against their distributions."""
import json
import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from infoplane.data import Corruption, corrupt

N, K = 20000, 10
Z = 5.0  # bounds at 5 standard deviations: a false failure has probability below 1e-6 per check


def labels(n=N, k=K, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, k, n))


def inputs(n=N, d=6, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, d))).float()


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_redrawn_fraction_is_p_and_the_rest_is_untouched(p):
    x, y = inputs(), labels()
    out = corrupt(x, y, label_noise=p, seed=3)
    assert isinstance(out, Corruption)
    mask = out.corrupted
    assert mask.dtype == torch.bool and mask.shape == (N,)
    count = int(mask.sum())
    sd = math.sqrt(N * p * (1 - p))
    assert abs(count - N * p) <= Z * sd
    assert torch.equal(out.y[~mask], y[~mask])
    assert torch.equal(out.clean_labels, y)
    assert torch.equal(out.x, x) and out.x is not x
    assert out.settings["n_corrupted"] == count


def test_redrawn_labels_are_uniform_over_all_classes():
    y = labels(seed=1)
    out = corrupt(inputs(), y, label_noise=0.6, seed=5)
    new = out.y[out.corrupted].numpy()
    counts = np.bincount(new, minlength=K)
    expected = len(new) / K
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-6, K - 1)
    # A redrawn label may equal the clean one (probability 1/K), as in Zhang et al.
    same = float((out.y[out.corrupted] == y[out.corrupted]).float().mean())
    assert abs(same - 1 / K) <= Z * math.sqrt((1 / K) * (1 - 1 / K) / len(new))


def test_random_labels_redraw_all_and_n_classes_widens_the_draw():
    y = labels(k=3)
    out = corrupt(inputs(), y, random_labels=True, n_classes=5)
    assert bool(out.corrupted.all())
    assert out.settings["label_noise"] == 1.0 and out.settings["n_classes"] == 5
    assert sorted(torch.unique(out.y).tolist()) == [0, 1, 2, 3, 4]


def test_larger_noise_redraws_a_superset_for_the_same_seed():
    x, y = inputs(), labels()
    small = corrupt(x, y, label_noise=0.2, seed=7)
    large = corrupt(x, y, label_noise=0.5, seed=7)
    assert bool((large.corrupted | ~small.corrupted).all())
    assert torch.equal(large.y[small.corrupted], small.y[small.corrupted])


def test_label_draws_do_not_depend_on_the_input_options():
    x, y = inputs(), labels()
    plain = corrupt(x, y, label_noise=0.3, seed=2)
    for option in ("shuffled_pixels", "random_pixels", "gaussian_inputs"):
        other = corrupt(x, y, label_noise=0.3, seed=2, **{option: True})
        assert torch.equal(other.y, plain.y) and torch.equal(other.corrupted, plain.corrupted)


def test_shuffled_pixels_apply_one_permutation_to_every_row():
    rng = np.random.default_rng(0)
    x = np.sort(rng.random((500, 2, 4)).reshape(500, 8), axis=1).reshape(500, 2, 4)  # rows increasing
    out = corrupt(x, np.zeros(500, dtype=int), shuffled_pixels=True, seed=1)
    assert isinstance(out.x, np.ndarray) and out.x.shape == x.shape and out.x.dtype == x.dtype
    flat = out.x.reshape(500, 8)
    order = np.argsort(flat, axis=1)  # the inverse permutation, row by row
    assert (order == order[0]).all()
    assert not np.array_equal(order[0], np.arange(8))
    assert np.array_equal(np.sort(flat, axis=1), x.reshape(500, 8))


def test_random_pixels_permute_each_row_on_its_own():
    x = inputs(n=500, d=8, seed=4)
    out = corrupt(x, labels(n=500), random_pixels=True, seed=1)
    assert out.x.shape == x.shape and out.x.dtype == x.dtype
    assert torch.equal(torch.sort(out.x, dim=1).values, torch.sort(x, dim=1).values)
    # Recover each row's permutation sigma (out[i, j] = x[i, sigma[j]]): with 8! possible orders, nearly all
    # 500 rows have their own.
    xs, os_ = x.numpy(), out.x.numpy()
    sigmas = {np.argsort(xs[i])[np.searchsorted(np.sort(xs[i]), os_[i])].tobytes() for i in range(500)}
    assert len(sigmas) > 490


def test_integer_inputs_keep_their_dtype_under_permutations():
    x = torch.arange(40, dtype=torch.int16).reshape(5, 8)
    for option in ("shuffled_pixels", "random_pixels"):
        out = corrupt(x, [0, 1, 0, 1, 0], **{option: True})
        assert out.x.dtype == torch.int16
        assert torch.equal(torch.sort(out.x, dim=1).values, x)


def test_gaussian_inputs_match_the_data_mean_and_covariance():
    rng = np.random.default_rng(0)
    n, d = N, 4
    mixing = rng.normal(size=(d, d))
    data = rng.exponential(size=(n, d)) @ mixing + np.arange(d)
    x = np.concatenate([data, np.full((n, 1), 2.5)], axis=1)  # a constant feature: singular covariance
    out = corrupt(x, labels(n=n), gaussian_inputs=True, seed=3)
    assert out.x.dtype == np.float64 and out.x.shape == x.shape
    assert np.allclose(out.x[:, -1], 2.5)

    mean, cov = x.mean(0), np.cov(x, rowvar=False)
    diag = np.diag(cov)
    assert (np.abs(out.x.mean(0) - mean) <= Z * np.sqrt(diag / n) + 1e-12).all()
    # Sampling variance of a Gaussian sample covariance: (C_ij^2 + C_ii C_jj) / n.
    cov_sd = np.sqrt((cov ** 2 + np.outer(diag, diag)) / n)
    assert (np.abs(np.cov(out.x, rowvar=False) - cov) <= Z * cov_sd + 1e-12).all()
    assert stats.normaltest(out.x[:, 0]).pvalue > 1e-6  # Gaussian, although the data is skewed
    assert stats.normaltest(x[:, 0]).pvalue < 1e-6


def test_gaussian_inputs_keep_tensor_dtype_and_shape():
    x = inputs(n=300, d=6).reshape(300, 2, 3).to(torch.float64)
    out = corrupt(x, labels(n=300), gaussian_inputs=True)
    assert out.x.dtype == torch.float64 and out.x.shape == (300, 2, 3)


def test_label_forms_come_back_as_given():
    x = inputs(n=9)
    y32 = torch.tensor([0, 1, 2] * 3, dtype=torch.int32)
    out = corrupt(x, y32, label_noise=0.5)
    assert out.y.dtype == torch.int32 and out.clean_labels.dtype == torch.int32

    one_hot = torch.nn.functional.one_hot(y32.long(), 4).float()
    out = corrupt(x, one_hot, random_labels=True, seed=1)
    assert out.y.shape == (9, 4) and out.y.dtype == torch.float32
    assert torch.equal(out.y.sum(1), torch.ones(9)) and torch.equal(out.clean_labels, one_hot)

    rows = [[1, 0], [0, 1], [1, 0]]  # one-hot rows as a plain list
    out = corrupt(x[:3], rows, random_labels=True, seed=1)
    assert out.y.shape == (3, 2) and out.clean_labels.tolist() == rows and out.settings["n_classes"] == 2

    names = ["cat", "dog", "eel"] * 3
    out = corrupt(x, names, random_labels=True, seed=2)
    assert set(out.y.tolist()) <= set(names) and out.clean_labels.tolist() == names
    assert isinstance(out.corrupted, np.ndarray) and out.corrupted.dtype == bool


def test_determinism_and_settings():
    x, y = inputs(n=200), labels(n=200)
    a = corrupt(x, y, label_noise=0.4, random_pixels=True, seed=11)
    b = corrupt(x, y, label_noise=0.4, random_pixels=True, seed=11)
    c = corrupt(x, y, label_noise=0.4, random_pixels=True, seed=12)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.corrupted, b.corrupted)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.y, c.y)
    assert json.loads(json.dumps(a.settings)) == a.settings == {
        "label_noise": 0.4, "random_labels": False, "shuffled_pixels": False, "random_pixels": True,
        "gaussian_inputs": False, "n_classes": K, "seed": 11, "n_corrupted": int(a.corrupted.sum())}


def test_global_random_state_is_neither_used_nor_changed():
    x, y = inputs(n=100), labels(n=100)
    before = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    first = corrupt(x, y, label_noise=0.5, gaussian_inputs=True, seed=1)
    after = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    assert torch.equal(before[0], after[0]) and before[2] == after[2]
    assert np.array_equal(before[1][1], after[1][1]) and before[1][2:] == after[1][2:]
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    again = corrupt(x, y, label_noise=0.5, gaussian_inputs=True, seed=1)
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)


def test_errors():
    x, y = inputs(n=10), labels(n=10)
    for p in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"label_noise must be a probability in \[0, 1\]"):
            corrupt(x, y, label_noise=p)
    with pytest.raises(ValueError, match="random_pixels and gaussian_inputs conflict"):
        corrupt(x, y, random_pixels=True, gaussian_inputs=True)
    with pytest.raises(ValueError, match="shuffled_pixels and random_pixels conflict"):
        corrupt(x, y, shuffled_pixels=True, random_pixels=True)
    with pytest.raises(ValueError, match="conflicts with label_noise=0.3"):
        corrupt(x, y, random_labels=True, label_noise=0.3)
    with pytest.raises(TypeError, match="random_pixels must be True or False"):
        corrupt(x, y, random_pixels=1)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        corrupt(bad, y)
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        corrupt(np.array([[1.0, np.inf]]), [0])
    with pytest.raises(TypeError, match="x is complex"):
        corrupt(torch.ones(3, 2, dtype=torch.complex64), [0, 1, 0])
    with pytest.raises(ValueError, match="n_classes=3 is too small"):
        corrupt(x, torch.arange(10) % 5, n_classes=3)
    with pytest.raises(ValueError, match="gaussian_inputs needs floating-point inputs"):
        corrupt(torch.ones(4, 2, dtype=torch.int64), [0, 1, 0, 1], gaussian_inputs=True)
    with pytest.raises(ValueError, match="at least 2 samples"):
        corrupt(torch.ones(1, 2), [0], gaussian_inputs=True)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        corrupt(x, y, seed=-1)
    with pytest.raises(ValueError, match="does not match the 10 samples of x"):
        corrupt(x, labels(n=9))
    with pytest.raises(ValueError, match="non-integer values"):
        corrupt(x, torch.full((10,), 0.5))

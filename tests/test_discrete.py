"""discrete_mi, the Miller–Madow option and the clamping rule, against oracles computed here from the arrays."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

import infoplane
from infoplane.estimators import Binning, Discrete, binned_mi, discrete_mi, from_settings

LN2 = math.log(2)


def row_codes(rows):
    return np.unique(np.asarray(rows), axis=0, return_inverse=True)[1].ravel()


def oracle(rows, labels):
    """(I(X;T), I(T;Y)) in bits: np.unique row codes, then sklearn's plug-in MI (nats)."""
    codes = row_codes(rows)
    return mutual_info_score(codes, codes) / LN2, mutual_info_score(codes, labels) / LN2


def h_counts(counts):
    counts = np.asarray([c for c in counts if c > 0], dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def mm_oracle(codes, labels):
    """Miller–Madow H(T) and I(T;Y) in bits from counts: H + (K - 1) / (2 N ln 2), H(T|Y) class by class."""
    n = len(codes)
    counts = np.unique(codes, return_counts=True)[1]
    h_t = h_counts(counts) + (len(counts) - 1) / (2 * n * LN2)
    h_t_y = 0.0
    for c in np.unique(labels):
        cc = np.unique(codes[labels == c], return_counts=True)[1]
        n_c = cc.sum()
        h_t_y += n_c / n * (h_counts(cc) + (len(cc) - 1) / (2 * n_c * LN2))
    h_y = h_counts(np.unique(labels, return_counts=True)[1])
    return min(max(h_t, 0.0), math.log2(n)), min(max(h_t - h_t_y, 0.0), h_y)


def tied_acts(rng, shape, levels, dtype):
    """Activations from a few exact values per unit, so that rows repeat (ties) but not all of them."""
    vals = rng.normal(size=levels)
    return vals[rng.integers(0, levels, size=shape)].astype(dtype)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_discrete_matches_sklearn_on_row_codes(seed, dtype):
    rng = np.random.default_rng(seed)
    d = [1, 2, 3, 5][seed]
    acts = tied_acts(rng, (3, 2, 200, d), 3, dtype)   # batch shape (3, 2)
    labels = rng.integers(0, 3, size=200)
    r = discrete_mi(torch.from_numpy(acts), torch.from_numpy(labels))
    assert r.ixt.shape == (3, 2) and r.ity.dtype == torch.float64
    for idx in np.ndindex(3, 2):
        ixt, ity = oracle(acts[idx], labels)
        assert abs(float(r.ixt[idx]) - ixt) < 1e-9 and abs(float(r.ity[idx]) - ity) < 1e-9


def test_discrete_per_item_labels_numpy_input_and_wide_layers():
    rng = np.random.default_rng(5)
    acts = tied_acts(rng, (4, 150, 40), 2, np.float32)
    acts[:, :100, 1:] = 0.25                               # many rows differ only in their first unit
    labels = rng.integers(0, 2, size=(4, 150))
    r = discrete_mi(acts, labels)
    for b in range(4):
        ixt, ity = oracle(acts[b], labels[b])
        assert abs(float(r.ixt[b]) - ixt) < 1e-9 and abs(float(r.ity[b]) - ity) < 1e-9


def test_discrete_values_are_exact_symbols_not_cells():
    # Values closer than any grid would separate are still different symbols; 0.0 and -0.0 are one symbol.
    acts = torch.tensor([[0.0], [-0.0], [1e-30], [np.nextafter(np.float32(1), np.float32(2))], [1.0]])
    r = discrete_mi(acts, torch.tensor([0, 0, 1, 1, 1]))
    ixt, ity = oracle(acts.numpy(), np.array([0, 0, 1, 1, 1]))
    assert abs(float(r.ixt) - ixt) < 1e-12 and abs(float(r.ity) - ity) < 1e-12
    assert float(r.ixt) == pytest.approx(h_counts([2, 1, 1, 1]))


def test_discrete_errors_and_config_object():
    with pytest.raises(ValueError, match="NaN at batch index"):
        discrete_mi(torch.tensor([[[0.0], [1.0]], [[float("nan")], [1.0]]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="miller_madow must be True or False"):
        discrete_mi(torch.zeros(4, 1), torch.tensor([0, 1, 0, 1]), miller_madow="yes")
    est = Discrete(miller_madow=True)
    assert est.kind == "discrete" and est.name == "discrete-mm" and Discrete().name == "discrete"
    assert from_settings(est.settings()) == est and infoplane.Discrete is Discrete
    rng = np.random.default_rng(6)
    acts, labels = tied_acts(rng, (2, 80, 3), 3, np.float64), rng.integers(0, 2, size=80)
    a, b = est(acts, labels), discrete_mi(acts, labels, miller_madow=True)
    assert torch.equal(a.ixt, b.ixt) and torch.equal(a.ity, b.ity)


GRID_CASES = [
    (dict(bins=30, range=(-1.0, 1.0)), lambda a: np.linspace(-1, 1, 30).astype(np.float32)[
        np.digitize(a, np.linspace(-1, 1, 30).astype(np.float32)) - 1]),
    (dict(width=0.3), lambda a: np.floor(a / a.dtype.type(0.3))),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miller_madow_matches_counts_oracle(seed):
    rng = np.random.default_rng(seed)
    n = 120
    labels = rng.integers(0, 3, size=n)
    acts = np.tanh(rng.normal(size=(2, n, 2)) * 1.5).astype(np.float32)
    for kw, cells in GRID_CASES:
        r = binned_mi(acts, labels, miller_madow=True, **kw)
        for b in range(2):
            got = (float(r.ixt[b]), float(r.ity[b]))
            want = mm_oracle(row_codes(cells(acts[b])), labels)
            assert got == pytest.approx(want, abs=1e-9)
    # adaptive: the cells from the published rule (edges at the k M / bins-th distinct value)
    r = binned_mi(acts, labels, bins=4, adaptive=True, miller_madow=True)
    for b in range(2):
        u = np.unique(acts[b])
        edges = u[(np.arange(1, 4) * len(u)) // 4]
        want = mm_oracle(row_codes(np.searchsorted(edges, acts[b], side="right")), labels)
        assert (float(r.ixt[b]), float(r.ity[b])) == pytest.approx(want, abs=1e-9)
    tied = tied_acts(rng, (2, n, 3), 2, np.float64)
    r = discrete_mi(tied, labels, miller_madow=True)
    for b in range(2):
        assert (float(r.ixt[b]), float(r.ity[b])) == pytest.approx(mm_oracle(row_codes(tied[b]), labels), abs=1e-9)
    est = Binning(width=0.3, miller_madow=True)
    assert est.name == "binning-width-mm" and from_settings(est.settings()) == est
    assert "miller_madow" not in Binning(width=0.3).settings()


def test_miller_madow_is_clamped_at_the_ceilings():
    # All rows distinct: the correction would push H(T) past log2 N and I(T;Y) past H(Y).
    acts = torch.arange(64, dtype=torch.float64)[:, None]
    labels = torch.arange(64) % 2
    for r in (discrete_mi(acts, labels, miller_madow=True), binned_mi(acts, labels, width=1.0, miller_madow=True)):
        assert float(r.ixt) == math.log2(64) and float(r.ity) == 1.0


def _np_entropy_bits(labels):
    """H(Y) the way a careful user would compute it: numpy, counts over N."""
    p = np.unique(labels, return_counts=True)[1] / len(labels)
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("seed", range(4))
def test_estimates_stay_inside_their_range(seed):
    # Rounding put I(T;Y) a few ulps above H(Y) and I(X;T) a few ulps below 0 before the clamp: T that
    # determines Y (I = H(Y)) and constant T (I = 0) on unbalanced label sets with many N.
    rng = np.random.default_rng(seed)
    for n in (7, 10, 11, 13, 20, 25, 30, 49, 60, 97, 100, 300, 1000):
        labels = rng.integers(0, 3, size=n)
        h_y = _np_entropy_bits(labels)
        determined = np.stack([labels, labels * 2], axis=1).astype(np.float64) * 0.3   # T determines Y
        const = np.zeros((n, 2))
        for acts in (determined, const):
            ixt_o, ity_o = oracle(acts, labels)
            results = [discrete_mi(acts, labels), binned_mi(acts, labels, width=0.1),
                       binned_mi(acts, labels, bins=30, range=(-1.0, 1.0)),
                       binned_mi(acts, labels, bins=30, adaptive=True)]
            for r in results:
                ixt, ity = float(r.ixt), float(r.ity)
                assert 0.0 <= ixt <= math.log2(n) and 0.0 <= ity <= h_y
                assert ity <= float(discrete_mi(labels[:, None].astype(float), labels).ity)  # I(T;Y) <= I(Y;Y)
                assert abs(ixt - ixt_o) < 1e-9 and abs(ity - ity_o) < 1e-9


@pytest.mark.parametrize("key_space", [40, 10**6])
def test_torch_counting_route_equals_numpy_route(key_space):
    # The torch route runs on GPUs; here both routes run on CPU on the same keys (bincount and sort paths).
    from infoplane.estimators._entropy import plugin_counts

    rng = np.random.default_rng(key_space)
    n, items, label_bits = 100, 5, 2
    keys = torch.from_numpy(rng.integers(0, key_space, size=(items, n)))
    labels = torch.from_numpy(rng.integers(0, 3, size=(items, n)))
    item_bits = (key_space - 1).bit_length() + label_bits
    joint = ((torch.arange(items)[:, None] << item_bits) + (keys << label_bits) + labels).reshape(-1)
    a = plugin_counts(joint, items, n, label_bits, item_bits, use_numpy=True)
    b = plugin_counts(joint, items, n, label_bits, item_bits, use_numpy=False)
    for x, y in zip(a, b):
        assert torch.equal(x, y)  # one order of summation (sum_xlogx) on every route
    for i in range(items):  # and both equal counts done here
        k, lab = keys[i].numpy(), labels[i].numpy()
        pair = k * 4 + lab
        assert float(a[0][i]) == pytest.approx(h_counts(np.unique(k, return_counts=True)[1]), abs=1e-12)
        assert float(a[1][i]) == pytest.approx(h_counts(np.unique(pair, return_counts=True)[1]), abs=1e-12)
        assert int(a[2][i]) == len(np.unique(k)) and int(a[3][i]) == len(np.unique(pair))


def test_discrete_result_has_its_own_type():
    from infoplane.estimators import BinnedResult, DiscreteResult, PlaneResult

    r = discrete_mi(torch.tensor([[0.0], [1.0], [1.0], [2.0]]), torch.tensor([0, 0, 1, 1]))
    assert type(r) is DiscreteResult and isinstance(r, PlaneResult) and not isinstance(r, BinnedResult)
    assert type(Discrete()(torch.rand(10, 2), torch.arange(10) % 2)) is DiscreteResult

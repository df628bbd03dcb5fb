"""binned_mi against an independent oracle: numpy grids + np.unique row codes + sklearn's mutual_info_score."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from infoplane.estimators import Binning, binned_mi

LN2 = math.log(2)


# ---- the oracle: written from the published conventions, independently of the implementation ----
def oracle_cells(a, grid):
    a = np.asarray(a)
    if grid["kind"] == "range":
        edges = np.linspace(*grid["range"], grid["bins"]).astype(np.float32)
        return edges[np.digitize(a, edges) - 1]  # the original's indexing, wrap-around included
    if grid["kind"] == "width":
        return np.floor(a / a.dtype.type(grid["width"]))
    u = np.unique(a)
    m = len(u)
    edges = u[(np.arange(1, grid["bins"]) * m) // grid["bins"]]
    return np.searchsorted(edges, a, side="right")


def oracle_mi(a, labels, grid):
    """(I(X;T), I(T;Y)) in bits for one [N, d] item."""
    cells = oracle_cells(a, grid)
    _, codes = np.unique(cells, axis=0, return_inverse=True)
    codes = codes.ravel()
    return mutual_info_score(codes, codes) / LN2, mutual_info_score(codes, labels) / LN2


GRIDS = {
    "range": (dict(kind="range", bins=30, range=(-1.0, 1.0)), dict(bins=30, range=(-1.0, 1.0))),
    "range-coarse": (dict(kind="range", bins=5, range=(-0.5, 2.0)), dict(bins=5, range=(-0.5, 2.0))),
    "width": (dict(kind="width", width=0.07), dict(width=0.07)),
    "width-wide": (dict(kind="width", width=0.5), dict(width=0.5)),
    "adaptive": (dict(kind="adaptive", bins=30), dict(bins=30, adaptive=True)),
    "adaptive-few": (dict(kind="adaptive", bins=4), dict(bins=4, adaptive=True)),
}


def make_acts(rng, shape, kind, duplicates):
    """tanh-like values in (-1, 1) with saturated units, or ReLU-like values >= 0 with many exact zeros."""
    z = rng.normal(scale=2.0, size=shape)
    a = np.tanh(z) if kind == "tanh" else np.maximum(z, 0.0) * 1.5
    a = a.astype(np.float32)
    if duplicates:
        n = shape[-2]
        src = rng.integers(0, n, size=n // 3)
        dst = rng.integers(0, n, size=n // 3)
        a[..., dst, :] = a[..., src, :]
    return a


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("kind", ["tanh", "relu"])
@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_oracle_over_grids(grid, kind, duplicates, seed):
    rng = np.random.default_rng(seed)
    oracle_grid, kwargs = GRIDS[grid]
    acts = make_acts(rng, (3, 2, 300, 4), kind, duplicates)  # batch shape (3, 2)
    labels = rng.integers(0, 3, size=300)
    r = binned_mi(acts, labels, **kwargs)
    assert r.ixt.shape == (3, 2) and r.ity.shape == (3, 2)
    for idx in np.ndindex(3, 2):
        ixt, ity = oracle_mi(acts[idx], labels, oracle_grid)
        assert abs(float(r.ixt[idx]) - ixt) < 1e-9
        assert abs(float(r.ity[idx]) - ity) < 1e-9


@pytest.mark.parametrize("d", [1, 2, 7, 13, 64, 300, 2048])
@pytest.mark.parametrize("grid", ["range", "width", "adaptive"])
def test_matches_oracle_over_widths(d, grid):
    rng = np.random.default_rng(d)
    oracle_grid, kwargs = GRIDS[grid]
    n = 120
    # coarse values so that rows collide often even in wide layers
    acts = np.tanh(rng.integers(-2, 3, size=(2, n, d)) * 0.8).astype(np.float32)
    acts[:, : n // 2, 1:] = acts[:, :1, 1:]  # half the rows differ only in their first unit
    labels = rng.integers(0, 2, size=n)
    r = binned_mi(torch.from_numpy(acts), torch.from_numpy(labels), **kwargs)
    for b in range(2):
        ixt, ity = oracle_mi(acts[b], labels, oracle_grid)
        assert abs(float(r.ixt[b]) - ixt) < 1e-9
        assert abs(float(r.ity[b]) - ity) < 1e-9


def test_rows_that_differ_only_in_their_last_unit_are_kept_apart():
    # A wide layer needs several packed groups; rows equal on the first 2047 units must still be told apart
    # by the last one, and rows equal everywhere must merge.
    rng = np.random.default_rng(3)
    n, d = 64, 2048
    base = np.tanh(rng.normal(size=(1, d))).astype(np.float32)
    acts = np.repeat(base, n, axis=0)
    acts[:, -1] = np.where(np.arange(n) % 4 == 0, 0.9, -0.9)  # two distinct rows in all
    labels = np.arange(n) % 2
    r = binned_mi(acts, labels, bins=30, range=(-1, 1))
    ixt, ity = oracle_mi(acts, labels, GRIDS["range"][0])
    assert abs(float(r.ixt) - ixt) < 1e-9 and abs(float(r.ity) - ity) < 1e-9
    p = 0.25
    assert abs(float(r.ixt) - (-(p * math.log2(p) + (1 - p) * math.log2(1 - p)))) < 1e-12


def test_overflow_cell_is_shared_by_values_below_and_above_the_range():
    # The original's indexing puts a < lo into the same cell as a >= hi.
    acts = torch.tensor([[-1.5], [1.0], [1.7], [0.0]])
    r = binned_mi(acts, torch.tensor([0, 1, 0, 1]), bins=30, range=(-1, 1))
    counts = np.array([3, 1]) / 4
    assert abs(float(r.ixt) - float(-(counts * np.log2(counts)).sum())) < 1e-12


def test_float32_edges_decide_ties_like_the_original():
    # tanh outputs that round to exactly 1.0 in float32 land in the overflow cell, and a value equal to a float32
    # edge opens that edge's cell.
    edges = np.linspace(-1, 1, 30).astype(np.float32)
    acts = np.array([[edges[5]], [np.nextafter(edges[5], np.float32(-2))], [np.float32(1.0)], [edges[-1]]],
                    dtype=np.float32)
    r = binned_mi(acts, np.array([0, 0, 1, 1]), bins=30, range=(-1, 1))
    ixt, ity = oracle_mi(acts, np.array([0, 0, 1, 1]), GRIDS["range"][0])
    assert float(r.ixt) == pytest.approx(ixt, abs=1e-12) and float(r.ity) == pytest.approx(ity, abs=1e-12)
    assert float(r.ixt) == pytest.approx(1.5)  # three cells: {edge5}, {below edge5}, {overflow x2}


def test_batched_equals_per_item_exactly():
    rng = np.random.default_rng(5)
    acts = torch.from_numpy(make_acts(rng, (4, 3, 200, 6), "tanh", True))
    labels = torch.from_numpy(rng.integers(0, 4, size=200))
    for kw in (GRIDS["range"][1], GRIDS["width"][1], GRIDS["adaptive"][1]):
        whole = binned_mi(acts, labels, **kw)
        for idx in np.ndindex(4, 3):
            one = binned_mi(acts[idx], labels, **kw)
            assert float(one.ixt) == float(whole.ixt[idx]) and float(one.ity) == float(whole.ity[idx])


def test_per_item_labels_equal_separate_calls():
    rng = np.random.default_rng(6)
    acts = torch.from_numpy(make_acts(rng, (3, 150, 5), "relu", False))
    labels = torch.from_numpy(rng.integers(0, 2, size=(3, 150)))
    whole = binned_mi(acts, labels, width=0.3)
    for b in range(3):
        one = binned_mi(acts[b], labels[b], width=0.3)
        assert float(one.ity) == float(whole.ity[b]) and float(one.ixt) == float(whole.ixt[b])


@pytest.mark.parametrize("grid", ["range", "width", "adaptive"])
def test_permuting_samples_or_units_changes_nothing(grid):
    rng = np.random.default_rng(7)
    kw = GRIDS[grid][1]
    acts = make_acts(rng, (250, 5), "tanh", True)
    labels = rng.integers(0, 3, size=250)
    ref = binned_mi(acts, labels, **kw)
    ps, pu = rng.permutation(250), rng.permutation(5)
    for a2, y2 in ((acts[ps], labels[ps]), (acts[:, pu], labels)):
        r = binned_mi(np.ascontiguousarray(a2), y2, **kw)
        assert float(r.ixt) == pytest.approx(float(ref.ixt), abs=1e-12)
        assert float(r.ity) == pytest.approx(float(ref.ity), abs=1e-12)


@pytest.mark.parametrize("grid", ["range", "width", "adaptive"])
def test_constant_layer_gives_zero(grid):
    acts = torch.full((2, 100, 3), 0.3)
    r = binned_mi(acts, torch.arange(100) % 2, **GRIDS[grid][1])
    assert torch.all(r.ixt.abs() < 1e-12) and torch.all(r.ity.abs() < 1e-12)


def test_all_distinct_rows_give_log2_n_and_full_label_information():
    n = 256
    acts = torch.arange(n, dtype=torch.float32)[:, None] * 0.07 + 0.035
    labels = torch.arange(n) % 3
    r = binned_mi(acts, labels, width=0.07)
    counts = np.bincount(labels.numpy()) / n
    assert float(r.ixt) == pytest.approx(math.log2(n), abs=1e-12)
    assert float(r.ity) == pytest.approx(float(-(counts * np.log2(counts)).sum()), abs=1e-12)


def test_refining_the_grid_never_lowers_ixt():
    rng = np.random.default_rng(8)
    acts = make_acts(rng, (400, 3), "tanh", False)
    labels = rng.integers(0, 2, size=400)
    # 8 -> 15 -> 29 edge points on [-1, 1] keep every old edge
    values = [float(binned_mi(acts, labels, bins=b, range=(-1, 1)).ixt) for b in (8, 15, 29)]
    assert values[0] <= values[1] + 1e-12 <= values[2] + 2e-12
    assert 0.0 <= float(binned_mi(acts, labels, bins=29, range=(-1, 1)).ity) <= 1.0


def test_one_hot_labels_equal_class_indices():
    rng = np.random.default_rng(9)
    acts = make_acts(rng, (2, 120, 3), "tanh", True)
    labels = rng.integers(0, 3, size=120)
    onehot = np.eye(3)[labels]
    a = binned_mi(acts, labels, bins=30, range=(-1, 1))
    b = binned_mi(acts, onehot, bins=30, range=(-1, 1))
    assert torch.equal(a.ixt, b.ixt) and torch.equal(a.ity, b.ity)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_follow_the_same_rule(dtype):
    rng = np.random.default_rng(10)
    acts = torch.from_numpy(make_acts(rng, (200, 4), "tanh", False)).to(dtype)
    labels = rng.integers(0, 2, size=200)
    r = binned_mi(acts, labels, bins=30, range=(-1, 1))
    wide = acts.to(torch.float64 if dtype == torch.float64 else torch.float32).numpy()
    ixt, ity = oracle_mi(wide, labels, GRIDS["range"][0])
    assert abs(float(r.ixt) - ixt) < 1e-9 and abs(float(r.ity) - ity) < 1e-9
    assert r.ixt.dtype == torch.float64


def test_tishby12_inputs_binned_finely_carry_all_information():
    from infoplane.data import tishby12

    x, y = tishby12()
    r = binned_mi(x, y, bins=30, range=(-1, 1))
    p = np.bincount(y.numpy()) / len(y)
    h_y = float(-(p * np.log2(p)).sum())
    assert float(r.ixt) == pytest.approx(12.0, abs=1e-12)
    assert float(r.ity) == pytest.approx(h_y, abs=1e-12)
    assert h_y == pytest.approx(0.99916, abs=1e-5)


def test_configuration_object_matches_function():
    rng = np.random.default_rng(11)
    acts = make_acts(rng, (2, 100, 3), "tanh", True)
    labels = rng.integers(0, 2, size=100)
    for est, kw in ((Binning(bins=30, range=(-1, 1)), GRIDS["range"][1]), (Binning(width=0.07), {"width": 0.07}),
                    (Binning(bins=30, adaptive=True), GRIDS["adaptive"][1])):
        a, b = est(acts, labels), binned_mi(acts, labels, **kw)
        assert torch.equal(a.ixt, b.ixt) and torch.equal(a.ity, b.ity)


@pytest.mark.parametrize("bins,lo,hi", [(30, -1.0, 1.0), (30, 0.0, 1.0), (100, 0.0, 10.0), (7, -0.3, 2.9),
                                        (1000, -1.0, 1.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_edge_and_its_neighbours_bin_like_digitize(bins, lo, hi, dtype):
    # Values at, just below and just above every float32 edge (and outside the range) each in their own row:
    # the row partition must equal the one of the original's digitize indexing.
    edges = np.linspace(lo, hi, bins).astype(np.float32).astype(dtype)
    vals = np.concatenate([edges, np.nextafter(edges, dtype(-np.inf)), np.nextafter(edges, dtype(np.inf)),
                           np.array([lo - 1, hi + 1, (lo + hi) / 2], dtype=dtype)])
    acts = vals[:, None]
    labels = np.arange(len(vals)) % 2
    r = binned_mi(acts, labels, bins=bins, range=(lo, hi))
    ixt, ity = oracle_mi(acts, labels, dict(kind="range", bins=bins, range=(lo, hi)))
    assert abs(float(r.ixt) - ixt) < 1e-9 and abs(float(r.ity) - ity) < 1e-9


def test_wide_layers_whose_rows_all_differ_match_the_oracle():
    # Wide layers part way through the units already tell every row apart (a shortcut path): I(X;T) = log2 N
    # and I(T;Y) = H(Y), per item and with per-item labels.
    rng = np.random.default_rng(12)
    acts = np.tanh(rng.normal(scale=2, size=(3, 150, 64))).astype(np.float32)
    labels = rng.integers(0, 3, size=(3, 150))
    for kw, grid in ((dict(bins=30, range=(-1, 1)), GRIDS["range"][0]), (dict(width=0.07), GRIDS["width"][0])):
        r = binned_mi(acts, labels, **kw)
        for b in range(3):
            ixt, ity = oracle_mi(acts[b], labels[b], grid)
            assert abs(float(r.ixt[b]) - ixt) < 1e-9 and abs(float(r.ity[b]) - ity) < 1e-9
            assert ixt == pytest.approx(math.log2(150))


def test_result_is_a_plane_result_and_bools_are_not_bins():
    from infoplane.estimators import PlaneResult

    r = binned_mi(torch.rand(3, 20, 2), torch.arange(20) % 2)
    assert isinstance(r, PlaneResult) and r.ixt.shape == (3,)
    for kw, match in [(dict(bins=True), "bins must be an integer >= 2"), (dict(width=True), "width must be a positive"),
                      (dict(adaptive="yes"), "adaptive must be True or False"),
                      (dict(miller_madow=1), "miller_madow must be True or False")]:
        with pytest.raises(ValueError, match=match):
            binned_mi(torch.rand(20, 2), torch.arange(20) % 2, **kw)
        with pytest.raises(ValueError, match=match):
            Binning(**kw)

"""Tests of infoplane.data: the 12-bit set, digits, .npz loading and splits."""

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from infoplane import data

REPO = Path(__file__).resolve().parents[1]

# Vertex table of the 12-bit task, typed in independently of the module.
PHI = (1 + 5**0.5) / 2
COORDS = np.array(
    [
        [0, 1, PHI], [0, -1, PHI], [1, -PHI, 0], [PHI, 0, 1], [-1, -PHI, 0], [-1, PHI, 0],
        [-PHI, 0, -1], [0, 1, -PHI], [PHI, 0, -1], [0, -1, -PHI], [1, PHI, 0], [-PHI, 0, 1],
    ]
)
UNIT = COORDS / np.sqrt(1 + PHI**2)


@pytest.fixture(scope="module")
def tishby():
    x, y = data.tishby12()
    return x.numpy(), y.numpy()


def row_index(patterns):
    """Row of each pattern in counting order (column 0 most significant)."""
    return patterns.astype(np.int64) @ (1 << np.arange(11, -1, -1))


def icosahedral_permutations():
    """Vertex permutations induced by all orthogonal maps that keep the vertex set."""
    def vertex_of(points):
        d = np.linalg.norm(points[:, None, :] - UNIT[None, :, :], axis=-1)
        hit = d.min(axis=1) < 1e-9
        return d.argmin(axis=1) if hit.all() else None

    edge = np.linalg.norm(UNIT[0] - UNIT[1])
    adjacent = [
        (i, j) for i, j in itertools.permutations(range(12), 2)
        if abs(np.linalg.norm(UNIT[i] - UNIT[j]) - edge) < 1e-9
    ]
    a, b = adjacent[0]
    source = np.column_stack([UNIT[a], UNIT[b], np.cross(UNIT[a], UNIT[b])])
    perms = set()
    for i, j in adjacent:
        for sign in (1, -1):  # rotation or rotation composed with a reflection
            target = np.column_stack([UNIT[i], UNIT[j], sign * np.cross(UNIT[i], UNIT[j])])
            m = target @ np.linalg.inv(source)
            perm = vertex_of(UNIT @ m.T)
            if perm is not None and len(set(perm)) == 12:
                perms.add(tuple(perm))
    return len(adjacent), [np.array(p) for p in sorted(perms)]


# --------------------------------------------------------------------------- 12-bit


def test_vertices_match_table():
    np.testing.assert_allclose(data.ICOSAHEDRON, UNIT, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(data.ICOSAHEDRON, axis=1), 1.0, atol=1e-15)


def test_shapes_dtypes_and_counting_order(tishby):
    x, y = tishby
    xt, yt = data.tishby12()
    assert xt.shape == (4096, 12) and xt.dtype == torch.float32
    assert yt.shape == (4096,) and yt.dtype == torch.int64
    assert data.tishby12(dtype=torch.float64)[0].dtype == torch.float64
    r = np.arange(4096)[:, None]
    j = np.arange(12)[None, :]
    np.testing.assert_array_equal(x, (r >> (11 - j)) & 1)
    assert len(np.unique(x, axis=0)) == 4096
    assert set(np.unique(y)) == {0, 1}


def test_label_counts_by_weight(tishby):
    x, y = tishby
    k = x.sum(axis=1).astype(int)
    assert y.sum() == 2118
    for weight, positives, total in [(5, 60, 792), (6, 532, 924), (7, 732, 792)]:
        assert (k == weight).sum() == total
        assert y[k == weight].sum() == positives
    assert np.all(y[k >= 8] == 1)
    assert np.all(y[k <= 4] == 0)


def test_geometric_and_integer_rules_agree(tishby):
    x, y = tishby
    integer = data.tishby12_labels_integer(x)
    np.testing.assert_array_equal(integer, y)
    np.testing.assert_array_equal(data.tishby12_labels(torch.as_tensor(x)), y)
    # The geometric rule recomputed here from the table, not from the module.
    k = x.sum(axis=1)
    np.testing.assert_array_equal((k + np.linalg.norm(x @ UNIT, axis=1) > 7.6).astype(int), y)


def test_rule_inputs_are_validated():
    with pytest.raises(ValueError, match="shape"):
        data.tishby12_labels(np.zeros((3, 11)))
    with pytest.raises(ValueError, match="0 and 1"):
        data.tishby12_labels_integer(np.full((2, 12), 2))


def test_labels_invariant_under_icosahedral_group(tishby):
    x, y = tishby
    n_adjacent, perms = icosahedral_permutations()
    assert n_adjacent == 60
    assert len(perms) == 120
    for perm in perms:
        moved = np.zeros_like(x)
        moved[:, perm] = x  # bit at vertex i moves to vertex perm[i]
        np.testing.assert_array_equal(y[row_index(moved)], y)
    # The check has teeth: swapping two adjacent bits with the rest fixed is not a symmetry.
    swapped = x[:, [1, 0] + list(range(2, 12))]
    assert np.any(y[row_index(swapped)] != y)


def test_not_invariant_under_complement(tishby):
    x, y = tishby
    assert np.any(y[row_index(1 - x)] != y)


def test_label_entropy(tishby):
    _, y = tishby
    p = np.bincount(y) / y.size
    h = -np.sum(p * np.log2(p))
    assert abs(h - 0.99916) < 1e-5


def test_csv_file_matches_generator(tmp_path, tishby):
    x, y = tishby
    written = data.write_tishby12_csv(tmp_path / "t.csv")
    shipped = REPO / "data" / "tishby12.csv"
    assert shipped.read_bytes() == written.read_bytes()
    lines = shipped.read_text().splitlines()
    assert lines[0] == ",".join([f"x{j}" for j in range(12)] + ["y"])
    table = np.loadtxt(shipped, delimiter=",", skiprows=1, dtype=np.int64)
    np.testing.assert_array_equal(table[:, :12], x)
    np.testing.assert_array_equal(table[:, 12], y)


# --------------------------------------------------------------------------- digits and loading


def test_digits():
    x, y = data.digits()
    assert x.shape == (1797, 64) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(torch.unique(y).tolist()) == list(range(10))
    from sklearn.datasets import load_digits

    np.testing.assert_allclose(x.double().numpy() * 16, load_digits().data, atol=1e-5)


def test_load_by_name_and_path(tmp_path, tishby):
    x, y = data.load("tishby12")
    np.testing.assert_array_equal(x.numpy(), tishby[0])
    np.testing.assert_array_equal(y.numpy(), tishby[1])
    assert data.load("digits")[0].shape == (1797, 64)
    path = tmp_path / "mine.npz"
    np.savez(path, inputs=np.ones((4, 2, 3)), labels=np.array([0, 2, 1, 2]))
    for spec in (path, str(path)):
        xi, yi = data.load(spec)
        assert xi.shape == (4, 2, 3) and xi.dtype == torch.float32
        assert yi.tolist() == [0, 2, 1, 2] and yi.dtype == torch.int64
    with pytest.raises(ValueError, match="digits.*tishby12"):
        data.load("imagenet")


def test_load_npz_one_hot_and_integral_floats(tmp_path):
    path = tmp_path / "onehot.npz"
    one_hot = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    np.savez(path, inputs=np.arange(6).reshape(3, 2), labels=one_hot)
    x, y = data.load_npz(path, dtype=torch.float64)
    assert x.dtype == torch.float64 and x.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert y.tolist() == [1, 0, 2]
    np.savez(path, inputs=np.zeros((2, 1)), labels=np.array([1.0, 0.0]))
    assert data.load_npz(path)[1].tolist() == [1, 0]


@pytest.mark.parametrize(
    "arrays, error, pattern",
    [
        ({"x": np.zeros((2, 1)), "labels": np.zeros(2, int)}, ValueError, r"missing.*inputs.*\['labels', 'x'\]"),
        ({"inputs": np.zeros((3, 1)), "labels": np.zeros(2, int)}, ValueError, "3 rows.*2"),
        ({"inputs": np.array([[0.0], [np.nan]]), "labels": np.zeros(2, int)}, ValueError, "NaN or infinite"),
        ({"inputs": np.array([[0.0], [np.inf]]), "labels": np.zeros(2, int)}, ValueError, "NaN or infinite"),
        ({"inputs": np.zeros((2, 1)), "labels": np.array([0.5, 1.0])}, ValueError, "non-integer"),
        ({"inputs": np.zeros((2, 1)), "labels": np.array([0, -1])}, ValueError, ">= 0"),
        ({"inputs": np.zeros((2, 1)), "labels": np.array([[1, 1], [0, 1]])}, ValueError, "one-hot"),
        ({"inputs": np.array([["a"], ["b"]]), "labels": np.zeros(2, int)}, ValueError, "real numbers"),
    ],
)
def test_load_npz_errors(tmp_path, arrays, error, pattern):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(error, match=pattern):
        data.load_npz(path)


def test_load_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        data.load_npz(tmp_path / "nope.npz")


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("fraction", [0.05, 0.33, 0.5, 0.85, 0.999])
@pytest.mark.parametrize("name", ["tishby12", "digits"])
def test_stratified_split_sizes_and_balance(name, fraction):
    y = data.load(name)[1].numpy()
    n = y.size
    train, test = data.stratified_split(y, fraction, seed=3)
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert len(train) == round(fraction * n)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(n))
    assert len(np.intersect1d(train, test)) == 0
    share = len(train) / n
    for cls, count in zip(*np.unique(y, return_counts=True)):
        assert abs((y[train] == cls).sum() - share * count) <= 1


def test_stratified_split_reproducible_and_seeded(tishby):
    y = tishby[1]
    state = np.random.get_state()
    a = data.stratified_split(y, 0.5, seed=7)
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    b = data.stratified_split(torch.as_tensor(y), 0.5, seed=7)
    c = data.stratified_split(y, 0.5, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_stratified_split_full_fraction_and_rare_classes():
    y = np.array([0] * 98 + [1, 2])
    train, test = data.stratified_split(y, 1.0, seed=0)
    np.testing.assert_array_equal(train, np.arange(100))
    assert test.size == 0
    # Three training samples for three classes: every class gets one.
    train, _ = data.stratified_split(y, 0.03, seed=0)
    assert sorted(y[train].tolist()) == [0, 1, 2]


def test_stratified_split_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        data.stratified_split(np.zeros((3, 2), int), 0.5, seed=0)
    with pytest.raises(ValueError, match="integer"):
        data.stratified_split(np.array([0.0, 1.0]), 0.5, seed=0)
    with pytest.raises(TypeError, match="seed"):
        data.stratified_split(np.array([0, 1]), 0.5, seed=None)
    with pytest.raises(ValueError, match="empty training set"):
        data.stratified_split(np.array([0, 1, 0]), 0.1, seed=0)


@pytest.mark.parametrize("fraction", [0.05, 0.45, 0.8, 0.85, 1.0])
def test_original_split(fraction, tishby):
    n = 4096
    train, test = data.original_split(n, fraction)
    assert train.dtype == np.int64 and test.dtype == np.int64
    np.testing.assert_array_equal(train, np.arange(round(fraction * n)))
    np.testing.assert_array_equal(test, np.arange(round(0.8 * n), n))
    overlap = np.intersect1d(train, test)
    if fraction > 0.8:
        np.testing.assert_array_equal(overlap, np.arange(round(0.8 * n), round(fraction * n)))
    else:
        assert overlap.size == 0
    if fraction == 0.05:
        # The unshuffled head of the file is mostly low-weight, negative patterns.
        assert round(tishby[1][train].mean(), 3) == 0.117


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan")])
def test_bad_fractions(fraction):
    for call in (
        lambda: data.stratified_split(np.array([0, 1]), fraction, seed=0),
        lambda: data.original_split(10, fraction),
    ):
        with pytest.raises(ValueError, match=re.escape("0 < fraction <= 1")):
            call()


def test_bad_fraction_and_n_types():
    with pytest.raises(TypeError, match="fraction"):
        data.original_split(10, "0.5")
    with pytest.raises(TypeError, match="fraction"):
        data.stratified_split(np.array([0, 1]), True, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        data.original_split(0, 0.5)

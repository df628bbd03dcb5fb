"""One label validator, one set of rules, at every boundary: estimators, Tracker, load_npz."""
import numpy as np
import pytest
import torch
from torch import nn

import infoplane
from infoplane.data import load_npz
from infoplane.data.labels import as_class_indices
from infoplane.estimators import binned_mi

ACCEPTED = [
    ([0, 1, 1, 2], [0, 1, 1, 2], None),
    (np.array([True, False, True]), [1, 0, 1], None),
    (np.array([0.0, 2.0, 1.0]), [0, 2, 1], None),
    (np.array([[0, 1], [1, 0], [0, 1]]), [1, 0, 1], None),
    (torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), [2, 0], None),
    (["dog", "cat", "dog", "emu"], [1, 0, 1, 2], ["cat", "dog", "emu"]),
    (np.array(["b", "a"]), [1, 0], ["a", "b"]),
    (np.array([3, 1], dtype=np.uint8), [3, 1], None),
    (np.array([[0], [2], [1]]), [0, 2, 1], None),              # a column of indices [N, 1], not one-hot
    (torch.tensor([[1.0], [0.0], [1.0]]), [1, 0, 1], None),
]


@pytest.mark.parametrize("labels, expected, names", ACCEPTED)
def test_accepted_forms(labels, expected, names):
    got = as_class_indices(labels)
    assert got.indices.dtype == torch.int64 and got.indices.tolist() == expected
    assert got.names == names


REFUSED = [
    (np.array([0.7, 1.2]), "non-integer values such as \\[0.7, 1.2\\].*whole numbers"),
    (np.array([0, -1, 1]), "negative class indices \\(smallest -1\\).*>= 0"),
    (np.array([0.0, np.nan]), "contain NaN.*give every sample a class"),
    (np.array([[0.5, 0.5], [1, 0]]), "look one-hot.*exactly one 1"),
    (["a", None], "missing value"),
    (np.array([1 + 1j, 0]), "complex"),
]


@pytest.mark.parametrize("labels, message", REFUSED)
def test_refused_forms_name_problem_and_fix(labels, message):
    with pytest.raises(ValueError, match=message):
        as_class_indices(labels)


@pytest.mark.parametrize("labels, message", REFUSED[:4])
def test_every_boundary_applies_the_same_rules(tmp_path, labels, message):
    n = len(labels)
    acts = torch.rand(n, 2)
    with pytest.raises(ValueError, match=message):
        binned_mi(acts, labels, bins=5, range=(0, 1))
    with pytest.raises(ValueError, match=message):
        infoplane.Tracker(nn.Linear(2, 2), acts, labels)
    np.savez(tmp_path / "d.npz", inputs=np.random.rand(n, 2), labels=np.asarray(labels))
    with pytest.raises(ValueError, match=message):
        load_npz(tmp_path / "d.npz")


def test_a_column_of_indices_is_read_as_indices_at_every_boundary(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 64)
    acts = torch.rand(64, 2)
    flat = binned_mi(acts, y, bins=5, range=(0, 1))
    column = binned_mi(acts, y[:, None], bins=5, range=(0, 1))
    assert float(column.ity) == float(flat.ity) and float(column.ixt) == float(flat.ixt)
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    t = infoplane.Tracker(net, acts, torch.as_tensor(y[:, None]), schedule=[0])
    t.step(0)
    t.close()
    assert t.run.n == 64 and t.run.meta["n_classes"] == 3
    np.savez(tmp_path / "d.npz", inputs=acts.numpy(), labels=y[:, None])
    assert load_npz(tmp_path / "d.npz")[1].tolist() == y.tolist()
    batched = as_class_indices(np.stack([y, y])[..., None], n=64, batch_shape=(2,))
    assert batched.indices.shape == (2, 64) and batched.indices[1].tolist() == y.tolist()


def test_class_names_reach_meta_and_the_estimates_match_indices(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(30, 2)
    names = np.array(["yes", "no", "maybe"])[np.arange(30) % 3]
    idx = np.searchsorted(["maybe", "no", "yes"], names)
    with infoplane.Tracker(model, x, names, out=tmp_path / "a") as t:
        t.step(0)
    with infoplane.Tracker(model, x, idx, out=tmp_path / "b") as t:
        t.step(0)
    a, b = infoplane.load_run(tmp_path / "a"), infoplane.load_run(tmp_path / "b")
    assert a.class_names == ["maybe", "no", "yes"] and b.class_names is None
    np.testing.assert_array_equal(a.ixt, b.ixt)
    np.testing.assert_array_equal(a.ity, b.ity)
    np.testing.assert_array_equal(binned_mi(x.numpy(), names, bins=5, range=(-3, 3)).ity,
                                  binned_mi(x.numpy(), idx, bins=5, range=(-3, 3)).ity)


def test_one_hot_and_float_labels_are_accepted_by_the_tracker(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(20, 2)
    y = torch.arange(20) % 2
    runs = []
    for i, labels in enumerate([y, torch.nn.functional.one_hot(y), y.double()]):
        with infoplane.Tracker(model, x, labels, out=tmp_path / str(i)) as t:
            t.step(0)
        runs.append(infoplane.load_run(tmp_path / str(i)))
    for r in runs[1:]:
        np.testing.assert_array_equal(r.ity, runs[0].ity)


def test_load_npz_returns_class_names(tmp_path):
    np.savez(tmp_path / "d.npz", inputs=np.random.rand(4, 2), labels=np.array(["b", "a", "b", "c"]))
    x, y, names = load_npz(tmp_path / "d.npz", return_names=True)
    assert y.tolist() == [1, 0, 1, 2] and names == ["a", "b", "c"]

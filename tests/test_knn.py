"""ksg_mi / ross_mi against scikit-learn (1-D), plain scipy cKDTree versions (d-D), and closed forms."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma
from sklearn.feature_selection._mutual_info import _compute_mi_cc, _compute_mi_cd
from torch import nn

import infoplane
from infoplane.estimators import KNN, from_settings, ksg_mi, ross_mi

LN2 = math.log(2)


# ------------------------------------------------------------------ plain references written here (nats)
def ksg_ckdtree(x, y, k=3):
    """KSG algorithm 1, max-norm, with scipy KD-trees: strict counts through a radius just below eps."""
    n = len(x)
    xy = np.hstack([x, y])
    eps = cKDTree(xy).query(xy, k=k + 1, p=np.inf)[0][:, -1]
    r = np.nextafter(eps, 0)
    nx = cKDTree(x).query_ball_point(x, r, p=np.inf, return_length=True) - 1
    ny = cKDTree(y).query_ball_point(y, r, p=np.inf, return_length=True) - 1
    return digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1))


def ross_ckdtree(c, d, k=3):
    """Ross 2014 as scikit-learn does it, with max-norm KD-trees in d dimensions."""
    n = len(c)
    radius, k_all, counts = np.zeros(n), np.zeros(n), np.zeros(n)
    for label in np.unique(d):
        mask = d == label
        cnt = mask.sum()
        if cnt > 1:
            kk = min(k, cnt - 1)
            dist = cKDTree(c[mask]).query(c[mask], k=kk + 1, p=np.inf)[0]
            radius[mask] = np.nextafter(dist.reshape(cnt, -1)[:, -1], 0)
            k_all[mask] = kk
        counts[mask] = cnt
    keep = counts > 1
    c, radius, k_all, counts = c[keep], radius[keep], k_all[keep], counts[keep]
    m = cKDTree(c).query_ball_point(c, radius, p=np.inf, return_length=True)
    return digamma(keep.sum()) + np.mean(digamma(k_all)) - np.mean(digamma(counts)) - np.mean(digamma(m))


# ------------------------------------------------------------------ exact agreement
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_equals_sklearn_on_1d(seed):
    rng = np.random.default_rng(seed)
    n = 300 + 50 * seed
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    ref = _compute_mi_cc(x, y, 3)
    assert ref > 0  # sklearn clips at 0: compare only where it did not
    assert float(ksg_mi(x[:, None], y[:, None], k=3).mi) == pytest.approx(ref / LN2, abs=1e-9)
    labels = (x + rng.normal(size=n) > 0).astype(int) + 2 * (rng.random(n) < 0.2)
    labels[:2] = [7, 8]  # two singleton classes: dropped
    labels[2:4] = 9       # a class of two: k capped at 1
    for k in (1, 3, 5):
        ref = _compute_mi_cd(x, labels, k)
        assert ref > 0
        assert float(ross_mi(x[:, None], labels, k=k).mi) == pytest.approx(ref / LN2, abs=1e-9)


@pytest.mark.parametrize("seed,da,db", [(0, 3, 2), (1, 5, 4), (2, 1, 6)])
def test_equals_ckdtree_reference_in_d_dims(seed, da, db):
    rng = np.random.default_rng(seed)
    n = 500
    a = rng.normal(size=(n, da))
    b = np.tanh(a[:, :1] + rng.normal(size=(n, db)))
    for k in (1, 3, 4):
        assert float(ksg_mi(a, b, k=k).mi) == pytest.approx(ksg_ckdtree(a, b, k) / LN2, abs=1e-9)
    labels = rng.integers(0, 4, size=n) + (a[:, 0] > 0.5)
    labels[0] = 10  # singleton
    assert float(ross_mi(b, labels, k=3).mi) == pytest.approx(ross_ckdtree(b, labels, 3) / LN2, abs=1e-9)
    # independent data: the unclipped reference may be negative, and so may infoplane's
    c = rng.normal(size=(n, db))
    assert float(ksg_mi(a, c).mi) == pytest.approx(ksg_ckdtree(a, c) / LN2, abs=1e-9)


def test_invariant_to_sample_order_and_batched_equals_single():
    rng = np.random.default_rng(5)
    n = 400
    a = rng.normal(size=(n, 3))
    b = np.stack([a[:, :2] * s + rng.normal(size=(n, 2)) for s in (0.5, 1.0, 2.0)])  # [3, N, 2]
    y = (a[:, 0] > 0).astype(int) + (a[:, 1] > 1)
    perm = rng.permutation(n)
    batched = ksg_mi(a, b).mi  # a shared by the three items
    assert batched.shape == (3,)
    for i in range(3):
        single = float(ksg_mi(a, b[i]).mi)
        assert float(batched[i]) == pytest.approx(single, abs=1e-12)
        assert float(ksg_mi(a[perm], b[i][perm]).mi) == pytest.approx(single, abs=1e-12)
        assert float(ross_mi(b[i][perm], y[perm]).mi) == pytest.approx(float(ross_mi(b[i], y).mi), abs=1e-12)
    r = ross_mi(torch.from_numpy(b).reshape(3, 1, n, 2), y)
    assert r.mi.shape == (3, 1)
    small = ksg_mi(a, b[0], memory_budget=4096)  # many small blocks: the same sums
    assert float(small.mi) == pytest.approx(float(batched[0]), abs=1e-12)


# ------------------------------------------------------------------ known answers
@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_correlated_gaussians_closed_form(d):
    # I = -1/2 sum log2(1 - rho_i^2). Stated tolerance at N = 4096, k = 3: at most 0.04 bits above the truth and
    # 0.04 bits + 15% of the truth below it (KSG's known downward bias grows with d: about -0.15 bits at d = 4).
    rng = np.random.default_rng(10 + d)
    n = 4096
    rho = np.full(d, 0.6)
    x = rng.normal(size=(n, d))
    y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=(n, d))
    truth = -0.5 * np.log2(1 - rho**2).sum()
    err = float(ksg_mi(x, y).mi) - truth
    assert -0.04 - 0.15 * truth <= err <= 0.04


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_ross_closed_form(d):
    # Y in {0, 1}; T | Y uniform on the unit cube shifted by Y/2 along its first axis: I = 1/2 bit for any d
    # (the overlap [0.5, 1] holds half the mass and says nothing about Y; the other axes are pure noise).
    rng = np.random.default_rng(20 + d)
    n = 4096
    y = rng.integers(0, 2, size=n)
    t = rng.random(size=(n, d))
    t[:, 0] += 0.5 * y
    assert float(ross_mi(t, y).mi) == pytest.approx(0.5, abs=0.05)


def test_independence_is_near_zero_and_not_clipped():
    vals = []
    for seed in range(3):
        rng = np.random.default_rng(30 + seed)
        x, y = rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2))
        labels = rng.integers(0, 3, size=1000)
        vals += [float(ksg_mi(x, y).mi), float(ross_mi(x, labels).mi)]
    assert max(abs(v) for v in vals) < 0.06
    assert min(vals) < 0  # bias shows up as negative values: nothing clips them


# ------------------------------------------------------------------ ties
def test_ties_from_relu_zeros_and_discrete_data():
    rng = np.random.default_rng(7)
    n = 600
    # discrete X = Y with 4 equiprobable values: every radius is 0, the tie rule gives the plug-in 2 bits
    v = rng.integers(0, 4, size=n).astype(float)[:, None]
    assert float(ksg_mi(v, v).mi) == pytest.approx(2.0, abs=0.02)
    # independent discrete X, Y: about 0 (the rule's digamma terms are O(1 / cell size): cells of ~50 here)
    w = rng.integers(0, 3, size=n).astype(float)[:, None]
    assert abs(float(ksg_mi(v, w).mi)) < 0.04
    # a layer that is a function of the class, with exact duplicates: Ross gives H(Y)
    y = rng.integers(0, 2, size=n)
    t = np.stack([y * 1.0, 1.0 - y], 1)
    p = np.bincount(y) / n
    assert float(ross_mi(t, y).mi) == pytest.approx(-(p * np.log2(p)).sum(), abs=0.02)
    # ReLU layer: half the values exactly 0; finite, and equal to the reference where no radius is 0
    x = rng.normal(size=(n, 3))
    h = np.maximum(x @ rng.normal(size=(3, 4)), 0)
    r = float(ksg_mi(x, h).mi)
    assert math.isfinite(r)
    assert r == pytest.approx(ksg_ckdtree(x, h) / LN2, abs=1e-9)  # x continuous: no joint radius is 0
    assert math.isfinite(float(ross_mi(h, y).mi))


# ------------------------------------------------------------------ errors and config object
def test_bad_inputs():
    a = np.zeros((10, 2))
    with pytest.raises(ValueError, match="k = 10"):
        ksg_mi(a, a, k=10)
    with pytest.raises(ValueError, match="different numbers of samples"):
        ksg_mi(a, np.zeros((9, 2)))
    with pytest.raises(ValueError, match="single sample"):
        ross_mi(a, np.arange(10))
    with pytest.raises(ValueError, match="NaN"):
        ksg_mi(a, np.full((10, 1), np.nan))
    with pytest.raises(ValueError, match="inputs"):
        KNN()(np.zeros((2, 10, 3)), np.arange(10) % 2)


def test_config_object_and_tracker():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(256, 4)))
    acts = torch.tanh(x @ torch.from_numpy(rng.normal(size=(4, 3))))[None].repeat(2, 1, 1)
    y = (x[:, 0] > 0).long()
    est = KNN(k=4, inputs=x)
    r = est(acts, y)
    assert r.ixt.shape == (2,)
    assert float(r.ixt[0]) == float(ksg_mi(x, acts[0], k=4).mi)
    assert float(r.ity[1]) == float(ross_mi(acts[1], y, k=4).mi)
    assert est.settings() == {"kind": "knn", "name": "knn", "k": 4}
    rebuilt = from_settings(est.settings())
    assert rebuilt == est and rebuilt.inputs is None
    assert float(rebuilt(acts, y, inputs=x).ixt[1]) == float(r.ixt[1])
    # the tracker hands the probe inputs to estimators that declare needs_inputs
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    xf = x.float()
    with infoplane.Tracker(net, xf, y, estimators=[KNN(), infoplane.Renyi()], schedule=[0]) as t:
        t.step(0)
    with torch.no_grad():
        h = torch.tanh(net[0](xf))
    row = [r for r in t.run.rows if r.layer == "1" and r.estimator == "knn"][0]
    assert row.ixt == pytest.approx(float(ksg_mi(xf, h).mi), abs=1e-12)
    assert row.ity == pytest.approx(float(ross_mi(h, y).mi), abs=1e-12)


@pytest.mark.parametrize("k", [True, 0, 1.5, "3"])
def test_k_must_be_a_positive_integer(k):
    x, y = torch.rand(20, 2), torch.arange(20) % 2
    for call in (lambda: ksg_mi(x, x, k=k), lambda: ross_mi(x, y, k=k), lambda: KNN(k=k)):
        with pytest.raises(ValueError, match="k must be a positive integer; got"):
            call()

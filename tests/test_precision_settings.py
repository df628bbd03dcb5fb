"""Estimators under every reduced-precision matmul setting: exact binning keys, unchanged KDE, no global state.

These CPUs ignore the TF32/bf16 settings, so the fixture also emulates what a GPU (or an AMX CPU) does when the
settings allow it: float32 matrix-product inputs are rounded to bfloat16 (the coarsest of the permitted formats)
whenever the settings in force at the moment of the product permit reduced precision. Float64 products are never
affected, as on real hardware. Every setting is restored afterwards, and checked to be.
"""
import math
import threading

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from sklearn.metrics import mutual_info_score

from infoplane.estimators import binned_mi, discrete_mi, kde_mi
from infoplane.estimators import kde as kde_module

LN2 = math.log(2)
B = torch.backends
_OBJECTS = [(name, obj) for name, obj in (
    ("backends", B), ("cuda.matmul", B.cuda.matmul), ("cudnn", B.cudnn), ("cudnn.conv", getattr(B.cudnn, "conv", None)),
    ("cudnn.rnn", getattr(B.cudnn, "rnn", None)), ("mkldnn", B.mkldnn), ("mkldnn.matmul", getattr(B.mkldnn, "matmul", None)),
    ("mkldnn.conv", getattr(B.mkldnn, "conv", None)), ("mkldnn.rnn", getattr(B.mkldnn, "rnn", None)),
) if obj is not None and hasattr(obj, "fp32_precision")]


def snapshot():
    """Every precision flag, read through the new API (the state the legacy getters derive from)."""
    return {name: obj.fp32_precision for name, obj in _OBJECTS}


def legacy_view():
    out = {}
    for key, get in (("matmul_precision", torch.get_float32_matmul_precision),
                     ("cuda_allow_tf32", lambda: B.cuda.matmul.allow_tf32),
                     ("cudnn_allow_tf32", lambda: B.cudnn.allow_tf32)):
        try:
            out[key] = get()
        except RuntimeError as err:  # a mixed legacy/new state: the message itself identifies it
            out[key] = str(err)[:60]
    return out


def restore(snap):
    for name, obj in _OBJECTS:  # general before specific
        obj.fp32_precision = snap[name]


def _set(obj, attr, value):
    setattr(obj, attr, value)


SETTINGS = {
    "default": [],
    "high": [lambda: torch.set_float32_matmul_precision("high")],
    "medium": [lambda: torch.set_float32_matmul_precision("medium")],
    "legacy-allow-tf32": [lambda: _set(B.cuda.matmul, "allow_tf32", True), lambda: _set(B.cudnn, "allow_tf32", True)],
    "cuda-matmul-tf32": [lambda: _set(B.cuda.matmul, "fp32_precision", "tf32")],
    "mkldnn-matmul-bf16": [lambda: _set(B.mkldnn.matmul, "fp32_precision", "bf16")],
    "all-backends-tf32": [lambda: _set(B, "fp32_precision", "tf32")],
    "mixed": [lambda: torch.set_float32_matmul_precision("medium"),
              lambda: _set(B.cuda.matmul, "fp32_precision", "tf32"),
              lambda: _set(B.mkldnn.matmul, "fp32_precision", "bf16"),
              lambda: _set(B.cudnn.conv, "fp32_precision", "ieee")],
}


def _reduced_allowed():
    """Whether the settings in force now let a float32 matrix product use TF32/bf16 arithmetic somewhere."""
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return True
        if B.cuda.matmul.allow_tf32:
            return True
    except RuntimeError:  # mixed legacy/new state: some backend has a reduced setting
        return True
    return any(obj.fp32_precision in ("tf32", "bf16") for name, obj in _OBJECTS if "conv" not in name
               and "rnn" not in name)


def _emulated(fn):
    def wrapper(*args, **kwargs):
        if _reduced_allowed():
            args = [a.to(torch.bfloat16).to(torch.float32) if isinstance(a, torch.Tensor)
                    and a.dtype == torch.float32 else a for a in args]
        return fn(*args, **kwargs)
    return wrapper


@pytest.fixture(params=list(SETTINGS))
def precision(request, monkeypatch):
    saved = snapshot()
    for name in ("mm", "matmul", "bmm", "addmm", "einsum"):
        monkeypatch.setattr(torch, name, _emulated(getattr(torch, name)))
    for name in ("mm", "matmul", "__matmul__"):
        monkeypatch.setattr(torch.Tensor, name, _emulated(getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.nn.functional, "linear", _emulated(torch.nn.functional.linear))
    try:
        for apply in SETTINGS[request.param]:
            apply()
        yield request.param
    finally:
        restore(saved)
        assert snapshot() == saved


# ---------------------------------------------------------------- oracles
def binned_oracle(a, labels, bins):
    edges = np.linspace(-1, 1, bins).astype(np.float32)
    cells = edges[np.digitize(a, edges) - 1]
    codes = np.unique(cells, axis=0, return_inverse=True)[1].ravel()
    return mutual_info_score(codes, codes) / LN2, mutual_info_score(codes, labels) / LN2


def kde_oracle(h, labels, s2):
    """float64 numpy: (upper ixt, upper ity, lower ixt, lower ity) in bits."""
    def one(x, div):
        d = cdist(x, x, "sqeuclidean")
        return -np.mean(logsumexp(-d / (div * s2), axis=1) - np.log(len(x)))
    out = []
    for div in (2.0, 8.0):
        ixt = one(h, div)
        cond = sum((labels == c).mean() * one(h[labels == c], div) for c in np.unique(labels))
        out += [ixt / LN2, (ixt - cond) / LN2]
    return out


def _data(seed, n=160, d=5):
    rng = np.random.default_rng(seed)
    a = np.tanh(rng.normal(scale=1.5, size=(2, n, d))).astype(np.float32)
    return a, rng.integers(0, 3, size=n)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("d", [3, 5])
def test_binning_keys_stay_exact(precision, d):
    # With 100 symbols per unit the place value of the third unit is 100**2 = 10000, not a bf16 number (8
    # significant bits; it rounds to 9984): a float product would give the rows with cells (84, 99, 0) and
    # (0, 0, 1) the same key 9984. Digit k is the cell [e_(k-1), e_k); digit 0 the shared overflow cell.
    bins = 100
    edges = np.linspace(-1, 1, bins).astype(np.float32)
    mid = lambda k: (edges[k - 1] + edges[k]) / 2  # noqa: E731
    a, labels = _data(d, n=200, d=d)
    a[:, :50, :3] = [mid(84), mid(99), np.float32(1.5)]
    a[:, 50:100, :3] = [np.float32(1.5), np.float32(1.5), mid(1)]
    a[:, :100, 3:] = 0.5
    r = binned_mi(torch.from_numpy(a), torch.from_numpy(labels), bins=bins, range=(-1, 1))
    for b in range(2):
        ixt, ity = binned_oracle(a[b], labels, bins)
        assert abs(float(r.ixt[b]) - ixt) < 1e-9 and abs(float(r.ity[b]) - ity) < 1e-9


@pytest.mark.parametrize("kde_precision,tol", [("float32", 1e-4), ("float64", 1e-9)])
def test_kde_is_unaffected_and_settings_untouched(precision, kde_precision, tol):
    a, labels = _data(1)
    before, legacy = snapshot(), legacy_view()
    r = kde_mi(torch.from_numpy(a), torch.from_numpy(labels), noise_var=0.05, precision=kde_precision)
    assert snapshot() == before and legacy_view() == legacy
    for b in range(2):
        want = kde_oracle(a[b].astype(np.float64), labels, 0.05)
        got = [float(r.ixt[b]), float(r.ity[b]), float(r.ixt_lower[b]), float(r.ity_lower[b])]
        assert np.allclose(got, want, rtol=0, atol=tol)


def test_kde_float32_distances_match_float64_under_every_setting(precision):
    # The float32 route forms its distances without a matrix product: every setting leaves it within 1e-5 bits of
    # the float64 route, on the CPU's worker threads and on the route other devices take (run here on the CPU).
    a, labels = _data(3, n=120, d=4)
    a[1] = np.round(a[1], 1)  # tied rows: distances of exactly 0 between different samples
    r64 = kde_mi(torch.from_numpy(a), torch.from_numpy(labels), noise_var=1e-3, precision="float64")
    r32 = kde_mi(torch.from_numpy(a), torch.from_numpy(labels), noise_var=1e-3)
    h = torch.from_numpy(a[0])
    y, order = torch.sort(torch.from_numpy(labels), stable=True)
    bounds = [0] + torch.cumsum(torch.bincount(y), 0).tolist()
    on_device = kde_module.direct_kernel_sums(h[order] - h.mean(dim=0), y, bounds, 1 / 8e-3, 2**20).double()
    for b in range(2):
        want = kde_oracle(a[b].astype(np.float64), labels, 1e-3)
        for r in (r64, r32):
            got = [float(r.ixt[b]), float(r.ity[b]), float(r.ixt_lower[b]), float(r.ity_lower[b])]
            assert np.allclose(got, want, rtol=0, atol=1e-5 if r is r32 else 1e-9)
    # the device route's log kernel sums against numpy's: log sum_j exp(-D_ij / (8 s^2)) over all j and own class
    h0 = a[0][order.numpy()].astype(np.float64)
    d = cdist(h0, h0, "sqeuclidean")
    own = y.numpy()[:, None] == y.numpy()[None, :]
    for b, div in enumerate((8.0, 2.0)):
        every = logsumexp(-d / (div * 1e-3), axis=1)
        mine = logsumexp(np.where(own, -d / (div * 1e-3), -np.inf), axis=1)
        assert np.allclose(on_device[b, 0].numpy(), every, rtol=0, atol=1e-5)
        assert np.allclose(on_device[b, 1].numpy(), mine, rtol=0, atol=1e-5)


def test_no_estimator_changes_global_settings(precision):
    a, labels = _data(2)
    before, legacy = snapshot(), legacy_view()
    binned_mi(a, labels, bins=30, range=(-1, 1))
    binned_mi(a, labels, width=0.1, miller_madow=True)
    discrete_mi(np.round(a, 1), labels)
    kde_mi(a, labels, noise_var=0.1)
    assert snapshot() == before and legacy_view() == legacy


@pytest.mark.parametrize("setting", ["medium", "mixed"])
def test_two_threads_at_once_equal_sequential(setting, monkeypatch):
    # Estimators that set and restore a global flag interleave their saves and restores across threads, leaving
    # the wrong value behind (and each other's products in the wrong precision).
    saved = snapshot()
    try:
        for name in ("mm", "matmul"):
            monkeypatch.setattr(torch, name, _emulated(getattr(torch, name)))
        for apply in SETTINGS[setting]:
            apply()
        inside = snapshot()
        jobs = [_data(10 + k, n=600, d=6) for k in range(2)]

        def run(a, labels):
            return (kde_mi(a, labels, noise_var=0.05), binned_mi(a, labels, bins=30, range=(-1, 1)))

        sequential = [run(*job) for job in jobs]
        results = [None, None]
        barrier = threading.Barrier(2)

        def worker(k):
            barrier.wait()
            results[k] = run(*jobs[k])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert snapshot() == inside
        for (k_seq, b_seq), (k_par, b_par) in zip(sequential, results):
            for field in ("ixt", "ity", "ixt_lower", "ity_lower"):
                assert torch.equal(getattr(k_seq, field), getattr(k_par, field))
            assert torch.equal(b_seq.ixt, b_par.ixt) and torch.equal(b_seq.ity, b_par.ity)
    finally:
        restore(saved)


def test_huge_float32_activations_give_finite_kde_and_overflow_names_the_item():
    rng = np.random.default_rng(3)
    a = (rng.normal(size=(3, 50, 4)) * 3e19).astype(np.float32)
    labels = rng.integers(0, 2, size=50)
    r = kde_mi(a, labels, noise_var=1e-3)
    r64 = kde_mi(a, labels, noise_var=1e-3, precision="float64")
    for field in ("ixt", "ity", "ixt_lower", "ity_lower"):
        got = getattr(r, field)
        assert torch.isfinite(got).all()
        assert torch.allclose(got, getattr(r64, field), rtol=0, atol=1e-4)
    # points this far apart relative to the noise are resolved completely: log2 N and H(Y)
    p = np.bincount(labels) / 50
    assert torch.allclose(r.ixt, torch.full((3,), math.log2(50), dtype=torch.float64), atol=1e-9)
    assert torch.allclose(r.ity, torch.full((3,), float(-(p * np.log2(p)).sum()), dtype=torch.float64), atol=1e-9)
    big = np.tanh(rng.normal(size=(2, 2, 40, 3)))
    big[1, 0] *= 1e200  # squared distances overflow even float64
    with pytest.raises(ValueError, match=r"batch index \(1, 0\)"):
        kde_mi(big, rng.integers(0, 2, size=40), noise_var=0.1)


def test_kde_estimates_are_clamped_to_their_range():
    # far apart points: every estimate reaches its ceiling, where rounding used to overshoot
    for n in (7, 10, 13, 20, 49, 97):
        pts = np.arange(n, dtype=np.float64)[:, None] * 100.0
        labels = np.arange(n) % 3
        p = np.bincount(labels) / n
        h_y = float(-(p * np.log2(p)).sum())
        r = kde_mi(pts, labels, noise_var=1e-3)
        for ixt in (float(r.ixt), float(r.ixt_lower)):
            assert 0.0 <= ixt <= math.log2(n) and ixt == pytest.approx(math.log2(n), abs=1e-12)
        for ity in (float(r.ity), float(r.ity_lower)):
            assert 0.0 <= ity <= h_y and ity == pytest.approx(h_y, abs=1e-12)
    # huge noise: everything near 0, never below
    r = kde_mi(np.random.default_rng(0).normal(size=(30, 2)), np.arange(30) % 2, noise_var=1e8)
    assert all(0.0 <= float(v) < 1e-6 for v in (r.ixt, r.ity, r.ixt_lower, r.ity_lower))

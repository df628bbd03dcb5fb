"""The compiled counting kernel: the same bits as the numpy and torch routes, and the plain oracles of this file.

The fixed-range grid on CPU runs through a small C kernel where a compiler exists (``_count_kernel``), through
numpy passes where not (``_range_rows``), and everything else (other grids, GPUs) through torch
(``binning.row_keys`` and ``_entropy.plugin_counts``). All three sum c log2 c in the one order of
``_entropy.sum_xlogx``, so they must agree exactly, not just closely. ``discrete_mi`` (rows of exact values)
runs through the same kernel on CPU, else through the generic route.
"""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from infoplane._native import build as _native
from infoplane.estimators import binned_mi, discrete_mi
from infoplane.estimators._cpu import count_kernel as _count_kernel
from infoplane.estimators._cpu import range_rows as _range_rows
from infoplane.estimators._entropy import sum_xlogx

# Skipped only where the kernel cannot exist; where a compiler works, a kernel that fails to build fails these tests.
NO_KERNEL_HERE = _native.compiler() is None or _native.disabled()


@pytest.fixture
def built_kernel():
    lib = _count_kernel.load()
    assert not isinstance(lib, str), f"the counting kernel did not build although a compiler exists: {lib}"


def needs_kernel(test):
    marked = pytest.mark.usefixtures("built_kernel")(test)
    return pytest.mark.skipif(NO_KERNEL_HERE, reason="no C compiler here, or INFOPLANE_NO_NATIVE is set")(marked)


def oracle(a, labels, bins, lo, hi):
    """np.digitize with the original's wrap-around indexing, np.unique rows, sklearn's MI; and the cell counts."""
    edges = np.linspace(lo, hi, bins).astype(np.float32)
    cells = edges[np.digitize(a, edges) - 1]
    codes = np.unique(cells, axis=0, return_inverse=True)[1].ravel()
    pairs = np.unique(np.stack([codes, labels], 1), axis=0)
    return (mutual_info_score(codes, codes) / math.log(2), mutual_info_score(codes, labels) / math.log(2),
            len(np.unique(codes)), len(pairs))


def routes(monkeypatch, a, labels, **kw):
    """binned_mi through the kernel, the numpy route and the generic route (row_keys and plugin_counts)."""
    out = {"kernel": binned_mi(a, labels, **kw)}
    with monkeypatch.context() as m:
        m.setattr(_count_kernel, "_LOADED", "switched off for this test")
        if _range_rows.fits(kw["bins"], a.shape[-1], max(1, int(np.max(labels)).bit_length())):
            out["numpy"] = binned_mi(a, labels, **kw)
        m.setattr(_range_rows, "fits", lambda *args: False)
        out["generic"] = binned_mi(a, labels, **kw)
    return out


def test_the_kernel_is_built_where_a_compiler_exists():
    if NO_KERNEL_HERE:
        pytest.skip("no C compiler on this machine (or INFOPLANE_NO_NATIVE): the numpy route runs, as the other "
                    "tests check")
    assert not isinstance(_count_kernel.load(), str), _count_kernel.load()


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d,bins,classes,per_item", [(1, 30, 2, False), (2, 30, 3, True), (5, 30, 10, False),
                                                     (11, 30, 2, True), (3, 1000, 4, False), (7, 5, 2, False),
                                                     (4, 30, 40, True),  # > 16 classes: the two-pass count
                                                     (13, 30, 2, False), (64, 30, 3, True)])  # rows hashed
def test_every_route_gives_the_same_bits_and_the_oracle(monkeypatch, dtype, d, bins, classes, per_item):
    rng = np.random.default_rng(d * 100 + bins)
    n = 500
    a = np.tanh(rng.normal(scale=1.5, size=(4, n, d))).astype(dtype)
    a[:, :60] = a[:, 60:120]                      # repeated rows, so that cells hold several samples
    a[:, 120:130, 0] = 1.0                        # on the last edge
    a[:, 130:140, -1] = -1.0 - rng.random(10)     # below the range: shares the overflow cell
    a[:, 140:150, 0] = 3.0                        # above the range
    labels = rng.integers(0, classes, size=(4, n) if per_item else n)
    for mm in (False, True):
        got = routes(monkeypatch, a, labels, bins=bins, range=(-1, 1), miller_madow=mm)
        for name in set(got) - {"kernel"}:
            assert torch.equal(got["kernel"].ixt, got[name].ixt), name
            assert torch.equal(got["kernel"].ity, got[name].ity), name
        for b in range(4):
            ixt, ity, k_t, k_ty = oracle(a[b], labels[b] if per_item else labels, bins, -1, 1)
            if mm:  # the Miller-Madow terms, from the oracle's cell counts, before the clamps
                ixt = min(math.log2(n), ixt + (k_t - 1) / (2 * n * math.log(2)))
                present = len(np.unique(labels[b] if per_item else labels))
                h_y = mutual_info_score(*(2 * [labels[b] if per_item else labels])) / math.log(2)
                ity = min(h_y, max(0.0, ity + (k_t - 1 - (k_ty - present)) / (2 * n * math.log(2))))
            assert float(got["kernel"].ixt[b]) == pytest.approx(ixt, abs=1e-9)
            assert float(got["kernel"].ity[b]) == pytest.approx(ity, abs=1e-9)


@needs_kernel
def test_the_sums_do_not_depend_on_the_order_of_the_rows():
    # The kernel's hash slots, like a GPU's atomics, visit cells in an order that follows the rows: the result
    # must not.
    rng = np.random.default_rng(5)
    a = np.round(np.tanh(rng.normal(size=(1, 4000, 3))), 1).astype(np.float32)  # few cells, many samples each
    y = rng.integers(0, 2, size=4000)
    perm = rng.permutation(4000)
    r1, r2 = binned_mi(a, y, bins=30, range=(-1, 1)), binned_mi(a[:, perm], y[perm], bins=30, range=(-1, 1))
    assert torch.equal(r1.ixt, r2.ixt) and torch.equal(r1.ity, r2.ity)


def test_sum_xlogx_is_the_exact_sum_to_rounding():
    rng = np.random.default_rng(6)
    n = 1000
    hist = np.zeros((3, n + 1), dtype=np.int64)
    for b in range(3):
        counts = rng.multinomial(n, rng.dirichlet(np.ones(40 * (b + 1))))
        np.add.at(hist[b], counts[counts > 0], 1)
        exact = math.fsum(float(c) * math.log2(c) for c in counts if c > 0)
        assert sum_xlogx(hist, n)[b] == pytest.approx(exact, rel=1e-14)


@needs_kernel
@pytest.mark.parametrize("dtype, bad, kind", [(np.float64, np.nan, "NaN"), (np.float32, -np.inf, "inf")])
def test_the_kernel_names_the_first_item_that_is_not_finite(dtype, bad, kind):
    a = np.tanh(np.random.default_rng(7).normal(size=(3, 4, 50, 2))).astype(dtype)
    a[2, 0, 7, 1] = bad
    a[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match=rf"{kind} at batch index \(1, 2\)"):
        binned_mi(a, np.arange(50) % 2, bins=30, range=(-1, 1))


def test_without_a_compiler_the_numpy_route_runs(monkeypatch):
    rng = np.random.default_rng(8)
    a = np.tanh(rng.normal(size=(2, 300, 4))).astype(np.float32)
    y = rng.integers(0, 2, size=300)
    before = binned_mi(a, y, bins=30, range=(-1, 1))
    monkeypatch.setattr(_count_kernel, "_LOADED", None)
    monkeypatch.setattr(_native, "compiler", lambda: None)
    monkeypatch.delenv(_native.NO_NATIVE_ENV, raising=False)
    with pytest.warns(_count_kernel.KernelFallbackWarning, match="no C compiler found .* same results"):
        assert "no C compiler" in _count_kernel.load()
    after = binned_mi(a, y, bins=30, range=(-1, 1))
    assert torch.equal(before.ixt, after.ixt) and torch.equal(before.ity, after.ity)


def test_a_source_that_does_not_compile_gives_the_reason(tmp_path, monkeypatch):
    if _native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(_native.NO_NATIVE_ENV, raising=False)
    reason = _native.build("broken", "this is not C;", _native.compiler())
    assert isinstance(reason, str) and reason.startswith("compiling the broken kernel with")


@needs_kernel
def test_a_large_probe_set_with_many_classes_gives_the_same_bits(monkeypatch):
    # 2**18 rows and 16 classes would need 2**23 per-label counters per thread: the kernel counts in two passes
    # instead (bounded memory), with the same results.
    rng = np.random.default_rng(9)
    n = 2**18
    a = np.tanh(rng.normal(size=(1, n, 2))).astype(np.float32)
    labels = rng.integers(0, 16, size=n)
    got = routes(monkeypatch, a, labels, bins=30, range=(-1, 1))
    assert torch.equal(got["kernel"].ixt, got["numpy"].ixt) and torch.equal(got["kernel"].ity, got["numpy"].ity)
    ixt, ity, _, _ = oracle(a[0], labels, 30, -1, 1)
    assert float(got["kernel"].ixt[0]) == pytest.approx(ixt, abs=1e-9)
    assert float(got["kernel"].ity[0]) == pytest.approx(ity, abs=1e-9)


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d,levels,classes", [(1, 5, 2), (3, 4, 3), (10, 3, 2), (6, 9, 40)])
def test_exact_rows_match_the_generic_route_and_sklearn(monkeypatch, dtype, d, levels, classes):
    rng = np.random.default_rng(d * 10 + levels)
    n = 600
    a = (rng.integers(0, levels, size=(3, n, d)) / (levels - 1) * 2 - 1).astype(dtype)  # quantised values
    a[0, :50] = -0.0 * a[0, :50]          # zeros of both signs: equal values, one symbol
    a[1, 10:20, -1] += np.finfo(dtype).eps  # rows that differ in one unit by one ulp stay distinct
    labels = rng.integers(0, classes, size=n)
    for mm in (True, False):
        kernel = discrete_mi(a, labels, miller_madow=mm)
        with monkeypatch.context() as m:
            m.setattr(_count_kernel, "_LOADED", "switched off for this test")
            generic = discrete_mi(a, labels, miller_madow=mm)
        assert torch.equal(kernel.ixt, generic.ixt) and torch.equal(kernel.ity, generic.ity)
    for b in range(3):  # the plain estimate (the last one above) against sklearn on np.unique's row codes
        codes = np.unique(a[b] + 0.0, axis=0, return_inverse=True)[1].ravel()  # + 0.0 folds -0.0 into 0.0
        assert float(kernel.ixt[b]) == pytest.approx(mutual_info_score(codes, codes) / math.log(2), abs=1e-9)
        assert float(kernel.ity[b]) == pytest.approx(mutual_info_score(codes, labels) / math.log(2), abs=1e-9)


@needs_kernel
def test_exact_rows_of_one_item_all_distinct_reach_the_ceilings(monkeypatch):
    rng = np.random.default_rng(11)
    a = rng.normal(size=(2, 256, 3))
    labels = rng.integers(0, 2, size=256)
    r = discrete_mi(a, labels, miller_madow=True)
    p = np.bincount(labels) / 256
    assert torch.equal(r.ixt, torch.full((2,), 8.0, dtype=torch.float64))
    assert float(r.ity[0]) == float(r.ity[1]) == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-12)


@needs_kernel
def test_exact_rows_name_the_first_item_that_is_not_finite():
    a = np.zeros((4, 30, 2), dtype=np.float32)
    a[3, 1, 1] = np.nan
    a[2, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"inf at batch index \(2,\)"):
        discrete_mi(a, np.arange(30) % 2)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_pthread_build_gives_the_same_bits(monkeypatch, threads):
    # With torch on GNU OpenMP the kernel shares items among torch's OpenMP threads; elsewhere it starts pthreads.
    rng = np.random.default_rng(12)
    a = np.tanh(rng.normal(size=(7, 300, 4))).astype(np.float32)
    a[:, :50] = a[:, 50:100]
    y = rng.integers(0, 3, size=300)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(_count_kernel, "ROWS_PER_THREAD", 1)  # so small a call still gets every thread
    wide = np.tile(a, (1, 1, 4))  # 16 units: rows hashed on their cells
    default = (binned_mi(a, y, bins=30, range=(-1, 1)), binned_mi(wide, y, bins=30, range=(-1, 1)),
               discrete_mi(np.round(a, 1), y))
    monkeypatch.setattr(_count_kernel, "_LOADED", None)
    monkeypatch.setattr(_native, "openmp_flags", lambda: ())
    plain = (binned_mi(a, y, bins=30, range=(-1, 1)), binned_mi(wide, y, bins=30, range=(-1, 1)),
             discrete_mi(np.round(a, 1), y))
    for r1, r2 in zip(default, plain):
        assert torch.equal(r1.ixt, r2.ixt) and torch.equal(r1.ity, r2.ity)

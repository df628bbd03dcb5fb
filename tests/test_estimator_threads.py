"""Binning, KDE and KSG give the same numbers whatever the number of worker threads (torch's thread count).

On CPU both estimators share their blocks among as many worker threads as torch has intra-op threads. Binning
has two CPU routes for its fixed-range grid: the compiled kernel (where a C compiler exists) and the numpy route
(with one thread, torch passes over larger chunks). Every route and thread count must give bit-identical
results, and agree with plain oracles written here.
"""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score
from test_knn import ksg_ckdtree  # the plain cKDTree KSG of the k-NN tests (nats)

from infoplane.estimators import binned_mi, kde_mi, ksg_mi
from infoplane.estimators._cpu import count_kernel as _count_kernel
from infoplane.estimators._cpu import kde_blocks as _kde_blocks
from infoplane.estimators._cpu import range_rows as _range_rows


def binned_oracle(a, labels, bins, lo, hi):
    """np.digitize with the original's wrap-around indexing, np.unique row codes, sklearn's MI (bits)."""
    edges = np.linspace(lo, hi, bins).astype(np.float32)
    cells = edges[np.digitize(a, edges) - 1]
    codes = np.unique(cells, axis=0, return_inverse=True)[1].ravel()
    return mutual_info_score(codes, codes) / math.log(2), mutual_info_score(codes, labels) / math.log(2)


@pytest.fixture
def threads(monkeypatch):
    """Set the thread count the estimators read, for this test only (torch's own setting is left alone)."""
    def set_to(k):
        monkeypatch.setattr(torch, "get_num_threads", lambda: k)
    return set_to


@pytest.fixture(params=["kernel", "numpy"])
def route(request, monkeypatch):
    """Run the test on the compiled kernel's route and on the numpy route of the fixed-range grid."""
    # every call large enough for all the threads the test asks for
    monkeypatch.setattr(_count_kernel, "ROWS_PER_THREAD", 1)
    if request.param == "numpy":
        monkeypatch.setattr(_count_kernel, "_LOADED", "switched off for this test")
    elif isinstance(_count_kernel.load(), str):
        pytest.skip(f"no compiled binning kernel here: {_count_kernel.load()}")
    return request.param


@pytest.mark.parametrize("d,bins", [(2, 30), (3, 30), (6, 30), (9, 7)])
def test_binning_is_the_same_with_any_number_of_workers(threads, monkeypatch, route, d, bins):
    # small groups, so that several groups exist and each worker gets some (and one gets more than another)
    monkeypatch.setattr(_range_rows, "_GROUP_ROWS", 2 * 300)
    rng = np.random.default_rng(d)
    a = np.tanh(rng.normal(scale=2.0, size=(7, 300, d))).astype(np.float32)
    a[:, :40] = a[:, 40:80]  # duplicated rows
    a[:, :10, 0] = 1.0  # values on the last edge, and beyond the range
    a[:, 10:20, 0] = -1.5
    labels = rng.integers(0, 3, size=(7, 300))
    results = []
    for k in (1, 2, 3):
        threads(k)
        for mm in (False, True):
            results.append((k, mm, binned_mi(a, labels, bins=bins, range=(-1, 1), miller_madow=mm)))
    for _k, mm, r in results:
        same = next(r0 for k0, mm0, r0 in results if k0 == 1 and mm0 == mm)
        assert torch.equal(r.ixt, same.ixt) and torch.equal(r.ity, same.ity)
    plain = results[0][2]
    for b in range(7):
        ixt, ity = binned_oracle(a[b], labels[b], bins, -1, 1)
        assert abs(float(plain.ixt[b]) - ixt) < 1e-9 and abs(float(plain.ity[b]) - ity) < 1e-9


def test_binning_names_the_first_bad_item_with_workers(threads, monkeypatch, route):
    monkeypatch.setattr(_range_rows, "_GROUP_ROWS", 2 * 100)
    threads(2)
    a = np.tanh(np.random.default_rng(0).normal(size=(6, 100, 4))).astype(np.float32)
    a[4, 3, 1] = np.nan
    a[2, 5, 0] = np.inf
    with pytest.raises(ValueError, match=r"inf at batch index \(2,\)"):
        binned_mi(a, np.arange(100) % 2, bins=30, range=(-1, 1))


def test_ksg_is_the_same_with_any_number_of_workers(threads):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 4))
    t = np.stack([np.tanh(x[:, :3] * s + 0.3 * rng.normal(size=(500, 3))) for s in (0.5, 2.0)])
    t[1, :50] = np.maximum(t[1, :50], 0.2)  # ties in one item
    results = []
    for k in (1, 2, 3):
        threads(k)
        results.append(ksg_mi(x, t, memory_budget=200_000).mi)  # several blocks of rows per worker
    assert all(torch.equal(r, results[0]) for r in results)
    assert float(results[0][0]) == pytest.approx(ksg_ckdtree(x, t[0]) / math.log(2), abs=1e-9)


def test_kde_is_the_same_with_any_number_of_workers(threads, monkeypatch):
    # small blocks and a task per block, so that every worker takes several tasks
    monkeypatch.setattr(_kde_blocks, "BLOCK_BYTES", 4 * 230 * 7)
    monkeypatch.setattr(_kde_blocks, "MAX_TASKS", 64)
    rng = np.random.default_rng(5)
    a = np.tanh(rng.normal(scale=2.0, size=(2, 230, 4))).astype(np.float32)
    labels = rng.integers(0, 3, size=230)
    results = []
    for k in (1, 2, 3):
        threads(k)
        results.append(kde_mi(a, labels, noise_var=1e-2))
    for r in results[1:]:
        for field in ("ixt", "ity", "ixt_lower", "ity_lower"):
            assert torch.equal(getattr(r, field), getattr(results[0], field))
    for b in range(2):  # the upper bound against a float64 numpy evaluation
        h = a[b].astype(np.float64)
        sq = ((h[:, None] - h[None]) ** 2).sum(-1)
        def ent(rows, sq=sq):
            k = np.exp(-sq[np.ix_(rows, rows)] / (2 * 1e-2))
            return -np.mean(np.log(k.mean(axis=1)))
        everyone = np.arange(230)
        ixt = ent(everyone)
        ity = ixt - sum(np.mean(labels == c) * ent(everyone[labels == c]) for c in range(3))
        assert float(results[0].ixt[b]) == pytest.approx(ixt / math.log(2), abs=1e-5)
        assert float(results[0].ity[b]) == pytest.approx(ity / math.log(2), abs=1e-5)


def test_no_estimator_touches_the_process_wide_thread_settings(monkeypatch):
    # Thread counts are process-wide: the estimators read torch.get_num_threads() for their worker count and never
    # set it (nor the inter-op count, nor denormal flushing). Any call to a setter fails the estimator here, and
    # the values read afterwards are those from before.
    from infoplane.estimators import discrete_mi, gaussian_mi, noisy_mi, permutation_null, renyi_mi, ross_mi

    before = (torch.get_num_threads(), torch.get_num_interop_threads())

    def forbidden(*args):
        raise AssertionError("an estimator changed a process-wide torch setting")

    for name in ("set_num_threads", "set_num_interop_threads", "set_flush_denormal"):
        monkeypatch.setattr(torch, name, forbidden)
    rng = np.random.default_rng(9)
    a = np.tanh(rng.normal(size=(2, 120, 3))).astype(np.float32)
    x = rng.normal(size=(120, 4))
    labels = rng.integers(0, 2, size=120)
    calls = [
        lambda: binned_mi(a, labels, bins=30, range=(-1, 1)),
        lambda: binned_mi(a, labels, width=0.1),
        lambda: kde_mi(a, labels, noise_var=1e-2),
        lambda: kde_mi(a, labels, noise_var=1e-2, precision="float64"),
        lambda: discrete_mi(np.round(a, 1), labels),
        lambda: noisy_mi(a, labels, noise_var=1e-2, samples=4),
        lambda: ksg_mi(x, a),
        lambda: ross_mi(a, labels),
        lambda: renyi_mi(x, a),
        lambda: gaussian_mi(torch.from_numpy(x), torch.from_numpy(a[0]).double()),
        lambda: permutation_null(lambda t, y: binned_mi(t, y, bins=30, range=(-1, 1)), a, labels, permutations=3),
    ]
    for call in calls:
        call()
        assert (torch.get_num_threads(), torch.get_num_interop_threads()) == before


def test_small_counting_calls_and_busy_machines_run_on_one_kernel_thread(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(_count_kernel, "machine_busy", lambda: False)
    assert _count_kernel.kernel_threads(_count_kernel.ROWS_PER_THREAD + 1) == 1
    assert _count_kernel.kernel_threads(2 * _count_kernel.ROWS_PER_THREAD) == 2
    assert _count_kernel.kernel_threads(100 * _count_kernel.ROWS_PER_THREAD) == 4
    monkeypatch.setattr(_count_kernel, "machine_busy", lambda: True)
    assert _count_kernel.kernel_threads(100 * _count_kernel.ROWS_PER_THREAD) == 1
    monkeypatch.undo()
    monkeypatch.setattr(_count_kernel.os, "getloadavg", lambda: (1e9, 0.0, 0.0))
    assert _count_kernel.machine_busy()
    monkeypatch.setattr(_count_kernel.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert not _count_kernel.machine_busy()

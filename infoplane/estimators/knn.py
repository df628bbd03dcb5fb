"""k-nearest-neighbour estimates of mutual information: KSG (continuous-continuous) and Ross (continuous-discrete).

``ksg_mi(a, b)`` is Kraskov, Stögbauer & Grassberger's algorithm 1 with the max-norm: for each sample i,
eps_i is the distance to its k-th neighbour in the joint space (max of the two marginal max-norm distances),
n_a,i and n_b,i count the other samples strictly closer than eps_i in each marginal space, and

    I = psi(k) + psi(N) - < psi(n_a + 1) + psi(n_b + 1) >        (nats, reported in bits)

``ross_mi(t, labels)`` is Ross (2014) with scikit-learn's ``mutual_info_classif`` conventions, generalised to
d dimensions with the max-norm: for a sample of class c (N_c samples), k_i = min(k, N_c - 1) and r_i is the
distance to its k_i-th neighbour within the class; m_i counts every sample (itself included) strictly closer
than r_i; samples alone in their class are dropped (N below is the number kept);

    I = psi(N) + < psi(k_i) > - < psi(N_c) > - < psi(m_i) >

Neither estimate is clipped at 0: a negative value says that the estimate's bias exceeds the information, and
clipping would hide that.

Ties. ReLU zeros and saturated tanh units give exact duplicates, so a radius can be exactly 0; "strictly closer
than 0" then counts nothing and the formula above no longer describes the data. For a sample whose radius is 0
infoplane uses the rule of Gao et al. (2017) for discrete-continuous mixtures, kept in digamma form: k (k_i) is
replaced by the number of other samples at distance exactly 0 in the joint (within-class) space, and the marginal
counts n_a, n_b (m_i) count the samples at distance exactly 0. Samples with a positive radius are untouched, so
data without such ties give exactly the plain algorithm. On purely discrete data the rule gives the plug-in
mutual information up to O(1/n) digamma corrections.

Neighbour search is brute force, a block of rows at a time: max-norm distance blocks [rows, N], the k-th
neighbour's distance from them, then comparisons for the counts. On GPUs the blocks come from
``torch.cdist(p=inf)`` and ``topk``; KSG on CPU builds cache-sized blocks in numpy, coordinate by coordinate,
in worker threads (see ``_ksg_cpu``). Memory is a few [rows, N] buffers whatever N. Distances are differences
of the inputs' values in float64 (float32 on MPS), so comparisons are exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from infoplane._validate import check_float, check_int
from infoplane.estimators._cpu import ksg as _ksg_cpu
from infoplane.estimators._inputs import Batch, as_batch, as_labels, check_finite, result_dtype

DEFAULT_MEMORY_BUDGET = 64 * 2**20  # bytes for the [rows, N] buffers of one block
_MAX_ROWS = 128  # rows per block at most: measured fastest for cdist on a 2-core CPU at N = 10,000
_LN2 = math.log(2)


@dataclass
class KNNResult:
    """Result of a k-NN estimate: ``mi`` in bits (nats / ln 2), shape of the broadcast batch dimensions."""

    mi: torch.Tensor


def _block_rows(n: int, itemsize: int, budget: int, buffers: int) -> int:
    return max(1, min(n, _MAX_ROWS, budget // max(1, buffers * n * itemsize)))


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _cheb_block(x: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
    """Max-norm distances [i1 - i0, N] of rows i0..i1 of ``x`` ([N, d]) to all its rows.

    ``cdist`` with p = inf takes max |x_ic - x_jc| directly (no matrix-product shortcut as for p = 2), so the
    distances are exact differences of the inputs' values.
    """
    return torch.cdist(x[i0:i1], x, p=math.inf)


def _broadcast(a: Batch, b: Batch, what: str) -> tuple:
    if a.n != b.n:
        raise ValueError(f"{what}: the two variables have different numbers of samples ({a.n} and {b.n}); "
                         "they must be paired sample by sample along the second-to-last axis.")
    ba, bb = a.acts.shape[0], b.acts.shape[0]
    if ba != bb and 1 not in (ba, bb):
        raise ValueError(f"{what}: batch shapes {a.batch_shape} and {b.batch_shape} do not match; give both the "
                         "same leading dimensions, or one of them none (shared by every batch item).")
    shape = a.batch_shape if ba >= bb and a.batch_shape else b.batch_shape
    return max(ba, bb), shape


def _check_k(k, n_max: int, what: str) -> int:
    k = check_int(k, "k", minimum=1, what="a positive integer")
    if k >= n_max:
        raise ValueError(f"k = {k} needs at least k + 1 = {k + 1} samples {what}; got {n_max}. Use a smaller k.")
    return k


def _ksg_block(bx, by, i0, k):
    """KSG terms of rows i0.. given their marginal distance blocks: (sum psi(k_i), sum psi(n_x+1) + psi(n_y+1))."""
    r = bx.shape[0]
    joint = torch.maximum(bx, by)
    joint.diagonal(offset=i0).fill_(math.inf)  # a sample is not its own neighbour
    eps = torch.topk(joint, k, dim=1, largest=False, sorted=True).values[:, -1:]
    # strict counts; the sample itself (distance 0 < eps) is counted and removed again
    nx = (bx < eps).sum(1) - 1
    ny = (by < eps).sum(1) - 1
    kk = torch.full((r,), float(k), dtype=torch.float64, device=bx.device)
    zero = eps[:, 0] == 0
    if bool(zero.any()):  # ties at radius 0: counts at distance exactly 0 (see the module docstring)
        nx[zero] = (bx[zero] == 0).sum(1) - 1
        ny[zero] = (by[zero] == 0).sum(1) - 1
        kk[zero] = (joint[zero] == 0).sum(1).to(torch.float64)
    psi = torch.special.digamma
    return psi(kk).sum(), psi(torch.stack([nx, ny]).to(torch.float64) + 1).sum()


def _budget(memory_budget) -> int:
    if memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    return int(check_float(memory_budget, "memory_budget", positive=True))


def ksg_mi(a: Any, b: Any, *, k: int = 3, memory_budget: Optional[int] = None) -> KNNResult:
    """KSG estimate (algorithm 1, max-norm) of the mutual information between two continuous variables.

    Parameters
    ----------
    a : torch.Tensor or numpy.ndarray, shape [..., N, d_a]
        First variable (e.g. probe inputs). Leading dimensions are a batch; give none to share it across b's batch.
    b : torch.Tensor or numpy.ndarray, shape [..., N, d_b]
        Second variable (e.g. a layer's activations), paired with ``a`` sample by sample.
    k : int, default 3
        Neighbour order.
    memory_budget : int, optional
        Bytes for the distance buffers of one block of rows (default 64 MiB; on CPU, of each worker thread,
        and at most a cache-sized block).

    Returns
    -------
    KNNResult
        ``mi`` in bits, float64, shape of the broadcast batch dimensions, on the inputs' device. **Not clipped**:
        it can be negative (bias), and it underestimates increasingly with dimension and with large MI.
    """
    budget = _budget(memory_budget)
    ba, bb = as_batch(a), as_batch(b)
    n_items, shape = _broadcast(ba, bb, "ksg_mi")
    k = _check_k(k, ba.n, "in total")
    check_finite(ba.acts, ba)
    check_finite(bb.acts, bb)
    device = bb.device
    dt = _compute_dtype(device)
    xa = ba.acts.to(device=device, dtype=dt)
    xb = bb.acts.to(dtype=dt)
    n = ba.n
    psi = torch.special.digamma
    if device.type == "cpu":
        # numpy blocks shared by worker threads, as many as torch's intra-op threads (see _ksg_cpu)
        kk, nx, ny = (torch.from_numpy(v) for v in _ksg_cpu.neighbour_counts(
            xa.contiguous().numpy(), xb.contiguous().numpy(), k, _ksg_cpu.block_rows(n, budget),
            torch.get_num_threads()))
        sums = psi(kk).sum(1) - (psi(nx.to(torch.float64) + 1) + psi(ny.to(torch.float64) + 1)).sum(1)
        out = psi(torch.tensor(float(n), dtype=torch.float64)) + sums / n
        return KNNResult(mi=(out / _LN2).reshape(shape))
    rows = _block_rows(n, torch.finfo(dt).bits // 8, budget, 4)
    sums = torch.zeros(n_items, dtype=torch.float64, device=device)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        # a variable without batch dimensions (the probe inputs) has one distance block for every batch item
        bx = _cheb_block(xa[0], i0, i1) if xa.shape[0] == 1 else None
        by = _cheb_block(xb[0], i0, i1) if xb.shape[0] == 1 else None
        for i in range(n_items):
            s_k, s_n = _ksg_block(bx if bx is not None else _cheb_block(xa[i], i0, i1),
                                  by if by is not None else _cheb_block(xb[i], i0, i1), i0, k)
            sums[i] += s_k - s_n
    psi_n = torch.special.digamma(torch.tensor(float(n), dtype=torch.float64, device=device))
    out = psi_n + sums / n
    return KNNResult(mi=(out / _LN2).to(result_dtype(device)).reshape(shape))


def _ross_item(t, y, counts, k, rows):
    """Ross sums for one item over the kept samples; t is [N, d], y [N] dense classes, counts [C]."""
    n = t.shape[0]
    dev, dt = t.device, t.dtype
    nc = counts[y]  # class size of each sample
    kept = nc > 1
    kmax = int(min(k, int(counts.max()) - 1))
    k_i = torch.clamp(nc - 1, max=k)  # k capped at class size - 1
    s_k = torch.zeros((), dtype=torch.float64, device=dev)
    s_m = torch.zeros((), dtype=torch.float64, device=dev)
    kept_f = kept.to(dt)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        q = kept[i0:i1]
        if not bool(q.any()):
            continue
        dd = _cheb_block(t, i0, i1)
        # within-class distances (others +inf), self excluded; dropped samples are never neighbours anyway
        same = y[i0:i1, None] == y[None, :]
        win = torch.where(same, dd, torch.full((), math.inf, dtype=dt, device=dev))
        win.diagonal(offset=i0).fill_(math.inf)
        kth = torch.topk(win, kmax, dim=1, largest=False, sorted=True).values
        kq = k_i[i0:i1].clamp(min=1)
        rad = kth.gather(1, (kq - 1)[:, None])
        # m_i counts kept samples strictly inside the radius, the sample itself included
        m = ((dd < rad).to(dt) @ kept_f)
        kk = kq.to(torch.float64)
        zero = (rad[:, 0] == 0) & q
        if bool(zero.any()):  # ties at radius 0 (see the module docstring)
            m[zero] = (dd[zero] == 0).to(dt) @ kept_f
            kk[zero] = (win[zero] == 0).sum(1).to(torch.float64)
        qf = q.to(torch.float64)
        s_k += (torch.special.digamma(kk) * qf).sum()
        s_m += (torch.special.digamma(m.to(torch.float64).clamp(min=1)) * qf).sum()
    n_kept = int(kept.sum())
    s_c = (torch.special.digamma(nc[kept].to(torch.float64))).sum()
    return n_kept, s_k, s_m, s_c


def ross_mi(activations: Any, labels: Any, *, k: int = 3, memory_budget: Optional[int] = None) -> KNNResult:
    """Ross (2014) k-NN estimate of I(T;Y) between continuous activations and discrete labels (max-norm).

    Parameters
    ----------
    activations : torch.Tensor or numpy.ndarray, shape [..., N, d]
        Layer activations; leading dimensions are a batch.
    labels : tensor or array
        Class indices [N] or [..., N], or one-hot [N, C] / [..., N, C].
    k : int, default 3
        Neighbour order; capped at (class size - 1) for each class, as in scikit-learn.
    memory_budget : int, optional
        Bytes for the distance buffers of one block of rows (default 64 MiB).

    Returns
    -------
    KNNResult
        ``mi`` in bits, float64, shape ``activations.shape[:-2]``. Samples alone in their class are left out.
        **Not clipped** at 0.
    """
    budget = _budget(memory_budget)
    batch = as_batch(activations)
    y, n_classes = as_labels(labels, batch)
    check_finite(batch.acts, batch)
    k = check_int(k, "k", minimum=1, what="a positive integer")
    device = batch.device
    dt = _compute_dtype(device)
    acts = batch.acts.to(dtype=dt)
    n = batch.n
    rows = _block_rows(n, torch.finfo(dt).bits // 8, budget, 4)
    out = torch.empty(acts.shape[0], dtype=torch.float64, device=device)
    for i in range(acts.shape[0]):
        yi = y[i if y.shape[0] > 1 else 0]
        counts = torch.bincount(yi, minlength=n_classes)
        if int(counts.max()) < 2:
            raise ValueError("ross_mi: every class has a single sample, so no within-class neighbour exists; "
                             "the Ross estimator needs at least one class with two or more samples.")
        n_kept, s_k, s_m, s_c = _ross_item(acts[i], yi, counts, int(k), rows)
        psi_n = torch.special.digamma(torch.tensor(float(n_kept), dtype=torch.float64, device=device))
        out[i] = psi_n + (s_k - s_c - s_m) / n_kept
    return KNNResult(mi=(out / _LN2).to(result_dtype(device)).reshape(batch.batch_shape))


def flatten_inputs(inputs: Any) -> torch.Tensor:
    """Probe inputs ``[N, ...]`` as a float ``[N, D]`` tensor (one row per sample), for the I(X;T) estimators."""
    x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(inputs)
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"inputs must have shape [N, ...] with N >= 2 probe samples; got {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1)
    if not x.is_floating_point():
        x = x.to(torch.float64)
    return x

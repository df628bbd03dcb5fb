"""Kernel (Gaussian-noise channel) estimates of I(X;T) and I(T;Y), after Kolchinsky & Tracey.

The layer is seen through additive noise, T~ = h(X) + N(0, s^2 I), with X uniform over the N probe samples.
H(T~) of the resulting Gaussian mixture is bracketed by pairwise-distance estimators; subtracting
H(T~ | X) = (d/2) log(2 pi e s^2) leaves, with D_ij = ||h_i - h_j||^2,

    upper (pairwise KL):     I = -(1/N) sum_i log[(1/N) sum_j exp(-D_ij / (2 s^2))]
    lower (Bhattacharyya):   the same with D_ij / (8 s^2)

I(T;Y) = I(X;T) - sum_y p(y) I_y, where I_y is the same estimate over the samples of class y (the mixture
constants cancel). Results are in bits.

The N x N kernel is never held whole: rows are processed in blocks sized from a memory budget, one distance
block serves both bounds and every class (samples are sorted by class, so class sums are sums over contiguous
columns). No reduced-precision matmul setting can round a squared distance: with ``precision="float32"`` on
narrow layers they are float32 sums of squared differences, formed without any matrix product (on the CPU by the
worker threads of :mod:`~infoplane.estimators._cpu.kde_blocks`, elsewhere on the activations' device, MPS
included); otherwise they come from one float64 matrix product per strip, which those settings do not touch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from infoplane._validate import check_choice, check_float
from infoplane.estimators._cpu import kde_blocks
from infoplane.estimators._inputs import as_batch, as_labels, check_finite, result_dtype
from infoplane.estimators.base import PlaneResult
from infoplane.estimators.binning import label_entropy

DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes allowed for the pairwise temporaries of one block of rows
# Rows per block when the budget allows more: small enough that a block's temporaries stay in cache across the
# several passes made over them (measured: 256 rows of 4096 beat whole-matrix blocks on a 2-core CPU).
_CACHE_ROWS = 256

# exp() is 10-30x slower where its result nears the subnormal range (float32: below about -87; measured slow
# from -87 down), and terms that small are far below the rounding of any kernel sum (each holds its j = i term,
# which is 1), so exponents are clamped first: this changes no result.
_EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
# Widest layer whose float32 distances are summed from squared differences (3 passes per unit over each block)
# rather than taken from a float64 matrix product (a cost that barely grows with the width). Measured on one
# core at N = 4096 (CPU time): direct 36 / 58 / 113 ms at 5 / 10 / 32 units against 39 / 46 / 49 ms for the
# product, and 9x slower at 256 units. On accelerators elementwise passes are cheap and float64 is not.
DIRECT_MAX_UNITS = {"cpu": 16}
_DIRECT_MAX_UNITS_ELSEWHERE = 64


@dataclass
class KDEResult(PlaneResult):
    """Result of :func:`kde_mi`. All fields in bits, shape ``activations.shape[:-2]``.

    Attributes
    ----------
    ixt, ity : torch.Tensor
        Pairwise-KL ("upper") estimates of I(X;T) and I(T;Y).
    ixt_lower, ity_lower : torch.Tensor
        Bhattacharyya ("lower") estimates of I(X;T) and I(T;Y).
    """

    ixt_lower: torch.Tensor
    ity_lower: torch.Tensor


def _block_rows(n: int, itemsize: int, budget: int) -> int:
    per_row = n * (2 * itemsize + 8)  # two [rows, n] buffers in the compute dtype and one float64 exponent strip
    return max(1, min(n, _CACHE_ROWS, budget // per_row))


def _log_kernel_sums(h, labels, bounds, dtype, scale_lower, budget):
    """For every sample i: log of sum_j K(i, j) over all j and over the j of i's class, for both kernels.

    Parameters
    ----------
    h : [N, d] float64 activations with the samples sorted by class; class c holds rows bounds[c]:bounds[c + 1].
    labels : [N] int64, the (sorted) class of each row.
    dtype : float32 or float64, the arithmetic of the kernel values and their sums.
    scale_lower : 1 / (8 s^2).

    Returns
    -------
    Tensor [2, 2, N] in ``dtype``: (lower, upper) x (all samples, own class).

    The squared distances come from one float64 matrix product per strip of rows. Reduced-precision settings
    (TF32, bf16: ``torch.set_float32_matmul_precision``, ``allow_tf32``, ``fp32_precision``) apply to float32
    products only, so they cannot round the distances, and the class sums are plain reductions over the
    class's contiguous columns rather than products with a one-hot matrix, for the same reason.
    """
    n = h.shape[0]
    floor = _EXP_FLOOR[dtype]
    # Centring keeps |a|^2 + |b|^2 - 2 a.b from cancelling badly.
    h = h - h.mean(dim=0, keepdim=True)
    sq = (h * h).sum(dim=1, keepdim=True)
    ones = torch.ones_like(sq)
    # One GEMM gives the scaled exponent -D_ij / (8 s^2) directly: [2c h_i, -c|h_i|^2, -c] . [h_j, 1, |h_j|^2].
    left = torch.cat([2 * scale_lower * h, -scale_lower * sq, -scale_lower * ones], dim=1)
    right = torch.cat([h, ones, sq], dim=1)
    rows = _block_rows(n, torch.finfo(dtype).bits // 8, budget)
    buf = torch.empty(rows * n, dtype=dtype, device=h.device)
    buf2 = torch.empty(rows * n, dtype=dtype, device=h.device)
    buf64 = buf if dtype == torch.float64 else torch.empty(rows * n, dtype=torch.float64, device=h.device)
    n_classes = len(bounds) - 1
    # sums[b, c, i] = sum of kernel b over the samples j of class c
    sums = torch.zeros(2, n_classes, n, dtype=dtype, device=h.device)
    # exp(-D/2s^2) = exp(-D/8s^2)^4; flooring the base keeps the power out of subnormals (terms < e^floor vanish).
    base_floor = math.exp(floor / 4)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        # The kernel is symmetric: a strip of rows i0..i1 against columns i0.. (the diagonal block and everything
        # to its right) serves its own rows and, transposed, the later rows, so half the matrix is computed.
        width = n - i0
        e64 = buf64[: (i1 - i0) * width].view(i1 - i0, width)
        torch.mm(left[i0:i1], right[i0:].T, out=e64)
        k_lo = buf[: (i1 - i0) * width].view(i1 - i0, width)
        if k_lo.data_ptr() != e64.data_ptr():
            k_lo.copy_(e64)
        k_up = buf2[: (i1 - i0) * width].view(i1 - i0, width)
        k_lo.clamp_(min=floor, max=0.0)
        # D_ii = 0 exactly; setting it removes the largest rounding error of the product form.
        k_lo.diagonal().zero_()
        k_lo.exp_()
        torch.clamp(k_lo, min=base_floor, out=k_up).square_().square_()
        _add_class_sums(sums, (k_lo, k_up), bounds, i0, i1)
    out = torch.stack([sums.sum(dim=1), sums.gather(1, labels.expand(2, 1, n)).squeeze(1)], dim=1)
    return out.log_()


def _add_class_sums(sums: torch.Tensor, kernels: tuple, bounds: list[int], i0: int, i1: int) -> None:
    """Add one strip of the upper triangle (rows i0:i1, columns i0:N) of each kernel to the per-class sums
    ``sums[b, c, i]`` of both the strip's rows and, by symmetry, the later samples (samples sorted by class)."""
    n = sums.shape[-1]
    for b, k in enumerate(kernels):
        for c in range(len(bounds) - 1):
            c0, c1 = bounds[c], bounds[c + 1]
            # columns of class c (in the strip, columns start at i0): sums for the strip's own rows
            j0, j1 = max(c0, i0) - i0, c1 - i0
            if j1 > j0:
                sums[b, c, i0:i1] += k[:, j0:j1].sum(dim=1)
            # rows of class c in the strip, transposed: sums for the later samples
            r0, r1 = max(c0, i0), min(c1, i1)
            if r1 > r0 and i1 < n:
                sums[b, c, i1:] += k[r0 - i0:r1 - i0, i1 - i0:].sum(dim=0)


def direct_kernel_sums(h: torch.Tensor, labels: torch.Tensor, bounds: list[int], scale_lower: float,
                       budget: int) -> torch.Tensor:
    """The float32 route off the CPU: :func:`_log_kernel_sums` for ``dtype=float32``, with the squared distances
    summed from squared float32 differences on ``h``'s device (no matrix product, so no precision setting applies).

    Parameters
    ----------
    h : [N, d] float32 activations sorted by class, on any device.
    labels, bounds, scale_lower, budget : as for :func:`_log_kernel_sums`.

    Returns
    -------
    Tensor [2, 2, N] float32: the logs of (lower, upper) x (all samples, own class).
    """
    n, d = h.shape
    floor = _EXP_FLOOR[torch.float32]
    ht = h.T.contiguous()
    rows = _block_rows(n, 4, budget)
    dist = torch.empty(rows * n, dtype=torch.float32, device=h.device)
    term = torch.empty(rows * n, dtype=torch.float32, device=h.device)
    n_classes = len(bounds) - 1
    sums = torch.zeros(2, n_classes, n, dtype=torch.float32, device=h.device)
    base_floor = math.exp(floor / 4)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        width = n - i0
        k_lo = dist[: (i1 - i0) * width].view(i1 - i0, width)
        k_up = term[: (i1 - i0) * width].view(i1 - i0, width)
        torch.sub(h[i0:i1, :1], ht[:1, i0:], out=k_lo).square_()
        for c in range(1, d):
            torch.sub(h[i0:i1, c:c + 1], ht[c:c + 1, i0:], out=k_up)
            k_lo.addcmul_(k_up, k_up)
        k_lo.mul_(-scale_lower).clamp_(min=floor).exp_()
        torch.clamp(k_lo, min=base_floor, out=k_up).square_().square_()
        _add_class_sums(sums, (k_lo, k_up), bounds, i0, i1)
    out = torch.stack([sums.sum(dim=1), sums.gather(1, labels.expand(2, 1, n)).squeeze(1)], dim=1)
    return out.log_()


def _float32_log_kernel_sums(h, order, labels, bounds, scale_lower, budget, workers):
    """The float32 route: logs [2, 2, N] as :func:`_log_kernel_sums` gives them (``h`` unsorted, ``order`` the
    class-sorting permutation, ``labels`` sorted), from float32 distances formed by direct differences: in worker
    threads on the CPU, on the activations' own device elsewhere.

    Centred in the widest float the device has, then rounded once to float32: an offset shared by every sample
    costs no precision. On the CPU every step is numpy's (single-threaded, GIL released) or the workers', so no
    torch parallel region waits on cores that other processes hold.
    """
    if h.device.type != "cpu":
        wide = h[order].to(result_dtype(h.device))
        centred = (wide - wide.mean(dim=0, keepdim=True)).to(torch.float32)
        return direct_kernel_sums(centred, labels, bounds, scale_lower, budget)
    wide = h.detach().numpy()[order.numpy()].astype(np.float64)
    wide -= wide.mean(axis=0)
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: the result is then not finite, and the
        narrow = wide.astype(np.float32)  # caller recomputes the item in float64
    sums = kde_blocks.kernel_sums(narrow, bounds, scale_lower, _EXP_FLOOR[torch.float32], workers,
                                  budget)
    n = sums.shape[2]
    own = sums[:, labels.numpy(), np.arange(n)]
    return torch.from_numpy(np.log(np.stack([sums.sum(axis=1), own], axis=1)))


def direct_route(units: int, device: torch.device) -> bool:
    """Whether float32 KDE on a layer of ``units`` units on ``device`` forms its distances by direct differences
    (else by a float64 matrix product, kernel values still in float32)."""
    return units <= DIRECT_MAX_UNITS.get(device.type, _DIRECT_MAX_UNITS_ELSEWHERE)


def _one_item(h, yb, n_classes, dtype, s2, budget, res_dtype, workers=1):
    """(ixt upper, ity upper, ixt lower, ity lower) in nats for one [N, d] item, unclamped."""
    n = h.shape[0]
    # Sorting the samples by class makes each class a contiguous block (the estimates do not depend on order).
    yb, order = torch.sort(yb, stable=True)
    counts = torch.bincount(yb, minlength=n_classes)
    bounds = [0] + torch.cumsum(counts, 0).tolist()
    if dtype == torch.float32 and direct_route(h.shape[1], h.device):
        logs = _float32_log_kernel_sums(h, order, yb, bounds, 1.0 / (8.0 * s2), budget, workers).to(res_dtype)
    else:
        logs = _log_kernel_sums(h[order].to(torch.float64), yb, bounds, dtype, 1.0 / (8.0 * s2), budget)
        logs = logs.to(res_dtype)
    log_ny = torch.log(counts.to(res_dtype).clamp(min=1))[yb]
    # I(X;T) = -(1/N) sum_i log(S_i / N);  sum_y p(y) I_y = -(1/N) sum_i log(S_i,own / N_{y_i})
    ixt = math.log(n) - logs[:, 0].mean(dim=1)
    ity = ixt - (log_ny[None, :] - logs[:, 1]).mean(dim=1)
    return torch.stack([ixt[1], ity[1], ixt[0], ity[0]])


def kde_mi(activations: Any, labels: Any, *, noise_var: float = 1e-3, precision: str = "float32",
           memory_budget: Optional[int] = None) -> KDEResult:
    """Kolchinsky–Tracey estimates of I(X;T) and I(T;Y) for a batch of layers or epochs.

    Parameters
    ----------
    activations : torch.Tensor or numpy.ndarray, shape [..., N, d]
        Layer activations; leading dimensions are a batch computed in one call.
    labels : tensor or array
        Class indices [N] or [..., N], or one-hot [N, C] / [..., N, C].
    noise_var : float, default 1e-3
        Variance s^2 of the Gaussian noise added to each unit (1e-3 for the 12-bit data, 0.1 for MNIST in
        Saxe et al.). Same units as the activations squared.
    precision : {"float32", "float64"}, default "float32"
        Arithmetic of the kernel values and their sums. With float32, layers of up to 16 units on the CPU (64
        elsewhere, :func:`direct_route`) have their squared distances formed in float32 as sums of squared
        differences (no matrix product, so no reduced-precision matmul setting can round them), on the
        activations' device, MPS included; wider layers, and float64, form them by a float64 matrix product (also
        untouched by those settings; on MPS, which has no float64, on the CPU). float32 agrees with float64 to
        about 1e-5 bits and is faster; float64 agrees with an exact float64 evaluation to about 1e-9 bits.
        A batch item whose float32 result is not finite is recomputed in float64.
    memory_budget : int, optional
        Bytes allowed for the pairwise temporaries of one block of rows (default 512 MiB). Peak memory is this
        plus O(N d); N = 20,000 runs in well under a gigabyte.

    Returns
    -------
    KDEResult
        ``ixt``, ``ity`` (upper, pairwise KL) and ``ixt_lower``, ``ity_lower`` (Bhattacharyya), in bits,
        float64 tensors of shape ``activations.shape[:-2]`` on the activations' device. I(X;T) estimates are
        clamped to [0, log2 N] and I(T;Y) estimates to [0, H(Y)], H(Y) the plug-in entropy of the item's labels.

    Raises
    ------
    ValueError
        Non-finite activations, or an item whose estimate is not finite even in float64 (activations so large
        that their squared distances overflow); the message names the batch index.

    Notes
    -----
    Global torch settings are never changed, so calls are safe from several threads at once. On the CPU the
    float32 route shares its blocks among as many worker threads as ``torch.get_num_threads()`` (read, never set),
    which never wait for one another; the result does not depend on their number.
    """
    s2 = check_float(noise_var, "noise_var", positive=True)
    precision = check_choice(precision, "precision", sorted(PRECISIONS))
    budget = (DEFAULT_MEMORY_BUDGET if memory_budget is None
              else int(check_float(memory_budget, "memory_budget", positive=True)))
    dtype = PRECISIONS[precision]
    batch = as_batch(activations)
    y, n_classes = as_labels(labels, batch)
    n = batch.n
    acts = batch.acts
    check_finite(acts, batch)
    if acts.device.type == "mps" and not (dtype == torch.float32 and direct_route(acts.shape[-1], acts.device)):
        # MPS has no float64: the matrix-product route computes on the CPU and returns on MPS.
        acts, y = acts.cpu(), y.cpu()
    workers = max(1, torch.get_num_threads())
    res_dtype = result_dtype(acts.device)
    res = torch.empty(4, acts.shape[0], dtype=res_dtype, device=acts.device)
    for b in range(acts.shape[0]):
        yb = y[b if y.shape[0] > 1 else 0]
        r = _one_item(acts[b], yb, n_classes, dtype, s2, budget, res_dtype, workers)
        if not bool(torch.isfinite(r).all()) and dtype != torch.float64:
            if acts.device.type == "mps":
                r = _one_item(acts[b].cpu(), yb.cpu(), n_classes, torch.float64, s2, budget, torch.float32)
                r = r.to(acts.device)
            else:
                r = _one_item(acts[b], yb, n_classes, torch.float64, s2, budget, res_dtype)
        if not bool(torch.isfinite(r).all()):
            shape = batch.batch_shape
            where = (f"at batch index {tuple(int(i) for i in np.unravel_index(b, shape))}" if shape
                     else "for the single [N, d] input")
            raise ValueError(
                f"the KDE estimate is not finite {where} even in float64: the activations (largest magnitude "
                f"{float(acts[b].abs().max()):.3g}) are too large for their squared distances to be formed. "
                "Rescale the layer or leave that item out."
            )
        res[:, b] = r
    res = res / math.log(2)
    h_y = label_entropy(y, n_classes, res_dtype).expand(acts.shape[0])
    # Rounding can step a hair outside the range: clamp (see docs/estimators.md).
    res[0::2].clamp_(0.0, math.log2(n))
    res[1::2] = torch.minimum(res[1::2].clamp(min=0.0), h_y)
    res = res.to(device=batch.device, dtype=result_dtype(batch.device))
    shape = batch.batch_shape
    return KDEResult(ixt=res[0].reshape(shape), ity=res[1].reshape(shape),
                     ixt_lower=res[2].reshape(shape), ity_lower=res[3].reshape(shape))

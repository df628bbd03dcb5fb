"""Binned (discrete) estimates of I(X;T) and I(T;Y).

Each unit's activation is mapped to a cell index; a sample's binned layer is the tuple of its units' cells.
X is uniform over the N probe samples, each a distinct value, so I(X;T) = H(binned T), and
I(T;Y) = H(T) + H(Y) - H(T, Y) = H(T) - sum_y p(y) H(T | Y=y), all plug-in and in bits.

Rows are compared exactly: the cell tuple of a sample becomes one int64 key by mixed-radix packing; layers too
wide for 63 bits are packed a group of units at a time, and the partial key is replaced by its dense rank (< N)
before the next group is appended, so no two different rows can ever share a key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._entropy import dense_rank, entropy_of_runs, run_starts
from ._inputs import as_batch, as_labels, positive_float, result_dtype

# Keys stay below 2**62 so that key * C + label and the rank arithmetic cannot overflow int64.
_KEY_BITS = 62


@dataclass
class BinnedResult:
    """Result of :func:`binned_mi`.

    Attributes
    ----------
    ixt : torch.Tensor
        I(X;T) in bits, shape ``activations.shape[:-2]``.
    ity : torch.Tensor
        I(T;Y) in bits, same shape.
    """

    ixt: torch.Tensor
    ity: torch.Tensor


def fixed_range_edges(bins: int, lo: float, hi: float) -> np.ndarray:
    """The original work's grid: ``bins`` float32 edge points evenly spaced on [lo, hi]."""
    return np.linspace(lo, hi, bins).astype(np.float32)


def _cells_fixed_range(a: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    edges = torch.from_numpy(fixed_range_edges(bins, lo, hi)).to(device=a.device, dtype=a.dtype)
    # bucketize(right=True) counts edges <= a, as numpy's digitize does. Below the first edge the original
    # indexes edge -1, i.e. the last one, so values < lo share the cell of values >= hi: reproduce that wrap.
    k = torch.bucketize(a, edges, right=True) - 1
    return torch.remainder(k, bins)


def _cells_fixed_width(a: torch.Tensor, width: float) -> torch.Tensor:
    # The division is done in the activations' own dtype, as the published code does on float32 arrays.
    q = torch.floor(a / torch.tensor(width, dtype=a.dtype, device=a.device))
    if bool((q.abs() >= 2.0**52).any()):
        raise ValueError(
            f"activations / width reach {float(q.abs().max()):.3g}: too many cells to index exactly. "
            "Use a larger width, or the fixed-range grid (bins=, range=)."
        )
    return q.long()


def _cells_adaptive(a: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-count cells over each item's distinct values.

    With the item's M distinct values sorted as u_0 < ... < u_{M-1}, the interior edges are u_{floor(k M / bins)}
    for k = 1 .. bins-1 and a value's cell is the number of edges <= it. For the value of distinct rank j that
    number is min(bins - 1, ceil((j + 1) * bins / M) - 1), computed here in integers.
    """
    b, n, d = a.shape
    flat = a.reshape(b, n * d)
    ranks, m = dense_rank_float(flat)
    m = m[:, None]
    cells = torch.clamp(((ranks + 1) * bins + m - 1) // m - 1, max=bins - 1)
    return cells.reshape(b, n, d)


def dense_rank_float(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sorted_vals, order = torch.sort(values, dim=1)
    new = torch.ones_like(sorted_vals, dtype=torch.bool)
    new[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    rank_sorted = new.cumsum(1) - 1
    ranks = torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)
    return ranks, rank_sorted[:, -1] + 1


def row_keys(cells: torch.Tensor, reserve: int = 1) -> torch.Tensor:
    """One int64 key per row of ``cells`` ([B, N, d]) such that keys are equal iff rows are equal.

    ``reserve`` is a factor the caller will multiply keys by (the number of classes); keys stay below
    2**62 / reserve.
    """
    b, n, d = cells.shape
    digits = cells - cells.amin(dim=1, keepdim=True)
    radix = digits.amax(dim=(0, 1)) + 1
    sparse = torch.nonzero(radix > n).flatten().tolist()
    if sparse:
        # A unit with more possible cells than samples (wide unbounded grids): its dense rank (< n) has the
        # same equalities and keeps the packing small.
        digits = digits.clone()
        for j in sparse:
            digits[:, :, j] = dense_rank(digits[:, :, j])[0]
        radix = digits.amax(dim=(0, 1)) + 1
    radix = radix.tolist()
    limit = 2**_KEY_BITS // reserve
    # Greedy groups of units whose digits pack into one key together with a previous dense rank (< n).
    groups, start, prod = [], 0, 1
    for j, r in enumerate(radix):
        if j > start and prod * r * n >= limit:
            groups.append((start, j))
            start, prod = j, 1
        prod *= r
    groups.append((start, d))
    if n * n >= limit:
        raise ValueError(f"N = {n} samples is too many to key rows exactly in 62 bits; use fewer probe samples")

    keys = None
    for g0, g1 in groups:
        mult = torch.ones(g1 - g0, dtype=torch.long)
        mult[1:] = torch.cumprod(torch.tensor(radix[g0:g1 - 1], dtype=torch.long), 0)
        part = (digits[:, :, g0:g1] * mult.to(cells.device)).sum(-1)
        if keys is None:
            keys = part
            continue
        keys, distinct = dense_rank(keys)
        if bool((distinct == n).all()):
            # Every row already differs from every other: further units cannot merge any two rows.
            return keys
        keys = keys * int(mult[-1] * radix[g1 - 1]) + part
    return keys


def discrete_mi(cells: torch.Tensor, y: torch.Tensor, n_classes: int, dtype: torch.dtype):
    """I(X;T) = H(T) and I(T;Y) in bits from integer cells [B, N, d] and dense labels [B or 1, N]."""
    keys = row_keys(cells, reserve=n_classes)
    joint = keys * n_classes + y
    # One sort serves both entropies: sorting by key*C + y also sorts by key.
    sorted_joint, _ = torch.sort(joint, dim=1)
    h_ty = entropy_of_runs(run_starts(sorted_joint), dtype)
    h_t = entropy_of_runs(run_starts(torch.div(sorted_joint, n_classes, rounding_mode="floor")), dtype)
    h_y = label_entropy(y, n_classes, dtype).expand(h_t.shape)
    return h_t, h_t + h_y - h_ty


def label_entropy(y: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Plug-in H(Y) in bits per row of dense labels [B, N]."""
    n = y.shape[1]
    counts = torch.zeros(y.shape[0], n_classes, dtype=dtype, device=y.device)
    counts.scatter_add_(1, y, torch.ones(1, 1, dtype=dtype, device=y.device).expand_as(y))
    return math.log2(n) - torch.special.xlogy(counts, counts).sum(1) / (n * math.log(2))


def _grid(bins, range, width, adaptive):
    """Validate the grid arguments and name the grid: 'range', 'width' or 'adaptive'."""
    if width is not None:
        if bins is not None or range is not None or adaptive:
            raise ValueError(
                "width= selects the fixed-width grid and cannot be combined with bins=, range= or adaptive=True; "
                "pass either width=0.07 alone, or bins= with range= (or adaptive=True)."
            )
        return "width", None, None, positive_float(width, "width")
    if bins is None:
        bins = 30
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2 (the number of edge points / symbols per unit); got {bins!r}")
    if adaptive:
        if range is not None:
            raise ValueError("adaptive=True places its edges from the data; do not pass range= with it.")
        return "adaptive", int(bins), None, None
    if range is None:
        range = (-1.0, 1.0)
    try:
        lo, hi = (float(v) for v in range)
    except (TypeError, ValueError):
        raise ValueError(f"range must be a pair (low, high); got {range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"range must be finite with low < high; got {range!r}")
    return "range", int(bins), (lo, hi), None


def binned_mi(activations, labels, *, bins=None, range=None, width=None, adaptive=False) -> BinnedResult:
    """Binned information-plane coordinates for a batch of layers or epochs.

    Parameters
    ----------
    activations : torch.Tensor or numpy.ndarray, shape [..., N, d]
        Layer activations of N probe samples with d units. Leading dimensions are a batch (recorded epochs,
        seeds, ...) computed in one call. float16/bfloat16 are widened to float32 first.
    labels : tensor or array
        Class indices, shape [N] (shared) or [..., N] (per batch item), or one-hot [N, C] / [..., N, C].
    bins : int, default 30
        Fixed-range grid: number of evenly spaced float32 edge points on ``range``, hence ``bins`` symbols per
        unit: ``bins - 1`` cells of [lo, hi) plus one overflow cell shared by every value >= hi or < lo (the
        original work's indexing). With ``adaptive=True``: the number of cells per item.
    range : (float, float), default (-1.0, 1.0)
        Low and high edge of the fixed-range grid.
    width : float, optional
        Fixed-width grid: cell ``floor(a / width)``, computed in the activations' dtype, unbounded. Exclusive
        with ``bins``/``range``/``adaptive``.
    adaptive : bool, default False
        Per-item equal-count grid: ``bins`` cells, each holding (as nearly as possible) the same number of the
        item's distinct activation values (pooled over units). Interior edges are ``u[floor(k * M / bins)]``,
        k = 1..bins-1, over the M sorted distinct values ``u``.

    Returns
    -------
    BinnedResult
        ``ixt`` = I(X;T) = H(binned T) and ``ity`` = I(T;Y), in bits, float64 tensors of shape
        ``activations.shape[:-2]`` on the activations' device.

    Raises
    ------
    ValueError
        Non-finite activations (the batch index is named), wrong shapes, labels that do not match N,
        conflicting grid arguments.
    """
    kind, bins, rng, width = _grid(bins, range, width, adaptive)
    batch = as_batch(activations)
    y, n_classes = as_labels(labels, batch)
    a = batch.acts
    if kind == "range":
        cells = _cells_fixed_range(a, bins, *rng)
    elif kind == "width":
        cells = _cells_fixed_width(a, width)
    else:
        cells = _cells_adaptive(a, bins)
    ixt, ity = discrete_mi(cells, y, n_classes, result_dtype(batch.device))
    return BinnedResult(ixt=ixt.reshape(batch.batch_shape), ity=ity.reshape(batch.batch_shape))

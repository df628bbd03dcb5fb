"""Binned (discrete) estimates of I(X;T) and I(T;Y).

Each unit's activation is mapped to a cell; a sample's binned layer is the tuple of its units' cells. X is
uniform over the N probe samples, each a distinct value, so I(X;T) = H(binned T), and
I(T;Y) = H(T) + H(Y) - H(T, Y) = H(T) - sum_y p(y) H(T | Y=y), all plug-in and in bits.

Rows are compared exactly: a sample's cell tuple becomes one int64 key by mixed-radix packing; layers too wide
for one key are packed a group of units at a time, and the partial key is replaced by its dense rank (< N)
before the next group is appended, so two different rows can never share a key.

Work is done a chunk of batch items at a time, sized so that the temporaries stay in the CPU cache across the
several elementwise passes.
"""
from __future__ import annotations

import builtins
import math
from dataclasses import dataclass

import numpy as np
import torch

from ._entropy import dense_rank, entropy_of_runs, ranks_from_runs, run_starts, sorted_runs
from ._inputs import as_batch, as_labels, check_finite, positive_float, result_dtype

# Keys stay below 2**62 so that key * C + label cannot overflow int64.
_KEY_BITS = 62
# Integers up to 2**53 are exact in float64, so a group's key can be formed by one float64 product.
_EXACT_FLOAT_BITS = 53
# Elements per chunk of batch items (about 2 MiB of float64): measured fastest on a 2-core CPU.
_CHUNK_ELEMENTS = 2**18


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


class _RangeGrid:
    """Cells of the fixed-range grid, exact against the float32 edges.

    A floor of the scaled value lands on the right cell or the one below it once a small bias is subtracted
    (rounding of the float32 edges moves them by far less than the bias), so one comparison with the next
    edge, looked up exactly, settles every value. Buffers are reused across chunks: fresh temporaries of this
    size cost more in page faults than the arithmetic does.
    """

    def __init__(self, bins, lo, hi):
        self.bins, self.lo, self.hi = bins, lo, hi
        edges = torch.from_numpy(fixed_range_edges(bins, lo, hi))
        self.next_edge = torch.cat([edges, edges.new_tensor([math.inf])])  # index u -> edge u, inf past the last
        self.scale = (bins - 1) / (hi - lo)
        # Larger than the float32 rounding of a * scale + offset for any a in [lo, hi] (about 2**-23 of
        # (1 + |a| scale + |offset|)), and far below one cell.
        bias = 2.0**-20 * (1.0 + max(abs(lo), abs(hi)) * self.scale)
        if bias > 0.25:
            raise ValueError(f"bins={bins} on range {(lo, hi)} is too fine to bin exactly; use fewer bins")
        self.offset = 1.0 - lo * self.scale - bias
        self._buffers = None

    def _workspace(self, a):
        if self._buffers is None or self._buffers[0].numel() < a.numel() or self._buffers[0].device != a.device:
            # float32 suffices for u: its rounding error is far below the bias (see __init__).
            self._buffers = (torch.empty(a.numel(), dtype=torch.float32, device=a.device),
                             torch.empty(a.numel(), dtype=torch.int32, device=a.device),
                             torch.empty(a.numel(), dtype=a.dtype, device=a.device),
                             torch.empty(a.numel(), dtype=torch.bool, device=a.device))
        return [buf[: a.numel()].view(a.shape) for buf in self._buffers]

    def digits(self, a):
        u, idx, edge, above = self._workspace(a)
        table = self.next_edge.to(device=a.device, dtype=a.dtype)
        # u = (index of the cell below the true one, or the true one) + 1, in [0, bins]
        torch.mul(a, self.scale, out=u)
        u.add_(self.offset).floor_().clamp_(0, self.bins)
        idx.copy_(u)
        torch.index_select(table, 0, idx.view(-1), out=edge.view(-1))
        torch.ge(a, edge, out=above)
        u.add_(above.view(torch.uint8))
        # u is now the cell + 1: 0 means below the range, bins means at or above its end. The original indexes
        # edge -1 (the last one) below the range, so those two share one cell: merge them.
        return u.remainder_(self.bins), [self.bins] * a.shape[-1]


class _WidthGrid:
    """Cells floor(a / width) of an unbounded grid anchored at 0."""

    def __init__(self, width):
        self.width = width

    def digits(self, a):
        # The division is done in the activations' own dtype, as the published code does on float32 arrays.
        q = torch.floor(a / torch.tensor(self.width, dtype=a.dtype, device=a.device))
        if bool((q.abs() >= 2.0**52).any()):
            raise ValueError(
                f"activations / width reach {float(q.abs().max()):.3g}: too many cells to index exactly. "
                "Use a larger width, or the fixed-range grid (bins=, range=)."
            )
        return _shift_to_zero(q.double())


class _AdaptiveGrid:
    """Equal-count cells over each item's distinct values.

    With the item's M distinct values sorted as u_0 < ... < u_{M-1}, the interior edges are u_{floor(k M / bins)}
    for k = 1 .. bins-1 and a value's cell is the number of edges <= it. For the value of distinct rank j that
    number is min(bins - 1, ceil((j + 1) * bins / M) - 1), computed here in integers.
    """

    def __init__(self, bins):
        self.bins = bins

    def digits(self, a):
        b, n, d = a.shape
        ranks, m = dense_rank(a.reshape(b, n * d))
        m = m[:, None]
        cells = torch.clamp(((ranks + 1) * self.bins + m - 1) // m - 1, max=self.bins - 1)
        return _shift_to_zero(cells.reshape(b, n, d).double())


def _shift_to_zero(cells):
    """Digits >= 0 per (item, unit), and the radix of each unit (the largest digit + 1 over the chunk)."""
    digits = cells - cells.amin(dim=1, keepdim=True)
    return digits, (digits.amax(dim=(0, 1)) + 1).long().tolist()


def row_keys(digits: torch.Tensor, radix: list, reserve: int = 1) -> tuple[torch.Tensor, bool]:
    """One int64 key per row of ``digits`` ([B, N, d], exact non-negative integers stored as floats) such that
    keys are equal iff rows are equal. ``radix[j]`` bounds unit j's digits; keys stay below 2**62 / reserve.
    Also returns True when it found every row of every item distinct (False: not known).

    Units are packed in two levels: groups whose mixed-radix value is exact in the digits' float type (one
    matrix product forms every group's value), and segments of groups whose value fits the int64 budget.
    A segment after the first is appended to the dense rank (< N) of the key so far.
    """
    b, n, d = digits.shape
    sparse = [j for j, r in enumerate(radix) if r > n]
    if sparse:
        # A unit with more possible cells than samples (wide unbounded grids): its dense rank (< n) has the
        # same equalities and keeps the packing small.
        digits = digits.clone()
        for j in sparse:
            digits[:, :, j] = dense_rank(digits[:, :, j].long())[0].to(digits.dtype)
            radix[j] = int(digits[:, :, j].max()) + 1
    limit = 2**_KEY_BITS // reserve
    if n * n >= limit:
        raise ValueError(f"N = {n} samples is too many to key rows exactly in 62 bits; use fewer probe samples")
    exact = 2**24 if digits.dtype == torch.float32 else 2**53
    groups, segments = [], [[]]  # groups: (first unit, last unit + 1, value range); segments: group indices
    start, g_prod, s_prod, factor = 0, 1, 1, 1
    for j, r in enumerate(radix):
        new_segment = s_prod * r * factor >= limit
        if j > start and (new_segment or g_prod * r >= exact):
            segments[-1].append(len(groups))
            groups.append((start, j, g_prod))
            start, g_prod = j, 1
            if new_segment:
                segments.append([])
                s_prod, factor = 1, n
        g_prod *= r
        s_prod *= r
    segments[-1].append(len(groups))
    groups.append((start, d, g_prod))

    flat = digits.reshape(b * n, d)
    keys = None
    for seg in segments:
        # The groups of one segment: one product of its units with their place values, computed only when
        # reached (wide layers usually stop after a segment or two, once every row differs).
        u0, u1 = groups[seg[0]][0], groups[seg[-1]][1]
        weights = torch.zeros(u1 - u0, len(seg), dtype=digits.dtype)
        for k, g in enumerate(seg):
            g0, g1, _ = groups[g]
            weights[g0 - u0:g1 - u0, k] = torch.from_numpy(np.cumprod([1] + radix[g0:g1 - 1], dtype=np.float64))
        values = torch.matmul(flat[:, u0:u1], weights.to(digits.device)).long().reshape(b, n, -1)
        part, mult = values[:, :, 0], 1
        for k in range(1, len(seg)):
            mult *= groups[seg[k - 1]][2]
            part = part + values[:, :, k] * mult
        if keys is None:
            keys = part
            continue
        order, new = sorted_runs(keys)
        if bool(new.all()):
            # Every row already differs from every other: further units cannot merge any two rows.
            return keys, True
        keys = ranks_from_runs(order, new) * (mult * groups[seg[-1]][2]) + part  # dense rank (< n) first
    return keys, False


def label_entropy(y: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Plug-in H(Y) in bits per row of dense labels [B, N]."""
    n = y.shape[1]
    counts = torch.zeros(y.shape[0], n_classes, dtype=dtype, device=y.device)
    counts.scatter_add_(1, y, torch.ones(1, 1, dtype=dtype, device=y.device).expand_as(y))
    return math.log2(n) - torch.special.xlogy(counts, counts).sum(1) / (n * math.log(2))


def _discrete_mi(keys: torch.Tensor, y: torch.Tensor, n_classes: int, h_y: torch.Tensor, dtype):
    b, n = keys.shape
    # Item i's joint keys are offset by i * span, so one flat sort orders every item at once (faster than a
    # sort per row) and item i lands in positions [i n, (i + 1) n). Sorting by key * C + y also sorts by key,
    # so the one sort serves both entropies.
    span = 2**_KEY_BITS // b
    offsets = torch.arange(b, device=keys.device)[:, None] * span
    joint = (keys * n_classes + y + offsets).reshape(-1)
    sorted_joint = torch.sort(joint)[0].reshape(b, n) - offsets
    h_ty = entropy_of_runs(run_starts(sorted_joint), dtype)
    h_t = entropy_of_runs(run_starts(torch.div(sorted_joint, n_classes, rounding_mode="floor")), dtype)
    return h_t, h_t + h_y - h_ty


def _grid(bins, range, width, adaptive):
    """Validate the grid arguments: returns (kind, bins, (lo, hi), width) with kind in range/width/adaptive."""
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
        unit: ``bins - 1`` cells [e_k, e_k+1) plus one overflow cell shared by every value >= high or < low (the
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
        ``activations.shape[:-2]`` on the activations' device (float32 on MPS).

    Raises
    ------
    ValueError
        Non-finite activations (the batch index is named), wrong shapes, labels that do not match N,
        conflicting grid arguments.

    Examples
    --------
    >>> import torch
    >>> acts = torch.tanh(torch.randn(274, 4096, 10))      # 274 recorded epochs of one layer
    >>> labels = torch.randint(0, 2, (4096,))
    >>> r = binned_mi(acts, labels, bins=30, range=(-1.0, 1.0))
    >>> r.ixt.shape
    torch.Size([274])
    """
    kind, bins, rng, width = _grid(bins, range, width, adaptive)
    batch = as_batch(activations)
    y, n_classes = as_labels(labels, batch)
    grid = {"range": lambda: _RangeGrid(bins, *rng), "width": lambda: _WidthGrid(width),
            "adaptive": lambda: _AdaptiveGrid(bins)}[kind]()
    a = batch.acts
    n_items, n, d = a.shape
    dtype = result_dtype(batch.device)
    h_y = label_entropy(y, n_classes, dtype)
    ixt = torch.empty(n_items, dtype=dtype, device=batch.device)
    ity = torch.empty_like(ixt)
    step = max(1, _CHUNK_ELEMENTS // (n * d))
    for s in builtins.range(0, n_items, step):
        chunk = a[s:s + step]
        check_finite(chunk, batch, s)
        digits, radix = grid.digits(chunk)
        keys, all_distinct = row_keys(digits, radix, reserve=n_classes * len(chunk))
        per_item = y.shape[0] > 1
        yc = y[s:s + step] if per_item else y
        hy = h_y[s:s + step] if per_item else h_y
        if all_distinct:
            # Every count is 1: H(T) = H(T, Y) = log2 N exactly, so I(T;Y) = H(Y).
            ixt[s:s + step], ity[s:s + step] = math.log2(n), hy
        else:
            ixt[s:s + step], ity[s:s + step] = _discrete_mi(keys, yc, n_classes, hy, dtype)
    return BinnedResult(ixt=ixt.reshape(batch.batch_shape), ity=ity.reshape(batch.batch_shape))




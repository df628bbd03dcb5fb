"""Binned (discrete) estimates of I(X;T) and I(T;Y).

Each unit's activation is mapped to a cell; a sample's binned layer is the tuple of its units' cells. X is
uniform over the N probe samples, each a distinct value, so I(X;T) = H(binned T), and
I(T;Y) = H(T) + H(Y) - H(T, Y) = H(T) - sum_y p(y) H(T | Y=y), all plug-in and in bits.

Rows are compared exactly: a sample's cell tuple becomes one int64 key by mixed-radix packing; layers too wide
for one key are packed a group of units at a time, and the partial key is replaced by its dense rank (< N)
before the next group is appended, so two different rows can never share a key.

Work is done a chunk of batch items at a time, sized so that the temporaries stay in the CPU cache across the
several elementwise passes. On CPU the fixed-range grid takes a faster route with the same cells (a compiled
kernel, or float64 keys and one sort per item without a compiler, see ``_range_rows``). Every route sums
c log2 c over the cells in the one order of ``_entropy.sum_xlogx``, so results are bit-identical across routes,
thread counts and devices.
"""
from __future__ import annotations

import builtins
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from infoplane._validate import check_bool, check_float, check_int
from infoplane.estimators._cpu import count_kernel as _count_kernel
from infoplane.estimators._cpu import range_rows as _range_rows
from infoplane.estimators._entropy import dense_rank, plugin_counts, ranks_from_runs, sorted_runs
from infoplane.estimators._entropy import miller_madow as _miller_madow
from infoplane.estimators._inputs import Batch, as_batch, as_labels, check_finite, result_dtype
from infoplane.estimators.base import PlaneResult


class BinRangeWarning(UserWarning):
    """Fixed-range bins met activations outside their range (a ReLU layer on the default [-1, 1] grid, say):
    every value past the range shares one bin, so the binned plane measures the range, not the layer."""


def _outward(value: float, step: Any) -> float:
    """``value`` rounded to two significant digits away from the range's inside (``step``: ceil or floor)."""
    if value == 0:
        return 0.0
    unit = 10.0 ** (math.floor(math.log10(abs(value))) - 1)
    return float(f"{step(value / unit) * unit:.2g}")


def range_note(activations: Any, range: tuple, layer: str) -> Optional[str]:
    """Why fixed-range bins do not fit ``layer``'s activations, or None when every value lies in ``range``.

    Parameters
    ----------
    activations : tensor or array
        The layer's activations (any shape).
    range : (float, float)
        The bins' range.
    layer : str
        The layer's name, for the message.

    Returns
    -------
    str or None
        The observed range, the share of values outside, and what to use instead.
    """
    lo, hi = float(range[0]), float(range[1])
    a = activations if isinstance(activations, torch.Tensor) else torch.as_tensor(np.asarray(activations))
    if a.numel() == 0:
        return None
    a_min, a_max = (float(v) for v in torch.stack([a.amin(), a.amax()]).tolist())
    if a_min >= lo and a_max <= hi:
        return None
    outside = float(((a < lo) | (a > hi)).float().mean())
    # A suggestion that covers what was seen, to two significant digits: [0, max] for non-negative (ReLU) layers.
    top = _outward(a_max, math.ceil) if a_max > hi else hi
    low = 0.0 if a_min >= 0 else _outward(a_min, math.floor) if a_min < lo else lo
    return (f"layer {layer!r}: activations span [{a_min:.4g}, {a_max:.4g}], outside the bins' range [{lo:g}, {hi:g}] "
            f"({outside:.1%} of the values fall outside and share one bin), so the binned I(X;T) measures the "
            f"range, not the layer. Use a range that covers them (--range {low:g} {top:g}, or "
            f"Binning(range=({low:g}, {top:g}))), adaptive bins (--estimator adaptive, Binning(adaptive=True)), or "
            f"another estimator (kde, or noisy for a network with noise inside)")


# Keys stay below 2**62 so that key * C + label cannot overflow int64.
_KEY_BITS = 62
# Activation elements per chunk of batch items digitised at once (about 1 MiB of float32), so that the several
# elementwise passes over them stay in the CPU cache.
_CHUNK_ELEMENTS = 2**18
# Rows (samples x items) sorted or counted at once: large enough to share each operation's fixed cost.
_GROUP_ROWS = 2**19


@dataclass
class BinnedResult(PlaneResult):
    """Result of :func:`binned_mi`: the plane's two fields, nothing more.

    Attributes
    ----------
    ixt : torch.Tensor
        I(X;T) in bits, shape ``activations.shape[:-2]``.
    ity : torch.Tensor
        I(T;Y) in bits, same shape.
    """


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
            # u in float32 suffices: its rounding error is far below the bias (see __init__).
            self._buffers = (torch.empty(a.numel(), dtype=torch.float32, device=a.device),
                             torch.empty(a.numel(), dtype=torch.int64, device=a.device),
                             torch.empty(a.numel(), dtype=a.dtype, device=a.device))
        return [buf[: a.numel()].view(a.shape) for buf in self._buffers]

    def digits(self, a):
        # Everything stays in one float dtype and avoids boolean temporaries and integer division: those passes
        # are several times slower than plain float arithmetic on CPU.
        u, idx, edge = self._workspace(a)
        table = self.next_edge.to(device=a.device, dtype=a.dtype)
        # u = (index of the cell below the true one, or the true one) + 1, in [0, bins]
        torch.mul(a, self.scale, out=u)
        u.add_(self.offset).floor_().clamp_(0, self.bins)
        idx.copy_(u)
        torch.index_select(table, 0, idx.view(-1), out=edge.view(-1))
        # step = 1 where a >= edge, else 0 (the sign of a difference of two floats is exact).
        torch.sub(a, edge, out=edge).sign_().add_(1.0).clamp_(max=1.0)
        u.add_(edge)
        # u is now the cell + 1: 0 means below the range, bins means at or above its end. The original indexes
        # edge -1 (the last one) below the range, so those two share one cell: map bins to 0.
        torch.sub(u, self.bins - 1, out=edge).clamp_(0.0, 1.0)
        u.sub_(edge, alpha=self.bins)
        return idx.copy_(u), [self.bins] * a.shape[-1]


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
        return _shift_to_zero(q.long())


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
        return _shift_to_zero(cells.reshape(b, n, d))


class ExactValues:
    """Each distinct exact value of a unit is its own symbol: its dense rank among the item's values of that unit."""

    def digits(self, a: torch.Tensor) -> tuple[torch.Tensor, list]:
        b, n, d = a.shape
        ranks, _ = dense_rank(a.transpose(1, 2).reshape(b * d, n))
        digits = ranks.reshape(b, d, n).transpose(1, 2)
        return digits, (digits.amax(dim=(0, 1)) + 1).tolist()


def _shift_to_zero(cells):
    """Digits >= 0 per (item, unit), and the radix of each unit (the largest digit + 1 over the chunk)."""
    digits = cells - cells.amin(dim=1, keepdim=True)
    return digits, (digits.amax(dim=(0, 1)) + 1).tolist()


def row_keys(digits: torch.Tensor, radix: list, reserve: int = 1) -> tuple[torch.Tensor, int]:
    """One int64 key per row of ``digits`` ([B, N, d], non-negative integers) such that keys are equal iff rows
    are equal. ``radix[j]`` bounds unit j's digits; keys stay below 2**62 / reserve.

    Returns ``(keys, key_bound)``: every key is < key_bound.

    Only integer arithmetic is used (no floating-point product, which reduced-precision matmul settings such as
    TF32 or bf16 could round). Units are packed in segments whose mixed-radix value fits the int64 budget; a
    segment after the first is appended to the dense rank (< N) of the key so far.
    """
    b, n, d = digits.shape
    radix = list(radix)
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
    segments = []  # (first unit, last unit + 1, product of the radices)
    start, prod, factor = 0, 1, 1
    for j, r in enumerate(radix):
        if j > start and prod * r * factor >= limit:
            segments.append((start, j, prod))
            start, prod, factor = j, 1, n
        prod *= r
    segments.append((start, d, prod))

    keys, bound = None, 1
    for u0, u1, prod in segments:
        # Computed only when reached: wide layers usually stop after a segment or two, once every row differs.
        place = np.cumprod([1] + radix[u0:u1 - 1], dtype=np.int64).tolist()
        part = _mixed_radix(digits[:, :, u0:u1], place)
        if keys is None:
            keys, bound = part, prod
            continue
        order, new = sorted_runs(keys)
        if bool(new.all()):
            # Every row already differs from every other: further units cannot merge any two rows.
            return keys, bound
        keys = ranks_from_runs(order, new) * prod + part  # dense rank (< n) first
        bound = n * prod
    return keys, bound


def _mixed_radix(digits, place):
    """sum_j digits[..., j] * place[j] in int64 (exact: the caller keeps the sum below 2**62)."""
    if digits.shape[-1] <= 16:
        # Column by column: a reduction over a short innermost axis is slower than a few strided passes.
        out = digits[:, :, 0].to(torch.int64, copy=True)
        for j in builtins.range(1, digits.shape[-1]):
            out.add_(digits[:, :, j], alpha=place[j])
        return out
    return (digits.to(torch.int64) * torch.tensor(place, device=digits.device)).sum(-1)


def label_entropy(y: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Plug-in H(Y) in bits per row of dense labels [B, N]."""
    return _label_stats(y, n_classes, dtype)[0]


def _label_stats(y, n_classes, dtype):
    """Plug-in H(Y) (bits) and the number of classes present, per row of dense labels [B, N]."""
    n = y.shape[1]
    counts = torch.zeros(y.shape[0], n_classes, dtype=dtype, device=y.device)
    counts.scatter_add_(1, y, torch.ones(1, 1, dtype=dtype, device=y.device).expand_as(y))
    # -sum p log2 p over the classes: more accurate than log2 N - sum c log2 c / N (this is the ceiling of I(T;Y)).
    p = counts / n
    h = -torch.where(counts > 0, p * torch.log2(p), 0.0).sum(1)
    return h, (counts > 0).sum(1)


def plugin_mi(batch: Batch, y: torch.Tensor, n_classes: int, grid: Any,
              miller_madow: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(I(X;T), I(T;Y)) in bits per batch item, rows made discrete by ``grid.digits``, clamped to their range.

    Items are processed in groups: digits and row keys a cache-sized chunk at a time, then one sort (or one
    count) for the whole group, so the fixed cost of each tensor operation is shared by many items.
    """
    a = batch.acts
    n_items, n, d = a.shape
    dtype = result_dtype(batch.device)
    h_y, classes_present = _label_stats(y, n_classes, dtype)
    log2n = math.log2(n)
    ixt = torch.empty(n_items, dtype=dtype, device=batch.device)
    ity = torch.empty_like(ixt)
    per_item = y.shape[0] > 1
    label_bits = max(1, (n_classes - 1).bit_length())

    def finish(g0, g1, h_t, h_ty, k_t, k_ty):
        c = g1 - g0
        hy = h_y[g0:g1] if per_item else h_y.expand(c)
        cy = classes_present[g0:g1] if per_item else classes_present.expand(c)
        h_t_given_y = h_ty - hy
        if miller_madow:
            # H(T|Y) = sum_y p(y) H(T|Y=y); each class's term (K_y - 1) / (2 N_y ln 2) weighted by N_y / N sums
            # to (K_TY - classes present) / (2 N ln 2).
            h_t = h_t + _miller_madow(k_t, n).to(dtype)
            h_t_given_y = h_t_given_y + (k_ty - cy).to(dtype) / (2 * n * math.log(2))
        # Rounding (and the bias terms) can step a hair outside the range: clamp (see docs/estimators.md).
        ixt[g0:g1] = h_t.clamp(0.0, log2n)
        ity[g0:g1] = torch.minimum((h_t - h_t_given_y).clamp(min=0.0), hy)
        # Every count 1: H(T) = log2 N and H(T|Y) = log2 N - H(Y) exactly, so I(T;Y) = H(Y) (the Miller-Madow
        # terms would push both past their ceilings, to which they are clamped). Set exactly, on every route.
        distinct = k_t.to(ixt.device) == n
        ixt[g0:g1][distinct] = log2n
        ity[g0:g1][distinct] = hy[distinct]

    def check(part, start):
        check_finite(part, batch, start)

    if isinstance(grid, (_RangeGrid, ExactValues)):
        # On CPU, the compiled counting kernel: cells of the fixed grid, or exact rows (None where it does not apply).
        counted = _count_kernel.plugin_counts(a, y, grid if isinstance(grid, _RangeGrid) else None, label_bits, check)
        if counted is not None:
            finish(0, n_items, *counted)
            return ixt.reshape(batch.batch_shape), ity.reshape(batch.batch_shape)
    if (isinstance(grid, _RangeGrid) and batch.device.type == "cpu" and dtype == torch.float64
            and _range_rows.fits(grid.bins, d, label_bits)):
        # Without a compiler: exact float64 row keys and one sort per item (see _range_rows).
        for g0, g1, counts in _range_rows.group_counts(a, y, grid, label_bits, check):
            finish(g0, g1, *counts)
        return ixt.reshape(batch.batch_shape), ity.reshape(batch.batch_shape)
    group = max(1, min(n_items, _GROUP_ROWS // n))
    chunk = max(1, _CHUNK_ELEMENTS // (n * d))
    for g0 in builtins.range(0, n_items, group):
        g1 = min(n_items, g0 + group)
        c = g1 - g0
        keys = torch.empty(c, n, dtype=torch.int64, device=batch.device)
        bound = 1
        for s in builtins.range(g0, g1, chunk):
            part = a[s:min(g1, s + chunk)]
            check_finite(part, batch, s)
            digits, radix = grid.digits(part)
            k, b = row_keys(digits, radix, reserve=(2 << label_bits) * c)
            keys[s - g0:s - g0 + len(part)] = k
            bound = max(bound, b)
        yc = y[g0:g1] if per_item else y
        item_bits = (bound - 1).bit_length() + label_bits
        item = torch.arange(c, device=batch.device)[:, None]
        joint = ((item << item_bits) + (keys << label_bits) + yc).reshape(-1)
        finish(g0, g1, *plugin_counts(joint, c, n, label_bits, item_bits))
    return ixt.reshape(batch.batch_shape), ity.reshape(batch.batch_shape)


def grid_arguments(bins: Optional[int], range: Optional[tuple], width: Optional[float],
                   adaptive: bool) -> tuple[str, Optional[int], Optional[tuple[float, float]], Optional[float]]:
    """Validate the grid arguments: returns (kind, bins, (lo, hi), width) with kind in range/width/adaptive."""
    if width is not None:
        if bins is not None or range is not None or adaptive:
            raise ValueError(
                "width= selects the fixed-width grid and cannot be combined with bins=, range= or adaptive=True; "
                "pass either width=0.07 alone, or bins= with range= (or adaptive=True)."
            )
        return "width", None, None, check_float(width, "width", positive=True)
    if bins is None:
        bins = 30
    bins = check_int(bins, "bins", minimum=2,
                     what="an integer >= 2 (the number of edge points / symbols per unit)")
    adaptive = check_bool(adaptive, "adaptive")
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


def binned_mi(activations: Any, labels: Any, *, bins: Optional[int] = None, range: Optional[tuple] = None,
              width: Optional[float] = None, adaptive: bool = False, miller_madow: bool = False) -> BinnedResult:
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
    miller_madow : bool, default False
        Add the Miller–Madow bias correction (K - 1) / (2 N ln 2) bits to each plug-in entropy (K occupied cells;
        for H(T|Y) per class, with that class's cells and samples), then clamp.

    Returns
    -------
    BinnedResult
        ``ixt`` = I(X;T) = H(binned T) and ``ity`` = I(T;Y), in bits, float64 tensors of shape
        ``activations.shape[:-2]`` on the activations' device (float32 on MPS). ``ixt`` is clamped to
        [0, log2 N] and ``ity`` to [0, H(Y)], H(Y) the plug-in entropy of that item's labels.

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
    kind, bins, rng, width = grid_arguments(bins, range, width, adaptive)
    miller_madow = check_bool(miller_madow, "miller_madow")
    batch = as_batch(activations)
    y, n_classes = as_labels(labels, batch)
    grid: _RangeGrid | _WidthGrid | _AdaptiveGrid
    if kind == "range":
        assert rng is not None  # grid_arguments gives the range grid its (lo, hi)
        grid = _RangeGrid(bins, *rng)
    elif kind == "width":
        grid = _WidthGrid(width)
    else:
        grid = _AdaptiveGrid(bins)
    ixt, ity = plugin_mi(batch, y, n_classes, grid, miller_madow)
    return BinnedResult(ixt=ixt, ity=ity)


"""The numpy CPU route of the fixed-range binning grid: float64 row keys and sorted rows.

Where a C compiler exists, ``binning`` hands the fixed grid to the kernel of ``_count_kernel`` instead; this
route runs without one (same results):

For the grid of :class:`infoplane.estimators.binning._RangeGrid` every unit has ``bins`` symbols, so a row's
mixed-radix key with the label in its lowest bits, ``key * 2**label_bits + label``, is below
``bins**d * 2**label_bits``. When that bound leaves a margin below 2**53 every key, and every partial sum that
builds it, is an integer that float64 holds exactly, whatever the order of the additions. That lets the key be
built with few passes over the activations:

- the cell of each value is found in float32 (a scaled floor, corrected by one comparison with the next float32
  edge, as in ``_RangeGrid.digits``), the shared overflow cell folded in with two cheap passes, and the result
  written as float64;
- the key of every row is one float64 matrix-vector product of those digits with the place values, added to
  the labels (``addmv``). Products of float64 values are never subject to the reduced-precision (TF32/bf16)
  matmul settings, and sums of integers below 2**53 are exact in any order, so the key is exact;
- each item's N keys are sorted on their own (numpy's vectorised sort), and H(T, Y) and H(T) come from the run
  lengths of the sorted keys, summed by :func:`._entropy.sum_xlogx` like every other route, so the estimates
  are bit-identical to the kernel's and to the generic route's.

The work is done a chunk of items at a time into reused buffers: fresh temporaries of this size cost more in
page faults than the arithmetic does. With several torch threads, groups of items are shared by worker
threads (see :func:`group_counts`); every group's numbers are the same whichever thread computes them.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from infoplane.estimators._entropy import entropy_from_cells, plugin_counts

# Activation elements digitised at once by torch passes (one thread): measured fastest among 2**14..2**18 at
# N = 4096, d = 3..10, as each pass's fixed cost is shared by more elements.
_CHUNK_ELEMENTS = 2**18
# Items whose sorted keys are counted together: shares the fixed cost of each numpy call.
_GROUP_ROWS = 2**17
# Elements per pass in worker threads (numpy passes, see group_counts): buffers within a core's L2 cache.
_THREAD_CHUNK_ELEMENTS = 2**16
# Keys, and the sums that build them, stay below 2**52: exact integers in float64 with a margin of a factor 2.
_FLOAT_KEY_BITS = 52


def fits(bins: int, d: int, label_bits: int) -> bool:
    """Whether rows of ``d`` units with ``bins`` symbols each, and the label, key exactly in float64."""
    return d * math.log2(bins) + label_bits + 1 <= _FLOAT_KEY_BITS


class RangeKeys:
    """Float64 joint keys ``key * 2**label_bits + label`` of the fixed-range grid's rows (see the module doc).

    ``grid`` is a ``_RangeGrid`` (its edge table, scale and offset are used as they are); digits are those of
    ``_RangeGrid.digits``: the number of float32 edges <= the value, bins (at or past the end) taken as 0.
    """

    def __init__(self, grid, d: int, label_bits: int, dtype: torch.dtype):
        self.bins, self.d = grid.bins, d
        self.scale, self.offset = grid.scale, grid.offset
        self.table = grid.next_edge.to(dtype)  # index u -> edge u, inf past the last, in the activations' dtype
        self.offset_t = torch.tensor(self.offset, dtype=torch.float32)
        place = [float(grid.bins**j * 2**label_bits) for j in range(d)]
        self.place = torch.tensor(place, dtype=torch.float64)
        self._buffers = None

    def _workspace(self, numel, dtype):
        if self._buffers is None or self._buffers[0].numel() < numel:
            self._buffers = (torch.empty(numel, dtype=torch.float32), torch.empty(numel, dtype=dtype),
                             torch.empty(numel, dtype=torch.int32), torch.empty(numel, dtype=torch.float64))
            self._numpy = [buf.numpy() for buf in self._buffers] + [self.table.numpy()]
        return [buf[:numel] for buf in self._buffers]

    def keys_into(self, a: torch.Tensor, out: torch.Tensor) -> None:
        """Add the place-value sum of each row of ``a`` ([c, N, d], CPU) to ``out`` ([c, N] float64, holding
        the labels): ``out`` then holds the joint keys."""
        shape = a.shape
        u, edge, idx, digits = (buf.view(shape) for buf in self._workspace(a.numel(), a.dtype))
        # floor(u) = (index of the cell below the true one, or the true one) + 1, in [0, bins] (see _RangeGrid).
        torch.add(self.offset_t, a, alpha=self.scale, out=u)
        u.clamp_(0, self.bins)
        idx.copy_(u)  # int32 truncation: floor(u), as u >= 0
        u.floor_()
        torch.index_select(self.table, 0, idx.view(-1), out=edge.view(-1))
        torch.ge(a, edge, out=edge)  # 1 where the value is at or past the next edge (an exact comparison)
        u.add_(edge)  # the number of edges <= the value, in [0, bins]: 0 below the range, bins at or past its end
        # The original indexes edge -1 (the last one) below the range, so those two share one cell: bins -> 0.
        torch.ge(u, float(self.bins), out=edge)
        torch.add(u, edge, alpha=-self.bins, out=digits)
        out.view(-1).addmv_(digits.view(-1, shape[-1]), self.place)

    def keys_into_numpy(self, a: torch.Tensor, out: torch.Tensor) -> None:
        """:meth:`keys_into` with numpy passes (never multithreaded, and the GIL released inside each), for
        worker threads. The float32 value u may round differently from torch's, but any u within the bias of
        ``_RangeGrid`` gives the same cell after the exact comparison with the next edge."""
        x = a.numpy()
        shape = x.shape
        self._workspace(x.size, a.dtype)
        u, edge, idx, digits, table = [buf[:x.size].reshape(shape) for buf in self._numpy[:4]] + [self._numpy[4]]
        np.multiply(x, self.scale, out=u)
        np.add(u, self.offset, out=u)
        np.clip(u, 0, self.bins, out=u)
        np.copyto(idx, u, casting="unsafe")  # int32 truncation: floor(u), as u >= 0
        np.floor(u, out=u)
        np.take(table, idx, out=edge, mode="wrap")  # indices are in range: "wrap" only skips numpy's copy
        np.greater_equal(x, edge, out=edge)
        np.add(u, edge, out=u)
        np.greater_equal(u, self.bins, out=edge)
        np.multiply(edge, -self.bins, out=edge)
        np.add(u, edge, out=digits)
        out.view(-1).addmv_(torch.from_numpy(digits).view(-1, shape[-1]), self.place)


class SortedRowCounts:
    """Plug-in H(T), H(T, Y) and occupied cells of rows of float64 joint keys, with buffers reused across calls.

    Fresh arrays of one element per sample would be fresh pages from the OS each time (more page faults than
    arithmetic), so those live in buffers sized for ``rows`` items of ``n`` samples.
    """

    def __init__(self, rows: int, n: int, label_bits: int):
        total = rows * n
        self.n, self.label_scale = n, 2.0**-label_bits
        self.item_starts = np.arange(rows) * n
        self.new, self.t_new = np.empty(total, dtype=bool), np.empty(total, dtype=bool)
        self.lengths = np.empty(total, dtype=np.int64)
        self.t = np.empty(total)

    def __call__(self, keys: np.ndarray):
        """Per row of ``keys`` ([c, N] float64 joint keys ``key * 2**label_bits + label``, sorted in place here):
        ``(h_t, h_ty, k_t, k_ty)``, numpy arrays [c] in bits and cells.

        Each entropy is log2 N - (1/N) sum_cells c log2 c, the sum taken from the run lengths' count-of-counts by
        :func:`._entropy.sum_xlogx`, so the results are bit-identical to every other route's.
        """
        c, n = keys.shape
        total = c * n
        keys.sort(axis=1)
        flat = keys.reshape(-1)
        new = self.new[:total]
        new[0] = True
        np.not_equal(flat[1:], flat[:-1], out=new[1:])
        new[::n] = True  # every item starts a run
        starts = np.flatnonzero(new)
        k = len(starts)
        first = np.searchsorted(starts, self.item_starts[:c])  # the first run of each item
        lengths = self.lengths[:k]
        np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
        lengths[-1] = total - starts[-1]
        h_ty, k_ty = self._entropy(lengths, first, k)
        # Runs of T are unions of consecutive runs of (T, Y): sorting by (key, label) also sorts by key.
        t = np.take(flat, starts, out=self.t[:k], mode="wrap")
        t *= self.label_scale
        np.floor(t, out=t)  # the row's key without its label (exact: a power-of-two scaling of an integer)
        t_new = self.t_new[:k]
        t_new[0] = True
        np.not_equal(t[1:], t[:-1], out=t_new[1:])
        t_new[first] = True
        starts_t = starts[t_new]
        k = len(starts_t)
        lengths = self.lengths[:k]
        np.subtract(starts_t[1:], starts_t[:-1], out=lengths[:-1])
        lengths[-1] = total - starts_t[-1]
        h_t, k_t = self._entropy(lengths, np.searchsorted(starts_t, self.item_starts[:c]), k)
        return h_t, h_ty, k_t, k_ty

    def _entropy(self, lengths, first, k):
        """Entropy (bits) and number of runs per item, from the run lengths and each item's first run."""
        runs = np.empty_like(first)
        np.subtract(first[1:], first[:-1], out=runs[:-1])
        runs[-1] = k - first[-1]
        # Runs of one sample add 0 (1 log2 1): only longer runs enter the count-of-counts.
        longer = np.flatnonzero(lengths > 1)
        item = np.searchsorted(first, longer, side="right") - 1
        return entropy_from_cells(item, lengths[longer], len(first), self.n), runs


def group_counts(a: torch.Tensor, y: torch.Tensor, grid, label_bits: int, check):
    """``(g0, g1, (h_t, h_ty, k_t, k_ty))`` for consecutive groups of items g0..g1 of ``a`` ([B, N, d] on CPU),
    labels ``y`` ([B or 1, N] dense int64), as :func:`._entropy.plugin_counts` returns them (torch tensors).

    ``check(part, start)`` is called on activations of items start.. before they are used (finiteness).
    Small key spaces (at most 2 N cells) are counted by plugin_counts' bincount route (numpy on CPU) on the same
    integer keys. Otherwise each item's keys are sorted and counted by :class:`SortedRowCounts`.

    Threads: with more than one torch thread, groups are shared by that many worker threads, each building and
    counting its own groups from start to end with its own buffers. Their torch passes are kept below torch's
    parallel grain (``_THREAD_CHUNK_ELEMENTS``), so they run inline in the worker, and numpy releases the GIL
    while it sorts and counts: workers never wait for one another. (Torch's own intra-op threads would meet at a
    barrier after every pass; on a machine whose cores are busy with other work those barriers stall for whole
    scheduler slices.) Each group's numbers do not depend on the thread that computed them.
    """
    n_items, n, d = a.shape
    span_bits = (grid.bins**d - 1).bit_length() + label_bits
    by_count = (1 << span_bits) <= 2 * n
    group = max(1, min(n_items, _GROUP_ROWS // n))
    labels = y.to(torch.float64)
    starts = list(range(0, n_items, group))
    workers = max(1, min(torch.get_num_threads(), len(starts)))

    def build(g0, keys_of, keys, rows_per_pass):
        """Keys of items g0.. into ``keys`` ([group, N]), ``rows_per_pass`` rows of [B * N, d] at a time."""
        g1 = min(n_items, g0 + group)
        keys = keys[:g1 - g0]
        keys.copy_(labels[g0:g1] if y.shape[0] > 1 else labels.expand(g1 - g0, n))
        flat_keys, flat = keys.view(-1), a[g0:g1].reshape(-1, d)
        into = keys_of.keys_into if workers == 1 else keys_of.keys_into_numpy
        for r in range(0, len(flat), rows_per_pass):
            into(flat[r:r + rows_per_pass], flat_keys[r:r + rows_per_pass])
        return g1, keys

    def count(g0, g1, keys, counter):
        if by_count:
            # numpy arithmetic (plugin_counts counts with numpy on CPU): no torch pass above the parallel grain
            joint = (np.arange(g1 - g0)[:, None] << span_bits) + keys.numpy().astype(np.int64)
            return plugin_counts(torch.from_numpy(joint.reshape(-1)), g1 - g0, n, label_bits, span_bits)
        return tuple(torch.from_numpy(v) for v in counter(keys.numpy()))

    if workers == 1:
        keys_of = RangeKeys(grid, d, label_bits, a.dtype)
        keys = torch.empty(group, n, dtype=torch.float64)
        counter = None if by_count else SortedRowCounts(group, n, label_bits)
        chunk = max(1, _CHUNK_ELEMENTS // (n * d))  # items digitised at once
        for g0 in starts:
            for s in range(g0, min(n_items, g0 + group), chunk):
                check(a[s:min(n_items, s + chunk, g0 + group)], s)
            g1, k = build(g0, keys_of, keys, chunk * n)
            yield g0, g1, count(g0, g1, k, counter)
        return

    check(a, 0)  # once, before the workers start (they would turn a non-finite value into a bad index)
    rows_per_pass = max(1, _THREAD_CHUNK_ELEMENTS // d)

    def run(mine):
        keys_of = RangeKeys(grid, d, label_bits, a.dtype)
        keys = torch.empty(group, n, dtype=torch.float64)
        counter = None if by_count else SortedRowCounts(group, n, label_bits)
        out = []
        for g0 in mine:
            g1, k = build(g0, keys_of, keys, rows_per_pass)
            out.append((g0, g1, count(g0, g1, k, counter)))
        return out

    with ThreadPoolExecutor(workers) as pool:
        jobs = [pool.submit(run, starts[w::workers]) for w in range(workers)]
        done = sorted((r for job in jobs for r in job.result()), key=lambda r: r[0])
    yield from done

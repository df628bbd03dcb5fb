"""The compiled CPU counting of rows: cells of the fixed-range binning grid, or rows of exact values.

For each batch item the kernel finds every row's symbol and counts them. With the grid (``binned_mi``), it
digitises every activation exactly as ``_RangeGrid.digits`` does (a scaled floor with a small downward bias,
settled by one exact comparison with the next float32 edge; the shared overflow cell) and packs each row's cells
into one integer key. With exact values (``discrete_mi``), each row gets the index of its first occurrence among
the item's distinct rows, found through a hash of its values and confirmed value by value (0.0 equals -0.0);
grid rows too wide for one 63-bit key get theirs the same way, from their cells (2 bytes each, one layer-epoch
per thread at a time).
The label goes into the key's low bits, and the keys are counted in a hash table: with at most 16 classes one
pass counts each row and, next to it, its samples per label; with more, the (row, label) pairs are counted first
and the rows from the occupied pairs.

What comes back per item is what the entropies need: the count-of-counts sums ``sum_c m_c * c log2 c`` (see
:func:`._entropy.sum_xlogx`, whose order of summation the kernel follows, so the results equal the other routes'
bit for bit), the numbers of occupied cells, and a flag for items holding a value that is not finite. Items are
shared by worker threads (as many as torch's intra-op threads), each with its own tables; an item's numbers do
not depend on the thread.

The C source is ``infoplane/_native/csrc/count_rows.c``, compiled and cached by :mod:`infoplane._native.build` and
called through :func:`infoplane._native.kernels.count_rows`, which checks every argument. Without a C compiler
(or with ``INFOPLANE_NO_NATIVE=1``, or a cache that is not private) the numpy route of ``_range_rows`` (grid) or
the generic route of ``binning`` (exact values) runs.
"""
from __future__ import annotations

import ctypes
import os
import warnings

import numpy as np
import torch

from infoplane._native import build as _native
from infoplane._native import kernels
from infoplane.estimators._entropy import entropy_bits, xlogx_table

SOURCE = _native.source("count_rows.c")

# -fno-trapping-math lets the digitising loop vectorise (floor and the float-to-int conversion); it changes no
# result, only whether floating-point exception flags may be raised.
FLAGS = (*_native.FLAGS, "-fno-trapping-math")

_LOADED: ctypes.CDLL | str | None = None


class KernelFallbackWarning(UserWarning):
    """The compiled counting kernel is not available; the message says why (once per process)."""


def load() -> ctypes.CDLL | str:
    """The compiled kernel, or a string saying why it is not available (computed once per process; the reason is
    also given once as a :class:`KernelFallbackWarning`)."""
    global _LOADED
    if _LOADED is None:
        lib = _native.build("counting", SOURCE, _native.compiler(), (*FLAGS, *_native.openmp_flags()))
        if isinstance(lib, str):
            warnings.warn(f"infoplane: the compiled counting kernel is not available ({lib}); binned_mi's fixed grid "
                          "and discrete_mi take their slower numpy/torch routes, with the same results",
                          KernelFallbackWarning, stacklevel=2)
        else:
            kernels.declare_counting(lib)
        _LOADED = lib
    return _LOADED


def mode(bins: int | None, d: int, label_bits: int, n: int) -> int | None:
    """The kernel's mode for ``n`` rows of ``d`` units, or None where it does not apply: 0 for the grid
    (``bins`` symbols per unit) when a row and its label key exactly in 63 bits, 2 for wider grid rows (at most
    65536 symbols per unit), 1 for exact values (``bins=None``). The hash tables' slots (2 n at most 2**31) index
    in 32 bits."""
    if n > 2**30:
        return None
    if bins is None:
        return 1
    if (bins**d << label_bits) < 2**63:
        return 0
    return 2 if bins <= 2**16 else None


# Rows (items x samples) of one call per kernel thread: below 2 * ROWS_PER_THREAD the kernel runs on one thread.
# Its threads meet at the end of the call, and on a machine whose cores other processes keep busy a thread that
# the scheduler took off its core holds that meeting for a time slice. Measured on 2 cores (load average 10 from
# other jobs): 20 items of 4096 rows take 2.7 ms on one thread and 10 ms on two (12 and 20 ms beside one more busy
# process). On the idle machine two threads are 1.8x faster from 64 items of 4096 rows on (0.020 against 0.035 ms
# per item at d = 2, 0.055 against 0.101 at d = 10). So: every thread for large calls, one for small ones, and one
# while the load average says the cores are taken. The result does not depend on the number of threads.
ROWS_PER_THREAD = 2**16


def machine_busy() -> bool:
    """Whether other work keeps the cores busy: the 1-minute load average at or above the number of CPUs."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return False


def kernel_threads(rows: int) -> int:
    """Threads for a call over ``rows`` rows in all: torch's intra-op count (read, never set), at most one per
    :data:`ROWS_PER_THREAD` rows, and one while :func:`machine_busy`."""
    threads = max(1, min(torch.get_num_threads(), rows // ROWS_PER_THREAD))
    return 1 if threads > 1 and machine_busy() else threads


def counts(lib: ctypes.CDLL, how: int, a: torch.Tensor, y: torch.Tensor, grid, label_bits: int, table: np.ndarray):
    """Per item of ``a`` ([B, N, d] float32 or float64 on CPU) with dense labels ``y`` ([B or 1, N] int64):
    ``(s_t, s_ty, k_t, k_ty, bad)`` as numpy arrays [B]: the count-of-counts sums of T and of (T, Y) (see
    :func:`._entropy.sum_xlogx`; ``table`` is :func:`._entropy.xlogx_table` (N)), the numbers of occupied cells,
    and 1 where the item holds a value that is not finite (its other numbers are then 0).

    ``how`` is the kernel's :func:`mode`; ``grid`` a ``binning._RangeGrid`` (rows are cells of that grid), or None
    (rows of exact values)."""
    a = a.contiguous()
    y = y.contiguous()
    n_items, n, d = a.shape
    edges = (grid.next_edge if grid is not None else torch.zeros(1)).to(a.dtype).contiguous()
    grid_args = (grid.bins, grid.scale, grid.offset) if grid is not None else (0, 0.0, 0.0)
    s_t, s_ty = np.empty(n_items), np.empty(n_items)
    k_t, k_ty, bad = (np.empty(n_items, dtype=np.int64) for _ in range(3))
    status = kernels.count_rows(lib, acts=a, mode=how, labels=y, label_bits=label_bits, bins=grid_args[0],
                                scale=grid_args[1], offset=grid_args[2], edges=edges, table=table, s_t=s_t, s_ty=s_ty,
                                k_t=k_t, k_ty=k_ty, bad=bad, threads=kernel_threads(n_items * n))
    if status:
        raise MemoryError(f"the counting kernel could not allocate its tables for N = {n} samples of {d} units")
    return s_t, s_ty, k_t, k_ty, bad


def plugin_counts(a: torch.Tensor, y: torch.Tensor, grid, label_bits: int, check):
    """``(h_t, h_ty, k_t, k_ty)`` per item as torch tensors (bits, float64; cells, int64) from the kernel, or None
    where it does not apply (no compiler, other dtypes, too many rows or too wide a grid). ``grid`` as in
    :func:`counts`. ``check(part, start)`` is called on the first item that is not finite (and raises)."""
    lib = load()
    n_items, n, d = a.shape
    how = mode(None if grid is None else grid.bins, d, label_bits, n)
    if isinstance(lib, str) or a.device.type != "cpu" or a.dtype not in (torch.float32, torch.float64) or how is None:
        return None
    s_t, s_ty, k_t, k_ty, bad = counts(lib, how, a, y, grid, label_bits, xlogx_table(n))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        check(a[first:first + 1], first)  # raises, naming the item and what is wrong with it
        raise AssertionError("the counting kernel flagged a finite item")  # pragma: no cover
    return tuple(torch.from_numpy(v) for v in (entropy_bits(s_t, n), entropy_bits(s_ty, n), k_t, k_ty))

"""KSG's neighbour search and counts on CPU: cache-sized distance blocks in numpy, row blocks shared by threads.

For a block of rows, each marginal's max-norm distances to all N samples are built a coordinate at a time,
max over c of |x_ic - x_jc|, from the variable stored unit-major ([d, N]) so that every pass reads and writes
contiguous rows of a block that stays in the core's cache. Each term is the float64 difference of two inputs,
rounded once, exactly as ``cdist(p=inf)`` and the KD-tree references compute it, so distances, radii and counts
are identical to theirs. The joint distance is the max of the two marginal blocks, which serve the counts too.

Threads: the blocks are many and small (a few hundred thousand elements), so torch's intra-op threads would
meet at a barrier after every pass; on a machine whose cores are busy with other work those barriers stall for
whole scheduler slices (measured 10x slower than one thread under load). Here each worker thread takes its own
row blocks from start to end with its own buffers, and numpy releases the GIL inside every pass, so workers
never wait for one another. Every count lands in its sample's slot, so the result does not depend on the
number of workers or on their timing.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Bytes of one [rows, N] float64 buffer: the five buffers of a worker stay in its core's L2 cache (measured
# fastest between 2**19 and 2**20 at N = 6,000 to 10,000).
BLOCK_BYTES = 2**20
_BUFFERS = 5  # two marginal blocks, one term, the joint block, a boolean mask (counted as a full buffer)


def block_rows(n: int, budget: int) -> int:
    """Rows per block: cache-sized, and within ``budget`` bytes for one worker's buffers."""
    return max(1, min(n, BLOCK_BYTES // (8 * n), budget // (_BUFFERS * 8 * n)))


class _Worker:
    def __init__(self, rows: int, n: int):
        self.da, self.db, self.term, self.joint = (np.empty((rows, n)) for _ in range(4))
        self.mask = np.empty((rows, n), dtype=bool)

    def cheb(self, v, vt, i0, i1, out):
        """Max-norm distances [i1 - i0, N] of rows i0..i1 of ``v`` ([N, d]; ``vt`` its transpose) into ``out``."""
        out, term = out[:i1 - i0], self.term[:i1 - i0]
        rows = v[i0:i1]
        np.subtract(rows[:, :1], vt[:1], out=out)
        np.abs(out, out=out)
        for c in range(1, v.shape[1]):
            np.subtract(rows[:, c:c + 1], vt[c:c + 1], out=term)
            np.abs(term, out=term)
            np.maximum(out, term, out=out)
        return out

    def count(self, block, eps, out):
        """Per row of ``block``: the number of entries strictly below the row's ``eps``, less one (the sample
        itself, at distance 0 < eps), into ``out``."""
        mask = np.less(block, eps, out=self.mask[:len(block)])
        np.subtract(np.count_nonzero(mask, axis=1), 1, out=out)


def neighbour_counts(xa: np.ndarray, xb: np.ndarray, k: int, rows: int, workers: int):
    """KSG algorithm 1 counts for every item and sample.

    Parameters
    ----------
    xa, xb : float64 arrays [B_a, N, d_a] and [B_b, N, d_b], B_a and B_b equal or one of them 1 (shared).
    k : neighbour order; rows : rows per block; workers : threads.

    Returns
    -------
    (kk, nx, ny) : float64 [B, N] (k, or the number of other samples at joint distance 0 where the k-th
        neighbour's distance is 0) and int64 [B, N] marginal counts (strictly inside the radius; at distance
        exactly 0 where the radius is 0), per the tie rule of :mod:`infoplane.estimators.knn`.
    """
    n = xa.shape[1]
    n_items = max(xa.shape[0], xb.shape[0])
    ta = np.ascontiguousarray(xa.transpose(0, 2, 1))
    tb = np.ascontiguousarray(xb.transpose(0, 2, 1))
    kk = np.full((n_items, n), float(k))
    nx = np.empty((n_items, n), dtype=np.int64)
    ny = np.empty((n_items, n), dtype=np.int64)

    def run(starts):
        w = _Worker(rows, n)
        for i0 in starts:
            i1 = min(n, i0 + rows)
            r = i1 - i0
            diag = (np.arange(r), np.arange(i0, i1))
            # a variable without batch dimensions (the probe inputs) has one distance block for every item
            bx = w.cheb(xa[0], ta[0], i0, i1, w.da) if xa.shape[0] == 1 else None
            by = w.cheb(xb[0], tb[0], i0, i1, w.db) if xb.shape[0] == 1 else None
            for i in range(n_items):
                ax = bx if bx is not None else w.cheb(xa[i], ta[i], i0, i1, w.da)
                ay = by if by is not None else w.cheb(xb[i], tb[i], i0, i1, w.db)
                joint = np.maximum(ax, ay, out=w.joint[:r])
                joint[diag] = math.inf  # a sample is not its own neighbour
                eps = np.partition(joint, k - 1, axis=1)[:, k - 1:k]
                w.count(ax, eps, nx[i, i0:i1])
                w.count(ay, eps, ny[i, i0:i1])
                zero = np.flatnonzero(eps[:, 0] == 0)
                if len(zero):  # ties at radius 0: counts at distance exactly 0 (see the knn module docstring)
                    nx[i, i0 + zero] = np.count_nonzero(ax[zero] == 0, axis=1) - 1
                    ny[i, i0 + zero] = np.count_nonzero(ay[zero] == 0, axis=1) - 1
                    kk[i, i0 + zero] = np.count_nonzero(joint[zero] == 0, axis=1)

    starts = list(range(0, n, rows))
    workers = max(1, min(workers, len(starts)))
    if workers == 1:
        run(starts)
    else:
        with ThreadPoolExecutor(workers) as pool:
            # interleaved blocks: every worker gets a share of the rows whatever the data's order
            for job in [pool.submit(run, starts[w::workers]) for w in range(workers)]:
                job.result()
    return kk, nx, ny

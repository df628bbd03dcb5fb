"""KDE's kernel sums on CPU: float32 squared distances by direct differences, in cache-sized blocks of rows,
shared by worker threads.

Each squared distance is sum_c (h_ic - h_jc)^2, built a coordinate at a time from the activations stored
unit-major ([d, N]), every term a float32 subtraction and product rounded once. No matrix product is involved, so
no reduced-precision matmul setting (TF32, bf16) can round a distance, and there is no |a|^2 + |b|^2 - 2 a.b
form whose cancellation float32 could not afford: the distances are as good as float32 gets, and the estimates
agree with the float64 route to about 1e-6 bits. D_ii is exactly 0.

The kernel is symmetric, so a block of rows i0..i1 is taken against the columns i0.. only: its own rows' sums
come from the block directly, and, transposed, it adds to the sums of the later rows.

Threads: numpy releases the GIL in every pass, and each worker owns its buffers, so workers never wait for one
another (torch's intra-op threads would meet at a barrier after every pass, which stalls for whole scheduler
slices when other processes keep the cores busy). The rows are cut into a fixed number of tasks of equal work,
independent of the number of workers; each task accumulates into its own float64 array and the arrays are added in
task order, so the result does not depend on how many workers ran or which task each one took.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Bytes of one [rows, N] float32 buffer: a worker's two buffers stay in its core's L2 cache.
BLOCK_BYTES = 2**19
# Tasks the rows are cut into (fewer when the memory budget or the number of blocks is smaller): more than the
# workers, so that a worker slowed by other processes leaves the remaining tasks to the others.
MAX_TASKS = 16


def block_rows(n: int) -> int:
    """Rows per block of an [N, d] item: one [rows, N] float32 buffer fits :data:`BLOCK_BYTES`."""
    return max(1, min(n, BLOCK_BYTES // (4 * n)))


def task_bounds(n: int, rows: int, n_classes: int, budget: int) -> list[int]:
    """Row boundaries of the tasks, on block boundaries, each with about the same share of the triangle.

    A task holds a float64 [2, n_classes, N] accumulator, so at most ``budget / (16 n_classes N)`` tasks exist.
    """
    n_blocks = -(-n // rows)
    tasks = max(1, min(MAX_TASKS, n_blocks, budget // (16 * n_classes * n)))
    total = n * n / 2
    cuts = [0]
    for k in range(1, tasks):
        # rows 0..i carry i n - i^2 / 2 of the triangle: the row where that reaches k / tasks of the total
        i = n - math.sqrt(max(0.0, n * n - 2 * total * k / tasks))
        cut = min(n, int(round(i / rows)) * rows)
        if cut > cuts[-1]:
            cuts.append(cut)
    if cuts[-1] < n:
        cuts.append(n)
    return cuts


def kernel_sums(h: np.ndarray, bounds: list[int], scale_lower: float, floor: float, workers: int,
                budget: int) -> np.ndarray:
    """For every sample i and class c: the sums over the samples j of class c of both kernels.

    Parameters
    ----------
    h : float32 array [N, d], the samples sorted by class; class c holds rows bounds[c]:bounds[c + 1].
    scale_lower : 1 / (8 s^2): kernel 0 is exp(-D_ij scale_lower), kernel 1 (exp(-D_ij / (2 s^2))) its 4th power.
    floor : exponents below it are raised to it (terms that small are below the rounding of any sum).
    workers : threads (at most one per task is used).
    budget : bytes allowed for the tasks' accumulators.

    Returns
    -------
    float64 array [2, n_classes, N]
    """
    n, d = h.shape
    n_classes = len(bounds) - 1
    ht = np.ascontiguousarray(h.T)
    rows = block_rows(n)
    cuts = task_bounds(n, rows, n_classes, budget)
    accs = [np.zeros((2, n_classes, n)) for _ in cuts[:-1]]
    base_floor = np.float32(math.exp(floor / 4))
    neg_scale, floor32 = np.float32(-scale_lower), np.float32(floor)

    def task(t: int, dist: np.ndarray, term: np.ndarray) -> None:
        acc = accs[t]
        for i0 in range(cuts[t], cuts[t + 1], rows):
            i1 = min(n, i0 + rows, cuts[t + 1])
            r, width = i1 - i0, n - i0
            k_lo, k_up = dist[: r * width].reshape(r, width), term[: r * width].reshape(r, width)
            block = h[i0:i1]
            np.subtract(block[:, :1], ht[:1, i0:], out=k_lo)
            np.multiply(k_lo, k_lo, out=k_lo)
            for c in range(1, d):
                np.subtract(block[:, c:c + 1], ht[c:c + 1, i0:], out=k_up)
                np.multiply(k_up, k_up, out=k_up)
                np.add(k_lo, k_up, out=k_lo)
            np.multiply(k_lo, neg_scale, out=k_lo)
            np.maximum(k_lo, floor32, out=k_lo)
            np.exp(k_lo, out=k_lo)
            # exp(-D/2s^2) = exp(-D/8s^2)^4; flooring the base keeps the power out of subnormals.
            np.maximum(k_lo, base_floor, out=k_up)
            np.multiply(k_up, k_up, out=k_up)
            np.multiply(k_up, k_up, out=k_up)
            for b, k in enumerate((k_lo, k_up)):
                for c in range(n_classes):
                    c0, c1 = bounds[c], bounds[c + 1]
                    j0, j1 = max(c0, i0) - i0, c1 - i0  # columns of class c: sums for the block's own rows
                    if j1 > j0:
                        acc[b, c, i0:i1] += k[:, j0:j1].sum(axis=1)
                    r0, r1 = max(c0, i0), min(c1, i1)  # rows of class c, transposed: sums for the later rows
                    if r1 > r0 and i1 < n:
                        acc[b, c, i1:] += k[r0 - i0:r1 - i0, i1 - i0:].sum(axis=0)

    n_tasks = len(accs)
    workers = max(1, min(workers, n_tasks))
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing distances give a non-finite result, caught later
        _run(task, n_tasks, workers, rows * n)
    total = accs[0]
    for acc in accs[1:]:
        total += acc
    return total


def _run(task, n_tasks: int, workers: int, size: int) -> None:
    """Call ``task(t, dist, term)`` for every task t, on ``workers`` threads that take tasks as they become free."""
    if workers == 1:
        dist, term = np.empty(size, np.float32), np.empty(size, np.float32)
        for t in range(n_tasks):
            task(t, dist, term)
    else:
        pending = iter(range(n_tasks))
        lock = threading.Lock()

        def worker() -> None:
            dist, term = np.empty(size, np.float32), np.empty(size, np.float32)
            with np.errstate(over="ignore", invalid="ignore"):  # numpy's error state is per thread
                while True:
                    with lock:  # tasks are handed out as workers become free
                        t = next(pending, None)
                    if t is None:
                        return
                    task(t, dist, term)


        with ThreadPoolExecutor(workers) as pool:
            for job in [pool.submit(worker) for _ in range(workers)]:
                job.result()

"""Exact discrete entropies of integer keys, batched over items.

All functions work on int64 tensors of shape ``[B, N]`` and treat each row as one item of N samples.
"""
from __future__ import annotations

import functools
import math
from typing import Union

import numpy as np
import torch


def run_starts(sorted_keys: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the first element of every run of equal keys in each (sorted) row."""
    new = torch.ones_like(sorted_keys, dtype=torch.bool)
    new[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    return new


def sorted_runs(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row: the sorting permutation and the run-start mask of the sorted keys."""
    sorted_codes, order = torch.sort(codes, dim=1)
    return order, run_starts(sorted_codes)


def ranks_from_runs(order: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Each key's rank among its row's distinct keys (0 .. K-1), from :func:`sorted_runs`."""
    rank_sorted = new.cumsum(1) - 1
    return torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)


def dense_rank(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each row's keys by their rank among the row's distinct keys (0 .. K-1); also return K per row."""
    order, new = sorted_runs(codes)
    return ranks_from_runs(order, new), new.sum(1)


# ---------------------------------------------------------------- plug-in entropies of integer keys, batched
def sort_flat(keys: torch.Tensor) -> torch.Tensor:
    """Sorted copy of a 1-D int64 tensor."""
    if keys.device.type == "cpu":
        # numpy's vectorised int64 sort is several times faster than torch's on CPU (measured 5-8x at 10^5-10^6
        # keys); the tensor's memory is shared, not copied.
        return torch.from_numpy(np.sort(keys.numpy()))
    return torch.sort(keys)[0]


@functools.lru_cache(maxsize=8)
def xlogx_table(n: int) -> np.ndarray:
    """c log2 c for c = 0 .. n (0 at c = 0), float64 on the CPU: the one table every counting route uses."""
    c = np.arange(n + 1, dtype=np.float64)
    out = np.zeros(n + 1)
    np.multiply(c[1:], np.log2(c[1:]), out=out[1:])
    out.flags.writeable = False
    return out


def sum_xlogx(hist: np.ndarray, n: int) -> np.ndarray:
    """sum over cells of c log2 c, from count-of-counts histograms ``hist`` [B, K] (``hist[b, c]`` cells of item
    b hold c samples; K <= N + 1 covers the largest count): the products m_c * c log2 c added one by one in
    increasing c, in float64.

    This order is the one definition of the plug-in sum in infoplane: it does not depend on the order of the cells
    (keys, hash slots, devices, threads), so every counting route, and the compiled kernel of ``_count_kernel``,
    gives the same bits.
    """
    return np.cumsum(hist * xlogx_table(n)[:hist.shape[1]], axis=1)[:, -1]


def entropy_bits(s: Union[np.ndarray, torch.Tensor], n: int) -> Union[np.ndarray, torch.Tensor]:
    """Plug-in entropy in bits, log2 N - (1/N) sum_cells c log2 c, from the sum of :func:`sum_xlogx`."""
    return math.log2(n) - s / n


def entropy_from_cells(item: np.ndarray, counts: np.ndarray, n_items: int, n: int) -> np.ndarray:
    """Entropy (float64 bits) per item from the (item, count) pairs of its cells holding two samples or more
    (cells of one sample add 1 log2 1 = 0)."""
    width = int(counts.max(initial=1)) + 1
    hist = np.bincount(item * width + counts, minlength=n_items * width).reshape(n_items, width)
    return entropy_bits(sum_xlogx(hist, n), n)


def plugin_counts(joint: torch.Tensor, n_items: int, n: int, label_bits: int, item_bits: int,
                  use_numpy: bool | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plug-in H(T) and H(T, Y) in bits, and the numbers of occupied cells K_T and K_TY, per item.

    Parameters
    ----------
    joint : int64 [n_items * N], unsorted: ``(item << item_bits) | (key << label_bits) | label``, where equal
        keys mean equal rows and ``item_bits >= key bits + label_bits``.
    use_numpy : bool, optional
        Count with numpy (default on CPU) or with torch (default elsewhere; both give the same numbers).

    Returns
    -------
    (h_t, h_ty, k_t, k_ty): float tensors [n_items] (bits; float64, float32 on MPS) and int64 tensors [n_items],
    on ``joint``'s device.

    The cells are counted on the device; the per-item sums are those of :func:`sum_xlogx` (on the CPU, from the
    count-of-counts histograms), so results are bit-identical on every device and route.
    """
    if use_numpy if use_numpy is not None else joint.device.type == "cpu":
        out = _plugin_counts_numpy(joint.cpu().numpy(), n_items, n, label_bits, item_bits)
    else:
        out = _plugin_counts_torch(joint, n_items, n, label_bits, item_bits)
    dtype = torch.float32 if joint.device.type == "mps" else torch.float64
    return tuple(torch.from_numpy(np.ascontiguousarray(v)).to(joint.device, dtype if i < 2 else torch.int64)
                 for i, v in enumerate((out[0], out[2], out[1], out[3])))


def _plugin_counts_torch(joint, n_items, n, label_bits, item_bits):
    """Cells counted with torch on the device: (h_t, k_t, h_ty, k_ty) as numpy arrays."""
    span = 1 << item_bits
    if span <= 2 * n:
        # Few possible cells: count them directly, no sort.
        counts = torch.bincount(joint, minlength=n_items * span)
        cell_item = torch.arange(n_items, device=joint.device).repeat_interleave(span)
        counts_t = counts.reshape(-1, 1 << label_bits).sum(1)
        cells = ((cell_item[:: 1 << label_bits], counts_t), (cell_item, counts))
    else:
        # One sort of every item at once (item i's keys fill positions [i N, (i + 1) N)), then run lengths.
        # Sorting by (key, label) also sorts by key, so the runs of T are unions of consecutive runs of (T, Y).
        s = sort_flat(joint)
        total = s.numel()
        new = torch.empty(total, dtype=torch.bool, device=s.device)
        new[0] = True
        torch.ne(s[1:], s[:-1], out=new[1:])
        starts = torch.nonzero(new).squeeze(1)
        at_start = s[starts]
        t = at_start >> label_bits  # the key with its item, without the label
        t_new = torch.empty_like(t, dtype=torch.bool)
        t_new[0] = True
        torch.ne(t[1:], t[:-1], out=t_new[1:])
        cells = [(at_start[m] >> item_bits, torch.diff(starts[m], append=starts.new_tensor([total])))
                 for m in (t_new, slice(None))]
    out = []
    for item, counts in cells:
        # Count-of-counts on the device (integers, exact), then the one sum of sum_xlogx on the CPU.
        width = int(counts.max()) + 1 if counts.numel() else 1
        hist = torch.bincount(item * width + counts, minlength=n_items * width).reshape(n_items, width)
        hist = hist.cpu().numpy()
        out += [entropy_bits(sum_xlogx(hist, n), n), hist[:, 1:].sum(1)]
    return out


def _plugin_counts_numpy(joint, n_items, n, label_bits, item_bits):
    """Cells counted with numpy on the CPU (its sort, bincount and run detection are several times faster than
    torch's there): (h_t, k_t, h_ty, k_ty) as numpy arrays."""
    span = 1 << item_bits
    if span <= 2 * n:
        counts = np.bincount(joint, minlength=n_items * span)
        counts_t = counts.reshape(-1, 1 << label_bits).sum(1)
        out = []
        for cnt in (counts_t, counts):
            fuller = np.flatnonzero(cnt > 1)
            out += [entropy_from_cells(fuller // (len(cnt) // n_items), cnt[fuller], n_items, n),
                    np.count_nonzero(cnt.reshape(n_items, -1), axis=1)]
        return out
    s = np.sort(joint)
    total = len(s)
    new = np.empty(total, dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    t = s[starts] >> label_bits
    t_new = np.empty(len(t), dtype=bool)
    t_new[0] = True
    np.not_equal(t[1:], t[:-1], out=t_new[1:])
    out = []
    for st in (starts[t_new], starts):
        lengths = np.diff(st, append=total)
        fuller = np.flatnonzero(lengths > 1)
        item = st // n  # item i fills positions [i N, (i + 1) N)
        out += [entropy_from_cells(item[fuller], lengths[fuller], n_items, n), np.bincount(item, minlength=n_items)]
    return out


def miller_madow(k: torch.Tensor, n: int) -> torch.Tensor:
    """Miller–Madow bias correction (K - 1) / (2 N ln 2) in bits, K occupied cells out of N samples."""
    return (k - 1).to(torch.float64 if k.device.type != "mps" else torch.float32) / (2 * n * math.log(2))

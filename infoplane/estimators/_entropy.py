"""Exact discrete entropies of integer keys, batched over items.

All functions work on int64 tensors of shape ``[B, N]`` and treat each row as one item of N samples.
"""
from __future__ import annotations

import math

import torch


def run_starts(sorted_keys: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the first element of every run of equal keys in each (sorted) row."""
    new = torch.ones_like(sorted_keys, dtype=torch.bool)
    new[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    return new


def entropy_of_runs(new: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Plug-in entropy (bits) of each row, given the run-start mask of its sorted keys."""
    b, n = new.shape
    run_id = new.cumsum(1) - 1
    counts = torch.zeros(b, n, dtype=dtype, device=new.device)
    counts.scatter_add_(1, run_id, torch.ones(1, 1, dtype=dtype, device=new.device).expand(b, n))
    # H = log2 N - (1/N) sum_k c_k log2 c_k; xlogy gives 0 for the empty slots.
    return math.log2(n) - torch.special.xlogy(counts, counts).sum(1) / (n * math.log(2))


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

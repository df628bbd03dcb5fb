"""Checks of ``fit``'s arguments: seeds, counts and per-seed row indices."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from infoplane._validate import check_int


def as_seeds(seeds: int | Sequence[int], max_seeds: int | None) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = list(range(check_int(seeds, "seeds", minimum=1, what="at least 1")))
    else:
        try:
            if isinstance(seeds, bool):
                raise TypeError("a bool is not a sequence of seeds")
            seeds = [int(s) for s in seeds]
        except (TypeError, ValueError):
            raise TypeError(f"seeds must be a count or a sequence of ints, got {seeds!r}") from None
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative ints, got {seeds}")
    if max_seeds is not None and (len(seeds) > max_seeds or seeds != [0]):
        raise ValueError(
            f"the model file defines a single `model`, so only seed 0 can be trained (got seeds {seeds}); "
            "define build_model() to train several seeds"
        )
    return seeds


def as_index_sets(idx: Any, n_seeds: int, n_rows: int, name: str) -> list[torch.Tensor]:
    """One 1-D int64 CPU tensor of row indices per seed."""
    if isinstance(idx, (list, tuple)) and idx and not np.isscalar(idx[0]):
        sets = [torch.as_tensor(np.asarray(i)) for i in idx]
    else:
        arr = torch.as_tensor(np.asarray(idx.cpu() if torch.is_tensor(idx) else idx))
        if arr.dim() == 1:
            sets = [arr] * n_seeds
        elif arr.dim() == 2:
            sets = list(arr)
        else:
            raise ValueError(f"{name} must have shape [n] or [S, n], got {tuple(arr.shape)}")
    if len(sets) != n_seeds:
        raise ValueError(f"{name} has {len(sets)} rows but there are {n_seeds} seeds; give one row per seed or a single [n] array")
    out = []
    for s in sets:
        if s.dim() != 1 or (len(s) and (s.is_floating_point() or s.dtype == torch.bool)):
            raise ValueError(f"{name} must hold integer row indices, got dtype {s.dtype} and shape {tuple(s.shape)}")
        s = s.long().cpu()
        if len(s) and (s.min() < 0 or s.max() >= n_rows):
            raise ValueError(f"{name} holds indices outside [0, {n_rows}) for {n_rows} rows of inputs")
        out.append(s)
    if name == "train_idx" and any(len(s) == 0 for s in out):
        raise ValueError("train_idx is empty for at least one seed")
    return out



"""Permutation null of I(T;Y): the same estimator on shuffled labels, batched with the real estimate.

Shuffling the labels over the probe samples keeps the layer and the class frequencies but breaks every link
between them, so the estimator's I(T;Y) on shuffled labels shows what it reports when the true value is 0: its
bias (plug-in estimates of fine-grained layers sit far above 0) and its spread. An I(T;Y) inside that spread
carries no evidence of information about the labels.

The P permuted label sets are stacked as extra batch items of **one** estimator call next to the real labels
(the activations are broadcast, not recomputed), so any estimator that accepts per-item labels ``[..., N]``
works, and batched estimators pay little per extra item.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np
import torch

from infoplane._validate import check_float, check_int
from infoplane.estimators._inputs import as_batch, as_labels

DEFAULT_PERMUTATIONS = 20
DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of broadcast activations passed to one estimator call


class NullResult:
    """The real estimator result's fields plus the permutation baseline.

    Attributes
    ----------
    ixt, ity, ... : torch.Tensor
        Every tensor field of the wrapped estimator's result on the real labels (shape ``acts.shape[:-2]``).
    ity_null : torch.Tensor
        Mean I(T;Y) over the permuted label sets (bits).
    ity_null_sd : torch.Tensor
        Standard deviation of I(T;Y) over the permuted label sets (bits, ddof = 1).
    """

    def __init__(self, **fields: torch.Tensor) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"NullResult({', '.join(self.__dict__)})"


def _result_fields(res) -> dict:
    if dataclasses.is_dataclass(res):
        items = {f.name: getattr(res, f.name) for f in dataclasses.fields(res)}
    elif hasattr(res, "__dict__"):
        items = dict(vars(res))
    else:
        items = {}
    for k in ("ixt", "ity"):  # results whose fields live elsewhere (slots, properties)
        if k not in items and hasattr(res, k):
            items[k] = getattr(res, k)
    return {k: torch.as_tensor(v) for k, v in items.items() if isinstance(v, (torch.Tensor, np.ndarray))}


def permutations_of(n: int, permutations: int, seed: int) -> torch.Tensor:
    """The ``[permutations, n]`` label permutations used for a seed (local CPU generator)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return torch.stack([torch.randperm(n, generator=g) for _ in range(permutations)])


def permutation_null(estimator: Callable[..., Any], activations: Any, labels: Any, *,
                     permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                     memory_budget: Optional[int] = None) -> NullResult:
    """Estimate on the real labels and on ``permutations`` shuffles of them, in one batched estimator call.

    Parameters
    ----------
    estimator : callable
        ``estimator(activations, labels)`` returning a result with ``.ity`` (and usually ``.ixt``), accepting
        per-item labels ``[..., N]`` like the built-in estimators (``Binning``, ``KDE``, ``Noisy`` or a custom
        one).
    activations : tensor or array, shape [..., N, d]
    labels : tensor or array
        Class indices [N] / [..., N] or one-hot.
    permutations : int, default 20
        Number of shuffled label sets P.
    seed : int, default 0
        Seed of the local generator that draws the permutations; every batch item is shuffled with the same P
        permutations.
    memory_budget : int, optional
        Bytes of broadcast activations per estimator call (default 256 MiB): P + 1 copies of the activations
        are passed as one batch when they fit, otherwise in as few calls as fit (the first holds the real
        labels).

    Returns
    -------
    NullResult
        The real result's tensor fields (e.g. ``ixt``, ``ity``), plus ``ity_null`` (mean over permutations)
        and ``ity_null_sd`` (standard deviation), in bits, shape ``activations.shape[:-2]``.

    Cost
    ----
    (P + 1) times the estimator's work on the activations, in ceil((P + 1) / per-call) calls.
    """
    permutations = check_int(permutations, "permutations", minimum=2, what="an integer >= 2 (the spread needs two)")
    seed = check_int(seed, "seed")
    budget = (DEFAULT_MEMORY_BUDGET if memory_budget is None
              else int(check_float(memory_budget, "memory_budget", positive=True)))
    batch = as_batch(activations)
    y, _ = as_labels(labels, batch)  # [B or 1, N] dense class indices
    acts, n = batch.acts, batch.n
    b = acts.shape[0]
    perms = permutations_of(n, permutations, seed).to(y.device)
    y = y.expand(b, n)
    # [P + 1, B, N]: the real labels first, then y[perm] for every permutation.
    stacked = torch.cat([y[None], y[:, perms].permute(1, 0, 2)], dim=0)
    per_call = max(1, budget // max(1, acts.numel() * acts.element_size()))
    real, null_ity = None, []
    for k0 in range(0, permutations + 1, per_call):
        k1 = min(permutations + 1, k0 + per_call)
        res = estimator(acts.expand(k1 - k0, *acts.shape), stacked[k0:k1])
        ity = torch.as_tensor(res.ity).reshape(k1 - k0, b)
        if k0 == 0:
            real = {k: v.reshape(k1 - k0, b)[0] for k, v in _result_fields(res).items()}
            ity = ity[1:]
        null_ity.append(ity)
    assert real is not None  # the first chunk (k0 = 0) always runs
    null_ity = torch.cat(null_ity).to(real["ity"].dtype)
    shape = batch.batch_shape
    out = {k: v.reshape(shape) for k, v in real.items()}
    out["ity_null"] = null_ity.mean(dim=0).reshape(shape)
    out["ity_null_sd"] = null_ity.std(dim=0).reshape(shape)
    return NullResult(**out)

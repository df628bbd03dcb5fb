"""What ``meta.json`` says about a tracked run: everything needed to interpret its table, measured here (the
caller may add keys of its own, but never overwrite these)."""
from __future__ import annotations

import hashlib
import math
import platform
import sys
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from infoplane._version import __version__
from infoplane.capture import reduce as reduce_mod
from infoplane.data import probeset

__all__ = ["describe_run", "check_extra_meta", "entropy_bits", "describe_optimizer", "describe_loss"]

# Keys the run directory itself manages (format marker, times, completion).
_RUN_DIR_KEYS = {"format", "format_version", "start_time", "end_time", "complete", "resumed", "timings"}


def entropy_bits(labels: np.ndarray) -> float:
    """Plug-in entropy of class labels, in bits (H(Y), the ceiling of I(T;Y))."""
    counts = np.unique(labels, return_counts=True)[1]
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _fingerprint(inputs, labels: torch.Tensor) -> str:
    """SHA-1 of the probe set; ``inputs`` may be a list of probe inputs (one per seed)."""
    h = hashlib.sha1()
    structures = inputs if isinstance(inputs, list) else [inputs]
    for t in (*(t for x in structures for t in probeset.leaves(x)), labels):  # a plain tensor hashes as it always did
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def describe_run(model: nn.Module, inputs: Any, labels: torch.Tensor, layers: Sequence, estimators: Sequence,
                 schedule: Any, seeds: Sequence[int], fraction: Optional[float], *, pre_activation: bool,
                 keep_activations: bool, reduce: Any = None, reduced_widths: Optional[dict] = None,
                 class_names: Optional[list] = None, seed_inputs: Optional[Sequence] = None) -> dict:
    """The measured part of a run's ``meta.json``.

    Parameters
    ----------
    model : nn.Module
        The (first) model.
    inputs, labels
        The validated probe set (labels as int64 class indices ``[N]``, or ``[S, N]``: one row per seed, each
        seed measured against its own labels).
    layers : list of Layer
    estimators : list
    schedule : Schedule
    seeds : list of int
    fraction : float or None
    pre_activation, keep_activations : bool
    reduce : spec or None
    reduced_widths : dict, optional
    class_names : list, optional
    seed_inputs : list, optional
        With labels ``[S, N]``: each seed's probe inputs, where they differ between seeds (None: ``inputs``).

    Returns
    -------
    dict
        JSON-able description; the keys are documented in docs/tracking.md ("The run directory").
    """
    labels_np = labels.numpy()
    rows = labels_np.reshape(-1, labels_np.shape[-1])
    h_seeds = [entropy_bits(r) for r in rows]
    meta = {
        "model": {"class": type(model).__name__, "summary": str(model)[:4000],
                  "n_parameters": sum(p.numel() for p in model.parameters())},
        "layers": [l.to_json() for l in layers],
        "n": int(labels_np.shape[-1]),
        "log2_n": math.log2(labels_np.shape[-1]),
        # Per-seed labels: the largest of the seeds' H(Y), the one ceiling that bounds every seed's I(T;Y).
        "h_y": max(h_seeds),
        "n_classes": int(np.unique(labels_np).size),
        "probe": {"input_shape": probeset.describe(inputs),
                  "sha1": _fingerprint(inputs if seed_inputs is None else list(seed_inputs), labels)},
        "estimators": [{"name": e.name, "settings": e.settings(), "has_lower": bool(e.has_lower)} for e in estimators],
        "schedule": schedule.to_json(),
        "seeds": list(seeds),
        "fraction": fraction,
        "pre_activation": bool(pre_activation),
        "keep_activations": bool(keep_activations),
        # Layer reductions (None = flatten) and per-sample shapes, which estimate() needs to reduce again.
        "reduce": None if reduce is None else {"spec": reduce_mod.spec_to_json(reduce), "widths": reduced_widths},
        "layer_shapes": {l.name: None if l.shape is None else list(l.shape) for l in layers},
        "versions": {"infoplane": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "caller": list(sys.argv) if sys.argv and sys.argv[0] else "python",
    }
    if labels_np.ndim == 2:  # each seed measured against its own labels: each seed's H(Y), in the order of seeds
        meta["h_y_seeds"] = h_seeds
        meta["h_y_from"] = "the largest of h_y_seeds"
        meta["probe"]["per_seed"] = True
    if class_names is not None:
        meta["class_names"] = class_names
    return meta


def describe_optimizer(optimizer: torch.optim.Optimizer) -> dict:
    """What ``meta.json`` says about an optimiser: its class and its learning rate, as set now.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer

    Returns
    -------
    dict
        ``{"optimizer": "Adam", "lr": 0.0004}``; ``lr`` is a list (one per parameter group) when the groups
        differ, and absent when the optimiser has none.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    out: dict[str, Any] = {"optimizer": type(optimizer).__name__}
    rates = [g.get("lr") for g in optimizer.param_groups]
    rates = [float(r.item() if torch.is_tensor(r) else r) for r in rates if r is not None]
    if rates:
        out["lr"] = rates[0] if len(set(rates)) == 1 else rates
    return out


def describe_loss(loss: Any) -> str:
    """A loss as ``meta.json`` names it: ``CrossEntropyLoss()`` for a module, the function's name otherwise."""
    if isinstance(loss, nn.Module):
        return repr(loss)
    return getattr(loss, "__qualname__", None) or getattr(loss, "__name__", None) or type(loss).__name__


def check_extra_meta(extra: Optional[dict], measured: dict) -> dict:
    """The caller's own ``meta=`` entries, refused where they would replace what is measured.

    The caller may describe itself (``caller``, e.g. the CLI's command line) and name the classes
    (``class_names``); everything else measured, and the run directory's own keys, are refused.
    """
    extra = dict(extra or {})
    reserved = (set(measured) - {"caller", "class_names"}) | _RUN_DIR_KEYS
    clash = sorted(set(extra) & reserved)
    if clash:
        raise ValueError(f"meta= may not set {clash}: the tracker writes those keys itself")
    return extra

"""Side variables: the information of every tracked layer about named variables Z other than the labels Y.

``Tracker(..., targets={"parity": p, "x_irrelevant": x[:, 8:]})`` measures I(T;Z) for each named Z, aligned
sample by sample with the probe set, with every estimator of the tracker that can measure it (a target that none can measure is refused, naming
the estimators that can). A target is

- **discrete** when it holds class labels (integer, boolean or class-name values, or one-hot rows; read by the one
  label validator, :func:`infoplane.data.labels.as_class_indices`): an estimator computes I(T;Z) exactly as it
  computes I(T;Y), with Z in place of Y (through its ``target_mi`` where it has one, which skips I(X;T)), and the
  result is clamped to [0, H(Z)] above (each estimator keeps its
  own treatment of values below 0: k-NN estimates are not clipped, by design);
- **continuous** when it holds floating-point values, shape ``[N]`` or ``[N, d]``: only estimators that declare
  ``"continuous"`` in their ``target_kinds`` (k-NN: KSG between the layer and Z; Rényi: Z with a Gaussian kernel
  of Silverman's width) measure it, through their ``target_mi(activations, z)``. I(T;Z) of continuous variables
  has no ceiling (it is infinite for a deterministic, invertible relation), so nothing is clamped.

Floats are always continuous (pass whole-number labels as integers to have them counted as classes).

Every target row repeats the layer's I(X;T) (and its lower bound and standard error) from the labels' row of the
same estimator, so that a plane of (I(X;T), I(T;Z)) reads from the target's rows alone.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from infoplane.data.labels import as_class_indices
from infoplane.estimators.base import KINDS, protocol_attribute
from infoplane.runs.format import VALUES, Row

__all__ = ["Target", "as_targets", "check_estimators", "measuring", "target_rows", "describe_targets"]

_KIND_NAMES = ("discrete", "continuous")


@dataclass
class Target:
    """One validated side variable.

    Attributes
    ----------
    name : str
    kind : {"discrete", "continuous"}
    values : torch.Tensor
        int64 class indices ``[N]`` (discrete) or float64 ``[N, d]`` (continuous), on the CPU.
    h : float or None
        H(Z) in bits (plug-in over the probe set) for a discrete target, the ceiling of I(T;Z); None otherwise.
    class_names : list or None
        Class names when a discrete target was given as names.
    """

    name: str
    kind: str
    values: torch.Tensor
    h: Optional[float] = None
    class_names: Optional[list] = None

    def describe(self) -> dict:
        """What ``meta.json`` says of the target: name, kind, H(Z) or width, and a fingerprint of the values."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "discrete":
            out["h"] = self.h
            out["classes"] = int(self.values.max()) + 1
            if self.class_names is not None:
                out["class_names"] = [str(c) for c in self.class_names]
        else:
            out["dim"] = int(self.values.shape[1])
        data = self.values.contiguous().numpy()
        out["sha1"] = hashlib.sha1(str((data.shape, str(data.dtype))).encode() + data.tobytes()).hexdigest()
        return out


def _entropy_bits(indices: torch.Tensor) -> float:
    counts = np.unique(indices.numpy(), return_counts=True)[1]
    p = counts / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def _as_numeric(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"could not be read as an array ({err})") from None


def _one(name: Any, value: Any, n: int) -> Target:
    if not isinstance(name, str) or not name or name != name.strip() or any(c in name for c in ",\n\r"):
        raise ValueError(f"targets: names must be non-empty strings without commas, newlines or surrounding "
                         f"spaces; got {name!r}")
    what = f"targets[{name!r}]"
    try:
        arr = _as_numeric(value)
    except TypeError as err:
        raise TypeError(f"{what} {err}; pass a tensor, numpy array or list, one entry per probe sample") from None
    shape = tuple(arr.shape)
    if len(shape) == 0 or shape[0] != n:
        got = "a scalar" if len(shape) == 0 else f"{shape[0]} samples (shape {shape})"
        raise ValueError(f"{what} has {got}, but the probe set has N = {n}; a side variable must hold one value "
                         f"per probe sample, in the probe set's order")
    floating = (arr.is_floating_point() if isinstance(arr, torch.Tensor)
                else np.issubdtype(arr.dtype, np.floating))
    if floating:
        z = torch.as_tensor(np.asarray(arr), dtype=torch.float64) if not isinstance(arr, torch.Tensor) \
            else arr.to(torch.float64)
        if z.ndim > 2:
            raise ValueError(f"{what} has shape {shape}; a continuous side variable is [N] or [N, d] (flatten "
                             f"the other dimensions first)")
        z = z.reshape(n, -1)
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"{what} holds NaN or infinite values; give every probe sample a finite value")
        return Target(name, "continuous", z.contiguous())
    labels = as_class_indices(arr, n, what=what)
    idx = labels.indices.cpu().to(torch.int64)
    return Target(name, "discrete", idx, h=_entropy_bits(idx), class_names=labels.names)


def as_targets(targets: Any, n: int) -> list[Target]:
    """Validate the side variables of a tracker.

    Parameters
    ----------
    targets : dict or None
        Name -> values aligned with the probe set: class labels (discrete) or floats ``[N]`` / ``[N, d]``
        (continuous).
    n : int
        Probe size N.

    Returns
    -------
    list of Target
        In the dict's order; empty for None.
    """
    if targets is None:
        return []
    if not isinstance(targets, dict):
        raise TypeError(f"targets must be a dict mapping names to side variables (e.g. {{'parity': p}}); got "
                        f"{type(targets).__name__}")
    return [_one(name, value, n) for name, value in targets.items()]


def _kinds(est: Any) -> tuple:
    kinds = tuple(protocol_attribute(est, "target_kinds"))
    bad = [k for k in kinds if k not in _KIND_NAMES]
    if bad:
        raise ValueError(f"estimator {getattr(est, 'name', est)!r} declares target_kinds {kinds}; each must be one "
                         f"of {_KIND_NAMES}")
    return kinds


def measuring(target: Target, estimators: Sequence) -> list:
    """The estimators that can measure ``target`` (``target_kinds`` includes its kind), in the order given.

    Raises
    ------
    ValueError
        When none can: the message names the target and the estimator kinds whose ``target_kinds`` include it.
    """
    able = [est for est in estimators if target.kind in _kinds(est)]
    if not able:
        kinds = sorted(k for k, cls in KINDS.items() if target.kind in getattr(cls, "target_kinds", ("discrete",)))
        names = ", ".join(repr(e.name) for e in estimators)
        raise ValueError(f"targets[{target.name!r}] is a {target.kind} side variable, and none of the estimators "
                         f"({names}) can measure I(T;Z) for one (their target_kinds lack {target.kind!r}). "
                         f"Estimators that can: {', '.join(kinds) or 'none'}; add one of them, or pass the variable "
                         f"as class labels (integers) if it is discrete")
    return able


def check_estimators(targets: Sequence[Target], estimators: Sequence) -> None:
    """Refuse a side variable that none of the estimators can measure (see :func:`measuring`)."""
    for t in targets:
        measuring(t, estimators)


def describe_targets(targets: Sequence[Target], estimators: Sequence) -> list[dict]:
    """``meta.json``'s ``targets``: one :meth:`Target.describe` dict per side variable, with ``estimators``, the
    names of those that measure it."""
    return [{**t.describe(), "estimators": [e.name for e in measuring(t, estimators)]} for t in targets]


def _ceiling(target: Target) -> float:
    """H(Z) in bits, the ceiling of I(T;Z) for a discrete Z (infinite for a continuous one)."""
    return math.inf if target.h is None else float(target.h)


def _ity_values(est: Any, acts: torch.Tensor, target: Target, inputs: Optional[torch.Tensor]) -> dict:
    z = target.values.to(acts.device)
    if target.kind == "continuous":
        return {"ity": torch.as_tensor(est.target_mi(acts, z))}
    if callable(getattr(est, "target_mi", None)):  # I(T;Z) alone, without computing I(X;T) again
        return {"ity": torch.clamp(torch.as_tensor(est.target_mi(acts, z)).to(torch.float64), max=_ceiling(target))}
    if inputs is not None and protocol_attribute(est, "needs_inputs"):
        res = est(acts, z, inputs=inputs)
    else:
        res = est(acts, z)
    out = {}
    for name in VALUES:
        if not name.startswith("ity"):
            continue
        if name == "ity_lower" and not protocol_attribute(est, "has_lower"):
            continue
        v = getattr(res, name, None)
        if v is not None:
            out[name] = torch.as_tensor(v)
    # I(T;Z) <= H(Z): the ceiling every estimate of a discrete Z obeys (values below 0 are the estimator's own
    # business, as for I(T;Y)).
    for name in ("ity", "ity_lower"):
        if name in out:
            out[name] = torch.clamp(out[name].to(torch.float64), max=_ceiling(target))
    return out


def target_rows(acts: torch.Tensor, targets: Sequence[Target], est: Any, label_rows: Sequence[Row],
                inputs: Optional[torch.Tensor] = None) -> list[Row]:
    """The rows of one layer and one estimator for every side variable.

    Parameters
    ----------
    acts : tensor ``[B, N, d]``
        One batch item per row of ``label_rows``, in the same order.
    targets : list of Target
    est : estimator object
    label_rows : list of Row
        The labels' rows of the same items: their ``ixt`` (and ``ixt_lower``, ``ixt_se``) are repeated.
    inputs : tensor, optional
        The probe inputs, for estimators that declare ``needs_inputs``.

    Returns
    -------
    list of Row
        ``target`` set to each side variable's name; ``ity`` (and whatever ``ity_*`` fields the estimator gives)
        hold I(T;Z) in bits.

    Raises
    ------
    ValueError
        A non-finite estimate, naming the target, estimator, layer and epoch.
    """
    rows = []
    for t in targets:
        if t.kind not in _kinds(est):  # another estimator of the tracker measures it
            continue
        vals = _ity_values(est, acts, t, inputs)
        cols = {k: v.detach().to("cpu", torch.float64).reshape(-1).tolist() for k, v in vals.items()}
        for name, col in cols.items():
            if len(col) != len(label_rows):
                raise ValueError(f"estimator {est.name!r} returned {len(col)} values of {name} for target "
                                 f"{t.name!r} and {len(label_rows)} inputs")
            bad = [i for i, v in enumerate(col) if not np.isfinite(v)]
            if bad:
                r = label_rows[bad[0]]
                raise ValueError(f"estimator {est.name!r} gave a non-finite I(T;Z) ({col[bad[0]]}) for target "
                                 f"{t.name!r}, layer {r.layer!r}, epoch {r.epoch} (seed {r.seed}); nothing of that "
                                 f"epoch was stored")
        for i, r in enumerate(label_rows):
            fields: dict[str, Any] = {name: (cols[name][i] if name in cols else float("nan"))
                      for name in VALUES if name.startswith("ity")}
            rows.append(r._replace(**fields, target=t.name))
    return rows

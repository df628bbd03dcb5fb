"""Configuration objects for the k-NN (KSG / Ross) and matrix-based Rényi estimators.

Both estimate I(X;T) against the probe inputs X, which the ``(activations, labels)`` call of the estimator
protocol does not carry. They get them in one of two ways, both compatible with every other estimator:

- constructed with ``inputs=`` (``KNN(inputs=probe_x)``), which works wherever an estimator object is accepted;
- or called as ``est(acts, labels, inputs=probe_x)``: objects with ``needs_inputs = True`` are passed the
  probe inputs by the tracker. An ``inputs=`` given at call time takes precedence over the constructor's.

The inputs are not part of ``settings()`` (they are data, not configuration): an object rebuilt with
``from_settings`` has none until it is given some.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from infoplane.estimators._inputs import positive_float
from infoplane.estimators.config import Estimator
from infoplane.estimators.knn import flatten_inputs, ksg_mi, ross_mi
from infoplane.estimators.renyi import METHODS, check_alpha, check_sigma, renyi_plane


@dataclass
class PlaneResult:
    """I(X;T) and I(T;Y) in bits, float64 tensors of shape ``activations.shape[:-2]``."""

    ixt: torch.Tensor
    ity: torch.Tensor


def _positive_int(v, name):
    if isinstance(v, bool) or not hasattr(v, "__index__") or int(v) < 1:
        raise ValueError(f"{name} must be a positive integer; got {v!r}")
    return int(v)


class KNN(Estimator):
    """k-NN estimates: I(X;T) by KSG (:func:`ksg_mi`) against the probe inputs, I(T;Y) by Ross (:func:`ross_mi`).

    Neither is clipped at 0 (a negative value is bias made visible). Needs the probe inputs (see module docs).

    Parameters
    ----------
    k : int, default 3
    inputs : tensor or array [N, ...], optional
        Probe inputs, flattened per sample.
    memory_budget : int, optional
        Bytes for the distance blocks (default 64 MiB).
    """

    kind = "knn"
    has_lower = False
    needs_inputs = True
    default_name = "knn"

    def __init__(self, k=3, inputs=None, memory_budget=None, name=None):
        super().__init__(name)
        self.k = _positive_int(k, "k")
        self.memory_budget = None if memory_budget is None else int(positive_float(memory_budget, "memory_budget"))
        self.inputs = None if inputs is None else flatten_inputs(inputs)

    def _kwargs(self):
        kw = {"k": self.k}
        if self.memory_budget is not None:
            kw["memory_budget"] = self.memory_budget
        return kw

    def __call__(self, activations, labels, inputs=None):
        x = flatten_inputs(inputs) if inputs is not None else self.inputs
        if x is None:
            raise ValueError(
                "the knn estimator needs the probe inputs for I(X;T) (KSG between inputs and layer): construct "
                "it as KNN(inputs=probe_x) or call it as est(acts, labels, inputs=probe_x).")
        device = activations.device if isinstance(activations, torch.Tensor) else torch.device("cpu")
        kw = {"k": self.k, "memory_budget": self.memory_budget}
        return PlaneResult(ixt=ksg_mi(x.to(device), activations, **kw).mi, ity=ross_mi(activations, labels, **kw).mi)


class Renyi(Estimator):
    """Matrix-based Rényi estimates (:func:`renyi_mi`): I(X;T) with the inputs' Gram matrix, I(T;Y) with labels.

    Parameters
    ----------
    alpha : float, default 1.01
    sigma : "silverman" or float, default "silverman"
        Kernel width rule for the layer (per layer and epoch) or a fixed width.
    sigma_inputs : "silverman" or float, default "silverman"
        The same for the probe inputs.
    ixt_from : {"inputs", "identity"}, default "inputs"
        "inputs": Gram matrix of the probe inputs (needs them, see module docs). "identity": X is the sample's
        identity (delta kernel on distinct samples), which makes I(X;T) = S(T) exactly and needs no inputs.
    method : {"auto", "exact", "randomized"}, default "auto"
    probes, steps, seed : int
        Randomized route settings (see :func:`renyi_entropy`).
    """

    kind = "renyi"
    has_lower = False
    default_name = "renyi"

    def __init__(self, alpha=1.01, sigma="silverman", sigma_inputs="silverman", ixt_from="inputs", method="auto",
                 probes=32, steps=30, seed=0, inputs=None, name=None):
        super().__init__(name)
        self.alpha = check_alpha(alpha)
        self.sigma = check_sigma(sigma)
        self.sigma_inputs = check_sigma(sigma_inputs, "sigma_inputs")
        if ixt_from not in ("inputs", "identity"):
            raise ValueError(f"ixt_from must be 'inputs' or 'identity'; got {ixt_from!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {method!r}")
        self.ixt_from, self.method = ixt_from, method
        self.probes, self.steps = _positive_int(probes, "probes"), _positive_int(steps, "steps")
        self.seed = int(seed)
        self.inputs = None if inputs is None else flatten_inputs(inputs)

    @property
    def needs_inputs(self) -> bool:
        return self.ixt_from == "inputs"

    def _kwargs(self):
        return {"alpha": self.alpha, "sigma": self.sigma, "sigma_inputs": self.sigma_inputs,
                "ixt_from": self.ixt_from, "method": self.method, "probes": self.probes, "steps": self.steps,
                "seed": self.seed}

    def __call__(self, activations, labels, inputs=None):
        x = None
        if self.ixt_from == "inputs":
            x = flatten_inputs(inputs) if inputs is not None else self.inputs
            if x is None:
                raise ValueError(
                    "the renyi estimator needs the probe inputs for I(X;T): construct it as Renyi(inputs=probe_x), "
                    "call it as est(acts, labels, inputs=probe_x), or use Renyi(ixt_from='identity').")
        ixt, ity = renyi_plane(activations, labels, x, alpha=self.alpha, sigma=self.sigma,
                               sigma_inputs=self.sigma_inputs, method=self.method, probes=self.probes,
                               steps=self.steps, seed=self.seed)
        return PlaneResult(ixt=ixt, ity=ity)

"""Fake quantisation of a network's activations, for exact information measurements.

A quantised layer takes at most 2**bits values per unit, so its rows form a finite alphabet and
:func:`infoplane.estimators.discrete_mi` measures I(X;T) and I(T;Y) exactly, with no binning choice.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from infoplane._validate import check_int
from infoplane.capture.hooks import ACTIVATIONS
from infoplane.capture.stacked import ELEMENTWISE

__all__ = ["quantize"]

# Ranges of bounded activations. ReLU6 is a Hardtanh (0, 6) and is covered by the Hardtanh rule.
_DEFAULT_RANGES = (
    (nn.Tanh, (-1.0, 1.0)),
    (nn.Softsign, (-1.0, 1.0)),
    (nn.Sigmoid, (0.0, 1.0)),
    (nn.Hardsigmoid, (0.0, 1.0)),
    (nn.Softmax, (0.0, 1.0)),
)

#: The quantised subclass made for each activation class, so that each is made once (and recognised later).
QUANTIZED_CLASSES: dict = {}


def _fake_quantize(x: torch.Tensor, levels: int, low: float, high: float) -> torch.Tensor:
    """Round x (clamped to [low, high]) to the nearest of ``levels`` evenly spaced values; gradient 1 (straight
    through)."""
    step = (high - low) / (levels - 1)
    q = torch.round((x.clamp(low, high) - low) / step) * step + low
    # Straight-through estimator: the forward value must be q exactly. x + (q - x).detach() rounds twice and can
    # land an ulp away from q (two inputs with the same level would then differ); (x - x.detach()) is exactly 0
    # and carries the identity gradient, so the value is q bit for bit. Plain tensor ops: vmap-compatible.
    return (x - x.detach()) + q.detach()


def _quantized_class(base: type) -> type:
    """A subclass of the activation's class whose output is fake-quantised (type checks and names unchanged)."""
    cls = QUANTIZED_CLASSES.get(base)
    if cls is None:
        def forward(self, *args, **kwargs):
            out = base.forward(self, *args, **kwargs)
            return _fake_quantize(out, self.quant_levels, self.quant_low, self.quant_high)

        def extra_repr(self):
            inner = base.extra_repr(self)
            return (inner + ", " if inner else "") + (
                f"quantized={self.quant_levels} levels on [{self.quant_low}, {self.quant_high}]")

        name = f"Quantized{base.__name__}"
        # Elementwise when the activation is: the ensemble's stacked probe pass may then run it on [S, N, d].
        cls = type(name, (base,), {"forward": forward, "extra_repr": extra_repr, "__module__": __name__,
                                   "__qualname__": name, "infoplane_elementwise": base in ELEMENTWISE})
        # Registered under its name in this module so that pickling (torch.save of the whole model) finds it.
        globals()[name] = cls
        QUANTIZED_CLASSES[base] = cls
    return cls


def _range_for(name: str, module: nn.Module, ranges: dict):
    if name in ranges:
        return ranges[name]
    for key, value in ranges.items():
        if isinstance(key, type) and isinstance(module, key):
            return value
    if isinstance(module, nn.Hardtanh):
        return (module.min_val, module.max_val)
    for kind, value in _DEFAULT_RANGES:
        if isinstance(module, kind):
            return value
    return None


def quantize(model: nn.Module, bits: int = 8, ranges: dict | None = None) -> nn.Module:
    """A copy of ``model`` with every activation's output fake-quantised to ``2**bits`` levels.

    The model is **deep-copied**: the original is left untouched, and the returned model has its own parameters
    (train the returned one). After each activation module (the types in ``infoplane.capture.hooks.ACTIVATIONS``), the
    output is clamped to a fixed range [low, high] and rounded to the nearest of 2**bits evenly spaced values,
    low and high included. Gradients pass straight through the rounding, so the copy trains as usual (also under
    ``torch.func.vmap`` and infoplane's vectorised ensembles). Module names and types are kept (each activation
    becomes a subclass of its own class), so layer selection and tracking see the same layers.

    Parameters
    ----------
    model : nn.Module
        The network. Its activation modules must be modules (``nn.Tanh()``), not functional calls.
    bits : int, default 8
        Bits per unit: 2**bits levels (1 <= bits <= 24).
    ranges : dict, optional
        ``{module name or module type: (low, high)}``, overriding the defaults: Tanh and Softsign [-1, 1],
        Sigmoid, Hardsigmoid and Softmax [0, 1], ReLU6 [0, 6], Hardtanh its (min_val, max_val). A name (as in
        ``model.named_modules()``) takes precedence over a type. Unbounded activations (ReLU, LeakyReLU, GELU, ...)
        need an entry.

    Returns
    -------
    nn.Module
        The quantised copy.

    Raises
    ------
    ValueError
        ``bits`` out of range, a range that is not finite with low < high, an unbounded activation without a
        range (naming the module and the fix), or a model with no activation module.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = quantize(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.ReLU()), bits=2,
    ...                ranges={nn.ReLU: (0.0, 3.0)})
    >>> out = net[1](torch.tensor([-5.0, -0.2, 0.4, 5.0]))
    >>> [round(v, 4) for v in out.tolist()]
    [-1.0, -0.3333, 0.3333, 1.0]
    """
    check_int(bits, "bits", minimum=1, maximum=24, what="an integer from 1 to 24 (2**bits levels per unit)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize expects an nn.Module; got {type(model).__name__}")
    ranges = dict(ranges or {})
    for key, value in ranges.items():
        if not isinstance(key, (str, type)):
            raise ValueError(f"ranges keys must be module names (str) or module types; got {key!r}")
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"ranges[{key!r}] must be a pair (low, high); got {value!r}") from None
        if not (torch.isfinite(torch.tensor([low, high])).all() and low < high):
            raise ValueError(f"ranges[{key!r}] must be finite with low < high; got {value!r}")
    model = copy.deepcopy(model)
    found = 0
    for name, module in model.named_modules():
        if not isinstance(module, ACTIVATIONS) or type(module) in QUANTIZED_CLASSES.values():
            continue
        rng = _range_for(name, module, ranges)
        if rng is None:
            raise ValueError(
                f"activation {name!r} ({type(module).__name__}) is unbounded, so quantize() has no fixed range for "
                f"it. Pass one: quantize(model, bits={bits}, ranges={{{name!r}: (low, high)}}) or "
                f"ranges={{nn.{type(module).__name__}: (low, high)}}, with a range that covers its outputs."
            )
        module.__class__ = _quantized_class(type(module))
        module.quant_levels = 2**bits
        module.quant_low, module.quant_high = float(rng[0]), float(rng[1])
        found += 1
    if not found:
        raise ValueError("the model has no activation module (nn.Tanh, nn.ReLU, ...) to quantise after.")
    return model

"""Noisy networks: additive Gaussian noise after chosen layers, in training and in probing alike.

A deterministic network with continuous activations has infinite (or, on a finite probe set, constant log2 N)
I(X;T): every input gets its own point, and the binned or kernel "information" only measures the estimator's
grid or bandwidth (Goldfeld et al. 2019). Adding noise to the network itself makes I(X;T) finite and a
property of the network. :func:`add_noise` returns a copy of a model with that noise built in;
:func:`infoplane.estimators.noisy_mi` then estimates each noisy layer's information.

What the pair measures
----------------------
The noise module is wrapped around the chosen layer, so the layer's own output is the child ``<name>.clean``
(which the tracker's default layer choice records: it is the activation module) and the wrapper's output
``<name>`` is ``clean + N(0, std^2 I)``. A probe pass draws the noise of every layer **once per probe sample**.
The recorded ``clean`` activations of layer l are therefore c_i = f_l(x_i; eps_i), with eps_i the realised
noise of the layers before l. ``noisy_mi(clean, labels, noise_var=std**2)`` integrates layer l's own noise
exactly (the Gaussian mixture over the N recorded rows) and estimates

    I(X; c_X + Z_l),  X uniform on the probe set, Z_l ~ N(0, std^2 I), upstream noise fixed at eps_i,

i.e. the information of layer l's noisy output **conditioned on one draw of upstream noise per sample**. This is
the single-draw form of Goldfeld et al.'s sample-propagation estimator: its mixture is an unbiased sample of the
noisy layer's density (one upstream draw per input), but h(T_l | X) is taken as the entropy of Z_l alone, so
upstream noise is not integrated out of the conditional; as an estimate of the full network's I(X; T_l) it
errs upward by at most h(T_l | X) - h(Z_l) >= 0 (zero for the first noisy layer, whose input is noise-free).
Several probe passes (epochs) give independent upstream draws.

Cost: one extra Gaussian draw per unit and sample in every forward pass; the estimate costs what
:func:`~infoplane.estimators.noisy_mi` states.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from typing import Any

import torch
from torch import nn

from infoplane._validate import check_int
from infoplane.capture.hooks import ACTIVATIONS

__all__ = ["add_noise", "GaussianNoise", "DEFAULT_NOISY", "noise_levels"]

#: Default noisy modules: every hidden nonlinearity (the class-probability modules are left alone).
DEFAULT_NOISY = tuple(t for t in ACTIVATIONS if t not in (nn.Softmax, nn.LogSoftmax))


class GaussianNoise(nn.Module):
    """``clean(x) + N(0, std^2)``, in training **and** in eval mode.

    Training draws from one local generator, eval mode (the tracker's probe passes) from another, both seeded
    from ``seed``; so probing never shifts the noise that training sees, and a run is reproducible for a seed.
    Generators are made per device on first use; a deep copy continues from the same generator states.

    Parameters
    ----------
    clean : nn.Module
        The wrapped layer; its output is the noise-free activation.
    std : float
        Noise standard deviation (activation units).
    seed : int
        Seed of this module's generators.
    """

    def __init__(self, clean: nn.Module, std: float, seed: int = 0) -> None:
        super().__init__()
        self.clean = clean
        self.std = float(std)
        self.seed = int(seed)
        self._gens: dict[tuple[str, bool], torch.Generator] = {}

    def extra_repr(self) -> str:
        return f"std={self.std}, seed={self.seed}"

    def _generator(self, device, training):
        key = (str(device), bool(training))
        g = self._gens.get(key)
        if g is None:
            g = torch.Generator(device=device)
            g.manual_seed((2 * self.seed + int(training)) % 2**63)
            self._gens[key] = g
        return g

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.clean(*args, **kwargs)
        if self.std == 0:
            return out
        g = self._generator(out.device, self.training)
        noise = torch.randn(out.shape, generator=g, device=out.device, dtype=out.dtype)
        return out + self.std * noise

    def __deepcopy__(self, memo):
        new = GaussianNoise(copy.deepcopy(self.clean, memo), self.std, self.seed)
        new.training = self.training
        for key, g in self._gens.items():
            h = torch.Generator(device=key[0])
            h.set_state(g.get_state())
            new._gens[key] = h
        return new

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_gens"] = {}  # generators do not pickle: a pickled copy restarts from the seed
        return state


def _select(model, layers):
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    if layers is None:
        return [n for n in names if isinstance(modules[n], DEFAULT_NOISY)]
    if isinstance(layers, (str, type)):
        layers = [layers]
    picked = []
    for sel in layers:
        if isinstance(sel, type) or (isinstance(sel, tuple) and all(isinstance(t, type) for t in sel)):
            hits = [n for n in names if isinstance(modules[n], sel)]
            what = f"module type {sel.__name__ if isinstance(sel, type) else sel}"
        elif isinstance(sel, str):
            hits = [sel] if sel in modules and sel else [n for n in names if fnmatch.fnmatchcase(n, sel)]
            what = f"name or pattern {sel!r}"
        else:
            raise TypeError(f"layers must be module names, glob patterns or module types; got {sel!r}")
        if not hits:
            raise ValueError(f"{what} matches no module of the model; modules: {names}")
        picked.extend(hits)
    return list(dict.fromkeys(picked))


def add_noise(model: nn.Module, std: float, layers: Any = None, *, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with Gaussian noise N(0, std^2) added to the output of chosen modules.

    The noise is active in training **and** in eval mode (so the tracker's probe passes, which run in eval
    mode, see the noisy network); the original model is left unchanged. Each chosen module ``m`` at path
    ``name`` is replaced by ``GaussianNoise(m)``: the noise-free output is then module ``name.clean`` and the
    noisy output module ``name``. Record the ``.clean`` layers (the tracker's default choice does) and estimate
    them with ``Noisy(noise_var=std**2)``; see the module docstring for exactly what that estimates.

    Parameters
    ----------
    model : nn.Module
    std : float
        Noise standard deviation, > 0 (activation units); the matching ``noise_var`` is ``std**2``.
    layers : None, str, type or list of them
        None: every hidden nonlinearity (the types in ``infoplane.capture.hooks.ACTIVATIONS`` except Softmax and
        LogSoftmax). Otherwise module names, glob patterns (``"features.*"``) or module types (``nn.ReLU``),
        as for the tracker's ``layers=``.
    seed : int, default 0
        Seeds the noise: module k (in model order) uses seed ``seed * 1000 + k``.

    Returns
    -------
    nn.Module
        The noisy copy.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    try:
        std = float(std)
    except (TypeError, ValueError):
        raise ValueError(f"std must be a positive number; got {std!r}") from None
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"std must be a positive finite number (the noise standard deviation); got {std!r}")
    check_int(seed, "seed")
    names = _select(model, layers)
    if not names:
        raise ValueError("the model has no activation module to add noise after; pass layers= with module "
                         "names, patterns or types")
    nested = [n for n in names if any(n.startswith(m + ".") for m in names)]
    if nested:
        raise ValueError(f"layers {nested} lie inside other chosen layers; choose either the container or "
                         f"its parts")
    noisy = copy.deepcopy(model)
    for k, name in enumerate(names):
        parent_name, _, attr = name.rpartition(".")
        parent = noisy.get_submodule(parent_name) if parent_name else noisy
        setattr(parent, attr, GaussianNoise(getattr(parent, attr), std, seed=seed * 1000 + k))
    return noisy


def noise_levels(model: nn.Module) -> dict[str, float]:
    """The noise the network adds after each of its noisy layers, by the name of the layer to record.

    Parameters
    ----------
    model : nn.Module
        Typically a copy made by :func:`add_noise`.

    Returns
    -------
    dict
        ``{"<name>.clean": std}`` for every :class:`GaussianNoise` module ``<name>`` with ``std > 0``: the
        noise-free output that the tracker records, and the standard deviation of the noise added to each of
        its units (activation units). Empty for a network without noise.
    """
    return {f"{name}.clean": m.std for name, m in model.named_modules()
            if isinstance(m, GaussianNoise) and m.std > 0}

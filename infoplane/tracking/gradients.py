"""Per-layer statistics of the mini-batch gradients (drift and diffusion phases of SGD).

For one layer with weights w and the gradients g_1, ..., g_B of the B optimiser steps of a period (an epoch),

    mean_norm = || (1/B) sum_b g_b ||_2
    std_norm  = || sqrt( (1/B) sum_b (g_b - mean)^2 ) ||_2       (element-wise population standard deviation)
    snr       = mean_norm / std_norm

over the elements of the layer's weights (its ``weight`` parameter; biases are left out, as in both published
codes: Shwartz-Ziv & Tishby's take ``sqrt(trace(cov))`` of the flattened weight gradients, which is the same
``std_norm``, and Saxe et al.'s take ``norm(std)`` of the kernels' gradients). Large SNR is the *drift* phase, SNR
below 1 the *diffusion* phase.

A sample is the gradient an optimiser step uses: ``p.grad`` when ``optimizer.step()`` starts, so gradients
accumulated over several ``backward()`` calls make one sample, and under AMP the ``GradScaler`` has unscaled them
already (a step it skips for inf/NaN is no sample). The statistics are accumulated per element in float64 by
Welford's update, which stays exact to rounding when the mean dwarfs the spread (the drift phase). Reading only
copies gradients: training is unchanged to the bit.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook


@dataclass(frozen=True)
class GradientRow:
    """Statistics of one layer over one period. Norms in the units of the loss's gradient.

    ``frozen`` layers (no trainable weight) have ``batches = 0`` and no values (``None``), never zeros.
    """

    layer: str
    mean_norm: float | None
    std_norm: float | None
    snr: float | None
    batches: int
    frozen: bool


class _Welford:
    """Element-wise running mean and sum of squared deviations of one parameter's gradients, float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, grad: torch.Tensor) -> None:
        g = grad.detach().to(torch.float64)
        self.count += 1
        if self.mean is None or self.m2 is None:
            self.mean = g.clone()
            self.m2 = torch.zeros_like(g)
            return
        delta = g - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (g - self.mean)


def layer_weights(module: nn.Module) -> list[nn.Parameter]:
    """The weights whose gradients describe a layer: its ``weight`` parameter, else its own direct parameters
    with at least two dimensions (biases and scales left out)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, nn.Parameter):
        return [weight]
    return [p for p in module.parameters(recurse=False) if p.ndim >= 2]


class GradientStats:
    """Collects the statistics of :mod:`this module <infoplane.tracking.gradients>` for named layers.

    Parameters
    ----------
    layers : dict of str to nn.Module
        The tracked layers, by name. A parameter shared by several layers is read once per step and counts for
        each layer that holds it.

    Use as a context manager (or :meth:`attach` / :meth:`detach`): while attached, every optimiser step whose
    optimiser updates a tracked weight adds one sample; :meth:`read` returns one :class:`GradientRow` per layer
    for the steps since the previous read and starts a new period.
    """

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        if not layers:
            raise ValueError("GradientStats needs at least one layer")
        self._layers = {name: layer_weights(m) for name, m in layers.items()}
        if not any(p.requires_grad for ps in self._layers.values() for p in ps):
            raise ValueError("gradient statistics were requested, but no tracked layer has a trainable weight "
                             f"(layers: {', '.join(self._layers)}); train at least one of them, or leave "
                             "gradients off")
        self._params = {id(p): p for ps in self._layers.values() for p in ps}
        self._acc: dict[int, _Welford] = {}
        self._steps: dict[str, int] = dict.fromkeys(self._layers, 0)
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._relevant: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def attach(self) -> GradientStats:
        """Start listening to optimiser steps (idempotent)."""
        if self._handle is None:
            self._handle = register_optimizer_step_pre_hook(self._on_step)
        return self

    def detach(self) -> None:
        """Stop listening; what was collected stays readable."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> GradientStats:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _tracked_in(self, optimizer: torch.optim.Optimizer) -> list[int]:
        ids = self._relevant.get(optimizer)
        if ids is None:
            ids = [id(p) for g in optimizer.param_groups for p in g["params"] if id(p) in self._params]
            self._relevant[optimizer] = ids
        return ids

    def _on_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        ids = self._tracked_in(optimizer)
        stepped = set()
        for pid in ids:
            p = self._params[pid]
            if p.grad is None:
                continue
            self._acc.setdefault(pid, _Welford()).add(p.grad)
            stepped.add(pid)
        for name, ps in self._layers.items():
            if any(id(p) in stepped for p in ps):
                self._steps[name] += 1

    def read(self) -> list[GradientRow]:
        """One row per layer for the steps since the last read; then start a new period."""
        rows = []
        for name, ps in self._layers.items():
            trainable = [p for p in ps if p.requires_grad]
            if not trainable:
                rows.append(GradientRow(name, None, None, None, 0, True))
                continue
            accs = [self._acc[id(p)] for p in trainable if id(p) in self._acc and self._acc[id(p)].count]
            batches = self._steps[name]
            if not accs:
                rows.append(GradientRow(name, None, None, None, 0, False))
                continue
            mean_sq = sum(float((a.mean * a.mean).sum()) for a in accs if a.mean is not None)
            var_sum = sum(float(a.m2.sum()) / a.count for a in accs if a.m2 is not None)
            mean_norm, std_norm = math.sqrt(mean_sq), math.sqrt(var_sum)
            snr = mean_norm / std_norm if std_norm > 0 else math.inf
            rows.append(GradientRow(name, mean_norm, std_norm, snr, batches, False))
        self._acc.clear()
        self._steps = dict.fromkeys(self._layers, 0)
        return rows


def phase_transition(epochs: object, snr: object, *, window: int = 5, threshold: float = 1.0) -> int | None:
    """The recorded epoch at which a layer passes from drift to diffusion, by a fixed rule.

    The SNR series is smoothed by a running median over ``window`` recorded epochs (centred; shorter at the
    ends), and the transition is the first recorded epoch from which the smoothed SNR stays below ``threshold``
    to the end. The rule uses only the order of the values, so it is deterministic and unchanged by rescaling
    both norms.

    Parameters
    ----------
    epochs : array-like of int, shape [E]
        Recorded epochs, increasing.
    snr : array-like of float, shape [E]
        SNR at those epochs; NaN (no sample) is left out of the smoothing windows; ``inf`` counts as above any
        threshold.
    window : int, default 5
        Recorded epochs per median window (odd numbers centre it exactly).
    threshold : float, default 1.0
        SNR below which the gradients' fluctuations dominate their mean.

    Returns
    -------
    int or None
        The transition epoch, or None if the smoothed SNR ends at or above ``threshold`` (no diffusion phase yet),
        or there is no SNR value at all.
    """
    e = np.asarray(epochs)
    s = np.asarray(snr, dtype=np.float64)
    if e.ndim != 1 or s.shape != e.shape:
        raise ValueError(f"epochs and snr must be 1-d arrays of the same length; got shapes {e.shape} and {s.shape}")
    if len(e) > 1 and np.any(np.diff(e) <= 0):
        raise ValueError("epochs must be strictly increasing")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer (recorded epochs); got {window!r}")
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold > 0):
        raise ValueError(f"threshold must be a positive number; got {threshold!r}")
    half_lo, half_hi = (window - 1) // 2, window // 2
    smooth = np.full(len(s), np.nan)
    for i in range(len(s)):
        part = s[max(0, i - half_lo):i + half_hi + 1]
        part = part[~np.isnan(part)]
        if len(part):
            smooth[i] = np.median(part)
    valid = ~np.isnan(smooth)
    if not valid.any():
        return None
    below = np.where(valid, smooth < threshold, True)
    if not below[valid][-1]:
        return None
    # the last recorded epoch whose smoothed SNR was at or above the threshold; the transition is the next one
    above = np.flatnonzero(valid & ~below)
    first = 0 if len(above) == 0 else int(above[-1]) + 1
    first_valid = int(np.flatnonzero(valid)[np.flatnonzero(valid) >= first][0])
    return int(e[first_valid])

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
already (a step it skips for inf/NaN is no sample). The statistics are accumulated per element in float64 (blocks
of samples reduced by two passes and merged by Chan et al.'s update), which stays exact to rounding when the
mean dwarfs the spread (the drift phase). Reading only
copies gradients: training is unchanged to the bit.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook


@dataclass(frozen=True)
class GradientRow:
    """Statistics of one layer over one period. Norms in the units of the loss's gradient.

    ``frozen`` layers (no trainable weight) have ``batches = 0`` and no values (``None``), never zeros. A period
    without an optimiser step has ``batches = 0`` and no values either.
    """

    layer: str
    mean_norm: float | None
    std_norm: float | None
    snr: float | None
    batches: int
    frozen: bool


def rows_from_moments(layers: Sequence[str], count: Sequence[int] | int, mean_sq: Sequence[float],
                      var_sum: Sequence[float], frozen: Sequence[bool] | None = None) -> list[GradientRow]:
    """Rows from the moments of each layer's gradients over one period (one seed).

    This is the hand-over point for trainers that accumulate the moments themselves (a compiled kernel, a
    stacked ensemble): they pass, per layer, the number of optimiser steps and two sums over the elements of
    the layer's weights.

    Parameters
    ----------
    layers : sequence of str
        Layer names, in the order of the other arguments.
    count : int or sequence of int
        Optimiser steps (mini-batches) in the period, per layer or one for all.
    mean_sq : sequence of float
        Per layer, ``sum_i mean_i^2``: the squared norm of the mean gradient over the period.
    var_sum : sequence of float
        Per layer, ``sum_i var_i``, with ``var_i = (1/B) sum_b (g_bi - mean_i)^2`` the population variance of
        element i over the B steps: the squared norm of the element-wise standard deviation.
    frozen : sequence of bool, optional
        Layers without a trainable weight (their values are ignored).

    Returns
    -------
    list of GradientRow
        One per layer; ``snr`` is ``inf`` when every step had the same gradient (one step, or full-batch
        descent at a fixed point of the data order), and no values where ``count`` is 0 or the layer is frozen.
    """
    n = len(layers)
    counts = [int(count)] * n if isinstance(count, (int, np.integer)) else [int(c) for c in count]
    frozen = [False] * n if frozen is None else [bool(f) for f in frozen]
    if not (len(counts) == len(mean_sq) == len(var_sum) == len(frozen) == n):
        raise ValueError(f"rows_from_moments: {n} layers but {len(counts)} counts, {len(mean_sq)} mean_sq, "
                         f"{len(var_sum)} var_sum and {len(frozen)} frozen flags; give one per layer")
    rows = []
    for name, c, m, v, f in zip(layers, counts, mean_sq, var_sum, frozen):
        if f or c <= 0:
            rows.append(GradientRow(name, None, None, None, 0, f))
            continue
        mean_norm, std_norm = math.sqrt(max(float(m), 0.0)), math.sqrt(max(float(v), 0.0))
        snr = mean_norm / std_norm if std_norm > 0 else math.inf
        rows.append(GradientRow(name, mean_norm, std_norm, snr, c, False))
    return rows


# Bytes of gradient copies a parameter's block may hold before it is folded into the float64 moments.
_BLOCK_BYTES = 8 << 20
_BLOCK_ROWS = 64


def _copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """dst[i].copy_(src[i]) for every i, in one operation where this torch has one."""
    copy = getattr(torch, "_foreach_copy_", None)
    if copy is not None:
        copy(dst, src)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)


class _Moments:
    """Element-wise count, mean and sum of squared deviations (M2) of one parameter's gradients, in float64.

    Samples are copied, in their own dtype, into a block of a few rows (one cheap copy per optimiser step); a
    full block is reduced in float64 by two passes (exact to rounding however large the mean is against the
    spread) and merged into the running moments by Chan et al.'s pairwise update.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self._block: torch.Tensor | None = None
        self._rows: tuple[torch.Tensor, ...] = ()
        self._used = 0

    def add(self, grad: torch.Tensor) -> None:
        self.slot(grad).copy_(grad)
        self.commit()

    def slot(self, grad: torch.Tensor) -> torch.Tensor:
        """Where the next sample goes (copy ``grad`` there, then :meth:`commit`)."""
        if self._block is None:
            rows = max(1, min(_BLOCK_ROWS, _BLOCK_BYTES // max(1, grad.numel() * grad.element_size())))
            self._block = torch.empty((rows, *grad.shape), dtype=grad.dtype, device=grad.device)
            self._rows = self._block.unbind(0)  # one view per row, made once
        return self._rows[self._used]

    def commit(self) -> None:
        """Count the sample copied into :meth:`slot`; a full block is merged."""
        self._used += 1
        if self._block is not None and self._used == self._block.shape[0]:
            self.fold()

    def fold(self) -> None:
        """Merge the block's samples into the float64 moments."""
        k = self._used
        if k == 0 or self._block is None:
            return
        block = self._block[:k].to(torch.float64)
        mean_b = block.mean(0)
        m2_b = (block - mean_b).square_().sum(0)
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = mean_b, m2_b
        else:
            n = self.count + k
            delta = mean_b - self.mean
            self.mean += delta * (k / n)
            self.m2 += m2_b + delta.square_() * (self.count * k / n)
        self.count += k
        self._used = 0

    def sums(self, seeds: int | None) -> tuple[np.ndarray, np.ndarray]:
        """``sum mean^2`` and ``sum var`` over the elements (per leading index when ``seeds`` is given)."""
        self.fold()
        assert self.mean is not None and self.m2 is not None
        mean, var = self.mean, self.m2 / self.count
        if seeds is None:
            return np.array([float(mean.square().sum())]), np.array([float(var.sum())])
        return (mean.reshape(seeds, -1).square().sum(1).cpu().numpy(),
                var.reshape(seeds, -1).sum(1).cpu().numpy())


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
    layers : dict of str to nn.Module or sequence of tensors
        The layers, by name: a module (its :func:`layer_weights`) or the weight tensors themselves. A parameter
        shared by several layers is read once per step and counts for each layer that holds it. A layer with no
        weight, or none that requires a gradient, is reported as frozen.
    stacked : int, optional
        The weights are an ensemble's stacked parameters ``[S, ...]``, trained by one optimiser: the
        statistics are then those of each member (slice ``[s]``), read with :meth:`read_seeds`.

    Use as a context manager (or :meth:`attach` / :meth:`detach`): while attached, every optimiser step whose
    optimiser updates a tracked weight adds one sample; :meth:`read` returns one :class:`GradientRow` per layer
    for the steps since the previous read (or :meth:`reset`) and starts a new period.
    """

    def __init__(self, layers: Mapping[str, nn.Module | Sequence[torch.Tensor]], *, stacked: int | None = None) -> None:
        if not layers:
            raise ValueError("GradientStats needs at least one layer")
        self._layers: dict[str, list[torch.Tensor]] = {}
        for name, value in layers.items():
            params = layer_weights(value) if isinstance(value, nn.Module) else list(value)
            self._layers[name] = list({id(p): p for p in params}.values())
        if not any(p.requires_grad for ps in self._layers.values() for p in ps):
            raise ValueError("gradient statistics were requested, but no tracked layer has a trainable weight "
                             f"(layers: {', '.join(self._layers)}); train at least one of them, or leave "
                             "gradients off")
        if stacked is not None:
            bad = [n for n, ps in self._layers.items() for p in ps if p.ndim == 0 or p.shape[0] != stacked]
            if bad:
                raise ValueError(f"stacked={stacked}: the weights of layers {bad} do not have {stacked} members "
                                 f"along their first dimension")
        self.stacked = stacked
        self._params = {id(p): p for ps in self._layers.values() for p in ps}
        self._acc: dict[int, _Moments] = {}
        self._steps: dict[str, int] = dict.fromkeys(self._layers, 0)
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._relevant: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def layers(self) -> list[str]:
        """The layer names, in the order of the rows."""
        return list(self._layers)

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
            ids = list(dict.fromkeys(id(p) for g in optimizer.param_groups for p in g["params"]
                                     if id(p) in self._params))
            self._relevant[optimizer] = ids
        return ids

    def _on_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        ids = self._tracked_in(optimizer)
        if not ids:
            return
        stepped = set()
        slots, grads, accs = [], [], []
        for pid in ids:
            grad = self._params[pid].grad
            if grad is None:
                continue
            acc = self._acc.get(pid)
            if acc is None:
                acc = self._acc[pid] = _Moments()
            slots.append(acc.slot(grad))
            grads.append(grad)
            accs.append(acc)
            stepped.add(pid)
        if slots:  # one copy operation for every tracked parameter of the step (the same values as one by one)
            _copy_all(slots, grads)
        for acc in accs:
            acc.commit()
        for name, ps in self._layers.items():
            if any(id(p) in stepped for p in ps):
                self._steps[name] += 1

    def reset(self) -> None:
        """Start a new period, dropping what was collected."""
        self._acc.clear()
        self._steps = dict.fromkeys(self._layers, 0)

    def read_seeds(self) -> list[list[GradientRow]]:
        """Per member (one list when not ``stacked``), one row per layer for the steps since the last read;
        then start a new period."""
        seeds = 1 if self.stacked is None else self.stacked
        names = list(self._layers)
        mean_sq = np.zeros((seeds, len(names)))
        var_sum = np.zeros((seeds, len(names)))
        counts = [0] * len(names)
        frozen = [False] * len(names)
        for j, (name, ps) in enumerate(self._layers.items()):
            trainable = [p for p in ps if p.requires_grad]
            frozen[j] = not trainable
            accs = [self._acc[id(p)] for p in trainable if id(p) in self._acc]
            if not accs:
                continue
            counts[j] = self._steps[name]
            for acc in accs:
                m, v = acc.sums(self.stacked)
                mean_sq[:, j] += m
                var_sum[:, j] += v
        self.reset()
        return [rows_from_moments(names, counts, mean_sq[s], var_sum[s], frozen) for s in range(seeds)]

    def read(self) -> list[GradientRow]:
        """One row per layer for the steps since the last read; then start a new period."""
        if self.stacked is not None:
            raise ValueError("these statistics are stacked over an ensemble; use read_seeds()")
        return self.read_seeds()[0]


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

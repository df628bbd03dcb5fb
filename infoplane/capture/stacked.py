"""The probe pass of a whole ensemble at once: plain MLPs run side by side with batched matrix products.

For members that are all the same ``nn.Sequential`` of ``nn.Linear`` layers and elementwise activations, probed on
one flat tensor at the layers' own outputs, one stacked forward pass (``baddbmm`` over the members' stacked
weights) gives every member's every layer, instead of one hooked forward per member: a few operations per layer
whatever the number of seeds. Each member's arithmetic is the one its own forward does (the same matrix product
per member, the same elementwise functions), but whether a batched product rounds exactly like a single one is up
to the BLAS library, so :class:`StackedProbe` compares the two passes bit for bit on first use and keeps the
stacked pass only where they agree.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from infoplane.capture.hooks import Layer, probe

__all__ = ["ELEMENTWISE", "same_mlps", "stackable", "stacked_probe", "stacked_outputs", "pad_rows", "StackedProbe"]

# Rows are padded to a multiple of this, so that every member's slice of a stacked [S, rows, d] float32 tensor
# starts on a 64-byte boundary as a tensor of its own does: BLAS kernels may round differently on other alignments.
_ROW_ALIGN = 16

#: Parameter-free modules applied elementwise: on a stacked [S, N, d] tensor they act as on each member's [N, d].
#: A module class may also declare itself so with a class attribute ``infoplane_elementwise = True`` (infoplane's
#: quantised activations do).
ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Identity,
               nn.Hardtanh, nn.ReLU6, nn.Mish, nn.Softsign, nn.Tanhshrink)

_TRANSFORMS = {None: lambda t: t, "softmax": lambda t: torch.softmax(t, dim=-1), "sigmoid": torch.sigmoid,
               "exp": torch.exp}


def _signature(model: nn.Module) -> Optional[list]:
    """The layer-by-layer description two stackable members share, or None when the model is not a plain MLP."""
    if type(model) is not nn.Sequential:
        return None
    out: list[tuple] = []
    for name, m in model.named_children():
        if type(m) is nn.Linear:
            out.append((name, "linear", tuple(m.weight.shape), m.bias is not None, m.weight.dtype, m.weight.device))
        elif type(m) in ELEMENTWISE or getattr(type(m), "infoplane_elementwise", False) is True:
            out.append((name, type(m), repr(m)))  # repr carries the parameters (slope, limits, ...)
        else:
            return None
    if any(True for _ in model.buffers()):
        return None
    return out


def same_mlps(models: Sequence[nn.Module]) -> bool:
    """Whether the models are two or more identical plain MLPs (``nn.Sequential`` of ``nn.Linear`` and
    elementwise activations, without buffers), so that they can run side by side."""
    if len(models) < 2:
        return False
    first = _signature(models[0])
    return bool(first) and all(_signature(m) == first for m in models[1:])


def _stacked_weights(models: Sequence[nn.Module]) -> tuple[dict, dict]:
    """Per Linear child (by position): the members' weights, transposed, [S, in, out], and biases [S, 1, out]."""
    weights, biases = {}, {}
    children = [list(model.children()) for model in models]  # the same structure: children match by position
    for k, m in enumerate(children[0]):
        if type(m) is nn.Linear:
            members = [kids[k] for kids in children]
            weights[k] = torch.stack([mm.weight for mm in members]).transpose(1, 2)
            biases[k] = None if m.bias is None else torch.stack([mm.bias for mm in members]).unsqueeze(1)
    return weights, biases


@torch.no_grad()
def stacked_outputs(models: Sequence[nn.Module], inputs: torch.Tensor) -> torch.Tensor:
    """The members' outputs [S, n, out] on their own rows ``inputs`` [S, n, features] (models as :func:`same_mlps`
    allows), from one stacked forward pass."""
    weights, biases = _stacked_weights(models)
    n = inputs.shape[1]
    h = pad_rows(inputs)
    for k, (_name, m) in enumerate(models[0].named_children()):
        if k in weights:
            h = torch.bmm(h, weights[k]) if biases[k] is None else torch.baddbmm(biases[k], h, weights[k])
        else:
            h = m(h)
    return h[:, :n]


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` [S, n, d] with zero rows appended up to a multiple of :data:`_ROW_ALIGN` rows (``x`` itself when n is
    one already): :func:`stacked_outputs` pads its inputs so, and takes padded ones as they are."""
    n = x.shape[1]
    rows = -(-n // _ROW_ALIGN) * _ROW_ALIGN
    if rows == n:
        return x
    out = x.new_zeros(x.shape[0], rows, *x.shape[2:])
    out[:, :n] = x
    return out


def stackable(models: Sequence[nn.Module], inputs: object, layers: Sequence[Layer]) -> bool:
    """Whether :func:`stacked_probe` applies: two or more identical plain MLPs, one flat floating-point input
    tensor on their device, and every layer a top-level module's own output (no selector or pooling)."""
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 2 or not inputs.is_floating_point():
        return False
    if not same_mlps(models):
        return False
    first = _signature(models[0]) or []
    linear = [s for s in first if s[1] == "linear"]
    if inputs.device != linear[0][5] or inputs.dtype != linear[0][4]:
        return False
    names = {s[0] for s in first}
    return all(layer.name in names and layer.pool is None and layer.select is None
               and layer.transform in _TRANSFORMS for layer in layers)


@torch.no_grad()
def stacked_probe(models: Sequence[nn.Module], inputs: torch.Tensor, layers: Sequence[Layer],
                  batch_size: int = 4096) -> list[dict[str, torch.Tensor]]:
    """Every member's activations at ``layers`` from stacked forward passes (models as :func:`stackable` allows).

    Parameters
    ----------
    models : list of nn.Module
    inputs : tensor [N, features] on the models' device
    layers : list of Layer
    batch_size : int
        Probe samples per pass, as :func:`~infoplane.capture.hooks.probe` takes them.

    Returns
    -------
    list of dict
        Per member, layer name -> float32 tensor [N, width], as :func:`~infoplane.capture.hooks.probe` gives it.
    """
    return _stacked_probe(models, inputs, layers, batch_size)[0]


@torch.no_grad()
def _stacked_probe(models: Sequence[nn.Module], inputs: torch.Tensor, layers: Sequence[Layer],
                   batch_size: int) -> tuple[list[dict[str, torch.Tensor]], list[bool]]:
    """:func:`stacked_probe`'s activations, and per member whether every one of them is finite (checked on the
    stacked tensors: one check per layer and pass for all members)."""
    children = list(models[0].named_children())
    wanted = {layer.name: layer for layer in layers}
    weights, biases = _stacked_weights(models)
    store: list[dict[str, list]] = [{name: [] for name in wanted} for _ in models]
    checks = []
    n = inputs.shape[0]
    for start in range(0, n, batch_size):
        x = inputs[start:start + batch_size]
        rows = x.shape[0]
        h = pad_rows(x.unsqueeze(0)).expand(len(models), -1, -1)
        for k, (name, m) in enumerate(children):
            if k in weights:
                h = torch.bmm(h, weights[k]) if biases[k] is None else torch.baddbmm(biases[k], h, weights[k])
            else:
                h = m(h)
            if name in wanted:
                # the transform row by row on all members at once: each member's rows as its own call gives them
                # (the first use compares the whole pass with the members' own, bit for bit)
                out = _TRANSFORMS[wanted[name].transform](h[:, :rows].reshape(len(models), rows, -1).float())
                checks.append(torch.isfinite(out).flatten(1).all(1))
                for i in range(len(models)):
                    store[i][name].append(out[i])
    finite = torch.stack(checks).all(0).tolist() if checks else [True] * len(models)
    acts = [{name: torch.cat(parts) if len(parts) > 1 else parts[0] for name, parts in per.items()} for per in store]
    return acts, finite


class StackedProbe:
    """Probes an ensemble with one stacked pass where that gives the members' own activations bit for bit.

    The first call runs both passes and compares them; from then on only the one chosen runs (the shapes, and so
    the BLAS library's choice of kernel, stay the same from call to call).
    """

    def __init__(self) -> None:
        self.exact: Optional[bool] = None
        #: After a call that returned activations: per member, whether all of them are finite; else None.
        self.finite: Optional[list[bool]] = None

    def __call__(self, models: Sequence[nn.Module], inputs: torch.Tensor, layers: Sequence[Layer], batch_size: int,
                 epoch: Optional[int] = None) -> Optional[list[dict[str, torch.Tensor]]]:
        """Per member, layer name -> activations; None where the stacked pass does not apply (probe one by one)."""
        self.finite = None
        if self.exact is False or not stackable(models, inputs, layers):
            return None
        stacked, finite = _stacked_probe(models, inputs, layers, batch_size)
        if self.exact is None:
            own = [probe(m, inputs, layers, batch_size, epoch=epoch) for m in models]
            self.exact = all(torch.equal(a[name], b[name]) for a, b in zip(own, stacked) for name in a)
            if not self.exact:
                return own
        self.finite = finite
        return stacked

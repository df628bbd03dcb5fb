"""Which engine trains an ensemble: stacked (vectorised) when that is provably the same as training the seeds
one by one, else one by one, with the reason either way."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn
from torch.func import stack_module_state

from infoplane.optim import SAM
from infoplane.train.fused import FusedEngine, announce, try_fused
from infoplane.train.sequential import SequentialEngine
from infoplane.train.spec import TrainSpec
from infoplane.train.stacked_forward import stacked_sequential, vmap_forward_loss
from infoplane.train.state import cuda_devices
from infoplane.train.vectorized import ELEMENTWISE, VectorizedEngine


def choose_engine(vectorize: bool | str, spec: TrainSpec, members: list[nn.Module], inputs: torch.Tensor,
                   labels: torch.Tensor, train_sets: Sequence[torch.Tensor],
                   batch_size: int, fused: bool | str = "auto") -> SequentialEngine | VectorizedEngine | FusedEngine:
    """The engine for ``fit``'s ``vectorize`` and ``fused`` choices; raises ValueError when ``vectorize=True`` or
    ``fused=True`` cannot be met."""
    if vectorize is False:
        if fused is True:
            raise ValueError("fused=True needs vectorize='auto' or True (vectorize=False trains on the torch path)")
        return SequentialEngine(spec, members, "vectorize=False")
    if spec.train_step is None and isinstance(spec.make_optimizer(list(members[0].parameters())), SAM):
        reason = ("SAM takes two gradients per batch (at w and at the perturbed w + e) through its closure-based "
                  "step, which the fused kernel and the stacked ensemble do not run; training on the torch path, "
                  "one seed at a time")
        if fused is True or vectorize is True:
            raise ValueError(f"{'fused' if fused is True else 'vectorize'}=True cannot be met: {reason}")
        announce_sam(reason)
        return SequentialEngine(spec, members, reason, announced=True)
    if fused is not False:
        engine = try_fused(spec, members, inputs, labels, train_sets, batch_size)
        if not isinstance(engine, str):
            return engine
        if fused is True:
            raise ValueError(f"fused=True, but the fused training kernel cannot train this model: {engine}")
        announce(engine)
    if len(members) == 1:
        return SequentialEngine(spec, members, "a single seed")
    vectorized = _try_vectorize(spec, members, inputs, labels, train_sets, batch_size)
    if isinstance(vectorized, str):
        if vectorize is True:
            raise ValueError(f"vectorize=True, but the seeds cannot be trained together: {vectorized}")
        return SequentialEngine(spec, members, vectorized)
    return vectorized


def _try_vectorize(spec: TrainSpec, members: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
                   train_sets: Sequence[torch.Tensor], batch_size: int) -> VectorizedEngine | str:
    """A vectorised engine, or a string saying why the members cannot be trained together."""
    if spec.train_step is not None:
        return "the model file defines a custom train_step"
    if len({len(s) for s in train_sets}) > 1:
        return "the seeds' training sets differ in size"
    for name, module in members[0].named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            return (f"{type(module).__name__} at {name!r} updates running statistics during training "
                    "(buffers cannot be shared in the stacked ensemble)")
    layout = [(k, v.shape, v.dtype) for k, v in (*members[0].named_parameters(), *members[0].named_buffers())]
    for m in members[1:]:
        if [(k, v.shape, v.dtype) for k, v in (*m.named_parameters(), *m.named_buffers())] != layout:
            return "the seeds' networks differ in their parameters or buffers"
    try:
        params, buffers = stack_module_state(members)
    except RuntimeError as exc:
        return f"torch.func.stack_module_state failed: {_first_line(exc)}"
    optimizer = spec.make_optimizer(list(params.values()))
    if type(optimizer) not in ELEMENTWISE:
        return f"{type(optimizer).__name__} is not known to update each parameter element independently"
    # A factory may group parameters by shape (e.g. no weight decay where p.ndim == 1); stacking adds a
    # dimension, so the stacked optimiser must group the same parameters in the same order as a member's own.
    names = {id(v): k for k, v in params.items()}
    own_names = {id(v): k for k, v in members[0].named_parameters()}
    stacked_groups = [[names.get(id(p)) for p in g["params"]] for g in optimizer.param_groups]
    own_groups = [[own_names.get(id(p)) for p in g["params"]]
                  for g in spec.make_optimizer(list(members[0].parameters())).param_groups]
    if stacked_groups != own_groups:
        return "the optimiser groups the stacked parameters differently from a single network's"

    forward_loss, how = stacked_sequential(members[0], spec.loss, inputs, labels), "batched matrix products"
    if forward_loss is None:
        forward_loss, how = vmap_forward_loss(members[0], spec.loss), "torch.func.vmap"

    # Trial step on copies: the real parameters and buffers must not move.
    n = min(batch_size, len(train_sets[0]))
    idx = torch.stack([s[:n] for s in train_sets]).to(inputs.device)
    trial_params = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in params.items()}
    trial_buffers = {k: v.clone() for k, v in buffers.items()}
    try:
        with torch.random.fork_rng(devices=cuda_devices(inputs.device)):
            losses, out = forward_loss(trial_params, trial_buffers, inputs[idx], labels[idx])
            if losses.shape != (len(members),):
                return f"the loss returned shape {tuple(losses.shape[1:])} per seed, expected a scalar"
            losses.sum().backward()
    except Exception as exc:  # any failure of vmap/functional_call means: train one at a time
        return f"the vmap trial step failed ({type(exc).__name__}: {_first_line(exc)})"
    changed = [k for k, v in buffers.items() if not torch.equal(v, trial_buffers[k])]
    if changed:
        return f"training changes the buffers {', '.join(changed)}"
    with torch.no_grad():
        reference = members[0](inputs[idx[0]])
    if not torch.allclose(out[0].detach(), reference, rtol=1e-4, atol=1e-5):
        return "the vmapped forward does not reproduce the module's own forward"
    return VectorizedEngine(spec, members, optimizer, params, buffers, forward_loss,
                       f"vectorised over {len(members)} seeds with {how}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SamNote(UserWarning):
    """Training with SAM runs on the torch path, one seed at a time (printed once per process)."""


_SAM_ANNOUNCED: list[str] = []


def announce_sam(reason: str) -> None:
    if not _SAM_ANNOUNCED:
        _SAM_ANNOUNCED.append(reason)
        warnings.warn(f"infoplane.fit: {reason}", SamNote, stacklevel=4)

"""The stacked engine: the seeds' parameters stacked into [S, ...] tensors and trained with one optimiser.

The forward-and-loss over the stack comes from :mod:`infoplane.train.stacked_forward` (batched matrix products
or ``torch.func.vmap``); :mod:`infoplane.train.engines` decides whether this engine can be used at all.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from infoplane.train.shuffle import EpochOrders, as_orders
from infoplane.train.spec import TrainSpec

# Optimisers whose update of each parameter element depends only on that element's own gradient
# and state (plus shared scalars such as the step count): one of them over stacked [S, ...]
# tensors performs exactly the S separate updates. Optimisers using norms over a whole tensor
# (LARS/LAMB-like) or closures (LBFGS) would mix the members.
ELEMENTWISE = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta, torch.optim.Rprop,
)
# Per-parameter optimiser state entries that are scalars shared by all members, not stacked.
_SHARED_STATE = frozenset({"step", "mu_product"})


class VectorizedEngine:
    """Trains the members together: stacked parameters, one vmap call and one optimiser step per batch.

    The member modules handed to callbacks hold views into the stacked tensors, so they always
    show the current parameters without any copying.
    """

    vectorized = True

    def __init__(self, spec: TrainSpec, members: list[nn.Module], optimizer: torch.optim.Optimizer, params: dict,
                 buffers: dict, forward_loss: Callable, reason: str) -> None:
        self.spec, self.members, self.optimizer, self.reason = spec, members, optimizer, reason
        self.params, self.buffers, self.forward_loss = params, buffers, forward_loss
        for i, member in enumerate(members):
            swap_tensors(
                member,
                lambda name, p, i=i: nn.Parameter(params[name].detach()[i], requires_grad=p.requires_grad),
                lambda name, b, i=i: buffers[name][i],
            )

    def train_epoch(self, orders: EpochOrders | torch.Tensor | list[torch.Tensor], inputs: torch.Tensor,
                    labels: torch.Tensor, batch_size: int, rngs: list[dict]) -> list[dict]:
        orders = as_orders(orders)
        order = orders if isinstance(orders, torch.Tensor) else torch.stack(orders)
        # One gather per epoch; the minibatches are then views of it.
        epoch_inputs, epoch_labels = inputs[order], labels[order]
        for start in range(0, order.shape[1], batch_size):
            x, y = epoch_inputs[:, start:start + batch_size], epoch_labels[:, start:start + batch_size]
            losses, _ = self.forward_loss(self.params, self.buffers, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            # Member i's loss depends only on member i's slice, so the gradient of the sum is, slice
            # by slice, each member's own gradient.
            losses.sum().backward()
            self.optimizer.step()
        return rngs  # forward draws no random numbers on this path (checked when it was chosen)

    def optimizer_states(self) -> list[dict]:
        stacked = self.optimizer.state_dict()
        shapes = [p.shape for p in self.params.values()]
        out = []
        for i in range(len(self.members)):
            per_param = {
                k: {
                    key: value[i].clone() if _is_stacked(key, value, shapes[k]) else copy.deepcopy(value)
                    for key, value in entry.items()
                }
                for k, entry in stacked["state"].items()
            }
            out.append({"state": per_param, "param_groups": copy.deepcopy(stacked["param_groups"])})
        return out

    def load_optimizer_states(self, states: list[dict]) -> None:
        shapes = [p.shape[1:] for p in self.params.values()]
        merged: dict[Any, dict[str, Any]] = {}
        for k in states[0]["state"]:
            entries = [s["state"][k] for s in states]
            merged[k] = {}
            for key, first in entries[0].items():
                values = [e[key] for e in entries]
                if torch.is_tensor(first) and key not in _SHARED_STATE and first.shape == shapes[k]:
                    merged[k][key] = torch.stack(values)
                elif all(_same(v, first) for v in values):
                    merged[k][key] = first
                else:
                    raise ValueError(
                        f"the seeds' optimiser states differ in {key!r}, so they cannot be trained together; "
                        "resume with vectorize=False"
                    )
        self.optimizer.load_state_dict({"state": merged, "param_groups": states[0]["param_groups"]})


def _is_stacked(key, value, stacked_shape):
    return torch.is_tensor(value) and key not in _SHARED_STATE and value.shape == stacked_shape


def _same(a, b):
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    return a == b


def swap_tensors(module: nn.Module, new_param: Callable, new_buffer: Callable) -> None:
    """Replace each parameter and buffer of ``module`` (tied ones consistently) by a new tensor."""
    replace = {}
    for name, p in module.named_parameters():
        replace[id(p)] = new_param(name, p)
    for name, b in module.named_buffers():
        replace[id(b)] = new_buffer(name, b)
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for key, t in table.items():
                if t is not None and id(t) in replace:
                    table[key] = replace[id(t)]


def unshare(member: nn.Module) -> nn.Module:
    """Give a member its own storage (not views into the stacked ensemble tensors)."""
    swap_tensors(
        member,
        lambda name, p: nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad),
        lambda name, b: b.clone(),
    )
    return member



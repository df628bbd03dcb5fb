"""The one-by-one engine: trains the seeds one after another, each with its own optimiser."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from infoplane.optim import SAM
from infoplane.train.shuffle import EpochOrders, as_orders
from infoplane.train.spec import TrainSpec
from infoplane.train.state import cuda_devices, get_rng, set_rng


class SequentialEngine:
    """Trains the members one after another, each with its own optimiser."""

    vectorized = False

    def __init__(self, spec: TrainSpec, members: list[nn.Module], reason: str, announced: bool = False) -> None:
        self.spec, self.members, self.reason = spec, members, reason
        self.announced = announced  # the reason was already printed (fit then says nothing more)
        self.optimizers = [spec.make_optimizer(m.parameters()) for m in members]

    def train_epoch(self, orders: EpochOrders | torch.Tensor | list[torch.Tensor], inputs: torch.Tensor,
                    labels: torch.Tensor, batch_size: int, rngs: list[dict]) -> list[dict]:
        orders = as_orders(orders)
        device = inputs.device
        new_rngs = []
        # Each member draws its in-forward randomness (dropout) from its own saved RNG state, so
        # results do not depend on the order of members and resume exactly.
        with torch.random.fork_rng(devices=cuda_devices(device)):
            for model, opt, order, rng in zip(self.members, self.optimizers, orders, rngs):
                set_rng(rng, device)
                model.train()
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    batch = (inputs[idx], labels[idx])
                    if self.spec.train_step is not None:
                        self.spec.train_step(model, batch, opt)
                    elif isinstance(opt, SAM):
                        opt.step(_closure(model, self.spec.loss, opt, *batch))
                    else:
                        opt.zero_grad(set_to_none=True)
                        self.spec.loss(model(batch[0]), batch[1]).backward()
                        opt.step()
                new_rngs.append(get_rng(device))
        return new_rngs

    def optimizer_states(self) -> list[dict]:
        return [copy.deepcopy(opt.state_dict()) for opt in self.optimizers]

    def load_optimizer_states(self, states: list[dict]) -> None:
        for opt, saved in zip(self.optimizers, states):
            opt.load_state_dict(saved)


def _closure(model: nn.Module, loss_fn: Callable, opt: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The closure SAM's step calls: at ``w`` (the gradients are cleared first, so SAM takes it there) and again at
    the perturbed weights, each time zeroing the gradients, computing the batch's loss and its backward."""
    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    opt.zero_grad(set_to_none=True)
    return closure

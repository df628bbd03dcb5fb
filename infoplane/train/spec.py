"""What to train: the model builder, optimiser factory, loss and custom step, from a model file or arguments."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from infoplane.data.modelfile import NAMED_OPTIMIZERS as OPTIMIZERS
from infoplane.data.modelfile import ModelFile, seeded_build
from infoplane.optim import SAM

DEFAULT_LR = 4e-4
#: The radius of the neighbourhood when none is given: Foret et al.'s for SAM, Kwon et al.'s for ASAM.
DEFAULT_RHO = {"sam": 0.05, "asam": 0.5}


@dataclass
class TrainSpec:
    build: Callable[[int], nn.Module]
    make_optimizer: Callable
    loss: Callable
    train_step: Callable | None
    max_seeds: int | None

    @classmethod
    def from_args(cls, model: ModelFile | Callable[[], nn.Module], lr: float | None,
                  optimizer: str | Callable | None, loss: Callable | None, rho: float | None = None) -> TrainSpec:
        file_rho = None
        if isinstance(model, ModelFile):
            build, max_seeds = model.build, model.max_seeds
            file_optimizer, file_loss, train_step = model.optimizer, model.loss, model.train_step
            file_rho = model.rho
        elif callable(model) and not isinstance(model, nn.Module):
            build, max_seeds = (lambda seed: _checked_build(model, seed)), None
            file_optimizer = file_loss = train_step = None
        else:
            raise TypeError(
                f"model must be a ModelFile (infoplane.data.modelfile.load_model_file) or a zero-argument function "
                f"returning a fresh nn.Module, got {type(model).__name__}"
            )
        if optimizer is None:
            optimizer, rho = file_optimizer, (file_rho if rho is None else rho)
        if optimizer is None or isinstance(optimizer, str):
            name = "adam" if optimizer is None else optimizer.lower()
            if name not in OPTIMIZERS:
                raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a callable(parameters), got {optimizer!r}")
            rate = DEFAULT_LR if lr is None else float(lr)
            if not rate > 0:
                raise ValueError(f"lr must be positive, got {lr!r}")
            make_optimizer: Callable
            if name in DEFAULT_RHO:
                radius = DEFAULT_RHO[name] if rho is None else rho
                # The checks of SAM itself, now rather than at the first step.
                SAM([torch.zeros(1, requires_grad=True)], torch.optim.SGD, rho=radius, lr=rate)
                make_optimizer = _SamOptimizer(rate, float(radius), name == "asam")
            else:
                make_optimizer = _BuiltinOptimizer(torch.optim.Adam if name == "adam" else torch.optim.SGD, rate)
        elif callable(optimizer):
            if lr is not None:
                raise ValueError("lr only applies to a named optimizer ('adam', 'sgd', 'sam', 'asam'); set the rate "
                                 "inside the optimizer factory")
            make_optimizer = optimizer
        else:
            raise TypeError(f"optimizer must be one of {OPTIMIZERS} or a callable(parameters), got "
                            f"{type(optimizer).__name__}")
        if rho is not None and not (isinstance(optimizer, str) and optimizer.lower() in DEFAULT_RHO):
            raise ValueError(f"rho is the radius of SAM's neighbourhood: it needs optimizer='sam' or 'asam' (the "
                             f"optimizer is {optimizer!r})")
        loss = file_loss if loss is None else loss
        loss = nn.CrossEntropyLoss() if loss is None else loss
        if not callable(loss):
            raise TypeError(f"loss must be callable(outputs, targets), got {type(loss).__name__}")
        return cls(build, make_optimizer, loss, train_step, max_seeds)


@dataclass
class _BuiltinOptimizer:
    cls: type
    lr: float

    def __call__(self, params) -> torch.optim.Optimizer:
        params = list(params)
        # The fused kernels update all tensors in one call, which matters when per-step overhead
        # dominates (small networks); devices without them get the default implementation.
        try:
            return self.cls(params, lr=self.lr, fused=True)
        except (RuntimeError, ValueError):
            return self.cls(params, lr=self.lr)


@dataclass
class _SamOptimizer:
    """SAM (or ASAM) around plain SGD at ``lr``: the base of Foret et al.'s experiments, so that a run with SAM
    differs from one with ``sgd`` only by the ascent step."""

    lr: float
    rho: float
    adaptive: bool

    def __call__(self, params) -> torch.optim.Optimizer:
        return SAM(list(params), torch.optim.SGD, rho=self.rho, adaptive=self.adaptive, lr=self.lr)


def _checked_build(build_model: Callable[[], nn.Module], seed: int) -> nn.Module:
    built = seeded_build(build_model, seed)
    if not isinstance(built, nn.Module):
        raise TypeError(f"the model builder returned {type(built).__name__}, not a torch.nn.Module")
    return built

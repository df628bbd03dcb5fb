"""What to train: the model builder, optimiser factory, loss and custom step, from a model file or arguments."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from infoplane.data.modelfile import ModelFile, seeded_build

DEFAULT_LR = 4e-4


@dataclass
class TrainSpec:
    build: Callable[[int], nn.Module]
    make_optimizer: Callable
    loss: Callable
    train_step: Callable | None
    max_seeds: int | None

    @classmethod
    def from_args(cls, model: ModelFile | Callable[[], nn.Module], lr: float | None,
                  optimizer: str | Callable | None, loss: Callable | None) -> TrainSpec:
        if isinstance(model, ModelFile):
            build, max_seeds = model.build, model.max_seeds
            file_optimizer, file_loss, train_step = model.optimizer, model.loss, model.train_step
        elif callable(model) and not isinstance(model, nn.Module):
            build, max_seeds = (lambda seed: _checked_build(model, seed)), None
            file_optimizer = file_loss = train_step = None
        else:
            raise TypeError(
                f"model must be a ModelFile (infoplane.data.modelfile.load_model_file) or a zero-argument function "
                f"returning a fresh nn.Module, got {type(model).__name__}"
            )
        optimizer = file_optimizer if optimizer is None else optimizer
        if optimizer is None or isinstance(optimizer, str):
            name = "adam" if optimizer is None else optimizer.lower()
            if name not in ("adam", "sgd"):
                raise ValueError(f"optimizer must be 'adam', 'sgd' or a callable(parameters), got {optimizer!r}")
            rate = DEFAULT_LR if lr is None else float(lr)
            if not rate > 0:
                raise ValueError(f"lr must be positive, got {lr!r}")
            make_optimizer: Callable = _BuiltinOptimizer(torch.optim.Adam if name == "adam" else torch.optim.SGD, rate)
        elif callable(optimizer):
            if lr is not None:
                raise ValueError("lr only applies to optimizer='adam' or 'sgd'; set the rate inside the optimizer factory")
            make_optimizer = optimizer
        else:
            raise TypeError(f"optimizer must be 'adam', 'sgd' or a callable(parameters), got {type(optimizer).__name__}")
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


def _checked_build(build_model: Callable[[], nn.Module], seed: int) -> nn.Module:
    built = seeded_build(build_model, seed)
    if not isinstance(built, nn.Module):
        raise TypeError(f"the model builder returned {type(built).__name__}, not a torch.nn.Module")
    return built

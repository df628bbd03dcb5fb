"""Loss and accuracy of each member after an epoch, computed lazily (only when a callback reads them)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Sequence

import torch
from torch import nn

_EVAL_CHUNK = 8192  # rows per forward pass when computing metrics; bounds memory on large sets


class LazyMetrics(Mapping):
    """Per-seed metrics computed on first access; valid only while the callback runs.

    ``gradients`` holds the epoch's gradient statistics when ``fit`` was asked for them (see its ``gradients``).
    """

    def __init__(self, compute: Callable[[], dict], with_test: bool) -> None:
        self._compute, self._values, self._open = compute, None, True
        self.gradients: list | None = None
        self._keys = ("train_loss", "train_acc") + (("test_loss", "test_acc") if with_test else ())

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        if self._values is None:
            if not self._open:
                raise RuntimeError("metrics can only be read inside the callback; keep dict(metrics) to use them later")
            self._values = self._compute()
        return self._values[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def close(self) -> None:
        self._open = False


@torch.no_grad()
def evaluate_members(members: Sequence[nn.Module], loss_fn: Callable, inputs: torch.Tensor, labels: torch.Tensor,
              train_sets: Sequence[torch.Tensor], test_sets: Sequence[torch.Tensor] | None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"train_loss": [], "train_acc": []}
    if test_sets is not None:
        out.update(test_loss=[], test_acc=[])
    for i, model in enumerate(members):
        was_training = model.training
        model.eval()
        for prefix, sets in (("train", train_sets), ("test", test_sets)):
            if sets is None:
                continue
            loss, acc = _loss_and_accuracy(model, loss_fn, inputs, labels, sets[i].to(inputs.device))
            out[f"{prefix}_loss"].append(loss)
            out[f"{prefix}_acc"].append(acc)
        model.train(was_training)
    return out


def _loss_and_accuracy(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, labels: torch.Tensor,
                       idx: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy (fraction correct; NaN when outputs have no class axis) over rows idx."""
    if len(idx) == 0:
        return float("nan"), float("nan")
    total_loss, correct = 0.0, 0.0
    for start in range(0, len(idx), _EVAL_CHUNK):
        chunk = idx[start:start + _EVAL_CHUNK]
        x, y = inputs[chunk], labels[chunk]
        output = model(x)
        total_loss += float(loss_fn(output, y)) * len(chunk)
        if output.dim() < 2:
            correct = float("nan")
        else:
            target = y if y.dim() == 1 else y.argmax(-1)
            correct += float((output.argmax(-1) == target).sum())
    return total_loss / len(idx), correct / len(idx)


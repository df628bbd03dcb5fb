"""Loss and accuracy of each member after an epoch, computed lazily (only when a callback reads them)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Sequence

import torch
from torch import nn

from infoplane.capture.stacked import pad_rows, same_mlps, stacked_outputs

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


class MemberMetrics:
    """:func:`evaluate_members`, with one stacked forward pass per index set for identical plain MLPs.

    Each member's outputs on its own rows come from one batched pass over all members (rows gathered per
    member, as its own pass gathers them). Whether the batched product rounds exactly like the member's own is up
    to the BLAS library, so the first call computes both and compares them bit for bit; the stacked pass is kept
    only where they agree (the shapes stay the same from call to call).
    """

    def __init__(self) -> None:
        self.exact: bool | None = None
        self._held: dict[str, tuple] = {}

    @torch.no_grad()
    def __call__(self, members: Sequence[nn.Module], loss_fn: Callable, inputs: torch.Tensor, labels: torch.Tensor,
                 train_sets: Sequence[torch.Tensor], test_sets: Sequence[torch.Tensor] | None) -> dict[str, list[float]]:
        if self.exact is False or not self._applies(members, inputs, train_sets, test_sets):
            return evaluate_members(members, loss_fn, inputs, labels, train_sets, test_sets)
        out: dict[str, list[float]] = {}
        for prefix, sets in (("train", train_sets), ("test", test_sets)):
            if sets is None:
                continue
            x, y = self._gathered(prefix, inputs, labels, sets)
            outputs = stacked_outputs(members, x)[:, :y.shape[1]]
            if self.exact is None:  # against the members' own passes, on rows gathered as evaluate_members does
                own = [m(inputs[s.to(inputs.device)]) for m, s in zip(members, sets)]
                self.exact = all(torch.equal(a, b) for a, b in zip(own, outputs))
                if not self.exact:
                    return evaluate_members(members, loss_fn, inputs, labels, train_sets, test_sets)
            n = y.shape[1]
            # the mean as _loss_and_accuracy forms it (a chunk's mean times its rows, over the rows)
            out[f"{prefix}_loss"] = [float(loss_fn(outputs[i], y[i])) * n / n for i in range(len(members))]
            out[f"{prefix}_acc"] = _accuracies(outputs, y)
        return out

    def _gathered(self, prefix: str, inputs: torch.Tensor, labels: torch.Tensor,
                  sets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's rows of inputs [S, n', features] (zero rows appended, as :func:`stacked_outputs` would)
        and labels [S, n, ...], gathered once and kept while the inputs, labels and index sets are the same
        tensors, unmodified (fit passes the same ones every epoch)."""
        tensors = (inputs, labels, *sets)
        versions = [t._version for t in tensors]  # a counter every in-place change advances
        held = self._held.get(prefix)
        if held is not None and len(held[0]) == len(tensors) and all(a is b for a, b in zip(held[0], tensors)) \
                and held[1] == versions:
            return held[2]
        rows = torch.stack([s.to(inputs.device) for s in sets])
        flat = rows.reshape(-1)
        # index_select: the same rows as advanced indexing, and on the CPU many times faster
        x = pad_rows(inputs.index_select(0, flat).reshape(*rows.shape, *inputs.shape[1:]))
        y = labels.index_select(0, flat.to(labels.device)).reshape(*rows.shape, *labels.shape[1:])
        self._held[prefix] = (tensors, versions, (x, y))
        return x, y

    @staticmethod
    def _applies(members, inputs, train_sets, test_sets) -> bool:
        if inputs.ndim != 2 or not inputs.is_floating_point() or not same_mlps(members):
            return False
        if any(m.training is not members[0].training for m in members):
            return False
        for sets in (train_sets, test_sets):
            # one chunk per member, all of the same size: the member's own pass would take them the same way
            if sets is not None and (len({len(s) for s in sets}) != 1 or not 0 < len(sets[0]) <= _EVAL_CHUNK):
                return False
        p = next(members[0].parameters())
        return p.device == inputs.device and p.dtype == inputs.dtype


def _accuracies(outputs: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per member, the fraction of its rows classified correctly, as :func:`_loss_and_accuracy` counts them
    (outputs [S, n, classes], labels [S, n] or one-hot [S, n, classes]); NaN without a class axis. Counts are
    integers, so one pass over all members gives each member's own count exactly."""
    if outputs.dim() < 3:
        return [float("nan")] * len(outputs)
    target = y if y.dim() == 2 else y.argmax(-1)
    correct = (outputs.argmax(-1) == target).sum(1).tolist()
    return [c / outputs.shape[1] for c in correct]


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


"""Validation and normalisation of estimator inputs.

Every estimator accepts activations of shape ``[..., N, d]`` (torch tensor or numpy array) and labels as class
indices ``[N]`` / ``[..., N]`` or one-hot ``[N, C]`` / ``[..., N, C]``. The helpers here turn them into a flat
batch ``[B, N, d]`` and dense int64 labels ``[B or 1, N]`` on the activations' device, or raise a ``ValueError``
that says what is wrong and how to fix it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from infoplane.data.labels import as_class_indices

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class Batch:
    """Activations flattened to ``[B, N, d]`` plus what is needed to shape the results back."""

    acts: torch.Tensor
    batch_shape: tuple
    device: torch.device

    @property
    def n(self) -> int:
        return self.acts.shape[-2]


def _to_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        arr = np.asarray(x)
        if arr.dtype == object:
            raise ValueError(f"{what} must be numeric; got an array of Python objects")
        return torch.from_numpy(np.ascontiguousarray(arr))
    raise TypeError(f"{what} must be a torch.Tensor or a numpy array; got {type(x).__name__}")


def result_dtype(device: torch.device) -> torch.dtype:
    """Widest float the device supports (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def as_batch(activations: Any) -> Batch:
    """Check activations and flatten their leading (batch) dimensions.

    float16/bfloat16 are widened to float32; integer and boolean inputs become float64 (exact).
    """
    a = _to_tensor(activations, "activations")
    if a.ndim < 2:
        raise ValueError(
            f"activations must have shape [..., N, d] (samples by units); got shape {tuple(a.shape)}. "
            "For a layer with one unit, add a trailing axis: acts[..., None]."
        )
    n, d = a.shape[-2], a.shape[-1]
    if d == 0:
        raise ValueError(f"activations have d = 0 units (shape {tuple(a.shape)}); a layer needs at least one unit.")
    if n < 2:
        raise ValueError(
            f"activations have N = {n} samples (shape {tuple(a.shape)}); information estimates need N >= 2. "
            "Is the sample axis second to last ([..., N, d])?"
        )
    if a.is_complex():
        raise ValueError("activations must be real-valued; got a complex tensor.")
    if not a.is_floating_point():
        a = a.to(torch.float64 if a.device.type != "mps" else torch.float32)
    elif a.dtype in _LOW_PRECISION:
        a = a.float()
    batch_shape = tuple(a.shape[:-2])
    flat = a.reshape(-1, n, d)
    return Batch(acts=flat, batch_shape=batch_shape, device=a.device)


def check_finite(chunk: torch.Tensor, batch: Batch, start: int = 0) -> None:
    """Raise a ValueError naming the first batch item of ``chunk`` ([b, N, d], items start..) that is not finite."""
    # A sum is non-finite whenever an element is, so one cheap reduction clears the usual case.
    if bool(torch.isfinite(chunk.sum(dim=(1, 2))).all()):
        return
    bad = ~torch.isfinite(chunk).flatten(1).all(dim=1)
    if not bool(bad.any()):
        return  # the sum overflowed; every element is finite
    first = int(torch.nonzero(bad)[0, 0])
    shape = batch.batch_shape
    index = tuple(int(i) for i in np.unravel_index(start + first, shape)) if shape else ()
    kind = "NaN" if bool(torch.isnan(chunk[first]).any()) else "inf"
    where = f"at batch index {index}" if shape else "in the single [N, d] input"
    raise ValueError(
        f"activations contain {kind} {where}. Information estimates need finite values: check the training "
        "run for divergence (loss NaN) or leave those epochs out before estimating."
    )


def as_labels(labels: Any, batch: Batch) -> tuple[torch.Tensor, int]:
    """Dense int64 class indices of shape ``[B, N]`` or ``[1, N]`` (shared) and the number of classes C.

    The rules (indices, one-hot, whole floats, class names) are those of :mod:`infoplane.data.labels`.
    """
    context = f"activations with N = {batch.n} samples and batch shape {batch.batch_shape}"
    y = as_class_indices(labels, batch.n, batch_shape=batch.batch_shape, context=context).indices.to(batch.device)
    classes, dense = torch.unique(y.reshape(-1, batch.n), return_inverse=True)
    return dense.reshape(-1, batch.n), int(classes.numel())


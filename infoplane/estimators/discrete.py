"""Exact discrete estimates: each distinct row of exact activation values is one symbol, no grid.

For networks whose layers take few exact values (quantised networks, see :func:`infoplane.networks.quantize`), the plug-in
entropy of the rows is I(X;T) (X uniform over the N probe samples, T a function of X) and
I(T;Y) = H(T) - sum_y p(y) H(T | Y=y), in bits. Rows are keyed exactly like the binned estimator's cells: each
unit's values are replaced by their dense rank among that unit's values in the batch item, and the ranks are packed
into int64 keys by mixed radix (no hashing, no floating-point products).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infoplane._validate import check_bool
from infoplane.estimators._inputs import as_batch, as_labels
from infoplane.estimators.base import PlaneResult
from infoplane.estimators.binning import ExactValues, plugin_mi


@dataclass
class DiscreteResult(PlaneResult):
    """Result of :func:`discrete_mi`: the plane's two fields, nothing more.

    Attributes
    ----------
    ixt : torch.Tensor
        I(X;T) = H(T) in bits, shape ``activations.shape[:-2]``.
    ity : torch.Tensor
        I(T;Y) in bits, same shape.
    """


def discrete_mi(activations: Any, labels: Any, *, miller_madow: bool = False) -> DiscreteResult:
    """Plug-in I(X;T) = H(T) and I(T;Y) with each distinct row of exact values as one symbol.

    Parameters
    ----------
    activations : torch.Tensor or numpy.ndarray, shape [..., N, d]
        Layer activations of N probe samples with d units, on any device; leading dimensions are a batch.
        Values are compared exactly (0.0 and -0.0 are equal); float16/bfloat16 are widened to float32 first,
        which keeps every distinct value distinct.
    labels : tensor or array
        Class indices [N] or [..., N], or one-hot [N, C] / [..., N, C].
    miller_madow : bool, default False
        Add the Miller–Madow bias correction (K - 1) / (2 N ln 2) bits to each plug-in entropy (K distinct rows;
        for H(T|Y) per class, with that class's rows and samples), then clamp.

    Returns
    -------
    DiscreteResult
        ``ixt`` = H(T) clamped to [0, log2 N] and ``ity`` = I(T;Y) clamped to [0, H(Y)] (the plug-in entropy of the
        item's labels), in bits, float64 tensors of shape ``activations.shape[:-2]`` (float32 on MPS).

    Raises
    ------
    ValueError
        Non-finite activations (naming the batch index), wrong shapes, labels that do not match N.

    Examples
    --------
    >>> import torch
    >>> acts = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.5, 1.0], [0.5, 0.0]])
    >>> r = discrete_mi(acts, torch.tensor([0, 0, 1, 1]))
    >>> float(r.ixt), float(r.ity)
    (1.5, 1.0)
    """
    miller_madow = check_bool(miller_madow, "miller_madow")
    batch = as_batch(activations)
    y, n_classes = as_labels(labels, batch)
    ixt, ity = plugin_mi(batch, y, n_classes, ExactValues(), miller_madow)
    return DiscreteResult(ixt=ixt, ity=ity)

"""The one label validator: every boundary that takes class labels (estimators, tracker, data loading, model
files, the CLI) sends them through :func:`as_class_indices`, so the same labels are accepted or refused
everywhere, with the same message.

Accepted
--------
- integer or boolean class indices, ``>= 0``;
- floats that are whole numbers (``[0., 1., 1.]``), read as class indices;
- one-hot rows ``[N, C]`` (exactly one 1 per row, zeros elsewhere), converted to indices;
- a column of class indices ``[N, 1]``, read as ``[N]`` (not as one-hot rows of a single class);
- class names: strings or other hashable, orderable values (``["cat", "dog"]``), mapped to indices in sorted
  order; the names are returned so that they can be stored (``meta.json``) and shown (plot legends).

Refused, each with a message that names the problem and the fix: floats that are not whole numbers, NaN or
infinite values, negative indices, complex numbers, one-hot-looking rows that are not one-hot, and shapes that
do not match the samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = ["ClassLabels", "as_class_indices"]


@dataclass(frozen=True)
class ClassLabels:
    """Validated labels.

    Attributes
    ----------
    indices : torch.Tensor
        int64 class indices, shape ``[N]`` (or ``[..., N]`` for batched labels), on the input's device
        (CPU for numpy arrays and lists).
    names : list or None
        Class names in index order when the labels were given as names; None for numeric labels.
    """

    indices: torch.Tensor
    names: Optional[list]


def _fail(what: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"{what} {problem}; {fix}")


def _names_to_indices(arr: np.ndarray, what: str) -> ClassLabels:
    flat = arr.reshape(-1).tolist()
    for v in flat:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            raise _fail(what, f"contain a missing value ({v!r})",
                        "give every sample a class (drop unlabelled samples first)")
    try:
        names = sorted(set(flat))
    except TypeError:
        kinds = sorted({type(v).__name__ for v in flat})
        raise _fail(what, f"mix class names of types {kinds} that cannot be ordered",
                    "use one type for all class names (e.g. all strings)") from None
    index = {v: i for i, v in enumerate(names)}
    codes = np.fromiter((index[v] for v in flat), dtype=np.int64, count=len(flat)).reshape(arr.shape)
    return ClassLabels(torch.from_numpy(codes), [v if isinstance(v, (str, int, float, bool)) else str(v)
                                                  for v in names])


def _as_array_or_tensor(labels, what: str):
    if isinstance(labels, torch.Tensor):
        return labels.detach()
    if isinstance(labels, np.ndarray):
        return labels
    if isinstance(labels, (list, tuple)) or hasattr(labels, "__array__") or hasattr(labels, "__len__"):
        try:
            arr = np.asarray(labels)
        except Exception as err:  # ragged lists and the like
            raise _fail(what, f"could not be read as an array ({err})",
                        "pass a 1-D list, numpy array or tensor with one label per sample") from None
        return arr
    raise TypeError(f"{what} must be a tensor, a numpy array or a list of class labels; got {type(labels).__name__}")


def as_class_indices(labels: Any, n: Optional[int] = None, *, batch_shape: Sequence[int] = (),
                     what: str = "labels", context: Optional[str] = None) -> ClassLabels:
    """Check class labels and return them as int64 class indices.

    Parameters
    ----------
    labels : tensor, numpy array or sequence
        Class indices ``[N]`` (integers, booleans or whole-number floats) or a column of them ``[N, 1]``,
        one-hot rows ``[N, C]`` with C >= 2, or class
        names (strings or other orderable values). With ``batch_shape``, labels may also be ``[*batch_shape, N]``
        indices or ``[*batch_shape, N, C]`` one-hot rows (one label set per batch item).
    n : int, optional
        Number of samples the labels must describe. None: taken from a 1-D input (a 2-D numeric input is then
        read as one-hot ``[N, C]``).
    batch_shape : sequence of int, default ()
        Leading batch dimensions that per-item labels may carry.
    what : str, default "labels"
        How error messages name the labels (e.g. ``"'labels' in data.npz"``).
    context : str, optional
        What the labels must fit, for the shape error (default ``"<n> samples"``).

    Returns
    -------
    ClassLabels
        ``indices`` (int64, ``[N]`` or ``[*batch_shape, N]``; same device as a tensor input) and ``names``
        (sorted class names, or None for numeric labels).

    Raises
    ------
    ValueError
        Non-integral or non-finite floats, negative indices, malformed one-hot rows, or a shape that does not
        match ``n`` / ``batch_shape``.
    TypeError
        Labels that are not array-like.
    """
    y = _as_array_or_tensor(labels, what)
    if isinstance(y, np.ndarray) and y.dtype.kind in "OUS":
        if y.dtype.kind == "O":
            try:  # object arrays of plain numbers are numeric labels
                y_num = y.astype(np.float64)
            except (TypeError, ValueError):
                y_num = None
            if y_num is not None and not any(isinstance(v, (str, bytes)) for v in y.reshape(-1).tolist()):
                y = y_num
        if isinstance(y, np.ndarray) and y.dtype.kind in "OUS":
            if y.ndim != 1:
                raise _fail(what, f"are class names of shape {y.shape}", "pass one name per sample, shape [N]")
            if n is not None and y.shape[0] != n:
                raise _fail(what, f"hold {y.shape[0]} class names for {n} samples", "pass one label per sample")
            return _names_to_indices(y, what)
    t = torch.from_numpy(np.ascontiguousarray(y)) if isinstance(y, np.ndarray) else y
    if t.is_complex():
        raise _fail(what, "are complex numbers", "pass class indices (integers >= 0) or class names")
    bshape = tuple(int(b) for b in batch_shape)
    shape = tuple(t.shape)
    if n is None:
        if t.ndim == 1:
            n = shape[0]
        elif t.ndim == 2 and not bshape:
            n = shape[0]
        else:
            raise _fail(what, f"have shape {shape}", "pass class indices of shape [N] or one-hot rows [N, C]")
    if t.ndim >= 1 and shape[-1] == n and (t.ndim == 1 or shape[:-1] == bshape):
        idx, one_hot = t, False
    elif t.ndim >= 2 and shape[-2] == n and (t.ndim == 2 or shape[:-2] == bshape):
        idx, one_hot = t, True
    else:
        expected = f"[N] = [{n}]" + (f" (or {list(bshape) + [n]})" if bshape else "")
        raise _fail(what, f"have shape {shape}, which does not match {context or f'{n} samples'}",
                    f"pass one class index per sample, shape {expected}, or one-hot rows [N, C]")
    if one_hot and shape[-1] == 1:
        # A column of labels ([N, 1], as many data files and sklearn-style code produce) holds one class per row:
        # read it as class indices. As one-hot rows it could only ever describe a single class.
        idx, one_hot = t[..., 0], False
    if idx.dtype == torch.bool:
        idx = idx.to(torch.int64)
    if one_hot:
        if not bool(((idx == 0) | (idx == 1)).all()) or not bool((idx.sum(-1) == 1).all()):
            raise _fail(what, f"of shape {shape} look one-hot ([N, C]) but not every row holds exactly one 1 "
                              "and zeros elsewhere", "pass class indices of shape [N] instead")
        idx = idx.argmax(-1)
    if idx.is_floating_point():
        finite = torch.isfinite(idx)
        if not bool(finite.all()):
            kind = "NaN" if bool(torch.isnan(idx).any()) else "infinite values"
            raise _fail(what, f"contain {kind}", "give every sample a class (drop unlabelled samples first)")
        if not bool((idx == torch.round(idx)).all()):
            bad = idx[idx != torch.round(idx)].reshape(-1)[:3].tolist()
            raise _fail(what, f"contain non-integer values such as {bad}",
                        "class indices must be whole numbers (or pass class names); round or threshold scores "
                        "yourself if they are predictions")
    idx = idx.to(torch.int64)
    if idx.numel() and bool((idx < 0).any()):
        raise _fail(what, f"contain negative class indices (smallest {int(idx.min())})",
                    "class indices must be >= 0: remap them (e.g. labels - labels.min()), or pass class names")
    return ClassLabels(idx, None)

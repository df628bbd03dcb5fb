"""The probe set in any shape a model takes: one tensor, several positional tensors, keyword tensors, or a
fixed-order loader of ``(inputs, labels)`` batches.

A probe input is a *structure*: a tensor (``model(x)``), a tuple of tensors (``model(*xs)``) or a dict of
tensors (``model(**kw)``), every tensor with the same leading sample dimension N. The helpers here slice,
move, cast, describe and call such structures, so that the probe pass and the tracker never need to know which
of the three they hold.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch

#: A probe set's inputs: a tensor, a tuple of tensors (``model(*x)``) or a dict of tensors (``model(**x)``).
ProbeInputs = Union[torch.Tensor, tuple, dict]

__all__ = ["as_probe_set", "collect_loader", "n_samples", "take", "to_device", "cast_floating", "call_model",
           "describe", "leaves", "attention_mask"]

# Keys under which a batch dict carries its labels (the Hugging Face convention is "labels").
_LABEL_KEYS = ("labels", "label")


def _tensor(x, what):
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except Exception as e:
        raise TypeError(f"{what} must be a tensor or an array, got {type(x).__name__}: {e}") from None


def _is_multi(x):
    """A tuple or list of tensors / arrays is several model inputs (a list of numbers is one array)."""
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(isinstance(t, (torch.Tensor, np.ndarray))
                                                               for t in x)


def _is_loader(x, labels):
    """An iterable of batches that is none of the structures above (DataLoader, generator, list of pairs).

    A list or tuple counts as batches only without labels: with labels it is an array (nested lists)."""
    if isinstance(x, (torch.Tensor, np.ndarray, dict, str, bytes)) or _is_multi(x):
        return False
    if isinstance(x, (tuple, list)):
        return labels is None and len(x) > 0 and all(isinstance(b, (tuple, list, dict)) for b in x)
    return hasattr(x, "__iter__")


def _structure(inputs):
    """Convert every leaf to a tensor; return the structure and its leading sample count N."""
    if isinstance(inputs, dict):
        if not inputs:
            raise ValueError("inputs is an empty dict; give the model's keyword inputs, e.g. "
                             "{'input_ids': ..., 'attention_mask': ...}")
        bad = [k for k in inputs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"dict inputs must have string keys (the model's keyword arguments), got {bad}")
        out = {k: _tensor(v, f"inputs[{k!r}]") for k, v in inputs.items()}
    elif _is_multi(inputs):
        out = tuple(_tensor(v, f"inputs[{i}]") for i, v in enumerate(inputs))
    else:
        out = _tensor(inputs, "inputs")
    sizes = {name: (t.shape[0] if t.ndim else None) for name, t in _named_leaves(out)}
    if any(s is None or s == 0 for s in sizes.values()):
        shapes = {name: tuple(t.shape) for name, t in _named_leaves(out)}
        raise ValueError(f"inputs must have a leading sample dimension with at least one sample, got shape(s) "
                         f"{shapes if len(shapes) > 1 else next(iter(shapes.values()))}")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the probe inputs disagree on the number of samples (leading dimension): {sizes}; "
                         f"every input tensor needs the same N")
    return out, next(iter(sizes.values()))


def _named_leaves(x):
    if isinstance(x, dict):
        return list(x.items())
    if isinstance(x, tuple):
        return [(f"inputs[{i}]", t) for i, t in enumerate(x)]
    return [("inputs", x)]


def leaves(x: ProbeInputs) -> list[torch.Tensor]:
    """The tensors of a probe structure in a fixed order (a tensor gives ``[x]``)."""
    return [t for _, t in _named_leaves(x)]


def n_samples(x: ProbeInputs) -> int:
    """Leading sample count N of a probe structure."""
    return int(leaves(x)[0].shape[0])


def _map(x, fn):
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(fn(v) for v in x)
    return fn(x)


def take(x: ProbeInputs, start: int, stop: int) -> ProbeInputs:
    """Samples ``start:stop`` of every tensor of a probe structure."""
    return _map(x, lambda t: t[start:stop])


def to_device(x: ProbeInputs, device: Union[str, torch.device, None]) -> ProbeInputs:
    """A probe structure with every tensor moved to ``device``."""
    return _map(x, lambda t: t.to(device))


def cast_floating(x: ProbeInputs, dtype: torch.dtype) -> ProbeInputs:
    """Cast the floating-point tensors of a probe structure to ``dtype`` (integer ids and masks stay)."""
    return _map(x, lambda t: t.to(dtype) if t.is_floating_point() else t)


def call_model(model: Callable, x: ProbeInputs) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)`` depending on the structure."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def describe(x: ProbeInputs) -> Union[list, dict]:
    """JSON-able shape of a probe structure: a list for one tensor (as before), else the shape per input."""
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, dict):
        return {"kwargs": {k: list(t.shape) for k, t in x.items()}}
    return {"args": [list(t.shape) for t in x]}


def describe_sample(x: ProbeInputs) -> str:
    """Per-sample shapes and dtypes for error messages."""
    return ", ".join(f"{name} {tuple(t.shape[1:])} {t.dtype}" for name, t in _named_leaves(x))


def attention_mask(x: ProbeInputs) -> Optional[torch.Tensor]:
    """The ``attention_mask`` of keyword inputs ([N, L]), or None."""
    if isinstance(x, dict):
        m = x.get("attention_mask")
        if isinstance(m, torch.Tensor) and m.ndim == 2:
            return m
    return None


def _sampler_shuffles(loader):
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    random = (torch.utils.data.RandomSampler, torch.utils.data.SubsetRandomSampler,
              torch.utils.data.WeightedRandomSampler)
    return isinstance(sampler, random) or isinstance(inner, random)


def _cat(parts):
    first = parts[0]
    if isinstance(first, dict):
        keys = list(first)
        if any(list(p) != keys for p in parts):
            raise ValueError("the probe batches do not all have the same keys")
        return {k: torch.cat([p[k] for p in parts]) for k in keys}
    if isinstance(first, tuple):
        if any(len(p) != len(first) for p in parts):
            raise ValueError("the probe batches do not all have the same number of inputs")
        return tuple(torch.cat([p[i] for p in parts]) for i in range(len(first)))
    return torch.cat(parts)


def _split_batch(batch, i):
    if isinstance(batch, dict):
        keys = [k for k in _LABEL_KEYS if k in batch]
        if not keys:
            raise ValueError(f"probe batch {i} is a dict without a 'labels' entry; give batches as (inputs, labels) "
                             f"pairs or dicts holding 'labels' next to the model's keyword inputs")
        inputs = {k: v for k, v in batch.items() if k not in _LABEL_KEYS}
        return inputs, batch[keys[0]]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, labels = batch
        if isinstance(inputs, list):
            inputs = tuple(inputs)
        return inputs, labels
    if isinstance(batch, (tuple, list)) and len(batch) > 2:
        # TensorDataset(input_1, ..., input_k, labels): several model inputs, labels last.
        return tuple(batch[:-1]), batch[-1]
    raise ValueError(f"probe batch {i} is a {type(batch).__name__}; each batch must be an (inputs, labels) pair, "
                     f"(input_1, ..., input_k, labels), or a dict with 'labels'")


def collect_loader(loader: Iterable) -> tuple[ProbeInputs, torch.Tensor]:
    """Collect a probe loader once, in its fixed order.

    Parameters
    ----------
    loader : DataLoader or iterable
        Batches of ``(inputs, labels)`` (inputs: a tensor, a tuple of tensors or a dict of tensors),
        ``(input_1, ..., input_k, labels)`` (a ``TensorDataset`` of several inputs), or dicts holding ``labels``
        next to the model's keyword inputs.

    Returns
    -------
    inputs : tensor, tuple of tensors or dict of tensors, on the CPU
    labels : tensor [N]
    """
    if _sampler_shuffles(loader):
        raise ValueError("the probe DataLoader shuffles (random sampler): every probe pass must see the samples "
                         "in the same order, so build it with shuffle=False (or pass the tensors themselves)")
    xs, ys = [], []
    for i, batch in enumerate(loader):
        inputs, labels = _split_batch(batch, i)
        structure, n = _structure(inputs)
        labels = _tensor(labels, "labels").reshape(-1) if not isinstance(labels, numbers.Number) else None
        if labels is None or labels.shape[0] != n:
            raise ValueError(f"probe batch {i} has {n} input samples but "
                             f"{'no label array' if labels is None else labels.shape[0]} labels")
        xs.append(_map(structure, lambda t: t.detach().cpu()))
        ys.append(labels.detach().cpu())
    if not xs:
        raise ValueError("the probe loader yielded no batch")
    return _cat(xs), torch.cat(ys)


def as_probe_set(inputs: Any, labels: Any) -> tuple[ProbeInputs, Any, int]:
    """The probe inputs as a structure of tensors, with the labels as given (validated by the caller).

    Parameters
    ----------
    inputs : tensor, array, tuple/list of tensors, dict of tensors, or a loader of ``(inputs, labels)``
    labels : array-like [N], or None when ``inputs`` is a loader

    Returns
    -------
    inputs : structure of tensors, leading dimension N
    labels : tensor or array as given (or collected from the loader)
    n : int
    """
    if _is_loader(inputs, labels):
        if labels is not None:
            raise ValueError("the probe loader yields its own labels: pass labels=None with a DataLoader")
        inputs, labels = collect_loader(inputs)
    elif labels is None:
        raise ValueError("labels is None: pass one class index per probe sample (only a loader of "
                         "(inputs, labels) batches may omit them)")
    structure, n = _structure(inputs)
    return structure, labels, n

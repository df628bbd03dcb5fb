"""Corrupted copies of a data set, for the randomisation tests of Zhang et al. (2017, "Understanding deep learning
requires rethinking generalization"): noisy or random labels, and inputs whose structure is destroyed (a fixed
shuffle of the features, an independent shuffle per sample, or Gaussian noise with the data's mean and
covariance).

Every draw comes from a local generator seeded by ``seed``, and each kind of corruption has its own stream, so
that which labels are redrawn does not depend on the input options (and a larger ``label_noise`` redraws a
superset of the labels a smaller one redraws). The result records what was done (``settings``, ``corrupted``,
``clean_labels``) so that a run can store exactly what it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Dict, Optional

import numpy as np
import torch

from infoplane.data.labels import as_class_indices

__all__ = ["Corruption", "corrupt"]

# Stream numbers under the seed: labels and inputs draw from independent generators.
_LABEL_STREAM, _INPUT_STREAM = 0, 1


@dataclass(frozen=True)
class Corruption:
    """A corrupted data set and what was done to it.

    Attributes
    ----------
    x : tensor or numpy array
        The inputs, corrupted as asked; same type, dtype, shape (and device) as the inputs given.
    y : tensor or numpy array
        The labels, in the form they were given (class indices of the same dtype when it holds every class,
        else int64; one-hot rows ``[N, n_classes]``; or class names), with the redrawn ones replaced.
    corrupted : tensor or numpy array
        Bool mask ``[N]``: True for the samples whose label was redrawn (a redrawn label may equal the clean one).
        A tensor (on the labels' device) when the labels were a tensor, else a numpy array.
    clean_labels : tensor or numpy array
        The labels before corruption, in the same form as ``y``.
    settings : dict
        JSON-able record of the options (``label_noise``, ``random_labels``, ``shuffled_pixels``,
        ``random_pixels``, ``gaussian_inputs``, ``n_classes``, ``seed``) and ``n_corrupted``.
    feature_order : numpy array or None
        The order the features were put in (int64 indices into the flattened features): ``[D]`` with
        ``shuffled_pixels`` (feature ``j`` of every sample is its former feature ``feature_order[j]``), ``[N, D]``
        with ``random_pixels`` (one order per sample); None otherwise.
    """

    x: Any
    y: Any
    corrupted: Any
    clean_labels: Any
    settings: Dict[str, Any]
    feature_order: Optional[np.ndarray] = None


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def _check_inputs(x: Any) -> Any:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        try:
            x = np.asarray(x)
        except Exception as err:
            raise TypeError(f"x could not be read as an array ({err}); pass a tensor or numpy array with one row "
                            f"per sample") from None
    kind = "complex" if (x.is_complex() if isinstance(x, torch.Tensor) else x.dtype.kind == "c") else None
    if isinstance(x, np.ndarray) and x.dtype.kind not in "biuf":
        kind = kind or f"of dtype {x.dtype}"
    if kind:
        raise TypeError(f"x is {kind}; pass real numbers (a float or integer tensor or numpy array)")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x has shape {tuple(x.shape)}; pass at least one sample, one row per sample")
    finite = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())
    if not finite:
        raise ValueError("x contains NaN or infinite values; drop or impute those samples before corrupting")
    return x


def _label_form(y: Any):
    """How the labels were given: ('names' | 'onehot' | 'index', is_tensor, dtype, device)."""
    if isinstance(y, torch.Tensor):
        return ("onehot" if y.ndim == 2 else "index"), True, y.dtype, y.device
    arr = y if isinstance(y, np.ndarray) else np.asarray(y)
    if arr.dtype.kind in "OUS" and not (arr.dtype.kind == "O" and all(isinstance(v, (int, float, np.number))
                                                                       for v in arr.reshape(-1).tolist())):
        return "names", False, arr.dtype, None
    return ("onehot" if arr.ndim == 2 else "index"), False, arr.dtype, None


def _labels_like(indices: np.ndarray, form, names, n_classes: int):
    kind, is_tensor, dtype, device = form
    if kind == "names":
        return np.asarray(names, dtype=dtype if dtype.kind != "O" else object)[indices]
    if kind == "onehot":
        out = np.eye(n_classes, dtype=np.int64)[indices]
    else:
        out = indices
    if is_tensor:
        t = torch.from_numpy(out)
        fits = dtype.is_floating_point or (dtype == torch.bool and n_classes <= 2) or (
            dtype != torch.bool and not dtype.is_complex and n_classes - 1 <= torch.iinfo(dtype).max)
        return t.to(device=device, dtype=dtype if fits else torch.int64)
    np_dtype = np.dtype(dtype) if np.dtype(dtype).kind in "biuf" else np.dtype(np.int64)
    fits = np_dtype.kind == "f" or (np_dtype.kind == "b" and n_classes <= 2) or (
        np_dtype.kind in "iu" and n_classes - 1 <= np.iinfo(np_dtype).max)
    return out.astype(np_dtype if fits else np.int64)


def _permute_features(flat, index: np.ndarray):
    """Rows of ``flat`` [N, D] reordered by ``index`` ([D], one order for all, or [N, D], one per row)."""
    if isinstance(flat, torch.Tensor):
        idx = torch.from_numpy(index).to(flat.device)
        return flat[:, idx] if idx.ndim == 1 else torch.gather(flat, 1, idx)
    return flat[:, index] if index.ndim == 1 else np.take_along_axis(flat, index, axis=1)


def _gaussian_like(flat, rng: np.random.Generator):
    """Samples from the Gaussian with the sample mean and covariance of the rows of ``flat``."""
    data = (flat.detach().to("cpu", torch.float64).numpy() if isinstance(flat, torch.Tensor)
            else flat.astype(np.float64))
    n, d = data.shape
    mean = data.mean(axis=0)
    cov = np.atleast_2d(np.cov(data, rowvar=False, ddof=1))
    # eigh rather than Cholesky: image data often has constant pixels, so the covariance is only semi-definite.
    eigenvalues, vectors = np.linalg.eigh(cov)
    root = vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    sample = mean + rng.standard_normal((n, d)) @ root.T
    if isinstance(flat, torch.Tensor):
        return torch.from_numpy(sample).to(device=flat.device, dtype=flat.dtype)
    return sample.astype(flat.dtype)


def corrupt(x: Any, y: Any, *, label_noise: float = 0.0, random_labels: bool = False,
            shuffled_pixels: bool = False, random_pixels: bool = False, gaussian_inputs: bool = False,
            n_classes: Optional[int] = None, seed: int = 0) -> Corruption:
    """Corrupt labels and/or inputs of a data set, reproducibly.

    Parameters
    ----------
    x : tensor or numpy array
        Inputs, one row per sample (any trailing shape; the features are the flattened trailing dimensions).
    y : tensor, numpy array or sequence
        Labels: class indices ``[N]``, one-hot rows ``[N, C]`` or class names, as
        :func:`infoplane.data.labels.as_class_indices` accepts them.
    label_noise : float, default 0.0
        Probability ``p`` in [0, 1] that a label is redrawn, independently per sample, uniformly from all
        ``n_classes`` classes (so it may come out equal to the clean label: the fraction of wrong labels is
        ``p * (1 - 1/n_classes)``).
    random_labels : bool, default False
        Redraw every label (``label_noise=1``).
    shuffled_pixels : bool, default False
        Reorder the features by one random permutation, the same for every sample.
    random_pixels : bool, default False
        Reorder the features of each sample by its own random permutation.
    gaussian_inputs : bool, default False
        Replace the inputs by samples from a Gaussian with the inputs' mean and covariance (over the flattened
        features; needs floating-point inputs and at least 2 samples).
    n_classes : int, optional
        Number of classes to draw from. Default: the one-hot width, the number of class names, or the largest
        class index + 1 (pass it when some class does not occur in ``y``).
    seed : int, default 0
        Seed (>= 0) of the local generators; the global random state is not used or changed.

    Returns
    -------
    Corruption
        ``x``, ``y`` (corrupted, same types, dtypes and shapes as given), ``corrupted`` (bool mask of the redrawn
        labels), ``clean_labels``, ``settings`` (JSON-able) and ``feature_order`` (the features' new order, where
        they were shuffled).

    Raises
    ------
    ValueError
        ``label_noise`` outside [0, 1], conflicting options, non-finite inputs, labels that do not fit ``x``,
        ``n_classes`` too small, or Gaussian inputs from fewer than 2 samples.
    TypeError
        Options of the wrong type, or complex or non-numeric inputs.
    """
    if isinstance(label_noise, bool) or not isinstance(label_noise, Real) or not 0.0 <= float(label_noise) <= 1.0:
        raise ValueError(f"label_noise must be a probability in [0, 1] (the chance that each label is redrawn); "
                         f"got {label_noise!r}")
    p = float(label_noise)
    random_labels = _check_flag(random_labels, "random_labels")
    modes = {name: _check_flag(value, name) for name, value in
             (("shuffled_pixels", shuffled_pixels), ("random_pixels", random_pixels),
              ("gaussian_inputs", gaussian_inputs))}
    if random_labels:
        if p not in (0.0, 1.0):
            raise ValueError(f"random_labels=True redraws every label, which conflicts with label_noise={p}; pass "
                             f"one of them")
        p = 1.0
    chosen = [name for name, on in modes.items() if on]
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)} conflict: each replaces the inputs; pass at most one of "
                         f"shuffled_pixels, random_pixels and gaussian_inputs")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")

    x = _check_inputs(x)
    n = int(x.shape[0])
    form = _label_form(y)
    labels = as_class_indices(y, n, what="y", context=f"the {n} samples of x")
    clean = labels.indices.detach().cpu().numpy().astype(np.int64)
    n_seen = int(clean.max()) + 1
    if form[0] == "names":
        n_seen = len(labels.names)
    elif form[0] == "onehot":
        n_seen = int(np.shape(y)[1])
    if n_classes is None:
        n_classes = n_seen
    elif isinstance(n_classes, (bool, np.bool_)) or not isinstance(n_classes, Integral):
        raise TypeError(f"n_classes must be an integer; got {n_classes!r}")
    elif form[0] == "names" and n_classes != n_seen:
        raise ValueError(f"y names {n_seen} classes, so n_classes must be {n_seen} (new labels can only be drawn "
                         f"from the names given); got {n_classes}")
    elif n_classes < n_seen:
        raise ValueError(f"n_classes={n_classes} is too small for y, which holds class {n_seen - 1} (or one-hot "
                         f"rows of width {n_seen}); pass n_classes >= {n_seen} or leave it out")
    n_classes = int(n_classes)

    streams = np.random.SeedSequence(int(seed)).spawn(2)
    label_rng = np.random.default_rng(streams[_LABEL_STREAM])
    # Always draw both arrays, so the redrawn set for a seed is nested in p and the new labels do not depend on p.
    redraw = label_rng.random(n) < p
    fresh = label_rng.integers(0, n_classes, size=n)
    noisy = np.where(redraw, fresh, clean)

    input_rng = np.random.default_rng(streams[_INPUT_STREAM])
    flat = x.reshape(n, -1)
    d = int(flat.shape[1])
    order = None
    if modes["shuffled_pixels"]:
        order = input_rng.permutation(d)
        flat = _permute_features(flat, order)
    elif modes["random_pixels"]:
        order = input_rng.permuted(np.tile(np.arange(d), (n, 1)), axis=1)
        flat = _permute_features(flat, order)
    elif modes["gaussian_inputs"]:
        floating = x.is_floating_point() if isinstance(x, torch.Tensor) else x.dtype.kind == "f"
        if not floating:
            raise ValueError(f"gaussian_inputs needs floating-point inputs to hold Gaussian samples; x has dtype "
                             f"{x.dtype}: convert it first (e.g. x.float())")
        if n < 2:
            raise ValueError("gaussian_inputs needs at least 2 samples to estimate a covariance; x has 1")
        flat = _gaussian_like(flat, input_rng)
    x_out = flat.reshape(x.shape)
    if not any(modes.values()):
        x_out = x.clone() if isinstance(x, torch.Tensor) else x.copy()

    mask = torch.from_numpy(redraw).to(form[3]) if form[1] else redraw
    settings = dict(label_noise=p, random_labels=random_labels, **modes, n_classes=n_classes, seed=int(seed),
                    n_corrupted=int(redraw.sum()))
    return Corruption(x=x_out, y=_labels_like(noisy, form, labels.names, n_classes), corrupted=mask,
                      clean_labels=_labels_like(clean, form, labels.names, n_classes), settings=settings,
                      feature_order=order)

"""Built-in data sets and train/test splits.

Data sets come back as ``(inputs, labels)`` torch tensors: ``inputs`` floating point
with one row per sample, ``labels`` int64 class indices. Splits come back as sorted
int64 numpy index arrays ``(train_idx, test_idx)`` into those rows.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

from infoplane._validate import check_float, check_int
from infoplane.data.labels import as_class_indices
from infoplane.data.standard import STANDARD, load_standard

__all__ = [
    "ICOSAHEDRON",
    "tishby12",
    "tishby12_patterns",
    "tishby12_labels",
    "tishby12_labels_integer",
    "write_tishby12_csv",
    "digits",
    "load_npz",
    "load",
    "stratified_split",
    "original_split",
]

_PHI = (1.0 + math.sqrt(5.0)) / 2.0

# Bit j of a 12-bit pattern sits on vertex j of this icosahedron. The order is the one
# under which the published file's labels follow from the rule, so it must not change.
_ICOSAHEDRON_RAW = np.array(
    [
        (0.0, 1.0, _PHI),
        (0.0, -1.0, _PHI),
        (1.0, -_PHI, 0.0),
        (_PHI, 0.0, 1.0),
        (-1.0, -_PHI, 0.0),
        (-1.0, _PHI, 0.0),
        (-_PHI, 0.0, -1.0),
        (0.0, 1.0, -_PHI),
        (_PHI, 0.0, -1.0),
        (0.0, -1.0, -_PHI),
        (1.0, _PHI, 0.0),
        (-_PHI, 0.0, 1.0),
    ]
)
#: Unit vectors (12 x 3) of the icosahedron vertices carrying the 12 bits.
ICOSAHEDRON = _ICOSAHEDRON_RAW / math.sqrt(1.0 + _PHI**2)
ICOSAHEDRON.setflags(write=False)

# Any threshold in (7.5628, 7.7013] yields the same labels; 7.6 sits well inside.
_THRESHOLD = 7.6
_N_BITS = 12


def tishby12_patterns() -> np.ndarray:
    """All 4096 binary patterns of 12 bits in counting order.

    Returns
    -------
    patterns : ndarray of shape (4096, 12), dtype int64
        Row ``r`` is the binary expansion of ``r`` with column 0 the most significant
        bit: ``patterns[r, j] == (r >> (11 - j)) & 1``.
    """
    rows = np.arange(2**_N_BITS, dtype=np.int64)[:, None]
    shifts = np.arange(_N_BITS - 1, -1, -1, dtype=np.int64)[None, :]
    return (rows >> shifts) & 1


def _as_patterns(patterns) -> np.ndarray:
    x = np.asarray(patterns.cpu() if isinstance(patterns, torch.Tensor) else patterns)
    if x.ndim != 2 or x.shape[1] != _N_BITS:
        raise ValueError(f"patterns must have shape (N, 12); got {x.shape}.")
    if not np.all((x == 0) | (x == 1)):
        raise ValueError("patterns must contain only 0 and 1.")
    return x.astype(np.int64)


def tishby12_labels(patterns: np.ndarray) -> np.ndarray:
    """Labels of 12-bit patterns by the geometric rule.

    With ``k`` active bits and ``R`` the length of the sum of their unit vertex
    vectors (:data:`ICOSAHEDRON`), the label is 1 when ``k + R > 7.6`` and 0 otherwise.

    Parameters
    ----------
    patterns : array-like of shape (N, 12)
        Binary patterns (0/1), numpy array or tensor.

    Returns
    -------
    labels : ndarray of shape (N,), dtype int64
    """
    x = _as_patterns(patterns)
    k = x.sum(axis=1)
    r = np.linalg.norm(x @ ICOSAHEDRON, axis=1)
    return (k + r > _THRESHOLD).astype(np.int64)


def _vertex_pairs():
    """Nearest-neighbour and antipodal vertex pairs, from the integer-friendly coordinates."""
    sq_dist = ((_ICOSAHEDRON_RAW[:, None, :] - _ICOSAHEDRON_RAW[None, :, :]) ** 2).sum(-1)
    i, j = np.triu_indices(_N_BITS, k=1)
    # Unnormalised, an edge has squared length 4 and a diameter 4 * (1 + phi^2).
    edges = np.isclose(sq_dist[i, j], 4.0)
    antipodes = np.isclose(sq_dist[i, j], 4.0 * (1.0 + _PHI**2))
    return (i[edges], j[edges]), (i[antipodes], j[antipodes])


def tishby12_labels_integer(patterns: np.ndarray) -> np.ndarray:
    """Labels of 12-bit patterns by the exact integer form of the rule.

    Uses only counts: ``k`` active bits, ``n1`` active nearest-neighbour pairs (edges of
    the icosahedron), ``n3`` active antipodal pairs. The label is 1 when ``k >= 8``; when
    ``k == 7`` unless ``(n1, n3) == (8, 2)``; when ``k == 6`` and either ``n1 >= 7`` or
    ``(n1, n3) == (6, 0)``; when ``k == 5`` and ``n1 == 7``; otherwise 0. It agrees with
    :func:`tishby12_labels` on every pattern, without any floating point.

    Parameters
    ----------
    patterns : array-like of shape (N, 12)
        Binary patterns (0/1), numpy array or tensor.

    Returns
    -------
    labels : ndarray of shape (N,), dtype int64
    """
    x = _as_patterns(patterns)
    (ei, ej), (ai, aj) = _vertex_pairs()
    k = x.sum(axis=1)
    n1 = (x[:, ei] & x[:, ej]).sum(axis=1)
    n3 = (x[:, ai] & x[:, aj]).sum(axis=1)
    y = (
        (k >= 8)
        | ((k == 7) & ~((n1 == 8) & (n3 == 2)))
        | ((k == 6) & ((n1 >= 7) | ((n1 == 6) & (n3 == 0))))
        | ((k == 5) & (n1 == 7))
    )
    return y.astype(np.int64)


def tishby12(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12-bit data set of Shwartz-Ziv & Tishby (2017), regenerated from its rule.

    Parameters
    ----------
    dtype : torch.dtype, default torch.float32
        Floating dtype of ``inputs``.

    Returns
    -------
    inputs : Tensor of shape (4096, 12), dtype ``dtype``
        Every 12-bit pattern once, in binary counting order (column 0 most significant).
    labels : Tensor of shape (4096,), dtype int64
        0 or 1 by :func:`tishby12_labels`; 2118 are 1.
    """
    patterns = tishby12_patterns()
    inputs = torch.as_tensor(patterns).to(dtype)
    labels = torch.as_tensor(tishby12_labels(patterns))
    return inputs, labels


def write_tishby12_csv(path: Union[str, os.PathLike]) -> Path:
    """Write the 12-bit data set as CSV text.

    The header is ``x0,...,x11,y``; each of the 4096 rows holds the 12 bits and the
    label as integers, in the order of :func:`tishby12`.

    Parameters
    ----------
    path : str or os.PathLike
        File to create or overwrite.

    Returns
    -------
    path : pathlib.Path
    """
    path = Path(path)
    patterns = tishby12_patterns()
    table = np.column_stack([patterns, tishby12_labels(patterns)])
    header = ",".join([f"x{j}" for j in range(_N_BITS)] + ["y"])
    lines = [header] + [",".join(map(str, row)) for row in table.tolist()]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def digits(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits (no download).

    Parameters
    ----------
    dtype : torch.dtype, default torch.float32
        Floating dtype of ``inputs``.

    Returns
    -------
    inputs : Tensor of shape (1797, 64), dtype ``dtype``
        Pixel intensities scaled from 0..16 to [0, 1], rows of the 8x8 image flattened.
    labels : Tensor of shape (1797,), dtype int64
        Digit classes 0..9.
    """
    # Imported here: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    inputs = torch.as_tensor(bunch.data / 16.0).to(dtype)
    labels = torch.as_tensor(bunch.target.astype(np.int64))
    return inputs, labels


def _labels_from_array(labels: np.ndarray, path) -> tuple[np.ndarray, list | None]:
    checked = as_class_indices(labels, labels.shape[0] if labels.ndim else None, what=f"{path}: 'labels'")
    return checked.indices.numpy(), checked.names


def load_npz(path: Union[str, os.PathLike], dtype: torch.dtype = torch.float32, return_names: bool = False) -> tuple:
    """Load your own data set from a ``.npz`` file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npz`` file (as written by ``numpy.savez``) holding two arrays: ``inputs`` of
        shape (N, ...) with finite real values, and ``labels`` of shape (N,) or (N, C): class
        indices, one-hot rows or class names under the rules of :mod:`infoplane.data.labels`.
    dtype : torch.dtype, default torch.float32
        Floating dtype of ``inputs``.
    return_names : bool, default False
        Also return the class names (sorted; None for numeric labels).

    Returns
    -------
    inputs : Tensor of shape (N, ...), dtype ``dtype``
    labels : Tensor of shape (N,), dtype int64
    names : list or None
        Only with ``return_names=True``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If an array is missing, the lengths differ, inputs are not finite real numbers,
        or labels are not class indices / one-hot rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such .npz file: {path}")
    # allow_pickle=False: an .npz from elsewhere must not be able to run code on load.
    with np.load(path, allow_pickle=False) as archive:
        missing = [name for name in ("inputs", "labels") if name not in archive.files]
        if missing:
            raise ValueError(
                f"{path}: missing array(s) {missing}; the file holds {sorted(archive.files)}. "
                "Save with numpy.savez(path, inputs=..., labels=...)."
            )
        inputs = archive["inputs"]
        labels = archive["labels"]
    if inputs.ndim < 1 or labels.ndim < 1:
        raise ValueError(f"{path}: 'inputs' and 'labels' need a leading sample axis of length N.")
    if inputs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: 'inputs' has {inputs.shape[0]} rows but 'labels' has {labels.shape[0]}; "
            "they must describe the same samples."
        )
    if inputs.dtype.kind not in "biuf":
        raise ValueError(f"{path}: 'inputs' must be real numbers; got dtype {inputs.dtype}.")
    if not np.all(np.isfinite(inputs)):
        raise ValueError(f"{path}: 'inputs' contains NaN or infinite values; clean them first.")
    labels, names = _labels_from_array(labels, path)
    if return_names:
        return torch.as_tensor(inputs).to(dtype), torch.as_tensor(labels), names
    return torch.as_tensor(inputs).to(dtype), torch.as_tensor(labels)


_BUILTIN = {"tishby12": tishby12, "digits": digits}


def load(spec: Union[str, os.PathLike], dtype: torch.dtype = torch.float32, *,
         root: Union[str, os.PathLike, None] = None, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a data set by name or path.

    Parameters
    ----------
    spec : str or os.PathLike
        ``"tishby12"``, ``"digits"``, a standard image data set (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
        read from its distribution files: see :func:`infoplane.data.standard.load_standard`), or a path ending in
        ``.npz`` (see :func:`load_npz`).
    dtype : torch.dtype, default torch.float32
        Floating dtype of ``inputs``.
    root : str or os.PathLike, optional
        Where the standard data sets' files are (default: the cache, see
        :func:`infoplane.data.standard.default_root`).
    download : bool, default False
        Fetch a standard data set's files when they are missing; nothing is downloaded otherwise.

    Returns
    -------
    inputs : Tensor of shape (N, ...)
    labels : Tensor of shape (N,), dtype int64
    """
    if isinstance(spec, str) and spec in _BUILTIN:
        return _BUILTIN[spec](dtype=dtype)
    if isinstance(spec, str) and spec.lower() in STANDARD:
        return load_standard(spec, root=root, download=download, dtype=dtype)
    if isinstance(spec, (str, os.PathLike)) and str(spec).lower().endswith(".npz"):
        return load_npz(spec, dtype=dtype)
    raise ValueError(
        f"Unknown data set {spec!r}; choose one of {sorted(_BUILTIN) + sorted(STANDARD)} or a path ending in '.npz'."
    )


def _check_fraction(fraction) -> float:
    fraction = check_float(fraction, "fraction", finite=False, what="a number in (0, 1]", error=TypeError)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"fraction must satisfy 0 < fraction <= 1 (share of samples used for training); "
            f"got {fraction}. For a percentage p, pass p / 100."
        )
    return fraction


def _n_train(fraction: float, n: int) -> int:
    count = round(fraction * n)
    if count == 0:
        raise ValueError(
            f"fraction {fraction} of {n} samples rounds to an empty training set; use a larger fraction."
        )
    return count


def _class_quotas(counts: np.ndarray, n_train: int, rng: np.random.Generator) -> np.ndarray:
    """How many samples of each class to train on: proportional, summing to ``n_train``."""
    # Integer arithmetic keeps the proportional shares exact: share = take + rest / N.
    take, rest = np.divmod(counts * n_train, counts.sum())
    # Largest remainders get the leftover samples; classes that would otherwise be
    # absent go first, and random keys break ties so no class is favoured by its index.
    order = np.lexsort((rng.random(counts.size), -rest, take > 0))
    take[order[: n_train - take.sum()]] += 1
    if n_train >= counts.size:
        # Still-absent classes borrow from the class furthest above its proportional share.
        surplus = take * counts.sum() - counts * n_train
        for cls in np.flatnonzero(take == 0):
            donor = np.argmax(np.where(take > 1, surplus, np.iinfo(np.int64).min))
            take[donor] -= 1
            surplus[donor] -= counts.sum()
            take[cls] += 1
    return take


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random training subset that keeps the class proportions; the rest is the test set.

    The training set has ``round(fraction * N)`` samples. Each class contributes its
    proportional share rounded so the total matches (never more than one sample off
    except when needed to put every class in training, which happens whenever the
    training set has at least as many samples as there are classes).

    Parameters
    ----------
    labels : array-like of shape (N,)
        Integer class labels (numpy array or tensor).
    fraction : float
        Share of samples used for training, ``0 < fraction <= 1``.
    seed : int
        Seed of a private ``numpy.random.Generator``; the global RNG is never touched.
        The same seed gives the same split.

    Returns
    -------
    train_idx, test_idx : ndarray of int64, sorted
        Disjoint indices covering ``range(N)``; ``test_idx`` is empty when ``fraction == 1``.
    """
    fraction = _check_fraction(fraction)
    check_int(seed, "seed", what="an int (it is recorded with the run)", error=TypeError)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1 or y.dtype.kind not in "biu":
        raise ValueError(
            f"labels must be a 1-D array of integer class indices; got shape {y.shape}, dtype {y.dtype}."
        )
    n = y.size
    n_train = _n_train(fraction, n)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    take = _class_quotas(counts, n_train, rng)
    chosen = [
        rng.choice(np.flatnonzero(inverse == c), size=take[c], replace=False)
        for c in range(classes.size)
    ]
    train = np.sort(np.concatenate(chosen)).astype(np.int64)
    test = np.setdiff1d(np.arange(n, dtype=np.int64), train)
    return train, test


def original_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The unshuffled split of the original 12-bit experiments.

    Training rows are the first ``round(fraction * n)`` rows in file order; test rows are
    those from ``round(0.8 * n)`` to the end. Above a fraction of 0.8 the two sets
    overlap, exactly as in the original code. On the 12-bit data the first rows have
    few active bits, so small fractions train on a label-skewed subset.

    Parameters
    ----------
    n : int
        Number of samples (4096 for the 12-bit data).
    fraction : float
        Share of rows used for training, ``0 < fraction <= 1``.

    Returns
    -------
    train_idx, test_idx : ndarray of int64, sorted
    """
    fraction = _check_fraction(fraction)
    check_int(n, "n", minimum=1, what="a positive integer number of samples")
    train = np.arange(_n_train(fraction, n), dtype=np.int64)
    test = np.arange(round(0.8 * n), n, dtype=np.int64)
    return train, test

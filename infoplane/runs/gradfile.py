"""``gradients.csv``: the per-layer gradient statistics of a run, one line per seed, recorded epoch and layer.

Columns :data:`GRADIENT_FIELDS`; norms in the units of the loss's gradient, ``snr`` their ratio, ``batches`` the
optimiser steps they summarise, ``frozen`` 1 for a layer without a trainable weight. A layer without values (frozen,
or an epoch without optimiser steps, such as epoch 0) has empty cells, never zeros. The file is written like
``infoplane.csv`` (:mod:`infoplane.runs.format`): lines appended and fsynced with the table's, a resumed run
trimmed to the epochs its table completed. Runs recorded without gradient statistics have no such file.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import numpy as np

from infoplane.runs.format import PathLike, format_number, read_rows

__all__ = ["GRADIENTS", "GRADIENT_FIELDS", "GradientRecord", "Gradients", "record", "format_record", "read_gradients"]

GRADIENTS = "gradients.csv"
GRADIENT_FIELDS = ("seed", "epoch", "layer", "mean_norm", "std_norm", "snr", "batches", "frozen")
_VALUES = ("mean_norm", "std_norm", "snr", "batches")


class GradientRecord(NamedTuple):
    """One line of ``gradients.csv``; absent values are NaN in memory (an empty cell on disk)."""
    seed: int
    epoch: int
    layer: str
    mean_norm: float
    std_norm: float
    snr: float
    batches: int
    frozen: bool


def _num(x: Optional[float]) -> float:
    return math.nan if x is None else float(x)


def record(seed: int, epoch: int, row: Any) -> GradientRecord:
    """A :class:`GradientRecord` from a seed, an epoch and a row with ``layer, mean_norm, std_norm, snr, batches,
    frozen`` (such as :class:`infoplane.tracking.gradients.GradientRow`; ``None`` for absent values)."""
    return GradientRecord(int(seed), int(epoch), str(row.layer), _num(row.mean_norm), _num(row.std_norm),
                          _num(row.snr), int(row.batches), bool(row.frozen))


def format_record(r: GradientRecord) -> list[str]:
    """A record as CSV cells (``inf`` is written as ``inf``, an absent value as the empty cell)."""
    return [str(r.seed), str(r.epoch), r.layer, format_number(r.mean_norm), format_number(r.std_norm),
            format_number(r.snr), str(int(r.batches)), "1" if r.frozen else "0"]


def read_gradients(path: PathLike) -> list[GradientRecord]:
    """All complete lines of a ``gradients.csv`` (none when the file is absent)."""
    out = []
    for seed, epoch, layer, m, s, snr, batches, frozen in read_rows(path, GRADIENT_FIELDS):
        mean_norm, std_norm, ratio = (math.nan if v == "" else float(v) for v in (m, s, snr))
        out.append(GradientRecord(int(seed), int(epoch), layer, mean_norm, std_norm, ratio, int(batches),
                                  frozen == "1"))
    return out


class Gradients:
    """A run's gradient statistics as arrays (empty for a run recorded without them).

    Attributes
    ----------
    records : list of GradientRecord
    seeds : list of int
    epochs : ndarray of int64
        Sorted epochs with statistics.
    layers : list of str
        In the run's layer order.
    frozen : list of str
        Layers reported as frozen (no trainable weight).
    """

    def __init__(self, records: Iterable[GradientRecord] = (), layers: Sequence[str] = ()) -> None:
        self.records = list(records)
        self.seeds = list(dict.fromkeys(r.seed for r in self.records))
        self.epochs = np.array(sorted({r.epoch for r in self.records}), dtype=np.int64)
        self.layers = [name for name in layers if any(r.layer == name for r in self.records)]
        self.layers += [name for name in dict.fromkeys(r.layer for r in self.records) if name not in self.layers]
        self.frozen = [name for name in self.layers if any(r.frozen for r in self.records if r.layer == name)]
        s = {v: i for i, v in enumerate(self.seeds)}
        e = {v: i for i, v in enumerate(self.epochs.tolist())}
        l = {v: i for i, v in enumerate(self.layers)}
        self._values = np.full((len(_VALUES), len(self.seeds), len(self.epochs), len(self.layers)), np.nan)
        for r in self.records:
            self._values[:, s[r.seed], e[r.epoch], l[r.layer]] = [r.mean_norm, r.std_norm, r.snr, r.batches]

    def __len__(self) -> int:
        return len(self.records)

    def __bool__(self) -> bool:
        return bool(self.records)

    def __repr__(self) -> str:
        return f"Gradients({len(self.seeds)} seed(s), {len(self.epochs)} epochs, layers={self.layers})"

    def get(self, field: str = "snr", seed: Optional[int] = None) -> np.ndarray:
        """One statistic as an array.

        Parameters
        ----------
        field : {"mean_norm", "std_norm", "snr", "batches"}
        seed : int or None
            One seed, or None for all.

        Returns
        -------
        ndarray
            ``[n_seeds, n_epochs, n_layers]`` (``[n_epochs, n_layers]`` with ``seed``); NaN where there is no
            value (a frozen layer, an epoch without optimiser steps, a missing line).
        """
        if field not in _VALUES:
            raise ValueError(f"field must be one of {list(_VALUES)}; got {field!r}")
        out = self._values[_VALUES.index(field)].copy()
        if seed is None:
            return out
        if seed not in self.seeds:
            raise ValueError(f"seed {seed!r} has no gradient statistics; seeds: {self.seeds}")
        return out[self.seeds.index(seed)]

    def to_pandas(self) -> Any:
        """The statistics as a ``pandas.DataFrame`` with the columns of ``gradients.csv`` (needs
        ``pip install 'infoplane[pandas]'``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Gradients.to_pandas needs pandas: pip install 'infoplane[pandas]'") from None
        return pd.DataFrame(self.records, columns=list(GRADIENT_FIELDS))

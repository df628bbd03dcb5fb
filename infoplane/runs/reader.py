"""Reading a recorded run: :class:`Run` (the table as numpy arrays), :func:`load_run`, and :func:`as_run` (a Run from
a Run or a directory, for every function that takes either)."""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from infoplane.runs.format import (
    FIELDS,
    METRICS,
    SHARPNESS,
    SHARPNESS_FIELDS,
    TABLE,
    VALUES,
    Row,
    SharpnessRow,
    read_corruption,
    read_meta,
    read_metrics,
    read_sharpness,
    read_table,
)
from infoplane.runs.gradfile import GRADIENTS, GradientRecord, Gradients, read_gradients

__all__ = ["Run", "Sharpness", "load_run", "as_run"]


def _ordered(first, extra):
    out = list(dict.fromkeys(first))
    out.extend(x for x in dict.fromkeys(extra) if x not in set(out))
    return out


class Run:
    """A recorded information plane, as numpy arrays.

    Parameters
    ----------
    meta : dict
        The run description (contents of ``meta.json``).
    rows : iterable of Row
        Lines of ``infoplane.csv``.
    metrics : dict, optional
        ``(seed, epoch) -> {name: value}``.
    metric_names : sequence of str, optional
        Column order of the metrics (names found only in ``metrics`` follow).
    gradients : iterable of GradientRecord, optional
        Lines of ``gradients.csv``.
    sharpness : iterable of SharpnessRow, optional
        Lines of ``sharpness.csv``.

    Attributes
    ----------
    meta : dict
    layers : list of str
        Layer names in model order.
    epochs : ndarray of int64
        Sorted epochs that have at least one row.
    seeds : list of int
    estimators : list of str
    fraction : float or None
        Training fraction recorded with the run.
    n : int
        Probe size N.
    log2_n : float
        Ceiling of I(X;T) in bits.
    h_y : float
        H(Y) of the probe labels in bits, the ceiling of I(T;Y).
    class_names : list or None
        Class names when the labels were given as names (index order), else None.
    complete : bool
        Whether the run was closed normally.
    targets : list of str
        Names of the side variables Z whose I(T;Z) the run holds (:meth:`get` with ``target=``); empty when
        only the labels Y were measured. ``meta["targets"]`` says what each is (``kind``, and ``h`` = H(Z) in
        bits for a discrete one).
    rows : list of Row
    gradients : Gradients
        The per-layer gradient statistics (``gradients.csv``); empty for a run recorded without them.
    sharpness : Sharpness
        The sharpness measures recorded beside the plane (empty when none were).
    path : str or None
        The run directory, None for a run held only in memory.
    """

    def __init__(self, meta: dict, rows: Iterable[Row] = (), metrics: Optional[dict] = None,
                 metric_names: Sequence[str] = (), path: Union[str, os.PathLike, None] = None,
                 gradients: Iterable[GradientRecord] = (), sharpness: Iterable[SharpnessRow] = ()) -> None:
        self.meta = meta
        self.path = None if path is None else os.fspath(path)
        self.rows = list(rows)
        self._metrics = dict(metrics or {})
        self.layers = _ordered([l["name"] for l in meta.get("layers", [])], (r.layer for r in self.rows))
        self.estimators = _ordered([e["name"] for e in meta.get("estimators", [])],
                                   (r.estimator for r in self.rows))
        self.seeds = [int(s) for s in _ordered(meta.get("seeds", []), (r.seed for r in self.rows))]
        self.epochs = np.array(sorted({r.epoch for r in self.rows}), dtype=np.int64)
        self.fraction = meta.get("fraction")
        self.n = meta.get("n")
        self.log2_n = meta.get("log2_n")
        self.h_y = meta.get("h_y")
        self.class_names = meta.get("class_names")
        self.targets = [t for t in _ordered([t["name"] for t in meta.get("targets") or []],
                                            (r.target for r in self.rows)) if t]
        idx = [{v: i for i, v in enumerate(lst)} for lst in (self.seeds, self.epochs.tolist(), self.layers,
                                                              self.estimators, ["", *self.targets])]
        shape = (len(VALUES), *(len(i) for i in idx))
        self._values = np.full(shape, np.nan)
        for r in self.rows:
            at = (idx[0][r.seed], idx[1][r.epoch], idx[2][r.layer], idx[3][r.estimator], idx[4][r.target])
            self._values[(slice(None),) + at] = [getattr(r, v) for v in VALUES]
        self._seed_index, self._epoch_index = idx[0], idx[1]
        names = [n for vals in self._metrics.values() for n in vals]
        self.metric_names = _ordered(metric_names, names)
        self.gradients = Gradients(gradients, self.layers)
        self.sharpness = Sharpness(sharpness, self.seeds, self.epochs, meta.get("sharpness"))

    @property
    def corruption(self) -> Optional[dict]:
        """What a run trained on corrupted data (``infoplane track --label-noise`` etc.) drew, one draw per seed,
        else None.

        Returns
        -------
        dict or None
            Over the whole data set in its order (``meta["split"]`` says which rows each seed trained on), with row
            ``i`` for ``seeds[i]``: ``seeds`` (``[S]``), ``corrupted`` (bool ``[S, N]``: the samples whose label
            was redrawn for that seed), ``labels`` (``[S, N]``: the labels each seed trained on),
            ``clean_labels`` (``[N]``) and, with ``shuffled_pixels``, ``feature_order`` (``[S, D]``: each seed's
            order of the flattened features). None for a run without ``corruption.npz``. A run of an earlier
            release, whose seeds all trained on one draw, reads as that draw repeated for every seed.
        """
        return None if self.path is None else read_corruption(self.path, self.seeds)

    @property
    def complete(self) -> bool:
        """Whether the run was closed normally (False while it is being written, or after a crash)."""
        return bool(self.meta.get("complete"))

    def __repr__(self):
        return (f"Run({len(self.seeds)} seed(s), {len(self.epochs)} epochs, {len(self.layers)} layers, "
                f"estimators={self.estimators})")

    def for_target(self, target: Optional[str]) -> "Run":
        """The run seen through one side variable Z: a :class:`Run` whose rows are Z's, with ``ity`` = I(T;Z).

        Every figure and statistic of a run then applies to (I(X;T), I(T;Z)) unchanged; ``h_y`` becomes H(Z) for a
        discrete Z and None for a continuous one (no ceiling), and ``meta["target"]`` names Z.

        Parameters
        ----------
        target : str or None
            A name in :attr:`targets`; None returns this run.

        Returns
        -------
        Run
        """
        if target is None:
            return self
        if target not in self.targets:
            raise ValueError(f"target {target!r} is not in this run; its side variables: {self.targets} (None: the "
                             f"labels Y)")
        info: dict = next((t for t in self.meta.get("targets") or [] if t.get("name") == target), {})
        # The labels' per-seed H(Y) (one probe set per seed) says nothing of Z, which every seed shares.
        meta = {**{k: v for k, v in self.meta.items() if k not in ("h_y_seeds", "h_y_from")}, "target": target,
                "h_y": info.get("h"), "class_names": info.get("class_names"), "targets": None}
        rows = [r._replace(target="") for r in self.rows if r.target == target]
        return Run(meta, rows, self._metrics, self.metric_names, path=self.path)

    def _seed(self, seed):
        if seed not in self._seed_index:
            raise ValueError(f"seed {seed!r} is not in this run; seeds: {self.seeds}")
        return self._seed_index[seed]

    def get(self, field: str = "ixt", estimator: Optional[str] = None, seed: Optional[int] = None,
            target: Optional[str] = None) -> np.ndarray:
        """Estimates as an array.

        Parameters
        ----------
        field : {"ixt", "ity", "ixt_lower", "ity_lower", "ixt_se", "ity_se", "ity_null", "ity_null_sd"}
            Quantity, in bits (standard errors and the permutation null only for estimators that give them).
        estimator : str or None
            Estimator name; None = the first.
        seed : int or None
            One seed, or None for all.
        target : str or None
            None: the labels Y (``ity`` is I(T;Y)). The name of a side variable Z of the run (:attr:`targets`):
            ``ity`` and ``ity_*`` are I(T;Z), ``ixt`` the same I(X;T) as for the labels.

        Returns
        -------
        ndarray
            ``[n_seeds, n_epochs, n_layers]``, or ``[n_epochs, n_layers]`` when ``seed`` is given; NaN where a
            value is absent.
        """
        if target is not None and target not in self.targets:
            raise ValueError(f"target {target!r} is not in this run; its side variables: {self.targets} (None: the "
                             f"labels Y)")
        t = 0 if target is None else 1 + self.targets.index(target)
        if field not in VALUES:
            raise ValueError(f"field must be one of {list(VALUES)}; got {field!r}")
        if not self.estimators:
            raise ValueError("this run has no estimator")
        estimator = self.estimators[0] if estimator is None else estimator
        if estimator not in self.estimators:
            raise ValueError(f"estimator {estimator!r} is not in this run; estimators: {self.estimators}")
        out = self._values[VALUES.index(field), :, :, :, self.estimators.index(estimator), t]
        return out.copy() if seed is None else out[self._seed(seed)].copy()

    def _default(self, field):
        a = self.get(field)
        return a[0] if len(self.seeds) == 1 else a

    @property
    def ixt(self) -> np.ndarray:
        """I(X;T) in bits of the first estimator: ``[n_epochs, n_layers]`` for one seed, else
        ``[n_seeds, n_epochs, n_layers]``."""
        return self._default("ixt")

    @property
    def ity(self) -> np.ndarray:
        """I(T;Y) in bits of the first estimator, shaped like :attr:`ixt`."""
        return self._default("ity")

    def metric(self, name: str, seed: Optional[int] = None) -> np.ndarray:
        """A reported metric aligned with :attr:`epochs`.

        Parameters
        ----------
        name : str
            A key passed to ``Tracker.step``.
        seed : int or None

        Returns
        -------
        ndarray
            ``[n_seeds, n_epochs]`` (``[n_epochs]`` when ``seed`` is given); NaN where not reported.
        """
        if name not in self.metric_names:
            raise ValueError(f"no metric named {name!r}; metrics: {self.metric_names}")
        out = np.full((len(self.seeds), len(self.epochs)), np.nan)
        for (s, e), vals in self._metrics.items():
            if name in vals and s in self._seed_index and e in self._epoch_index:
                out[self._seed_index[s], self._epoch_index[e]] = vals[name]
        return out if seed is None else out[self._seed(seed)]

    def to_pandas(self) -> Any:
        """The table as a long-form ``pandas.DataFrame``: one row per seed, epoch, layer and estimator.

        Returns
        -------
        pandas.DataFrame
            Columns ``seed, fraction, epoch, layer, estimator, ixt, ity`` (bits), then the optional columns
            (``ixt_lower, ity_lower``, standard errors, permutation null) that an estimator of the run gives,
            then ``target`` ("" for the labels Y, else the side variable whose I(T;Z) the row's ``ity`` holds;
            only for runs with side variables), then the metrics joined on ``(seed, epoch)``, then the gradient
            statistics joined on ``(seed, epoch, layer)`` as ``grad_mean_norm, grad_std_norm, grad_snr,
            grad_batches`` when the run has them. Needs ``pip install 'infoplane[pandas]'``.
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Run.to_pandas needs pandas: pip install 'infoplane[pandas]'") from None
        df = pd.DataFrame(self.rows, columns=list(FIELDS))
        # Optional columns only when present: seaborn/plotnine users get no all-NaN columns.
        df = df.drop(columns=[c for c in VALUES[2:] if df[c].isna().all()] + ([] if self.targets else ["target"]))
        if self._metrics:
            m = pd.DataFrame([{"seed": s, "epoch": e, **v} for (s, e), v in self._metrics.items()])
            df = df.merge(m, on=["seed", "epoch"], how="left")
        if self.gradients:
            g = self.gradients.to_pandas().drop(columns=["frozen"])
            g = g.rename(columns={c: f"grad_{c}" for c in ("mean_norm", "std_norm", "snr", "batches")})
            df = df.merge(g, on=["seed", "epoch", "layer"], how="left")
        if self.sharpness.rows:  # one column per measure, sharpness:<measure> (its value; diagnostics in
            wide = self.sharpness.to_pandas().pivot_table(  # run.sharpness.to_pandas())
                index=["seed", "epoch"], columns="measure", values="value", aggfunc="first")
            wide.columns = [f"sharpness:{c}" for c in wide.columns]
            df = df.merge(wide.reset_index(), on=["seed", "epoch"], how="left")
        return df


class Sharpness:
    """The sharpness measures of a run (``sharpness.csv``), aligned with the run's seeds and epochs.

    Parameters
    ----------
    rows : iterable of SharpnessRow
    seeds : list of int
        The run's seeds (rows of other seeds follow them).
    epochs : ndarray of int64
        The run's epochs, which :meth:`get` aligns with.
    settings : dict or None
        ``meta.json["sharpness"]``: the measures' options and the data subset they were computed on.

    Attributes
    ----------
    rows : list of SharpnessRow
    measures : list of str
        Measure names in the order recorded.
    fields : tuple of str
        What :meth:`get` can return: ``value`` and the diagnostics (see :class:`~infoplane.runs.format.SharpnessRow`).
    settings : dict
        As recorded (empty when the run has no sharpness).
    """

    fields = SHARPNESS_FIELDS[3:]

    def __init__(self, rows: Iterable[SharpnessRow], seeds: Sequence[int], epochs: np.ndarray,
                 settings: Optional[dict] = None) -> None:
        self.rows = list(rows)
        self.measures = _ordered((settings or {}).get("measures", {}), (r.measure for r in self.rows))
        self.settings = dict(settings or {})
        self._seeds = [int(s) for s in _ordered(seeds, (r.seed for r in self.rows))]
        self._epochs = np.asarray(epochs, dtype=np.int64)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Sharpness({len(self.rows)} line(s), measures={self.measures})"

    def get(self, measure: str, field: str = "value", seed: Optional[int] = None) -> np.ndarray:
        """One measure's values as an array aligned with the run's epochs.

        Parameters
        ----------
        measure : str
            A name in :attr:`measures` (e.g. ``"hessian_top_eigenvalue"``).
        field : str, default "value"
            ``value`` or a diagnostic in :attr:`fields` (``converged`` as 1.0 / 0.0).
        seed : int or None
            One seed, or None for all.

        Returns
        -------
        ndarray of float
            ``[n_seeds, n_epochs]`` (``[n_epochs]`` with ``seed``); NaN where the measure was not recorded or does
            not give ``field``.
        """
        if measure not in self.measures:
            raise ValueError(f"no sharpness measure {measure!r} in this run; measures: {self.measures}")
        if field not in self.fields:
            raise ValueError(f"field must be one of {list(self.fields)}; got {field!r}")
        seeds = {s: i for i, s in enumerate(self._seeds)}
        epochs = {int(e): j for j, e in enumerate(self._epochs.tolist())}
        out = np.full((len(self._seeds), len(self._epochs)), np.nan)
        for r in self.rows:
            value = getattr(r, field)
            if r.measure == measure and r.epoch in epochs and value is not None:
                out[seeds[r.seed], epochs[r.epoch]] = float(value)
        if seed is None:
            return out
        if seed not in seeds:
            raise ValueError(f"seed {seed!r} is not in this run; seeds: {self._seeds}")
        return out[seeds[seed]]

    def to_pandas(self) -> Any:
        """The lines as a ``pandas.DataFrame`` (columns of ``sharpness.csv``; absent diagnostics are missing
        values). Needs ``pip install 'infoplane[pandas]'``."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Sharpness.to_pandas needs pandas: pip install 'infoplane[pandas]'") from None
        return pd.DataFrame(self.rows, columns=list(SHARPNESS_FIELDS))


def load_run(path: Union[str, os.PathLike]) -> Run:
    """Read a run directory written by :class:`infoplane.Tracker`.

    A last CSV line cut short by a killed process is ignored.

    Parameters
    ----------
    path : str or os.PathLike
        The run directory (holding ``meta.json``).

    Returns
    -------
    Run
    """
    path = os.fspath(path)
    meta = read_meta(path)
    rows = read_table(os.path.join(path, TABLE))
    names, metrics = read_metrics(os.path.join(path, METRICS))
    sharpness = read_sharpness(os.path.join(path, SHARPNESS))
    return Run(meta, rows, metrics, names, path=path, gradients=read_gradients(os.path.join(path, GRADIENTS)),
               sharpness=sharpness)


def as_run(run: Union[Run, str, os.PathLike]) -> Run:
    """A :class:`Run` from a Run or a run directory, with a clear error for anything else.

    Parameters
    ----------
    run : Run, str or os.PathLike
        A run, or the directory of one.

    Returns
    -------
    Run
        ``run`` itself, or the run loaded from the directory.

    Raises
    ------
    ValueError
        For a path that is not a directory, or a directory that is not a run.
    TypeError
        For anything else.
    """
    if isinstance(run, Run):
        return run
    if isinstance(run, (str, os.PathLike)):
        path = os.fspath(run)
        if not os.path.isdir(path):
            raise ValueError(f"{path!r} does not exist or is not a directory; give an infoplane run directory "
                             f"(written by Tracker(out=...) or `infoplane track`)")
        return load_run(path)  # its NotARunError (a ValueError) says what is missing
    raise TypeError(f"expected an infoplane Run or the path of a run directory, got {type(run).__name__}")

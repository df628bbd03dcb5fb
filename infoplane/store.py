"""The run directory: ``meta.json``, ``infoplane.csv``, ``metrics.csv`` and optional raw activations.

Crash safety: table rows are appended, flushed and fsynced one estimated batch at a time; whole-file rewrites
(``meta.json``, a CSV whose header grows, trimming on resume) go to a temporary file that replaces the old one
with ``os.replace``. A process killed at any moment therefore leaves valid files; at worst the last CSV line is
cut short, and readers drop such a line. Nothing is pickled: JSON, CSV and ``.npz`` (numpy arrays) only.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections import namedtuple
from datetime import datetime, timezone

import numpy as np

__all__ = ["Run", "Row", "load_run", "RunWriter", "FIELDS", "META", "TABLE", "METRICS", "ACTIVATIONS"]

META, TABLE, METRICS, ACTIVATIONS = "meta.json", "infoplane.csv", "metrics.csv", "activations"
FORMAT = "infoplane-run"
FORMAT_VERSION = 1

FIELDS = ("seed", "fraction", "epoch", "layer", "estimator", "ixt", "ity", "ixt_lower", "ity_lower")
VALUES = ("ixt", "ity", "ixt_lower", "ity_lower")

#: One line of ``infoplane.csv``; absent values are NaN, an absent fraction is None.
Row = namedtuple("Row", FIELDS)


def now():
    """Current UTC time as an ISO 8601 string (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------- low level
def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``, so readers see the old or the new
    file, never a mix."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _csv_text(rows):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_csv(path, header, rows):
    """Atomically replace ``path`` with a CSV of ``header`` and ``rows`` (lists of strings)."""
    atomic_write_bytes(path, _csv_text([header, *rows]).encode())


def append_csv(path, rows):
    """Append rows to an existing CSV, then flush and fsync."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(_csv_text(rows))
        f.flush()
        os.fsync(f.fileno())


def read_csv(path):
    """Header and rows of a CSV, dropping a last line that was cut short (no final newline).

    Returns
    -------
    header : list of str, or None for a missing or empty file
    rows : list of list of str
    """
    if not os.path.exists(path):
        return None, []
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return None, []
    header, rows = lines[0], lines[1:]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {i + 2} has {len(row)} fields, expected {len(header)} ({header}); "
                             f"the file is damaged")
    return header, rows


def _num(x):
    """A float as a round-trip exact string; NaN becomes the empty cell."""
    x = float(x)
    return "" if math.isnan(x) else repr(x)


def _parse_num(s):
    return math.nan if s == "" else float(s)


def format_row(row):
    """A :class:`Row` as CSV cells."""
    frac = "" if row.fraction is None else repr(float(row.fraction))
    return [str(int(row.seed)), frac, str(int(row.epoch)), row.layer, row.estimator, *(_num(getattr(row, v))
                                                                                         for v in VALUES)]


def parse_row(cells):
    """CSV cells of ``infoplane.csv`` as a :class:`Row`."""
    seed, frac, epoch, layer, est, *vals = cells
    return Row(int(seed), None if frac == "" else float(frac), int(epoch), layer, est, *map(_parse_num, vals))


def read_table(path):
    """All complete rows of an ``infoplane.csv`` as :class:`Row` tuples."""
    header, rows = read_csv(path)
    if header is None:
        return []
    if tuple(header) != FIELDS:
        raise ValueError(f"{path}: unexpected header {header}; expected {list(FIELDS)}")
    return [parse_row(r) for r in rows]


def read_metrics(path):
    """Metrics of a wide ``metrics.csv`` (``seed,epoch,<names>``).

    Returns
    -------
    names : list of str
    values : dict
        ``(seed, epoch) -> {name: float}``; cells left empty are omitted.
    """
    header, rows = read_csv(path)
    if header is None:
        return [], {}
    if header[:2] != ["seed", "epoch"]:
        raise ValueError(f"{path}: header must start with seed,epoch; got {header}")
    names = header[2:]
    values = {}
    for r in rows:
        values[(int(r[0]), int(r[1]))] = {n: float(v) for n, v in zip(names, r[2:]) if v != ""}
    return names, values


def read_meta(path):
    """The ``meta.json`` of a run directory as a dict."""
    meta_path = os.path.join(path, META)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{path!r} is not an infoplane run directory: it has no {META}")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not an infoplane run description (format={meta.get('format')!r})")
    return meta


def write_meta(path, meta):
    """Atomically write ``meta.json`` into the run directory ``path``."""
    atomic_write_bytes(os.path.join(path, META), (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode())


def complete_epochs(rows, seeds, layers, estimators):
    """Epochs whose table holds a row for every (seed, layer, estimator)."""
    need = len(seeds) * len(layers) * len(estimators)
    wanted = set(seeds), set(layers), set(estimators)
    seen = {}
    for r in rows:
        if r.seed in wanted[0] and r.layer in wanted[1] and r.estimator in wanted[2]:
            seen.setdefault(r.epoch, set()).add((r.seed, r.layer, r.estimator))
    return {e for e, s in seen.items() if len(s) == need}


def _json_ok(value):
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def _jsonable(x):
    return json.loads(json.dumps(x))


# ------------------------------------------------------------------------------------------------------ writer
class RunWriter:
    """Owns one run directory while a tracker fills it (or keeps everything in memory when ``path`` is None).

    Parameters
    ----------
    path : str, os.PathLike or None
        Run directory; None keeps rows and metrics in memory only.
    meta : dict
        JSON-able run description; ``format``, ``complete`` and times are added here.
    identity : sequence of str
        Keys of ``meta`` that must match the stored run when resuming.
    resume : bool
        Continue the run already in ``path`` (or start one if there is none).
    overwrite : bool
        Replace the run already in ``path``.
    """

    def __init__(self, path, meta, identity=(), resume=False, overwrite=False):
        self.path = None if path is None else os.fspath(path)
        bad = [k for k, v in dict(meta).items() if not _json_ok(v)]
        if bad:
            raise ValueError(f"meta entries {bad} cannot be written to meta.json; pass plain numbers (not NaN), "
                             f"strings, lists and dicts (e.g. array.tolist())")
        self.meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **_jsonable(meta),
                     "start_time": now(), "end_time": None, "complete": False}
        self.rows, self.metric_names, self.metrics = [], [], {}
        if self.path is None:
            return
        if resume and overwrite:
            raise ValueError("pass resume=True or overwrite=True, not both")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"out={self.path!r} is a file; give a directory for the run")
        existing = os.path.isdir(self.path) and os.listdir(self.path)
        has_run = os.path.isfile(os.path.join(self.path, META))
        if existing and not has_run:
            # overwrite=True replaces runs only: never clear a directory that holds something else.
            raise ValueError(f"out={self.path!r} exists, is not empty and holds no infoplane run; choose a new or "
                             f"empty directory")
        if existing and not (overwrite or resume):
            raise ValueError(f"out={self.path!r} already holds an infoplane run; pass resume=True to continue it, "
                             f"overwrite=True to replace it, or choose another directory")
        os.makedirs(self.path, exist_ok=True)
        if resume and has_run:
            self._resume(identity)
            write_meta(self.path, self.meta)
            return
        for name in (META, TABLE, METRICS):
            if os.path.exists(self._file(name)):
                os.remove(self._file(name))
        shutil.rmtree(self._file(ACTIVATIONS), ignore_errors=True)
        # meta.json first: a directory holding it is recognised as a run (and resumable) even if the
        # process dies before the empty tables exist; readers treat missing tables as empty.
        write_meta(self.path, self.meta)
        write_csv(self._file(TABLE), FIELDS, [])
        write_csv(self._file(METRICS), ["seed", "epoch"], [])

    def _file(self, name):
        return os.path.join(self.path, name)

    def _resume(self, identity):
        old = read_meta(self.path)
        diff = [k for k in identity if old.get(k) != self.meta.get(k)]
        if diff:
            lines = "; ".join(f"{k}: stored {old.get(k)!r}, now {self.meta.get(k)!r}" for k in diff)
            raise ValueError(f"cannot resume the run in {self.path!r}: its settings differ ({lines}). Use the "
                             f"same settings, or overwrite=True / another out= to start a new run")
        # Keep the original start and the caller's extra keys; record the resumption.
        self.meta = {**old, **self.meta, "start_time": old.get("start_time"),
                     "resumed": old.get("resumed", []) + [now()]}
        rows = read_table(self._file(TABLE))
        names, metrics = read_metrics(self._file(METRICS))
        # Rows of an epoch that was cut short would be written again: drop them, and the metrics with them.
        done = complete_epochs(rows, self.meta["seeds"], [l["name"] for l in self.meta["layers"]],
                               [e["name"] for e in self.meta["estimators"]])
        self.rows = [r for r in rows if r.epoch in done]
        self.metrics = {k: v for k, v in metrics.items() if k[1] in done}
        self.metric_names = names
        write_csv(self._file(TABLE), FIELDS, [format_row(r) for r in self.rows])
        self._rewrite_metrics()

    def done_epochs(self):
        """Epochs complete in the table for every seed, layer and estimator of this run."""
        return complete_epochs(self.rows, self.meta["seeds"], [l["name"] for l in self.meta["layers"]],
                               [e["name"] for e in self.meta["estimators"]])

    def add_rows(self, rows):
        """Record table rows (and append them to ``infoplane.csv``, fsynced)."""
        rows = list(rows)
        self.rows.extend(rows)
        if self.path is not None:
            append_csv(self._file(TABLE), [format_row(r) for r in rows])

    def _metric_cells(self, key):
        vals = self.metrics[key]
        return [str(key[0]), str(key[1])] + [_num(vals[n]) if n in vals else "" for n in self.metric_names]

    def _rewrite_metrics(self):
        rows = [self._metric_cells(k) for k in sorted(self.metrics)]
        write_csv(self._file(METRICS), ["seed", "epoch", *self.metric_names], rows)

    def add_metrics(self, seed, epoch, values):
        """Record one ``(seed, epoch)`` line of metrics (``values``: name -> float)."""
        self.add_metrics_many([((seed, epoch), values)])

    def add_metrics_many(self, items):
        """Record metrics lines, given as ``((seed, epoch), {name: value})`` pairs, with one write.

        A name not seen before widens the file's header (the file is rewritten); so does a line for a
        ``(seed, epoch)`` already present, which is merged rather than repeated.
        """
        rewrite, keys = False, []
        for (seed, epoch), values in items:
            key = (int(seed), int(epoch))
            rewrite |= key in self.metrics or any(n not in self.metric_names for n in values)
            self.metrics[key] = {**self.metrics.get(key, {}), **values}
            self.metric_names.extend(n for n in values if n not in self.metric_names)
            keys.append(key)
        if self.path is None or not keys:
            return
        if rewrite:
            self._rewrite_metrics()
        else:
            append_csv(self._file(METRICS), [self._metric_cells(k) for k in keys])

    def activation_path(self, seed, epoch):
        return os.path.join(self.path, ACTIVATIONS, str(int(seed)), f"{int(epoch)}.npz")

    def save_activations(self, seed, epoch, arrays):
        """Save one epoch's layer activations (float32 arrays keyed by layer name) as an ``.npz``."""
        path = self.activation_path(seed, epoch)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    def save_labels(self, labels):
        """Save the probe labels next to the activations (needed to estimate again later)."""
        os.makedirs(os.path.join(self.path, ACTIVATIONS), exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.asarray(labels, dtype=np.int64))
        atomic_write_bytes(os.path.join(self.path, ACTIVATIONS, "labels.npy"), buf.getvalue())

    def finish(self, complete=True):
        """Stamp the end time (and ``complete``) into ``meta.json``."""
        self.meta["end_time"] = now()
        self.meta["complete"] = bool(complete)
        if self.path is not None:
            write_meta(self.path, self.meta)

    def run(self):
        """The current contents as an in-memory :class:`Run`."""
        return Run(self.meta, self.rows, self.metrics, self.metric_names, path=self.path)


# --------------------------------------------------------------------------------------------------------- Run
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
    rows : list of Row
    path : str or None
        The run directory, None for a run held only in memory.
    """

    def __init__(self, meta, rows=(), metrics=None, metric_names=(), path=None):
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
        idx = [{v: i for i, v in enumerate(lst)} for lst in (self.seeds, self.epochs.tolist(), self.layers,
                                                              self.estimators)]
        shape = (len(VALUES), *(len(i) for i in idx))
        self._values = np.full(shape, np.nan)
        for r in self.rows:
            at = (idx[0][r.seed], idx[1][r.epoch], idx[2][r.layer], idx[3][r.estimator])
            self._values[(slice(None), *at)] = [getattr(r, v) for v in VALUES]
        self._seed_index, self._epoch_index = idx[0], idx[1]
        names = [n for vals in self._metrics.values() for n in vals]
        self.metric_names = _ordered(metric_names, names)

    def __repr__(self):
        return (f"Run({len(self.seeds)} seed(s), {len(self.epochs)} epochs, {len(self.layers)} layers, "
                f"estimators={self.estimators})")

    def _seed(self, seed):
        if seed not in self._seed_index:
            raise ValueError(f"seed {seed!r} is not in this run; seeds: {self.seeds}")
        return self._seed_index[seed]

    def get(self, field="ixt", estimator=None, seed=None):
        """Estimates as an array.

        Parameters
        ----------
        field : {"ixt", "ity", "ixt_lower", "ity_lower"}
            Quantity, in bits.
        estimator : str or None
            Estimator name; None = the first.
        seed : int or None
            One seed, or None for all.

        Returns
        -------
        ndarray
            ``[n_seeds, n_epochs, n_layers]``, or ``[n_epochs, n_layers]`` when ``seed`` is given; NaN where a
            value is absent.
        """
        if field not in VALUES:
            raise ValueError(f"field must be one of {list(VALUES)}; got {field!r}")
        if not self.estimators:
            raise ValueError("this run has no estimator")
        estimator = self.estimators[0] if estimator is None else estimator
        if estimator not in self.estimators:
            raise ValueError(f"estimator {estimator!r} is not in this run; estimators: {self.estimators}")
        out = self._values[VALUES.index(field), :, :, :, self.estimators.index(estimator)]
        return out.copy() if seed is None else out[self._seed(seed)].copy()

    def _default(self, field):
        a = self.get(field)
        return a[0] if len(self.seeds) == 1 else a

    @property
    def ixt(self):
        """I(X;T) in bits of the first estimator: ``[n_epochs, n_layers]`` for one seed, else
        ``[n_seeds, n_epochs, n_layers]``."""
        return self._default("ixt")

    @property
    def ity(self):
        """I(T;Y) in bits of the first estimator, shaped like :attr:`ixt`."""
        return self._default("ity")

    def metric(self, name, seed=None):
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

    def to_pandas(self):
        """The table as a long-form ``pandas.DataFrame``: one row per seed, epoch, layer and estimator.

        Returns
        -------
        pandas.DataFrame
            Columns ``seed, fraction, epoch, layer, estimator, ixt, ity`` (bits), then ``ixt_lower, ity_lower``
            when an estimator of the run gives lower bounds, then the metrics joined on ``(seed, epoch)``.
            Needs ``pip install 'infoplane[pandas]'``.
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Run.to_pandas needs pandas: pip install 'infoplane[pandas]'") from None
        df = pd.DataFrame(self.rows, columns=list(FIELDS))
        # [issue 12] lower-bound columns only when present (seaborn/plotnine users get no all-NaN columns)
        df = df.drop(columns=[c for c in ("ixt_lower", "ity_lower") if df[c].isna().all()])
        if self._metrics:
            m = pd.DataFrame([{"seed": s, "epoch": e, **v} for (s, e), v in self._metrics.items()])
            df = df.merge(m, on=["seed", "epoch"], how="left")
        return df


def load_run(path):
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
    return Run(meta, rows, metrics, names, path=path)

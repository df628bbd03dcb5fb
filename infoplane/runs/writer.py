"""Writing a run: :class:`RunWriter` fills one run directory (or keeps the run in memory).

The directory's lifecycle (create, recognise, clear, lock) is decided in :mod:`infoplane.runs.lifecycle`, its file
format in :mod:`infoplane.runs.format`, and reading it back in :mod:`infoplane.runs.reader`; this module only writes.
"""
from __future__ import annotations

import io
import os
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from infoplane.runs import lifecycle as rundir
from infoplane.runs.format import (
    ACTIVATIONS,
    FIELDS,
    FORMAT,
    FORMAT_VERSION,
    META,
    METRICS,
    SHARPNESS,
    SHARPNESS_FIELDS,
    TABLE,
    Row,
    SharpnessRow,
    append_csv,
    atomic_write_bytes,
    complete_epochs,
    format_number,
    format_row,
    format_sharpness_row,
    json_ok,
    jsonable,
    now,
    read_meta,
    read_metrics,
    read_sharpness,
    read_table,
    write_csv,
    write_meta,
)
from infoplane.runs.gradfile import GRADIENT_FIELDS, GRADIENTS, GradientRecord, format_record, read_gradients
from infoplane.runs.reader import Run, load_run

__all__ = ["Run", "Row", "load_run", "RunWriter", "ResumeMismatchError", "setting_differences", "FIELDS", "META",
           "TABLE", "METRICS", "ACTIVATIONS", "read_meta", "read_metrics", "read_table"]


class ResumeMismatchError(ValueError):
    """A run cannot be resumed because its stored settings differ (``keys`` lists which, ``differences`` how)."""

    def __init__(self, message: str, keys: Iterable[str] = (), differences: Iterable[str] = ()):
        super().__init__(message)
        self.keys = list(keys)
        self.differences = list(differences)


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    if isinstance(value, (list, tuple)) and len(text) > limit:
        return f"a list of {len(value)} values"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def setting_differences(stored: Any, current: Any, key: str) -> list[str]:
    """How a stored setting differs from the current one, one line per differing entry, with both values.

    Dicts are compared entry by entry (``training.lr: stored 0.0004, now 0.001``); other values whole, long lists
    summarised by their length.

    Parameters
    ----------
    stored, current : JSON-able values
        The setting as ``meta.json`` holds it and as it would be written now.
    key : str
        The setting's name, the prefix of each line.

    Returns
    -------
    list of str
        Empty when the two are equal.
    """
    stored, current = jsonable(stored), jsonable(current)
    if stored == current:
        return []
    if isinstance(stored, dict) and isinstance(current, dict):
        lines = []
        for k in list(stored) + [k for k in current if k not in stored]:
            if k not in current:
                lines.append(f"{key}.{k}: stored {_shown(stored[k])}, now not set")
            elif k not in stored:
                lines.append(f"{key}.{k}: not stored, now {_shown(current[k])}")
            else:
                lines += setting_differences(stored[k], current[k], f"{key}.{k}")
        return lines
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current) and \
            len(repr(stored)) > 60:
        at = next(i for i, (a, b) in enumerate(zip(stored, current)) if a != b)
        return setting_differences(stored[at], current[at], f"{key}[{at}]")
    return [f"{key}: stored {_shown(stored)}, now {_shown(current)}"]


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
    accepts : dict, optional
        Identity key -> ``accepts(stored, new)``: a resumed run may take a new value of that key when it says yes
        (e.g. a schedule that extends the stored one to later epochs).
    """

    def __init__(self, path: Union[str, os.PathLike, None], meta: dict, identity: Sequence[str] = (),
                 resume: bool = False, overwrite: bool = False,
                 accepts: Optional[dict[str, Callable[[Any, Any], bool]]] = None):
        self.path = None if path is None else os.fspath(path)
        bad = [k for k, v in dict(meta).items() if not json_ok(v)]
        if bad:
            raise ValueError(f"meta entries {bad} cannot be written to meta.json; pass plain numbers (not NaN), "
                             f"strings, lists and dicts (e.g. array.tolist())")
        self.meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **jsonable(meta),
                     "start_time": now(), "end_time": None, "complete": False}
        self.rows: list[Row] = []
        self.metric_names: list[str] = []
        self.metrics: dict[tuple[int, int], dict[str, float]] = {}
        self.gradients: list[GradientRecord] = []
        self.sharpness: list[SharpnessRow] = []
        self._lock = None
        if self.path is None:
            return
        self._identity = tuple(identity)
        self._accepts = dict(accepts or {})
        self._lock, resuming = rundir.open_run_dir(self.path, resume=resume, overwrite=overwrite,
                                                   check=self._check_identity)
        try:
            if resuming:
                self._resume(identity)
                write_meta(self.path, self.meta)
                return
            # meta.json first: a directory holding it is recognised as a run (and resumable) even if the
            # process dies before the empty tables exist; readers treat missing tables as empty.
            write_meta(self.path, self.meta)
            write_csv(self._file(TABLE), FIELDS, [])
            write_csv(self._file(METRICS), ["seed", "epoch"], [])
        except BaseException:
            self.release()
            raise

    def _file(self, name):
        return os.path.join(self.path, name)

    def _check_identity(self, path):
        old = read_meta(path)
        diff = [k for k in self._identity if old.get(k) != self.meta.get(k)
                and not (k in self._accepts and k in old and self._accepts[k](old[k], self.meta.get(k)))]
        if diff:
            lines = [line for k in diff for line in setting_differences(old.get(k), self.meta.get(k), k)]
            raise ResumeMismatchError(f"cannot resume the run in {self.path!r}: its settings differ "
                                      f"({'; '.join(lines)}). Use the same settings, or overwrite=True / another "
                                      f"out= to start a new run", keys=diff, differences=lines)

    def _resume(self, identity):
        old = read_meta(self.path)
        # Keep the original start and the caller's extra keys; record the resumption.
        self.meta = {**old, **self.meta, "start_time": old.get("start_time"),
                     "resumed": old.get("resumed", []) + [now()]}
        rows = read_table(self._file(TABLE))
        names, metrics = read_metrics(self._file(METRICS))
        # Rows of an epoch that was cut short would be written again: drop them, and the metrics with them.
        done = complete_epochs(rows, self.meta["seeds"], [l["name"] for l in self.meta["layers"]],
                               [e["name"] for e in self.meta["estimators"]], self._targets())
        self.rows = [r for r in rows if r.epoch in done]
        self.metrics = {k: v for k, v in metrics.items() if k[1] in done}
        self.metric_names = names
        write_csv(self._file(TABLE), FIELDS, [format_row(r) for r in self.rows])
        self._rewrite_metrics()
        self._resume_gradients(done)
        self._resume_sharpness(done)

    def _resume_gradients(self, done):
        if not os.path.exists(self._file(GRADIENTS)):
            return
        self.gradients = [g for g in read_gradients(self._file(GRADIENTS)) if g.epoch in done]
        write_csv(self._file(GRADIENTS), GRADIENT_FIELDS, [format_record(g) for g in self.gradients])

    def add_gradients(self, records: Iterable[GradientRecord]) -> None:
        """Record gradient statistics (and append them to ``gradients.csv``, fsynced; the file is created with
        the first ones). Write them before the table rows of their epochs: a resumed run drops the lines of
        epochs its table does not complete, and records them again."""
        records = list(records)
        if not records:
            return
        self.gradients.extend(records)
        if self.path is None:
            return
        if os.path.exists(self._file(GRADIENTS)):
            append_csv(self._file(GRADIENTS), [format_record(g) for g in records])
        else:
            write_csv(self._file(GRADIENTS), GRADIENT_FIELDS, [format_record(g) for g in self.gradients])

    def done_epochs(self) -> set[int]:
        """Epochs complete in the table for every seed, layer and estimator of this run."""
        return complete_epochs(self.rows, self.meta["seeds"], [l["name"] for l in self.meta["layers"]],
                               [e["name"] for e in self.meta["estimators"]], self._targets())

    def _targets(self) -> dict:
        """The run's side variables (meta.json's ``targets``): name -> names of the estimators that measure it."""
        every = [e["name"] for e in self.meta["estimators"]]
        return {t["name"]: t.get("estimators", every) for t in self.meta.get("targets") or []}

    def add_rows(self, rows: Iterable[Row]) -> None:
        """Record table rows (and append them to ``infoplane.csv``, fsynced)."""
        rows = list(rows)
        self.rows.extend(rows)
        if self.path is not None:
            append_csv(self._file(TABLE), [format_row(r) for r in rows])

    def _metric_cells(self, key):
        vals = self.metrics[key]
        return [str(key[0]), str(key[1])] + [format_number(vals[n]) if n in vals else "" for n in self.metric_names]

    def _rewrite_metrics(self):
        rows = [self._metric_cells(k) for k in sorted(self.metrics)]
        write_csv(self._file(METRICS), ["seed", "epoch", *self.metric_names], rows)

    def add_metrics(self, seed: int, epoch: int, values: dict[str, float]) -> None:
        """Record one ``(seed, epoch)`` line of metrics (``values``: name -> float)."""
        self.add_metrics_many([((seed, epoch), values)])

    def add_metrics_many(self, items: Iterable[tuple[tuple[int, int], dict[str, float]]]) -> None:
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

    # -- sharpness.csv: created with the first sharpness line, so runs without sharpness have no such file --
    def _resume_sharpness(self, done: set[int]) -> None:
        # Lines of epochs missing from the table are dropped, like their metrics: they are measured again.
        if not os.path.exists(self._file(SHARPNESS)):
            return
        self.sharpness = [r for r in read_sharpness(self._file(SHARPNESS)) if r.epoch in done]
        write_csv(self._file(SHARPNESS), SHARPNESS_FIELDS, [format_sharpness_row(r) for r in self.sharpness])

    def add_sharpness(self, rows: Iterable[SharpnessRow]) -> None:
        """Record sharpness lines (and append them to ``sharpness.csv``, fsynced; the file, with its header, is
        written atomically when the first lines arrive)."""
        rows = list(rows)
        if not rows:
            return
        self.sharpness.extend(rows)
        if self.path is None:
            return
        cells = [format_sharpness_row(r) for r in rows]
        if os.path.exists(self._file(SHARPNESS)):
            append_csv(self._file(SHARPNESS), cells)
        else:
            write_csv(self._file(SHARPNESS), SHARPNESS_FIELDS, cells)

    def activation_path(self, seed: int, epoch: int) -> str:
        return os.path.join(self._dir(), ACTIVATIONS, str(int(seed)), f"{int(epoch)}.npz")

    def _dir(self) -> str:
        if self.path is None:
            raise ValueError("this run is kept in memory only (no run directory): there is nowhere to save files")
        return self.path

    def save_activations(self, seed: int, epoch: int, arrays: dict[str, np.ndarray]) -> None:
        """Save one epoch's layer activations (float32 arrays keyed by layer name) as an ``.npz``."""
        path = self.activation_path(seed, epoch)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds against allow_pickle
        atomic_write_bytes(path, buf.getvalue())

    def save_labels(self, labels: Any) -> None:
        """Save the probe labels next to the activations (needed to estimate again later)."""
        os.makedirs(os.path.join(self._dir(), ACTIVATIONS), exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.asarray(labels, dtype=np.int64))
        atomic_write_bytes(os.path.join(self._dir(), ACTIVATIONS, "labels.npy"), buf.getvalue())

    def finish(self, complete: bool = True, release: bool = True) -> None:
        """Stamp the end time (and ``complete``) into ``meta.json``, then (with ``release``) give up the lock."""
        self.meta["end_time"] = now()
        self.meta["complete"] = bool(complete)
        if self.path is not None:
            write_meta(self.path, self.meta)
        if release:
            self.release()

    def release(self) -> None:
        """Give up the run directory's lock; the writer writes nothing more. Safe to call twice."""
        if self._lock is not None:
            self._lock.release()

    def run(self) -> Run:
        """The current contents as an in-memory :class:`Run`."""
        return Run(self.meta, self.rows, self.metrics, self.metric_names, path=self.path, gradients=self.gradients,
                   sharpness=self.sharpness)



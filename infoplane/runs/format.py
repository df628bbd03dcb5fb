"""The on-disk format of a run directory: file names, the table's columns, and crash-safe reading and writing of
its files (``meta.json``, ``infoplane.csv``, ``metrics.csv``).

Crash safety: table rows are appended, flushed and fsynced one estimated batch at a time; whole-file rewrites
(``meta.json``, a CSV whose header grows, trimming on resume) go to a temporary file that replaces the old one
with ``os.replace``. A process killed at any moment therefore leaves valid files; at worst the last CSV line is
cut short, and readers drop such a line. Nothing is pickled: JSON, CSV and ``.npz`` (numpy arrays) only.

Which files of a directory are infoplane's, and when they may be deleted, is decided in :mod:`infoplane.runs.lifecycle`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from datetime import datetime, timezone
from typing import Any, Collection, Iterable, NamedTuple, Optional, Sequence, Union

#: A file's path, as every function here takes it.
PathLike = Union[str, os.PathLike]

__all__ = ["Row", "FIELDS", "VALUES", "META", "TABLE", "METRICS", "ACTIVATIONS", "STATE", "LOCK", "FORMAT", "CORRUPTION",
           "save_corruption", "read_corruption",
           "FORMAT_VERSION", "NotARunError", "read_meta", "write_meta", "read_table", "read_metrics",
           "atomic_write_bytes", "write_csv", "append_csv", "read_csv", "read_rows", "format_row", "parse_row", "now"]

META, TABLE, METRICS, ACTIVATIONS = "meta.json", "infoplane.csv", "metrics.csv", "activations"
STATE = "train_state.pt"   # the CLI's training checkpoint; a finished run keeps its last one (to train on)
CORRUPTION = "corruption.npz"  # what a corrupted data set's draw was: the redrawn samples and the labels
LOCK = ".infoplane.lock"   # held by the one process writing the run
FORMAT = "infoplane-run"   # meta.json["format"]: the marker that makes a directory an infoplane run
# 2: optional columns ixt_se, ity_se, ity_null, ity_null_sd. Version-1 tables (without them) are still read.
# 3: the column target (empty for the labels Y, else the name of the side variable Z whose I(T;Z) the row's ity
#    holds). Tables of versions 1 and 2 (without it) are still read, every row about the labels. Also from 3:
#    an optional sharpness.csv beside the table (runs without it read as having no sharpness).
FORMAT_VERSION = 3

VALUES = ("ixt", "ity", "ixt_lower", "ity_lower", "ixt_se", "ity_se", "ity_null", "ity_null_sd")
FIELDS = ("seed", "fraction", "epoch", "layer", "estimator") + VALUES + ("target",)
_FIELDS_V2 = FIELDS[:13]
_FIELDS_V1 = FIELDS[:9]


class Row(NamedTuple):
    """One line of ``infoplane.csv``; absent values are NaN (an empty cell), an absent fraction is None.

    The fields are :data:`FIELDS` in order; estimates are in bits. The columns that version-1 tables lack
    default to NaN. ``target`` is empty for the labels Y; otherwise the row's ``ity`` (and ``ity_*``) hold
    I(T;Z) for the named side variable Z, and its ``ixt`` the layer's I(X;T) as in the labels' row.
    """
    seed: int
    fraction: Optional[float]
    epoch: int
    layer: str
    estimator: str
    ixt: float
    ity: float
    ixt_lower: float
    ity_lower: float
    ixt_se: float = math.nan
    ity_se: float = math.nan
    ity_null: float = math.nan
    ity_null_sd: float = math.nan
    target: str = ""


class NotARunError(ValueError, FileNotFoundError):
    """A path that holds no infoplane run (a ValueError, and a FileNotFoundError when ``meta.json`` is absent
    or foreign, as earlier versions raised)."""


def now() -> str:
    """Current UTC time as an ISO 8601 string (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
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


def write_csv(path: PathLike, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Atomically replace ``path`` with a CSV of ``header`` and ``rows`` (lists of strings)."""
    atomic_write_bytes(path, _csv_text([header, *rows]).encode())


def append_csv(path: PathLike, rows: Iterable[Sequence[str]]) -> None:
    """Append rows to an existing CSV, then flush and fsync."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(_csv_text(rows))
        f.flush()
        os.fsync(f.fileno())


def read_csv(path: PathLike) -> tuple[Optional[list[str]], list[list[str]]]:
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


def format_number(x: float) -> str:
    """A float as a round-trip exact string; NaN becomes the empty cell."""
    x = float(x)
    return "" if math.isnan(x) else repr(x)


def _parse_num(s):
    return math.nan if s == "" else float(s)


def format_row(row: Row) -> list[str]:
    """A :class:`Row` as CSV cells."""
    frac = "" if row.fraction is None else repr(float(row.fraction))
    return [str(int(row.seed)), frac, str(int(row.epoch)), row.layer, row.estimator,
            *(format_number(getattr(row, v)) for v in VALUES), row.target]


def parse_row(cells: Sequence[str]) -> Row:
    """CSV cells of ``infoplane.csv`` as a :class:`Row` (the cells of any format version's header, in order)."""
    seed, frac, epoch, layer, est, *rest = cells
    vals, target = (rest[:-1], rest[-1]) if len(rest) == len(VALUES) + 1 else (rest, "")
    return Row._make([int(seed), None if frac == "" else float(frac), int(epoch), layer, est,
                      *map(_parse_num, vals), *[math.nan] * (len(VALUES) - len(vals)), target])


def read_rows(path: PathLike, fields: tuple, *older: tuple) -> list[list[str]]:
    """The complete lines of a CSV whose header is ``fields`` (or one of the ``older`` headers it still reads), as
    cells; none when the file is absent. Another header is an error naming the expected one."""
    header, rows = read_csv(path)
    if header is None:
        return []
    if tuple(header) not in (fields, *older):
        raise ValueError(f"{path}: unexpected header {header}; expected {list(fields)}")
    return rows


def read_table(path: PathLike) -> list[Row]:
    """All complete rows of an ``infoplane.csv`` as :class:`Row` tuples."""
    return [parse_row(r) for r in read_rows(path, FIELDS, _FIELDS_V2, _FIELDS_V1)]


def read_metrics(path: PathLike) -> tuple[list[str], dict]:
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


def read_meta(path: PathLike) -> dict:
    """The ``meta.json`` of a run directory as a dict.

    Raises
    ------
    NotARunError
        ``path`` has no ``meta.json``, or one that infoplane did not write (no format marker).
    """
    path = os.fspath(path)
    meta_path = os.path.join(path, META)
    if not os.path.isfile(meta_path):
        raise NotARunError(f"{path!r} is not an infoplane run directory: it has no {META}")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotARunError(f"{meta_path} cannot be read as JSON ({err}); it is not an infoplane run") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        marker = meta.get("format") if isinstance(meta, dict) else None
        raise NotARunError(f"{meta_path} was not written by infoplane (format marker {marker!r}, expected "
                           f"{FORMAT!r})")
    return meta


# A top-level value of meta.json whose one-line form is longer than this is written on one line (the seeds' splits:
# tens of thousands of row numbers). Indented JSON is rendered by Python's pure-Python encoder, one line per
# number, which took about 0.1 s per write for 20 seeds of 4096 rows; one line is the C encoder's.
_ONE_LINE_CHARS = 4096


def render_meta(meta: dict) -> str:
    """The text of ``meta.json``: an indented object, with each very long top-level value on one line."""
    items = []
    for key, value in meta.items():
        text = json.dumps(value, allow_nan=False)
        if len(text) <= _ONE_LINE_CHARS:
            text = json.dumps(value, indent=2, allow_nan=False).replace("\n", "\n  ")
        items.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(items) + "\n}\n" if items else "{}\n"


def write_meta(path: PathLike, meta: dict) -> None:
    """Atomically write ``meta.json`` into the run directory ``path``."""
    atomic_write_bytes(os.path.join(path, META), render_meta(meta).encode())


def complete_epochs(rows: Iterable[Row], seeds: Collection[int], layers: Collection[str],
                    estimators: Collection[str], targets: Optional[dict] = None) -> set[int]:
    """Epochs whose table holds a row for every (seed, layer, estimator) of the labels ("" target), and for every
    side variable of ``targets`` (name -> the estimator names that measure it) a row for each of its estimators."""
    pairs = {("", e) for e in estimators} | {(t, e) for t, ests in (targets or {}).items() for e in ests}
    need = len(seeds) * len(layers) * len(pairs)
    wanted = set(seeds), set(layers)
    seen: dict[int, set[tuple[int, str, str, str]]] = {}
    for r in rows:
        if r.seed in wanted[0] and r.layer in wanted[1] and (r.target, r.estimator) in pairs:
            seen.setdefault(r.epoch, set()).add((r.seed, r.layer, r.estimator, r.target))
    return {e for e, s in seen.items() if len(s) == need}


def json_ok(value: Any) -> bool:
    """Whether ``value`` can be written to JSON as it is (no NaN, no objects JSON does not know)."""
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def jsonable(x: Any) -> Any:
    """``x`` as it will read back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(x))




_CORRUPTION_ARRAYS = ("corrupted", "labels", "clean_labels")  # every corruption.npz holds these
_CORRUPTION_OPTIONAL = ("seeds", "feature_order")  # files of per-seed draws: the seeds; a shuffle's orders


def save_corruption(path: PathLike, arrays: dict) -> None:
    """Write ``corruption.npz`` into the run directory ``path``, or check the one already there.

    Parameters
    ----------
    path : str or os.PathLike
        The run directory (its lock held by the caller).
    arrays : dict
        One draw per seed, over every sample of the data set in its order: ``seeds`` (``[S]``), ``corrupted``
        (bool ``[S, N]``: the samples whose label was redrawn), ``labels`` (``[S, N]``, the labels each seed
        trained on), ``clean_labels`` (``[N]``) and optionally ``feature_order`` (``[S, D]``, each seed's
        order of the features).

    Raises
    ------
    ValueError
        A resumed run whose stored draws differ from ``arrays`` (any seed's).
    """
    import numpy as np

    file = os.path.join(path, CORRUPTION)
    names = [k for k in (*_CORRUPTION_ARRAYS, *_CORRUPTION_OPTIONAL) if k in arrays]
    if os.path.exists(file):
        with np.load(file, allow_pickle=False) as data:
            old = {k: data[k] for k in data.files}
        same = set(old) == set(names) and all(np.array_equal(old[k], np.asarray(arrays[k])) for k in names)
        if not same:
            raise ValueError(f"{file} holds other draws of the corrupted data than these (one per seed); resume with "
                             f"the same corruption options and seeds, or start the run again (overwrite)")
        return
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(arrays[k]) for k in names})  # type: ignore[arg-type]
    atomic_write_bytes(file, buf.getvalue())


def read_corruption(path: PathLike, seeds: Optional[Sequence[int]] = None) -> Optional[dict]:
    """The draws of a run's ``corruption.npz`` (see :func:`save_corruption`), one row per seed, or None when it
    has none.

    Parameters
    ----------
    path : str or os.PathLike
        The run directory.
    seeds : sequence of int, optional
        The run's seeds, for a file of an earlier release, which holds one draw shared by every seed
        (``corrupted`` and ``labels`` of shape ``[N]``): that draw is returned as every seed's row.

    Returns
    -------
    dict or None
        ``seeds`` ``[S]``, ``corrupted`` ``[S, N]``, ``labels`` ``[S, N]``, ``clean_labels`` ``[N]`` and, where
        stored, ``feature_order`` ``[S, D]``.
    """
    import numpy as np

    file = os.path.join(path, CORRUPTION)
    if not os.path.exists(file):
        return None
    with np.load(file, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    if "seeds" not in out:  # one draw shared by every seed (earlier releases)
        if seeds is None:
            raise ValueError(f"{file} holds one draw shared by every seed (an earlier release's format); pass the "
                             f"run's seeds to read it per seed")
        count = len(seeds)
        out["seeds"] = np.asarray(list(seeds), dtype=np.int64)
        for k in ("corrupted", "labels"):
            out[k] = np.broadcast_to(out[k], (count, *out[k].shape)).copy()
    return out
# ---------------------------------------------------------------------------------------------------- sharpness.csv
# One line per (seed, epoch, measure): the value and the diagnostics the measure gives. An empty cell means the
# measure does not give that column; a computed NaN is written "nan", so the two are never confused.

SHARPNESS = "sharpness.csv"
#: Columns of ``sharpness.csv``: keys, the value, then diagnostics (loss units unless said otherwise).
SHARPNESS_FIELDS = ("seed", "epoch", "measure", "value", "loss", "rho", "one_step", "stderr", "samples",
                    "iterations", "evaluations", "converged")
_SHARPNESS_COUNTS = ("samples", "iterations", "evaluations")

__all__ += ["SHARPNESS", "SHARPNESS_FIELDS", "SharpnessRow", "format_sharpness_row", "parse_sharpness_row",
            "read_sharpness"]


class SharpnessRow(NamedTuple):
    """One line of ``sharpness.csv``; a diagnostic the measure does not give is None.

    ``value``, ``loss``, ``one_step`` and ``stderr`` are in loss units (``value`` of the Hessian measures in loss
    units per squared parameter unit); ``rho`` in parameter units (ASAM's: relative); ``samples``,
    ``iterations`` and ``evaluations`` are counts; ``converged`` a bool.
    """
    seed: int
    epoch: int
    measure: str
    value: float
    loss: Optional[float] = None
    rho: Optional[float] = None
    one_step: Optional[float] = None
    stderr: Optional[float] = None
    samples: Optional[int] = None
    iterations: Optional[int] = None
    evaluations: Optional[int] = None
    converged: Optional[bool] = None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))  # NaN is written "nan", never as an empty cell


def format_sharpness_row(row: SharpnessRow) -> list[str]:
    """A :class:`SharpnessRow` as CSV cells."""
    return [str(int(row.seed)), str(int(row.epoch)), row.measure] + [_cell(getattr(row, f))
                                                                     for f in SHARPNESS_FIELDS[3:]]


def parse_sharpness_row(cells: Sequence[str]) -> SharpnessRow:
    """CSV cells of ``sharpness.csv`` as a :class:`SharpnessRow`."""
    seed, epoch, measure, *rest = cells
    values: list[Any] = []
    for name, text in zip(SHARPNESS_FIELDS[3:], rest):
        if text == "":
            values.append(None)
        elif name == "converged":
            values.append(text == "true")
        elif name in _SHARPNESS_COUNTS:
            values.append(int(text))
        else:
            values.append(float(text))
    if values[0] is None:
        raise ValueError(f"a sharpness line has no value: {list(cells)}")
    return SharpnessRow(int(seed), int(epoch), measure, *values)


def read_sharpness(path: PathLike) -> list[SharpnessRow]:
    """All complete lines of a ``sharpness.csv`` (none when the file is absent, as in runs before version 3)."""
    return [parse_sharpness_row(r) for r in read_rows(path, SHARPNESS_FIELDS)]

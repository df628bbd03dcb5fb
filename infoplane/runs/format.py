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

__all__ = ["Row", "FIELDS", "VALUES", "META", "TABLE", "METRICS", "ACTIVATIONS", "STATE", "LOCK", "FORMAT",
           "FORMAT_VERSION", "NotARunError", "read_meta", "write_meta", "read_table", "read_metrics",
           "atomic_write_bytes", "write_csv", "append_csv", "read_csv", "format_row", "parse_row", "now"]

META, TABLE, METRICS, ACTIVATIONS = "meta.json", "infoplane.csv", "metrics.csv", "activations"
STATE = "train_state.pt"   # the CLI's training checkpoint; a finished run keeps its last one (to train on)
LOCK = ".infoplane.lock"   # held by the one process writing the run
FORMAT = "infoplane-run"   # meta.json["format"]: the marker that makes a directory an infoplane run
# 2: optional columns ixt_se, ity_se, ity_null, ity_null_sd. Version-1 tables (without them) are still read.
FORMAT_VERSION = 2

VALUES = ("ixt", "ity", "ixt_lower", "ity_lower", "ixt_se", "ity_se", "ity_null", "ity_null_sd")
FIELDS = ("seed", "fraction", "epoch", "layer", "estimator") + VALUES
_FIELDS_V1 = FIELDS[:9]


class Row(NamedTuple):
    """One line of ``infoplane.csv``; absent values are NaN (an empty cell), an absent fraction is None.

    The fields are :data:`FIELDS` in order; estimates are in bits. The columns that version-1 tables lack
    default to NaN.
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
    return [str(int(row.seed)), frac, str(int(row.epoch)), row.layer, row.estimator, *(format_number(getattr(row, v))
                                                                                         for v in VALUES)]


def parse_row(cells: Sequence[str]) -> Row:
    """CSV cells of ``infoplane.csv`` as a :class:`Row`."""
    seed, frac, epoch, layer, est, *vals = cells
    return Row(int(seed), None if frac == "" else float(frac), int(epoch), layer, est, *map(_parse_num, vals))


def read_table(path: PathLike) -> list[Row]:
    """All complete rows of an ``infoplane.csv`` as :class:`Row` tuples."""
    header, rows = read_csv(path)
    if header is None:
        return []
    if tuple(header) not in (FIELDS, _FIELDS_V1):
        raise ValueError(f"{path}: unexpected header {header}; expected {list(FIELDS)}")
    return [parse_row(r) for r in rows]


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


def write_meta(path: PathLike, meta: dict) -> None:
    """Atomically write ``meta.json`` into the run directory ``path``."""
    atomic_write_bytes(os.path.join(path, META), (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode())


def complete_epochs(rows: Iterable[Row], seeds: Collection[int], layers: Collection[str],
                    estimators: Collection[str]) -> set[int]:
    """Epochs whose table holds a row for every (seed, layer, estimator)."""
    need = len(seeds) * len(layers) * len(estimators)
    wanted = set(seeds), set(layers), set(estimators)
    seen: dict[int, set[tuple[int, str, str]]] = {}
    for r in rows:
        if r.seed in wanted[0] and r.layer in wanted[1] and r.estimator in wanted[2]:
            seen.setdefault(r.epoch, set()).add((r.seed, r.layer, r.estimator))
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



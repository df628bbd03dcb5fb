"""Which epochs a tracker records.

A :class:`Schedule` answers ``epoch in schedule`` in constant time, lists its epochs when it is finite, and
round-trips through JSON (``to_json`` / :func:`from_json`) so that ``meta.json`` says exactly what was recorded.
"""
from __future__ import annotations

import json

import numpy as np

__all__ = ["Schedule", "log_schedule", "every", "saxe_schedule", "as_schedule", "from_json"]


class Schedule:
    """A set of epochs (0-based) at which the information plane is recorded.

    Build one with :func:`log_schedule`, :func:`every`, :func:`saxe_schedule` or :func:`as_schedule`.

    Parameters
    ----------
    kind : str
        ``"log"``, ``"every"``, ``"saxe"`` or ``"list"``.
    params : dict
        The JSON-able arguments that rebuild the schedule.
    epochs : ndarray of int64 or None
        Sorted distinct epochs when the schedule is finite, None when it is open-ended.
    rule : callable or None
        Membership test for open-ended (and rule-based) schedules.
    """

    def __init__(self, kind, params, epochs=None, rule=None):
        self.kind = kind
        self.params = dict(params)
        self._rule = rule
        if epochs is not None:
            epochs = np.unique(np.asarray(epochs, dtype=np.int64))
            epochs.flags.writeable = False  # np.asarray(schedule) hands this array out
            self._set = frozenset(epochs.tolist())
        else:
            self._set = None
        self._epochs = epochs

    @property
    def epochs(self):
        """Sorted distinct epochs (int64 array). Raises ValueError for an open-ended schedule."""
        if self._epochs is None:
            raise ValueError(f"the schedule {self!r} has no last epoch; give n_epochs to list its epochs")
        return self._epochs

    @property
    def finite(self):
        """True when the schedule lists a fixed set of epochs."""
        return self._epochs is not None

    def __contains__(self, epoch):
        try:
            epoch = int(epoch)
        except (TypeError, ValueError):
            return False
        if self._set is not None:
            return epoch in self._set
        return epoch >= 0 and self._rule(epoch)

    def __iter__(self):
        return iter(self.epochs.tolist())

    def __len__(self):
        return len(self.epochs)

    def __array__(self, dtype=None, copy=None):
        return self.epochs if dtype is None else self.epochs.astype(dtype)

    def __eq__(self, other):
        return isinstance(other, Schedule) and self.to_json() == other.to_json()

    def __hash__(self):
        return hash(json.dumps(self.to_json(), sort_keys=True))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "epochs")
        if self.kind == "list":
            args = f"{len(self._epochs)} epochs"
        return f"Schedule({self.kind}: {args})"

    def to_json(self):
        """JSON-able dict; :func:`from_json` rebuilds the schedule from it."""
        return {"kind": self.kind, **self.params}


def _check_count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def log_schedule(n_epochs, n_points):
    """Roughly log-spaced epochs, exactly as Shwartz-Ziv & Tishby's code picks them.

    The epochs are ``unique(int(logspace(log2 1, log2 n_epochs, n_points, base=2))) - 1``: dense early in
    training, sparse later. Rounding merges the early points, so there are fewer than ``n_points`` epochs
    (274 for ``log_schedule(8000, 400)``). Truncation can also turn the last point into ``n_epochs - 2``
    (e.g. for 100 or 10000 epochs), exactly as in the original code.

    Parameters
    ----------
    n_epochs : int
        Number of training epochs; the last recorded epoch is ``n_epochs - 1``.
    n_points : int
        Number of log-spaced points before rounding.

    Returns
    -------
    Schedule
    """
    n_epochs = _check_count(n_epochs, "n_epochs")
    n_points = _check_count(n_points, "n_points")
    points = np.logspace(np.log2(1), np.log2(n_epochs), n_points, base=2)
    epochs = np.unique(points.astype(np.int64)) - 1
    return Schedule("log", {"n_epochs": n_epochs, "n_points": n_points}, epochs=epochs)


def every(k, n_epochs=None):
    """Every ``k``-th epoch: 0, k, 2k, ...

    Parameters
    ----------
    k : int
        Step between recorded epochs (1 = every epoch).
    n_epochs : int or None
        Number of training epochs; None leaves the schedule open-ended.

    Returns
    -------
    Schedule
    """
    k = _check_count(k, "k")
    if n_epochs is None:
        return Schedule("every", {"k": k, "n_epochs": None}, rule=lambda e: e % k == 0)
    n_epochs = _check_count(n_epochs, "n_epochs")
    return Schedule("every", {"k": k, "n_epochs": n_epochs}, epochs=np.arange(0, n_epochs, k))


def _saxe_rule(epoch):
    # Saxe et al.'s reporting rule: dense early, then coarser in three steps.
    if epoch < 20:
        return True
    if epoch < 100:
        return epoch % 5 == 0
    if epoch < 2000:
        return epoch % 20 == 0
    return epoch % 100 == 0


def saxe_schedule(n_epochs=None):
    """The epochs Saxe et al. (2018) record: every epoch below 20, every 5th below 100, every 20th below 2000,
    then every 100th.

    Parameters
    ----------
    n_epochs : int or None
        Number of training epochs; None leaves the schedule open-ended.

    Returns
    -------
    Schedule
    """
    if n_epochs is None:
        return Schedule("saxe", {"n_epochs": None}, rule=_saxe_rule)
    n_epochs = _check_count(n_epochs, "n_epochs")
    epochs = [e for e in range(n_epochs) if _saxe_rule(e)]
    return Schedule("saxe", {"n_epochs": n_epochs}, epochs=epochs)


def as_schedule(schedule):
    """Turn a schedule-like value into a :class:`Schedule`.

    Parameters
    ----------
    schedule : Schedule, sequence of int, range, 1-D integer array, or None
        None means every epoch (open-ended).

    Returns
    -------
    Schedule
    """
    if schedule is None:
        return every(1)
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, (str, bytes, dict)) or not hasattr(schedule, "__iter__"):
        raise TypeError(
            f"schedule must be a Schedule (log_schedule, every, saxe_schedule) or a list of epochs, "
            f"got {type(schedule).__name__}"
        )
    arr = np.asarray(list(schedule))
    if arr.size == 0:
        raise ValueError("schedule is empty: give at least one epoch to record")
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or np.all(np.mod(arr, 1) == 0)):
        raise ValueError("schedule must be a flat list of integer epochs")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"epochs must be >= 0, got {int(arr.min())}")
    epochs = np.unique(arr)
    return Schedule("list", {"epochs": epochs.tolist()}, epochs=epochs)


def from_json(d):
    """Rebuild a :class:`Schedule` from :meth:`Schedule.to_json` output.

    Parameters
    ----------
    d : dict
        Must hold ``"kind"`` and that kind's arguments.

    Returns
    -------
    Schedule
    """
    d = dict(d)
    kind = d.pop("kind", None)
    builders = {"log": log_schedule, "every": every, "saxe": saxe_schedule, "list": as_schedule}
    if kind not in builders:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {sorted(builders)}")
    if kind == "list":
        return as_schedule(d["epochs"])
    return builders[kind](**d)

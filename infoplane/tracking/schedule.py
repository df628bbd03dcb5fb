"""Which epochs a tracker records.

A :class:`Schedule` answers ``epoch in schedule`` in constant time, lists its epochs when it is finite, and
round-trips through JSON (``to_json`` / :func:`from_json`) so that ``meta.json`` says exactly what was recorded.

Epoch convention, everywhere in infoplane: epoch ``e`` is the network after ``e`` epochs of training, epoch 0 is
the initialisation, and every schedule built for an ``n``-epoch run (``n_epochs=n``) includes ``n``, the trained
network.
"""
from __future__ import annotations

import json
from typing import Callable, Iterable, Optional

import numpy as np

from infoplane._validate import check_int

__all__ = ["Schedule", "log_schedule", "every", "saxe_schedule", "as_schedule", "ending_at", "from_json", "extends",
           "extended"]


class Schedule:
    """A set of epochs at which the information plane is recorded (epoch e: after e epochs of training).

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

    def __init__(self, kind: str, params: dict, epochs: Iterable[int] | None = None,
                 rule: Callable[[int], bool] | None = None) -> None:
        self.kind = kind
        self.params = dict(params)
        self._rule = rule
        if epochs is not None:
            epochs = np.unique(np.asarray(epochs, dtype=np.int64))
            epochs.flags.writeable = False  # np.asarray(schedule) hands this array out
            self._set: Optional[frozenset[int]] = frozenset(epochs.tolist())
        else:
            self._set = None
        self._epochs = epochs

    @property
    def epochs(self) -> np.ndarray:
        """Sorted distinct epochs (int64 array). Raises ValueError for an open-ended schedule."""
        if self._epochs is None:
            raise ValueError(f"the schedule {self!r} has no last epoch; give n_epochs to list its epochs")
        return self._epochs

    @property
    def finite(self) -> bool:
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

    def to_json(self) -> dict:
        """JSON-able dict; :func:`from_json` rebuilds the schedule from it."""
        return {"kind": self.kind, **self.params}


def log_schedule(n_epochs: int, n_points: int) -> Schedule:
    """Roughly log-spaced epochs as Shwartz-Ziv & Tishby's code picks them, plus the final epoch.

    The epochs are ``unique(int(logspace(log2 1, log2 n_epochs, n_points, base=2))) - 1`` (dense early in
    training, sparse later), exactly as in the original code, and then ``n_epochs`` itself, so that the trained
    network is recorded. Rounding merges the early points, so there are fewer than ``n_points`` of the original
    epochs (274 for ``log_schedule(8000, 400)``, ending at 7999; with the final epoch 8000, 275). Truncation can
    make the last original point ``n_epochs - 2`` (e.g. for 100 or 10000 epochs), as in the original code.
    The original epochs are ``log_schedule(n, p).epochs[:-1]``: the final epoch is always new.

    Parameters
    ----------
    n_epochs : int
        Number of training epochs; the last recorded epoch is ``n_epochs`` (the trained network).
    n_points : int
        Number of log-spaced points before rounding.

    Returns
    -------
    Schedule
    """
    n_epochs = check_int(n_epochs, "n_epochs", minimum=1)
    n_points = check_int(n_points, "n_points", minimum=1)
    points = np.logspace(np.log2(1), np.log2(n_epochs), n_points, base=2)
    epochs = np.unique(points.astype(np.int64)) - 1
    return Schedule("log", {"n_epochs": n_epochs, "n_points": n_points}, epochs=np.append(epochs, n_epochs))


def every(k: int, n_epochs: int | None = None) -> Schedule:
    """Every ``k``-th epoch: 0, k, 2k, ..., and ``n_epochs`` when it is given.

    Parameters
    ----------
    k : int
        Step between recorded epochs (1 = every epoch).
    n_epochs : int or None
        Number of training epochs: the schedule lists 0, k, 2k, ... up to ``n_epochs`` and always ends with
        ``n_epochs`` (the trained network), e.g. ``every(3, 10)`` is 0, 3, 6, 9, 10. None leaves it open-ended.

    Returns
    -------
    Schedule
    """
    k = check_int(k, "k", minimum=1)
    if n_epochs is None:
        return Schedule("every", {"k": k, "n_epochs": None}, rule=lambda e: e % k == 0)
    n_epochs = check_int(n_epochs, "n_epochs", minimum=1)
    return Schedule("every", {"k": k, "n_epochs": n_epochs}, epochs=np.append(np.arange(0, n_epochs + 1, k), n_epochs))


def _saxe_rule(epoch: int) -> bool:
    # Saxe et al.'s reporting rule: dense early, then coarser in three steps.
    if epoch < 20:
        return True
    if epoch < 100:
        return epoch % 5 == 0
    if epoch < 2000:
        return epoch % 20 == 0
    return epoch % 100 == 0


def saxe_schedule(n_epochs: int | None = None) -> Schedule:
    """The epochs Saxe et al. (2018) record: every epoch below 20, every 5th below 100, every 20th below 2000,
    then every 100th.

    Parameters
    ----------
    n_epochs : int or None
        Number of training epochs: the schedule covers 0 .. ``n_epochs`` and always ends with ``n_epochs`` (the
        trained network). None leaves it open-ended.

    Returns
    -------
    Schedule
    """
    if n_epochs is None:
        return Schedule("saxe", {"n_epochs": None}, rule=_saxe_rule)
    n_epochs = check_int(n_epochs, "n_epochs", minimum=1)
    epochs = [e for e in range(n_epochs + 1) if _saxe_rule(e)] + [n_epochs]
    return Schedule("saxe", {"n_epochs": n_epochs}, epochs=epochs)


def as_schedule(schedule: Schedule | Iterable[int] | None) -> Schedule:
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


def from_json(d: dict) -> Schedule:
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
    builders: dict[str, Callable[..., Schedule]] = {"log": log_schedule, "every": every, "saxe": saxe_schedule,
                                                    "list": as_schedule}
    if kind not in builders:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {sorted(builders)}")
    if kind == "list":
        return as_schedule(d["epochs"])
    return builders[kind](**d)


def ending_at(schedule: Schedule | Iterable[int] | None, n_epochs: int) -> Schedule:
    """The schedule for an ``n_epochs``-epoch run: its epochs up to ``n_epochs``, always including ``n_epochs``.

    A schedule that already lists exactly that (e.g. ``log_schedule(n_epochs, p)``) comes back unchanged, so
    ``meta.json`` keeps its kind; otherwise the result is a list schedule. This is how a trainer makes sure the
    trained network (epoch ``n_epochs``) is recorded whatever schedule it was given.

    Parameters
    ----------
    schedule : Schedule, sequence of int or None
        As for :func:`as_schedule` (None: every epoch).
    n_epochs : int
        Number of training epochs (>= 0).

    Returns
    -------
    Schedule
    """
    schedule = as_schedule(schedule)
    n_epochs = check_int(n_epochs, "n_epochs", minimum=0)
    if schedule.finite and n_epochs in schedule and schedule.epochs[-1] == n_epochs:
        return schedule
    if schedule.finite:
        epochs = [e for e in schedule.epochs.tolist() if e <= n_epochs]
    else:
        epochs = [e for e in range(n_epochs + 1) if e in schedule]
    return as_schedule(epochs + [n_epochs])


def extends(new: Schedule, old: Schedule) -> bool:
    """Whether ``new`` continues ``old`` to later epochs: both finite, ``new`` lists exactly ``old``'s epochs up to
    ``old``'s last one, then at least one later epoch. A resumed run may take such a schedule (it was trained
    further); its rows so far stay valid.

    Parameters
    ----------
    new, old : Schedule

    Returns
    -------
    bool
    """
    if not (new.finite and old.finite) or len(old.epochs) == 0:
        return False
    last = old.epochs[-1]
    return bool(new.epochs[-1] > last and np.array_equal(new.epochs[new.epochs <= last], old.epochs))


def extended(old: Schedule, new: Schedule, after: int) -> Schedule:
    """``old``'s epochs up to ``after``, then ``new``'s later ones: the schedule of a finished ``after``-epoch run
    trained on to ``new``'s last epoch (a list schedule, which :func:`extends` ``old`` cut at ``after``).

    Parameters
    ----------
    old : Schedule
        The schedule the run was recorded with (finite).
    new : Schedule
        The schedule asked for now (finite), ending with the new last epoch.
    after : int
        The run's epochs so far.

    Returns
    -------
    Schedule
    """
    after = check_int(after, "after", minimum=0)
    return as_schedule([e for e in old.epochs.tolist() if e <= after] + [e for e in new.epochs.tolist() if e > after])

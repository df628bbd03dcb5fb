"""Tracking under ``torch.distributed``: every rank probes a shard of the probe set, rank 0 estimates and writes.

When a process group is initialised (:func:`active`), :class:`~infoplane.Tracker` hands its probe passes to a
:class:`Sharded` context:

- each rank probes its contiguous shard of the probe set (:func:`shard_range`; shard sizes differ by at most one);
- the activations of every layer and model are gathered to rank 0 in probe order, unequal shards padded to the
  largest and trimmed again (:func:`gather_rows`), so rank 0 holds exactly what a single process would probe;
- rank 0 estimates and writes the run directory; the other ranks open no run directory, take no lock and write
  nothing; they learn from rank 0 which epochs a resumed run already holds, so every rank skips the same epochs.

The tracker's traffic runs on its own gloo group (CPU tensors, any default backend, NCCL included) created with
the tracker's ``dist_timeout``: a rank that skips a collective ``step()`` makes the others fail after that many
seconds with a :class:`DistributedStepError` naming the epoch, instead of hanging.

``DistributedDataParallel`` (and ``DataParallel``) wrappers are unwrapped before probing (:func:`unwrap`): the
probe runs the wrapped module directly, so it starts no collective of DDP's own and works on shards of any size.
Layer names may be given with or without the wrapper's ``module.`` prefix and are recorded without it.
"""
from __future__ import annotations

import datetime
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from infoplane._validate import check_float

__all__ = ["active", "shard_range", "unwrap", "strip_prefix", "Sharded", "DistributedStepError",
           "REDUCTIONS", "DEFAULT_TIMEOUT"]

#: Ways to combine the metrics that the ranks pass to ``step()``: None takes rank 0's values.
REDUCTIONS = (None, "mean")

#: Seconds a rank waits for the others in a tracker collective (must exceed rank 0's longest estimation).
DEFAULT_TIMEOUT = 600.0

_PREFIX = "module."


class DistributedStepError(RuntimeError):
    """A tracker collective did not complete: a rank skipped ``step()``, called it late, or died."""


def active() -> bool:
    """Whether a default ``torch.distributed`` process group is initialised in this process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous shard ``[start, stop)`` of ``n`` probe samples for ``rank`` out of ``world_size``.

    The first ``n % world_size`` ranks take one sample more than the others; a rank may get an empty shard
    when ``n < world_size``.

    Parameters
    ----------
    n : int
        Probe samples.
    rank, world_size : int

    Returns
    -------
    (int, int)
        Start (inclusive) and stop (exclusive) indices.
    """
    if world_size < 1 or not 0 <= rank < world_size or n < 0:
        raise ValueError(f"need 0 <= rank < world_size and n >= 0; got n={n}, rank={rank}, world_size={world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _is_wrapper(model) -> bool:
    return isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (the model itself otherwise).

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    nn.Module
    """
    while _is_wrapper(model):
        model = model.module
    return model


def strip_prefix(layers: Any, model: nn.Module) -> Any:
    """Layer selectors of a wrapped model with the wrapper's ``module.`` prefix removed.

    Parameters
    ----------
    layers : None, str, type or list of str / type
        As for :class:`~infoplane.Tracker`.
    model : nn.Module
        The model as the user passed it (wrapped or not).

    Returns
    -------
    The selectors for :func:`unwrap` (model): unchanged for an unwrapped model, and for names the inner model
    itself has (a child really called ``module``).
    """
    if layers is None or not _is_wrapper(model):
        return layers
    inner = dict(unwrap(model).named_modules())

    def strip(sel):
        while isinstance(sel, str) and sel.startswith(_PREFIX) and sel not in inner:
            sel = sel[len(_PREFIX):]
        return sel

    if isinstance(layers, (str, type)):
        return strip(layers)
    return [strip(s) for s in layers]


class Sharded:
    """One tracker's share of a ``torch.distributed`` job (create it on every rank: it is a collective).

    Parameters
    ----------
    n : int
        Probe samples (the whole probe set, identical on every rank).
    layers : list of infoplane.capture.hooks.Layer
        The resolved layers.
    n_models : int
        Models (seeds) tracked side by side.
    timeout : float
        Seconds a collective waits before :class:`DistributedStepError`.
    reduce_metrics : None or "mean"
        None: the metrics stored are rank 0's; ``"mean"``: the mean over ranks.
    """

    def __init__(self, n: int, layers: Sequence, n_models: int, timeout: float = DEFAULT_TIMEOUT,
                 reduce_metrics: Optional[str] = None):
        check_options(timeout, reduce_metrics)
        # What a rank with an empty shard (fewer probe samples than ranks) contributes.
        self._empty = [{l.name: torch.zeros(0, l.width) for l in layers} for _ in range(n_models)]
        dist = torch.distributed
        self.timeout = float(timeout)
        self.reduce_metrics = reduce_metrics
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())
        # A group of our own: gloo moves CPU tensors under any default backend, and its timeout is ours.
        self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=self.timeout))
        self.sizes = [b - a for a, b in (shard_range(n, r, self.world_size) for r in range(self.world_size))]
        self.start, self.stop = shard_range(n, self.rank, self.world_size)

    @property
    def is_writer(self) -> bool:
        """Whether this rank estimates and writes (rank 0)."""
        return self.rank == 0

    # --------------------------------------------------------------------------------------- collectives
    def _collective(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as err:  # gloo timeouts and closed connections (DistBackendError is one)
            raise DistributedStepError(
                f"infoplane Tracker on rank {self.rank}/{self.world_size}: {what} did not complete within "
                f"dist_timeout={self.timeout:g} s ({type(err).__name__}: {str(err)[:300]}). Tracker.step() is a "
                f"collective: every rank must call it with the same epochs (an unscheduled epoch returns at "
                f"once without communicating). Make sure no rank skips or branches around step() (e.g. `if rank == 0: "
                f"tracker.step(...)`), and raise dist_timeout= if rank 0's estimation takes longer than that"
            ) from err

    def agree(self, what: str, value: Any) -> None:
        """Check that every rank holds the same ``value`` (JSON-like); raise on every rank if not."""
        values = [None] * self.world_size
        self._collective(f"the check that all ranks agree on {what}", torch.distributed.all_gather_object,
                         values, value, group=self.group)
        bad = [r for r, v in enumerate(values) if v != values[0]]
        if bad:
            raise ValueError(f"infoplane Tracker: ranks disagree on {what}: rank 0 has {values[0]!r}, rank {bad[0]} "
                             f"has {values[bad[0]]!r}. Construct the Tracker with the same model architecture, "
                             f"probe set, layers, estimators, schedule and seeds on every rank (each rank probes "
                             f"its own shard of the full probe set)")

    def broadcast(self, what: str, value: Any = None) -> Any:
        """Rank 0's ``value`` on every rank (pickled)."""
        box = [value]
        self._collective(what, torch.distributed.broadcast_object_list, box, src=0, group=self.group)
        return box[0]

    def open_writer(self, make: Callable[[bool], Any]) -> Any:
        """``make(on_rank_0)`` on every rank; an error on rank 0 (a locked or mismatched run directory) is
        raised on every rank instead of leaving the others waiting."""
        writer, failure = None, None
        if self.is_writer:
            try:
                writer = make(True)
            except Exception as err:
                failure = err
        message = self.broadcast("opening the run directory on rank 0",
                                 None if failure is None else f"{type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        if message is not None:
            raise RuntimeError(f"rank 0 could not open the run directory: {message}")
        return writer if self.is_writer else make(False)

    def record(self, epoch: int, capture: Callable[[int], Any], metrics: list[dict],
               devices: Sequence) -> tuple[Optional[list], list]:
        """One recorded epoch (a collective): probe this rank's shard, gather the activations to rank 0.

        Parameters
        ----------
        epoch : int
        capture : callable
            ``capture(epoch)`` -> per model, layer name -> activations ``[shard, d]`` of this rank's shard.
        metrics : list of dict
            Per model, metric name -> value, as this rank passed them.
        devices : list of torch.device
            Per model, where rank 0 keeps the gathered activations.

        Returns
        -------
        per_seed : list of dict or None
            On rank 0, per model, layer name -> activations ``[N, d]`` of the whole probe set in probe order;
            None on the other ranks.
        metrics : list of dict
            Rank 0's metrics, or their mean over ranks with ``reduce_metrics="mean"``.
        """
        try:
            local, error = (capture(epoch) if self.stop > self.start else self._empty), None
        except (ValueError, TypeError) as err:  # e.g. non-finite activations in this rank's shard
            local, error = None, f"{type(err).__name__}: {err}"
        names = sorted({k for m in metrics for k in m})
        header: list[Any] = [None] * self.world_size
        self._collective(f"step(epoch={epoch})", torch.distributed.all_gather_object, header,
                         (int(epoch), names, error), group=self.group)
        epochs = [h[0] for h in header]
        if len(set(epochs)) > 1:
            raise ValueError("infoplane Tracker: the ranks called step() with different epochs ("
                             + ", ".join(f"rank {r}: {e}" for r, e in enumerate(epochs)) + "); every rank must "
                             "call step() with the same epochs in the same order")
        failed = [(r, h[2]) for r, h in enumerate(header) if h[2] is not None]
        if failed:
            raise ValueError(f"rank {failed[0][0]} failed to probe its shard at epoch {epoch}: {failed[0][1]}")
        if self.reduce_metrics == "mean":
            if any(h[1] != names for h in header):
                raise ValueError(f"reduce_metrics='mean' needs the same metric names on every rank at epoch "
                                 f"{epoch}; got " + ", ".join(f"rank {r}: {h[1]}" for r, h in enumerate(header)))
            metrics = self._mean(epoch, metrics, names)
        return self._gather(epoch, local, devices), metrics

    def _mean(self, epoch, metrics, names):
        if not names:
            return metrics
        values = torch.tensor([[m.get(k, float("nan")) for k in names] for m in metrics], dtype=torch.float64)
        self._collective(f"the metrics mean at step(epoch={epoch})", torch.distributed.all_reduce, values,
                         group=self.group)
        values /= self.world_size
        return [{k: v for k, v in zip(names, row) if k in m} for m, row in zip(metrics, values.tolist())]

    def _gather(self, epoch, local, devices):
        # One message per epoch: every layer of every model side by side, [shard, sum of widths].
        layers = list(local[0])
        widths = [local[0][k].shape[1] for k in layers]
        flat = torch.cat([acts[k].to("cpu", torch.float32) for acts in local for k in layers], dim=1)
        width = flat.shape[1]
        padded = torch.zeros(max(self.sizes), width, dtype=torch.float32)
        padded[: flat.shape[0]] = flat
        parts = [torch.empty_like(padded) for _ in self.sizes] if self.is_writer else None
        self._collective(f"gathering activations at step(epoch={epoch})", torch.distributed.gather, padded,
                         parts, dst=0, group=self.group)
        if not self.is_writer:
            return None
        full = torch.cat([p[:s] for p, s in zip(parts, self.sizes)])
        out, col = [], 0
        for device in devices:
            acts = {}
            for k, w in zip(layers, widths):
                acts[k] = full[:, col:col + w].to(device)
                col += w
            out.append(acts)
        return out

    def close(self) -> None:
        """Release the tracker's group (after ``close()``; this rank's part of it only)."""
        if self.group is not None:
            try:
                torch.distributed.destroy_process_group(self.group)
            except Exception:  # the default group was destroyed first: nothing left to release
                pass
            self.group = None


def check_options(timeout: float, reduce_metrics: Optional[str]) -> None:
    """Validate ``dist_timeout`` and ``reduce_metrics`` (also outside a distributed job, so typos show early)."""
    check_float(timeout, "dist_timeout", positive=True, finite=False, what="a number of seconds > 0")
    if reduce_metrics not in REDUCTIONS:
        raise ValueError(f"reduce_metrics must be None (rank 0's values) or 'mean', got {reduce_metrics!r}")

"""Track the information plane of a model from inside its training loop.

:class:`Tracker` composes the I/O-free :class:`~infoplane.tracking.recorder.Recorder` (probe passes, buffer, batched
estimation) with a :class:`~infoplane.runs.writer.RunWriter` (the run directory), and decides when the buffer is
estimated and written: when it is large, when waiting longer would leave more than about ``flush_seconds`` of work
unwritten (counting what estimating the buffer will cost), at :meth:`close`, and when an unclosed tracker is
collected or the interpreter exits. A large buffer is estimated and written in batches that each fit that budget.
"""
from __future__ import annotations

import math
import numbers
import os
import time
import warnings
import weakref
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from infoplane._validate import check_int
from infoplane.capture import reduce as reduce_mod
from infoplane.capture.chain import chain_meta
from infoplane.capture.hooks import as_probe_tensors, model_device, resolve_layers, weight_names
from infoplane.data import probeset
from infoplane.data.labels import as_class_indices
from infoplane.runs.gradfile import record
from infoplane.runs.meta import check_extra_meta, describe_optimizer, describe_run
from infoplane.runs.reader import Run
from infoplane.runs.writer import RunWriter
from infoplane.tracking.distributed import DEFAULT_TIMEOUT, Sharded, check_options, strip_prefix, unwrap
from infoplane.tracking.distributed import active as distributed_active
from infoplane.tracking.estimators import as_estimators, layer_contexts, layer_noise, layer_settings, per_layer
from infoplane.tracking.gradients import GradientRow, GradientStats
from infoplane.tracking.recorder import Recorder, add_timings
from infoplane.tracking.schedule import as_schedule, extends, from_json
from infoplane.tracking.sharpness import SharpnessPlan
from infoplane.tracking.targets import as_targets, check_estimators, describe_targets

__all__ = ["Tracker", "UnclosedTrackerWarning", "UnfinishedScheduleWarning"]

# Keys of meta.json that must match when a run is resumed.
_IDENTITY = ("layers", "estimators", "schedule", "seeds", "fraction", "n", "probe", "pre_activation",
             "keep_activations", "reduce", "targets", "sharpness", "estimator_layers")
# ... except a schedule that continues the stored one to later epochs (the run was trained further).
_ACCEPTS = {"schedule": lambda stored, new: _schedule_extends(stored, new)}


def _clock() -> float:
    """Seconds on the clock that the flush policy reads (``time.monotonic``).

    A tracker reads this module attribute when it is constructed; tests replace it with a fake clock so that
    "time since the last write" and the estimators' measured cost are deterministic.
    """
    return time.monotonic()


class UnclosedTrackerWarning(UserWarning):
    """A Tracker was garbage-collected or left open at exit: its buffer was written, the run marked incomplete."""


class UnfinishedScheduleWarning(UserWarning):
    """A Tracker was closed before the last epoch of its schedule was stepped: the trained network was never
    recorded, so the run is marked incomplete."""


def _schedule_extends(stored: Any, new: Any) -> bool:
    """A resumed run may take a schedule that continues its stored one to later epochs (it was trained further)."""
    try:
        return extends(from_json(new), from_json(stored))
    except (TypeError, ValueError, KeyError):
        return False


class _Session:
    """What must outlive a forgotten Tracker: the recorder's buffer and the writer. The finaliser holds this,
    never the Tracker, so that the Tracker can be collected.

    It also keeps the flush policy's clock readings: ``since``, when the unwritten work began (the first epoch
    buffered after a write, or the last write while epochs are still buffered), and ``gap``, the seconds the
    caller last spent between two ``step`` calls (training), which predicts when the next check comes.
    """

    def __init__(self, recorder: Recorder, writer: RunWriter, sinks: list, flush_seconds: Optional[float],
                 clock=time.monotonic):
        self.recorder, self.writer, self.sinks = recorder, writer, sinks
        self.flush_seconds, self.clock = flush_seconds, clock
        self.closed = False
        self.since: Optional[float] = None
        self.gap = 0.0
        self.left: Optional[float] = None  # when the last step() returned
        self.gradients: Optional[_Gradients] = None
        self.pending: dict[int, list] = {}  # gradient records per recorded epoch, written with its table rows
        self.timings_before: dict = dict(writer.meta.get("timings") or {})  # a resumed run's earlier sessions

    def due(self, ahead: float = 0.0) -> bool:
        """Whether the buffer must be written now: estimating it, ``ahead`` seconds from now, would end more than
        ``flush_seconds`` after the unwritten work began. An estimator never timed yet makes it due at once, so
        that its cost is known before a second epoch is buffered."""
        if not self.recorder.buffer or self.flush_seconds is None:
            return False
        cost = self.recorder.cost()
        now = self.clock()
        since = now if self.since is None else self.since
        return cost is None or now - since + ahead + cost >= self.flush_seconds

    def batch(self) -> Optional[int]:
        """How many buffered epochs (oldest first) to estimate in the next write: as many as the predicted cost
        lets finish within ``flush_seconds`` of when the unwritten work began, at least one; None for all."""
        if self.flush_seconds is None:
            return None
        one = self.recorder.cost(1)
        if one is None:  # an estimator not timed yet: one epoch measures it
            return 1
        if one <= 0:
            return None
        left = self.flush_seconds - (self.clock() - self.since)
        return max(1, int(left // one))

    def flush(self) -> None:
        """Estimate and write the whole buffer, in batches that each fit the flush budget."""
        while self.recorder.buffer:
            if self.since is None:
                self.since = self.clock()
            self.write(self.batch())

    def write(self, count: Optional[int]) -> None:
        rows, metrics = self.recorder.estimate(count)
        t0 = time.perf_counter()
        # Metrics go first: if the process dies in between, the epochs are incomplete in the table, so a
        # resumed run drops their metrics and records them again.
        self.writer.add_metrics_many(metrics)
        epochs = sorted({r.epoch for r in rows} & set(self.pending))
        grads = [g for e in epochs for g in self.pending[e]]
        self.writer.add_gradients(grads)  # before the rows, like the metrics
        self.writer.add_rows(rows)
        # Only now are these epochs safe to drop: a failure above keeps them for another flush.
        self.recorder.drop(count)
        for e in epochs:
            del self.pending[e]
        self.since = self.clock() if self.recorder.buffer else None
        # Loggers (TensorBoard, W&B, ...) after the buffer is dropped, so that a failing one never writes twice.
        if self.sinks:
            run = self.writer.run()  # one snapshot for every sink, only when there are sinks
            for sink in self.sinks:
                sink.log_rows(rows, run)
                if grads and hasattr(sink, "log_gradients"):
                    sink.log_gradients(grads, run)
        self.recorder.timings["store"] += time.perf_counter() - t0

    def end(self, complete: bool) -> None:
        self.closed = True
        if self.gradients is not None:  # the optimiser hook goes first, whatever happens next
            self.gradients.close()
        # The run's timings: every session that wrote it (a resumed run adds to what was stored).
        self.writer.meta["timings"] = add_timings(self.timings_before, self.recorder.timings)
        self.writer.finish(complete=complete)
        run = self.writer.run() if self.sinks else None
        for sink in self.sinks:  # the final figure; sinks opened from a path are closed
            if complete:
                sink.close(run)
                continue
            try:  # after a failure: release them, never hiding the first error
                sink.close(run)
            except Exception as err:
                warnings.warn(f"infoplane: a logger could not be closed: {err!r}", RuntimeWarning, stacklevel=2)

    def abandon(self) -> None:
        """The Tracker was collected, or the interpreter exits, without close(): keep what was measured."""
        if self.closed:
            return
        where = f" ({self.writer.path})" if self.writer.path else ""
        warnings.warn(f"unclosed infoplane Tracker{where}: close() was not called; its buffered epochs were "
                      f"written and the run is marked incomplete. Use `with Tracker(...) as t:` or call "
                      f"t.close().", UnclosedTrackerWarning, stacklevel=2)
        try:
            self.flush()
        except Exception as err:
            warnings.warn(f"infoplane: the buffered epochs could not be estimated: {err!r}", RuntimeWarning, stacklevel=2)
        finally:
            self.end(complete=False)


class Tracker:
    """Record a model's information plane while it trains.

    Parameters
    ----------
    model : nn.Module or list of nn.Module
        The network, or one network per seed (an ensemble trained side by side); each is probed separately.
    inputs : tensor or array [N, ...], tuple/list of tensors, dict of tensors, or a loader
        Probe inputs (the samples X over which I(X;T) and I(T;Y) are measured): one tensor (``model(x)``),
        several (``model(*inputs)``), keyword tensors (``model(**inputs)``), all with the same leading N, or a
        non-shuffling DataLoader / iterable of ``(inputs, labels)`` batches, collected once (labels=None).
    labels : tensor, array or sequence, shape [N] (or one-hot [N, C]), or None with a loader
        Class of each probe sample: class indices, whole-number floats, one-hot rows, or class names (mapped
        to indices in sorted order; the names go to ``meta.json`` and the figures). See :mod:`infoplane.data.labels`.
    layers : None, str, type, list of str / type, or dict, default None
        None: every hidden layer after its nonlinearity plus the output as class probabilities (a warning
        names the modules passed over). Otherwise module names (``"3"``, ``"encoder.1"``), glob patterns
        (``"encoder.*"``) or module types (``nn.ReLU``); their raw outputs are recorded, flattened per sample.
        A dict maps names to a selector: a callable on the module's output (``lambda out: out[0]``) or a
        pooling ``"cls"``, ``"mean"``, ``"flatten"`` (see :func:`infoplane.capture.hooks.resolve_layers`).
    estimators : list, default ``[Binning(bins=30, range=(-1, 1))]``
        Estimator objects (``infoplane.Binning``, ``infoplane.KDE``) or their ``settings()`` dicts.
    schedule : Schedule, list of int or None, default None
        Epochs to record (see :mod:`infoplane.tracking.schedule`); None records every epoch.
    out : str, os.PathLike or None
        Run directory; None keeps results in memory (:attr:`run`).
    seeds : list of int, optional
        One seed per model (default ``[0, 1, ...]``); stored in every row.
    seed : int, optional
        Shorthand for ``seeds=[seed]`` with one model.
    fraction : float or None
        Training fraction, stored in rows and meta.
    meta : dict, optional
        Extra JSON-able entries for ``meta.json`` (data name, split indices, ...). It may replace ``caller``
        (default ``sys.argv``); the other keys the tracker writes itself are refused.
    name : str, optional
        The run's name in figure titles and reports (``meta.json``'s ``"name"``); default: the run directory's
        name.
    pre_activation : bool, default False
        With ``layers=None``, record each Linear/Conv output (pre-activation) instead.
    probe_batch_size : int, default 4096
        Probe samples per forward pass (lower it for large models or inputs).
    device : str or torch.device, optional
        Where buffered activations are kept and estimated (e.g. ``"cpu"`` to spare GPU memory); default: each
        model's own device. The probe pass always runs on the model's device.
    buffer_bytes : int, default 256 MiB
        Activations are buffered until they take this much memory, then estimated in batched calls per
        layer. A kill loses at most the buffered epochs.
    flush_seconds : float or None, default 10
        The budget of unwritten work, in seconds of wall time: a kill at any moment loses at most about this
        much of the time spent since the last write (training, probing and estimating together), whatever the
        estimators cost. At each ``step`` the tracker writes the buffer if waiting for the next step would
        finish its estimation later than that, predicting the estimation from each estimator's measured cost
        per layer-epoch (the first recorded epoch is written at once, which measures it); a buffer too costly
        for the budget is estimated and written in batches that each fit it. Fast estimators still batch every
        epoch recorded within the budget into one call per layer; a larger value batches more and risks more.
        One estimator call on one layer-epoch cannot be cut: with estimators slower than this per layer-epoch,
        every epoch is written on its own. None: only ``buffer_bytes`` decides (and a write is never cut).
    keep_activations : bool, default False
        Also save raw activations under ``out/activations/<seed>/<epoch>.npz`` for :func:`infoplane.estimate`.
    reduce : None, str or dict, default None
        Layer reduction applied to each layer's activations before estimating (see :mod:`infoplane.capture.reduce`):
        ``"flatten"`` (what None does), ``"channel-mean"``, ``"pca:k"``, ``"random:k"``, or a dict mapping
        layer names / glob patterns to specs. Stored in ``meta.json`` as ``"reduce"`` with the reduced widths;
        saved activations stay unreduced.
    resume : bool, default False
        Continue the run in ``out``: epochs already in its table are skipped. Settings must match.
        Starts a new run when ``out`` holds none.
    overwrite : bool, default False
        Replace the run in ``out``: only infoplane's own files are removed, and a directory holding anything
        else is refused (see :mod:`infoplane.runs.lifecycle`).
    loggers : object or list, optional
        Where recorded rows are also logged as they are written, and the plane figure at ``close``: a
        TensorBoard ``SummaryWriter`` or log directory, a W&B run, a Lightning TensorBoard / W&B logger, or any
        sink with ``log_rows(rows, run)`` and ``close(run)`` (see :mod:`infoplane.integrations.sinks`).
    dist_timeout : float, default 600
        Under ``torch.distributed`` only: seconds a rank waits for the others in the tracker's collectives
        (construction, :meth:`step`) before raising :class:`~infoplane.tracking.distributed.DistributedStepError`. It
        must exceed rank 0's longest estimation of its buffer, which the other ranks wait for at the next step.
    optimizer : torch.optim.Optimizer, optional
        The optimiser of the training loop: its class and learning rate (of each parameter group, at
        construction) go to ``meta.json`` under ``"training"`` and into the report. Nothing is recorded without it.
    per_seed : bool, default False
        ``inputs`` and ``labels`` are lists with one probe set per model, in the order of the models (e.g. each
        seed trained on its own draw of corrupted data): each model is probed on its own inputs and its I(T;Y)
        is measured against its own labels (and clamped to its own H(Y)). Every probe set has the same N; when
        every model is given the same input object, the models are probed as with one shared probe set (only the
        labels differ). ``meta.json`` then holds each seed's H(Y)
        (``h_y_seeds``) and, as ``h_y``, the largest of them (the ceiling of every seed's I(T;Y)); side variables
        (``targets``) are shared by every model; ``labels.npy`` of saved activations holds one row per seed. Not
        under ``torch.distributed``.
    reduce_metrics : None or "mean", default None
        Under ``torch.distributed`` only: None stores the metrics rank 0 passes to :meth:`step`; ``"mean"``
        stores their mean over ranks (every rank must then pass the same metric names).
    gradients : bool or callable, default False
        True: also record, per tracked layer, the statistics of the mini-batch gradients of its weights
        (:mod:`infoplane.tracking.gradients`: norm of the mean, norm of the element-wise standard deviation, their
        ratio, the number of optimiser steps) over the optimiser steps since the previous :meth:`step` call,
        stored at each recorded epoch in ``gradients.csv`` (``run.gradients``). A layer's weights are its own,
        or for a parameter-free layer (an activation) those of the modules that feed it since the previous
        tracked layer. One sample per ``optimizer.step()``, read when the step starts (accumulated micro-batches
        make one sample; a ``GradScaler`` has unscaled them; under ``DistributedDataParallel`` they are the
        all-reduced, global mini-batch gradients). Training is unchanged to the bit. A callable instead is
        called at each recorded epoch and returns the rows itself, one list of
        :class:`~infoplane.tracking.gradients.GradientRow` per model in ``layers`` order (for trainers that
        gather the statistics themselves).
    targets : dict, optional
        Side variables Z, name -> values aligned with the probe set: class labels (discrete) or floats ``[N]`` /
        ``[N, d]`` (continuous). Every estimator that can measure Z (all of them for a discrete Z; ``knn`` and
        ``renyi`` for a continuous one) also gives I(T;Z), stored in rows whose ``target`` is the name (see
        :mod:`infoplane.tracking.targets`); a Z that none of the estimators can measure is refused with the names
        of those that can. I(T;Y) of the labels stays the default everywhere.
    chain : bool or None, default None
        Whether the tracked layers form a chain X -> T_1 -> T_2 -> ... (each computed from the previous one
        only), where the data-processing inequality must hold. None: decided from the model's traced graph where
        it can be traced (a layer reached from the input around the previous one, e.g. by a skip connection,
        makes it no chain). Stored in ``meta.json`` as ``chain`` (see :mod:`infoplane.capture.chain`).
    sharpness : None, str, list of str or dict, default None
        Sharpness measures of :mod:`infoplane.sharpness` to record at every recorded epoch, by name
        (``"hessian_top_eigenvalue"``, ``"hessian_trace"``, ``"sam_sharpness"``, ``"adaptive_sharpness"``,
        ``"random_sharpness"``), or a dict mapping names to their options (``{"sam_sharpness": {"rho": 0.1}}``).
        They go to ``sharpness.csv`` (:attr:`Run.sharpness <infoplane.runs.reader.Run>`). Each model is left
        exactly as it was (parameters, buffers, gradients, modes, torch's RNG): training is bit-identical with
        and without them. See docs/sharpness.md.
    sharpness_data : (x, y) or list of (x, y)
        The training data the measures are computed on (shared, or one pair per model); needed with
        ``sharpness``.
    sharpness_loss : callable, optional
        ``loss(model(x), y)``, the batch mean; default ``nn.CrossEntropyLoss()``.
    sharpness_samples : int or None, default 1024
        The measures use this many rows of ``sharpness_data``, drawn once without replacement (seeded by
        ``sharpness_seed``) and recorded in ``meta.json``; None: every row.
    sharpness_seed : int, default 0
        Seed of that draw. Each measure's own random vectors are seeded with the model's seed.

    Notes
    -----
    Close the tracker (``with Tracker(...) as t:`` or :meth:`close`). A run is marked complete when it is closed
    normally after the last epoch of a finite schedule was stepped; closing before that warns
    (:class:`UnfinishedScheduleWarning`) and leaves the run incomplete (resumable). One that is garbage-collected or still
    open when the interpreter exits writes what it buffered, warns (:class:`UnclosedTrackerWarning`) and leaves
    the run marked incomplete (resumable). While open, the tracker holds the run directory's lock: a second
    writer gets an error naming this process.

    Under ``torch.distributed`` (a process group is initialised), construct the tracker on every rank with the
    same arguments and the whole probe set: each rank probes its contiguous shard, rank 0 gathers the
    activations, estimates and writes ``out``; the other ranks write nothing (``path`` is None there and
    ``run`` stays empty). Construction and :meth:`step` are collectives. ``DistributedDataParallel`` models
    are probed through their inner module; layer names may carry the ``module.`` prefix or not, and are
    recorded without it. See :mod:`infoplane.tracking.distributed` and docs/scale.md.

    Attributes
    ----------
    layers : list of str
        Recorded layer names in model order.
    layer_info : list of infoplane.capture.hooks.Layer
        Name, width, kind and transform of each layer.
    reduced_widths : dict
        Columns each layer has after ``reduce`` (its width when not reduced).
    schedule : Schedule
    estimators : list
    targets : list of infoplane.tracking.targets.Target
        The validated side variables (name, kind, values, H(Z)); empty without ``targets=``.
    seeds : list of int
    rank, world_size : int
        This process's place in a ``torch.distributed`` job (0 and 1 outside one).
    timings : dict
        Seconds spent so far in ``"capture"`` (probe passes), ``"estimate"`` (estimator calls), ``"store"``
        (writing files) and ``"sharpness"`` (the sharpness measures, with their writing), the ``"layer_epochs"``
        estimated, and the estimator calls' seconds by layer
        (``"layers"``: layer name -> seconds) and by estimator (``"estimators"``: name -> seconds). At
        :meth:`close` they go to ``meta.json`` as ``"timings"`` (summed over the sessions of a resumed run).
    """

    def __init__(self, model: Union[nn.Module, Sequence[nn.Module]], inputs: Any, labels: Any, *,
                 layers: Any = None, estimators: Any = None, schedule: Any = None,
                 out: Union[str, os.PathLike, None] = None, seeds: Optional[Sequence[int]] = None,
                 seed: Optional[int] = None, fraction: Optional[float] = None, meta: Optional[dict] = None,
                 name: Optional[str] = None, pre_activation: bool = False, probe_batch_size: int = 4096,
                 device: Union[str, torch.device, None] = None, buffer_bytes: int = 256 * 2**20,
                 flush_seconds: Optional[float] = 10.0, keep_activations: bool = False, resume: bool = False,
                 overwrite: bool = False, reduce: Any = None, loggers: Any = None,
                 dist_timeout: float = DEFAULT_TIMEOUT, reduce_metrics: Optional[str] = None,
                 gradients: Union[bool, Callable[[], Sequence[Sequence[GradientRow]]]] = False,
                 targets: Optional[dict] = None, chain: Optional[bool] = None,
                 sharpness: Any = None, sharpness_data: Any = None, sharpness_loss: Any = None,
                 sharpness_samples: Optional[int] = 1024, sharpness_seed: int = 0,
                 optimizer: Optional[torch.optim.Optimizer] = None, per_seed: bool = False):
        self._session: Optional[_Session] = None  # until construction succeeds
        models: list[nn.Module] = list(model) if isinstance(model, (list, tuple, nn.ModuleList)) else [model]
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("model must be a torch.nn.Module or a non-empty list of them (one per seed)")
        seeds = _check_seeds(models, seeds, seed)
        # -- torch.distributed (infoplane.tracking.distributed): probe DDP's inner module; accept `module.` names --
        check_options(dist_timeout, reduce_metrics)
        layers = strip_prefix(layers, models[0])
        models = [unwrap(m) for m in models]
        # --
        _check_options(fraction, keep_activations, out, probe_batch_size, buffer_bytes, flush_seconds)

        weight = next((p for p in models[0].parameters() if p.is_floating_point()), None)
        seed_inputs = None  # one probe input per model, where the models are probed on different inputs
        if per_seed:
            if distributed_active():
                raise ValueError("per_seed=True (one probe set per model) is not supported under "
                                 "torch.distributed; give one probe set shared by every model")
            inputs, labels, class_names, seed_inputs = _per_seed_probes(inputs, labels, len(models), weight)
        else:
            class_names = None if labels is None else as_class_indices(labels).names
            inputs, labels = as_probe_tensors(inputs, labels)
            if weight is not None:  # float inputs take the model's dtype (numpy gives float64); token ids stay
                inputs = probeset.cast_floating(inputs, weight.dtype)
        if labels.shape[-1] < 2:
            raise ValueError("the probe set needs at least 2 samples")
        self.inputs, self.labels = inputs, labels
        self.targets = as_targets(targets, labels.shape[-1])
        self.models = models
        self.seeds = seeds
        self.fraction = None if fraction is None else float(fraction)
        self.buffer_bytes = int(buffer_bytes)
        self.keep_activations = bool(keep_activations)
        self.schedule = as_schedule(schedule)
        self.estimators = as_estimators(estimators)
        check_estimators(self.targets, self.estimators)
        self.layer_info = _resolve_all(models, inputs, layers, pre_activation, seeds)
        self.layers = [l.name for l in self.layer_info]
        reductions = reduce_mod.resolve(reduce, [(l.name, l.shape) for l in self.layer_info])
        grads = _Gradients.make(gradients, models, inputs, self.layers)  # its errors come before any run exists
        self.reduced_widths = {l.name: reductions[l.name].width(l.shape or (l.width,)) for l in self.layer_info}
        # Settings that depend on the layer (the noise a noisy network adds to it), fixed before anything is recorded.
        bound = per_layer(self.estimators, layer_contexts(models[0], self.layer_info, reductions))
        by_layer = layer_settings(self.estimators, bound)

        labels_np = labels.numpy()
        run_meta = describe_run(models[0], inputs, labels, self.layer_info, self.estimators, self.schedule, self.seeds,
                                self.fraction, pre_activation=pre_activation, keep_activations=self.keep_activations,
                                reduce=reduce, reduced_widths=self.reduced_widths, class_names=class_names,
                                seed_inputs=seed_inputs)
        if self.targets:  # only then: the meta of runs without side variables reads as it always did
            run_meta["targets"] = describe_targets(self.targets, self.estimators)
        full = {l.name: math.prod(l.shape or (l.width,)) for l in self.layer_info}
        partial = {n: r.spec for n, r in reductions.items() if self.reduced_widths[n] < full[n]}
        chain_note = chain_meta(models[0], self.layers, chain, partial)
        if chain_note is not None:
            run_meta["chain"] = chain_note
        # -- sharpness beside the plane (infoplane.tracking.sharpness) --
        self._sharpness = None
        if sharpness is not None:
            self._sharpness = SharpnessPlan.make(sharpness, models, sharpness_data, sharpness_loss,
                                                 samples=sharpness_samples, subset_seed=sharpness_seed)
            run_meta["sharpness"] = self._sharpness.settings()
        # --
        if by_layer is not None:
            run_meta["estimator_layers"] = by_layer
        noise = layer_noise(models[0], self.layer_info)
        if noise:  # the network's own noise per layer, which estimate() needs to reduce and estimate again
            run_meta["layer_noise"] = noise
        extra = check_extra_meta(meta, run_meta)
        if name is not None:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"name must be a non-empty string (the run's name in figures); got {name!r}")
            if extra.get("name", name) != name:
                raise ValueError(f"name={name!r} and meta['name']={extra['name']!r} disagree; give one of them")
            extra["name"] = name
        if optimizer is not None:  # what the training loop uses, recorded beside the caller's own training entries
            extra["training"] = {**describe_optimizer(optimizer), **dict(extra.get("training") or {})}
        # Loggers are made before the run directory, so that a bad one fails without leaving a run behind.
        from infoplane.tracking.sinks import as_sinks
        sinks = as_sinks(loggers)
        clock = _clock  # read once, so that a test's fake clock serves the whole tracker
        recorder = Recorder(models, self.seeds, inputs, labels, self.layer_info, self.estimators, self.fraction,
                            int(probe_batch_size), None if device is None else torch.device(device), reductions,
                            per_layer=bound, clock=clock, targets=self.targets, seed_inputs=seed_inputs)
        # -- torch.distributed (infoplane.tracking.distributed): each rank probes its shard; rank 0 alone writes --
        self._dist, self.rank, self.world_size = None, 0, 1
        if distributed_active():
            self._dist = Sharded(labels.shape[0], self.layer_info, len(models), dist_timeout, reduce_metrics)
            self.rank, self.world_size = self._dist.rank, self._dist.world_size
            self._dist.agree("the tracker's settings", {k: run_meta.get(k) for k in _IDENTITY})
            a, b = self._dist.start, self._dist.stop
            self._shard = Recorder(models, self.seeds, probeset.take(inputs, a, b), labels[a:b], self.layer_info,
                                   self.estimators, self.fraction, int(probe_batch_size), recorder.device,
                                   timings=recorder.timings)
            writer = self._dist.open_writer(lambda mine: RunWriter(
                out if mine else None, {**run_meta, **extra}, _IDENTITY, resume=resume, overwrite=overwrite,
                accepts=_ACCEPTS))
        else:
            writer = RunWriter(out, {**run_meta, **extra}, _IDENTITY, resume=resume, overwrite=overwrite,
                               accepts=_ACCEPTS)
        # --
        self.path = writer.path
        self._recorder, self._writer = recorder, writer
        self._done = writer.done_epochs()
        if self._dist is not None:  # every rank skips the epochs that rank 0's resumed run holds
            self._done = self._dist.broadcast("sharing the resumed run's epochs", self._done)
        self._seen: set[int] = set()
        self.timings = recorder.timings
        self.timings.setdefault("sharpness", 0.0)
        self._session = _Session(recorder, writer, sinks, flush_seconds, clock)
        self._session.gradients = grads
        # The finaliser holds the session, not the tracker: it runs when the tracker is collected or at exit.
        self._finalizer = weakref.finalize(self, _Session.abandon, self._session)
        try:
            if self.keep_activations and writer.path is not None:  # (not on ranks > 0 under torch.distributed)
                writer.save_labels(labels_np)
        except BaseException:
            self._finalizer.detach()
            writer.finish(complete=False)
            raise
        if grads is not None:  # last: a failed construction leaves no hook behind
            grads.attach()

    # ------------------------------------------------------------------------------------------------ public
    @property
    def run(self) -> Run:
        """The estimates written so far as an in-memory :class:`~infoplane.runs.reader.Run` (complete after
        :meth:`close`)."""
        return self._writer.run()

    @property
    def flush_seconds(self) -> Optional[float]:
        """The budget of unwritten work in seconds (see the class docstring); None: only ``buffer_bytes``
        decides. It may be changed while the tracker is open."""
        return self._live.flush_seconds

    @flush_seconds.setter
    def flush_seconds(self, value: Optional[float]) -> None:
        _check_flush_seconds(value)
        self._live.flush_seconds = value

    @property
    def _live(self) -> _Session:
        """The session of a constructed tracker (construction that failed leaves none)."""
        if self._session is None:
            raise RuntimeError("this Tracker was not constructed (its construction raised); make a new one")
        return self._session

    @property
    def closed(self) -> bool:
        return self._session is None or self._session.closed

    def step(self, epoch: int, **metrics: Any) -> bool:
        """Record ``epoch`` if the schedule contains it; otherwise return at once.

        Parameters
        ----------
        epoch : int
            The network's age: epoch e is the network after e epochs of training, epoch 0 the initialisation.
        **metrics : float or sequence of float
            Values to store in ``metrics.csv`` (e.g. ``train_loss=0.3``); with several models, either one value
            for all or one per model.

        Returns
        -------
        bool
            True when the epoch was recorded; False when it is not scheduled or was already in the resumed run.

        Notes
        -----
        Under ``torch.distributed`` this is a collective for scheduled epochs: every rank must call it with the
        same epochs in the same order (unscheduled epochs return at once without communicating). A rank that
        skips it makes the others raise :class:`~infoplane.tracking.distributed.DistributedStepError` after
        ``dist_timeout`` seconds. The metrics stored are rank 0's, or the mean over ranks with
        ``reduce_metrics="mean"``.

        Raises
        ------
        ValueError, TypeError
            Bad epoch or metrics. Epochs recorded before the error are written first, so an error here never
            loses them.
        """
        if self.closed:
            raise RuntimeError("this Tracker is closed; create a new one (resume=True continues its run)")
        session = self._live
        entered = session.clock()
        if session.left is not None:  # the caller's time between two steps predicts when the next check comes
            session.gap = entered - session.left
        try:
            return self._step(epoch, metrics, entered)
        except Exception:
            # Whatever went wrong with this epoch, the epochs already recorded must not be lost with it.
            try:
                session.flush()
            except Exception:
                pass
            raise
        finally:
            session.left = session.clock()

    def _step(self, epoch, metrics, entered):
        check_int(epoch, "epoch", error=TypeError)
        session = self._live
        recorded = epoch in self.schedule and int(epoch) not in self._done
        grads = session.gradients
        gradient_rows = None
        if grads is not None:  # a new period starts at every step; a recorded epoch keeps the one that ends here
            gradient_rows = grads.read(self.seeds, self.layers) if recorded and int(epoch) not in self._seen \
                else grads.reset()
        # Already late: write before probing. An epoch not recorded is the last check until the next step.
        if session.due(ahead=0.0 if recorded else session.gap):
            self.flush()
            entered = session.clock()  # what is unwritten now began after that write
        if not recorded:
            return False
        epoch = int(epoch)
        if epoch in self._seen:
            raise ValueError(f"epoch {epoch} was already recorded by this tracker; pass each epoch once")
        values = self._metric_values(metrics)
        if self._dist is None:
            per_seed = self._recorder.capture(epoch)
        else:  # -- torch.distributed: a collective; rank 0 gets the whole probe set's activations --
            devices = [self._recorder.device or model_device(m) for m in self.models]
            per_seed, values = self._dist.record(epoch, self._shard.capture, values, devices)
            if per_seed is None:  # ranks > 0 estimate and write nothing
                self._seen.add(epoch)
                return True
        if self._sharpness is not None:
            self._measure_sharpness(epoch)
        if self.keep_activations:
            t0 = time.perf_counter()
            for seed, acts in zip(self.seeds, per_seed):
                self._writer.save_activations(seed, epoch, {k: v.cpu().numpy() for k, v in acts.items()})
            self.timings["store"] += time.perf_counter() - t0
        self._seen.add(epoch)
        if gradient_rows is not None:
            session.pending[epoch] = [record(s, epoch, r) for s, rows in zip(self.seeds, gradient_rows) for r in rows]
        self._recorder.add(epoch, self._recorder.reduce(per_seed), values)
        if session.since is None:  # the unwritten work began when this step did (probe pass included)
            session.since = entered
        # The next chance to write is the next step, about `gap` from now: write now if that would be too late.
        if self._recorder.buffered_bytes >= self.buffer_bytes or session.due(ahead=session.gap):
            self.flush()
        return True

    def flush(self) -> None:
        """Estimate every buffered epoch and write the rows: in one estimator call per layer and estimator, or,
        when that would take longer than ``flush_seconds`` allows, in batches of epochs (oldest first) each
        written as soon as it is estimated."""
        if self._session is not None:
            self._live.flush()

    def close(self) -> None:
        """Estimate what is buffered, write it, and mark the run complete. Safe to call twice; after a failure it
        may be called again (the run stays resumable meanwhile)."""
        if self.closed:
            return
        try:
            self._live.flush()
        except BaseException:
            self._writer.finish(complete=False, release=False)
            raise
        self._finalizer.detach()
        missing = self._last_epoch_missing()
        if missing is not None:
            where = f" ({self.path})" if self.path else ""
            stepped = sorted(self._seen | self._done)
            last = f"the last epoch stepped was {stepped[-1]}" if stepped else "no scheduled epoch was stepped"
            warnings.warn(f"infoplane Tracker{where} closed before the last epoch of its schedule, {missing}, was "
                          f"stepped ({last}): the trained network was not recorded, so the run is marked "
                          f"incomplete. Call tracker.step(0) before training and tracker.step(epoch + 1) after "
                          f"each epoch (epoch e = the network after e epochs), or give a schedule that ends where "
                          f"the training ends.", UnfinishedScheduleWarning, stacklevel=2)
        self._live.end(complete=missing is None)
        if self._dist is not None:  # torch.distributed: release the tracker's own gloo group
            self._dist.close()

    def _last_epoch_missing(self) -> Optional[int]:
        """The last epoch of a finite schedule when it was never stepped (nor held by the resumed run), else None."""
        if not self.schedule.finite or not len(self.schedule.epochs):
            return None
        last = int(self.schedule.epochs[-1])
        return None if last in self._seen or last in self._done else last

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        if self.closed:
            return
        self._finalizer.detach()
        # Keep what was already measured, but never let a second error hide the first one.
        try:
            self._live.flush()
        except Exception as err:
            warnings.warn(f"infoplane: the buffered epochs could not be estimated: {err!r}", RuntimeWarning, stacklevel=2)
        finally:
            self._live.end(complete=False)

    # ----------------------------------------------------------------------------------------------- helpers
    def _measure_sharpness(self, epoch: int) -> None:
        """Measure and write this epoch's sharpness at once (a resumed run drops the lines of epochs missing from
        the table, and measures them again); the loggers get them too."""
        assert self._sharpness is not None
        t0 = time.perf_counter()
        rows = self._sharpness.measure(self.models, self.seeds, epoch)
        self._writer.add_sharpness(rows)
        sinks = [s for s in self._live.sinks if hasattr(s, "log_sharpness")]
        if sinks:
            run = self._writer.run()
            for sink in sinks:
                sink.log_sharpness(rows, run)
        self.timings["sharpness"] += time.perf_counter() - t0

    def _metric_values(self, metrics):
        per_seed = [{} for _ in self.seeds]
        for name, value in metrics.items():
            if name in ("seed", "epoch"):
                raise ValueError(f"{name!r} cannot be a metric name: metrics.csv uses it as a key column")
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            try:
                arr = np.asarray(value, dtype=float)
            except (TypeError, ValueError):
                raise TypeError(f"metric {name}={value!r} is not a number") from None
            if arr.ndim == 0:
                arr = np.full(len(self.seeds), float(arr))
            if arr.shape != (len(self.seeds),):
                raise ValueError(f"metric {name!r} has shape {arr.shape}; give one number, or one per model "
                                 f"({len(self.seeds)})")
            for d, v in zip(per_seed, arr.tolist()):
                d[name] = v
        return per_seed


class _Gradients:
    """Where a tracker's gradient statistics come from: its own hooks on every model, or a caller's function."""

    def __init__(self, stats: Optional[list[GradientStats]], given: Optional[Callable] = None) -> None:
        self.stats, self.given = stats, given

    @classmethod
    def make(cls, gradients, models, inputs, layers) -> Optional["_Gradients"]:
        if gradients is False or gradients is None:
            return None
        if callable(gradients):
            return cls(None, gradients)
        if gradients is not True:
            raise TypeError(f"gradients must be True, False or a function returning the rows; got {gradients!r}")
        example = probeset.take(inputs, 0, 2)
        stats = []
        for m in models:
            names = weight_names(m, example, layers)
            stats.append(GradientStats({layer: [m.get_parameter(n) for n in names[layer]] for layer in layers}))
        return cls(stats)

    def attach(self) -> None:
        for s in self.stats or ():
            s.attach()

    def close(self) -> None:
        for s in self.stats or ():
            s.detach()

    def reset(self) -> None:
        for s in self.stats or ():
            s.reset()

    def read(self, seeds, layers) -> list[list[GradientRow]]:
        if self.stats is not None:
            return [s.read() for s in self.stats]
        rows = [list(r) for r in self.given()]  # type: ignore[misc]
        if len(rows) != len(seeds) or any([r.layer for r in per] != list(layers) for per in rows):
            raise ValueError(f"the gradients function must return one list of GradientRow per model ({len(seeds)}), "
                             f"each with one row per layer in the order {list(layers)}")
        return rows


def _check_options(fraction, keep_activations, out, probe_batch_size, buffer_bytes, flush_seconds) -> None:
    if fraction is not None and not (isinstance(fraction, numbers.Real) and 0 < float(fraction) <= 1):
        raise ValueError(f"fraction must be a number in (0, 1] or None, got {fraction!r}")
    if keep_activations and out is None:
        raise ValueError("keep_activations=True needs a run directory: pass out=")
    if int(probe_batch_size) < 1 or int(buffer_bytes) < 0:
        raise ValueError("probe_batch_size must be >= 1 and buffer_bytes >= 0")
    _check_flush_seconds(flush_seconds)


def _check_flush_seconds(flush_seconds) -> None:
    if flush_seconds is not None and not (isinstance(flush_seconds, numbers.Real) and float(flush_seconds) >= 0):
        raise ValueError(f"flush_seconds must be a number >= 0 or None, got {flush_seconds!r}")


def _check_seeds(models, seeds, seed) -> list[int]:
    if seed is not None and seeds is not None:
        raise ValueError("pass seed= or seeds=, not both")
    seeds = [seed] if seed is not None else list(range(len(models))) if seeds is None else list(seeds)
    if len(seeds) != len(models) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must give one distinct integer per model: {len(models)} model(s), seeds={seeds}")
    return [check_int(s, "seeds", what="integers", error=TypeError) for s in seeds]


def _per_seed_probes(inputs, labels, count: int, weight) -> tuple[Any, torch.Tensor, Optional[list], Optional[list]]:
    """The probe sets of ``per_seed=True``: the first model's inputs, the labels ``[S, N]``, the class names, and
    the inputs of every model (None when they are all the same object, so that the models are probed together)."""
    for value, name in ((inputs, "inputs"), (labels, "labels")):
        if not isinstance(value, (list, tuple)) or len(value) != count:
            got = f"a {type(value).__name__} of {len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
            raise ValueError(f"per_seed=True needs {name} as a list with one probe set per model ({count}); got {got}")
    checked, cast = [], {}
    for x, y in zip(inputs, labels):
        x_checked, y_checked = as_probe_tensors(x, y)
        if id(x) not in cast:  # a shared probe input is cast once and stays shared
            cast[id(x)] = x_checked if weight is None else probeset.cast_floating(x_checked, weight.dtype)
        checked.append((cast[id(x)], y_checked, as_class_indices(y).names))
    if any(c[2] != checked[0][2] for c in checked):
        raise ValueError("per_seed=True: the models' labels name different classes; give every model the same "
                         "class names (or class indices)")
    sizes = sorted({int(c[1].shape[0]) for c in checked})
    if len(sizes) != 1:
        raise ValueError(f"per_seed=True: the probe sets differ in size ({sizes}); every model is measured on the "
                         f"same number of samples")
    stacked = torch.stack([c[1] for c in checked])
    shared = all(c[0] is checked[0][0] for c in checked)
    return checked[0][0], stacked, checked[0][2], None if shared else [c[0] for c in checked]


def _resolve_all(models, inputs, layers, pre_activation, seeds):
    example = probeset.take(inputs, 0, 2)
    info = resolve_layers(models[0], example, layers, pre_activation)
    for i, m in enumerate(models[1:], 1):
        other = resolve_layers(m, example, layers, pre_activation)
        if other != info:
            raise ValueError(f"model {i} (seed {seeds[i]}) has other layers than model 0: "
                             f"{[(l.name, l.width) for l in other]} vs {[(l.name, l.width) for l in info]}; the "
                             f"models must share one architecture")
    return info

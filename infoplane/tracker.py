"""Track the information plane of a model from inside its training loop.

:class:`Tracker` ties the steps together: at each scheduled epoch it runs the probe set through the model
(``capture``), keeps the activations in a buffer, estimates all buffered epochs of a layer in one batched
estimator call when the buffer is full (or at ``close``), and appends the results to the run directory
(``store``). :func:`estimate` recomputes a run's plane from saved activations with other estimators.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

from . import __version__
from .capture import as_probe_tensors, model_device, probe, resolve_layers
from .estimators import Binning, from_settings
from .schedule import as_schedule
from .store import ACTIVATIONS, METRICS, Row, RunWriter, read_meta, read_metrics

__all__ = ["Tracker", "estimate"]

# Keys of meta.json that must match when a run is resumed.
_IDENTITY = ("layers", "estimators", "schedule", "seeds", "fraction", "n", "probe", "pre_activation",
             "keep_activations")


def _as_estimators(estimators):
    if estimators is None:
        estimators = [Binning(bins=30, range=(-1, 1))]
    elif isinstance(estimators, dict) or callable(estimators):
        estimators = [estimators]
    out = []
    for est in estimators:
        if isinstance(est, dict):
            est = from_settings(est)
        if not (callable(est) and all(hasattr(est, a) for a in ("name", "settings", "has_lower"))):
            raise TypeError(f"estimators must be estimator objects such as infoplane.Binning(...) or "
                            f"infoplane.KDE(...), or their settings() dicts; got {est!r}")
        out.append(est)
    if not out:
        raise ValueError("estimators is empty: give at least one, e.g. [infoplane.Binning(bins=30, range=(-1, 1))]")
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"estimator names must be unique, {dupes} repeats; pass name= to tell them apart")
    return out


def _entropy_bits(labels):
    counts = np.unique(labels, return_counts=True)[1]
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _fingerprint(inputs, labels):
    h = hashlib.sha1()
    for t in (inputs, labels):
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _estimate_rows(acts, labels, estimators, fraction, keys, layer, inputs=None):
    """Rows of one layer for a batch of (seed, epoch) items; ``acts`` is [len(keys), N, d]."""
    labels = labels.to(acts.device)
    cols = []
    for est in estimators:
        # issue 11: estimators declaring needs_inputs (KNN, Renyi) get the probe inputs for I(X;T)
        res = est(acts, labels, inputs=inputs) if inputs is not None and getattr(est, "needs_inputs", False) \
            else est(acts, labels)
        vals = [res.ixt, res.ity] + ([res.ixt_lower, res.ity_lower] if est.has_lower else [])
        vals = [v.detach().cpu().double().reshape(-1).tolist() for v in vals]
        vals += [[math.nan] * len(keys)] * (4 - len(vals))
        cols.append((est.name, vals))
    return [Row(seed, fraction, e, layer, name, *(v[i] for v in vals))
            for name, vals in cols for i, (seed, e) in enumerate(keys)]


def _sort_rows(rows, seeds, layers, estimators):
    order = [{v: i for i, v in enumerate(x)} for x in (seeds, layers, [e.name for e in estimators])]
    return sorted(rows, key=lambda r: (order[0][r.seed], r.epoch, order[1][r.layer], order[2][r.estimator]))


class Tracker:
    """Record a model's information plane while it trains.

    Parameters
    ----------
    model : nn.Module or list of nn.Module
        The network, or one network per seed (an ensemble trained side by side); each is probed separately.
    inputs : tensor or array, shape [N, ...]
        Probe inputs (the samples X over which I(X;T) and I(T;Y) are measured).
    labels : tensor or array of int, shape [N]
        Class index of each probe sample.
    layers : None, str, type or list of str / type, default None
        None: every hidden layer after its nonlinearity plus the output as class probabilities. Otherwise
        module names (``"3"``, ``"encoder.1"``), glob patterns (``"encoder.*"``) or module types
        (``nn.ReLU``); their raw outputs are recorded, flattened per sample.
    estimators : list, default ``[Binning(bins=30, range=(-1, 1))]``
        Estimator objects (``infoplane.Binning``, ``infoplane.KDE``) or their ``settings()`` dicts.
    schedule : Schedule, list of int or None, default None
        Epochs to record (see :mod:`infoplane.schedule`); None records every epoch.
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
    pre_activation : bool, default False
        With ``layers=None``, record each Linear/Conv output (pre-activation) instead.
    probe_batch_size : int, default 4096
        Probe samples per forward pass (lower it for large models or inputs).
    device : str or torch.device, optional
        Where buffered activations are kept and estimated (e.g. ``"cpu"`` to spare GPU memory); default: each
        model's own device. The probe pass always runs on the model's device.
    buffer_bytes : int, default 256 MiB
        Activations are buffered until they take this much memory, then estimated in one batched call per
        layer. A kill loses at most the buffered epochs.
    flush_seconds : float or None, default 600
        Also estimate and write the buffer when its oldest epoch is older than this (wall clock), so a long
        run never holds much unwritten work. None: only ``buffer_bytes`` decides.
    keep_activations : bool, default False
        Also save raw activations under ``out/activations/<seed>/<epoch>.npz`` for :func:`estimate`.
    resume : bool, default False
        Continue the run in ``out``: epochs already in its table are skipped. Settings must match.
        Starts a new run when ``out`` holds none.
    overwrite : bool, default False
        Replace the run in ``out``.

    Attributes
    ----------
    layers : list of str
        Recorded layer names in model order.
    layer_info : list of infoplane.capture.Layer
        Name, width, kind and transform of each layer.
    schedule : Schedule
    estimators : list
    seeds : list of int
    timings : dict
        Seconds spent so far in ``"capture"`` (probe passes), ``"estimate"`` (estimator calls) and ``"store"``
        (writing files), and ``"layer_epochs"`` estimated.
    """

    def __init__(self, model, inputs, labels, *, layers=None, estimators=None, schedule=None, out=None,
                 seeds=None, seed=None, fraction=None, meta=None, pre_activation=False, probe_batch_size=4096,
                 device=None, buffer_bytes=256 * 2**20, flush_seconds=600.0, keep_activations=False,
                 resume=False, overwrite=False):
        self._closed = True  # until construction succeeds
        models = list(model) if isinstance(model, (list, tuple, nn.ModuleList)) else [model]
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("model must be a torch.nn.Module or a non-empty list of them (one per seed)")
        if seed is not None and seeds is not None:
            raise ValueError("pass seed= or seeds=, not both")
        seeds = [seed] if seed is not None else list(range(len(models))) if seeds is None else list(seeds)
        if len(seeds) != len(models) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must give one distinct integer per model: {len(models)} model(s), "
                             f"seeds={seeds}")
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
            raise TypeError(f"seeds must be integers, got {seeds}")
        if fraction is not None and not (isinstance(fraction, numbers.Real) and 0 < fraction <= 1):
            raise ValueError(f"fraction must be a number in (0, 1] or None, got {fraction!r}")
        if keep_activations and out is None:
            raise ValueError("keep_activations=True needs a run directory: pass out=")
        if int(probe_batch_size) < 1 or int(buffer_bytes) < 0:
            raise ValueError("probe_batch_size must be >= 1 and buffer_bytes >= 0")

        self.inputs, self.labels = as_probe_tensors(inputs, labels)
        weight = next((p for p in models[0].parameters() if p.is_floating_point()), None)
        if weight is not None and self.inputs.is_floating_point():
            self.inputs = self.inputs.to(weight.dtype)  # numpy gives float64; a float32 model wants float32
        if self.labels.shape[0] < 2:
            raise ValueError("the probe set needs at least 2 samples")
        self.models = models
        self.seeds = [int(s) for s in seeds]
        self.fraction = None if fraction is None else float(fraction)
        self._estimate_device = None if device is None else torch.device(device)
        self.probe_batch_size = int(probe_batch_size)
        self.buffer_bytes = int(buffer_bytes)
        self.flush_seconds = flush_seconds
        self.keep_activations = bool(keep_activations)
        self.schedule = as_schedule(schedule)
        self.estimators = _as_estimators(estimators)

        example = self.inputs[: min(2, self.inputs.shape[0])]
        self.layer_info = resolve_layers(models[0], example, layers, pre_activation)
        for i, m in enumerate(models[1:], 1):
            other = resolve_layers(m, example, layers, pre_activation)
            if other != self.layer_info:
                raise ValueError(f"model {i} (seed {self.seeds[i]}) has other layers than model 0: "
                                 f"{[(l.name, l.width) for l in other]} vs "
                                 f"{[(l.name, l.width) for l in self.layer_info]}; the models must share one "
                                 f"architecture")
        self.layers = [l.name for l in self.layer_info]
        # One copy of the probe inputs per model device, so that each probe pass does not copy them again.
        self._probe_inputs = {}

        labels_np = self.labels.numpy()
        run_meta = {
            "model": {"class": type(models[0]).__name__, "summary": str(models[0])[:4000],
                      "n_parameters": sum(p.numel() for p in models[0].parameters())},
            "layers": [l.to_json() for l in self.layer_info],
            "n": int(labels_np.shape[0]),
            "log2_n": math.log2(labels_np.shape[0]),
            "h_y": _entropy_bits(labels_np),
            "n_classes": int(np.unique(labels_np).size),
            "probe": {"input_shape": list(self.inputs.shape), "sha1": _fingerprint(self.inputs, self.labels)},
            "estimators": [{"name": e.name, "settings": e.settings(), "has_lower": bool(e.has_lower)}
                           for e in self.estimators],
            "schedule": self.schedule.to_json(),
            "seeds": self.seeds,
            "fraction": self.fraction,
            "pre_activation": bool(pre_activation),
            "keep_activations": self.keep_activations,
            "versions": {"infoplane": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "caller": list(sys.argv) if sys.argv and sys.argv[0] else "python",
        }
        extra = dict(meta or {})
        # The caller may describe itself (e.g. the CLI's command line); everything else is measured here.
        reserved = (set(run_meta) - {"caller"}) | {"format", "format_version", "start_time", "end_time",
                                                    "complete", "resumed"}
        clash = sorted(set(extra) & reserved)
        if clash:
            raise ValueError(f"meta= may not set {clash}: the tracker writes those keys itself")
        self._writer = RunWriter(out, {**run_meta, **extra}, _IDENTITY, resume=resume, overwrite=overwrite)
        self.path = self._writer.path
        self._done = self._writer.done_epochs()
        if self.keep_activations:
            self._writer.save_labels(labels_np)

        self._buffer = []  # (epoch, [per seed: {layer: tensor [N, d]}], [per seed: {metric: value}])
        self._buffered_bytes = 0
        self._buffer_since = None
        self._seen = set()
        self.timings = {"capture": 0.0, "estimate": 0.0, "store": 0.0, "layer_epochs": 0}
        self._closed = False

    # ------------------------------------------------------------------------------------------------ public
    @property
    def run(self):
        """The estimates written so far as an in-memory :class:`~infoplane.store.Run` (complete after
        :meth:`close`)."""
        return self._writer.run()

    def step(self, epoch, **metrics):
        """Record ``epoch`` if the schedule contains it; otherwise return at once.

        Parameters
        ----------
        epoch : int
            The epoch just trained (0-based).
        **metrics : float or sequence of float
            Values to store in ``metrics.csv`` (e.g. ``train_loss=0.3``); with several models, either one value
            for all or one per model.

        Returns
        -------
        bool
            True when the epoch was recorded; False when it is not scheduled or was already in the resumed run.
        """
        if self._closed:
            raise RuntimeError("this Tracker is closed; create a new one (resume=True continues its run)")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise TypeError(f"epoch must be an integer, got {epoch!r}")
        if self._buffer and self._stale():
            self.flush()
        if epoch not in self.schedule:
            return False
        epoch = int(epoch)
        if epoch in self._done:
            return False
        if epoch in self._seen:
            raise ValueError(f"epoch {epoch} was already recorded by this tracker; pass each epoch once")
        values = self._metric_values(metrics)
        t0 = time.perf_counter()
        per_seed = []
        for model, seed in zip(self.models, self.seeds):
            here = model_device(model)  # looked up each time: the model may have moved since construction
            device = self._estimate_device or here
            if here not in self._probe_inputs:
                self._probe_inputs[here] = self.inputs.to(here)
            inputs = self._probe_inputs[here]
            acts = probe(model, inputs, self.layer_info, self.probe_batch_size, epoch=epoch)
            acts = {k: v.to(device) for k, v in acts.items()}
            # One host sync per member (not per layer) on accelerators.
            finite = torch.stack([torch.isfinite(a).all() for a in acts.values()]).tolist()
            for name, ok in zip(acts, finite):
                if not ok:
                    raise ValueError(f"layer {name!r} has non-finite activations (NaN or inf) at epoch {epoch} "
                                     f"(seed {seed}); the training has probably diverged (check the loss, "
                                     f"lower the learning rate)")
            per_seed.append(acts)
        t1 = time.perf_counter()
        self.timings["capture"] += t1 - t0
        if self.keep_activations:
            for seed, acts in zip(self.seeds, per_seed):
                self._writer.save_activations(seed, epoch, {k: v.cpu().numpy() for k, v in acts.items()})
            self.timings["store"] += time.perf_counter() - t1
        self._seen.add(epoch)
        self._buffer.append((epoch, per_seed, values))
        self._buffered_bytes += sum(a.numel() * a.element_size() for acts in per_seed for a in acts.values())
        self._buffer_since = self._buffer_since or time.monotonic()
        if self._buffered_bytes >= self.buffer_bytes or self._stale():
            self.flush()
        return True

    def flush(self):
        """Estimate every buffered epoch (one estimator call per seed, layer and estimator) and write the rows."""
        if not self._buffer:
            return
        buffer = sorted(self._buffer, key=lambda b: b[0])
        epochs = [b[0] for b in buffer]
        t0 = time.perf_counter()
        rows = []
        # One estimator call per layer covers every buffered epoch of every seed that shares a device.
        by_device = {}
        for i in range(len(self.seeds)):
            by_device.setdefault(buffer[0][1][i][self.layers[0]].device, []).append(i)
        for members in by_device.values():
            keys = [(self.seeds[i], e) for i in members for e in epochs]
            for layer in self.layers:
                acts = torch.stack([b[1][i][layer] for i in members for b in buffer])
                rows += _estimate_rows(acts, self.labels, self.estimators, self.fraction, keys, layer,
                                       inputs=self.inputs)  # issue 11
        t1 = time.perf_counter()
        # Metrics go first: if the process dies in between, the epochs are incomplete in the table, so a
        # resumed run drops their metrics and records them again.
        self._writer.add_metrics_many([((seed, epoch), vals) for epoch, _, values in buffer
                                  for seed, vals in zip(self.seeds, values) if vals])
        self._writer.add_rows(_sort_rows(rows, self.seeds, self.layers, self.estimators))
        # Only now is the buffer safe to drop: an estimator failure above keeps it for another flush.
        self._buffer, self._buffered_bytes, self._buffer_since = [], 0, None
        self.timings["estimate"] += t1 - t0
        self.timings["store"] += time.perf_counter() - t1
        self.timings["layer_epochs"] += len(epochs) * len(self.layers) * len(self.seeds)

    def close(self):
        """Estimate what is buffered, write it, and mark the run complete. Safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
        except BaseException:
            self._writer.finish(complete=False)  # the run stays resumable; close() may be called again
            raise
        self._closed = True
        self._writer.finish(complete=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        if self._closed:
            return
        self._closed = True
        # Keep what was already measured, but never let a second error hide the first one.
        try:
            self.flush()
        except Exception as err:
            warnings.warn(f"infoplane: the buffered epochs could not be estimated: {err!r}", RuntimeWarning)
        self._writer.finish(complete=False)

    # ----------------------------------------------------------------------------------------------- helpers
    def _stale(self):
        return self.flush_seconds is not None and time.monotonic() - self._buffer_since >= self.flush_seconds

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


def estimate(run_dir, estimators=None, out=None, *, buffer_bytes=256 * 2**20, device=None, overwrite=False):
    """Recompute a run's information plane from its saved activations, without retraining.

    The run must have been recorded with ``keep_activations=True``.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The recorded run.
    estimators : list, optional
        Estimator objects or ``settings()`` dicts; default: the run's own.
    out : str, os.PathLike or None
        New run directory for the result (``meta.json``, ``infoplane.csv``, a copy of ``metrics.csv``); None
        returns the result in memory only.
    buffer_bytes : int, default 256 MiB
        Most activation memory passed to one estimator call.
    device : str or torch.device, optional
        Where to estimate (default CPU).
    overwrite : bool, default False
        Replace a run already in ``out``.

    Returns
    -------
    Run
    """
    run_dir = os.fspath(run_dir)
    meta = read_meta(run_dir)
    acts_dir = os.path.join(run_dir, ACTIVATIONS)
    if not os.path.isfile(os.path.join(acts_dir, "labels.npy")):
        raise ValueError(f"{run_dir!r} has no saved activations; record the run with keep_activations=True")
    if out is not None and os.path.realpath(out) == os.path.realpath(run_dir):
        raise ValueError("out must be a new directory, not the run being re-estimated")
    estimators = _as_estimators([e["settings"] for e in meta["estimators"]] if estimators is None else estimators)
    labels = torch.from_numpy(np.load(os.path.join(acts_dir, "labels.npy"), allow_pickle=False))
    device = torch.device("cpu") if device is None else torch.device(device)
    layers = [l["name"] for l in meta["layers"]]
    widths = {l["name"]: l["width"] for l in meta["layers"]}
    new_meta = {k: v for k, v in meta.items()
                if k not in ("format", "format_version", "start_time", "end_time", "complete", "resumed")}
    new_meta.update(estimators=[{"name": e.name, "settings": e.settings(), "has_lower": bool(e.has_lower)}
                                for e in estimators],
                    keep_activations=False, derived_from=os.path.abspath(run_dir))
    writer = RunWriter(out, new_meta, overwrite=overwrite)  # refuses a bad `out` before any work
    rows = []
    for seed in meta["seeds"]:
        seed_dir = os.path.join(acts_dir, str(seed))
        names = os.listdir(seed_dir) if os.path.isdir(seed_dir) else []
        epochs = sorted(int(f[:-4]) for f in names if f.endswith(".npz") and f[:-4].isdigit())
        for layer in layers:
            per_epoch = max(1, labels.shape[0] * widths[layer] * 4)
            chunk = max(1, buffer_bytes // per_epoch)
            for start in range(0, len(epochs), chunk):
                part = epochs[start:start + chunk]
                arrays = []
                for e in part:
                    with np.load(os.path.join(seed_dir, f"{e}.npz"), allow_pickle=False) as z:
                        arrays.append(z[layer])
                acts = torch.from_numpy(np.stack(arrays)).to(device)
                rows += _estimate_rows(acts, labels, estimators, meta.get("fraction"), [(seed, e) for e in part],
                                       layer)
    rows = _sort_rows(rows, meta["seeds"], layers, estimators)
    writer.add_metrics_many(sorted(read_metrics(os.path.join(run_dir, METRICS))[1].items()))
    writer.add_rows(rows)
    writer.finish(complete=True)
    return writer.run()

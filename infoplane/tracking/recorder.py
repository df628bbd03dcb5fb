"""The I/O-free core of tracking: probe passes, the activation buffer, and batched estimation into table rows.

:class:`Recorder` knows which layers to capture, runs the probe set through each model at an epoch, keeps the
activations, and turns everything it holds into :class:`~infoplane.runs.format.Row` tuples with one estimator call
per layer (all buffered epochs of all seeds on a device at once). It never touches the file system: the
:class:`~infoplane.Tracker` decides when to estimate and where the rows go.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from infoplane.capture.hooks import model_device, probe
from infoplane.capture.reduce import reduce_activations
from infoplane.capture.stacked import StackedProbe
from infoplane.data import probeset
from infoplane.estimators.base import protocol_attribute
from infoplane.runs.format import VALUES, Row
from infoplane.tracking.targets import target_rows

__all__ = ["Recorder", "Buffered", "estimate_rows", "sort_rows", "new_timings", "add_timings"]

# Result attributes stored besides ixt/ity: the lower bounds (estimators with has_lower), and whatever optional
# fields (standard errors, permutation null) an estimator's result carries.
_OPTIONAL = VALUES[2:]


def _result_values(est, res, count: int) -> list[list[float]]:
    vals = []
    for name in VALUES:
        if name in ("ixt_lower", "ity_lower") and not est.has_lower:
            v = None
        else:
            v = getattr(res, name, None)
        if v is None:
            if name in ("ixt", "ity"):
                raise TypeError(f"estimator {est.name!r} returned {type(res).__name__} without {name!r}; an "
                                f"estimator's result needs .ixt and .ity")
            vals.append([math.nan] * count)  # not produced by this estimator: an empty cell, never a NaN result
            continue
        flat = torch.as_tensor(v).detach().to("cpu", torch.float64).reshape(-1)
        if flat.numel() != count:
            raise ValueError(f"estimator {est.name!r} returned {flat.numel()} values of {name} for {count} inputs")
        vals.append(flat.tolist())
    return vals


def new_timings() -> dict:
    """Zeroed timings: seconds in ``capture`` (probe passes), ``estimate`` (estimator calls) and ``store`` (writing),
    the ``layer_epochs`` estimated, and the estimator calls' seconds split by layer (``layers``, layer name ->
    seconds, every estimator together) and by estimator (``estimators``, estimator name -> seconds, every layer
    together)."""
    return {"capture": 0.0, "estimate": 0.0, "store": 0.0, "layer_epochs": 0, "layers": {}, "estimators": {}}


def add_timings(a: dict, b: dict) -> dict:
    """The sum of two timings dicts (as :func:`new_timings` makes them; missing entries count as zero)."""
    out = new_timings()
    for t in (a, b):
        for key, value in t.items():
            if isinstance(value, dict):
                for name, seconds in value.items():
                    out.setdefault(key, {})[name] = out.setdefault(key, {}).get(name, 0.0) + float(seconds)
            elif isinstance(value, (int, float)):
                out[key] = out.get(key, 0) + value
    return out


def estimate_rows(acts: torch.Tensor, labels: torch.Tensor, estimators: Sequence, fraction: Optional[float],
                  keys: Sequence[tuple[int, int]], layer: str, inputs: Optional[torch.Tensor] = None) -> list[Row]:
    """Rows of one layer for a batch of ``(seed, epoch)`` items.

    Parameters
    ----------
    acts : tensor ``[len(keys), N, d]``
    labels : int64 tensor ``[N]``
    estimators : estimator objects
    fraction : float or None
    keys : ``(seed, epoch)`` of each item
    layer : str
    inputs : tensor, optional
        The probe inputs, passed to estimators that declare ``needs_inputs`` (kNN, Rényi: I(X;T) against X).

    Returns
    -------
    list of Row

    Raises
    ------
    ValueError
        An estimator gave a non-finite value: the message names the estimator, layer, seed and epoch. Such a
        value is never stored (an empty cell means "not produced by this estimator").
    """
    labels = labels.to(acts.device)
    rows = []
    for est in estimators:
        try:
            if inputs is not None and protocol_attribute(est, "needs_inputs"):
                result = est(acts, labels, inputs=inputs)
            else:
                result = est(acts, labels)
        except ValueError as err:
            # Estimators speak of batch items; the user needs the layer and the epochs.
            epochs = sorted({e for _, e in keys})
            seeds = sorted({s for s, _ in keys})
            raise ValueError(f"estimator {est.name!r} failed on layer {layer!r} at epochs {epochs} (seeds {seeds}; "
                             f"batch items in seed-then-epoch order): {err}") from err
        vals = _result_values(est, result, len(keys))
        for name, column in zip(VALUES, vals):
            produced = name in ("ixt", "ity") or not all(math.isnan(v) for v in column)
            bad = [i for i, v in enumerate(column) if not math.isfinite(v)] if produced else []
            if bad:
                seed, epoch = keys[bad[0]]
                raise ValueError(f"estimator {est.name!r} gave a non-finite {name} ({column[bad[0]]}) for layer "
                                 f"{layer!r} at epoch {epoch} (seed {seed}); nothing of that epoch was stored. "
                                 f"Check the activations' scale, or use precision='float64' where available")
        rows += [Row._make([seed, fraction, e, layer, est.name, *(v[i] for v in vals), ""])
                 for i, (seed, e) in enumerate(keys)]
    return rows


def sort_rows(rows: list[Row], seeds: Sequence[int], layers: Sequence[str], estimators: Sequence,
              targets: Sequence[str] = ()) -> list[Row]:
    """Rows in table order: seed, epoch, layer (model order), estimator, target (the labels first)."""
    order = [{v: i for i, v in enumerate(x)} for x in (seeds, layers, [e.name for e in estimators], ["", *targets])]
    return sorted(rows, key=lambda r: (order[0][r.seed], r.epoch, order[1][r.layer], order[2][r.estimator],
                                       order[3][r.target]))


@dataclass
class Buffered:
    """One recorded epoch waiting for estimation: activations per seed (layer -> ``[N, d]``) and metrics."""

    epoch: int
    acts: list
    metrics: list


@dataclass
class Recorder:
    """Capture and estimate, without I/O.

    Parameters
    ----------
    models : list of nn.Module
        One per seed.
    seeds : list of int
    inputs, labels : tensors
        The validated probe set (labels as int64 class indices ``[N]``, or ``[S, N]``: one row per model, each
        model measured against its own labels).
    layers : list of Layer
        Resolved layers (:func:`infoplane.capture.hooks.resolve_layers`).
    estimators : list
    fraction : float or None
    probe_batch_size : int
    device : torch.device or None
        Where buffered activations are kept and estimated (default: each model's device).
    reductions : dict or None
        Layer name -> :class:`~infoplane.capture.reduce.Reduction` applied before buffering (see :meth:`reduce`).
    per_layer : dict or None
        Layer name -> the estimators' versions for that layer (:func:`infoplane.tracking.estimators.per_layer`),
        in the order of ``estimators``; None: ``estimators`` on every layer.
    clock : callable, default ``time.monotonic``
        Seconds on the clock that times each estimator call for :attr:`costs`.
    targets : list of Target
        Side variables (:mod:`infoplane.tracking.targets`) whose I(T;Z) each estimator also gives.
    seed_inputs : list, optional
        One probe input per model, where the models are probed on different inputs (each on its own); None:
        every model is probed on ``inputs``.

    Attributes
    ----------
    costs : dict
        ``(layer, estimator name)`` -> seconds per layer-epoch (one item of a batch) of that estimator on that
        layer, as measured by its latest call; :meth:`cost` predicts from it.
    """

    models: list
    seeds: list
    inputs: torch.Tensor
    labels: torch.Tensor
    layers: list
    estimators: list
    fraction: Optional[float] = None
    probe_batch_size: int = 4096
    device: Optional[torch.device] = None
    reductions: Optional[dict] = None
    per_layer: Optional[dict] = None
    buffer: list = field(default_factory=list)
    buffered_bytes: int = 0
    timings: dict = field(default_factory=new_timings)
    clock: Callable[[], float] = time.monotonic
    costs: dict = field(default_factory=dict)
    targets: list = field(default_factory=list)
    seed_inputs: Optional[list] = None

    def __post_init__(self):
        # One copy of the probe inputs per model device, so that each probe pass does not copy them again.
        self._probe_inputs = {}
        # Identical plain MLPs are probed together in one stacked pass (where it matches their own bit for bit).
        self._stacked = StackedProbe()

    @property
    def layer_names(self) -> list[str]:
        return [l.name for l in self.layers]

    def capture(self, epoch: int) -> list[dict]:
        """Probe every model at ``epoch``: per seed, layer name -> activations ``[N, d]``."""
        t0 = time.perf_counter()
        per_seed = []
        together = None
        if self.seed_inputs is None:  # one probe set: identical networks may be probed in one stacked pass
            first = model_device(self.models[0])
            together = self._stacked(self.models, self._placed(0, first), self.layers, self.probe_batch_size, epoch)
        for i, (model, seed) in enumerate(zip(self.models, self.seeds)):
            here = model_device(model)  # looked up each time: the model may have moved since construction
            device = self.device or here
            if together is not None:
                acts = together[i]
            else:
                acts = probe(model, self._placed(i, here), self.layers, self.probe_batch_size, epoch=epoch)
            acts = {k: v.to(device) for k, v in acts.items()}
            if together is not None and self._stacked.finite is not None and self._stacked.finite[i]:
                finite = [True] * len(acts)  # checked on the stacked pass
            else:  # one host sync per member (not per layer) on accelerators
                finite = torch.stack([torch.isfinite(a).all() for a in acts.values()]).tolist()
            for name, ok in zip(acts, finite):
                if ok:
                    continue
                if epoch == 0:  # nothing has trained yet: the network or the probe inputs are at fault
                    raise ValueError(f"layer {name!r} has non-finite activations (NaN or inf) at epoch 0, the "
                                     f"initialisation, before any training (seed {seed}); check the probe inputs "
                                     f"for NaN or inf and the network's initial weights and forward pass")
                raise ValueError(f"layer {name!r} has non-finite activations (NaN or inf) at epoch {epoch} "
                                 f"(seed {seed}); the training has probably diverged (check the loss, "
                                 f"lower the learning rate)")
            per_seed.append(acts)
        self.timings["capture"] += time.perf_counter() - t0
        return per_seed

    def _placed(self, i: int, device: torch.device):
        """Model ``i``'s probe inputs on ``device`` (copied there once)."""
        key = device if self.seed_inputs is None else (i, device)
        if key not in self._probe_inputs:
            self._probe_inputs[key] = probeset.to_device(self._model_inputs(i), device)
        return self._probe_inputs[key]

    def _model_inputs(self, i: int):
        return self.inputs if self.seed_inputs is None else self.seed_inputs[i]

    def _model_labels(self, i: int) -> torch.Tensor:
        return self.labels if self.labels.ndim == 1 else self.labels[i]

    def reduce(self, per_seed: list[dict]) -> list[dict]:
        """Apply the layer reductions (``flatten`` layers pass through) to captured activations."""
        if not self.reductions:
            return per_seed
        out = []
        for acts in per_seed:
            reduced = {}
            for layer in self.layers:
                a, r = acts[layer.name], self.reductions[layer.name]
                reduced[layer.name] = a if r.kind == "flatten" else reduce_activations(
                    a, r, shape=layer.shape or (layer.width,), layer=layer.name).to(a.dtype)
            out.append(reduced)
        return out

    def add(self, epoch: int, acts: list, metrics: list) -> None:
        """Buffer one captured epoch."""
        self.buffer.append(Buffered(int(epoch), acts, metrics))
        self.buffered_bytes += sum(a.numel() * a.element_size() for per in acts for a in per.values())

    def estimate(self, count: Optional[int] = None) -> tuple[list[Row], list]:
        """Rows and metrics of the ``count`` epochs buffered first (default: all); the buffer is kept until
        :meth:`drop` (so a failure to estimate or to write loses nothing).

        Parameters
        ----------
        count : int, optional
            How many of the buffered epochs, in the order they were added; None: all of them.

        Returns
        -------
        rows : list of Row, in table order
        metrics : list of ``((seed, epoch), {name: value})``
        """
        t0 = time.perf_counter()
        buffer = sorted(self.buffer[:count], key=lambda b: b.epoch)
        epochs = [b.epoch for b in buffer]
        names = self.layer_names
        rows = []
        # One estimator call per layer covers every buffered epoch of every seed that shares a device (and, where
        # each seed has its own probe labels, one call per seed: each against its own labels and inputs, exactly
        # the call a run of that seed alone makes).
        groups: dict[tuple, list[int]] = {}
        for i in range(len(self.seeds)):
            own = i if self.labels.ndim == 2 else None
            groups.setdefault((buffer[0].acts[i][names[0]].device, own), []).append(i)
        for members in groups.values():
            keys = [(self.seeds[i], e) for i in members for e in epochs]
            labels, inputs = self._model_labels(members[0]), self._model_inputs(members[0])
            for layer in names:
                acts = torch.stack([b.acts[i][layer] for i in members for b in buffer])
                for est in self.per_layer[layer] if self.per_layer else self.estimators:
                    # one at a time, so that each one's cost is known
                    t1, w1 = self.clock(), time.perf_counter()
                    mine = estimate_rows(acts, labels, [est], self.fraction, keys, layer, inputs=inputs)
                    rows += mine
                    if self.targets:
                        rows += target_rows(acts, self.targets, est, mine, inputs=inputs)
                    self.costs[(layer, est.name)] = (self.clock() - t1) / len(keys)
                    spent = time.perf_counter() - w1
                    self.timings["layers"][layer] = self.timings["layers"].get(layer, 0.0) + spent
                    self.timings["estimators"][est.name] = self.timings["estimators"].get(est.name, 0.0) + spent
        metrics = [((seed, b.epoch), vals) for b in buffer for seed, vals in zip(self.seeds, b.metrics) if vals]
        self.timings["estimate"] += time.perf_counter() - t0
        return sort_rows(rows, self.seeds, names, self.estimators, [t.name for t in self.targets]), metrics

    def cost(self, count: Optional[int] = None) -> Optional[float]:
        """Predicted seconds to estimate the ``count`` epochs buffered first (default: all), from :attr:`costs`.

        Returns
        -------
        float or None
            Seconds; None while some estimator has not yet been timed on some layer.
        """
        items = len(self.buffer if count is None else self.buffer[:count]) * len(self.seeds)
        try:
            per_item = sum(self.costs[(l, e.name)] for l in self.layer_names for e in self.estimators)
        except KeyError:
            return None
        return per_item * items

    def drop(self, count: Optional[int] = None) -> None:
        """Forget the ``count`` epochs buffered first (default: all), after their rows were written."""
        gone, self.buffer = (self.buffer, []) if count is None else (self.buffer[:count], self.buffer[count:])
        self.timings["layer_epochs"] += len(gone) * len(self.layers) * len(self.seeds)
        self.buffered_bytes -= sum(a.numel() * a.element_size() for b in gone for per in b.acts for a in per.values())

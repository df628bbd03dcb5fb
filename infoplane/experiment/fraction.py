"""One training fraction of :func:`~infoplane.experiment.track`: its settings (:class:`TrackJob`, shared by every
fraction, and :class:`FractionPlan`) and :func:`run_fraction`, which trains and tracks it into its run directory.
The local loop of ``track()`` and each Ray task (:mod:`~infoplane.experiment.raysweep`) run the same code.
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from infoplane.capture.hooks import resolve_layers, weight_names
from infoplane.data import probeset
from infoplane.data.modelfile import ModelFile
from infoplane.estimators.binning import BinRangeWarning
from infoplane.experiment.errors import STATE_FILE
from infoplane.runs import lifecycle as rundir
from infoplane.runs.format import save_corruption
from infoplane.runs.writer import META, Run, load_run, read_meta
from infoplane.tracking.schedule import Schedule
from infoplane.tracking.sharpness import subset_indices
from infoplane.tracking.tracker import Tracker
from infoplane.train.loop import fit
from infoplane.train.metrics import evaluate_members
from infoplane.train.state import load_state, save_state

__all__ = ["TrackJob", "FractionPlan", "run_fraction"]


@dataclass(frozen=True)
class TrackJob:
    """The settings shared by every training fraction of one :func:`track` call (checked before any training).

    Attributes
    ----------
    model_file : ModelFile
    inputs, labels : torch.Tensor
        All samples, shape [N, ...], and their class indices, shape [N].
    seeds : list of int
        The seeds trained side by side.
    epochs : int
        Training epochs; the schedule always includes this last epoch (the trained network).
    lr, batch_size, optimizer, device, vectorize
        Training settings, as for :func:`infoplane.train.fit`.
    estimators : list
        Estimator objects.
    schedule : Schedule
        Recorded epochs, ending at ``epochs``.
    resume, overwrite, keep_activations, progress : bool
    log : callable
        Receives one line of text per message.
    reduce : None, str or dict
        Layer reduction before estimating (see :class:`~infoplane.Tracker`).
    rho : float, optional
        SAM's radius with ``optimizer="sam"`` or ``"asam"``.
    sharpness : dict, optional
        Sharpness measures to record (``name -> options``, see :mod:`infoplane.tracking.sharpness`), each on
        ``sharpness_samples`` rows of its seed's training split.
    on_epoch : callable, optional
        Called with 1 after every trained epoch (the progress of a Ray task, :mod:`infoplane.experiment.raysweep`).
    gradients : bool
        Record the per-layer gradient statistics of every recorded epoch's mini-batches (``gradients.csv``).
    corruption : dict, optional
        The corruption the data went through (``settings`` and the ``arrays`` of ``corruption.npz``), or None.
    seed_inputs, seed_labels : list of torch.Tensor, optional
        Per seed, the inputs ``[N, ...]`` and labels ``[N]`` that seed trains on (its own corrupted draw; a seed
        whose inputs were not corrupted holds ``inputs`` itself); None: every seed trains on ``inputs`` and
        ``labels``, which are then the data trained on (with a draw they are the clean data).
    """

    model_file: ModelFile
    inputs: torch.Tensor
    labels: torch.Tensor
    seeds: list[int]
    epochs: int
    lr: float | None
    batch_size: int | str
    optimizer: str | Callable | None
    estimators: list
    schedule: Schedule
    device: str | torch.device
    resume: bool
    overwrite: bool
    keep_activations: bool
    vectorize: bool | str
    progress: bool
    log: Callable[[str], Any]
    reduce: str | dict | None = None
    on_epoch: Callable[[int], Any] | None = None
    gradients: bool = True
    corruption: dict | None = None
    rho: float | None = None
    sharpness: dict | None = None
    sharpness_samples: int | None = 1024
    seed_inputs: list | None = None
    seed_labels: list | None = None

    def seed_data(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per seed, the (inputs, labels) it trains on."""
        if self.seed_labels is None:
            return [(self.inputs, self.labels)] * len(self.seeds)
        return list(zip(self.seed_inputs or [self.inputs] * len(self.seeds), self.seed_labels))


@dataclass(frozen=True)
class FractionPlan:
    """One training fraction of a :func:`track` call: where it goes and what it trains and probes on.

    Attributes
    ----------
    fraction : float
    run_dir : pathlib.Path
    splits : list of (ndarray, ndarray)
        Per seed, the training and held-out row indices.
    probe_x, probe_y : torch.Tensor or list of torch.Tensor
        The samples on which the plane is measured, or one probe set per seed (each seed's own draw of
        corrupted data, ``TrackJob.seed_labels``), in the order of the seeds.
    meta : dict
        Entries for ``meta.json`` (data, model file, caller, training and split settings).
    targets : dict, optional
        Side variables of the probe set (``Tracker(targets=...)``), e.g. the clean labels of corrupted data.
    schedule : Schedule, optional
        This fraction's recorded epochs when they differ from the job's (a finished run trained on to more
        epochs keeps its schedule so far); None: the job's.
    extend_from : int, optional
        The epochs of a finished run in ``run_dir`` that is trained on to ``TrackJob.epochs``; None otherwise.
    """

    fraction: float
    run_dir: Path
    splits: list
    probe_x: torch.Tensor
    probe_y: torch.Tensor
    meta: dict
    targets: dict | None = None
    schedule: Schedule | None = None
    extend_from: int | None = None


def run_fraction(job: TrackJob, plan: FractionPlan) -> Run:
    """Train and track one training fraction into its run directory (what each fraction of :func:`track` and each
    Ray task runs).

    Parameters
    ----------
    job : TrackJob
        The settings shared by every fraction.
    plan : FractionPlan
        This fraction's directory, splits and probe set.

    Returns
    -------
    Run
        The finished run, read back from its directory (a complete one is skipped when resuming).
    """
    log, seeds, epochs, run_dir = job.log, job.seeds, job.epochs, plan.run_dir
    if job.resume and plan.extend_from is None and (run_dir / META).exists() and read_meta(run_dir).get("complete"):
        log(f"{run_dir}: complete, skipped")
        return load_run(run_dir)
    if plan.extend_from is not None:
        log(f"{run_dir}: training on from epoch {plan.extend_from} to {epochs}")
    if job.overwrite and rundir.is_run(run_dir):
        # Cleared through the one owner of deletion, under the run's lock: only infoplane's files go.
        lock, _ = rundir.open_run_dir(run_dir, overwrite=True)
        lock.release()
    state_path = run_dir / STATE_FILE
    state = load_state(state_path) if job.resume and state_path.exists() else None
    bar = _progress(job.progress, epochs, plan.fraction, state)
    tracker = None
    last_save = time.monotonic()
    grad_layers = _gradient_layers(job, plan) if job.gradients else None
    latest: list = [None]  # the gradient statistics of the epoch just trained, per seed

    def make_tracker(members):
        # Every engine gathers them (the torch ones through optimiser hooks, the fused kernel itself), at the
        # recorded epochs only.
        given = grad_layers is not None
        made = Tracker(members, plan.probe_x, plan.probe_y, layers=job.model_file.layers, estimators=job.estimators,
                       schedule=plan.schedule or job.schedule, out=run_dir, seeds=seeds, fraction=plan.fraction,
                       meta=plan.meta, keep_activations=job.keep_activations, resume=job.resume, reduce=job.reduce,
                       targets=plan.targets, gradients=(lambda: latest[0]) if given else False,
                       per_seed=isinstance(plan.probe_y, list), **_sharpness_options(job, plan))
        if job.corruption is not None:  # under the tracker's lock of the run directory
            try:
                save_corruption(run_dir, job.corruption["arrays"])
            except BaseException:
                made.__exit__(*sys.exc_info())
                raise
        return made

    fit_x, fit_y, train_idx, held_out = _fit_data(job, plan)
    clean = _CleanMetrics(job, plan, fit_x, train_idx, held_out)

    def callback(epoch, members, metrics):
        nonlocal tracker
        latest[0] = metrics.gradients
        if tracker is None:  # the trainer's member modules stay the same objects for the whole run
            tracker = make_tracker(members)
        if epoch in tracker.schedule:
            values = dict(metrics)
            values.update(clean(members))
            tracker.step(epoch, **values)
            if bar is not None:
                bar.set_postfix(_postfix(values), refresh=False)
        if bar is not None:
            bar.update(1)
        if job.on_epoch is not None:  # a Ray task reports its progress to the driver
            job.on_epoch(1)

    save_cost = 0.0  # seconds the last checkpoint's write took

    def should_save(epoch):
        return time.monotonic() - last_save >= checkpoint_interval(save_cost)

    def checkpoint(train_state):
        nonlocal last_save, save_cost
        # The estimates of every epoch up to this state are written before the state is saved, so a resumed run
        # never skips an epoch whose rows were lost; between checkpoints the tracker batches as it likes.
        tracker.flush()
        t0 = time.monotonic()
        save_state(state_path, train_state)
        last_save = time.monotonic()
        save_cost = last_save - t0

    test_idx = None if any(len(t) == 0 for t in held_out) else held_out  # fraction 1: no held-out samples
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit(job.model_file, fit_x, fit_y, train_idx, seeds=seeds,
                         epochs=epochs, lr=job.lr, batch_size=job.batch_size, optimizer=job.optimizer, rho=job.rho,
                         device=job.device, vectorize=job.vectorize, callback=callback, test_idx=test_idx,
                         state=state, checkpoint=checkpoint, checkpoint_every=should_save, gradients=grad_layers,
                         gradient_epochs=(plan.schedule or job.schedule).__contains__)
        if tracker is None:  # resumed after the last epoch: nothing left to train
            tracker = make_tracker(result.members)
    except BaseException:
        if tracker is not None:
            tracker.__exit__(*sys.exc_info())  # keeps what was measured, marks the run unfinished
        raise
    finally:
        if bar is not None:
            bar.close()
    # The final training state stays beside the finished run, so that it can be trained on to more epochs.
    tracker.close()
    for w in caught:  # advice on the measurement is a warning for the caller, even when the log is quiet
        if issubclass(w.category, BinRangeWarning):
            warnings.warn(w.message, stacklevel=2)
    for message in dict.fromkeys(str(w.message) for w in caught if not issubclass(w.category, BinRangeWarning)):
        log(f"note: {message}")
    how = "vectorised" if result.vectorized else "one at a time"
    log(f"{run_dir}: {len(seeds)} seed(s) trained {how} for {epochs} epochs")
    return load_run(run_dir)


#: Shortest time between two training checkpoints (seconds), and the largest share of the time they may take.
CHECKPOINT_SECONDS, CHECKPOINT_SHARE = 1.0, 0.05


def checkpoint_interval(save_seconds: float) -> float:
    """Seconds between training checkpoints: :data:`CHECKPOINT_SECONDS`, or longer where one save takes more than
    :data:`CHECKPOINT_SHARE` of that (many seeds, a slow disk), so that saving never costs more than that share of
    the run. A kill loses at most this interval of training."""
    return max(CHECKPOINT_SECONDS, save_seconds / CHECKPOINT_SHARE)


def _fit_data(job: TrackJob, plan: FractionPlan) -> tuple[torch.Tensor, torch.Tensor, list, list]:
    """The inputs and labels ``fit`` trains on, and each seed's training and held-out rows in them.

    Seeds with their own draws of corrupted data train on the concatenation of the draws, seed ``i``'s rows offset
    by ``i * N``. Every engine (the fused kernel, the stacked ensembles, one seed at a time) already takes one set
    of rows per seed and gathers each seed's minibatches by row, in an order drawn from positions in that set, so
    each seed trains on exactly its own draw's rows in the order it would alone, at the cost of ``S`` copies of
    the data set.
    """
    train = [np.asarray(s[0]) for s in plan.splits]
    held_out = [np.asarray(s[1]) for s in plan.splits]
    if job.seed_labels is None:
        return job.inputs, job.labels, train, held_out
    data = job.seed_data()
    n = len(job.labels)
    x = torch.cat([torch.as_tensor(d[0]) for d in data])
    y = torch.cat([torch.as_tensor(d[1]) for d in data])
    return x, y, [t + i * n for i, t in enumerate(train)], [t + i * n for i, t in enumerate(held_out)]


def _gradient_layers(job: TrackJob, plan: FractionPlan) -> dict[str, list[str]] | None:
    """Per tracked layer, the names of the weights whose gradients describe it; None (with a note) when no tracked
    layer has a trainable weight."""
    model = job.model_file.build(job.seeds[0])
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    example = probeset.take(plan.probe_x[0] if isinstance(plan.probe_y, list) else plan.probe_x, 0, 2)
    if weight is not None:
        example = probeset.cast_floating(example, weight.dtype)
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")  # the tracker says which modules the default choice passes over
        names = [layer.name for layer in resolve_layers(model, example, job.model_file.layers)]
        found = weight_names(model, example, names)
    if not any(model.get_parameter(n).requires_grad for v in found.values() for n in v):
        job.log("note: gradient statistics are not recorded: no tracked layer has a trainable weight")
        return None
    return found


def _sharpness_options(job: TrackJob, plan: FractionPlan) -> dict[str, Any]:
    """The tracker's sharpness arguments: each seed's measures on ``sharpness_samples`` rows of its own training
    split, drawn here (only those rows are copied) and named in ``meta.json`` as rows of the data set. The
    trainer's members are torch modules over the trained weights whichever engine trains them (the fused
    kernel's included), so sharpness changes nothing in how the seeds are trained."""
    if not job.sharpness:
        return {}
    rows = [np.asarray(train)[subset_indices(len(train), job.sharpness_samples, 0)] for train, _ in plan.splits]
    data = [(x[torch.as_tensor(r)], y[torch.as_tensor(r)]) for r, (x, y) in zip(rows, job.seed_data())]
    plan.meta["sharpness_rows"] = [r.tolist() for r in rows] if len(rows) > 1 else rows[0].tolist()
    return {"sharpness": job.sharpness, "sharpness_data": data if len(data) > 1 else data[0],
            "sharpness_loss": job.model_file.loss, "sharpness_samples": None}


class _CleanMetrics:
    """On data with corrupted labels, loss and accuracy against the clean labels (``train_acc_clean``,
    ``test_acc_clean``, ...), beside the trainer's, which are against the labels the network was trained on.

    It reads the data as ``fit`` does (:func:`_fit_data`: per-seed draws concatenated, rows offset per seed), each
    seed's rows paired with the clean labels."""

    def __init__(self, job: TrackJob, plan: FractionPlan, inputs: torch.Tensor, train: list, held_out: list) -> None:
        settings = (job.corruption or {}).get("settings") or {}
        self.labels = None
        if settings.get("label_noise", 0) > 0:
            clean = torch.as_tensor(np.asarray(job.corruption["arrays"]["clean_labels"]))  # type: ignore[index]
            self.labels = clean.repeat(len(inputs) // len(clean))  # one copy per seed's draw
        self.inputs = inputs
        self.loss = job.model_file.loss if job.model_file.loss is not None else torch.nn.CrossEntropyLoss()
        self.train = [torch.as_tensor(t) for t in train]
        test = [torch.as_tensor(t) for t in held_out]
        self.test = None if any(len(t) == 0 for t in test) else test
        self._placed: tuple | None = None

    def __call__(self, members: list) -> dict:
        if self.labels is None:
            return {}
        weight = next((p for p in members[0].parameters() if p.is_floating_point()), None)
        device = weight.device if weight is not None else torch.device("cpu")
        if self._placed is None or self._placed[0] != device:  # once per device, as the probe inputs
            x = self.inputs.to(device)
            if weight is not None and x.is_floating_point():
                x = x.to(weight.dtype)
            self._placed = (device, x, self.labels.to(device))
        _, x, y = self._placed
        out = evaluate_members(members, self.loss, x, y, self.train, self.test)
        return {f"{k}_clean": v for k, v in out.items()}


def _progress(enabled: bool, epochs: int, fraction: float, state: dict | None) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    done = int(state["epoch"]) if state is not None else -1
    return tqdm(total=epochs + 1, initial=done + 1, desc=f"fraction {fraction:g}", unit="epoch",
                dynamic_ncols=True, leave=True)


def _postfix(metrics: dict) -> dict[str, str]:
    post = {}
    for key in ("train_loss", "train_acc", "test_acc"):
        if key in metrics:
            post[key.replace("train_", "").replace("test_acc", "test")] = f"{float(np.mean(metrics[key])):.3g}"
    return post

"""One training fraction of :func:`~infoplane.experiment.track`: its settings (:class:`TrackJob`, shared by every
fraction, and :class:`FractionPlan`) and :func:`run_fraction`, which trains and tracks it into its run directory.
The local loop of ``track()`` and each Ray task (:mod:`~infoplane.experiment.raysweep`) run the same code.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from infoplane.data.modelfile import ModelFile
from infoplane.experiment.errors import STATE_FILE
from infoplane.runs import lifecycle as rundir
from infoplane.runs.format import save_corruption
from infoplane.runs.writer import META, Run, load_run, read_meta
from infoplane.tracking.schedule import Schedule
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
    on_epoch : callable, optional
        Called with 1 after every trained epoch (the progress of a Ray task, :mod:`infoplane.experiment.raysweep`).
    corruption : dict, optional
        The corruption the data went through (``settings`` and the ``arrays`` of ``corruption.npz``), or None.
    """

    model_file: ModelFile
    inputs: torch.Tensor
    labels: torch.Tensor
    seeds: list[int]
    epochs: int
    lr: float | None
    batch_size: int
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
    corruption: dict | None = None


@dataclass(frozen=True)
class FractionPlan:
    """One training fraction of a :func:`track` call: where it goes and what it trains and probes on.

    Attributes
    ----------
    fraction : float
    run_dir : pathlib.Path
    splits : list of (ndarray, ndarray)
        Per seed, the training and held-out row indices.
    probe_x, probe_y : torch.Tensor
        The samples on which the plane is measured.
    meta : dict
        Entries for ``meta.json`` (data, model file, caller, training and split settings).
    targets : dict, optional
        Side variables of the probe set (``Tracker(targets=...)``), e.g. the clean labels of corrupted data.
    """

    fraction: float
    run_dir: Path
    splits: list
    probe_x: torch.Tensor
    probe_y: torch.Tensor
    meta: dict
    targets: dict | None = None


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
    if job.resume and (run_dir / META).exists() and read_meta(run_dir).get("complete"):
        log(f"{run_dir}: complete, skipped")
        return load_run(run_dir)
    if job.overwrite and rundir.is_run(run_dir):
        # Cleared through the one owner of deletion, under the run's lock: only infoplane's files go.
        lock, _ = rundir.open_run_dir(run_dir, overwrite=True)
        lock.release()
    state_path = run_dir / STATE_FILE
    state = load_state(state_path) if job.resume and state_path.exists() else None
    bar = _progress(job.progress, epochs, plan.fraction, state)
    tracker = None
    last_save = time.monotonic()

    def make_tracker(members):
        made = Tracker(members, plan.probe_x, plan.probe_y, layers=job.model_file.layers, estimators=job.estimators,
                       schedule=job.schedule, out=run_dir, seeds=seeds, fraction=plan.fraction, meta=plan.meta,
                       keep_activations=job.keep_activations, resume=job.resume, reduce=job.reduce,
                       targets=plan.targets)
        if job.corruption is not None:  # under the tracker's lock of the run directory
            try:
                save_corruption(run_dir, job.corruption["arrays"])
            except BaseException:
                made.__exit__(*sys.exc_info())
                raise
        return made

    clean = _CleanMetrics(job, plan)

    def callback(epoch, members, metrics):
        nonlocal tracker
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

    def should_save(epoch):
        return time.monotonic() - last_save >= 1.0

    def checkpoint(train_state):
        nonlocal last_save
        # The estimates of every epoch up to this state are written before the state is saved, so a resumed run
        # never skips an epoch whose rows were lost; between checkpoints the tracker batches as it likes.
        tracker.flush()
        save_state(state_path, train_state)
        last_save = time.monotonic()

    held_out = [s[1] for s in plan.splits]
    test_idx = None if any(len(t) == 0 for t in held_out) else held_out  # fraction 1: no held-out samples
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit(job.model_file, job.inputs, job.labels, [s[0] for s in plan.splits], seeds=seeds,
                         epochs=epochs, lr=job.lr, batch_size=job.batch_size, optimizer=job.optimizer,
                         device=job.device, vectorize=job.vectorize, callback=callback, test_idx=test_idx,
                         state=state, checkpoint=checkpoint, checkpoint_every=should_save)
        if tracker is None:  # resumed after the last epoch: nothing left to train
            tracker = make_tracker(result.members)
    except BaseException:
        if tracker is not None:
            tracker.__exit__(*sys.exc_info())  # keeps what was measured, marks the run unfinished
        raise
    finally:
        if bar is not None:
            bar.close()
    tracker.close()
    if state_path.exists():
        os.remove(state_path)
    for message in dict.fromkeys(str(w.message) for w in caught):
        log(f"note: {message}")
    how = "vectorised" if result.vectorized else "one at a time"
    log(f"{run_dir}: {len(seeds)} seed(s) trained {how} for {epochs} epochs")
    return load_run(run_dir)


class _CleanMetrics:
    """On data with corrupted labels, loss and accuracy against the clean labels (``train_acc_clean``,
    ``test_acc_clean``, ...), beside the trainer's, which are against the labels the network was trained on."""

    def __init__(self, job: TrackJob, plan: FractionPlan) -> None:
        settings = (job.corruption or {}).get("settings") or {}
        self.labels = None
        if settings.get("label_noise", 0) > 0:
            self.labels = torch.as_tensor(np.asarray(job.corruption["arrays"]["clean_labels"]))  # type: ignore[index]
        self.inputs = job.inputs
        self.loss = job.model_file.loss if job.model_file.loss is not None else torch.nn.CrossEntropyLoss()
        self.train = [torch.as_tensor(np.asarray(s[0])) for s in plan.splits]
        held_out = [torch.as_tensor(np.asarray(s[1])) for s in plan.splits]
        self.test = None if any(len(t) == 0 for t in held_out) else held_out
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

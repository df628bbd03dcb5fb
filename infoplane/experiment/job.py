"""Train a model file at several training fractions and seeds, and track its information plane.

This is the engine behind ``infoplane track``: model file -> data -> split per fraction and seed -> training
(seeds vectorised when possible) -> :class:`~infoplane.tracking.tracker.Tracker` -> one run directory per fraction.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from infoplane import data as data_mod
from infoplane._validate import check_float, check_int
from infoplane.capture import reduce as reduce_mod
from infoplane.capture.hooks import resolve_layers
from infoplane.data.labels import as_class_indices
from infoplane.data.modelfile import ModelFile, is_batch_size, load_model_file
from infoplane.data.standard import STANDARD
from infoplane.estimators.base import default_estimator
from infoplane.experiment.errors import STATE_FILE, ConfigError, RunExistsError
from infoplane.experiment.fraction import FractionPlan, TrackJob, run_fraction
from infoplane.runs import lifecycle as rundir
from infoplane.runs.meta import describe_loss, describe_optimizer
from infoplane.runs.writer import META, Run, read_meta, setting_differences
from infoplane.tracking.estimators import layer_contexts, per_layer
from infoplane.tracking.schedule import Schedule, ending_at, extended, from_json, log_schedule
from infoplane.tracking.sharpness import as_measures
from infoplane.train.spec import TrainSpec
from infoplane.viz.stats import chain_summary

SPLITS = ("stratified", "original")
PROBES = ("all", "train", "test")


def fraction_dir(out: str | os.PathLike, fraction: float) -> Path:
    """Run directory of one training fraction under ``out`` (e.g. ``out/fraction-0.05``).

    Parameters
    ----------
    out : str or os.PathLike
        Parent directory of the run directories.
    fraction : float
        Training fraction; its name keeps 6 significant digits (``%g``).

    Returns
    -------
    pathlib.Path
    """
    return Path(out) / f"fraction-{fraction:g}"


def _check_fraction_dirs(out: Path, fractions: list[float]) -> None:
    """Two fractions must not share a run directory (one would silently replace the other)."""
    seen: dict[Path, float] = {}
    for f in fractions:
        d = fraction_dir(out, f)
        if d in seen:
            raise ConfigError(f"`fractions` {seen[d]!r} and {f!r} would both be written to {d}; give fractions that "
                              f"differ within 6 significant digits", "fractions")
        seen[d] = f


def _load_data(spec: Any, model_file: ModelFile, log: Callable[[str], Any], data_root: str | os.PathLike | None = None,
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor, str, list | None]:
    npz_names = None  # class names stored in an .npz (its labels arrive here as indices)
    standard = isinstance(spec, str) and spec.lower() in STANDARD
    if (data_root is not None or download) and not standard:
        given = " and ".join(a for a, v in (("`data_root`", data_root is not None), ("`download=True`", download)) if v)
        raise ConfigError(f"{given} {'apply' if ' and ' in given else 'applies'} only to the standard data sets ({', '.join(sorted(STANDARD))}); the "
                          f"data here is {'the model file' if spec is None else repr(spec)}: drop {given}",
                          "data_root", "download")
    if spec is not None and model_file.data is not None:
        given = f"`data={os.fspath(spec)!r}`" if isinstance(spec, (str, os.PathLike)) else "the data given"
        log(f"note: {given} replaces the data() defined in {model_file.path.name}")
    if spec is None:
        if model_file.data is not None:
            try:
                inputs, labels = model_file.data()
            except Exception as err:
                raise ConfigError(f"{model_file.path}: data() failed: {type(err).__name__}: {err}") from err
            name = f"{model_file.stem}.data()"
        else:
            inputs, labels = data_mod.tishby12()
            name = "tishby12"
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        (inputs, labels), name = spec, "arrays"
    else:
        try:
            if str(spec).lower().endswith(".npz"):
                inputs, labels, npz_names = data_mod.load_npz(spec, return_names=True)
            else:
                inputs, labels = data_mod.load(spec, root=data_root, download=download)
        except (ValueError, OSError) as err:
            # data.load's messages usually start with the path already: do not say it twice.
            said = str(err)
            if standard and isinstance(err, FileNotFoundError):  # name this function's arguments
                said = said.replace("pass root= ", "pass `data_root` ").replace("download=True", "`download=True`")
                raise ConfigError(f"`data={spec!r}`: {said}", "data", "data_root", "download") from err
            where = "`data`" if Path(str(spec)).name in said else f"`data={os.fspath(spec)!r}`"
            raise ConfigError(f"{where}: {said}", "data") from err
        name = str(spec)
    try:  # one label validator everywhere: whole floats become indices, 0.7 is refused, names are mapped
        checked = as_class_indices(labels, what=f"labels of data {name!r}")
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from err
    inputs, labels = torch.as_tensor(inputs), checked.indices
    if inputs.ndim < 1 or labels.ndim != 1 or len(inputs) != len(labels):
        raise ConfigError(f"data {name!r}: inputs have shape {tuple(inputs.shape)} and labels "
                         f"{tuple(labels.shape)}; need N inputs and N class indices")
    return inputs, labels, name, checked.names or npz_names


def _splits(labels: torch.Tensor | list[torch.Tensor], fraction: float, split: str, seeds: list[int],
            fixed_split: bool, base_seed: int) -> tuple[list, list]:
    """Per-seed (train, test) index arrays and the seed each split was drawn with.

    ``labels`` may hold one label tensor per seed (each seed's own corrupted draw): a stratified split is then
    stratified on the labels that seed trains on, and a fixed split on the first seed's (the draw of ``base_seed``),
    so that each seed's split is the one a run of that seed alone would draw.
    """
    per_seed = labels if isinstance(labels, list) else [labels] * len(seeds)
    if split == "original":
        train, test = data_mod.original_split(len(per_seed[0]), fraction)
        return [(train, test)] * len(seeds), [None] * len(seeds)
    if fixed_split:
        shared = data_mod.stratified_split(per_seed[0].numpy(), fraction, seed=base_seed)
        return [shared] * len(seeds), [base_seed] * len(seeds)
    return [data_mod.stratified_split(y.numpy(), fraction, seed=s) for y, s in zip(per_seed, seeds)], list(seeds)


def _probe_set(inputs: torch.Tensor, labels: torch.Tensor, probe: str, splits: list) -> tuple[torch.Tensor, torch.Tensor]:
    if probe == "all":
        return inputs, labels
    index = splits[0][0] if probe == "train" else splits[0][1]
    if len(index) < 2:
        raise ConfigError(f"`probe={probe!r}` leaves {len(index)} probe samples at this fraction; need at least 2",
                          "probe")
    return inputs[index], labels[index]


def check_outputs(out: str | os.PathLike, fractions: Sequence[float], resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing run unless asked, before any training starts.

    Parameters
    ----------
    out : str or os.PathLike
        Parent directory of the run directories.
    fractions : sequence of float
    resume, overwrite : bool
        What the command asked for.

    Raises
    ------
    RunExistsError
        A fraction's directory holds files and neither ``resume`` nor ``overwrite`` was given.
    """
    for f in fractions:
        d = fraction_dir(out, f)
        try:
            _check_output(d, resume, overwrite)
        except OSError as err:  # e.g. a directory that cannot be listed
            raise ConfigError(f"cannot create run directory {d}: {rundir.os_reason(err)}", "out") from err


def _check_output(d: Path, resume: bool, overwrite: bool) -> None:
    if d.exists() and any(d.iterdir()) and not rundir.is_run(d):
        raise ConfigError(f"{d} is not empty and holds no infoplane run; infoplane writes only into new or "
                          f"empty directories or its own runs: choose another `out`", "out")
    if overwrite and rundir.is_run(d) and rundir.foreign_entries(d):
        found = ", ".join(rundir.foreign_entries(d)[:10])
        raise ConfigError(f"{d} holds files that infoplane did not write ({found}); `overwrite=True` replaces "
                          f"only infoplane's own files: move them out of the run directory or choose another "
                          f"`out`", "out", "overwrite")
    if d.exists() and any(d.iterdir()) and not (resume or overwrite):
        state = "a complete" if (d / "meta.json").exists() and read_meta(d).get("complete") else "an unfinished"
        raise RunExistsError(f"{d} already holds {state} run; pass `resume=True` to continue it or "
                             f"`overwrite=True` to replace it", "resume", "overwrite")


def track(model_file: str | os.PathLike | ModelFile, *, data: Any = None, fractions: Sequence[float] = (0.8,),
          split: str = "stratified", fixed_split: bool = False, probe: str = "all", seeds: int = 1, seed: int = 0,
          epochs: int = 8000, lr: float | None = None, batch_size: int | str | None = None,
          optimizer: str | Callable | None = None,
          estimators: Sequence | None = None, schedule: Schedule | Sequence[int] | None = None,
          device: str | torch.device = "cpu", out: str | os.PathLike | None = None, resume: bool = False,
          overwrite: bool = False, keep_activations: bool = False, vectorize: bool | str = "auto",
          progress: bool = True, caller: list[str] | str | None = None,
          log: Callable[[str], Any] = print, reduce: str | dict | None = None,
          data_root: str | os.PathLike | None = None, download: bool = False,
          ray: bool | str | None = None, ray_cpus: float = 1.0, ray_gpus: float | None = None,
          gradients: bool = True, label_noise: float = 0.0, random_labels: bool = False, shuffled_pixels: bool = False,
          random_pixels: bool = False, gaussian_inputs: bool = False,
          rho: float | None = None, sharpness: Any = None, sharpness_samples: int | None = 1024,
          sharpness_rho: float | None = None) -> list[Run]:
    """Train a model file at each training fraction with several seeds and record its information plane.

    Parameters
    ----------
    model_file : str, os.PathLike or ModelFile
        Python file defining ``build_model()`` or ``model`` (see docs/training.md).
    data : None, str or (inputs, labels)
        ``"tishby12"``, ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` (their distribution files,
        see :func:`infoplane.data.standard.load_standard`), a ``.npz`` path, or arrays; None: the file's
        ``data()``, else tishby12.
    data_root : str or os.PathLike, optional
        Where the standard data sets' files are (default: the cache, ``$INFOPLANE_DATA`` or
        ``~/.cache/infoplane/datasets``).
    download : bool, default False
        Fetch a standard data set's files when they are missing (checked against the published checksums);
        nothing is downloaded otherwise.
    fractions : sequence of float
        Training fractions (0 < F <= 1); one run directory each.
    split : {"stratified", "original"}
        Stratified random subset per seed, or the original work's first-F rows (test set from row 80% on).
    fixed_split : bool
        Draw one stratified split (from ``seed``) for every seed instead of one per seed.
    probe : {"all", "train", "test"}
        Samples on which the plane is measured; ``train``/``test`` need a split shared by all seeds.
    seeds : int
        Number of independent initialisations, seeds ``seed .. seed + seeds - 1``.
    epochs, lr, optimizer, device, vectorize
        Training settings (see :func:`infoplane.train.fit`).
    batch_size : int, "full" or None
        Mini-batch size; ``"full"`` trains with one batch of the whole training set per epoch (full-batch
        gradient descent); None: the model file's ``batch_size``, else 256.
    estimators : list, optional
        Estimator objects; default ``[Binning(bins=30, range=(-1, 1))]``.
    schedule : Schedule or list, optional
        Recorded epochs (epoch e = the network after e epochs of training, 0 = the initialisation); default
        ``log_schedule(epochs, 400)``, the original work's epochs plus the final one. Epochs past ``epochs`` are
        dropped and ``epochs`` itself is always added (:func:`infoplane.tracking.schedule.ending_at`), so the trained
        network is always recorded.
    out : str or os.PathLike, optional
        Parent directory of the run directories; default ``runs/<model file stem>``.
    resume, overwrite, keep_activations
        As for :class:`~infoplane.Tracker`; with ``resume`` a fraction continues from its last checkpoint.
    progress : bool
        Show a tqdm progress bar per fraction.
    reduce : None, str or dict
        Layer reduction before estimating (see :class:`~infoplane.Tracker`).
    ray : None, True or str
        Run each fraction (all its seeds) as one Ray task (see docs/scale.md; needs ``infoplane[ray]``): True for
        a new local Ray instance (or the Ray instance this process already initialised, or the cluster in
        ``RAY_ADDRESS``), or the address of an existing cluster (``"auto"``, ``"HOST:6379"``,
        ``"ray://HOST:10001"``). ``out`` must be on a filesystem every Ray node sees; the numbers are those of
        the local path. None or False: train here.
    ray_cpus, ray_gpus : float
        Resources each Ray task reserves; ``ray_gpus`` None means 1 with a CUDA ``device``, else 0.
    gradients : bool
        Also record, per tracked layer and recorded epoch, the statistics of that epoch's mini-batch gradients
        (``gradients.csv``, ``run.gradients``; see :mod:`infoplane.tracking.gradients`), per seed, on every
        training path (the compiled kernel gathers them itself, at the recorded epochs only).
    label_noise, random_labels, shuffled_pixels, random_pixels, gaussian_inputs
        Train on corrupted copies of the data (:func:`infoplane.data.corrupt`), drawn once per seed, before the
        split: seed ``s`` trains on ``corrupt(inputs, labels, seed=s, ...)`` (its own redrawn labels and, with
        an input corruption, its own feature order, pixel orders or Gaussian inputs), so that the spread over
        seeds includes the spread over draws. Each seed's corrupted labels are its labels Y (what it was trained
        on, the labels of its accuracies and of its I(T;Y)), and it is probed on its own inputs; with corrupted
        labels the clean ones are tracked as the side variable ``y_clean`` (I(T;Y_clean) in the rows whose
        ``target`` is ``y_clean``) and give the accuracies ``*_clean``. What was drawn is stored in each run's
        ``corruption.npz`` (:attr:`Run.corruption`, one row per seed) and its settings in ``meta.json``
        (``corruption``, with a fingerprint of every seed's draw); a resumed run must match both.
    rho : float, optional
        SAM's radius with ``optimizer="sam"`` or ``"asam"`` (default 0.05 and 0.5; see :func:`infoplane.train.fit`).
    sharpness : None, str, list or dict
        Sharpness measures to record at every recorded epoch (see :class:`~infoplane.Tracker`), each seed's on
        ``sharpness_samples`` rows of its training split (None: all of them). Off by default: the measures cost
        several forward and backward passes each.
    sharpness_samples : int or None, default 1024
    sharpness_rho : float, optional
        The radius of every measure that takes one (default: 0.05; 0.5 for ``adaptive_sharpness``).

    Returns
    -------
    list of Run
        One per fraction, in the order given. Interrupted training can be resumed with ``resume=True``: a
        checkpoint (estimates written, training state saved) is taken once a second and after the last epoch,
        so an interruption loses at most about a second of work; resuming with settings that change the
        numbers (data, training, split) or what is recorded (estimators, schedule, seeds, layers, saved
        activations) is refused with a :class:`ConfigError` naming each setting that differs and both values,
        before any training. A larger ``epochs`` trains a finished run on from its saved final state: its rows
        stay, the schedule keeps its epochs up to the old end and follows ``schedule`` after it.

    Raises
    ------
    ConfigError
        (a ``ValueError``) for every setting that cannot work, before anything trains: a run directory that cannot
        be created or written (``cannot create run directory X: <reason>``), fractions that share a run
        directory, a ``layers`` entry of the model file that names no layer, a loss that does not fit the
        model's output, resuming with other settings, an existing run without ``resume``/``overwrite``.
    infoplane.experiment.raysweep.RaySweepError
        (with ``ray``) some fractions failed on their tasks; it names each with its traceback, and holds the
        finished runs (``.runs``) and the failures (``.failures``).
    """
    mf = model_file if isinstance(model_file, ModelFile) else load_model_file(model_file)
    if split not in SPLITS:
        raise ConfigError(f"`split={split!r}`: give one of {SPLITS}", "split")
    if probe not in PROBES:
        raise ConfigError(f"`probe={probe!r}`: give one of {PROBES}", "probe")
    fractions = [float(f) for f in fractions]
    for f in fractions:
        if not (0 < f <= 1):
            raise ConfigError(f"`fractions`: each must satisfy 0 < F <= 1; got {f}", "fractions")
    if len(set(fractions)) != len(fractions):
        raise ConfigError(f"`fractions` repeats a value: {fractions}", "fractions")
    check_int(seeds, "`seeds`", minimum=1, what="a positive integer", error=lambda m: ConfigError(m, "seeds"))
    if mf.max_seeds is not None and seeds > mf.max_seeds:
        raise ConfigError(f"{mf.path} defines a single `model` object, so it trains one seed; define "
                          f"build_model() to train {seeds} seeds (`seeds`)", "seeds")
    if probe != "all" and seeds > 1 and not fixed_split and split == "stratified":
        raise ConfigError(f"`probe={probe!r}` with several seeds needs one split for all of them "
                          f"(`fixed_split=True`): otherwise each seed would be measured on different samples",
                          "probe", "fixed_split")
    check_int(seed, "`seed`", minimum=0, error=lambda m: ConfigError(m, "seed"))
    if batch_size is None:
        batch_size = mf.batch_size if mf.batch_size is not None else 256
    elif not is_batch_size(batch_size):
        raise ConfigError(f"`batch_size={batch_size!r}`: give a positive integer, or \"full\" for one batch of the "
                          f"whole training set per epoch", "batch_size")
    if mf.max_seeds is not None and seed != 0:
        raise ConfigError(f"{mf.path} defines a single `model` object, which is seed 0; drop `seed` (or define "
                          f"build_model() to train other seeds)", "seed")
    if lr is not None and optimizer is None and callable(mf.optimizer):
        raise ConfigError(f"`lr` sets the rate of the built-in optimizers, but {mf.path.name} defines optimizer(); "
                          f"set the rate there, or pass `optimizer='adam'` or `optimizer='sgd'` to use a built-in one",
                          "lr", "optimizer")
    named = optimizer if optimizer is not None else mf.optimizer
    if rho is not None and not (isinstance(named, str) and named.lower() in ("sam", "asam")):
        raise ConfigError("`rho` is the radius of SAM's neighbourhood: it needs `optimizer='sam'` or "
                          "`optimizer='asam'`", "rho", "optimizer")
    if rho is not None:
        check_float(rho, "`rho`", positive=True, what="> 0 (e.g. 0.05 for SAM, 0.5 for ASAM)",
                    error=lambda m: ConfigError(m, "rho"))
    measures = None
    if sharpness is not None:
        try:
            measures = as_measures(sharpness, sharpness_rho)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"`sharpness`: {err}", "sharpness", "sharpness_rho") from err
        if sharpness_samples is not None:
            check_int(sharpness_samples, "`sharpness_samples`", minimum=1,
                      error=lambda m: ConfigError(m, "sharpness_samples"))
    elif sharpness_rho is not None:
        raise ConfigError("`sharpness_rho` sets the radius of the sharpness measures: add `sharpness`",
                          "sharpness_rho", "sharpness")
    if ray is not None and ray is not False:  # checked before any data is loaded
        from infoplane.experiment.raysweep import check_ray_settings

        ray_address = check_ray_settings(ray, ray_cpus, ray_gpus, device)
    out = Path(out) if out is not None else Path("runs") / mf.stem
    _check_fraction_dirs(out, fractions)
    check_outputs(out, fractions, resume, overwrite)
    inputs, labels, data_name, class_names = _load_data(data, mf, log, data_root, download)
    seed_list = [seed + i for i in range(seeds)]
    options = dict(label_noise=label_noise, random_labels=random_labels, shuffled_pixels=shuffled_pixels,
                   random_pixels=random_pixels, gaussian_inputs=gaussian_inputs)
    draws = _corrupt_per_seed(inputs, labels, seed_list, **options)
    clean_labels, seed_inputs, seed_labels = None, None, None
    if draws is not None:
        # Each seed trains on its own draw; inputs that were not corrupted stay the one shared tensor.
        seed_inputs = [d.x for d in draws] if _corrupts_inputs(options) else [inputs] * len(draws)
        seed_labels = [d.y for d in draws]
        if draws[0].settings["label_noise"] > 0:
            clean_labels = labels
    estimators = list(estimators) if estimators else [default_estimator()]
    try:
        schedule = ending_at(log_schedule(epochs, 400) if schedule is None else schedule, epochs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"`schedule`: {err}", "schedule") from err
    first_x, first_y = (inputs, labels) if draws is None else (seed_inputs[0], seed_labels[0])  # type: ignore[index]
    layers = _check_model(mf, first_x, first_y, seed_list[0], estimators, reduce)
    # What training will use, defaults resolved: meta.json and the report show these, never a null.
    requested = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "device": str(device), "vectorize": vectorize,
                 "optimizer": optimizer if optimizer is None or isinstance(optimizer, str)
                 else getattr(optimizer, "__name__", type(optimizer).__name__), "rho": rho}
    training = _effective_training(mf, lr, optimizer, requested, seed_list[0])
    job = TrackJob(model_file=mf, inputs=inputs, labels=labels, seeds=seed_list, epochs=epochs, lr=lr,
                   batch_size=batch_size, optimizer=optimizer, estimators=estimators, schedule=schedule,
                   device=device, resume=resume, overwrite=overwrite, keep_activations=keep_activations,
                   vectorize=vectorize, progress=progress, log=log, reduce=reduce, gradients=bool(gradients),
                   corruption=None if draws is None else corruption_record(draws, seed_list), rho=rho,
                   sharpness=measures, sharpness_samples=sharpness_samples, seed_inputs=seed_inputs,
                   seed_labels=seed_labels)
    del draws  # the record holds what is kept of them (each draw holds a copy of the inputs)
    recorded = {"estimators": [{"name": e.name, "settings": e.settings(), "has_lower": bool(e.has_lower)}
                               for e in estimators],
                "schedule": schedule.to_json(), "seeds": seed_list, "keep_activations": bool(keep_activations),
                "layers": layers}
    # Every fraction is checked before anything is trained or replaced.
    plans = []
    for fraction in fractions:
        try:
            splits, split_seeds = _splits(labels if seed_labels is None else seed_labels, fraction, split, seed_list,
                                          fixed_split, seed)
            if seed_labels is None:
                probe_x, probe_y = _probe_set(inputs, labels, probe, splits)
            else:  # each seed is measured on its own draw: its inputs and the labels it was trained on
                probes = [_probe_set(x, y, probe, splits) for x, y in zip(seed_inputs, seed_labels)]  # type: ignore[arg-type]
                probe_x, probe_y = [p[0] for p in probes], [p[1] for p in probes]
                if seed_inputs[0] is inputs:  # type: ignore[index]  # inputs not corrupted: one probe input for all
                    probe_x = [probe_x[0]] * len(probe_x)
            targets = None if clean_labels is None else {"y_clean": _probe_set(inputs, clean_labels, probe, splits)[1]}
        except ValueError as err:
            raise ConfigError(f"training fraction {fraction:g}: {err}") from err
        meta = {
            "data": data_name,
            **({"class_names": class_names} if class_names else {}),
            "model_file": str(mf.path),
            "caller": caller if caller is not None else (list(sys.argv) if sys.argv and sys.argv[0] else "python"),
            "training": training,
            "split": {"kind": split, "fraction": fraction, "probe": probe, "fixed": bool(fixed_split),
                      "seeds": split_seeds, "train": [s[0].tolist() for s in splits],
                      "test": [s[1].tolist() for s in splits]},
            "corruption": None if job.corruption is None else job.corruption["settings"],
        }
        run_dir = fraction_dir(out, fraction)
        here, extend_from = schedule, None
        if resume and (run_dir / META).exists():
            stored = read_meta(run_dir)
            _check_draws_per_seed(run_dir, stored, job.corruption)
            extend_from = _extension(run_dir, stored, epochs)
            if extend_from is not None:  # the epochs so far keep their schedule; later ones follow `schedule`
                here = extended(from_json(stored["schedule"]), schedule, extend_from)
                # How the schedule was extended, so that the same command resumes the extended run.
                meta["extended"] = list(stored.get("extended") or []) + [
                    {"after": extend_from, "schedule": stored["schedule"]}]
            elif stored.get("extended"):  # an extended run: the same command gives the same extended schedule
                last = stored["extended"][-1]
                again = extended(from_json(last["schedule"]), schedule, last["after"])
                here = again if again.to_json() == stored.get("schedule") else schedule
            _check_same_settings(run_dir, stored, meta, {**recorded, "schedule": here.to_json()}, requested,
                                 extend_from)
            if json.loads(json.dumps(measures)) != (stored.get("sharpness") or {}).get("measures"):
                raise ConfigError(f"{run_dir} was recorded with other sharpness measures (`sharpness`, "
                                  f"`sharpness_rho`) than these; resume it with the same settings, or pass "
                                  f"`overwrite=True` to start it again", "sharpness", "sharpness_rho", "overwrite")
        plans.append(FractionPlan(fraction, run_dir, splits, probe_x, probe_y, meta, targets, schedule=here,
                                  extend_from=extend_from))
    # The last check before training: every run directory can be created and written (nothing else is touched).
    for plan in plans:
        try:
            rundir.prepare_run_dir(plan.run_dir)
        except (rundir.RunDirError, rundir.RunLockedError) as err:
            raise ConfigError(str(err), "out") from err
    if ray is not None and ray is not False:  # Ray: one task per fraction, the same code inside
        from infoplane.experiment.raysweep import run_on_ray

        return run_on_ray(job, plans, ray_address, cpus=ray_cpus, gpus=ray_gpus)
    return [run_fraction(job, plan) for plan in plans]


def _loss_name(loss: Callable | None, mf: ModelFile) -> str:
    if loss is None:
        return "the default loss nn.CrossEntropyLoss()"
    name = repr(loss) if isinstance(loss, nn.Module) else getattr(loss, "__name__", type(loss).__name__)
    return f"the loss {name} of {mf.path.name}"


def _check_model(mf: ModelFile, inputs: torch.Tensor, labels: torch.Tensor, seed: int, estimators: Sequence = (),
                 reduce: str | dict | None = None) -> list[dict] | None:
    """Check, on a few samples, that the model file's ``layers``, loss, reduction and estimators fit its network
    (an estimator whose settings come from the network, such as ``Noisy()`` reading the noise of ``add_noise``,
    must find them on every recorded layer); return the layers' JSON.

    A network that cannot take the inputs at all is left to training, which reports it with the full context.
    """
    model = mf.build(seed)
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    x = inputs[:5]
    if weight is not None and x.is_floating_point():
        x = x.to(weight.dtype)  # as the tracker's probe pass does
    y = labels[:5] if labels.is_floating_point() else labels[:5].long()  # as fit passes them to the loss
    # fork_rng: a forward with randomness (dropout) must not move the caller's global RNG.
    with torch.random.fork_rng(), torch.no_grad():
        model.eval()
        try:
            outputs = [(model(x[:n]), y[:n]) for n in sorted({min(3, len(x)), len(x)})]
        except Exception:  # noqa: BLE001 - reported by training, where the message names the probe inputs
            return None
        try:
            info = resolve_layers(model, x[:2], mf.layers)
        except (TypeError, ValueError) as err:
            if mf.layers is None:
                raise
            raise ConfigError(f"layers = {mf.layers!r} in {mf.path.name}: {err}") from err
        try:
            reductions = reduce_mod.resolve(reduce, [(layer.name, layer.shape) for layer in info])
        except ValueError as err:
            raise ConfigError(f"`reduce`: {err}", "reduce") from err
        try:
            per_layer(estimators, layer_contexts(model, info, reductions))
        except ValueError as err:
            raise ConfigError(f"{mf.path.name}: {err}", "estimators") from err
        if mf.train_step is None:  # a custom train_step need not call the loss
            loss = mf.loss if mf.loss is not None else nn.CrossEntropyLoss()
            # Two batch sizes: a loss that broadcasts [n, C] against [n] works by accident when n == C.
            for output, target in outputs:
                _check_loss(loss, output, target, mf)
    return [layer.to_json() for layer in info]


def _check_loss(loss: Callable, output: Any, target: torch.Tensor, mf: ModelFile) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's broadcasting warning: the error below says it all
            value = loss(output, target)
        if not (torch.is_tensor(value) and value.numel() == 1):
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"it returned {shape}, not a scalar")
    except Exception as err:  # noqa: BLE001 - any failure here means the loss does not fit
        shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        raise ConfigError(f"{_loss_name(mf.loss, mf)} does not fit the model's output (shape {shape}) and the "
                          f"labels (shape {tuple(target.shape)}, {target.dtype}): {type(err).__name__}: {err}") from err


def _effective_training(mf: ModelFile, lr: float | None, optimizer: str | Callable | None, requested: dict,
                        seed: int) -> dict:
    """The training settings as they take effect: the optimiser's class and learning rate (the built-in default, a
    given factory or the model file's optimizer()), the loss (or the file's train_step), batch size, epochs,
    device."""
    try:
        spec = TrainSpec.from_args(mf, lr, optimizer, None, requested.get("rho"))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"`optimizer`: {err}", "optimizer") from err
    out: dict[str, Any] = {"epochs": requested["epochs"], "batch_size": requested["batch_size"]}
    try:  # the factory on a fresh network's parameters, as training will call it
        with torch.random.fork_rng():
            out.update(describe_optimizer(spec.make_optimizer(mf.build(seed).parameters())))
    except Exception:  # noqa: BLE001 - an optimizer() that fails is reported by training, with its context
        pass
    if mf.train_step is not None:
        out["train_step"] = f"train_step() of {mf.path.name}"
    if mf.train_step is None or mf.loss is not None:
        out["loss"] = describe_loss(spec.loss)
    out.update(device=requested["device"], vectorize=requested["vectorize"])
    return out


def _extension(run_dir: Path, stored: dict, epochs: int) -> int | None:
    """The stored run's epochs when `epochs` asks for more (the run is trained on), else None."""
    old = (stored.get("training") or {}).get("epochs")
    if not isinstance(old, int) or epochs <= old:
        return None
    if stored.get("complete") and not (run_dir / STATE_FILE).exists():
        raise ConfigError(f"`epochs={epochs}` would train the finished {old}-epoch run in {run_dir} further, but it "
                          f"holds no training state to continue from ({STATE_FILE}: runs finished by earlier "
                          f"releases of infoplane kept none, or the file was removed); give `epochs={old}`, or pass "
                          f"`overwrite=True` to train it again from the start", "epochs", "overwrite")
    return old


# Settings that change the numbers of a run: a resumed run must keep them.
_RESUME_KEYS = ("corruption", "data", "training", "split")  # corruption first: it changes the split too

_CORRUPTION_ARGS = ("label_noise", "random_labels", "shuffled_pixels", "random_pixels", "gaussian_inputs")


def _corrupt(inputs: torch.Tensor, labels: torch.Tensor, seed: int, **options: Any) -> Any:
    """The corrupted data set (:func:`infoplane.data.corrupt`, drawn from ``seed``), or None when nothing is asked."""
    from infoplane.data.corrupt import corrupt

    if not any(options.values()):
        return None  # label_noise=0 and no flag: the data as it is
    try:
        return corrupt(inputs, labels, seed=seed, **options)
    except (TypeError, ValueError) as err:
        named = [a for a in _CORRUPTION_ARGS if a in str(err)] or list(_CORRUPTION_ARGS)
        message = str(err)
        for a in named:
            message = message.replace(a, f"`{a}`", 1)
        raise ConfigError(message, *named) from err


def _corrupt_per_seed(inputs: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int], **options: Any) -> list | None:
    """One corrupted draw per seed (seed ``s`` trains on ``corrupt(inputs, labels, seed=s, ...)``), or None when
    nothing is asked. The options are checked on the first draw, before the others are made."""
    first = _corrupt(inputs, labels, seeds[0], **options)
    if first is None:
        return None
    return [first] + [_corrupt(inputs, labels, s, **options) for s in seeds[1:]]


def _corrupts_inputs(options: dict) -> bool:
    return bool(options["shuffled_pixels"] or options["random_pixels"] or options["gaussian_inputs"])


def corruption_record(draws: Sequence[Any], seeds: Sequence[int]) -> dict:
    """What a run stores of its corrupted data, drawn once per seed (:func:`infoplane.data.corrupt` with
    ``seed=s`` for seed ``s``).

    Parameters
    ----------
    draws : sequence of Corruption
        One per seed, in the order of ``seeds``.
    seeds : sequence of int

    Returns
    -------
    dict
        ``settings`` for ``meta.json``: the options, ``draw="per seed"``, the ``seeds`` and each seed's
        ``n_corrupted``, and ``sha1``, a fingerprint of every seed's draw (its labels and, where the inputs were
        corrupted, its inputs), which a resumed run must match; and ``arrays`` for ``corruption.npz``: ``seeds``
        ``[S]``, ``corrupted`` (bool ``[S, N]``), ``labels`` (``[S, N]``, the labels each seed trained on),
        ``clean_labels`` (``[N]``) and, with ``shuffled_pixels``, ``feature_order`` (``[S, D]``, each seed's
        order of the flattened features).
    """
    import hashlib

    arrays = {"seeds": np.asarray(list(seeds), dtype=np.int64),
              "corrupted": np.stack([np.asarray(d.corrupted, dtype=bool) for d in draws]),
              "labels": np.stack([np.asarray(d.y) for d in draws]),
              "clean_labels": np.asarray(draws[0].clean_labels)}
    settings = {k: v for k, v in draws[0].settings.items() if k not in ("seed", "n_corrupted")}
    if settings.get("shuffled_pixels"):
        arrays["feature_order"] = np.stack([np.asarray(d.feature_order, dtype=np.int64) for d in draws])
    digest = hashlib.sha1()
    for a in arrays.values():
        digest.update(np.ascontiguousarray(a).tobytes())
    if _corrupts_inputs(settings):  # the inputs themselves (random pixels' orders and Gaussian samples are not stored)
        for d in draws:
            x = d.x.detach().cpu().numpy() if isinstance(d.x, torch.Tensor) else np.asarray(d.x)
            digest.update(np.ascontiguousarray(x).tobytes())
    settings.update(draw="per seed", seeds=[int(s) for s in seeds],
                    n_corrupted=[int(d.settings["n_corrupted"]) for d in draws], sha1=digest.hexdigest())
    return {"settings": settings, "arrays": arrays}


def _check_draws_per_seed(run_dir: Path, stored: dict, corruption: dict | None) -> None:
    """A run of an earlier release trained every seed on one shared draw: it cannot be continued on per-seed draws."""
    old = stored.get("corruption")
    if corruption is not None and isinstance(old, dict) and "draw" not in old:
        raise ConfigError(f"{run_dir} was trained by an earlier release of infoplane on one corrupted draw shared by "
                          f"every seed; this release draws the corruption once per seed, so it cannot continue that "
                          f"run: finish it with that release, or pass `overwrite=True` to train it again with a draw "
                          f"per seed", "resume", "overwrite")


# What the tracker records: a resumed run must record the same; each with the arguments of track() that set it.
_RECORDED_KEYS = {"estimators": ("estimators",), "schedule": ("schedule", "epochs"), "seeds": ("seeds", "seed"),
                  "keep_activations": ("keep_activations",), "layers": ()}
# The arguments of track() behind each training entry, for the message.
_TRAINING_ARGS = {"epochs": "epochs", "lr": "lr", "optimizer": "optimizer", "batch_size": "batch_size",
                  "device": "device", "vectorize": "vectorize"}


def _check_same_settings(run_dir: Path, stored: dict, meta: dict, recorded: dict, requested: dict,
                         extend_from: int | None) -> None:
    """Refuse to resume with settings other than the stored ones, naming each that differs with both values."""
    current = {key: json.loads(json.dumps(meta[key])) for key in _RESUME_KEYS}
    old_training = stored.get("training") or {}
    if isinstance(old_training, dict) and "loss" not in old_training and "train_step" not in old_training:
        current["training"] = json.loads(json.dumps(requested))  # a run of an earlier release: the settings as given
    if extend_from is not None:  # trained on to more epochs: the epochs may differ, nothing else
        current["training"] = {**current["training"], "epochs": old_training["epochs"]}
    lines, arguments = [], []
    for key in _RESUME_KEYS:
        for line in setting_differences(stored.get(key), current[key], key):
            entry = line.partition(":")[0].split(".")
            arg = _TRAINING_ARGS.get(entry[1]) if key == "training" and len(entry) > 1 else None
            lines.append(line + (f" (`{arg}`)" if arg else ""))
            arguments += [arg] if arg else []
    for key, args in _RECORDED_KEYS.items():
        if recorded[key] is None or (key == "schedule" and extend_from is not None):
            continue  # an extended schedule is checked by the run's writer: it must continue the stored one
        found = setting_differences(stored.get(key), recorded[key], key)
        options = " or ".join(f"`{a}`" for a in args) or "`layers` in the model file"
        lines += [f"{line} ({options})" for line in found]
        arguments += list(args) if found else []
    if lines:
        hint = ""
        old_epochs = old_training.get("epochs")
        if isinstance(old_epochs, int) and requested["epochs"] < old_epochs:
            hint = f" (a run can be trained on to more epochs than its {old_epochs}, not cut short)"
        raise ConfigError(f"{run_dir} was recorded with other settings than these: {'; '.join(lines)}{hint}. "
                          f"Resume it with the same settings, or pass `overwrite=True` to start it again",
                          *dict.fromkeys(arguments), "overwrite")


def summary(runs: Sequence[Run]) -> str:
    """A short text table: per run, final train/test accuracy and per layer the final I(X;T), I(T;Y) (bits), the
    final I(T;Z) of each side variable Z, and the data-processing check along the layers (a count of violations
    at the recorded epochs, or why it does not apply).

    Parameters
    ----------
    runs : sequence of Run

    Returns
    -------
    str
        One header line per run (its final epoch is the trained network), then one line per layer, then the
        final sharpness measures of runs that recorded them.
    """
    lines = []
    for run in runs:
        est = run.estimators[0]
        head = f"fraction {run.fraction:g}" if run.fraction is not None else "run"
        accs = []
        for name in ("train_acc", "test_acc"):
            if name in run.metric_names:
                vals = run.metric(name)[:, -1]
                accs.append(f"{name.replace('_acc', '')} acc {np.nanmedian(vals):.3f}")
        lines.append(f"{head} ({run.path}): {', '.join(accs) or 'no metrics'}; estimator {est}, "
                     f"median over {len(run.seeds)} seed(s), final epoch {int(run.epochs[-1])}")
        ixt, ity = run.get("ixt", est), run.get("ity", est)
        width = max(len(layer) for layer in run.layers)
        lines.append(f"  {'layer'.ljust(width)}  I(X;T)  I(T;Y)   [bits; ceilings {run.log2_n:.2f}, "
                     f"{run.h_y:.3f}]")
        for j, layer in enumerate(run.layers):
            lines.append(f"  {layer.ljust(width)}  {np.nanmedian(ixt[:, -1, j]):6.3f}  "
                         f"{np.nanmedian(ity[:, -1, j]):6.3f}")
        for target in run.targets:  # side variables, e.g. the clean labels of corrupted data
            measured = [t.get("estimators") for t in run.meta.get("targets") or [] if t.get("name") == target]
            if measured and measured[0] is not None and est not in measured[0]:
                continue
            itz = run.get("ity", est, target=target)
            lines.append(f"  I(T;{target}) per layer: " + ", ".join(f"{np.nanmedian(itz[:, -1, j]):.3f}"
                                                               for j in range(len(run.layers))))
        lines.append("  " + chain_summary(run, est))
        if run.sharpness:  # the trained network's sharpness, median over seeds
            final = [f"{m} {np.nanmedian(run.sharpness.get(m)[:, -1]):.4g}" for m in run.sharpness.measures
                     if np.isfinite(run.sharpness.get(m)[:, -1]).any()]
            lines.append(f"  sharpness at epoch {int(run.epochs[-1])}: {', '.join(final) or 'not recorded'}")
    return "\n".join(lines)

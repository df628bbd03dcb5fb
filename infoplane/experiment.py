"""Train a model file at several training fractions and seeds, and track its information plane.

This is the engine behind ``infoplane track``: model file -> data -> split per fraction and seed -> training
(seeds vectorised when possible) -> :class:`~infoplane.tracker.Tracker` -> one run directory per fraction.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import data as data_mod
from .estimators import Binning
from .modelfile import ModelFile, load_model_file
from .schedule import log_schedule
from .store import META, load_run, read_meta
from .tracker import Tracker
from .train import fit, load_state, save_state

STATE_FILE = "train_state.pt"
SPLITS = ("stratified", "original")
PROBES = ("all", "train", "test")


class ConfigError(ValueError):
    """A setting of :func:`track` that cannot work (the command line reports it as a usage error)."""


class RunExistsError(ConfigError):
    """The output directory already holds a run and neither resume nor overwrite was asked for."""


def fraction_dir(out, fraction) -> Path:
    """Run directory of one training fraction under ``out`` (e.g. ``out/fraction-0.05``)."""
    return Path(out) / f"fraction-{fraction:g}"


def _load_data(spec, model_file):
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
            inputs, labels = data_mod.load(spec)
        except (ValueError, OSError) as err:
            raise ConfigError(f"--data {spec}: {err}") from err
        name = str(spec)
    inputs, labels = torch.as_tensor(inputs), torch.as_tensor(labels)
    if inputs.ndim < 1 or labels.ndim != 1 or len(inputs) != len(labels):
        raise ConfigError(f"data {name!r}: inputs have shape {tuple(inputs.shape)} and labels "
                         f"{tuple(labels.shape)}; need N inputs and N class indices")
    if labels.is_floating_point():
        labels = labels.long()
    return inputs, labels, name


def _splits(labels, fraction, split, seeds, fixed_split, base_seed):
    """Per-seed (train, test) index arrays and the seed each split was drawn with."""
    if split == "original":
        train, test = data_mod.original_split(len(labels), fraction)
        return [(train, test)] * len(seeds), [None] * len(seeds)
    split_seeds = [base_seed] * len(seeds) if fixed_split else list(seeds)
    return [data_mod.stratified_split(labels.numpy(), fraction, seed=s) for s in split_seeds], split_seeds


def _probe_set(inputs, labels, probe, splits):
    if probe == "all":
        return inputs, labels
    index = splits[0][0] if probe == "train" else splits[0][1]
    if len(index) < 2:
        raise ConfigError(f"--probe {probe} leaves {len(index)} probe samples at this fraction; need at least 2")
    return inputs[index], labels[index]


def check_outputs(out, fractions, resume, overwrite):
    """Refuse to touch an existing run unless asked, before any training starts."""
    for f in fractions:
        d = fraction_dir(out, f)
        if d.exists() and any(d.iterdir()) and not (resume or overwrite):
            state = "a complete" if (d / "meta.json").exists() and read_meta(d).get("complete") else "an unfinished"
            raise RunExistsError(f"{d} already holds {state} run; pass --resume to continue it or --overwrite "
                                 f"to replace it")


def track(model_file, *, data=None, fractions=(0.8,), split="stratified", fixed_split=False, probe="all",
          seeds=1, seed=0, epochs=8000, lr=None, batch_size=256, optimizer=None, estimators=None, schedule=None,
          device="cpu", out=None, resume=False, overwrite=False, keep_activations=False, vectorize="auto",
          progress=True, caller=None, log=print, reduce=None):
    """Train a model file at each training fraction with several seeds and record its information plane.

    Parameters
    ----------
    model_file : str, os.PathLike or ModelFile
        Python file defining ``build_model()`` or ``model`` (see docs/training.md).
    data : None, str or (inputs, labels)
        ``"tishby12"``, ``"digits"``, a ``.npz`` path, or arrays; None: the file's ``data()``, else tishby12.
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
    epochs, lr, batch_size, optimizer, device, vectorize
        Training settings (see :func:`infoplane.train.fit`).
    estimators : list, optional
        Estimator objects; default ``[Binning(bins=30, range=(-1, 1))]``.
    schedule : Schedule or list, optional
        Recorded epochs (epoch e = after e epochs of training, 0 = the initialisation); default
        ``log_schedule(epochs, 400)``, as in the original work.
    out : str or os.PathLike, optional
        Parent directory of the run directories; default ``runs/<model file stem>``.
    resume, overwrite, keep_activations
        As for :class:`~infoplane.Tracker`; with ``resume`` a fraction continues from its last checkpoint.
    progress : bool
        Show a tqdm progress bar per fraction.
    reduce : None, str or dict
        Layer reduction before estimating (see :class:`~infoplane.Tracker`).

    Returns
    -------
    list of Run
        One per fraction, in the order given. Interrupted training can be resumed with ``resume=True``: a
        checkpoint (estimates written, training state saved) is taken once a second and after the last epoch,
        so an interruption loses at most about a second of work; resuming with settings that change the
        numbers (data, training, split) is refused.
    """
    mf = model_file if isinstance(model_file, ModelFile) else load_model_file(model_file)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}; got {split!r}")
    if probe not in PROBES:
        raise ConfigError(f"probe must be one of {PROBES}; got {probe!r}")
    fractions = [float(f) for f in fractions]
    for f in fractions:
        if not (0 < f <= 1):
            raise ConfigError(f"training fraction must satisfy 0 < F <= 1; got {f}")
    if len(set(fractions)) != len(fractions):
        raise ConfigError(f"training fractions repeat: {fractions}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a positive integer; got {seeds!r}")
    if mf.max_seeds is not None and seeds > mf.max_seeds:
        raise ConfigError(f"{mf.path} defines a single `model` object, so it trains one seed; define "
                         f"build_model() to train {seeds} seeds")
    if probe != "all" and seeds > 1 and not fixed_split and split == "stratified":
        raise ConfigError(f"--probe {probe} with several seeds needs one split for all of them (--fixed-split): "
                         "otherwise each seed would be measured on different samples")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0; got {seed!r}")
    if mf.max_seeds is not None and seed != 0:
        raise ConfigError(f"{mf.path} defines a single `model` object, which is seed 0; drop --seed (or define "
                          f"build_model() to train other seeds)")
    out = Path(out) if out is not None else Path("runs") / mf.stem
    check_outputs(out, fractions, resume, overwrite)
    inputs, labels, data_name = _load_data(data, mf)
    seed_list = [seed + i for i in range(seeds)]
    estimators = list(estimators) if estimators else [Binning(bins=30, range=(-1, 1))]
    if schedule is None:
        schedule = log_schedule(epochs, 400)
    job = dict(mf=mf, inputs=inputs, labels=labels, seeds=seed_list, epochs=epochs, lr=lr, batch_size=batch_size,
               optimizer=optimizer, estimators=estimators, schedule=schedule, device=device, resume=resume,
               overwrite=overwrite, keep_activations=keep_activations, vectorize=vectorize, progress=progress,
               log=log, reduce=reduce)
    # Every fraction is checked before anything is trained or replaced.
    plans = []
    for fraction in fractions:
        try:
            splits, split_seeds = _splits(labels, fraction, split, seed_list, fixed_split, seed)
            probe_x, probe_y = _probe_set(inputs, labels, probe, splits)
        except ValueError as err:
            raise ConfigError(f"training fraction {fraction:g}: {err}") from err
        meta = {
            "data": data_name,
            "model_file": str(mf.path),
            "caller": caller if caller is not None else (list(sys.argv) if sys.argv and sys.argv[0] else "python"),
            "training": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
                         "device": str(device), "vectorize": vectorize},
            "split": {"kind": split, "fraction": fraction, "probe": probe, "fixed": bool(fixed_split),
                      "seeds": split_seeds, "train": [s[0].tolist() for s in splits],
                      "test": [s[1].tolist() for s in splits]},
        }
        run_dir = fraction_dir(out, fraction)
        if resume and (run_dir / META).exists():
            _check_same_settings(run_dir, meta)
        plans.append((fraction, run_dir, splits, probe_x, probe_y, meta))
    return [_track_fraction(job, *plan) for plan in plans]


# Settings that change the numbers of a run: a resumed run must keep them.
_RESUME_KEYS = ("data", "training", "split")


def _check_same_settings(run_dir, meta):
    stored = read_meta(run_dir)
    for key in _RESUME_KEYS:
        if json.loads(json.dumps(meta[key])) != stored.get(key):
            raise ConfigError(f"{run_dir} was recorded with other {key} settings than this command's; resume it "
                              f"with the same options, or pass --overwrite to start it again")


def _track_fraction(job, fraction, run_dir, splits, probe_x, probe_y, meta):
    log, seeds, epochs = job["log"], job["seeds"], job["epochs"]
    if job["resume"] and (run_dir / META).exists() and read_meta(run_dir).get("complete"):
        log(f"{run_dir}: complete, skipped")
        return load_run(run_dir)
    if job["overwrite"] and run_dir.exists():
        shutil.rmtree(run_dir)
    state_path = run_dir / STATE_FILE
    state = load_state(state_path) if job["resume"] and state_path.exists() else None
    bar = _progress(job["progress"], epochs, fraction, state)
    tracker = None
    last_save = time.monotonic()

    def make_tracker(members):
        return Tracker(members, probe_x, probe_y, layers=job["mf"].layers, estimators=job["estimators"],
                       schedule=job["schedule"], out=run_dir, seeds=seeds, fraction=fraction, meta=meta,
                       keep_activations=job["keep_activations"], resume=job["resume"], reduce=job["reduce"])

    def callback(epoch, members, metrics):
        nonlocal tracker
        if tracker is None:  # the trainer's member modules stay the same objects for the whole run
            tracker = make_tracker(members)
        if epoch in tracker.schedule:
            values = dict(metrics)
            tracker.step(epoch, **values)
            if bar is not None:
                bar.set_postfix(_postfix(values), refresh=False)
        if bar is not None:
            bar.update(1)

    def should_save(epoch):
        return time.monotonic() - last_save >= 1.0

    def checkpoint(train_state):
        nonlocal last_save
        # The estimates of every epoch up to this state are written before the state is saved, so a resumed run
        # never skips an epoch whose rows were lost; between checkpoints the tracker batches as it likes.
        tracker.flush()
        save_state(state_path, train_state)
        last_save = time.monotonic()

    test_idx = [s[1] for s in splits]
    if any(len(t) == 0 for t in test_idx):
        test_idx = None  # fraction 1: no held-out samples
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit(job["mf"], job["inputs"], job["labels"], [s[0] for s in splits], seeds=seeds, epochs=epochs,
                         lr=job["lr"], batch_size=job["batch_size"], optimizer=job["optimizer"], device=job["device"],
                         vectorize=job["vectorize"], callback=callback, test_idx=test_idx, state=state,
                         checkpoint=checkpoint, checkpoint_every=should_save)
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


def _progress(enabled, epochs, fraction, state):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    done = int(state["epoch"]) if state is not None else -1
    return tqdm(total=epochs + 1, initial=done + 1, desc=f"fraction {fraction:g}", unit="epoch",
                dynamic_ncols=True, leave=True)


def _postfix(metrics):
    post = {}
    for key in ("train_loss", "train_acc", "test_acc"):
        if key in metrics:
            post[key.replace("train_", "").replace("test_acc", "test")] = f"{float(np.mean(metrics[key])):.3g}"
    return post


def summary(runs) -> str:
    """A short text table: per run, final train/test accuracy and per layer the final I(X;T), I(T;Y) (bits)."""
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
    return "\n".join(lines)

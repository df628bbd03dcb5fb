"""Sweeps on Ray: every training fraction of :func:`infoplane.experiment.job.track` as one Ray task.

The driver (the process that calls ``track(..., ray=...)`` or runs ``infoplane track --ray``) checks every setting,
loads the data and plans every fraction exactly as the local path does; then each fraction that is not already
complete becomes one Ray task, which imports the model file again and runs the same per-fraction code as the local
path (:func:`infoplane.experiment.fraction.run_fraction`), writing its run directory itself. A fraction's seeds stay in
one task because they train together as one vectorised ensemble: splitting them would change the numbers.

Run directories come back through a shared filesystem: ``--out`` must be a directory that every Ray node sees at
the same path. Each task checks that before it trains (the driver leaves a check file in ``--out`` for the duration
of the sweep) and fails with the fix if it cannot see it.

Progress reaches the driver through a small actor that the tasks add their finished epochs to; the driver shows one
bar for the whole sweep. A failed task is reported with its traceback, naming the fraction and seeds; the others
finish, and its run directory stays unfinished so that ``--resume`` runs only what is missing.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import secrets
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from infoplane._validate import check_float

__all__ = ["RaySweepError", "RaySetupError", "require_ray", "check_ray_settings", "run_on_ray"]

# How often (seconds) a task reports its finished epochs, and the driver refreshes its bar: often enough for a bar
# that moves, rarely enough that reporting costs nothing next to training.
_REPORT_EVERY = 0.5
_CHECK_PREFIX = ".infoplane-ray-check-"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ADDRESS = re.compile(r"(?:ray://)?(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})")


class RaySweepError(RuntimeError):
    """One or more fractions failed on their Ray tasks; the others finished.

    Attributes
    ----------
    runs : list of Run
        The fractions that are complete, in the order given.
    failures : list of dict
        Per failed fraction: ``fraction`` (float), ``seeds`` (list of int), ``run_dir`` (Path), ``error`` (one line)
        and ``traceback`` (the task's traceback, as text).
    arguments : tuple of str
        The arguments of ``track()`` the message names in backquotes (see :class:`ConfigError`).
    """

    arguments = ("resume", "out")

    def __init__(self, message: str, runs: list, failures: list[dict]) -> None:
        super().__init__(message)
        self.runs = runs
        self.failures = failures


class RaySetupError(RuntimeError):
    """A Ray task cannot work on its node: it cannot see ``out`` or the model file, or runs another infoplane."""

    arguments = ("out",)


def require_ray() -> Any:
    """Import Ray, or raise an ImportError naming the extra that installs it.

    Returns
    -------
    module
        The ``ray`` module.
    """
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"sweeps on Ray (--ray, track(ray=...)) need Ray: pip install 'infoplane[ray]' ({err})") \
            from None
    return ray


def check_ray_settings(ray: bool | str, cpus: float, gpus: float | None, device: Any) -> str | None:
    """Check the Ray settings of a sweep before anything runs.

    Parameters
    ----------
    ray : True or str
        True: a new local Ray instance (or the cluster in ``RAY_ADDRESS``); a string: the address of an existing
        cluster, ``auto``, ``HOST:PORT`` (the address ``ray start --head`` prints) or ``ray://HOST:PORT``
        (Ray Client).
    cpus : float
        CPUs each task reserves (> 0).
    gpus : float or None
        GPUs each task reserves (>= 0); None: 1 when ``device`` is CUDA, else 0.
    device : str or torch.device
        Training device; with Ray only ``cpu`` or ``cuda`` (Ray gives each task its own GPU).

    Returns
    -------
    str or None
        The address to pass to ``ray.init``; None for a new local instance.

    Raises
    ------
    infoplane.experiment.errors.ConfigError
        A setting that cannot work, naming the arguments of :func:`~infoplane.experiment.track` at fault.
    ImportError
        Ray is not installed (the message names ``pip install 'infoplane[ray]'``).
    """
    from infoplane.experiment.errors import ConfigError

    if ray is True:
        address = None
    elif isinstance(ray, str) and (ray == "auto" or _ADDRESS.fullmatch(ray)):
        port = _ADDRESS.fullmatch(ray)
        if port is not None and not 0 < int(port.group(1)) < 65536:
            raise ConfigError(f"`ray={ray!r}`: the port must be between 1 and 65535", "ray")
        address = ray
    else:
        raise ConfigError(f"`ray={ray!r}`: expected no address (`ray=True`: a new local Ray instance), 'auto' (the "
                          f"cluster this machine belongs to), 'HOST:PORT' (the address `ray start --head` prints, "
                          f"port 6379 by default) or 'ray://HOST:PORT' (Ray Client, port 10001 by default)", "ray")
    check_float(cpus, "`ray_cpus`", positive=True, what="a positive number",
                error=lambda m: ConfigError(m, "ray_cpus"))
    if gpus is not None:
        check_float(gpus, "`ray_gpus`", minimum=0, what="a number >= 0", error=lambda m: ConfigError(m, "ray_gpus"))
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda") or index:
        raise ConfigError(f"`device={str(device)!r}` with `ray`: Ray gives each task its own GPU "
                          f"(CUDA_VISIBLE_DEVICES), so pass `device='cuda'` (or 'cpu') and `ray_gpus` for how many "
                          f"each task takes", "device", "ray", "ray_gpus")
    if kind == "cuda" and gpus == 0:
        raise ConfigError("`device='cuda'` with `ray_gpus=0`: a task without a GPU cannot train on CUDA; drop "
                          "`ray_gpus` (each task then takes one GPU)", "device", "ray_gpus")
    require_ray()
    return address


def _seeds_text(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _connect(ray: Any, address: str | None, log: Callable[[str], Any]) -> bool:
    """Attach this process to Ray; return True when it started an instance (and so shuts it down afterwards)."""
    from infoplane.experiment.errors import ConfigError

    if ray.is_initialized():  # e.g. the caller's own ray.init(): use it as it is
        if address is not None:
            log(f"note: Ray is already initialised in this process; `ray={address!r}` is not used")
        return False
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        log(f"note: `ray=True` (no address) uses the cluster in RAY_ADDRESS ({address})")
    try:
        if address is None:
            # A private local instance: no dashboard (nothing this sweep needs, and one server fewer).
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"`ray={address!r}`" if address is not None else "`ray=True`"
        raise ConfigError(f"{where}: could not connect to Ray ({type(err).__name__}: {err}); start a cluster with "
                          f"`ray start --head` and give the address it prints, or use `ray=True` alone for a local "
                          f"instance", "ray") from err
    return True


class _Progress:
    """Epochs finished by the tasks of one sweep, taken by the driver for its bar (a Ray actor)."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


class _Reporter:
    """Inside a task: counts finished epochs and sends them to the progress actor about twice a second."""

    def __init__(self, actor: Any) -> None:
        self.actor, self.count, self.last = actor, 0, time.monotonic()

    def __call__(self, n: int = 1) -> None:
        self.count += n
        if self.actor is not None and time.monotonic() - self.last >= _REPORT_EVERY:
            self.actor.add.remote(self.count)  # fire and forget: a bar must not slow training down
            self.count, self.last = 0, time.monotonic()

    def finish(self, ray: Any) -> None:
        # Waited for: one caller's actor calls run in order, so once this returns the driver's next take() has
        # every epoch of this task.
        if self.actor is not None:
            ray.get(self.actor.add.remote(self.count))
        self.count = 0


def _check_worker(check_file: str, token: str, model_file: str, version: str) -> None:
    """Inside a task, before anything runs: the node sees ``--out`` and the model file, and runs this infoplane."""
    import infoplane
    from infoplane._version import __version__

    host = socket.gethostname()
    if __version__ != version:
        raise RaySetupError(f"the Ray worker on {host} imports infoplane {__version__} "
                            f"({infoplane.__file__}), the driver {version}; install the same infoplane on every node")
    out = os.path.dirname(check_file)
    try:
        seen = Path(check_file).read_text(encoding="utf-8").strip()
    except OSError:
        seen = None
    if seen != token:
        raise RaySetupError(f"the Ray worker on {host} cannot see `out={out!r}` (the check file the driver wrote "
                            f"there is missing): run directories come back through a shared filesystem, so `out` must "
                            f"be a directory that every Ray node mounts at the same path (e.g. on NFS); give such a "
                            f"directory as an absolute path")
    if not os.path.isfile(model_file):
        raise RaySetupError(f"the Ray worker on {host} cannot read the model file {model_file}: every Ray node must "
                            f"see it at the same path; put it on the shared filesystem, as `out`")


def _run_fraction(job: Any, plan: Any, model_bytes: bytes | None, check: tuple, actor: Any) -> list[str]:
    """One Ray task: train and track one fraction into its run directory; returns the log lines."""
    import ray

    from infoplane.data.modelfile import load_model_file
    from infoplane.experiment.fraction import run_fraction

    check_file, token, model_path, version = check
    _check_worker(check_file, token, model_path, version)
    mf = load_model_file(model_path)
    if model_bytes is not None:
        # A file defining a single `model`: the driver's weights, not those of a second import.
        mf.model, mf._pristine = pickle.loads(model_bytes), None
    lines: list[str] = []
    reporter = _Reporter(actor)
    job = dataclasses.replace(job, model_file=mf, log=lines.append, progress=False, on_epoch=reporter)
    # Arrays from the object store are read-only views; training takes its index tensors from these.
    plan = dataclasses.replace(plan, splits=[(np.array(tr), np.array(te)) for tr, te in plan.splits])
    run_fraction(job, plan)
    reporter.finish(ray)
    return lines


def _initial_epochs(job: Any, plan: Any) -> int:
    """Epochs a resumed fraction has already trained (for the bar), as the local path's bar counts them."""
    from infoplane.experiment.errors import STATE_FILE
    from infoplane.train import load_state

    path = plan.run_dir / STATE_FILE
    if not (job.resume and path.exists()):
        return 0
    try:
        return int(load_state(path)["epoch"]) + 1
    except Exception:  # noqa: BLE001 - the task reports a broken state; the bar just starts at 0
        return 0


def run_on_ray(job: Any, plans: list, address: str | None, cpus: float = 1.0, gpus: float | None = None) -> list:
    """Run the fractions of a planned :func:`~infoplane.experiment.job.track` call as Ray tasks, one per fraction.

    Parameters
    ----------
    job : TrackJob
        The settings shared by every fraction.
    plans : list of FractionPlan
        One per fraction, as the local path plans them.
    address : str or None
        From :func:`check_ray_settings`.
    cpus, gpus : float
        Resources each task reserves (gpus None: 1 with a CUDA device, else 0).

    Returns
    -------
    list of Run
        One per fraction, in the order of ``plans``.

    Raises
    ------
    RaySweepError
        Some tasks failed (each named with its fraction, seeds and traceback); the others finished.
    KeyboardInterrupt
        After cancelling the tasks (each marks its run unfinished, as the local path does).
    """
    from infoplane.runs.writer import META, load_run, read_meta

    log = job.log
    runs: dict[int, Any] = {}
    todo = []
    for i, plan in enumerate(plans):
        if job.resume and plan.extend_from is None and (plan.run_dir / META).exists() and \
                read_meta(plan.run_dir).get("complete"):
            log(f"{plan.run_dir}: complete, skipped")
            runs[i] = load_run(plan.run_dir)
        else:
            todo.append(i)
    if not todo:
        return [runs[i] for i in range(len(plans))]
    from infoplane._version import __version__

    ray = require_ray()
    model_bytes = pickle.dumps(job.model_file.build(0)) if job.model_file.model is not None else None
    if gpus is None:
        gpus = 1 if str(job.device).startswith("cuda") else 0
    started = _connect(ray, address, log)
    bar = actor = check_file = None
    refs: dict = {}
    try:
        out = plans[todo[0]].run_dir.parent.resolve()
        out.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        check_file = out / f"{_CHECK_PREFIX}{token[:12]}"
        check_file.write_text(token + "\n", encoding="utf-8")
        check = (str(check_file), token, str(job.model_file.path), __version__)
        if job.progress:
            from tqdm.auto import tqdm

            actor = ray.remote(num_cpus=0)(_Progress).remote()
            total = sum(job.epochs + 1 for _ in todo)
            initial = sum(_initial_epochs(job, plans[i]) for i in todo)
            bar = tqdm(total=total, initial=initial, unit="epoch", dynamic_ncols=True, leave=True,
                       desc=f"{len(todo)} fraction(s) on Ray")
        # The data travel once to the object store; every task reads the same copy. Paths become absolute: a
        # worker's working directory is not the driver's.
        shared = ray.put(dataclasses.replace(job, model_file=None, log=None, progress=False))
        task = ray.remote(_run_fraction).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        for i in todo:
            plan = dataclasses.replace(plans[i], run_dir=plans[i].run_dir.resolve())
            refs[task.remote(shared, plan, model_bytes, check, actor)] = i
        failures = _collect(ray, refs, plans, job, bar, actor, runs)
    except KeyboardInterrupt:
        _cancel(ray, list(refs))
        raise
    finally:
        if bar is not None:
            bar.close()
        if check_file is not None:
            try:
                check_file.unlink()
            except OSError:
                pass
        if actor is not None:
            ray.kill(actor)
        if started:
            ray.shutdown()
    done = [runs[i] for i in range(len(plans)) if i in runs]
    if failures:
        failures.sort(key=lambda f: f["index"])
        for f in failures:
            del f["index"]
        names = "; ".join(f"fraction {f['fraction']:g} ({_seeds_text(f['seeds'])}): {f['error']}" for f in failures)
        details = "\n".join(f"--- fraction {f['fraction']:g} ({_seeds_text(f['seeds'])}), {f['run_dir']}:\n"
                            f"{f['traceback'].rstrip()}" for f in failures)
        raise RaySweepError(f"{len(failures)} of {len(plans)} fraction(s) failed on Ray: {names}. The other runs are "
                            f"complete; fix the cause and run it again with `resume=True` to run only what is "
                            f"missing\n{details}", done, failures)
    return done


def _collect(ray: Any, refs: dict, plans: list, job: Any, bar: Any, actor: Any, runs: dict) -> list[dict]:
    """Wait for every task; log each one's lines as it finishes, keep the bar moving, gather the failures."""
    from infoplane.runs.writer import load_run

    failures = []
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=_REPORT_EVERY if bar is not None else None)
        if bar is not None:
            bar.update(ray.get(actor.take.remote()))
        for ref in ready:
            i = refs[ref]
            plan = plans[i]
            try:
                lines = ray.get(ref)
            except ray.exceptions.RayError as err:
                cause = getattr(err, "cause", None)
                cause = cause if isinstance(cause, BaseException) else err
                error = f"{type(cause).__name__}: {cause}".strip().splitlines()[0]
                text = _task_traceback(ray, err)
                _log_lines(job.log, [f"fraction {plan.fraction:g} ({_seeds_text(job.seeds)}) failed on Ray: {error}"],
                           bar)
                failures.append({"index": i, "fraction": plan.fraction, "seeds": list(job.seeds),
                                 "run_dir": plan.run_dir, "error": error, "traceback": text})
                continue
            _log_lines(job.log, lines, bar)
            runs[i] = load_run(plan.run_dir)
    return failures


def _log_lines(log: Callable[[str], Any], lines: list[str], bar: Any) -> None:
    """Log while the bar is cleared, so that the lines do not land inside it."""
    if bar is None:
        for line in lines:
            log(line)
        return
    with bar.external_write_mode():
        for line in lines:
            log(line)


def _task_traceback(ray: Any, err: BaseException) -> str:
    """The traceback of a failed task as plain text (Ray's own text, without its terminal colours)."""
    if not isinstance(err, ray.exceptions.RayTaskError):  # the worker died, the task was cancelled, ...
        return "".join(traceback.format_exception_only(type(err), err))
    where, _, frames = _ANSI.sub("", str(err)).partition("\n")
    return f"Traceback (most recent call last) of the Ray task {where.strip()}:\n{frames}"


def _cancel(ray: Any, refs: list) -> None:
    """Ctrl-C: interrupt every task (each writes what it measured and marks its run unfinished), then wait."""
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001 - a finished task cannot be cancelled
            pass
    try:
        ray.wait(refs, num_returns=len(refs), timeout=60)
    except Exception:  # noqa: BLE001 - interrupted again, or Ray is gone: nothing more to wait for
        pass

"""Load a user's model file: a Python file that says how to build the network to track.

The contract (see ``docs/training.md``): the file defines ``build_model()`` returning a fresh
``torch.nn.Module`` (called once per seed), or a ready ``model`` (then only one seed can be trained).
It may also define ``data()``, ``optimizer(parameters)``, ``loss``, ``layers``, ``batch_size`` (a positive int, or
``"full"`` for one batch of the whole training set per epoch) and ``train_step(model, batch, optimizer)``, each
replacing infoplane's default. ``optimizer`` may also name one of
:data:`NAMED_OPTIMIZERS` (``optimizer = "sam"``), with ``rho`` (a number > 0) for SAM's and ASAM's radius.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from infoplane._validate import check_int

__all__ = ["ModelFile", "ModelFileError", "load_model_file", "seeded_build", "is_batch_size", "NAMED_OPTIMIZERS"]

# Optional names a model file may define, with what each must be.
_OPTIONAL_CALLABLES = ("data", "optimizer", "loss", "train_step")
#: The optimisers a model file (or ``infoplane track --optimizer``) may name instead of defining optimizer():
#: Adam, plain SGD, and SAM / ASAM around plain SGD (:class:`infoplane.optim.SAM`).
NAMED_OPTIMIZERS = ("adam", "sgd", "sam", "asam")


class ModelFileError(ValueError):
    """A model file is missing, fails to import, or breaks the model-file contract."""


def seeded_build(build_model: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Call ``build_model()`` with torch's RNG seeded from ``seed``, leaving the global RNG as it was.

    Parameters
    ----------
    build_model : callable
        Zero-argument function returning a fresh ``torch.nn.Module``.
    seed : int
        Non-negative seed; ``torch.manual_seed(seed)`` is in force while ``build_model`` runs, so
        the initial weights of seed ``s`` are those a user gets from ``torch.manual_seed(s)``
        followed by ``build_model()``.

    Returns
    -------
    model : torch.nn.Module
    """
    _check_seed(seed)
    # fork_rng restores the CPU (and any CUDA) generator afterwards: building never disturbs
    # the caller's random stream.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model()


def _check_seed(seed: Any) -> None:
    check_int(seed, "seed", minimum=0, what="a non-negative int")


@dataclass
class ModelFile:
    """What a model file defines. Optional names the file leaves out are ``None``.

    Attributes
    ----------
    path : pathlib.Path
        Absolute path of the file.
    stem : str
        File name without ``.py`` (a default run name).
    build_model : callable or None
        The file's ``build_model``; ``None`` when it defines ``model`` instead.
    model : torch.nn.Module or None
        The file's ``model`` instance, when it defines no ``build_model``.
    data, optimizer, loss, train_step : callable or None
        Overrides of the default data, optimiser factory, loss and training step (``optimizer`` may also be
        a name in :data:`NAMED_OPTIMIZERS`).
    rho : float or None
        SAM's or ASAM's radius, with ``optimizer = "sam"`` or ``"asam"``.
    layers : object or None
        Layer selection for the tracker (names, glob patterns or module types).
    batch_size : int, "full" or None
        Mini-batch size for training (``"full"``: the whole training set, one batch per epoch).
    max_seeds : int or None
        1 when the file defines a single ``model``; ``None`` (no limit) with ``build_model``.
    """

    path: Path
    stem: str
    build_model: Callable[[], nn.Module] | None = None
    model: nn.Module | None = None
    data: Callable[[], Any] | None = None
    optimizer: Callable[[Any], torch.optim.Optimizer] | str | None = None
    loss: Callable[..., torch.Tensor] | None = None
    layers: Any = None
    train_step: Callable[..., Any] | None = None
    batch_size: int | str | None = None
    rho: float | None = None
    _pristine: nn.Module | None = field(default=None, repr=False)

    @property
    def max_seeds(self) -> int | None:
        return 1 if self.build_model is None else None

    def build(self, seed: int) -> nn.Module:
        """Build the model of one seed.

        Parameters
        ----------
        seed : int
            Non-negative seed. With ``build_model``, torch's RNG is seeded from it while the
            model is built (the global RNG is left untouched). With ``model``, only seed 0 exists.

        Returns
        -------
        model : torch.nn.Module
            A fresh module. For a file defining ``model``, each call returns a new copy of the
            weights the file created, so training one copy (say for one training fraction) does
            not change what the next call returns.
        """
        _check_seed(seed)
        if self.build_model is None:
            if seed != 0:
                raise ModelFileError(
                    f"{self.path.name} defines a single `model`, so only seed 0 exists (got seed {seed}); "
                    "define build_model() returning a fresh module to train several seeds"
                )
            if self._pristine is None:
                self._pristine = copy.deepcopy(self.model)
            return copy.deepcopy(self._pristine)
        try:
            built = seeded_build(self.build_model, seed)
        except Exception as exc:
            raise ModelFileError(
                f"build_model() in {self.path.name} raised {_describe(exc)}{_where(exc, self.path)}"
            ) from exc
        if not isinstance(built, nn.Module):
            raise ModelFileError(
                f"build_model() in {self.path.name} returned {type(built).__name__}, not a torch.nn.Module; "
                "return the network itself, e.g. `return nn.Sequential(...)`"
            )
        return built


def load_model_file(path: str | os.PathLike) -> ModelFile:
    """Import a model file and check it against the model-file contract.

    Parameters
    ----------
    path : str or path-like
        Path to a ``.py`` file defining ``build_model()`` or ``model`` (and optionally ``data``,
        ``optimizer``, ``loss``, ``layers``, ``train_step``).

    Returns
    -------
    ModelFile

    Raises
    ------
    ModelFileError
        (a ``ValueError``) when the file does not exist, fails to import (the message gives the
        exception and the file and line where it happened), defines neither ``build_model`` nor
        ``model``, defines a ``model`` that is not a ``torch.nn.Module``, or an optional name of
        the wrong kind.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    namespace = _import(path)

    build_model = namespace.get("build_model")
    model = namespace.get("model")
    if build_model is None and model is None:
        defined = sorted(k for k in namespace if not k.startswith("_"))
        raise ModelFileError(
            f"{path.name} defines neither build_model nor model; define `build_model()` returning a fresh "
            f"torch.nn.Module (or a `model` instance for a single seed). Names it defines: "
            f"{', '.join(defined) or '(none)'}"
        )
    if build_model is not None and not callable(build_model):
        raise ModelFileError(f"build_model in {path.name} is a {type(build_model).__name__}, not a function")
    if build_model is None and not isinstance(model, nn.Module):
        raise ModelFileError(
            f"model in {path.name} is a {type(model).__name__}, not a torch.nn.Module; "
            "set `model = nn.Sequential(...)` or define build_model()"
        )
    for name in _OPTIONAL_CALLABLES:
        value = namespace.get(name)
        if name == "optimizer" and isinstance(value, str):
            if value.lower() not in NAMED_OPTIMIZERS:
                raise ModelFileError(f"optimizer = {value!r} in {path.name} names no optimizer infoplane knows; "
                                     f"name one of {NAMED_OPTIMIZERS} or define optimizer(parameters)")
            continue
        if value is not None and not callable(value):
            raise ModelFileError(f"{name} in {path.name} must be callable, got {type(value).__name__}")
    batch_size = namespace.get("batch_size")
    if batch_size is not None and not is_batch_size(batch_size):
        raise ModelFileError(f"batch_size in {path.name} must be a positive int or \"full\" (one batch of the "
                             f"whole training set per epoch), got {batch_size!r}")
    rho = namespace.get("rho")
    if rho is not None:
        named = namespace.get("optimizer")
        if not (isinstance(named, str) and named.lower() in ("sam", "asam")):
            raise ModelFileError(f"rho in {path.name} is the radius of SAM's neighbourhood: it needs "
                                 f"optimizer = \"sam\" or \"asam\" in the file (an optimizer() returning "
                                 f"infoplane.optim.SAM sets its own rho)")
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (0 < rho < float("inf")):
            raise ModelFileError(f"rho in {path.name} must be a number > 0 (e.g. 0.05 for SAM, 0.5 for ASAM); "
                                 f"got {rho!r}")
    return ModelFile(
        path=path,
        stem=path.stem,
        build_model=build_model,
        model=model if build_model is None else None,
        batch_size=batch_size,
        **{name: namespace.get(name) for name in (*_OPTIONAL_CALLABLES, "layers")},
        rho=None if rho is None else float(rho),
    )


def is_batch_size(value: Any) -> bool:
    """Whether ``value`` is a valid mini-batch size: a positive int, or ``"full"`` (the whole training set)."""
    if value == "full" and isinstance(value, str):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _import(path: Path) -> dict:
    # A name unique per path keeps two model files with the same stem apart in sys.modules;
    # registering the module lets pickling, dataclasses and the like inside the file work.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"infoplane_modelfile_{path.stem.replace('-', '_')}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"could not import model file {path.name}: Python imports only files such as .py; "
                             f"save the model definition in a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The file's folder goes on sys.path while it runs so that it can import its neighbours.
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ModelFileError(
            f"could not import model file {path.name}: {_describe(exc)}{_where(exc, path)}"
        ) from exc
    finally:
        sys.path.remove(str(path.parent))
    return vars(module)


def _describe(exc: BaseException) -> str:
    # A SyntaxError's str() repeats the file and line that _where() adds.
    message = (exc.msg if isinstance(exc, SyntaxError) else str(exc)).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _where(exc: BaseException, path: Path) -> str:
    """' (file F, line N)' for the innermost traceback frame inside the model file, if any."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f" (file {exc.filename}, line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    if not frames:
        return ""
    frame = frames[-1]
    code = f": {frame.line.strip()}" if frame.line else ""
    return f" (file {frame.filename}, line {frame.lineno}{code})"

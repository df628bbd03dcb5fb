"""The fit loop: train one network per seed, report every epoch, checkpoint, and resume exactly."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from infoplane._validate import check_int
from infoplane.data.modelfile import ModelFile
from infoplane.train.arguments import as_index_sets, as_seeds
from infoplane.train.engines import choose_engine
from infoplane.train.fused import FusedEngine
from infoplane.train.metrics import LazyMetrics, evaluate_members
from infoplane.train.spec import TrainSpec
from infoplane.train.state import check_state, derive_seed, initial_rng, restore, snapshot
from infoplane.train.vectorized import unshare

__all__ = ["fit", "FitResult"]


@dataclass
class FitResult:
    """What ``fit`` returns.

    Attributes
    ----------
    members : list of torch.nn.Module
        The trained network of each seed, in the order of ``seeds`` (independent modules).
    seeds : list of int
    epoch : int
        Number of completed epochs.
    vectorized : bool
        Whether the members were trained together (stacked parameters: ``torch.func.vmap``, batched matrix
        products or the fused kernel; see ``reason``).
    reason : str
        Why that path was taken (e.g. why training fell back to one seed at a time).
    state : dict
        Training state after the last epoch (see ``fit``'s ``state``); save it with ``save_state``.
    metrics : dict
        ``train_loss``, ``train_acc`` (and ``test_loss``, ``test_acc`` when ``test_idx`` was
        given) after the last epoch: lists with one float per seed.
    """

    members: list[nn.Module]
    seeds: list[int]
    epoch: int
    vectorized: bool
    reason: str
    state: dict
    metrics: dict[str, list[float]]


def fit(
    model: ModelFile | Callable[[], nn.Module],
    inputs: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    train_idx: torch.Tensor | np.ndarray | Sequence,
    *,
    seeds: int | Sequence[int],
    epochs: int,
    batch_size: int = 256,
    lr: float | None = None,
    optimizer: str | Callable | None = None,
    loss: Callable | None = None,
    device: str | torch.device = "cpu",
    vectorize: bool | str = "auto",
    fused: bool | str = "auto",
    callback: Callable | None = None,
    test_idx: torch.Tensor | np.ndarray | Sequence | None = None,
    start_epoch: int | None = None,
    state: dict | None = None,
    checkpoint: Callable[[dict], Any] | None = None,
    checkpoint_every: int | Callable[[int], bool] = 100,
    gradients: Sequence[str] | None = None,
    gradient_epochs: Callable[[int], bool] | None = None,
) -> FitResult:
    """Train one network per seed and report every epoch.

    Parameters
    ----------
    model : ModelFile or callable
        A loaded model file (its ``build``, ``optimizer``, ``loss`` and ``train_step`` are used), or
        a zero-argument function returning a fresh ``torch.nn.Module``; it is called once per seed
        with torch's RNG seeded from that seed (the global RNG is left untouched).
    inputs : tensor or array, shape [N, ...]
        All samples; the index arrays below select rows.
    labels : tensor or array, shape [N] (class indices) or [N, C]
    train_idx : array-like of int, shape [n] (shared by all seeds) or [S, n] (one row per seed)
        Training rows. A list of S 1-D arrays of different lengths is accepted too (the seeds
        are then trained one at a time).
    seeds : int or sequence of int
        ``S`` (meaning seeds ``0 .. S-1``) or the seeds themselves. Seed ``s`` sets the initial
        weights (``torch.manual_seed(s)`` before building) and, through streams derived from it,
        the minibatch order and any randomness inside ``forward`` (e.g. dropout).
    epochs : int
        Total number of epochs (counting those done before ``start_epoch``).
    batch_size : int, default=256
        Minibatch size; each epoch visits every training row once in a fresh random order, and
        the last batch holds the remaining ``n % batch_size`` rows.
    lr : float, optional
        Learning rate for ``optimizer="adam"`` or ``"sgd"`` (default 4e-4).
    optimizer : {"adam", "sgd"} or callable, optional
        Default: the model file's ``optimizer(parameters)`` if it has one, else Adam.
    loss : callable, optional
        ``loss(outputs, targets) -> scalar`` (mean over the batch). Default: the model file's
        ``loss`` if it has one, else ``nn.CrossEntropyLoss()`` on class indices.
    device : str or torch.device, default="cpu"
    vectorize : {"auto", True, False}, default="auto"
        ``"auto"`` trains the seeds together with ``torch.func.vmap`` when possible and otherwise
        one at a time with a warning saying why; ``True`` raises ``ValueError`` when it is not
        possible; ``False`` always trains one at a time.
    fused : {"auto", True, False}, default="auto"
        ``"auto"`` trains plain MLPs (an ``nn.Sequential`` of ``nn.Linear`` and elementwise activations, including
        :func:`infoplane.networks.quantize`'s) with the default cross-entropy and Adam or plain SGD on the CPU, one seed
        or many, with a compiled kernel that runs a whole epoch per call (see docs/training.md); anything else
        trains on the torch path, and the reason is printed once (``FusedFallbackWarning``). ``True`` raises
        ``ValueError`` when the kernel cannot be used; ``False`` never uses it.
    callback : callable, optional
        ``callback(epoch, members, metrics)``, called with ``epoch = 0`` before training (unless
        resuming) and after each epoch with the number of completed epochs. ``members`` holds the
        S current networks; they share memory with the trainer, so treat them as read-only.
        ``metrics`` is a mapping of per-seed lists (``train_loss``, ``train_acc``, and
        ``test_loss``, ``test_acc`` with ``test_idx``) evaluated in eval mode on the current
        parameters; it is computed on first access, so epochs whose metrics go unread cost
        nothing. Read it inside the callback (``dict(metrics)`` takes a copy).
    test_idx : array-like of int, optional
        Held-out rows, shared ``[m]`` or per seed ``[S, m]``.
    start_epoch : int, optional
        Completed epochs of ``state``; defaults to ``state["epoch"]`` (0 without state).
    state : dict, optional
        A state from ``FitResult.state``, a ``checkpoint`` call or ``load_state``: training then
        continues exactly where it stopped.
    checkpoint : callable, optional
        ``checkpoint(state)`` is called every ``checkpoint_every`` epochs and after the last one,
        e.g. ``lambda s: save_state("run/state.pt", s)``.
    checkpoint_every : int or callable, default=100
        Epoch interval, or ``checkpoint_every(epoch) -> bool`` deciding after each epoch (the state is only
        built when it says yes).
    gradients : sequence of str, optional
        Names of layers (as the network's ``named_modules`` gives them) whose gradient statistics are recorded,
        as :class:`infoplane.tracking.gradients.GradientStats` defines them, per seed: the callback is then called
        with the keyword ``gradients``, per seed a list of ``GradientRow`` (one per named layer, in order) for the
        minibatches of the epoch that ends there (epoch 0: none, ``batches`` = 0). Needs the fused kernel
        (``fused="auto"`` or True); elsewhere a ``ValueError`` says so.
    gradient_epochs : callable, optional
        ``gradient_epochs(epoch) -> bool``: the epochs whose statistics are collected (default: every epoch); at
        the others the callback gets ``gradients=None`` and the kernel collects nothing.

    Returns
    -------
    FitResult
    """
    spec = TrainSpec.from_args(model, lr, optimizer, loss)
    seeds = as_seeds(seeds, spec.max_seeds)
    check_int(epochs, "epochs", minimum=0)
    check_int(batch_size, "batch_size", minimum=1)
    if not callable(checkpoint_every):
        check_int(checkpoint_every, "checkpoint_every", minimum=1)
        interval = checkpoint_every
        checkpoint_every = lambda epoch: epoch % interval == 0  # noqa: E731
    if vectorize not in ("auto", True, False):
        raise ValueError(f"vectorize must be 'auto', True or False, got {vectorize!r}")
    if fused not in ("auto", True, False):
        raise ValueError(f"fused must be 'auto', True or False, got {fused!r}")
    if state is not None:
        check_state(state, seeds)
        if start_epoch is None:
            start_epoch = int(state["epoch"])
        elif start_epoch != state["epoch"]:
            raise ValueError(f"start_epoch={start_epoch} but the state was saved after epoch {state['epoch']}")
    start_epoch = 0 if start_epoch is None else start_epoch
    check_int(start_epoch, "start_epoch", minimum=0)
    if start_epoch > epochs:
        raise ValueError(f"start_epoch={start_epoch} is past epochs={epochs}")

    device = torch.device(device)
    inputs = torch.as_tensor(inputs).to(device)
    labels = torch.as_tensor(labels).to(device)
    if not labels.is_floating_point():
        labels = labels.long()  # class indices of any integer dtype; cross-entropy wants int64
    if len(labels) != len(inputs):
        raise ValueError(f"inputs have {len(inputs)} rows but labels have {len(labels)}")
    train_sets = as_index_sets(train_idx, len(seeds), len(inputs), "train_idx")
    test_sets = None if test_idx is None else as_index_sets(test_idx, len(seeds), len(inputs), "test_idx")

    # Training mode from the start: the trial step and the stacked forward must see what training sees.
    members = [spec.build(seed).to(device).train() for seed in seeds]
    engine = choose_engine(vectorize, spec, members, inputs, labels, train_sets, batch_size, fused)
    want_gradients = gradient_epochs if gradient_epochs is not None else (lambda epoch: True)
    graded = engine if isinstance(engine, FusedEngine) else None
    if gradients is not None:
        if graded is None:
            raise ValueError("fit(gradients=...) needs the fused training kernel, which does not train this model "
                             f"({engine.reason}); attach infoplane.tracking.gradients.GradientStats to the members "
                             "in your own loop instead")
        graded.track_gradients(list(gradients))
    if not engine.vectorized and vectorize == "auto" and len(seeds) > 1:
        warnings.warn(f"infoplane.fit: training the {len(seeds)} seeds one at a time: {engine.reason}", stacklevel=2)

    generators = [torch.Generator().manual_seed(derive_seed(s, 1)) for s in seeds]
    rngs = [initial_rng(s, device) for s in seeds]
    if state is not None:
        rngs = restore(state, engine, generators)

    def current_state(epoch):
        return snapshot(epoch, seeds, engine, generators, rngs)

    def evaluate():
        return evaluate_members(engine.members, spec.loss, inputs, labels, train_sets, test_sets)

    def report(epoch):
        if callback is not None:
            metrics = LazyMetrics(evaluate, test_sets is not None)
            if gradients is None or graded is None:
                callback(epoch, engine.members, metrics)
            else:
                rows = graded.gradient_rows() if want_gradients(epoch) else None
                callback(epoch, engine.members, metrics, gradients=rows)
            metrics.close()

    if start_epoch == 0:
        if gradients is not None and graded is not None:
            graded.collect_gradients(False)  # epoch 0: no minibatches
        report(0)
    for epoch in range(start_epoch + 1, epochs + 1):
        # index_select, not idx[perm]: the same rows, and on the CPU tens of times faster than advanced indexing
        orders = [idx.index_select(0, torch.randperm(len(idx), generator=g)).to(device)
                  for idx, g in zip(train_sets, generators)]
        if gradients is not None and graded is not None:
            graded.collect_gradients(want_gradients(epoch))
        rngs = engine.train_epoch(orders, inputs, labels, batch_size, rngs)
        report(epoch)
        if checkpoint is not None and (epoch == epochs or checkpoint_every(epoch)):
            checkpoint(current_state(epoch))

    final_state = current_state(epochs)
    return FitResult(
        members=[unshare(m) for m in engine.members] if getattr(engine, "stacked", engine.vectorized)
        else engine.members,
        seeds=list(seeds),
        epoch=final_state["epoch"],
        vectorized=engine.vectorized,
        reason=engine.reason,
        state=final_state,
        metrics=evaluate(),
    )

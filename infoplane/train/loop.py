"""The fit loop: train one network per seed, report every epoch, checkpoint, and resume exactly."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from infoplane._validate import check_int
from infoplane.data.modelfile import ModelFile
from infoplane.tracking.gradients import GradientRow, GradientStats, rows_from_moments
from infoplane.train.arguments import as_index_sets, as_seeds
from infoplane.train.engines import choose_engine
from infoplane.train.fused import FusedEngine
from infoplane.train.metrics import LazyMetrics, MemberMetrics
from infoplane.train.sequential import SequentialEngine
from infoplane.train.shuffle import EpochOrders
from infoplane.train.spec import TrainSpec
from infoplane.train.state import check_state, derive_seed, initial_rng, restore, snapshot
from infoplane.train.vectorized import VectorizedEngine, unshare

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
    batch_size: int | str = 256,
    lr: float | None = None,
    optimizer: str | Callable | None = None,
    rho: float | None = None,
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
    gradients: Mapping[str, Sequence[str]] | None = None,
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
    batch_size : int or "full", default=256
        Minibatch size; each epoch visits every training row once in a fresh random order, and
        the last batch holds the remaining ``n % batch_size`` rows. ``"full"``: one batch of the whole
        training set per epoch (full-batch gradient descent).
    lr : float, optional
        Learning rate for ``optimizer="adam"`` or ``"sgd"`` (default 4e-4).
    optimizer : {"adam", "sgd", "sam", "asam"} or callable, optional
        Default: the model file's ``optimizer`` if it has one, else Adam. ``"sam"`` and ``"asam"`` are
        :class:`infoplane.optim.SAM` (ASAM: ``adaptive=True``) around plain SGD at ``lr``; a factory may return a
        SAM too. SAM trains on the torch path, one seed at a time, through its closure-based ``step``.
    rho : float, optional
        SAM's radius with ``optimizer="sam"`` or ``"asam"`` (default 0.05 and 0.5, or the model file's ``rho``).
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
    gradients : dict of str to list of str, optional
        Layer name -> names of the parameters (``named_parameters()`` spelling) whose mini-batch gradient
        statistics describe it (:mod:`infoplane.tracking.gradients`). The callback's ``metrics`` then has an
        attribute ``gradients``: per seed, one :class:`~infoplane.tracking.gradients.GradientRow` per layer over
        the optimiser steps of the epoch just trained (none at epoch 0), or None where the engine gathers none
        (an engine that gathers none); without it, ``metrics.gradients`` is None. The fused kernel gathers them
        for layers whose weight is one of its Linear layers' (or that have none: frozen).
    gradient_epochs : callable, optional
        ``gradient_epochs(epoch) -> bool``: the epochs whose statistics are collected (default: every epoch); at
        the others ``metrics.gradients`` is None and nothing is collected (no optimiser hook, no work in the
        kernel).

    Returns
    -------
    FitResult
    """
    spec = TrainSpec.from_args(model, lr, optimizer, loss, rho)
    seeds = as_seeds(seeds, spec.max_seeds)
    check_int(epochs, "epochs", minimum=0)
    if batch_size != "full" or not isinstance(batch_size, str):
        check_int(batch_size, "batch_size", minimum=1, what='a positive int or "full"')
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
    if batch_size == "full":
        batch_size = max(1, *(len(s) for s in train_sets))
    assert isinstance(batch_size, int)

    # Training mode from the start: the trial step and the stacked forward must see what training sees.
    members = [spec.build(seed).to(device).train() for seed in seeds]
    engine = choose_engine(vectorize, spec, members, inputs, labels, train_sets, batch_size, fused)
    if not engine.vectorized and vectorize == "auto" and len(seeds) > 1 and not getattr(engine, "announced", False):
        warnings.warn(f"infoplane.fit: training the {len(seeds)} seeds one at a time: {engine.reason}", stacklevel=2)

    generators = [torch.Generator().manual_seed(derive_seed(s, 1)) for s in seeds]
    rngs = [initial_rng(s, device) for s in seeds]
    if state is not None:
        rngs = restore(state, engine, generators)

    epoch_orders = EpochOrders(train_sets, generators, device)

    def current_state(epoch):
        epoch_orders.sync()  # the generators' states as the torch route would have left them
        return snapshot(epoch, seeds, engine, generators, rngs)

    evaluate_all = MemberMetrics()  # one stacked pass per index set where the members allow it

    def evaluate():
        return evaluate_all(engine.members, spec.loss, inputs, labels, train_sets, test_sets)

    grads = None if gradients is None else EpochGradients(engine, gradients)
    want_gradients = gradient_epochs if gradient_epochs is not None else (lambda epoch: True)

    def report(epoch):
        if callback is not None:
            metrics = LazyMetrics(evaluate, test_sets is not None)
            metrics.gradients = None if grads is None or not want_gradients(epoch) else grads.read()
            callback(epoch, engine.members, metrics)
            metrics.close()

    if start_epoch == 0:
        if grads is not None:
            grads.start(False)  # epoch 0: no minibatches
        report(0)
    for epoch in range(start_epoch + 1, epochs + 1):
        # each engine draws the epoch's orders as it can (the fused kernel inside its call)
        if grads is None:
            rngs = engine.train_epoch(epoch_orders, inputs, labels, batch_size, rngs)
        else:
            grads.start(want_gradients(epoch))
            with grads:  # the optimiser hook lives for this epoch's steps only
                rngs = engine.train_epoch(epoch_orders, inputs, labels, batch_size, rngs)
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


class EpochGradients:
    """The gradient statistics of each epoch's optimiser steps, per seed, for any engine.

    The torch engines are read through optimiser hooks (:class:`~infoplane.tracking.gradients.GradientStats`: one
    per member, or one over the stacked parameters). An engine that trains without torch optimisers hands its
    moments over instead: ``engine.gather_gradients(names)`` is called once, here, with the parameter names (so
    that it gathers only when asked), and ``engine.gradient_moments(names)`` after each epoch returns, for each
    name, ``(count, mean_sq, var_sum)`` over that epoch's optimiser steps: the number of steps and, per seed
    (arrays of length S), the sums over the parameter's elements of the squared mean gradient and of the
    population variance across the steps (see :func:`~infoplane.tracking.gradients.rows_from_moments`); the
    engine starts a new epoch's moments after each call. An engine with neither gives None.
    """

    def __init__(self, engine: Any, layers: Mapping[str, Sequence[str]]) -> None:
        self.engine, self.layers = engine, {k: list(v) for k, v in layers.items()}
        self.fused = False
        self.stats: list[GradientStats] = []
        if isinstance(engine, VectorizedEngine):
            self.stats = [GradientStats({k: [engine.params[n] for n in v] for k, v in self.layers.items()},
                                        stacked=len(engine.members))]
        elif isinstance(engine, SequentialEngine):  # one optimiser per member
            self.stats = [GradientStats({k: [m.get_parameter(n) for n in v] for k, v in self.layers.items()})
                          for m in engine.members]
        elif isinstance(engine, FusedEngine):  # the kernel gathers each Linear layer's weight moments itself
            modules = []
            for name, params in self.layers.items():
                if not params:
                    modules.append(name)  # no weight: reported frozen
                elif len(params) == 1 and params[0].endswith(".weight"):
                    modules.append(params[0][: -len(".weight")])
                else:
                    raise ValueError(f"the fused kernel gathers one Linear weight per layer; layer {name!r} is "
                                     f"described by {params}")
            engine.track_gradients(modules)
            self.fused = True
        elif hasattr(engine, "gather_gradients"):
            engine.gather_gradients([n for v in self.layers.values() for n in v])
        self.collecting = True

    def start(self, on: bool) -> None:
        """Begin an epoch whose optimiser steps count (``on``) or are skipped (no hook, no work in a kernel)."""
        self.collecting = on
        if self.fused:
            self.engine.collect_gradients(on)

    def __enter__(self) -> EpochGradients:
        if self.collecting:
            for s in self.stats:
                s.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.stats:
            s.detach()

    def read(self) -> list[list[GradientRow]] | None:
        if self.fused:  # the kernel's rows name its modules; the tracker's layers are what they describe
            return [[dataclasses.replace(row, layer=layer) for layer, row in zip(self.layers, rows)]
                    for rows in self.engine.gradient_rows()]
        if self.stats:
            return [rows for s in self.stats for rows in s.read_seeds()]
        moments = getattr(self.engine, "gradient_moments", None)
        if moments is None:
            return None
        names = list(self.layers)
        frozen = [not any(self.engine.members[0].get_parameter(n).requires_grad for n in self.layers[k])
                  for k in names]
        given = moments([n for k in names for n in self.layers[k]])
        seeds = len(self.engine.members)
        out = []
        for s in range(seeds):
            count = [max((int(given[n][0]) for n in self.layers[k]), default=0) for k in names]
            mean_sq = [sum(float(given[n][1][s]) for n in self.layers[k]) for k in names]
            var_sum = [sum(float(given[n][2][s]) for n in self.layers[k]) for k in names]
            out.append(rows_from_moments(names, count, mean_sq, var_sum, frozen))
        return out

"""Default trainer for seed ensembles, vectorised with ``torch.func`` where the model allows it.

``fit`` trains S copies of a network (one per seed), each on its own training indices with its
own minibatch order, and calls a callback after every epoch with the S current networks. When
every member is a plain feed-forward module (no custom training step, no buffers that training
changes, no randomness in ``forward``), the S members are stacked and trained in one ``vmap``
call per minibatch, which is numerically the same as training them one by one.
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .modelfile import ModelFile, seeded_build
from .store import atomic_write_bytes

__all__ = ["fit", "FitResult", "save_state", "load_state", "STATE_FORMAT"]

#: Tag stored in every state dict so that ``fit`` can tell a training state from other files.
STATE_FORMAT = "infoplane-fit-state/1"

DEFAULT_LR = 4e-4

# Optimisers whose update of each parameter element depends only on that element's own gradient
# and state (plus shared scalars such as the step count): one of them over stacked [S, ...]
# tensors performs exactly the S separate updates. Optimisers using norms over a whole tensor
# (LARS/LAMB-like) or closures (LBFGS) would mix the members.
_ELEMENTWISE = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta, torch.optim.Rprop,
)
# Per-parameter optimiser state entries that are scalars shared by all members, not stacked.
_SHARED_STATE = frozenset({"step", "mu_product"})

_EVAL_CHUNK = 8192  # rows per forward pass when computing metrics; bounds memory on large sets


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
        Whether the members were trained together with ``torch.func.vmap``.
    reason : str
        Why that path was taken (e.g. why training fell back to one seed at a time).
    state : dict
        Training state after the last epoch (see ``fit``'s ``state``); save it with ``save_state``.
    metrics : dict
        ``train_loss``, ``train_acc`` (and ``test_loss``, ``test_acc`` when ``test_idx`` was
        given) after the last epoch: lists with one float per seed.
    """

    members: list
    seeds: list
    epoch: int
    vectorized: bool
    reason: str
    state: dict
    metrics: dict


def fit(
    model: ModelFile | Callable[[], nn.Module],
    inputs,
    labels,
    train_idx,
    *,
    seeds: int | Sequence[int],
    epochs: int,
    batch_size: int = 256,
    lr: float | None = None,
    optimizer: str | Callable | None = None,
    loss: Callable | None = None,
    device: str | torch.device = "cpu",
    vectorize: bool | str = "auto",
    callback: Callable | None = None,
    test_idx=None,
    start_epoch: int | None = None,
    state: dict | None = None,
    checkpoint: Callable[[dict], Any] | None = None,
    checkpoint_every: int | Callable[[int], bool] = 100,
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

    Returns
    -------
    FitResult
    """
    spec = _Spec.from_args(model, lr, optimizer, loss)
    seeds = _as_seeds(seeds, spec.max_seeds)
    _check_count("epochs", epochs, minimum=0)
    _check_count("batch_size", batch_size, minimum=1)
    if not callable(checkpoint_every):
        _check_count("checkpoint_every", checkpoint_every, minimum=1)
        interval = checkpoint_every
        checkpoint_every = lambda epoch: epoch % interval == 0  # noqa: E731
    if vectorize not in ("auto", True, False):
        raise ValueError(f"vectorize must be 'auto', True or False, got {vectorize!r}")
    if state is not None:
        _check_state(state, seeds)
        if start_epoch is None:
            start_epoch = int(state["epoch"])
        elif start_epoch != state["epoch"]:
            raise ValueError(f"start_epoch={start_epoch} but the state was saved after epoch {state['epoch']}")
    start_epoch = 0 if start_epoch is None else start_epoch
    _check_count("start_epoch", start_epoch, minimum=0)
    if start_epoch > epochs:
        raise ValueError(f"start_epoch={start_epoch} is past epochs={epochs}")

    device = torch.device(device)
    inputs = torch.as_tensor(inputs).to(device)
    labels = torch.as_tensor(labels).to(device)
    if not labels.is_floating_point():
        labels = labels.long()  # class indices of any integer dtype; cross-entropy wants int64
    if len(labels) != len(inputs):
        raise ValueError(f"inputs have {len(inputs)} rows but labels have {len(labels)}")
    train_sets = _as_index_sets(train_idx, len(seeds), len(inputs), "train_idx")
    test_sets = None if test_idx is None else _as_index_sets(test_idx, len(seeds), len(inputs), "test_idx")

    # Training mode from the start: the trial step and the stacked forward must see what training sees.
    members = [spec.build(seed).to(device).train() for seed in seeds]
    engine = _choose_engine(vectorize, spec, members, inputs, labels, train_sets, batch_size)
    if not engine.vectorized and vectorize == "auto" and len(seeds) > 1:
        warnings.warn(f"infoplane.fit: training the {len(seeds)} seeds one at a time: {engine.reason}", stacklevel=2)

    generators = [torch.Generator().manual_seed(_derive(s, 1)) for s in seeds]
    rngs = [_initial_rng(s, device) for s in seeds]
    if state is not None:
        for member, saved, gen in zip(engine.members, state["members"], generators):
            _load_tensors(member, saved)
            gen.set_state(saved["generator"])
        rngs = [saved["rng"] for saved in state["members"]]
        engine.load_optimizer_states([saved["optimizer"] for saved in state["members"]])

    def current_state(epoch):
        opt_states = engine.optimizer_states()
        return {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "seeds": list(seeds),
            "members": [
                {
                    "seed": s,
                    "params": {k: v.detach().clone() for k, v in m.named_parameters()},
                    "buffers": {k: v.detach().clone() for k, v in m.named_buffers()},
                    "optimizer": opt,
                    "generator": gen.get_state(),
                    "rng": rng,
                }
                for s, m, opt, gen, rng in zip(seeds, engine.members, opt_states, generators, rngs)
            ],
        }

    def evaluate():
        return _evaluate(engine.members, spec.loss, inputs, labels, train_sets, test_sets)

    def report(epoch):
        if callback is not None:
            metrics = _LazyMetrics(evaluate, test_sets is not None)
            callback(epoch, engine.members, metrics)
            metrics.close()

    if start_epoch == 0:
        report(0)
    for epoch in range(start_epoch + 1, epochs + 1):
        orders = [idx[torch.randperm(len(idx), generator=g)].to(device) for idx, g in zip(train_sets, generators)]
        rngs = engine.train_epoch(orders, inputs, labels, batch_size, rngs)
        report(epoch)
        if checkpoint is not None and (epoch == epochs or checkpoint_every(epoch)):
            checkpoint(current_state(epoch))

    final_state = current_state(epochs)
    return FitResult(
        members=[_unshare(m) for m in engine.members] if engine.vectorized else engine.members,
        seeds=list(seeds),
        epoch=final_state["epoch"],
        vectorized=engine.vectorized,
        reason=engine.reason,
        state=final_state,
        metrics=evaluate(),
    )


def save_state(path: str | os.PathLike, state: dict) -> Path:
    """Write a training state atomically (a temporary file in the same folder, then a rename).

    Parameters
    ----------
    path : path-like
    state : dict
        ``FitResult.state`` or the argument of a ``checkpoint`` call. It holds only tensors,
        numbers, strings, lists and dicts, so ``load_state`` can read it with ``weights_only=True``.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_state(path: str | os.PathLike) -> dict:
    """Read a state written by ``save_state`` (tensors land on the CPU; ``fit`` moves them).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict
        Pass it to ``fit(..., state=...)`` to continue training.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an infoplane training state (expected format {STATE_FORMAT!r})")
    return state


# --- what to train -------------------------------------------------------------------------------


@dataclass
class _Spec:
    build: Callable[[int], nn.Module]
    make_optimizer: Callable
    loss: Callable
    train_step: Callable | None
    max_seeds: int | None

    @classmethod
    def from_args(cls, model, lr, optimizer, loss):
        if isinstance(model, ModelFile):
            build, max_seeds = model.build, model.max_seeds
            file_optimizer, file_loss, train_step = model.optimizer, model.loss, model.train_step
        elif callable(model) and not isinstance(model, nn.Module):
            build, max_seeds = (lambda seed: _checked_build(model, seed)), None
            file_optimizer = file_loss = train_step = None
        else:
            raise TypeError(
                f"model must be a ModelFile (infoplane.modelfile.load_model_file) or a zero-argument function "
                f"returning a fresh nn.Module, got {type(model).__name__}"
            )
        optimizer = file_optimizer if optimizer is None else optimizer
        if optimizer is None or isinstance(optimizer, str):
            name = "adam" if optimizer is None else optimizer.lower()
            if name not in ("adam", "sgd"):
                raise ValueError(f"optimizer must be 'adam', 'sgd' or a callable(parameters), got {optimizer!r}")
            rate = DEFAULT_LR if lr is None else float(lr)
            if not rate > 0:
                raise ValueError(f"lr must be positive, got {lr!r}")
            make_optimizer = _BuiltinOptimizer(torch.optim.Adam if name == "adam" else torch.optim.SGD, rate)
        elif callable(optimizer):
            if lr is not None:
                raise ValueError("lr only applies to optimizer='adam' or 'sgd'; set the rate inside the optimizer factory")
            make_optimizer = optimizer
        else:
            raise TypeError(f"optimizer must be 'adam', 'sgd' or a callable(parameters), got {type(optimizer).__name__}")
        loss = file_loss if loss is None else loss
        loss = nn.CrossEntropyLoss() if loss is None else loss
        if not callable(loss):
            raise TypeError(f"loss must be callable(outputs, targets), got {type(loss).__name__}")
        return cls(build, make_optimizer, loss, train_step, max_seeds)


@dataclass
class _BuiltinOptimizer:
    cls: type
    lr: float

    def __call__(self, params):
        params = list(params)
        # The fused kernels update all tensors in one call, which matters when per-step overhead
        # dominates (small networks); devices without them get the default implementation.
        try:
            return self.cls(params, lr=self.lr, fused=True)
        except (RuntimeError, ValueError):
            return self.cls(params, lr=self.lr)


def _checked_build(build_model, seed):
    built = seeded_build(build_model, seed)
    if not isinstance(built, nn.Module):
        raise TypeError(f"the model builder returned {type(built).__name__}, not a torch.nn.Module")
    return built


# --- the two training engines --------------------------------------------------------------------


class _Sequential:
    """Trains the members one after another, each with its own optimiser."""

    vectorized = False

    def __init__(self, spec, members, reason):
        self.spec, self.members, self.reason = spec, members, reason
        self.optimizers = [spec.make_optimizer(m.parameters()) for m in members]

    def train_epoch(self, orders, inputs, labels, batch_size, rngs):
        device = inputs.device
        new_rngs = []
        # Each member draws its in-forward randomness (dropout) from its own saved RNG state, so
        # results do not depend on the order of members and resume exactly.
        with torch.random.fork_rng(devices=_cuda_devices(device)):
            for model, opt, order, rng in zip(self.members, self.optimizers, orders, rngs):
                _set_rng(rng, device)
                model.train()
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    batch = (inputs[idx], labels[idx])
                    if self.spec.train_step is not None:
                        self.spec.train_step(model, batch, opt)
                    else:
                        opt.zero_grad(set_to_none=True)
                        self.spec.loss(model(batch[0]), batch[1]).backward()
                        opt.step()
                new_rngs.append(_get_rng(device))
        return new_rngs

    def optimizer_states(self):
        return [copy.deepcopy(opt.state_dict()) for opt in self.optimizers]

    def load_optimizer_states(self, states):
        for opt, saved in zip(self.optimizers, states):
            opt.load_state_dict(saved)


class _Vectorized:
    """Trains the members together: stacked parameters, one vmap call and one optimiser step per batch.

    The member modules handed to callbacks hold views into the stacked tensors, so they always
    show the current parameters without any copying.
    """

    vectorized = True

    def __init__(self, spec, members, optimizer, params, buffers, forward_loss, reason):
        self.spec, self.members, self.optimizer, self.reason = spec, members, optimizer, reason
        self.params, self.buffers, self.forward_loss = params, buffers, forward_loss
        for i, member in enumerate(members):
            _swap_tensors(
                member,
                lambda name, p: nn.Parameter(params[name].detach()[i], requires_grad=p.requires_grad),
                lambda name, b: buffers[name][i],
            )

    def train_epoch(self, orders, inputs, labels, batch_size, rngs):
        order = torch.stack(orders)
        # One gather per epoch; the minibatches are then views of it.
        epoch_inputs, epoch_labels = inputs[order], labels[order]
        for start in range(0, order.shape[1], batch_size):
            x, y = epoch_inputs[:, start:start + batch_size], epoch_labels[:, start:start + batch_size]
            losses, _ = self.forward_loss(self.params, self.buffers, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            # Member i's loss depends only on member i's slice, so the gradient of the sum is, slice
            # by slice, each member's own gradient.
            losses.sum().backward()
            self.optimizer.step()
        return rngs  # forward draws no random numbers on this path (checked when it was chosen)

    def optimizer_states(self):
        stacked = self.optimizer.state_dict()
        shapes = [p.shape for p in self.params.values()]
        out = []
        for i in range(len(self.members)):
            per_param = {
                k: {
                    key: value[i].clone() if _is_stacked(key, value, shapes[k]) else copy.deepcopy(value)
                    for key, value in entry.items()
                }
                for k, entry in stacked["state"].items()
            }
            out.append({"state": per_param, "param_groups": copy.deepcopy(stacked["param_groups"])})
        return out

    def load_optimizer_states(self, states):
        shapes = [p.shape[1:] for p in self.params.values()]
        merged = {}
        for k in states[0]["state"]:
            entries = [s["state"][k] for s in states]
            merged[k] = {}
            for key, first in entries[0].items():
                values = [e[key] for e in entries]
                if torch.is_tensor(first) and key not in _SHARED_STATE and first.shape == shapes[k]:
                    merged[k][key] = torch.stack(values)
                elif all(_same(v, first) for v in values):
                    merged[k][key] = first
                else:
                    raise ValueError(
                        f"the seeds' optimiser states differ in {key!r}, so they cannot be trained together; "
                        "resume with vectorize=False"
                    )
        self.optimizer.load_state_dict({"state": merged, "param_groups": states[0]["param_groups"]})


def _is_stacked(key, value, stacked_shape):
    return torch.is_tensor(value) and key not in _SHARED_STATE and value.shape == stacked_shape


def _same(a, b):
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    return a == b


def _choose_engine(vectorize, spec, members, inputs, labels, train_sets, batch_size):
    if vectorize is False:
        return _Sequential(spec, members, "vectorize=False")
    if len(members) == 1:
        return _Sequential(spec, members, "a single seed")
    engine = _try_vectorize(spec, members, inputs, labels, train_sets, batch_size)
    if isinstance(engine, str):
        if vectorize is True:
            raise ValueError(f"vectorize=True, but the seeds cannot be trained together: {engine}")
        return _Sequential(spec, members, engine)
    return engine


def _try_vectorize(spec, members, inputs, labels, train_sets, batch_size):
    """A vectorised engine, or a string saying why the members cannot be trained together."""
    if spec.train_step is not None:
        return "the model file defines a custom train_step"
    if len({len(s) for s in train_sets}) > 1:
        return "the seeds' training sets differ in size"
    for name, module in members[0].named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            return (f"{type(module).__name__} at {name!r} updates running statistics during training "
                    "(buffers cannot be shared in the stacked ensemble)")
    layout = [(k, v.shape, v.dtype) for k, v in (*members[0].named_parameters(), *members[0].named_buffers())]
    for m in members[1:]:
        if [(k, v.shape, v.dtype) for k, v in (*m.named_parameters(), *m.named_buffers())] != layout:
            return "the seeds' networks differ in their parameters or buffers"
    try:
        params, buffers = stack_module_state(members)
    except RuntimeError as exc:
        return f"torch.func.stack_module_state failed: {_first_line(exc)}"
    optimizer = spec.make_optimizer(list(params.values()))
    if type(optimizer) not in _ELEMENTWISE:
        return f"{type(optimizer).__name__} is not known to update each parameter element independently"
    # A factory may group parameters by shape (e.g. no weight decay where p.ndim == 1); stacking adds a
    # dimension, so the stacked optimiser must group the same parameters in the same order as a member's own.
    names = {id(v): k for k, v in params.items()}
    own_names = {id(v): k for k, v in members[0].named_parameters()}
    stacked_groups = [[names.get(id(p)) for p in g["params"]] for g in optimizer.param_groups]
    own_groups = [[own_names.get(id(p)) for p in g["params"]]
                  for g in spec.make_optimizer(list(members[0].parameters())).param_groups]
    if stacked_groups != own_groups:
        return "the optimiser groups the stacked parameters differently from a single network's"

    forward_loss, how = _stacked_sequential(members[0], spec.loss, inputs, labels), "batched matrix products"
    if forward_loss is None:
        base = copy.deepcopy(members[0]).to("meta")
        loss_fn = spec.loss

        def member_forward_loss(p, b, x, y):
            out = functional_call(base, (p, b), (x,))
            return loss_fn(out, y), out

        # randomness="error": a forward that draws random numbers (dropout) cannot match the
        # one-at-a-time results, so it must fall back rather than silently differ.
        forward_loss, how = vmap(member_forward_loss, randomness="error"), "torch.func.vmap"

    # Trial step on copies: the real parameters and buffers must not move.
    n = min(batch_size, len(train_sets[0]))
    idx = torch.stack([s[:n] for s in train_sets]).to(inputs.device)
    trial_params = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in params.items()}
    trial_buffers = {k: v.clone() for k, v in buffers.items()}
    try:
        with torch.random.fork_rng(devices=_cuda_devices(inputs.device)):
            losses, out = forward_loss(trial_params, trial_buffers, inputs[idx], labels[idx])
            if losses.shape != (len(members),):
                return f"the loss returned shape {tuple(losses.shape[1:])} per seed, expected a scalar"
            losses.sum().backward()
    except Exception as exc:  # any failure of vmap/functional_call means: train one at a time
        return f"the vmap trial step failed ({type(exc).__name__}: {_first_line(exc)})"
    changed = [k for k, v in buffers.items() if not torch.equal(v, trial_buffers[k])]
    if changed:
        return f"training changes the buffers {', '.join(changed)}"
    with torch.no_grad():
        reference = members[0](inputs[idx[0]])
    if not torch.allclose(out[0].detach(), reference, rtol=1e-4, atol=1e-5):
        return "the vmapped forward does not reproduce the module's own forward"
    return _Vectorized(spec, members, optimizer, params, buffers, forward_loss,
                       f"vectorised over {len(members)} seeds with {how}")


# Parameter-free modules applied elementwise: they act on a stacked [S, B, d] tensor as on [B, d].
_ELEMENTWISE_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus,
                            nn.Identity, nn.Hardtanh, nn.ReLU6, nn.Mish, nn.Softsign, nn.Tanhshrink)


def _stacked_sequential(model, loss, inputs, labels):
    """A forward-and-loss for the stacked ensemble written with batched matrix products, or None.

    For the common case (an nn.Sequential of Linear layers and elementwise activations, trained with the
    default cross-entropy on flat inputs), this does the same arithmetic as vmap over the members at a
    fraction of its per-operation overhead, which dominates for small networks.
    """
    if not isinstance(model, nn.Sequential) or inputs.ndim != 2 or labels.is_floating_point():
        return None
    if type(loss) is not nn.CrossEntropyLoss or loss.weight is not None or loss.reduction != "mean" \
            or loss.label_smoothing != 0.0 or loss.ignore_index != -100:
        return None
    layers = list(model.named_children())
    if not all(type(m) is nn.Linear or type(m) in _ELEMENTWISE_ACTIVATIONS for _, m in layers):
        return None
    if not layers or type(layers[-1][1]) is not nn.Linear:
        return None

    def forward_loss(params, buffers, x, y):
        h = x
        for name, module in layers:
            if type(module) is nn.Linear:
                weight = params[f"{name}.weight"].transpose(1, 2)
                bias = params.get(f"{name}.bias")
                h = torch.bmm(h, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, weight)
            else:
                h = module(h)
        per_sample = nn.functional.cross_entropy(h.reshape(-1, h.shape[-1]), y.reshape(-1), reduction="none")
        return per_sample.view(y.shape).mean(dim=1), h

    return forward_loss


# --- metrics ---------------------------------------------------------------------------------------


class _LazyMetrics(Mapping):
    """Per-seed metrics computed on first access; valid only while the callback runs."""

    def __init__(self, compute, with_test):
        self._compute, self._values, self._open = compute, None, True
        self._keys = ("train_loss", "train_acc") + (("test_loss", "test_acc") if with_test else ())

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        if self._values is None:
            if not self._open:
                raise RuntimeError("metrics can only be read inside the callback; keep dict(metrics) to use them later")
            self._values = self._compute()
        return self._values[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def close(self):
        self._open = False


@torch.no_grad()
def _evaluate(members, loss_fn, inputs, labels, train_sets, test_sets):
    out = {"train_loss": [], "train_acc": []}
    if test_sets is not None:
        out.update(test_loss=[], test_acc=[])
    for i, model in enumerate(members):
        was_training = model.training
        model.eval()
        for prefix, sets in (("train", train_sets), ("test", test_sets)):
            if sets is None:
                continue
            loss, acc = _loss_and_accuracy(model, loss_fn, inputs, labels, sets[i].to(inputs.device))
            out[f"{prefix}_loss"].append(loss)
            out[f"{prefix}_acc"].append(acc)
        model.train(was_training)
    return out


def _loss_and_accuracy(model, loss_fn, inputs, labels, idx):
    """Mean loss and accuracy (fraction correct; NaN when outputs have no class axis) over rows idx."""
    if len(idx) == 0:
        return float("nan"), float("nan")
    total_loss, correct = 0.0, 0.0
    for start in range(0, len(idx), _EVAL_CHUNK):
        chunk = idx[start:start + _EVAL_CHUNK]
        x, y = inputs[chunk], labels[chunk]
        output = model(x)
        total_loss += float(loss_fn(output, y)) * len(chunk)
        if output.dim() < 2:
            correct = float("nan")
        else:
            target = y if y.dim() == 1 else y.argmax(-1)
            correct += float((output.argmax(-1) == target).sum())
    return total_loss / len(idx), correct / len(idx)


# --- small helpers ---------------------------------------------------------------------------------


def _as_seeds(seeds, max_seeds):
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        seeds = list(range(int(seeds)))
    else:
        try:
            seeds = [int(s) for s in seeds]
        except (TypeError, ValueError):
            raise TypeError(f"seeds must be a count or a sequence of ints, got {seeds!r}") from None
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative ints, got {seeds}")
    if max_seeds is not None and (len(seeds) > max_seeds or seeds != [0]):
        raise ValueError(
            f"the model file defines a single `model`, so only seed 0 can be trained (got seeds {seeds}); "
            "define build_model() to train several seeds"
        )
    return seeds


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _as_index_sets(idx, n_seeds, n_rows, name):
    """One 1-D int64 CPU tensor of row indices per seed."""
    if isinstance(idx, (list, tuple)) and idx and not np.isscalar(idx[0]):
        sets = [torch.as_tensor(np.asarray(i)) for i in idx]
    else:
        arr = torch.as_tensor(np.asarray(idx.cpu() if torch.is_tensor(idx) else idx))
        if arr.dim() == 1:
            sets = [arr] * n_seeds
        elif arr.dim() == 2:
            sets = list(arr)
        else:
            raise ValueError(f"{name} must have shape [n] or [S, n], got {tuple(arr.shape)}")
    if len(sets) != n_seeds:
        raise ValueError(f"{name} has {len(sets)} rows but there are {n_seeds} seeds; give one row per seed or a single [n] array")
    out = []
    for s in sets:
        if s.dim() != 1 or (len(s) and (s.is_floating_point() or s.dtype == torch.bool)):
            raise ValueError(f"{name} must hold integer row indices, got dtype {s.dtype} and shape {tuple(s.shape)}")
        s = s.long().cpu()
        if len(s) and (s.min() < 0 or s.max() >= n_rows):
            raise ValueError(f"{name} holds indices outside [0, {n_rows}) for {n_rows} rows of inputs")
        out.append(s)
    if name == "train_idx" and any(len(s) == 0 for s in out):
        raise ValueError("train_idx is empty for at least one seed")
    return out


def _check_state(state, seeds):
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"state is not an infoplane training state (expected format {STATE_FORMAT!r})")
    if list(state["seeds"]) != list(seeds):
        raise ValueError(f"state holds seeds {state['seeds']}, but fit was asked for {seeds}")


def _load_tensors(member, saved):
    own = {**dict(member.named_parameters()), **dict(member.named_buffers())}
    given = {**saved["params"], **saved["buffers"]}
    if own.keys() != given.keys() or any(own[k].shape != given[k].shape for k in own):
        raise ValueError("the state does not match the model: parameter names or shapes differ")
    with torch.no_grad():
        for k, t in given.items():
            own[k].copy_(t)


def _swap_tensors(module, new_param, new_buffer):
    """Replace each parameter and buffer of ``module`` (tied ones consistently) by a new tensor."""
    replace = {}
    for name, p in module.named_parameters():
        replace[id(p)] = new_param(name, p)
    for name, b in module.named_buffers():
        replace[id(b)] = new_buffer(name, b)
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for key, t in table.items():
                if t is not None and id(t) in replace:
                    table[key] = replace[id(t)]


def _unshare(member):
    """Give a member its own storage (not views into the stacked ensemble tensors)."""
    _swap_tensors(
        member,
        lambda name, p: nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad),
        lambda name, b: b.clone(),
    )
    return member


def _derive(seed, stream):
    """A 63-bit seed for one random stream of a member, independent of the other streams."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _cuda_devices(device):
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def _get_rng(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _initial_rng(seed, device):
    # Private generators: torch.manual_seed would also reseed every CUDA device, not only the one restored.
    x = _derive(seed, 2)
    state = {"cpu": torch.Generator().manual_seed(x).get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.Generator(device=device).manual_seed(x).get_state()
    return state


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

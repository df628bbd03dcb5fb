"""The fused engine: a whole epoch of an MLP ensemble's training in one call of a compiled kernel.

For an ``nn.Sequential`` of ``nn.Linear`` layers and elementwise activations (Tanh, ReLU, Sigmoid, LeakyReLU,
Hardtanh/ReLU6, Identity, and their fake-quantised versions from :func:`infoplane.networks.quantize`), trained with the
default cross-entropy by Adam or plain SGD on the CPU, the kernel of :mod:`infoplane.train.fused_kernel` runs
the forward pass, the backward pass and the optimiser update of every seed and minibatch itself: the same
minibatches in the same order, the same formulas as torch's ops, without the per-operation dispatch cost that
dominates for networks this small. Parameters and optimiser moments live in flat ``[S, T]`` buffers; the
members hold views of them. Anything else, or a machine without a C compiler, trains on the torch path, and the
reason is printed once.
"""
from __future__ import annotations

import copy
import ctypes
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from infoplane._native import kernels
from infoplane.tracking.gradients import GradientRow
from infoplane.train import fused_kernel
from infoplane.train.shuffle import EpochOrders, as_orders
from infoplane.train.spec import TrainSpec
from infoplane.train.vectorized import swap_tensors

__all__ = ["FusedFallbackWarning"]

_CODES = {nn.Identity: 0, nn.Tanh: 1, nn.ReLU: 2, nn.Sigmoid: 3, nn.LeakyReLU: 4, nn.Hardtanh: 5, nn.ReLU6: 5}
_ANNOUNCED: set[str] = set()


class FusedFallbackWarning(UserWarning):
    """The fused training kernel was not used; the message says why (printed once per reason and process)."""


def announce(reason: str) -> None:
    if reason not in _ANNOUNCED:
        _ANNOUNCED.add(reason)
        warnings.warn(f"infoplane.fit: the fused training kernel is not used ({reason}); training on the torch path",
                      FusedFallbackWarning, stacklevel=4)


@dataclass
class _Plan:
    dims: list[int]
    acts: list[int]          # per hidden layer
    act_params: list[float]  # two per hidden layer
    quantised: list[int]     # per hidden layer
    quant: list[float]       # three per hidden layer: low, high, step


def _activation(module: nn.Module) -> tuple[int, list[float], list[float] | None] | None:
    """(code, two parameters, quantiser or None) of an elementwise activation, or None when unsupported."""
    from infoplane.networks.quantize import QUANTIZED_CLASSES

    quant = None
    kind = type(module)
    if kind in QUANTIZED_CLASSES.values():
        kind = kind.__bases__[0]
        step = (module.quant_high - module.quant_low) / (module.quant_levels - 1)
        quant = [module.quant_low, module.quant_high, step]
    if kind not in _CODES:
        return None
    if kind is nn.LeakyReLU:
        return _CODES[kind], [float(module.negative_slope), 0.0], quant
    if kind in (nn.Hardtanh, nn.ReLU6):
        return _CODES[kind], [float(module.min_val), float(module.max_val)], quant
    return _CODES[kind], [0.0, 0.0], quant


def _plan(model: nn.Module) -> _Plan | str:
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not a plain nn.Sequential"
    dims: list[int] = []
    plan = _Plan(dims, [], [], [], [])
    pending = None  # the activation after the latest Linear
    for name, module in model.named_children():
        if type(module) is nn.Linear:
            if module.bias is None:
                return f"the Linear layer {name!r} has no bias"
            if dims and module.in_features != dims[-1]:
                return f"the Linear layer {name!r} takes {module.in_features} features, not {dims[-1]}"
            if dims:
                code, params, quant = pending if pending is not None else (0, [0.0, 0.0], None)
                plan.acts.append(code)
                plan.act_params += params
                plan.quantised.append(quant is not None)
                plan.quant += quant if quant is not None else [0.0, 0.0, 1.0]
            else:
                dims.append(module.in_features)
            dims.append(module.out_features)
            pending = None
            continue
        if not dims:
            return f"the first layer {name!r} is a {type(module).__name__}, not nn.Linear"
        if type(module) is nn.Identity:
            continue
        act = _activation(module)
        if act is None:
            return f"layer {name!r} ({type(module).__name__}) is not an activation the kernel implements"
        if pending is not None:
            return f"two activations in a row at {name!r}"
        pending = act
    if not dims:
        return "the model has no Linear layer"
    if pending is not None:
        return "the model does not end with a Linear layer (the cross-entropy takes its logits)"
    return plan


def _optimizer_settings(optimizer: torch.optim.Optimizer, n_params: int) -> tuple[int, dict] | str:
    """(kernel code, hyperparameters) for the optimisers the kernel implements, or the reason it cannot."""
    if len(optimizer.param_groups) != 1 or len(optimizer.param_groups[0]["params"]) != n_params:
        return "the optimiser has several parameter groups"
    group = optimizer.param_groups[0]
    if any(torch.is_tensor(v) for v in group.values() if not isinstance(v, list)):
        return "the optimiser has tensor hyperparameters"
    if group.get("maximize") or group.get("differentiable") or group.get("capturable"):
        return "the optimiser uses maximize, differentiable or capturable"
    if type(optimizer) is torch.optim.Adam:
        if group.get("amsgrad") or group.get("decoupled_weight_decay"):
            return "Adam with amsgrad or decoupled weight decay"
        beta1, beta2 = group["betas"]
        return 0, {"lr": float(group["lr"]), "beta1": float(beta1), "beta2": float(beta2), "eps": float(group["eps"]),
                   "weight_decay": float(group["weight_decay"])}
    if type(optimizer) is torch.optim.SGD:
        if group["momentum"] != 0 or group.get("nesterov"):
            return "SGD with momentum"
        return 1, {"lr": float(group["lr"]), "weight_decay": float(group["weight_decay"])}
    return f"the kernel implements Adam and plain SGD, not {type(optimizer).__name__}"


def try_fused(spec: TrainSpec, members: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
               train_sets: Sequence[torch.Tensor], batch_size: int) -> FusedEngine | str:
    """A fused engine, or a string saying why the kernel cannot train these members."""
    if spec.train_step is not None:
        return "the model file defines a custom train_step"
    loss = spec.loss
    # isinstance lets the type checker see the loss's attributes; the exact type check rules out subclasses.
    if not isinstance(loss, nn.CrossEntropyLoss) or type(loss) is not nn.CrossEntropyLoss \
            or loss.weight is not None or loss.reduction != "mean" \
            or loss.label_smoothing != 0.0 or loss.ignore_index != -100:
        return "the loss is not the default cross-entropy"
    if inputs.device.type != "cpu":
        return f"the kernel runs on the CPU, the data is on {inputs.device}"
    if inputs.dtype != torch.float32 or inputs.ndim != 2:
        return "the inputs are not a float32 [N, features] table"
    if labels.is_floating_point() or labels.ndim != 1:
        return "the labels are not class indices"
    if len({len(s) for s in train_sets}) > 1:
        return "the seeds' training sets differ in size"
    plan = _plan(members[0])
    if isinstance(plan, str):
        return plan
    if plan.dims[0] != inputs.shape[1]:
        return f"the first Linear layer takes {plan.dims[0]} features, the inputs have {inputs.shape[1]}"
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= plan.dims[-1]):
        return f"labels outside 0 .. {plan.dims[-1] - 1}"
    layout = [(k, v.shape, v.dtype, v.requires_grad) for k, v in members[0].named_parameters()]
    if any(dtype != torch.float32 or not grad for _, _, dtype, grad in layout):
        return "a parameter is not a trainable float32 tensor"
    if any(list(m.buffers()) for m in members):
        return "the model has buffers"
    for m in members[1:]:
        if [(k, v.shape, v.dtype, v.requires_grad) for k, v in m.named_parameters()] != layout \
                or (isinstance(_plan(m), str)) or _plan(m) != plan:
            return "the seeds' networks differ"
    optimizer = spec.make_optimizer(list(members[0].parameters()))
    settings = _optimizer_settings(optimizer, len(layout))
    if isinstance(settings, str):
        return settings
    lib = fused_kernel.load()
    if isinstance(lib, str):
        return lib
    engine = FusedEngine(spec, members, lib, plan, settings, optimizer.state_dict()["param_groups"])
    problem = engine.trial(inputs, labels, train_sets, batch_size)
    if problem is not None:
        engine.release()
        return problem
    return engine


class FusedEngine:
    """Trains the members with the compiled kernel; they hold views of its flat parameter buffer."""

    stacked = True  # the members share the engine's buffers (fit gives them their own storage at the end)

    @property
    def vectorized(self) -> bool:
        return len(self.members) > 1

    def __init__(self, spec: TrainSpec, members: list[nn.Module], lib: ctypes.CDLL, plan: _Plan,
                 settings: tuple[int, dict], param_groups: list[dict]) -> None:
        self.spec, self.members, self.lib, self.plan = spec, members, lib, plan
        self.opt_code, self.hyper = settings
        self.param_groups = param_groups
        dims = plan.dims
        # (name, offset, shape) in the kernel's order: weight then bias, layer by layer
        self.layout: list[tuple[str, int, tuple[int, ...]]] = []
        offset = 0
        names = [k for k, _ in members[0].named_parameters()]
        for layer, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            self.layout.append((names[2 * layer], offset, (dout, din)))
            offset += dout * din
            self.layout.append((names[2 * layer + 1], offset, (dout,)))
            offset += dout
        S, T = len(members), offset
        self.P = torch.empty(S, T)
        for i, m in enumerate(members):
            own = dict(m.named_parameters())
            for name, off, _shape in self.layout:
                self.P[i, off:off + own[name].numel()] = own[name].detach().reshape(-1)
        self.G, self.M, self.V = torch.zeros(S, T), torch.zeros(S, T), torch.zeros(S, T)
        self.step = ctypes.c_double(0.0)
        views = {name: (off, shape) for name, off, shape in self.layout}
        for i, member in enumerate(members):
            swap_tensors(member, lambda name, p, i=i: nn.Parameter(self._view(self.P, i, *views[name])), lambda n, b: b)
        # Arguments that stay the same for every call; the tensors must outlive the calls.
        self._dims = torch.tensor(dims, dtype=torch.int64)
        self._acts = torch.tensor(plan.acts or [0], dtype=torch.int32)
        self._act_params = torch.tensor(plan.act_params or [0.0, 0.0], dtype=torch.float32)
        self._quantised = torch.tensor(plan.quantised or [0], dtype=torch.int32)
        self._quant = torch.tensor(plan.quant or [0.0, 0.0, 1.0], dtype=torch.float32)
        self._hyper = torch.zeros(5 if self.opt_code == 0 else 2, dtype=torch.float64)
        self._set_hyper()
        self._prepared_for: tuple | None = None
        self._moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._gradient_layers: list[tuple[str, tuple[int, int] | None]] = []
        self._collect = False
        self._dirty = False  # the moments hold samples (zeroed at the next period)
        # Seeds are independent, so the kernel shares them out among torch's intra-op threads (read, never set).
        self.threads = max(1, min(torch.get_num_threads(), S))
        n_quant = sum(plan.quantised)
        self.reason = (f"fused kernel over {S} seed(s)" + (f", {n_quant} quantised layer(s)" if n_quant else ""))

    def _set_hyper(self) -> None:
        h = self.hyper
        values = [h["lr"], h["beta1"], h["beta2"], h["eps"], h["weight_decay"]] if self.opt_code == 0 \
            else [h["lr"], h["weight_decay"]]
        # In place: the prepared kernel call holds this tensor.
        self._hyper.copy_(torch.tensor(values, dtype=torch.float64))

    @staticmethod
    def _view(buffer: torch.Tensor, i: int, offset: int, shape: tuple) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        return buffer[i, offset:offset + n].view(shape)

    def _prepared(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int) -> kernels.FusedEpoch:
        """The kernel call with everything but the order checked, prepared once per fit (again only if the data or
        the minibatch size change)."""
        key = (inputs, labels, batch_size)
        held = self._prepared_for
        if held is None or held[0] is not inputs or held[1] is not labels or held[2] != batch_size:
            x = inputs if inputs.is_contiguous() else inputs.contiguous()
            y = labels if labels.dtype == torch.int64 and labels.is_contiguous() \
                else labels.to(torch.int64).contiguous()
            call = kernels.FusedEpoch(
                self.lib, dims=self._dims, acts=self._acts, act_params=self._act_params, quantised=self._quantised,
                quant=self._quant, params=self.P, grads=self.G, exp_avg=self.M, exp_avg_sq=self.V, inputs=x,
                labels=y, batch=batch_size, optimizer=self.opt_code, hyper=self._hyper, threads=self.threads)
            self._prepared_for = (*key, call)
            return call
        return held[3]

    def _call(self, order: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int,
              update: bool, stats: bool = False, draw: tuple | None = None) -> None:
        call = self._prepared(inputs, labels, batch_size)
        if order.dtype != torch.int64 or not order.is_contiguous():
            order = order.to(torch.int64).contiguous()
        status = call(order, self.step, update, self._moments if stats else None, draw)
        if status == -1:
            raise ValueError(f"a label is outside 0 .. {self.plan.dims[-1] - 1}")
        if status == -4:
            raise ValueError(f"a training row is outside 0 .. {len(inputs) - 1} (the rows of the inputs)")
        if status != 0:
            raise RuntimeError(f"the fused training kernel failed (status {status})")

    def train_epoch(self, orders: EpochOrders | torch.Tensor | list[torch.Tensor], inputs: torch.Tensor,
                    labels: torch.Tensor, batch_size: int, rngs: list[dict]) -> list[dict]:
        self._dirty = self._dirty or self._collect
        drawn = orders.for_kernel(self.lib) if isinstance(orders, EpochOrders) else None
        if drawn is not None:  # each seed's order drawn by the thread that trains it, in the same call
            self._call(drawn[0], inputs, labels, batch_size, update=True, stats=self._collect, draw=drawn[1])
        else:
            orders = as_orders(orders)
            self._call(orders if isinstance(orders, torch.Tensor) else torch.stack(orders), inputs, labels,
                       batch_size, update=True, stats=self._collect)
        return rngs  # no randomness inside these models' forward

    # -- gradient statistics ------------------------------------------------------------------------------------

    def track_gradients(self, layers: Sequence[str]) -> None:
        """Record gradient statistics for the named layers (names of the members' modules, as ``named_modules``
        gives them), as :class:`infoplane.tracking.gradients.GradientStats` defines them: a Linear layer's weight
        gradient; a layer without weights is reported frozen. Collection starts with :meth:`collect_gradients`."""
        modules = dict(self.members[0].named_modules())
        linear = {name: i for i, name in enumerate(n for n, m in self.members[0].named_children()
                                                    if type(m) is nn.Linear)}
        chosen: list[tuple[str, int | None]] = []
        for name in layers:
            if not isinstance(name, str) or name not in modules:
                raise ValueError(f"gradients: the network has no layer named {name!r}; its layers are "
                                 f"{', '.join(repr(n) for n in modules if n)}")
            chosen.append((name, linear.get(name)))
        if not chosen or all(index is None for _, index in chosen):
            raise ValueError("gradient statistics were requested, but no tracked layer has a trainable weight "
                             f"(layers: {', '.join(layers)}); name at least one Linear layer, or leave gradients off")
        dims = self.plan.dims
        offsets = [0]
        for din, dout in zip(dims[:-1], dims[1:]):
            offsets.append(offsets[-1] + din * dout)
        self._gradient_layers = [(name, None if i is None else (offsets[i], offsets[i + 1])) for name, i in chosen]
        S, W = len(self.members), offsets[-1]
        self._moments = (torch.zeros(S, W, dtype=torch.float64), torch.zeros(S, W, dtype=torch.float64),
                         torch.zeros(S, dtype=torch.float64))

    def collect_gradients(self, on: bool) -> None:
        """Start a new period of gradient statistics; the epochs trained until the next call add to it if ``on``."""
        if self._moments is None:
            raise RuntimeError("call track_gradients first")
        if self._dirty:
            for t in self._moments:
                t.zero_()
            self._dirty = False
        self._collect = on

    def gradient_rows(self) -> list[list[GradientRow]]:
        """Per seed, one :class:`~infoplane.tracking.gradients.GradientRow` per tracked layer for the minibatches
        of the current period (``batches`` = 0 and no values before any minibatch)."""
        if self._moments is None:
            raise RuntimeError("call track_gradients first")
        mean, m2, count = (t.numpy() for t in self._moments)
        columns = []
        for name, span in self._gradient_layers:
            if span is None:
                columns.append([GradientRow(name, None, None, None, 0, True)] * len(mean))
                continue
            lo, hi = span
            mean_sq = (mean[:, lo:hi] * mean[:, lo:hi]).sum(axis=1)
            var_sum = m2[:, lo:hi].sum(axis=1)
            rows = []
            for s in range(len(mean)):
                batches = int(count[s])
                if batches == 0:
                    rows.append(GradientRow(name, None, None, None, 0, False))
                    continue
                mean_norm, std_norm = math.sqrt(float(mean_sq[s])), math.sqrt(float(var_sum[s]) / batches)
                snr = mean_norm / std_norm if std_norm > 0 else math.inf
                rows.append(GradientRow(name, mean_norm, std_norm, snr, batches, False))
            columns.append(rows)
        return [list(seed_rows) for seed_rows in zip(*columns)]

    def trial(self, inputs: torch.Tensor, labels: torch.Tensor, train_sets: Sequence[torch.Tensor],
              batch_size: int) -> str | None:
        """Compare the kernel's gradient on a first minibatch with autograd's; a string when they disagree."""
        n = min(batch_size, len(train_sets[0]))
        if n == 0:
            return None
        order = torch.stack([torch.as_tensor(s[:n]) for s in train_sets])
        self._call(order, inputs, labels, batch_size, update=False)
        worst = 0.0
        for i, member in enumerate(self.members):
            rows = order[i].to(inputs.device)
            params = list(member.parameters())
            grads = torch.autograd.grad(self.spec.loss(member(inputs[rows]), labels[rows]), params)
            for (_name, off, shape), g in zip(self.layout, grads):
                mine = self._view(self.G, i, off, shape)
                scale = float(g.abs().max()) + 1e-12
                worst = max(worst, float((mine - g).abs().max()) / scale)
        self.G.zero_()
        if not worst <= 1e-3:
            return f"the kernel's trial gradient differs from autograd's (relative error {worst:.2g})"
        return None

    def release(self) -> None:
        """Give the members their own parameters back (after a failed trial)."""
        for member in self.members:
            swap_tensors(member, lambda name, p: nn.Parameter(p.detach().clone()), lambda n, b: b)

    def optimizer_states(self) -> list[dict]:
        out = []
        step = self.step.value
        for i in range(len(self.members)):
            state = {}
            if self.opt_code == 0 and step > 0:
                for k, (_name, off, shape) in enumerate(self.layout):
                    state[k] = {"step": torch.tensor(step, dtype=torch.float32),
                                "exp_avg": self._view(self.M, i, off, shape).clone(),
                                "exp_avg_sq": self._view(self.V, i, off, shape).clone()}
            out.append({"state": state, "param_groups": copy.deepcopy(self.param_groups)})
        return out

    def load_optimizer_states(self, states: list[dict]) -> None:
        steps = set()
        for i, saved in enumerate(states):
            entries = saved["state"]
            if self.opt_code == 1:
                continue
            if not entries:
                steps.add(0.0)
                self.M[i].zero_()
                self.V[i].zero_()
                continue
            for k, (_name, off, shape) in enumerate(self.layout):
                entry = entries[k]
                steps.add(float(entry["step"]))
                self._view(self.M, i, off, shape).copy_(entry["exp_avg"])
                self._view(self.V, i, off, shape).copy_(entry["exp_avg_sq"])
        if len(steps) > 1:
            raise ValueError("the seeds' optimiser states differ in 'step', so they cannot be trained together; "
                             "resume with vectorize=False")
        self.step.value = steps.pop() if steps else 0.0
        # Like torch's load_state_dict, the saved hyperparameters (learning rate, betas, ...) take over.
        group = states[0]["param_groups"][0]
        for key in self.hyper:
            source = {"beta1": ("betas", 0), "beta2": ("betas", 1)}.get(key)
            self.hyper[key] = float(group[source[0]][source[1]] if source else group[key])
        self.param_groups = copy.deepcopy(states[0]["param_groups"])
        self._set_hyper()

"""Sharpness of a trained network's minimum: Hessian spectrum and worst-case or random loss increases.

Flatness is read beside the information plane (Keskar et al. 2017; Foret et al. 2021, SAM; Kwon et al. 2021,
ASAM). Each function here is pure: called as ``f(model, loss_fn, x, y, **options)``, it evaluates the loss

    L(w) = loss_fn(model(x; w), y)

of the trainable parameters ``w`` on the data given (the caller picks a fixed subset) and returns a small
dataclass whose ``.value`` is a float. With ``batch_size``, ``x`` and ``y`` are cut into chunks along their first
dimension and L is the size-weighted mean of the chunk losses, which is exact for a mean-reduced loss such as
``nn.CrossEntropyLoss()``.

- :func:`hessian_top_eigenvalue`: the largest eigenvalue of the Hessian of L, by power iteration.
- :func:`hessian_trace`: its trace, by Hutchinson's estimator.
- :func:`sam_sharpness`: ``max_{||e|| <= rho} L(w + e) - L(w)``.
- :func:`adaptive_sharpness`: the same with ``||e / (|w| + eta)|| <= rho`` (ASAM), invariant to rescaling layers.
- :func:`random_sharpness`: ``E L(w + e) - L(w)`` for ``e`` uniform on the sphere ``||e|| = rho``.

What every function guarantees: the model is evaluated in eval mode (dropout off, batch norm on its running
statistics, so the measure has no noise of its own) and each module's ``training`` flag is restored afterwards;
parameters and buffers are never written (perturbed weights are passed through
:func:`torch.func.functional_call`) and are checked and restored bit for bit afterwards, even on error; ``.grad``
is left as it was (gradients come from :func:`torch.autograd.grad`, never ``backward``); torch's global RNG state is
left as it was (random vectors come from a local generator seeded by ``seed``, and the whole call runs under
:func:`torch.random.fork_rng`), so results are deterministic for a given seed. The Hessian is never formed:
Hessian-vector products cost one double backward, about one extra backward pass of memory.
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call

from infoplane._validate import check_float, check_int

__all__ = ["hessian_top_eigenvalue", "hessian_trace", "sam_sharpness", "adaptive_sharpness", "random_sharpness",
           "TopEigenvalue", "HessianTrace", "AscentSharpness", "RandomSharpness"]

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass
class TopEigenvalue:
    """The largest eigenvalue of the loss's Hessian with respect to the trainable parameters.

    Attributes
    ----------
    value : float
        The eigenvalue, in units of the loss per squared parameter unit.
    iterations : int
        Hessian-vector products used (both power iterations when the shift was needed).
    converged : bool
        Whether the eigenvalue estimate changed by less than ``tol`` (relative) within ``max_iter`` iterations.
    loss : float
        L(w), the loss at the model's parameters.
    """

    value: float
    iterations: int
    converged: bool
    loss: float


@dataclass
class HessianTrace:
    """Hutchinson's estimate of the trace of the loss's Hessian.

    Attributes
    ----------
    value : float
        The mean of ``z^T H z`` over the Rademacher vectors ``z``.
    stderr : float
        Its standard error (sample standard deviation over ``sqrt(samples)``).
    samples : int
        Number of vectors drawn.
    loss : float
        L(w), the loss at the model's parameters.
    """

    value: float
    stderr: float
    samples: int
    loss: float


@dataclass
class AscentSharpness:
    """Worst-case loss increase in a ball of perturbations (SAM's, or ASAM's rescaled one).

    Attributes
    ----------
    value : float
        ``multi_step``: the largest increase found.
    one_step : float
        The increase at the one-step ascent point (``e = rho g / ||g||`` for SAM; ``rho T^2 g / ||T g||`` for ASAM).
        0 where the gradient is exactly zero.
    multi_step : float
        The increase after projected gradient ascent started from the one-step point; ``>= one_step``.
    rho : float
        The radius of the ball.
    evaluations : int
        Loss-and-gradient evaluations spent by the ascent, the first one at ``w`` included.
    loss : float
        L(w), the loss at the model's parameters.
    """

    value: float
    one_step: float
    multi_step: float
    rho: float
    evaluations: int
    loss: float


@dataclass
class RandomSharpness:
    """Average loss increase under random perturbations of a fixed norm.

    Attributes
    ----------
    value : float
        The mean of ``L(w + e) - L(w)`` over the perturbations.
    stderr : float
        Its standard error (sample standard deviation over ``sqrt(samples)``).
    samples : int
        Number of perturbations drawn.
    rho : float
        Their norm.
    loss : float
        L(w), the loss at the model's parameters.
    """

    value: float
    stderr: float
    samples: int
    rho: float
    loss: float


# ---------------------------------------------------------------------------------------------------- validation

def _chunks(x: Any, y: Any, batch_size: Optional[int]) -> list[tuple[Any, Any, float]]:
    if batch_size is None:
        return [(x, y, 1.0)]
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    try:
        n = len(x)
    except TypeError:
        raise ValueError(f"batch_size needs x with a first dimension to cut; got {type(x).__name__}") from None
    if y is not None and len(y) != n:
        raise ValueError(f"x and y must have the same length along their first dimension to be cut into batches; "
                         f"got {n} and {len(y)}")
    if n == 0:
        raise ValueError("x is empty: pass at least one sample")
    return [(x[i:i + batch_size], None if y is None else y[i:i + batch_size], min(batch_size, n - i) / n)
            for i in range(0, n, batch_size)]


# ---------------------------------------------------------------------------------------------------- vector ops
# A "vector" is a list of tensors shaped like the trainable parameters.

def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    # Accumulated in float64 where the device has it (MPS does not), so that sums over millions of parameters of
    # a float32 network stay accurate.
    return float(sum((u.to(_wide(u)) * v.to(_wide(u))).sum().cpu() for u, v in zip(a, b)))


def _wide(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "mps" else torch.float64


def _norm(a: Sequence[torch.Tensor]) -> float:
    return math.sqrt(_dot(a, a))


def _axpy(alpha: float, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [alpha * u + v for u, v in zip(a, b)]


def _scale(alpha: float, a: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [alpha * u for u in a]


def _mul(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [u * v for u, v in zip(a, b)]


def _draw(kind: str, like: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    # Drawn on the CPU in float64, then cast: the same seed gives the same vector on every device and dtype.
    out = []
    for p in like:
        if kind == "gaussian":
            z = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        else:
            z = torch.randint(0, 2, p.shape, generator=generator, dtype=torch.int64).to(torch.float64) * 2 - 1
        out.append(z.to(p.dtype).to(p.device))
    return out


# ---------------------------------------------------------------------------------------------------- the loss

class _Loss:
    """L and its derivatives at given parameter values, through functional_call (the model is never written)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: Any, y: Any, batch_size: Optional[int]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(outputs, y); got {type(loss_fn).__name__}")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters (none with requires_grad=True): sharpness is "
                             "measured with respect to them; set requires_grad_(True) on the parameters to measure")
        self.model, self.loss_fn = model, loss_fn
        self.names = [n for n, _ in named]
        self.params = [p.detach() for _, p in named]
        self.chunks = _chunks(x, y, batch_size)
        self._checked = False

    def _check_twice_differentiable(self, ws: Sequence[torch.Tensor], gs: Sequence[Optional[torch.Tensor]]) -> None:
        # A backward that is not differentiable (@once_differentiable) leaves an Error node in the gradient's graph
        # that autograd skips, rather than raises on, when it is cut off from the parameters: the Hessian-vector
        # product would silently lose that curvature. The graph's shape is the same on every call: checked once.
        nodes = set()
        for g in gs:
            if g is not None and g.grad_fn is not None:
                nodes |= _graph(g.grad_fn)
        if any(n.name() == "torch::autograd::Error" for n in nodes):
            err = RuntimeError("the gradient's graph holds a backward marked @once_differentiable (or another "
                               "operation without a double backward), which cannot be differentiated again")
            raise RuntimeError(self._diagnose(ws, err, "Hessian-vector products failed"))
        self._checked = True

    def _forward(self, ws: Sequence[torch.Tensor], x: Any, y: Any) -> torch.Tensor:
        out = functional_call(self.model, dict(zip(self.names, ws)), (x,))
        loss = self.loss_fn(out, y)
        if not isinstance(loss, torch.Tensor):
            raise ValueError(f"loss_fn must return a scalar torch.Tensor; it returned {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar (the loss averaged over the batch); it returned shape "
                             f"{list(loss.shape)}. Use a mean reduction, e.g. nn.CrossEntropyLoss(reduction='mean')")
        return loss.reshape(())

    def value(self, ws: Sequence[torch.Tensor]) -> float:
        with torch.no_grad():
            return float(sum(weight * float(self._forward(ws, x, y)) for x, y, weight in self.chunks))

    def _leaves(self, ws: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [w.detach().requires_grad_(True) for w in ws]

    def _requires_grad(self, loss: torch.Tensor) -> None:
        if not loss.requires_grad:
            raise ValueError("the loss does not depend on the model's trainable parameters (it has no gradient): "
                             "check that loss_fn uses the model's outputs and that the forward does not detach them "
                             "or run under torch.no_grad()")

    def value_and_grad(self, ws: Sequence[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        total, grad = 0.0, [torch.zeros_like(w) for w in ws]
        for x, y, weight in self.chunks:
            leaves = self._leaves(ws)
            with torch.enable_grad():
                loss = self._forward(leaves, x, y)
                self._requires_grad(loss)
                try:
                    gs = torch.autograd.grad(loss, leaves, allow_unused=True)
                except RuntimeError as err:
                    raise RuntimeError(self._diagnose(ws, err, "the gradient of the loss failed", twice=False)) from err
            total += weight * float(loss.detach())
            grad = [acc if g is None else acc + weight * g for acc, g in zip(grad, gs)]
        return total, grad

    def hvp(self, ws: Sequence[torch.Tensor], v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The Hessian of L at ``ws`` times ``v``, by double backward (the Hessian itself is never formed)."""
        out = [torch.zeros_like(w) for w in ws]
        for x, y, weight in self.chunks:
            leaves = self._leaves(ws)
            with torch.enable_grad():
                loss = self._forward(leaves, x, y)
                self._requires_grad(loss)
                try:
                    gs = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                except RuntimeError as err:
                    raise RuntimeError(self._diagnose(ws, err, "Hessian-vector products failed")) from err
                if not self._checked:
                    self._check_twice_differentiable(ws, gs)
                try:
                    # A gradient with no graph is constant in w (e.g. a parameter entering linearly): its
                    # Hessian block is zero, and autograd refuses to differentiate it, so it is left out.
                    terms = [(g * u).sum() for g, u in zip(gs, v) if g is not None and g.requires_grad]
                    if not terms:
                        continue
                    hs = torch.autograd.grad(torch.stack(terms).sum(), leaves, allow_unused=True)
                except RuntimeError as err:
                    raise RuntimeError(self._diagnose(ws, err, "Hessian-vector products failed")) from err
            out = [acc if h is None else acc + weight * h for acc, h in zip(out, hs)]
        return out

    def _diagnose(self, ws: Sequence[torch.Tensor], err: RuntimeError, what: str, twice: bool = True) -> str:
        where = _failing_layer(self, ws, str(err))
        place = f" at layer {where} (or an operation on its output)" if where else " (the layer could not be located)"
        order = "twice " if twice else ""
        return (f"{what}{place}: autograd cannot differentiate the loss {order}with respect to the model's parameters "
                f"there. "
                f"Common causes: an in-place operation on a tensor autograd saved for the backward pass (use the "
                f"out-of-place form, e.g. x = x * 2 rather than x.mul_(2), or nn.ReLU(inplace=False)), or an "
                f"operation or custom autograd.Function without a double backward (@once_differentiable, some "
                f"fused kernels). torch said: {err}")


def _graph(root: Any, limit: int = 100_000) -> set:
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < limit:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
    return seen


def _once_differentiable(node: Any) -> bool:
    cls = getattr(node, "_forward_cls", None)
    return cls is not None and hasattr(getattr(cls, "backward", None), "__wrapped__")


def _failing_layer(loss: _Loss, ws: Sequence[torch.Tensor], message: str) -> str:
    """Best effort: the first module (in forward order) whose output depends on the autograd node that failed."""
    records: list[tuple[str, nn.Module, Any]] = []

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            first = output[0] if isinstance(output, (tuple, list)) and output else output
            if isinstance(first, torch.Tensor) and first.grad_fn is not None:
                records.append((name, module, first.grad_fn))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in loss.model.named_modules() if n]
    x, y, _ = loss.chunks[0]
    try:
        with torch.enable_grad():
            loss._forward(loss._leaves(ws), x, y)
    except Exception:  # the diagnosis must never hide the original error
        return ""
    finally:
        for h in handles:
            h.remove()
    # torch names the node whose saved tensor was modified in place as "output 0 of TanhBackward0" (older) or
    # "output 0 of Tanh" (newer); either way, compare without the Backward suffix.
    named = {re.sub(r"Backward\d*$", "", n) for n in re.findall(r"output \d+ of (\w+)", message)}
    named |= {re.sub(r"Backward\d*$", "", n) for n in re.findall(r"\b(\w+Backward\d*)\b", message)}
    once = "once_differentiable" in message
    for name, module, node in records:
        for n in _graph(node):
            if re.sub(r"Backward\d*$", "", n.name()) in named or (once and _once_differentiable(n)):
                return f"'{name}' ({type(module).__name__})"
    return ""


# ---------------------------------------------------------------------------------------------------- state

def _cuda_devices(tensors: Sequence[torch.Tensor]) -> list[int]:
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Evaluate in eval mode; afterwards restore modes, parameters, buffers, grads and the global RNG exactly."""
    params, buffers = list(model.parameters()), list(model.buffers())
    saved = [t.detach().clone() for t in params + buffers]
    grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=_cuda_devices(params + buffers)):
            model.eval()
            yield
    finally:
        with torch.no_grad():
            for t, s in zip(params + buffers, saved):
                # Copy only what changed: an in-place copy bumps the version counter, which would invalidate a
                # graph the caller still holds through these tensors.
                if not torch.equal(t, s):
                    t.copy_(s)
            for p, grad, value in grads:
                if p.grad is not grad:
                    p.grad = grad
                if grad is not None and not torch.equal(grad, value):
                    grad.copy_(value)
        for m, mode in modes:
            m.training = mode


def _base_loss(loss: _Loss) -> float:
    value = loss.value(loss.params)
    if not math.isfinite(value):
        raise ValueError(f"the loss at the model's parameters is {value}: sharpness needs a finite loss")
    return value


# ---------------------------------------------------------------------------------------------------- measures

def hessian_top_eigenvalue(model: nn.Module, loss_fn: LossFn, x: Any, y: Any, *, tol: float = 1e-4,
                           max_iter: int = 100, seed: int = 0, batch_size: Optional[int] = None) -> TopEigenvalue:
    """The largest eigenvalue of the Hessian of the loss with respect to the trainable parameters.

    Power iteration on Hessian-vector products from a seeded Gaussian start. Power iteration finds the eigenvalue
    of largest magnitude; when that one is negative (a saddle), a second power iteration on ``H - lambda I``
    finds the largest. Not invariant to reparameterisation: scaling one layer by ``a`` and the next by ``1/a``
    (same function) changes it (Dinh et al. 2017).

    Parameters
    ----------
    model : torch.nn.Module
        The network; its trainable parameters are the variables.
    loss_fn : callable
        ``loss_fn(model(x), y)`` returning a scalar tensor (the batch mean).
    x, y : torch.Tensor
        The data the loss is evaluated on, in full.
    tol : float, default 1e-4
        Stop when the eigenvalue estimate changes by less than ``tol`` times its magnitude.
    max_iter : int, default 100
        Cap on iterations per power iteration.
    seed : int, default 0
        Seed of the starting vector.
    batch_size : int, optional
        Evaluate in chunks of this many samples (same result, less memory).

    Returns
    -------
    TopEigenvalue
        ``value`` (loss units per squared parameter unit), ``iterations``, ``converged``, ``loss``.
    """
    tol = check_float(tol, "tol", positive=True, what="> 0")
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    seed = check_int(seed, "seed")
    loss = _Loss(model, loss_fn, x, y, batch_size)
    with _untouched(model):
        base = _base_loss(loss)
        w = loss.params
        v = _draw("gaussian", w, torch.Generator().manual_seed(seed))
        lam, its, ok = _power(lambda u: loss.hvp(w, u), v, 0.0, tol, max_iter)
        if lam < 0:
            # Every eigenvalue of H - lam I is >= 0 (up to the estimate's error), the largest is lambda_max - lam.
            v = _draw("gaussian", w, torch.Generator().manual_seed(seed + 1))
            mu, its2, ok2 = _power(lambda u: loss.hvp(w, u), v, lam, tol, max_iter)
            lam, its, ok = lam + mu, its + its2, ok and ok2
    return TopEigenvalue(value=lam, iterations=its, converged=ok, loss=base)


def _power(hvp: Callable, v: list[torch.Tensor], shift: float, tol: float,
           max_iter: int) -> tuple[float, int, bool]:
    """Power iteration on ``H - shift I``: its dominant eigenvalue (Rayleigh quotient), iterations, converged."""
    v = _scale(1.0 / _norm(v), v)
    previous = None
    for it in range(1, max_iter + 1):
        hv = hvp(v)
        if shift:
            hv = _axpy(-shift, v, hv)
        lam = _dot(v, hv)
        size = _norm(hv)
        if size == 0.0:  # v is in the null space; with a random start, the (shifted) Hessian is zero
            return 0.0, it, True
        if previous is not None and abs(lam - previous) <= tol * abs(lam):
            return lam, it, True
        previous = lam
        v = _scale(1.0 / size, hv)
    return lam, max_iter, False


def hessian_trace(model: nn.Module, loss_fn: LossFn, x: Any, y: Any, *, samples: int = 50, seed: int = 0,
                  batch_size: Optional[int] = None) -> HessianTrace:
    """Hutchinson's estimate of the trace of the loss's Hessian: the mean of ``z^T H z`` over Rademacher ``z``.

    Unbiased; its variance is ``2 * sum_{i != j} H_ij^2`` per sample, so a diagonal Hessian gives the exact trace
    from every sample. Not invariant to reparameterisation (Dinh et al. 2017).

    Parameters
    ----------
    model, loss_fn, x, y, batch_size
        As for :func:`hessian_top_eigenvalue`.
    samples : int, default 50
        Number of Rademacher vectors (at least 2, for the standard error).
    seed : int, default 0
        Seed of the vectors.

    Returns
    -------
    HessianTrace
        ``value`` (loss units per squared parameter unit), ``stderr``, ``samples``, ``loss``.
    """
    samples = check_int(samples, "samples", minimum=2)
    seed = check_int(seed, "seed")
    loss = _Loss(model, loss_fn, x, y, batch_size)
    base, mean, stderr = _sampled(model, loss, "rademacher", samples, seed,
                                  lambda z, base: _dot(z, loss.hvp(loss.params, z)))
    return HessianTrace(value=mean, stderr=stderr, samples=samples, loss=base)


def _sampled(model: nn.Module, loss: _Loss, kind: str, samples: int, seed: int,
             each: Callable[[list[torch.Tensor], float], float]) -> tuple[float, float, float]:
    """The loss at ``w``, then ``each(z, base)`` for ``samples`` random directions ``z`` of ``kind`` from a
    generator seeded with ``seed``: (base loss, mean, standard error of the mean)."""
    with _untouched(model):
        base = _base_loss(loss)
        g = torch.Generator().manual_seed(seed)
        draws = [each(_draw(kind, loss.params, g), base) for _ in range(samples)]
    mean, stderr = _mean_stderr(draws)
    return base, mean, stderr


def _mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def sam_sharpness(model: nn.Module, loss_fn: LossFn, x: Any, y: Any, *, rho: float, steps: int = 20,
                  seed: int = 0, batch_size: Optional[int] = None) -> AscentSharpness:
    """SAM's sharpness: the largest loss increase ``max_{||e|| <= rho} L(w + e) - L(w)`` (Foret et al. 2021).

    Two estimates, both lower bounds of the maximum (each is the loss increase at a feasible ``e``): SAM's
    one-step ascent ``e = rho g / ||g||`` (``g`` the gradient at ``w``), and a projected gradient ascent from that
    point: ``steps`` trials of ``e <- proj(e + alpha g(w + e) / ||g(w + e)||)``, ``alpha`` starting at ``rho`` and
    halved whenever a trial does not increase the loss. Where the gradient at ``w`` is exactly zero the ascent
    starts from a seeded random point of the sphere. ``||e||`` is the Euclidean norm over all trainable
    parameters together. Not invariant to reparameterisation (Dinh et al. 2017); see :func:`adaptive_sharpness`.

    Parameters
    ----------
    model, loss_fn, x, y, batch_size
        As for :func:`hessian_top_eigenvalue`.
    rho : float
        Radius of the ball, in parameter units; > 0.
    steps : int, default 20
        Trials of the projected ascent (each one forward and one backward pass); >= 1.
    seed : int, default 0
        Seed of the random start, used only where the gradient at ``w`` is zero.

    Returns
    -------
    AscentSharpness
        ``value`` (= ``multi_step``), ``one_step``, ``multi_step`` (loss units), ``rho``, ``evaluations``, ``loss``.
    """
    rho = check_float(rho, "rho", positive=True, what="> 0")
    steps = check_int(steps, "steps", minimum=1)
    seed = check_int(seed, "seed")
    loss = _Loss(model, loss_fn, x, y, batch_size)
    with _untouched(model):
        _base_loss(loss)
        return _ascent(loss, None, rho, steps, seed)


def adaptive_sharpness(model: nn.Module, loss_fn: LossFn, x: Any, y: Any, *, rho: float, steps: int = 20,
                       eta: float = 0.01, seed: int = 0, batch_size: Optional[int] = None) -> AscentSharpness:
    """ASAM's adaptive sharpness: ``max_{||T^-1 e|| <= rho} L(w + e) - L(w)``, ``T = diag(|w| + eta)`` (Kwon et al.).

    Each parameter's perturbation is measured relative to its own size, so with ``eta = 0`` the value is invariant
    to any rescaling of parameters that leaves the function unchanged, such as Dinh et al.'s (one ReLU layer's
    weights and bias times ``a > 0``, the next layer's weights times ``1/a``); ``eta > 0`` keeps zero weights
    perturbable at the cost of exact invariance. ``T`` applies to every trainable parameter, biases included
    (a rescaled bias needs a rescaled perturbation for the invariance). The search runs in ``u = T^-1 e``:
    one step ``u = rho T g / ||T g||`` (``e = rho T^2 g / ||T g||``, ASAM's ascent step), then projected ascent
    on ``||u|| <= rho`` as in :func:`sam_sharpness`.

    Parameters
    ----------
    model, loss_fn, x, y, batch_size
        As for :func:`hessian_top_eigenvalue`.
    rho : float
        Radius of the ball in the rescaled coordinates ``u`` (dimensionless: a relative perturbation); > 0.
    steps : int, default 20
        Trials of the projected ascent; >= 1.
    eta : float, default 0.01
        Added to ``|w|`` in ``T``, in parameter units; >= 0.
    seed : int, default 0
        Seed of the random start, used only where the rescaled gradient at ``w`` is zero.

    Returns
    -------
    AscentSharpness
        ``value`` (= ``multi_step``), ``one_step``, ``multi_step`` (loss units), ``rho``, ``evaluations``, ``loss``.
    """
    rho = check_float(rho, "rho", positive=True, what="> 0")
    steps = check_int(steps, "steps", minimum=1)
    eta = check_float(eta, "eta", minimum=0.0, what=">= 0")
    seed = check_int(seed, "seed")
    loss = _Loss(model, loss_fn, x, y, batch_size)
    with _untouched(model):
        _base_loss(loss)
        return _ascent(loss, [w.abs() + eta for w in loss.params], rho, steps, seed)


def _ascent(loss: _Loss, scale: Optional[list[torch.Tensor]], rho: float, steps: int,
            seed: int) -> AscentSharpness:
    """Maximise ``L(w + T u) - L(w)`` over ``||u|| <= rho`` (``T`` = ``scale``, identity when None)."""
    w = loss.params

    def at(u: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        e = u if scale is None else _mul(scale, u)
        value, g = loss.value_and_grad([a + b for a, b in zip(w, e)])
        return value, (g if scale is None else _mul(scale, g))  # the gradient with respect to u

    def project(u: list[torch.Tensor]) -> list[torch.Tensor]:
        size = _norm(u)
        return u if size <= rho else _scale(rho / size, u)

    base, g = at([torch.zeros_like(p) for p in w])
    evaluations = 1
    size = _norm(g)
    if size > 0:
        u = _scale(rho / size, g)
        current, g = at(u)
        evaluations += 1
        one_step = current - base
    else:
        z = _draw("gaussian", w, torch.Generator().manual_seed(seed))
        u = _scale(rho / _norm(z), z)
        current, g = at(u)
        evaluations += 1
        one_step = 0.0
    alpha = rho
    for _ in range(steps):
        size = _norm(g)
        if size == 0.0 or alpha < 1e-12 * rho:
            break
        trial = project(_axpy(alpha / size, g, u))
        value, trial_g = at(trial)
        evaluations += 1
        if value > current:
            u, current, g = trial, value, trial_g
        else:
            alpha /= 2
    return AscentSharpness(value=max(current - base, one_step), one_step=one_step,
                           multi_step=max(current - base, one_step), rho=rho, evaluations=evaluations, loss=base)


def random_sharpness(model: nn.Module, loss_fn: LossFn, x: Any, y: Any, *, rho: float, samples: int = 100,
                     seed: int = 0, batch_size: Optional[int] = None) -> RandomSharpness:
    """The average loss increase ``E L(w + e) - L(w)`` over perturbations ``e`` uniform on the sphere ``||e|| = rho``.

    The directions are Gaussian vectors over all trainable parameters together, normalised to norm ``rho``. For a
    quadratic loss with Hessian ``H`` in ``d`` parameters the expectation is ``rho^2 tr(H) / (2 d)``. Not invariant
    to reparameterisation (Dinh et al. 2017).

    Parameters
    ----------
    model, loss_fn, x, y, batch_size
        As for :func:`hessian_top_eigenvalue`.
    rho : float
        Norm of the perturbations, in parameter units; > 0.
    samples : int, default 100
        Number of perturbations (at least 2, for the standard error); each costs one forward pass.
    seed : int, default 0
        Seed of the directions.

    Returns
    -------
    RandomSharpness
        ``value`` and ``stderr`` (loss units), ``samples``, ``rho``, ``loss``.
    """
    rho = check_float(rho, "rho", positive=True, what="> 0")
    samples = check_int(samples, "samples", minimum=2)
    seed = check_int(seed, "seed")
    loss = _Loss(model, loss_fn, x, y, batch_size)
    base, mean, stderr = _sampled(model, loss, "gaussian", samples, seed,
                                  lambda z, base: loss.value(_axpy(rho / _norm(z), z, loss.params)) - base)
    return RandomSharpness(value=mean, stderr=stderr, samples=samples, rho=rho, loss=base)


# ---------------------------------------------------------------------------------------------------- ensembles

#: The measures :func:`ensemble` computes for all seeds at once.
BATCHED = ("hessian_top_eigenvalue", "hessian_trace", "random_sharpness", "sam_sharpness", "adaptive_sharpness")


class _Stacked:
    """Networks of one architecture with their parameters stacked along a new first axis, and the loss of each on
    its own data through ``torch.func.vmap``: a Hessian-vector product of every seed in one call."""

    def __init__(self, models: Sequence[nn.Module], loss_fn: LossFn, xs: Sequence[torch.Tensor],
                 ys: Sequence[torch.Tensor]) -> None:
        from torch.func import grad, grad_and_value, jvp, vmap

        first = models[0]
        self.names = [n for n, p in first.named_parameters() if p.requires_grad]
        self.buffer_names = [n for n, _ in first.named_buffers()]
        self.per_model = [[p.detach() for n, p in m.named_parameters() if p.requires_grad] for m in models]
        self.params = [torch.stack(ps) for ps in zip(*self.per_model)]
        buffers = [[b.detach() for b in m.buffers()] for m in models]
        self.buffers = [torch.stack(bs) for bs in zip(*buffers)] if self.buffer_names else []
        self.x, self.y = torch.stack(list(xs)), torch.stack(list(ys))
        self.model, self.loss_fn = first, loss_fn

        def single(ws, bs, x, y):
            state = {**dict(zip(self.names, ws)), **dict(zip(self.buffer_names, bs))}
            loss = loss_fn(functional_call(self.model, state, (x,)), y)
            return loss.reshape(())

        def hvp(ws, bs, x, y, vs):
            return jvp(lambda w: grad(single)(w, bs, x, y), (ws,), (vs,))[1]

        self._loss = vmap(single, randomness="error")
        self._hvp = vmap(hvp, randomness="error")
        self._value_and_grad = vmap(grad_and_value(single), randomness="error")

    def loss(self, ws: Sequence[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self._loss(list(ws), self.buffers, self.x, self.y)

    def hvp(self, vs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(self._hvp(self.params, self.buffers, self.x, self.y, list(vs)))

    def value_and_grad(self, ws: Sequence[torch.Tensor]) -> tuple[list[float], list[torch.Tensor]]:
        gs, values = self._value_and_grad(list(ws), self.buffers, self.x, self.y)
        return [float(v) for v in values], [g.detach() for g in gs]


def _why_not_stacked(models: Sequence[nn.Module], xs: Sequence[Any], ys: Sequence[Any]) -> str:
    layout = [(n, p.shape, p.dtype, p.requires_grad) for n, p in models[0].named_parameters()]
    buffers = [(n, b.shape, b.dtype) for n, b in models[0].named_buffers()]
    for m in models[1:]:
        if [(n, p.shape, p.dtype, p.requires_grad) for n, p in m.named_parameters()] != layout or \
                [(n, b.shape, b.dtype) for n, b in m.named_buffers()] != buffers:
            return "the networks differ in their parameters or buffers"
    if not all(isinstance(t, torch.Tensor) for t in (*xs, *ys)):
        return "the data are not tensors"
    if len({tuple(x.shape) for x in xs}) > 1 or len({tuple(y.shape) for y in ys}) > 1:
        return "the seeds' data differ in shape"
    if len({p.device for m in models for p in m.parameters()} | {x.device for x in xs}) > 1:
        return "the networks or data sit on several devices"
    return ""


def _dots(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[float]:
    """Per seed (first axis), the dot product of two stacked vectors, accumulated like :func:`_dot`."""
    total = sum((u.to(_wide(u)) * v.to(_wide(u))).flatten(1).sum(1).cpu() for u, v in zip(a, b))
    return [float(t) for t in total]  # type: ignore[union-attr]


def ensemble(models: Sequence[nn.Module], loss_fn: LossFn, xs: Sequence[Any], ys: Sequence[Any], measure: str, *,
             seeds: Sequence[int], **options: Any) -> tuple[list[Any], str]:
    """One measure of every network of an ensemble, each on its own data and with its own seed.

    Every measure runs all networks at once (stacked parameters, ``torch.func.vmap``) where they share one
    architecture and their data one shape, and ``batch_size`` is not set; the results are those of calling the
    measure on each network (the same random vectors, the same per-network stopping and step halving), up to
    floating-point rounding. Otherwise the networks are measured one after another.

    Parameters
    ----------
    models : list of nn.Module
    loss_fn : callable
        As for the measures.
    xs, ys : list
        Each network's data.
    measure : str
        A measure's function name (``"hessian_trace"``, ...).
    seeds : list of int
        Each network's ``seed``.
    **options
        The measure's other options.

    Returns
    -------
    results : list
        One result per network, as the measure returns it.
    how : str
        ``"batched"``, or why the networks were measured one at a time.
    """
    functions = {f.__name__: f for f in (hessian_top_eigenvalue, hessian_trace, sam_sharpness, adaptive_sharpness,
                                         random_sharpness)}
    if measure not in functions:
        raise ValueError(f"unknown sharpness measure {measure!r}; known: {sorted(functions)}")
    if not (len(models) == len(xs) == len(ys) == len(seeds)):
        raise ValueError("give one data set and one seed per model")

    def one_by_one(why: str) -> tuple[list[Any], str]:
        return [functions[measure](m, loss_fn, x, y, seed=int(s), **options)
                for m, x, y, s in zip(models, xs, ys, seeds)], why

    if measure not in BATCHED:
        return one_by_one(f"{measure} is measured one network at a time")
    if len(models) < 2:
        return one_by_one("a single network")
    if options.get("batch_size") is not None:
        return one_by_one("batch_size is set")
    why = _why_not_stacked(models, xs, ys)
    if why:
        return one_by_one(why)
    for m in models:  # the checks (and errors) of the per-network path, without its computation
        _Loss(m, loss_fn, xs[0][:1], ys[0][:1], None)
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(_untouched(m))
        # torch's forward-mode internals may warn of their own deprecations on first use: not the caller's concern
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            st = _Stacked(models, loss_fn, xs, ys)
            base = st.loss(st.params)
            st.hvp([torch.zeros_like(p) for p in st.params])  # the trial: vmap must be able to run it
        except Exception as err:  # noqa: BLE001 - anything vmap cannot batch is measured one by one
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            stack.close()
            return one_by_one(f"the batched evaluation failed ({type(err).__name__}: {first})")
        bases = [float(b) for b in base]
        if not all(math.isfinite(b) for b in bases):
            stack.close()
            return one_by_one("a loss is not finite")  # the per-network path raises the clear error
        if measure in ("sam_sharpness", "adaptive_sharpness"):
            results: list[Any] = _batched_ascent(st, seeds, measure == "adaptive_sharpness", **options)
        elif measure == "hessian_trace":
            results = _batched_trace(st, seeds, bases, **options)
        elif measure == "random_sharpness":
            results = _batched_random(st, seeds, bases, **options)
        else:
            results = _batched_top(st, seeds, bases, **options)
    # A seed whose dominant eigenvalue was negative needs the shifted second iteration: its own call does it.
    for i, r in enumerate(results):
        if r is None:
            results[i] = hessian_top_eigenvalue(models[i], loss_fn, xs[i], ys[i], seed=int(seeds[i]), **options)
    return results, "batched"


def _stacked_draws(kind: str, st: _Stacked, generators: Sequence[torch.Generator]) -> list[torch.Tensor]:
    per_seed = [_draw(kind, ws, g) for ws, g in zip(st.per_model, generators)]
    return [torch.stack(parts) for parts in zip(*per_seed)]


def _batched_trace(st: _Stacked, seeds: Sequence[int], bases: list[float], *, samples: int = 50,
                   seed: None = None) -> list[HessianTrace]:
    samples = check_int(samples, "samples", minimum=2)
    gens = [torch.Generator().manual_seed(check_int(s, "seed")) for s in seeds]
    draws: list[list[float]] = [[] for _ in seeds]
    for _ in range(samples):
        z = _stacked_draws("rademacher", st, gens)
        for i, v in enumerate(_dots(z, st.hvp(z))):
            draws[i].append(v)
    out = []
    for d, base in zip(draws, bases):
        mean, stderr = _mean_stderr(d)
        out.append(HessianTrace(value=mean, stderr=stderr, samples=samples, loss=base))
    return out


def _batched_random(st: _Stacked, seeds: Sequence[int], bases: list[float], *, rho: float, samples: int = 100,
                    seed: None = None) -> list[RandomSharpness]:
    rho = check_float(rho, "rho", positive=True, what="> 0")
    samples = check_int(samples, "samples", minimum=2)
    gens = [torch.Generator().manual_seed(check_int(s, "seed")) for s in seeds]
    draws: list[list[float]] = [[] for _ in seeds]
    for _ in range(samples):
        z = _stacked_draws("gaussian", st, gens)
        scale = [rho / math.sqrt(n) for n in _dots(z, z)]
        factor = torch.tensor(scale, dtype=st.params[0].dtype, device=st.params[0].device)
        moved = [w + factor.view(-1, *([1] * (w.dim() - 1))).to(w.dtype) * u for w, u in zip(st.params, z)]
        for i, v in enumerate(st.loss(moved).tolist()):
            draws[i].append(float(v) - bases[i])
    out = []
    for d, base in zip(draws, bases):
        mean, stderr = _mean_stderr(d)
        out.append(RandomSharpness(value=mean, stderr=stderr, samples=samples, rho=rho, loss=base))
    return out


def _batched_top(st: _Stacked, seeds: Sequence[int], bases: list[float], *, tol: float = 1e-4,
                 max_iter: int = 100, seed: None = None) -> list[Optional[TopEigenvalue]]:
    """Power iteration for every seed at once, each stopping (its vector frozen) by the rule of :func:`_power`;
    None for a seed whose dominant eigenvalue is negative."""
    tol = check_float(tol, "tol", positive=True, what="> 0")
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    S = len(seeds)
    v = _stacked_draws("gaussian", st, [torch.Generator().manual_seed(check_int(s, "seed")) for s in seeds])

    def scaled(vec: list[torch.Tensor], factors: list[float]) -> list[torch.Tensor]:
        f = torch.tensor(factors, dtype=torch.float64)
        return [(u.to(_wide(u)) * f.to(u.device).view(-1, *([1] * (u.dim() - 1)))).to(u.dtype) for u in vec]

    v = scaled(v, [1.0 / math.sqrt(n) for n in _dots(v, v)])
    previous: list[Optional[float]] = [None] * S
    result: list[Optional[tuple[float, int, bool]]] = [None] * S
    lam = [0.0] * S
    for it in range(1, max_iter + 1):
        hv = st.hvp(v)
        lam = _dots(v, hv)
        sizes = [math.sqrt(n) for n in _dots(hv, hv)]
        for i in range(S):
            if result[i] is not None:
                continue
            if sizes[i] == 0.0:
                result[i] = (0.0, it, True)
            elif previous[i] is not None and abs(lam[i] - previous[i]) <= tol * abs(lam[i]):  # type: ignore[operator]
                result[i] = (lam[i], it, True)
            previous[i] = lam[i]
        if all(r is not None for r in result):
            break
        # Seeds that stopped keep their vector (their products are computed and ignored).
        v = [torch.where(torch.tensor([r is None for r in result], device=u.device).view(-1, *([1] * (u.dim() - 1))),
                         n, u) for u, n in zip(v, scaled(hv, [1.0 / s if s else 0.0 for s in sizes]))]
    out: list[Optional[TopEigenvalue]] = []
    for i in range(S):
        found = result[i]
        value, its, ok = found if found is not None else (lam[i], max_iter, False)
        out.append(None if value < 0 else TopEigenvalue(value=value, iterations=its, converged=ok, loss=bases[i]))
    return out


def _times(vec: Sequence[torch.Tensor], factors: Sequence[float]) -> list[torch.Tensor]:
    """Each seed's slice of a stacked vector times its own factor, in the vector's dtype."""
    out = []
    for u in vec:
        f = torch.tensor(list(factors), dtype=u.dtype, device=u.device).view(-1, *([1] * (u.dim() - 1)))
        out.append(f * u)
    return out


def _pick(mask: Sequence[bool], new: Sequence[torch.Tensor], old: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per seed, ``new``'s slice where ``mask`` holds, else ``old``'s."""
    out = []
    for a, b in zip(new, old):
        m = torch.tensor(list(mask), device=a.device).view(-1, *([1] * (a.dim() - 1)))
        out.append(torch.where(m, a, b))
    return out


def _batched_ascent(st: _Stacked, seeds: Sequence[int], adaptive: bool, *, rho: float, steps: int = 20,
                    eta: float = 0.01) -> list[AscentSharpness]:
    """:func:`_ascent` for every seed at once: the same start, trials, step halving and stopping per seed (a seed
    that stopped is evaluated along with the others, its results ignored)."""
    rho = check_float(rho, "rho", positive=True, what="> 0")
    steps = check_int(steps, "steps", minimum=1)
    eta = check_float(eta, "eta", minimum=0.0, what=">= 0")
    S, w = len(seeds), st.params
    scale = [p.abs() + eta for p in w] if adaptive else None

    def at(u: list[torch.Tensor]) -> tuple[list[float], list[torch.Tensor]]:
        e = u if scale is None else _mul(scale, u)
        values, g = st.value_and_grad([a + b for a, b in zip(w, e)])
        return values, (g if scale is None else _mul(scale, g))

    def norms(v: Sequence[torch.Tensor]) -> list[float]:
        return [math.sqrt(x) for x in _dots(v, v)]

    base, g = at([torch.zeros_like(p) for p in w])
    sizes = norms(g)
    u = _times(g, [rho / n if n > 0 else 0.0 for n in sizes])
    flat = [i for i, n in enumerate(sizes) if n == 0]
    if flat:  # a zero gradient: a seeded random start on the sphere, as the seed's own call draws it
        per_seed = [[x[i] for x in u] for i in range(S)]
        for i in flat:
            z = _draw("gaussian", st.per_model[i], torch.Generator().manual_seed(int(seeds[i])))
            per_seed[i] = _scale(rho / _norm(z), z)
        u = [torch.stack(parts) for parts in zip(*per_seed)]
    current, g = at(u)
    one_step = [c - b if n > 0 else 0.0 for c, b, n in zip(current, base, sizes)]
    evaluations, alpha, active = [2] * S, [rho] * S, [True] * S
    for _ in range(steps):
        sizes = norms(g)
        active = [a and n != 0.0 and al >= 1e-12 * rho for a, n, al in zip(active, sizes, alpha)]
        if not any(active):
            break
        moved = [a + b for a, b in zip(_times(g, [al / n if a else 0.0 for al, n, a in zip(alpha, sizes, active)]),
                                       u)]
        lengths = norms(moved)
        trial = _times(moved, [1.0 if n <= rho else rho / n for n in lengths])
        values, trial_g = at(trial)
        better = [a and v > c for a, v, c in zip(active, values, current)]
        for i in range(S):
            if active[i]:
                evaluations[i] += 1
                if better[i]:
                    current[i] = values[i]
                else:
                    alpha[i] /= 2
        u, g = _pick(better, trial, u), _pick(better, trial_g, g)
    return [AscentSharpness(value=max(c - b, o), one_step=o, multi_step=max(c - b, o), rho=rho, evaluations=n,
                            loss=b) for c, b, o, n in zip(current, base, one_step, evaluations)]

"""Sharpness-aware minimisation: SAM (Foret et al., 2021) and its adaptive form ASAM (Kwon et al., 2021) as a
wrapper around any torch optimiser.

Each update looks at the loss around the current weights ``w``. It climbs to the point ``w + e`` where the loss
is highest to first order within a ball of radius ``rho``, takes the gradient there, returns to ``w`` and lets the
base optimiser step with that gradient. Minima whose whole neighbourhood has a low loss (flat minima) are
preferred over sharp ones.

- SAM: ``e = rho * g / ||g||``, with ``g`` the gradient at ``w`` and the norm over all parameters that have one.
- ASAM: ``e = rho * T**2 g / ||T g||`` with ``T = diag(|w| + eta)``, so that the neighbourhood scales with the
  weights and rescaling a layer does not change the result.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable, Dict, Iterable, List, Optional, Type, Union

import torch

__all__ = ["SAM"]


def _check_settings(rho: Any, adaptive: Any, eta: Any, where: str) -> None:
    if isinstance(rho, bool) or not isinstance(rho, Real) or not math.isfinite(rho) or rho <= 0:
        raise ValueError(f"rho{where} must be a finite number > 0 (the radius of the neighbourhood, e.g. 0.05 for "
                         f"SAM, 0.5 for ASAM); got {rho!r}")
    if isinstance(eta, bool) or not isinstance(eta, Real) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta{where} must be a finite number >= 0 (ASAM's offset in T = |w| + eta, e.g. 0.01); "
                         f"got {eta!r}")
    if not isinstance(adaptive, bool):
        raise TypeError(f"adaptive{where} must be True (ASAM) or False (SAM); got {adaptive!r}")


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation around a base optimiser.

    Parameters
    ----------
    params : iterable of tensors or of dicts
        The parameters to optimise, or parameter groups (dicts; a group may set its own ``rho``, ``adaptive``,
        ``eta`` and base-optimiser settings such as ``lr``).
    base_optimizer : torch.optim.Optimizer subclass or instance
        The optimiser that takes the actual step, e.g. ``torch.optim.SGD``: a class is constructed on the same
        parameter groups with ``base_kwargs``; an instance must optimise exactly the parameters in ``params``.
        SAM and the base optimiser share their ``param_groups``, so a learning-rate scheduler built on the SAM
        object drives the base optimiser.
    rho : float, default 0.05
        Radius of the neighbourhood (in the parameters' units; for ASAM, relative to ``|w| + eta``). Must be > 0.
    adaptive : bool, default False
        True for ASAM.
    eta : float, default 0.01
        ASAM's offset in ``T = |w| + eta``, so that weights at zero are still perturbed. Must be >= 0; unused by
        SAM.
    **base_kwargs
        Passed to ``base_optimizer`` when it is a class (``lr``, ``momentum``, ...).

    Notes
    -----
    Use it in one of two ways.

    - ``step(closure)``: the closure must zero the gradients, compute the loss and call ``backward()``. The
      gradient at ``w`` is the one already in the parameters' ``.grad`` (from your own ``backward()`` before
      ``step``); when no parameter has a gradient, ``step`` calls the closure once more to compute it. After the
      step the gradients are cleared (set to None): they were taken at ``w + e`` and are no gradient at the new
      weights.
    - ``first_step()``, a second forward and backward pass, then ``second_step()``: for loops that cannot pass a
      closure. With a gradient scaler (mixed precision) call ``restore()`` instead of ``second_step()`` and then
      ``scaler.step(sam.base_optimizer)``: the ascent direction does not depend on the scale. Build learning-rate
      schedulers for such loops on ``sam.base_optimizer``, whose ``step`` is the one that runs.

    Parameters without a gradient (frozen, or unused by the loss) are neither perturbed nor counted in the norm.
    The norm is accumulated in float64; the perturbation is applied in each parameter's dtype, and ``w`` is
    restored from an exact copy.
    """

    param_groups: list[dict[str, Any]]  # set by torch.optim.Optimizer.__init__

    def __init__(self, params: Iterable[Union[torch.Tensor, Dict[str, Any]]],
                 base_optimizer: Union[Type[torch.optim.Optimizer], torch.optim.Optimizer], *, rho: float = 0.05,
                 adaptive: bool = False, eta: float = 0.01, **base_kwargs: Any) -> None:
        _check_settings(rho, adaptive, eta, "")
        self._sam_defaults = dict(rho=float(rho), adaptive=adaptive, eta=float(eta))
        self._held: Dict[torch.Tensor, torch.Tensor] = {}
        super().__init__(params, dict(self._sam_defaults))
        if isinstance(base_optimizer, SAM) or (isinstance(base_optimizer, type) and issubclass(base_optimizer, SAM)):
            raise TypeError("base_optimizer is itself a SAM; pass the optimiser that should take the step "
                            "(e.g. torch.optim.SGD)")
        if isinstance(base_optimizer, torch.optim.Optimizer):
            if base_kwargs:
                raise TypeError(f"base_optimizer is already constructed, so {sorted(base_kwargs)} cannot be applied "
                                f"to it; pass the class (e.g. torch.optim.SGD) with these settings, or set them when "
                                f"constructing the instance")
            mine = {id(p) for group in self.param_groups for p in group["params"]}
            theirs = {id(p) for group in base_optimizer.param_groups for p in group["params"]}
            if mine != theirs:
                raise ValueError("params are not the parameters that the base_optimizer instance optimises; pass "
                                 "the same parameters to both (e.g. model.parameters())")
            base = base_optimizer
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer):
            base = base_optimizer(self.param_groups, **base_kwargs)
        else:
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class (e.g. torch.optim.SGD) or "
                            f"instance; got {base_optimizer!r}")
        self.base_optimizer = base
        self._share_base()
        self.defaults = {**base.defaults, **self._sam_defaults}

    def _share_base(self) -> None:
        # One set of groups and one state for both, so that schedulers, zero_grad and state inspection on the SAM
        # object act on the base optimiser.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        for i, group in enumerate(self.param_groups):
            for key, value in self._sam_defaults.items():
                group.setdefault(key, value)
            _check_settings(group["rho"], group["adaptive"], group["eta"], f" of parameter group {i}")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a parameter group, to SAM and the base optimiser alike.

        Parameters
        ----------
        param_group : dict
            ``params`` and optional settings (``rho``, ``adaptive``, ``eta`` and the base optimiser's).
        """
        if "base_optimizer" not in self.__dict__:  # called by torch.optim.Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key, value in self._sam_defaults.items():
            param_group.setdefault(key, value)
        _check_settings(param_group["rho"], param_group["adaptive"], param_group["eta"], " of the new group")
        self.base_optimizer.add_param_group(param_group)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move the weights from ``w`` to ``w + e``, using the gradients in ``.grad`` as the gradient at ``w``.

        Parameters
        ----------
        zero_grad : bool, default False
            Clear the gradients afterwards (set them to None), ready for the backward pass at ``w + e``.

        Raises
        ------
        RuntimeError
            No parameter has a gradient, a gradient is sparse, or the previous ``first_step`` was not followed by
            ``second_step`` or ``restore``.
        """
        if self._held:
            raise RuntimeError("first_step was called again before second_step: the weights are still perturbed; "
                               "call second_step() (or restore()) after the backward pass at the perturbed weights")
        with_grad = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not with_grad:
            raise RuntimeError("no parameter has a gradient: compute the loss at the current weights and call "
                               "loss.backward() before first_step()")
        directions: List[torch.Tensor] = []
        total: Optional[torch.Tensor] = None
        device = with_grad[0][1].device  # parameters may live on several devices: add the norm up on one
        for group, p in with_grad:
            if p.grad.is_sparse:
                raise RuntimeError("SAM needs dense gradients; this parameter's gradient is sparse (e.g. from "
                                   "nn.Embedding(sparse=True)): use dense gradients")
            g = p.grad
            if group["adaptive"]:
                t = p.abs().add_(group["eta"])
                scaled = t * g  # T g, whose norm normalises the step
                square = scaled.double().pow(2).sum()  # not in place: .double() of float64 is the same tensor
                direction = scaled.mul_(t)  # T^2 g, the direction of the step
            else:
                direction = g
                square = g.double().pow(2).sum()
            total = square.to(device) if total is None else total + square.to(device)
            directions.append(direction)
        assert total is not None
        norm = total.sqrt()
        # A zero gradient has no ascent direction: stay at w (the step is then the base optimiser's own).
        inverse = torch.where(norm > 0, 1.0 / norm, torch.zeros_like(norm))
        for (group, p), direction in zip(with_grad, directions):
            self._held[p] = p.detach().clone()
            work = torch.promote_types(p.dtype, torch.float32)
            scale = (inverse * group["rho"]).to(device=p.device, dtype=work)
            p.add_((direction.to(work) * scale).to(p.dtype))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> List[torch.Tensor]:
        """Move the weights back from ``w + e`` to ``w`` (exactly), keeping the gradients in ``.grad``.

        Returns
        -------
        list of tensors
            The parameters that were moved back.

        Raises
        ------
        RuntimeError
            There is no ``first_step`` to undo.
        """
        if not self._held:
            raise RuntimeError("the weights are not perturbed: call first_step() (after a backward pass at the "
                               "current weights) before second_step() or restore()")
        held, self._held = self._held, {}
        for p, w in held.items():
            p.copy_(w)
        return list(held)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Move the weights back to ``w`` and take the base optimiser's step with the gradient at ``w + e``.

        Parameters
        ----------
        zero_grad : bool, default False
            Clear the gradients afterwards (set them to None).

        Raises
        ------
        RuntimeError
            There was no ``first_step``, or no backward pass since it (no perturbed parameter has a gradient); the
            weights are back at ``w`` in that case, and no step is taken.
        """
        moved = self.restore()
        if all(p.grad is None for p in moved):
            raise RuntimeError("no gradient at the perturbed weights: between first_step(zero_grad=True) and "
                               "second_step(), compute the loss again and call loss.backward()")
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One sharpness-aware update.

        Parameters
        ----------
        closure : callable
            Zeroes the gradients, computes the loss on the current batch, calls ``backward()`` and returns the
            loss. It is called at ``w + e``, and also at ``w`` first when no parameter has a gradient yet.

        Returns
        -------
        loss or None
            The closure's value at ``w`` when ``step`` computed the gradient there; None when the gradient was
            already in ``.grad`` (you have that loss from your own forward pass).

        Raises
        ------
        RuntimeError
            No closure, or a closure that does not call ``backward()``; the weights are left at ``w`` and not
            updated.
        """
        if closure is None:
            raise RuntimeError("SAM.step() needs a closure that zeroes the gradients, computes the loss and calls "
                               "loss.backward(), because SAM evaluates the gradient a second time at perturbed "
                               "weights; pass one (optimizer.step(closure)) or call first_step() and "
                               "second_step() around your own second backward pass")
        if not callable(closure):
            raise TypeError(f"closure must be a function that computes the loss and calls backward(); "
                            f"got {type(closure).__name__}")
        loss = None
        if not any(p.grad is not None for group in self.param_groups for p in group["params"]):
            with torch.enable_grad():
                loss = closure()
            if not any(p.grad is not None for group in self.param_groups for p in group["params"]):
                raise RuntimeError("the closure did not compute any gradient: it must call loss.backward() (after "
                                   "zeroing the gradients) on a loss that depends on the parameters")
        self.first_step(zero_grad=True)
        perturbed = list(self._held)
        try:
            with torch.enable_grad():
                closure()
        except BaseException:
            self.restore()  # never leave the model at the perturbed weights
            raise
        if all(p.grad is None for p in perturbed):
            self.restore()
            raise RuntimeError("the closure did not compute any gradient: it must call loss.backward() (after "
                               "zeroing the gradients) on a loss that depends on the parameters")
        self.second_step()
        self.zero_grad()
        return loss

    def state_dict(self) -> Dict[str, Any]:
        """The base optimiser's state (momentum buffers, step counts) and the parameter groups, with SAM's settings.

        Returns
        -------
        dict
            ``torch.optim.Optimizer.state_dict`` of the base optimiser.
        """
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (or a plain base-optimiser state dict: SAM's settings then keep
        their defaults).

        Parameters
        ----------
        state_dict : dict
            The state to load.
        """
        self.base_optimizer.load_state_dict(state_dict)
        self._share_base()  # loading replaces the base optimiser's group dicts and state

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state.update(base_optimizer=self.base_optimizer, _held=self._held, _sam_defaults=self._sam_defaults)
        return state

    def __repr__(self) -> str:
        s = self._sam_defaults
        return (f"SAM(rho={s['rho']}, adaptive={s['adaptive']}, eta={s['eta']}, "
                f"base_optimizer={self.base_optimizer!r})")

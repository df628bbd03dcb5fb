"""Configuration objects over the functional estimators (the thin stateful layer).

An estimator object remembers its settings, has a short ``name`` for tables and figures, can be written to
JSON (``settings()``) and rebuilt from it (``from_settings``), and computes by being called on
``(activations, labels)``. Each object takes every option of its function, under the same keyword; an option
left at its default is not written to ``settings()`` when it was added after runs were first recorded, so that
the settings of older runs read back unchanged.

:class:`KNN` and :class:`Renyi` estimate I(X;T) against the probe inputs X, which the ``(activations, labels)``
call does not carry. They get them in one of two ways, both compatible with every other estimator:

- constructed with ``inputs=`` (``KNN(inputs=probe_x)``), which works wherever an estimator object is accepted;
- or called as ``est(acts, labels, inputs=probe_x)``: objects with ``needs_inputs = True`` are passed the
  probe inputs by the tracker. An ``inputs=`` given at call time takes precedence over the constructor's.

The inputs are not part of ``settings()`` (they are data, not configuration): an object rebuilt with
``from_settings`` has none until it is given some.
"""
from __future__ import annotations

import copy
import fnmatch
import warnings
from typing import Any, Optional, Union

import torch

from infoplane._validate import check_bool, check_choice, check_float, check_int
from infoplane.estimators.base import (
    Estimator,
    LayerContext,
    PlaneResult,
    for_layer,
    from_settings,
    protocol_attribute,
    register,
)
from infoplane.estimators.binning import BinnedResult, BinRangeWarning, binned_mi, grid_arguments, range_note
from infoplane.estimators.discrete import DiscreteResult, discrete_mi
from infoplane.estimators.kde import PRECISIONS, KDEResult, kde_mi
from infoplane.estimators.knn import flatten_inputs, ksg_mi, ross_mi
from infoplane.estimators.noisy import DEFAULT_SAMPLES, NoisyResult, noisy_mi
from infoplane.estimators.null import DEFAULT_PERMUTATIONS, NullResult, permutation_null
from infoplane.estimators.renyi import METHODS, check_alpha, check_sigma, renyi_mi, renyi_plane

__all__ = ["Estimator", "PlaneResult", "Binning", "KDE", "Discrete", "Noisy", "WithNull", "KNN", "Renyi",
           "from_settings"]


def _memory_budget(value: Any) -> Optional[int]:
    return None if value is None else int(check_float(value, "memory_budget", positive=True))


@register
class Binning(Estimator):
    """Binned estimator (see :func:`infoplane.estimators.binned_mi`), with the same grid arguments.

    Examples
    --------
    >>> Binning(bins=30, range=(-1, 1)).name, Binning(width=0.07).name, Binning(adaptive=True).name
    ('binning', 'binning-width', 'adaptive')
    >>> Binning(miller_madow=True).name
    'binning-mm'
    """

    kind = "binning"

    def __init__(self, bins: Optional[int] = None, range: Optional[tuple] = None, width: Optional[float] = None,
                 adaptive: bool = False, miller_madow: bool = False, name: Optional[str] = None) -> None:
        super().__init__(name)
        self.grid, self.bins, self.range, self.width = grid_arguments(bins, range, width, adaptive)
        self.miller_madow = check_bool(miller_madow, "miller_madow")
        # Set by for_layer: the layer this copy estimates, and whether its range note was given.
        self.layer: Optional[str] = None
        self.warned = False

    @property
    def default_name(self) -> str:
        base = {"range": "binning", "width": "binning-width", "adaptive": "adaptive"}[self.grid]
        return base + ("-mm" if self.miller_madow else "")

    def _kwargs(self) -> dict:
        kw: dict[str, Any]
        if self.grid == "width":
            kw = {"width": self.width}
        elif self.grid == "adaptive":
            kw = {"bins": self.bins, "adaptive": True}
        else:
            assert self.range is not None  # grid_arguments gives the range grid its (lo, hi)
            kw = {"bins": self.bins, "range": list(self.range)}
        if self.miller_madow:  # only when set, so that settings written before the option read back unchanged
            kw["miller_madow"] = True
        return kw

    def for_layer(self, layer: LayerContext) -> "Binning":
        """This estimator on ``layer``: with a fixed range, it warns (:class:`BinRangeWarning`, once) the first time
        the layer's activations leave the range."""
        if self.grid != "range":
            return self
        bound = copy.copy(self)
        bound.layer, bound.warned = layer.name, False
        return bound

    def __call__(self, activations: Any, labels: Any) -> BinnedResult:
        if self.layer is not None and not self.warned:
            assert self.range is not None  # the range grid has its (lo, hi)
            note = range_note(activations, self.range, self.layer)
            if note is not None:
                self.warned = True
                warnings.warn(note, BinRangeWarning, stacklevel=2)
        kw = self._kwargs()
        if "range" in kw:
            kw["range"] = tuple(kw["range"])
        return binned_mi(activations, labels, **kw)


@register
class KDE(Estimator):
    """Kolchinsky–Tracey kernel estimator (see :func:`infoplane.estimators.kde_mi`).

    Results carry both the upper (``ixt``, ``ity``) and lower (``ixt_lower``, ``ity_lower``) estimates.
    """

    kind = "kde"
    has_lower = True
    fields = ("ixt", "ity", "ixt_lower", "ity_lower")
    default_name = "kde"

    def __init__(self, noise_var: float = 1e-3, precision: str = "float32", memory_budget: Optional[int] = None,
                 name: Optional[str] = None) -> None:
        super().__init__(name)
        self.noise_var = check_float(noise_var, "noise_var", positive=True)
        self.precision = check_choice(precision, "precision", sorted(PRECISIONS))
        self.memory_budget = _memory_budget(memory_budget)

    def _kwargs(self) -> dict:
        kw = {"noise_var": self.noise_var, "precision": self.precision}
        if self.memory_budget is not None:
            kw["memory_budget"] = self.memory_budget
        return kw

    def __call__(self, activations: Any, labels: Any) -> KDEResult:
        return kde_mi(activations, labels, **self._kwargs())


@register
class Discrete(Estimator):
    """Exact discrete estimator: each distinct row of exact values is one symbol (see
    :func:`infoplane.estimators.discrete_mi`), for quantised networks.

    Examples
    --------
    >>> Discrete().name, Discrete(miller_madow=True).settings()
    ('discrete', {'kind': 'discrete', 'name': 'discrete-mm', 'miller_madow': True})
    """

    kind = "discrete"

    def __init__(self, miller_madow: bool = False, name: Optional[str] = None) -> None:
        super().__init__(name)
        self.miller_madow = check_bool(miller_madow, "miller_madow")

    @property
    def default_name(self) -> str:
        return "discrete-mm" if self.miller_madow else "discrete"

    def _kwargs(self) -> dict:
        return {"miller_madow": True} if self.miller_madow else {}

    def __call__(self, activations: Any, labels: Any) -> DiscreteResult:
        return discrete_mi(activations, labels, **self._kwargs())


@register
class Noisy(Estimator):
    """Monte-Carlo mixture-entropy estimator of a noisy layer (see :func:`infoplane.estimators.noisy_mi`).

    Results carry ``ixt``, ``ity`` and their Monte-Carlo standard errors ``ixt_se``, ``ity_se`` (bits). Takes
    the arguments of the function; ``control_variate``, added later, is keyword-only (so that ``name`` keeps its
    position).

    Parameters
    ----------
    noise_var : None, float or dict, default None
        Variance of the noise on each estimated column (squared activation units).

        - None: read per layer from the network, in :class:`~infoplane.Tracker` and ``infoplane track``: the
          standard deviation ``std`` of the :func:`~infoplane.add_noise` module after the layer, and the
          layer's reduction (``std**2`` for ``flatten`` and ``pca:k``, ``std**2 / (H W)`` for ``channel-mean``
          of an ``[C, H, W]`` output). A layer without noise of its own is refused, with the reason.
        - a number: that variance for every layer (and the only form a direct call ``est(acts, labels)``
          takes).
        - a dict mapping layer names or glob patterns to variances: those layers take the given value (the
          first matching key, in the dict's order), the others are read from the network as with None.
    """

    kind = "noisy"
    default_name = "noisy"
    fields = ("ixt", "ity", "ixt_se", "ity_se")

    def __init__(self, noise_var: Union[float, dict, None] = None, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                 precision: str = "float64", memory_budget: Optional[int] = None, name: Optional[str] = None, *,
                 control_variate: bool = True) -> None:
        super().__init__(name)
        self.noise_var: Union[float, dict, None]
        if noise_var is None:
            self.noise_var = None
        elif isinstance(noise_var, dict):
            if not noise_var:
                raise ValueError("noise_var={} is empty: map layer names or patterns to variances, or pass None to "
                                 "read every layer's noise from the network")
            for key in noise_var:
                if not isinstance(key, str):
                    raise ValueError(f"noise_var keys must be layer names or glob patterns; got {key!r}")
            self.noise_var = {k: check_float(v, f"noise_var[{k!r}]", positive=True) for k, v in noise_var.items()}
        else:
            self.noise_var = check_float(noise_var, "noise_var", positive=True)
        self.samples = check_int(samples, "samples", minimum=2)
        self.seed = check_int(seed, "seed")
        self.precision = check_choice(precision, "precision", ["float32", "float64"])
        self.memory_budget = _memory_budget(memory_budget)
        self.control_variate = check_bool(control_variate, "control_variate")

    def _kwargs(self) -> dict:
        kw = {"noise_var": self.noise_var, "samples": self.samples, "seed": self.seed, "precision": self.precision}
        if self.memory_budget is not None:
            kw["memory_budget"] = self.memory_budget
        if not self.control_variate:  # only when off, so that settings written before the option read back
            kw["control_variate"] = False
        return kw

    def layer_noise_var(self, layer: LayerContext) -> float:
        """The noise variance this estimator uses on ``layer`` (see ``noise_var``).

        Raises
        ------
        ValueError
            ``noise_var`` gives no value for the layer and the network adds no noise to it that one variance
            describes; the message says why and what to do.
        """
        if isinstance(self.noise_var, float):
            return self.noise_var
        if isinstance(self.noise_var, dict):
            for key, value in self.noise_var.items():
                if layer.name == key or fnmatch.fnmatchcase(layer.name, key):
                    return value
        if layer.noise_var is not None:
            return layer.noise_var
        if not layer.network_noise:
            raise ValueError(
                "the noisy estimator measures a network with noise inside it, and this network adds none (it has "
                "no add_noise modules): add the noise with infoplane.add_noise(model, std), which the network then "
                "trains and is probed with, or use another estimator (binning, kde; docs/choosing.md says which)")
        raise ValueError(
            f"the noisy estimator measures a network with noise inside it, and layer {layer.name!r} "
            f"{layer.why_no_noise or 'gets no noise from the network'}. Add the noise to the network with "
            f"infoplane.add_noise(model, std) and record its '.clean' layers (the default choice does), give "
            f"Noisy(noise_var={{{layer.name!r}: VARIANCE}}) for this layer, or use another estimator "
            f"(binning, kde)")

    def for_layer(self, layer: LayerContext) -> "Noisy":
        """This estimator with the number ``noise_var`` it uses on ``layer`` (see :meth:`layer_noise_var`)."""
        if isinstance(self.noise_var, float):
            return self
        return Noisy(self.layer_noise_var(layer), self.samples, self.seed, self.precision, self.memory_budget,
                     self._name, control_variate=self.control_variate)

    def __call__(self, activations: Any, labels: Any) -> NoisyResult:
        if not isinstance(self.noise_var, float):
            raise ValueError(
                "this Noisy() reads its noise_var per layer from the network, which a direct call cannot see: use it "
                "in Tracker or infoplane track, or call Noisy(noise_var=VARIANCE)(activations, labels)")
        return noisy_mi(activations, labels, **self._kwargs())


@register
class WithNull(Estimator):
    """Any estimator plus its permutation null of I(T;Y) (see
    :func:`infoplane.estimators.permutation_null`).

    Parameters
    ----------
    estimator : estimator object or its ``settings()`` dict
        Built-in or custom (anything with ``name``, ``settings()``, ``has_lower`` and ``__call__`` that accepts
        per-item labels ``[..., N]``).
    permutations : int, default 20
    seed : int, default 0
    name : str, optional
        Default: the wrapped estimator's name (its rows gain the ``ity_null``, ``ity_null_sd`` columns).
    memory_budget : int, optional
        Keyword only. Bytes of broadcast activations per call of the wrapped estimator (default 256 MiB).
    """

    kind = "with-null"

    def __init__(self, estimator: Union[Estimator, dict], permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                 name: Optional[str] = None, *, memory_budget: Optional[int] = None) -> None:
        super().__init__(name)
        if isinstance(estimator, dict):
            estimator = from_settings(estimator)
        if not (callable(estimator) and all(hasattr(estimator, a) for a in ("name", "settings", "has_lower"))):
            raise TypeError(f"WithNull needs an estimator object such as infoplane.KDE(...) or its settings() "
                            f"dict; got {estimator!r}")
        if isinstance(estimator, WithNull):
            raise ValueError("WithNull(WithNull(...)) is not meaningful: wrap the estimator once")
        self.estimator = estimator
        self.permutations = check_int(permutations, "permutations", minimum=2)
        self.seed = check_int(seed, "seed")
        self.memory_budget = _memory_budget(memory_budget)
        self.has_lower = bool(estimator.has_lower)
        self.fields = tuple(protocol_attribute(estimator, "fields")) + ("ity_null", "ity_null_sd")
        self.measure = str(protocol_attribute(estimator, "measure"))

    @property
    def default_name(self) -> str:
        return self.estimator.name

    def _kwargs(self) -> dict:
        kw = {"estimator": self.estimator.settings(), "permutations": self.permutations, "seed": self.seed}
        if self.memory_budget is not None:
            kw["memory_budget"] = self.memory_budget
        return kw

    def for_layer(self, layer: LayerContext) -> "WithNull":
        """The wrapped estimator's version for ``layer`` (see :func:`infoplane.estimators.base.for_layer`), wrapped."""
        inner = for_layer(self.estimator, layer)
        if inner is self.estimator:
            return self
        return WithNull(inner, self.permutations, self.seed, self._name, memory_budget=self.memory_budget)

    def __call__(self, activations: Any, labels: Any) -> NullResult:
        return permutation_null(self.estimator, activations, labels, permutations=self.permutations,
                                seed=self.seed, memory_budget=self.memory_budget)


@register
class KNN(Estimator):
    """k-NN estimates: I(X;T) by KSG (:func:`ksg_mi`) against the probe inputs, I(T;Y) by Ross (:func:`ross_mi`).

    Neither is clipped at 0 (a negative value is bias made visible). Needs the probe inputs (see module docs).

    Parameters
    ----------
    k : int, default 3
    inputs : tensor or array [N, ...], optional
        Probe inputs, flattened per sample.
    memory_budget : int, optional
        Bytes for the distance blocks (default 64 MiB).
    """

    kind = "knn"
    needs_inputs = True
    default_name = "knn"
    target_kinds = ("discrete", "continuous")

    def __init__(self, k: int = 3, inputs: Any = None, memory_budget: Optional[int] = None,
                 name: Optional[str] = None) -> None:
        super().__init__(name)
        self.k = check_int(k, "k", minimum=1, what="a positive integer")
        self.memory_budget = _memory_budget(memory_budget)
        self.inputs = None if inputs is None else flatten_inputs(inputs)

    def _kwargs(self) -> dict:
        kw = {"k": self.k}
        if self.memory_budget is not None:
            kw["memory_budget"] = self.memory_budget
        return kw

    def __call__(self, activations: Any, labels: Any, inputs: Any = None) -> PlaneResult:
        x = flatten_inputs(inputs) if inputs is not None else self.inputs
        if x is None:
            raise ValueError(
                "the knn estimator needs the probe inputs for I(X;T) (KSG between inputs and layer): construct "
                "it as KNN(inputs=probe_x) or call it as est(acts, labels, inputs=probe_x).")
        device = activations.device if isinstance(activations, torch.Tensor) else torch.device("cpu")
        kw: dict[str, Any] = {"k": self.k, "memory_budget": self.memory_budget}
        return PlaneResult(ixt=ksg_mi(x.to(device), activations, **kw).mi, ity=ross_mi(activations, labels, **kw).mi)

    def target_mi(self, activations: Any, z: Any) -> torch.Tensor:
        """I(T;Z) of a side variable, in bits, not clipped: KSG (:func:`ksg_mi`) for a continuous Z, Ross
        (:func:`ross_mi`, as for I(T;Y)) for class indices.

        Parameters
        ----------
        activations : tensor ``[..., N, d]``
        z : tensor ``[N, d_z]`` of floats, or int64 class indices ``[N]``

        Returns
        -------
        torch.Tensor, shape ``activations.shape[:-2]``
        """
        if not z.is_floating_point():
            return ross_mi(activations, z, k=self.k, memory_budget=self.memory_budget).mi
        return ksg_mi(z, activations, k=self.k, memory_budget=self.memory_budget).mi


@register
class Renyi(Estimator):
    """Matrix-based Rényi estimates (:func:`renyi_mi`): I(X;T) with the inputs' Gram matrix, I(T;Y) with labels.

    Parameters
    ----------
    alpha : float, default 1.01
    sigma : "silverman" or float, default "silverman"
        Kernel width rule for the layer (per layer and epoch) or a fixed width.
    sigma_inputs : "silverman" or float, default "silverman"
        The same for the probe inputs.
    ixt_from : {"inputs", "identity"}, default "inputs"
        "inputs": Gram matrix of the probe inputs (needs them, see module docs). "identity": X is the sample's
        identity (delta kernel on distinct samples), which makes I(X;T) = S(T) exactly and needs no inputs.
    method : {"auto", "exact", "randomized"}, default "auto"
    probes, steps, seed : int
        Randomized route settings (see :func:`renyi_entropy`).
    inputs : tensor or array [N, ...], optional
        Probe inputs, flattened per sample.
    name : str, optional
    memory_budget : int, optional
        Keyword only. Bytes the randomized route may use to keep the Gram matrix (default 2 GiB).
    """

    kind = "renyi"
    default_name = "renyi"
    target_kinds = ("discrete", "continuous")
    measure = "renyi"

    def __init__(self, alpha: float = 1.01, sigma: Union[str, float] = "silverman",
                 sigma_inputs: Union[str, float] = "silverman", ixt_from: str = "inputs", method: str = "auto",
                 probes: int = 32, steps: int = 30, seed: int = 0, inputs: Any = None, name: Optional[str] = None,
                 *, memory_budget: Optional[int] = None) -> None:
        super().__init__(name)
        self.alpha = check_alpha(alpha)
        self.sigma = check_sigma(sigma)
        self.sigma_inputs = check_sigma(sigma_inputs, "sigma_inputs")
        self.ixt_from = check_choice(ixt_from, "ixt_from", ["inputs", "identity"])
        self.method = check_choice(method, "method", METHODS)
        self.probes = check_int(probes, "probes", minimum=1, what="a positive integer")
        self.steps = check_int(steps, "steps", minimum=1, what="a positive integer")
        self.seed = check_int(seed, "seed")
        self.memory_budget = _memory_budget(memory_budget)
        self.inputs = None if inputs is None else flatten_inputs(inputs)

    @property
    def needs_inputs(self) -> bool:  # type: ignore[override]
        return self.ixt_from == "inputs"

    def _kwargs(self) -> dict:
        kw = {"alpha": self.alpha, "sigma": self.sigma, "sigma_inputs": self.sigma_inputs,
              "ixt_from": self.ixt_from, "method": self.method, "probes": self.probes, "steps": self.steps,
              "seed": self.seed}
        if self.memory_budget is not None:
            kw["memory_budget"] = self.memory_budget
        return kw

    def __call__(self, activations: Any, labels: Any, inputs: Any = None) -> PlaneResult:
        x = None
        if self.ixt_from == "inputs":
            x = flatten_inputs(inputs) if inputs is not None else self.inputs
            if x is None:
                raise ValueError(
                    "the renyi estimator needs the probe inputs for I(X;T): construct it as Renyi(inputs=probe_x), "
                    "call it as est(acts, labels, inputs=probe_x), or use Renyi(ixt_from='identity').")
        ixt, ity = renyi_plane(activations, labels, x, alpha=self.alpha, sigma=self.sigma,
                               sigma_inputs=self.sigma_inputs, method=self.method, probes=self.probes,
                               steps=self.steps, seed=self.seed, memory_budget=self.memory_budget)
        return PlaneResult(ixt=ixt, ity=ity)

    def target_mi(self, activations: Any, z: Any) -> torch.Tensor:
        """I(T;Z) of a side variable by :func:`renyi_mi`, in bits: a continuous Z with a Gaussian kernel of
        Silverman's width, class indices with the delta kernel (as for I(T;Y)).

        Parameters
        ----------
        activations : tensor ``[..., N, d]``
        z : tensor ``[N, d_z]`` of floats, or int64 class indices ``[N]``

        Returns
        -------
        torch.Tensor, shape ``activations.shape[:-2]``
        """
        return renyi_mi(activations, z, alpha=self.alpha, sigma_a=self.sigma, sigma_b="silverman",
                        method=self.method, probes=self.probes, steps=self.steps, seed=self.seed,
                        memory_budget=self.memory_budget).mi

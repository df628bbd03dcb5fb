"""The estimator protocol: the base class, the result every plane estimator returns, the registry of kinds.

An estimator object is anything callable as ``est(activations, labels)`` that returns a result with ``.ixt`` and
``.ity`` (bits) and has a ``name``, ``settings()`` and the protocol attributes below. Subclasses of
:class:`Estimator` get the attributes with their defaults; objects that are not subclasses (a user's own
estimator) work too, and :func:`protocol_attribute` reads their attributes with the same defaults, so that the
tracker never needs to know which kind it holds.
"""
from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

__all__ = ["PlaneResult", "Estimator", "PROTOCOL_DEFAULTS", "protocol_attribute", "register", "from_settings",
           "DEFAULT_SETTINGS", "default_estimator", "keyword_options", "KINDS", "MEASURES", "kind_measure",
           "LayerContext", "for_layer"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class PlaneResult:
    """I(X;T) and I(T;Y) in bits, float64 tensors of shape ``activations.shape[:-2]`` (float32 on MPS).

    Every estimator of the plane from ``(activations, labels)`` returns this or a subclass of it that adds its
    own fields (``KDEResult``: ``ixt_lower``, ``ity_lower``; ``NoisyResult``: ``ixt_se``, ``ity_se``).

    Attributes
    ----------
    ixt : torch.Tensor
        I(X;T), bits.
    ity : torch.Tensor
        I(T;Y), bits.
    """

    ixt: torch.Tensor
    ity: torch.Tensor


@dataclass(frozen=True)
class LayerContext:
    """What an estimator may need to know about the layer it will estimate (see :func:`for_layer`).

    Attributes
    ----------
    name : str
        The recorded layer's name.
    shape : tuple of int or None
        Its per-sample output shape, e.g. ``(C, H, W)`` (None when unknown).
    reduction : str
        The reduction applied before estimating (``"flatten"``, ``"channel-mean"``, ``"pca:4"``, ...).
    noise_std : float or None
        Standard deviation of the Gaussian noise the network itself adds to each unit of this layer's output
        (:func:`infoplane.add_noise`); None when it adds none.
    noise_var : float or None
        That noise's variance per estimated column, after the reduction (``noise_std**2``, divided by ``H W``
        for ``channel-mean``); None when there is no noise or no single variance describes it.
    why_no_noise : str
        When ``noise_var`` is None: why, in words that end a sentence about the layer.
    network_noise : bool
        Whether the network adds noise anywhere (to this layer or others).
    """

    name: str
    shape: tuple | None = None
    reduction: str = "flatten"
    noise_std: float | None = None
    noise_var: float | None = None
    why_no_noise: str = ""
    network_noise: bool = False


def for_layer(est: Any, layer: LayerContext) -> Any:
    """The estimator to run on one layer: ``est.for_layer(layer)`` for estimators whose settings depend on the
    layer (:class:`~infoplane.estimators.config.Noisy` without a fixed ``noise_var``), ``est`` itself otherwise.

    The returned object keeps ``est``'s name; it raises ``ValueError`` with the reason when ``est`` cannot
    measure that layer (checked before anything is recorded).
    """
    bind = getattr(est, "for_layer", None)
    return est if bind is None else bind(layer)


# The protocol attributes and their defaults, for objects that do not set them.
PROTOCOL_DEFAULTS: dict[str, Any] = {"has_lower": False, "needs_inputs": False, "fields": ("ixt", "ity"),
                                     "target_kinds": ("discrete",), "measure": "shannon"}

#: What an estimator's values measure, which sets the axes and ceilings a figure draws them against: "shannon"
#: (Shannon information in bits: I(X;T) in [0, log2 N], I(T;Y) in [0, H(Y)]) or "renyi" (matrix-based Rényi
#: alpha-information in bits: I(X;T) in [0, log2 N], I(T;Y) in [0, log2 K] for K classes, not H(Y)).
MEASURES = ("shannon", "renyi")


def protocol_attribute(est: Any, name: str) -> Any:
    """A protocol attribute of any estimator object, subclass of :class:`Estimator` or not, with its default.

    Parameters
    ----------
    est : estimator object
    name : {"has_lower", "needs_inputs", "fields", "target_kinds", "measure"}

    Returns
    -------
    The attribute, or its default: ``has_lower`` False, ``needs_inputs`` False, ``fields`` ``("ixt", "ity")``
    plus ``("ixt_lower", "ity_lower")`` when the object has ``has_lower``, ``target_kinds`` ``("discrete",)``, ``measure``
    ``"shannon"``.
    """
    if name not in PROTOCOL_DEFAULTS:
        raise ValueError(f"name must be one of {sorted(PROTOCOL_DEFAULTS)}; got {name!r}")
    if isinstance(est, Estimator):
        return getattr(est, name)
    if name == "fields" and not hasattr(est, "fields"):
        lower = ("ixt_lower", "ity_lower") if protocol_attribute(est, "has_lower") else ()
        return ("ixt", "ity") + lower
    return getattr(est, name, PROTOCOL_DEFAULTS[name])


# The registry behind from_settings: kind -> class. Add to it with register.
KINDS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` (an :class:`Estimator` subclass) rebuildable by :func:`from_settings`."""
    if not (isinstance(cls, type) and issubclass(cls, Estimator) and cls.kind):
        raise TypeError(f"register needs an Estimator subclass with a non-empty kind; got {cls!r}")
    KINDS[cls.kind] = cls
    return cls


class Estimator:
    """Base class of the configuration objects: settings, a name, and the protocol attributes.

    Subclasses set ``kind`` (and register it with :func:`register`), override the protocol attributes that
    differ from the defaults, and implement ``_kwargs`` (their arguments as a JSON-able dict) and ``__call__``.

    Attributes
    ----------
    kind : str
        The key of ``settings()["kind"]``, by which :func:`from_settings` finds the class.
    name : str
        Short label for tables and figures (the ``estimator`` column of a run); default per class.
    has_lower : bool, default False
        Results also carry lower estimates ``ixt_lower``, ``ity_lower``.
    needs_inputs : bool, default False
        The tracker passes the probe inputs as ``est(acts, labels, inputs=x)``.
    fields : tuple of str, default ("ixt", "ity")
        The result attributes the estimator fills (bits).
    target_kinds : tuple of str, default ("discrete",)
        The side variables Z (``Tracker(targets=...)``) whose I(T;Z) the estimator can measure: ``"discrete"``
        (class labels: computed as I(T;Y) with Z in place of Y, which every estimator of I(T;Y) from class labels
        can) and ``"continuous"`` (float values ``[N, d]``: the estimator then also has
        ``target_mi(activations, z)``, returning I(T;Z) in bits per batch item; an estimator with
        ``target_mi`` is also given discrete targets through it, as int64 class indices ``[N]``).
    measure : {"shannon", "renyi"}, default "shannon"
        What the values measure (see :data:`MEASURES`); figures choose their axes and ceilings by it.
    """

    kind: str = ""
    has_lower: bool = False
    needs_inputs: bool = False
    fields: tuple = ("ixt", "ity")
    target_kinds: tuple = ("discrete",)
    measure: str = "shannon"

    @property
    def default_name(self) -> str:
        """The name when none is given; subclasses set it as a class attribute or a property."""
        return ""

    def __init__(self, name: str | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name or "," in name or "\n" in name):
            raise ValueError(f"estimator name must be a non-empty string without commas or newlines; got {name!r}")
        self._name = name

    @property
    def name(self) -> str:
        return self._name or self.default_name

    def _kwargs(self) -> dict:
        raise NotImplementedError

    def settings(self) -> dict:
        """JSON-able description: ``{"kind": ..., "name": ..., **arguments}``."""
        return {"kind": self.kind, "name": self.name, **self._kwargs()}

    def __call__(self, activations: Any, labels: Any) -> Any:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Estimator) and self.settings() == other.settings()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._kwargs().items())
        return f"{type(self).__name__}({args})"


def from_settings(settings: dict) -> Estimator:
    """Rebuild an estimator from :meth:`Estimator.settings` (e.g. read back from a run's meta.json).

    Parameters
    ----------
    settings : dict
        ``{"kind": ..., **arguments}``, ``name`` optional.

    Returns
    -------
    Estimator
    """
    if not isinstance(settings, dict) or settings.get("kind") not in KINDS:
        raise ValueError(
            f"unknown estimator settings {settings!r}: expected a dict with 'kind' in {sorted(KINDS)}"
        )
    kw = {k: v for k, v in settings.items() if k != "kind"}
    cls = KINDS[settings["kind"]]
    try:
        return cls(**kw)
    except TypeError as err:
        raise ValueError(f"unknown estimator setting for {settings['kind']}: {err}") from None


def kind_measure(settings: Any) -> str:
    """What the values of an estimator described by ``settings()`` measure: its registered class's ``measure``
    (the wrapped estimator's for a permutation null), ``"shannon"`` for kinds not in the registry.

    Parameters
    ----------
    settings : dict or None
        An estimator's ``settings()``, e.g. as stored in a run's ``meta.json``.

    Returns
    -------
    str
        One of :data:`MEASURES`.
    """
    settings = settings if isinstance(settings, dict) else {}
    if settings.get("kind") == "with-null":
        return kind_measure(settings.get("estimator"))
    cls = KINDS.get(settings.get("kind"))  # type: ignore[arg-type]
    return str(getattr(cls, "measure", PROTOCOL_DEFAULTS["measure"]))


# The estimator used when none is given: the original work's 30 edge points on [-1, 1].
DEFAULT_SETTINGS: dict = {"kind": "binning", "bins": 30, "range": [-1.0, 1.0]}


def default_estimator() -> Estimator:
    """A new default estimator, ``Binning(bins=30, range=(-1, 1))``.

    Returns
    -------
    Estimator
    """
    return from_settings(DEFAULT_SETTINGS)


def keyword_options(*names: str) -> Callable[[F], F]:
    """Decorator for a function whose options became keyword-only: the old positional form still works.

    ``names`` are the options that used to follow the data arguments positionally, in their old order. A call
    that passes them by position gets a :class:`DeprecationWarning` naming the keywords to use instead, and the
    same result. The wrapped function's signature (``inspect.signature``) is the new one.
    """
    def wrap(func: F) -> F:
        params = inspect.signature(func).parameters.values()
        n_data = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)

        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            if len(args) > n_data:
                extra = args[n_data:]
                if len(extra) > len(names):
                    raise TypeError(f"{func.__name__}() takes {n_data} positional arguments (the data) and "
                                    f"keyword options; got {len(args)} positional arguments")
                used = names[:len(extra)]
                twice = [n for n in used if n in kwargs]
                if twice:
                    raise TypeError(f"{func.__name__}() got multiple values for {', '.join(twice)}")
                warnings.warn(f"passing {', '.join(used)} to {func.__name__}() by position is deprecated and will "
                              f"be removed in the next release; pass {', '.join(f'{n}=...' for n in used)} by keyword",
                              DeprecationWarning, stacklevel=2)
                kwargs.update(zip(used, extra))
                args = args[:n_data]
            return func(*args, **kwargs)
        return call  # type: ignore[return-value]
    return wrap

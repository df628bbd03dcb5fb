"""Configuration objects over the functional estimators (the thin stateful layer).

An estimator object remembers its settings, has a short ``name`` for tables and figures, can be written to
JSON (``settings()``) and rebuilt from it (``from_settings``), and computes by being called on
``(activations, labels)``.
"""
from __future__ import annotations

from infoplane.estimators.binning import _flag, _grid, binned_mi
from infoplane.estimators.discrete import discrete_mi
from infoplane.estimators.kde import _PRECISIONS, kde_mi
from infoplane.estimators.noisy import DEFAULT_SAMPLES, noisy_mi
from infoplane.estimators.null import DEFAULT_PERMUTATIONS, permutation_null
from infoplane.estimators._inputs import positive_float


class Estimator:
    """Base class: subclasses set ``kind``, ``has_lower`` and implement ``_kwargs`` and ``__call__``."""

    kind = ""
    has_lower = False

    def __init__(self, name=None):
        if name is not None and (not isinstance(name, str) or not name or "," in name or "\n" in name):
            raise ValueError(f"estimator name must be a non-empty string without commas or newlines; got {name!r}")
        self._name = name

    @property
    def name(self) -> str:
        return self._name or self.default_name

    def settings(self) -> dict:
        """JSON-able description: ``{"kind": ..., "name": ..., **arguments}``."""
        return {"kind": self.kind, "name": self.name, **self._kwargs()}

    def __eq__(self, other):
        return isinstance(other, Estimator) and self.settings() == other.settings()

    def __hash__(self):
        return hash(repr(self))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._kwargs().items())
        return f"{type(self).__name__}({args})"


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

    def __init__(self, bins=None, range=None, width=None, adaptive=False, miller_madow=False, name=None):
        super().__init__(name)
        self.grid, self.bins, self.range, self.width = _grid(bins, range, width, adaptive)
        self.miller_madow = _flag(miller_madow, "miller_madow")

    @property
    def default_name(self):
        base = {"range": "binning", "width": "binning-width", "adaptive": "adaptive"}[self.grid]
        return base + ("-mm" if self.miller_madow else "")

    def _kwargs(self):
        if self.grid == "width":
            kw = {"width": self.width}
        elif self.grid == "adaptive":
            kw = {"bins": self.bins, "adaptive": True}
        else:
            kw = {"bins": self.bins, "range": list(self.range)}
        if self.miller_madow:  # only when set, so that settings written before the option read back unchanged
            kw["miller_madow"] = True
        return kw

    def __call__(self, activations, labels):
        kw = self._kwargs()
        if "range" in kw:
            kw["range"] = tuple(kw["range"])
        return binned_mi(activations, labels, **kw)


class KDE(Estimator):
    """Kolchinsky–Tracey kernel estimator (see :func:`infoplane.estimators.kde_mi`).

    Results carry both the upper (``ixt``, ``ity``) and lower (``ixt_lower``, ``ity_lower``) estimates.
    """

    kind = "kde"
    has_lower = True
    default_name = "kde"

    def __init__(self, noise_var=1e-3, precision="float32", memory_budget=None, name=None):
        super().__init__(name)
        self.noise_var = positive_float(noise_var, "noise_var")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}; got {precision!r}")
        self.precision = precision
        self.memory_budget = None if memory_budget is None else int(positive_float(memory_budget, "memory_budget"))

    def _kwargs(self):
        kw = {"noise_var": self.noise_var, "precision": self.precision}
        if self.memory_budget is not None:
            kw["memory_budget"] = self.memory_budget
        return kw

    def __call__(self, activations, labels):
        return kde_mi(activations, labels, **self._kwargs())


class Discrete(Estimator):
    """Exact discrete estimator: each distinct row of exact values is one symbol (see
    :func:`infoplane.estimators.discrete_mi`), for quantised networks.

    Examples
    --------
    >>> Discrete().name, Discrete(miller_madow=True).settings()
    ('discrete', {'kind': 'discrete', 'name': 'discrete-mm', 'miller_madow': True})
    """

    kind = "discrete"

    def __init__(self, miller_madow=False, name=None):
        super().__init__(name)
        self.miller_madow = _flag(miller_madow, "miller_madow")

    @property
    def default_name(self):
        return "discrete-mm" if self.miller_madow else "discrete"

    def _kwargs(self):
        return {"miller_madow": True} if self.miller_madow else {}

    def __call__(self, activations, labels):
        return discrete_mi(activations, labels, **self._kwargs())



# --- noisy-network estimator and permutation null (issue 10) ---------------------------------------------
class Noisy(Estimator):
    """Monte-Carlo mixture-entropy estimator of a noisy layer (see :func:`infoplane.estimators.noisy_mi`).

    Results carry ``ixt``, ``ity`` and their Monte-Carlo standard errors ``ixt_se``, ``ity_se`` (bits).
    """

    kind = "noisy"
    has_lower = False
    default_name = "noisy"
    fields = ("ixt", "ity", "ixt_se", "ity_se")

    def __init__(self, noise_var, samples=DEFAULT_SAMPLES, seed=0, precision="float64", memory_budget=None,
                 name=None):
        super().__init__(name)
        self.noise_var = positive_float(noise_var, "noise_var")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
            raise ValueError(f"samples must be an integer >= 2; got {samples!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer; got {seed!r}")
        if precision not in ("float32", "float64"):
            raise ValueError(f"precision must be 'float32' or 'float64'; got {precision!r}")
        self.samples, self.seed, self.precision = samples, seed, precision
        self.memory_budget = None if memory_budget is None else int(positive_float(memory_budget, "memory_budget"))

    def _kwargs(self):
        kw = {"noise_var": self.noise_var, "samples": self.samples, "seed": self.seed, "precision": self.precision}
        if self.memory_budget is not None:
            kw["memory_budget"] = self.memory_budget
        return kw

    def __call__(self, activations, labels):
        return noisy_mi(activations, labels, **self._kwargs())


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
    """

    kind = "with-null"

    def __init__(self, estimator, permutations=DEFAULT_PERMUTATIONS, seed=0, name=None):
        super().__init__(name)
        if isinstance(estimator, dict):
            estimator = from_settings(estimator)
        if not (callable(estimator) and all(hasattr(estimator, a) for a in ("name", "settings", "has_lower"))):
            raise TypeError(f"WithNull needs an estimator object such as infoplane.KDE(...) or its settings() "
                            f"dict; got {estimator!r}")
        if isinstance(estimator, WithNull):
            raise ValueError("WithNull(WithNull(...)) is not meaningful: wrap the estimator once")
        if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 2:
            raise ValueError(f"permutations must be an integer >= 2; got {permutations!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer; got {seed!r}")
        self.estimator, self.permutations, self.seed = estimator, permutations, seed
        self.has_lower = bool(estimator.has_lower)
        inner = getattr(estimator, "fields", None)
        if inner is None:
            inner = ("ixt", "ity") + (("ixt_lower", "ity_lower") if self.has_lower else ())
        self.fields = tuple(inner) + ("ity_null", "ity_null_sd")

    @property
    def default_name(self):
        return self.estimator.name

    def _kwargs(self):
        return {"estimator": self.estimator.settings(), "permutations": self.permutations, "seed": self.seed}

    def __call__(self, activations, labels):
        return permutation_null(self.estimator, activations, labels, permutations=self.permutations,
                                seed=self.seed)


_KINDS = {"binning": Binning, "kde": KDE, "discrete": Discrete, "noisy": Noisy, "with-null": WithNull}


def from_settings(settings: dict) -> Estimator:
    """Rebuild an estimator from :meth:`Estimator.settings` (e.g. read back from a run's meta.json)."""
    if not isinstance(settings, dict) or settings.get("kind") not in _KINDS:
        raise ValueError(
            f"unknown estimator settings {settings!r}: expected a dict with 'kind' in {sorted(_KINDS)}"
        )
    kw = {k: v for k, v in settings.items() if k != "kind"}
    cls = _KINDS[settings["kind"]]
    try:
        return cls(**kw)
    except TypeError as err:
        raise ValueError(f"unknown estimator setting for {settings['kind']}: {err}") from None


# --- kNN and Rényi estimators (issue 11): registered here, defined in knn_renyi_config.py ---
from infoplane.estimators.knn_renyi_config import KNN, Renyi  # noqa: E402

_KINDS.update(knn=KNN, renyi=Renyi)
# --- end issue 11 ---

"""Configuration objects over the functional estimators (the thin stateful layer).

An estimator object remembers its settings, has a short ``name`` for tables and figures, can be written to
JSON (``settings()``) and rebuilt from it (``from_settings``), and computes by being called on
``(activations, labels)``.
"""
from __future__ import annotations

from .binning import _grid, binned_mi
from .kde import _PRECISIONS, kde_mi
from ._inputs import positive_float


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
    """

    kind = "binning"

    def __init__(self, bins=None, range=None, width=None, adaptive=False, name=None):
        super().__init__(name)
        self.grid, self.bins, self.range, self.width = _grid(bins, range, width, adaptive)

    @property
    def default_name(self):
        return {"range": "binning", "width": "binning-width", "adaptive": "adaptive"}[self.grid]

    def _kwargs(self):
        if self.grid == "width":
            return {"width": self.width}
        if self.grid == "adaptive":
            return {"bins": self.bins, "adaptive": True}
        return {"bins": self.bins, "range": list(self.range)}

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


_KINDS = {"binning": Binning, "kde": KDE}


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
from .knn_renyi_config import KNN, Renyi  # noqa: E402

_KINDS.update(knn=KNN, renyi=Renyi)
# --- end issue 11 ---

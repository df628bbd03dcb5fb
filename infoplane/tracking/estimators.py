"""Which estimators a tracker (or :func:`infoplane.estimate`) runs: objects or their ``settings()`` dicts, checked,
with the original 30-bin grid on [-1, 1] as the default."""
from __future__ import annotations

from typing import Any

from infoplane.estimators.base import default_estimator, from_settings

__all__ = ["as_estimators"]


def as_estimators(estimators: Any) -> list:
    """Estimator objects from objects or ``settings()`` dicts (default: the original 30-bin grid on [-1, 1])."""
    if estimators is None:
        estimators = [default_estimator()]
    elif isinstance(estimators, dict) or callable(estimators):
        estimators = [estimators]
    out = []
    for est in estimators:
        if isinstance(est, dict):
            est = from_settings(est)
        if not (callable(est) and all(hasattr(est, a) for a in ("name", "settings", "has_lower"))):
            raise TypeError(f"estimators must be estimator objects such as infoplane.Binning(...) or "
                            f"infoplane.KDE(...), or their settings() dicts; got {est!r}")
        out.append(est)
    if not out:
        raise ValueError("estimators is empty: give at least one, e.g. [infoplane.Binning(bins=30, range=(-1, 1))]")
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"estimator names must be unique, {dupes} repeats; pass name= to tell them apart")
    return out

"""Statistics behind the figures, numpy only: seed medians and quartiles, ceilings, saturation, and whether a
set of epochs is log-spaced. Drawing lives in :mod:`infoplane.viz.planes`; anything that wants the same numbers
without matplotlib (a report, a table) uses this module.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from infoplane.estimators.base import kind_measure
from infoplane.runs.reader import Run, as_run
from infoplane.tracking.gradients import phase_transition

__all__ = ["as_run", "values", "median", "quartiles", "ceilings", "saturated_layers", "log_spaced", "transitions",
           "SATURATION_TOL", "SATURATION_SHARE", "ChainReport", "chain_report", "chain_summary", "Scale",
           "plane_scale", "estimator_settings"]

#: A layer is saturated when I(X;T) >= (1 - SATURATION_TOL) * log2 N ...
SATURATION_TOL = 0.05
#: ... at more than this share of its recorded epochs.
SATURATION_SHARE = 0.5


def values(run: Run, estimator: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """I(X;T) and I(T;Y) as ``[n_seeds, n_epochs, n_layers]`` arrays (bits), after checking there is data."""
    if len(run.epochs) == 0 or not run.layers:
        raise ValueError(f"{run!r} has no recorded epochs yet; nothing to plot")
    return run.get("ixt", estimator=estimator), run.get("ity", estimator=estimator)


def median(a: np.ndarray) -> np.ndarray:
    """Median over the first (seed) axis; all-NaN slices (a layer absent at an epoch) stay NaN, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=0)


def quartiles(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """25th and 75th percentiles over the first (seed) axis."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(a, 25, axis=0), np.nanpercentile(a, 75, axis=0)


def ceilings(run: Run) -> tuple[Optional[float], Optional[float]]:
    """(log2 N, H(Y)) in bits; None where the run does not say."""
    log2_n = run.log2_n
    if log2_n is None and run.n:
        log2_n = math.log2(run.n)
    return log2_n, run.h_y


@dataclass(frozen=True)
class Scale:
    """The axes an estimator's values are drawn on: their labels and ceilings.

    Attributes
    ----------
    measure : str
        ``"shannon"`` or ``"renyi"`` (the estimator's declared ``measure``).
    x_label, y_label : str
        Axis labels, with the unit (bits).
    x_ceiling, y_ceiling : float or None
        The largest value the measure can take on this probe set (bits); None where the run does not say.
    x_name, y_name : str
        The ceilings' names, drawn beside their lines.
    """

    measure: str
    x_label: str
    y_label: str
    x_ceiling: Optional[float]
    y_ceiling: Optional[float]
    x_name: str
    y_name: str


def estimator_settings(run: Run, estimator: Optional[str] = None) -> dict:
    """The estimator's ``settings()`` as ``meta.json`` holds them (empty when the run does not list them)."""
    name = run.estimators[0] if estimator is None and run.estimators else estimator
    for entry in run.meta.get("estimators", []) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get("settings") or {}
    return {}


def plane_scale(run: Run, estimator: Optional[str] = None) -> Scale:
    """Axis labels and ceilings for an estimator's values, by what the estimator declares it measures.

    Shannon estimates: I(X;T) up to log2 N, I(T;Y) up to H(Y). Matrix-based Rényi estimates: I_alpha(X;T) up to
    log2 N (the largest matrix entropy of N samples) and I_alpha(T;Y) up to log2 K for K classes (the largest
    Rényi entropy of K labels, of any order; H(Y) is no bound for it).

    Parameters
    ----------
    run : Run
    estimator : str or None
        Estimator name; None = the run's first.

    Returns
    -------
    Scale
    """
    settings = estimator_settings(run, estimator)
    measure = kind_measure(settings)
    log2_n, h_y = ceilings(run)
    if measure == "renyi":
        inner = settings.get("estimator") if settings.get("kind") == "with-null" else settings
        alpha = (inner or {}).get("alpha")
        order = f"alpha={float(alpha):.4g}" if isinstance(alpha, (int, float)) else "alpha"
        k = run.meta.get("n_classes")
        log2_k = math.log2(k) if isinstance(k, int) and k > 0 else None
        return Scale(measure, f"Rényi I_α(X;T) [bits, {order}]", f"Rényi I_α(T;Y) [bits, {order}]", log2_n, log2_k,
                     "log2 N", "log2 K")
    target = run.meta.get("target")  # a run seen through a side variable Z (Run.for_target)
    z = target if target else "Y"
    return Scale(measure, "I(X;T) [bits]", f"I(T;{z}) [bits]", log2_n, h_y, "log2 N", f"H({z})")


def saturated_layers(run: Union[Run, str, os.PathLike], estimator: Optional[str] = None) -> list[str]:
    """Layers whose I(X;T) sits at its ceiling log2 N for most recorded epochs.

    A layer is saturated when its I(X;T) (the median over seeds) is within 5% of log2 N at more than half of the
    epochs where it was recorded. Its plotted I(X;T) then reflects the estimator's resolution (number and range
    of bins, or the KDE noise) rather than the network: every probe sample falls in its own cell.

    Parameters
    ----------
    run : Run or path
    estimator : str or None
        Estimator name; None = the run's first.

    Returns
    -------
    list of str
        Saturated layer names in model order (empty when the run does not record N).
    """
    run = as_run(run)
    ixt, _ = values(run, estimator)
    log2_n, _ = ceilings(run)
    if not log2_n:
        return []
    med = median(ixt)  # [n_epochs, n_layers]
    out = []
    for j, layer in enumerate(run.layers):
        col = med[:, j][np.isfinite(med[:, j])]
        if col.size and np.mean(col >= (1 - SATURATION_TOL) * log2_n) > SATURATION_SHARE:
            out.append(layer)
    return out


def log_spaced(epochs: Union[np.ndarray, Sequence[float]], schedule_kind: Optional[str] = None) -> bool:
    """Whether epochs call for a log colour/time scale (the rule of :func:`infoplane.viz.planes.epoch_norm`)."""
    e1 = np.unique(np.asarray(epochs, dtype=float)) + 1.0
    if e1.size < 2:
        return False
    if schedule_kind == "log":
        return True
    lo, hi = e1[0], e1[-1]
    # Evenly spaced epochs put about 1/sqrt(hi/lo) of their points below the geometric midpoint (< 10% when they
    # span two decades); log-spaced ones put about half there.
    return bool(hi / lo >= 100 and np.mean(e1 < math.sqrt(lo * hi)) >= 0.25)


def transitions(run: Run, *, window: int = 5, threshold: float = 1.0) -> dict[str, Optional[int]]:
    """Per layer, the epoch at which the gradients pass from drift to diffusion.

    :func:`~infoplane.tracking.gradients.phase_transition` applied to the seed median of each layer's SNR over the
    recorded epochs that have one (epochs without optimiser steps, such as 0, are left out).

    Parameters
    ----------
    run : Run
    window : int, default 5
        Recorded epochs per running-median window.
    threshold : float, default 1.0
        SNR below which the fluctuations dominate.

    Returns
    -------
    dict of str to int or None
        Layer name -> transition epoch, None where the SNR never settles below ``threshold``; empty for a run
        without gradient statistics. Frozen layers are left out.
    """
    g = run.gradients
    if not g:
        return {}
    snr = median(g.get("snr"))  # [n_epochs, n_layers]
    out: dict[str, Optional[int]] = {}
    for j, layer in enumerate(g.layers):
        if layer in g.frozen:
            continue
        ok = ~np.isnan(snr[:, j])
        out[layer] = phase_transition(g.epochs[ok], snr[ok, j], window=window, threshold=threshold)
    return out
@dataclass
class ChainReport:
    """The data-processing inequality along a run's layers, on the seed medians of each recorded epoch.

    Attributes
    ----------
    applies : bool or None
        Whether the tracked layers form a chain (``meta["chain"]``): True, False (a skip connection: nothing
        is checked), or None (not known: checked, and the report says so).
    why : str
        Why ``applies`` is what it is.
    ixt, ity : numpy.ndarray of bool, shape [n_epochs, n_layers]
        ``[e, k]``: layer k holds more I(X;T) (I(T;Y)) than layer k - 1 at epoch e by more than the tolerance
        (column 0 is always False). All False when ``applies`` is False.
    tol : float
        The tolerance used beyond the estimates' own standard errors (bits).
    count : int
        Violating (epoch, layer, quantity) triples.
    """

    applies: Optional[bool]
    why: str
    ixt: np.ndarray
    ity: np.ndarray
    tol: float
    count: int

    @property
    def epochs(self) -> list[int]:
        """Indices into ``run.epochs`` with at least one violation."""
        return [int(e) for e in np.nonzero((self.ixt | self.ity).any(axis=1))[0]]


def chain_report(run: Union[Run, str, os.PathLike], estimator: Optional[str] = None, *,
                 tol: float = 0.0) -> ChainReport:
    """Check I(X;T_1) >= I(X;T_2) >= ... and I(T_1;Y) >= I(T_2;Y) >= ... at every recorded epoch of a run.

    The check runs on the seed medians (the points the plane draws), with :func:`infoplane.bounds.chain_check`.
    Growth from one layer to the next counts as a violation when it exceeds ``tol`` plus, for estimators that
    give standard errors (``ixt_se``/``ity_se``), twice the standard error of the difference
    (``2 sqrt(se_k**2 + se_(k+1)**2)``, with the seeds' standard errors combined as for a median of means).

    Parameters
    ----------
    run : Run or path
    estimator : str or None
        Estimator name; None = the run's first.
    tol : float, default 0.0
        The estimator's stated error in bits, beyond which growth is a violation.

    Returns
    -------
    ChainReport
    """
    from infoplane.bounds import ROUNDING_BITS, chain_check

    run = as_run(run)
    ixt, ity = values(run, estimator)
    info = run.meta.get("chain") or {}
    applies = info.get("chain") if info else None
    why = info.get("why", "the run does not say whether its layers form a chain")
    shape = (len(run.epochs), len(run.layers))
    out = {"ixt": np.zeros(shape, dtype=bool), "ity": np.zeros(shape, dtype=bool)}
    if applies is not False and len(run.layers) >= 2:
        for field, vals in (("ixt", ixt), ("ity", ity)):
            med = median(vals)
            found = chain_check(med, tol=tol).violations
            se = run.get(f"{field}_se", estimator)
            if np.isfinite(se).any():  # growth must also exceed twice the standard error of the difference
                se_med = np.sqrt(median(se ** 2) / max(1, len(run.seeds)))
                margin = np.nan_to_num(2 * np.sqrt(se_med[:, :-1] ** 2 + se_med[:, 1:] ** 2), nan=0.0)
                with np.errstate(invalid="ignore"):
                    found &= np.diff(med, axis=-1) > tol + ROUNDING_BITS + margin
            out[field][:, 1:] = found
    count = int(out["ixt"].sum() + out["ity"].sum())
    return ChainReport(applies, why, out["ixt"], out["ity"], float(tol), count)


def chain_summary(run: Union[Run, str, os.PathLike], estimator: Optional[str] = None) -> str:
    """One line on the data-processing inequality for a text summary (see :func:`chain_report`)."""
    run = as_run(run)
    if len(run.layers) < 2 or len(run.epochs) == 0:
        return "chain check: fewer than two layers, nothing to check"
    rep = chain_report(run, estimator)
    if rep.applies is False:
        return f"chain check: not a chain ({rep.why}); the data-processing inequality does not apply"
    note = "" if rep.applies else f" (whether the layers form a chain is not known: {rep.why})"
    if rep.count == 0:
        return f"chain check: no violation of the data-processing inequality in {len(run.epochs)} epochs{note}"
    where = [int(run.epochs[e]) for e in rep.epochs]
    shown = ", ".join(map(str, where[:8])) + (", ..." if len(where) > 8 else "")
    return (f"chain check: {rep.count} violation(s) of the data-processing inequality (a later layer holding more "
            f"than an earlier one) at {len(where)} of {len(run.epochs)} epochs ({shown}): estimation error of "
            f"{run.estimators[0] if estimator is None else estimator}{note}")

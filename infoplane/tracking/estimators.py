"""Which estimators a tracker (or :func:`infoplane.estimate`) runs: objects or their ``settings()`` dicts, checked,
with the original 30-bin grid on [-1, 1] as the default; and, per layer, the version of each that fits the layer
(its reduction and the noise the network adds to it)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from torch import nn

from infoplane.capture.reduce import Reduction
from infoplane.estimators.base import LayerContext, default_estimator, for_layer, from_settings
from infoplane.networks.noise import noise_levels

__all__ = ["as_estimators", "layer_contexts", "layer_noise", "per_layer", "layer_settings"]


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


def layer_noise(model: nn.Module, layers: Sequence) -> dict[str, float]:
    """The standard deviation of the noise the network adds to each recorded layer that gets some
    (:func:`infoplane.networks.noise.noise_levels`), for meta.json and :func:`layer_contexts`; empty when none."""
    levels = noise_levels(model)
    return {layer.name: levels[layer.name] for layer in layers if layer.name in levels}


def layer_contexts(levels: Union[nn.Module, dict], layers: Sequence, reductions: dict) -> dict[str, LayerContext]:
    """What each recorded layer offers an estimator: its shape, reduction, and the network's own noise on it.

    Parameters
    ----------
    levels : nn.Module or dict
        The (first) model, whose :func:`~infoplane.add_noise` modules give the noise levels, or those levels
        (layer name -> noise standard deviation, as :func:`infoplane.networks.noise.noise_levels` gives them).
    layers : list of Layer
        The resolved layers (:func:`infoplane.capture.hooks.resolve_layers`).
    reductions : dict
        Layer name -> :class:`~infoplane.capture.reduce.Reduction`.

    Returns
    -------
    dict
        Layer name -> :class:`~infoplane.estimators.base.LayerContext`.
    """
    if isinstance(levels, nn.Module):
        levels = noise_levels(levels)
    out = {}
    for layer in layers:
        red: Reduction = reductions.get(layer.name) or Reduction("flatten")
        shape = layer.shape or (layer.width,)
        std: Optional[float] = levels.get(layer.name)
        var: Optional[float] = None
        why = ""
        if not levels:
            why = "gets no noise: the network adds none anywhere (it has no add_noise modules)"
        elif std is None:
            noisy = ", ".join(levels)
            why = (f"gets no noise of its own (the network adds noise after {noisy}; record those layers, e.g. "
                   f"layers=[...] in the model file)")
        elif layer.transform is not None or layer.pool is not None or layer.select is not None:
            what = layer.transform or (f"{layer.pool}-pooled" if layer.pool else "selected")
            why = f"is recorded {what}, which changes its noise in a way no single variance describes"
        else:
            try:
                var = red.noise_variance(shape, std ** 2)
            except ValueError as err:
                why = f"has no single noise variance after its reduction ({err})"
        out[layer.name] = LayerContext(layer.name, None if layer.shape is None else tuple(layer.shape), red.spec,
                                       std, var, why, bool(levels))
    return out


def per_layer(estimators: Sequence, contexts: dict[str, LayerContext]) -> dict[str, list]:
    """Each layer's version of every estimator (:func:`infoplane.estimators.base.for_layer`), checked up front.

    Returns
    -------
    dict
        Layer name -> list of estimator objects, in the order of ``estimators`` (the same objects where the
        settings do not depend on the layer).

    Raises
    ------
    ValueError
        An estimator cannot measure a layer; the message names both and says why.
    """
    return {name: [for_layer(est, ctx) for est in estimators] for name, ctx in contexts.items()}


def layer_settings(estimators: Sequence, bound: dict[str, list]) -> Optional[dict]:
    """For meta.json: ``{estimator name: {layer: settings}}`` of the estimators whose settings depend on the
    layer, or None when none does (so that older runs' meta reads back unchanged)."""
    out: dict = {}
    for i, est in enumerate(estimators):
        if any(ests[i].settings() != est.settings() for ests in bound.values()):
            out[est.name] = {layer: ests[i].settings() for layer, ests in bound.items()}
    return out or None

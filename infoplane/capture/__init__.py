"""From a network to per-layer activations: which layers (:mod:`~infoplane.capture.hooks`: default choice,
selectors, poolings), the probe pass with hooks that are always removed, and reductions of wide layers before
estimating (:mod:`~infoplane.capture.reduce`)."""
from infoplane.capture.hooks import (
    ACTIVATIONS,
    PARAMETRIC,
    POOLINGS,
    Layer,
    as_probe_tensors,
    model_device,
    probe,
    resolve_layers,
)
from infoplane.capture.reduce import reduce_activations

__all__ = ["Layer", "ACTIVATIONS", "PARAMETRIC", "POOLINGS", "resolve_layers", "probe", "model_device",
           "as_probe_tensors", "reduce_activations"]

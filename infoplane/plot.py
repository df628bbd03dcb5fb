"""Figures of information planes: the public face of :mod:`infoplane.viz`.

>>> import infoplane.plot as P          # doctest: +SKIP
>>> P.information_plane("runs/demo/fraction-0.85")   # doctest: +SKIP
"""
from infoplane.viz.animation import animate
from infoplane.viz.gradients import gradients
from infoplane.viz.planes import (
    CMAP,
    FORMATS,
    MARKERS,
    SaturationWarning,
    compare,
    curves,
    epoch_norm,
    information_plane,
    write_figures,
)
from infoplane.viz.sharpness import corruption_error, corruption_level, memorization_curves, plane, sharpness_curves
from infoplane.viz.stats import SATURATION_SHARE, SATURATION_TOL, saturated_layers, transitions

__all__ = ["information_plane", "compare", "curves", "gradients", "transitions", "write_figures", "saturated_layers",
           "epoch_norm", "SaturationWarning", "animate", "CMAP", "MARKERS", "FORMATS", "SATURATION_SHARE",
           "SATURATION_TOL", "sharpness_curves", "memorization_curves", "corruption_error", "corruption_level",
           "plane"]

"""Sinks: where a tracker logs its rows besides the run directory (TensorBoard, W&B, your own).

The sink protocol and :func:`as_sinks` belong to tracking (:mod:`infoplane.tracking.sinks`); what the backends
share (:func:`scalar_tags`, :func:`plane_figure`, ...) is in :mod:`infoplane.integrations.backend`. This module
gathers both under the name users import.
"""
from __future__ import annotations

from infoplane.integrations.backend import (
    FIELDS,  # noqa: F401 (re-exported)
    as_run,
    log_run,
    plane_figure,
    require,
    rows_by_epoch,
    scalar_tags,
)
from infoplane.tracking.sinks import Sink, as_sinks

__all__ = ["as_sinks", "Sink", "scalar_tags", "plane_figure", "rows_by_epoch", "log_run", "require", "as_run"]

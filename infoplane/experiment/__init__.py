"""Whole studies from a model file (the engine of ``infoplane track``): :mod:`~infoplane.experiment.job` (settings
checked, one run per training fraction), :mod:`~infoplane.experiment.fraction` (one fraction trained and tracked),
:mod:`~infoplane.experiment.raysweep` (fractions as Ray tasks) and :mod:`~infoplane.experiment.errors`."""
from infoplane.experiment.errors import STATE_FILE, ConfigError, RunExistsError
from infoplane.experiment.fraction import FractionPlan, TrackJob
from infoplane.experiment.job import PROBES, SPLITS, check_outputs, fraction_dir, summary, track

__all__ = ["track", "summary", "ConfigError", "RunExistsError", "TrackJob", "FractionPlan", "check_outputs",
           "fraction_dir", "SPLITS", "PROBES", "STATE_FILE"]

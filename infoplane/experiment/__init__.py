"""Whole studies from a model file (the engine of ``infoplane track``): :mod:`~infoplane.experiment.job` (settings
checked, one run per training fraction) and :mod:`~infoplane.experiment.raysweep` (fractions as Ray tasks)."""
from infoplane.experiment.job import (ConfigError, FractionPlan, RunExistsError, TrackJob, check_outputs,
                                      fraction_dir, summary, track)

__all__ = ["track", "summary", "ConfigError", "RunExistsError", "TrackJob", "FractionPlan", "check_outputs",
           "fraction_dir"]

"""infoplane: information planes of neural networks while they train.

The package reads as the flow of its data: :mod:`infoplane.data` (data sets, labels, probe sets, model files) ->
:mod:`infoplane.capture` (layers and their activations) -> :mod:`infoplane.estimators` -> :mod:`infoplane.tracking`
(when to record, the tracker) -> :mod:`infoplane.runs` (the run directory) -> :mod:`infoplane.viz` (figures,
animations, the report; :mod:`infoplane.plot` is their public face). :mod:`infoplane.experiment` and
:mod:`infoplane.train` run whole studies; :mod:`infoplane.networks` makes networks whose information is finite.
Beside the plane: :mod:`infoplane.bounds` (the information-bottleneck curve, the data-processing inequality),
:mod:`infoplane.sharpness` (flatness of the loss) and :mod:`infoplane.optim` (SAM and ASAM).
"""
import sys

from infoplane import _compat, optim, sharpness
from infoplane._version import __version__
from infoplane.bounds import IBCurve, ib_curve
from infoplane.estimators import KDE, KNN, Binning, Discrete, Noisy, Renyi, WithNull
from infoplane.networks.noise import add_noise
from infoplane.networks.quantize import quantize
from infoplane.runs.reader import Run, load_run
from infoplane.runs.reestimate import estimate
from infoplane.tracking.schedule import every, log_schedule, saxe_schedule
from infoplane.tracking.tracker import Tracker, UnclosedTrackerWarning, UnfinishedScheduleWarning
from infoplane.viz.report import report  # Plotly is imported when report() is called

_compat.install()
sys.modules[__name__].__class__ = _compat.Package

__all__ = ["Binning", "KDE", "Discrete", "Noisy", "WithNull", "KNN", "Renyi", "quantize", "add_noise", "Tracker",
           "log_schedule", "every", "saxe_schedule", "load_run", "Run", "estimate", "UnclosedTrackerWarning", "report",
           "UnfinishedScheduleWarning", "ib_curve", "IBCurve", "optim", "sharpness", "__version__"]

"""infoplane: information planes of neural networks while they train."""

__version__ = "0.1.0"

from .estimators import KDE, Binning  # noqa: E402
from .estimators import KNN, Renyi  # noqa: E402  (issue 11)
from .schedule import every, log_schedule, saxe_schedule  # noqa: E402
from .store import Run, load_run  # noqa: E402
from .tracker import Tracker, estimate  # noqa: E402

__all__ = ["Binning", "KDE", "KNN", "Renyi", "Tracker", "log_schedule", "every", "saxe_schedule", "load_run", "Run", "estimate"]

"""infoplane: information planes of neural networks while they train."""

__version__ = "0.1.0"

from .estimators import KDE, KNN, Binning, Discrete, Noisy, Renyi, WithNull  # noqa: E402
from .quantize import quantize  # noqa: E402
from .schedule import every, log_schedule, saxe_schedule  # noqa: E402
from .run import Run, load_run  # noqa: E402
from .tracker import Tracker, UnclosedTrackerWarning, estimate  # noqa: E402
from .html_report import report  # noqa: E402  (Plotly is imported when report() is called)
from .noise import add_noise  # noqa: E402

__all__ = ["Binning", "KDE", "Discrete", "Noisy", "WithNull", "KNN", "Renyi", "quantize", "add_noise", "Tracker",
           "log_schedule", "every", "saxe_schedule", "load_run", "Run", "estimate", "UnclosedTrackerWarning", "report"]

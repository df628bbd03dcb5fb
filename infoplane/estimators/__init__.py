"""Information estimators: pure functions on batched tensors, and configuration objects over them.

>>> import torch
>>> from infoplane.estimators import binned_mi
>>> acts = torch.rand(5, 100, 3) * 2 - 1          # 5 epochs, 100 samples, 3 units
>>> labels = torch.arange(100) % 2
>>> r = binned_mi(acts, labels, bins=30, range=(-1.0, 1.0))
>>> tuple(r.ixt.shape)
(5,)
"""
from .binning import BinnedResult, binned_mi
from .kde import KDEResult, kde_mi
from .config import KDE, Binning, Estimator, from_settings
# --- issue 10: noisy networks and the permutation null
from .noisy import NoisyResult, noisy_mi
from .null import NullResult, permutation_null
from .config import Noisy, WithNull

__all__ = ["binned_mi", "kde_mi", "BinnedResult", "KDEResult", "Binning", "KDE", "Estimator", "from_settings",
           "noisy_mi", "NoisyResult", "Noisy", "permutation_null", "NullResult", "WithNull"]

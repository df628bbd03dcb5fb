"""Information estimators: pure functions on batched tensors, and configuration objects over them.

>>> import torch
>>> from infoplane.estimators import binned_mi
>>> acts = torch.rand(5, 100, 3) * 2 - 1          # 5 epochs, 100 samples, 3 units
>>> labels = torch.arange(100) % 2
>>> r = binned_mi(acts, labels, bins=30, range=(-1.0, 1.0))
>>> tuple(r.ixt.shape)
(5,)
"""
from infoplane.estimators._cpu.count_kernel import KernelFallbackWarning
from infoplane.estimators.base import Estimator, PlaneResult, default_estimator, from_settings
from infoplane.estimators.binning import BinnedResult, BinRangeWarning, binned_mi
from infoplane.estimators.config import KDE, KNN, Binning, Discrete, Noisy, Renyi, WithNull
from infoplane.estimators.discrete import DiscreteResult, discrete_mi
from infoplane.estimators.gaussian import GaussianResult, gaussian_mi
from infoplane.estimators.kde import KDEResult, kde_mi
from infoplane.estimators.knn import KNNResult, ksg_mi, ross_mi
from infoplane.estimators.noisy import NoisyResult, noisy_mi
from infoplane.estimators.null import NullResult, permutation_null
from infoplane.estimators.renyi import RenyiResult, renyi_entropy, renyi_mi

__all__ = ["binned_mi", "kde_mi", "discrete_mi", "noisy_mi", "permutation_null", "BinnedResult", "KDEResult",
           "NoisyResult", "NullResult", "Binning", "KDE", "Discrete", "Noisy", "WithNull", "Estimator",
           "from_settings", "ksg_mi", "ross_mi", "renyi_entropy", "renyi_mi", "KNNResult", "RenyiResult",
           "PlaneResult", "KNN", "Renyi", "KernelFallbackWarning", "DiscreteResult", "default_estimator",
           "gaussian_mi", "GaussianResult", "BinRangeWarning"]

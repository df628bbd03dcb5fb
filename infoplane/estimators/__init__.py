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
from .knn import KNNResult, ksg_mi, ross_mi  # issue 11
from .renyi import RenyiResult, renyi_entropy, renyi_mi  # issue 11
from .knn_renyi_config import KNN, PlaneResult, Renyi  # issue 11

__all__ = ["binned_mi", "kde_mi", "BinnedResult", "KDEResult", "Binning", "KDE", "Estimator", "from_settings",
           "ksg_mi", "ross_mi", "renyi_entropy", "renyi_mi", "KNNResult", "RenyiResult", "PlaneResult", "KNN", "Renyi"]

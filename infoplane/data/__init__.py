"""What goes in: built-in data sets and splits (:mod:`~infoplane.data.datasets`, re-exported here), the standard
image sets from their distribution files (:mod:`~infoplane.data.standard`), corrupted copies for randomisation tests
(:mod:`~infoplane.data.corrupt`), the one label validator (:mod:`~infoplane.data.labels`), probe sets
(:mod:`~infoplane.data.probeset`) and model files (:mod:`~infoplane.data.modelfile`)."""
from infoplane.data import datasets as _datasets
from infoplane.data.corrupt import Corruption, corrupt
from infoplane.data.datasets import *  # noqa: F401,F403  (the data-set API is infoplane.data's own)

__all__ = [*_datasets.__all__, "corrupt", "Corruption"]

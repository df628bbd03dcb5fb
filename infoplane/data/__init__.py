"""What goes in: built-in data sets and splits (:mod:`~infoplane.data.datasets`, re-exported here), the one label
validator (:mod:`~infoplane.data.labels`), probe sets (:mod:`~infoplane.data.probeset`) and model files
(:mod:`~infoplane.data.modelfile`)."""
from infoplane.data.datasets import *  # noqa: F401,F403  (the data-set API is infoplane.data's own)
from infoplane.data.datasets import __all__  # noqa: F401
from infoplane.data.corrupt import Corruption, corrupt  # noqa: F401  (randomisation tests: noisy labels, inputs)

"""Networks whose information is finite: fake quantisation (:mod:`~infoplane.networks.quantize`) and Gaussian
noise inside the network (:mod:`~infoplane.networks.noise`)."""
from infoplane.networks.noise import add_noise
from infoplane.networks.quantize import quantize

__all__ = ["quantize", "add_noise"]

"""The 12-10-7-5-4-3-2 tanh network of ``tishby_tanh.py`` with every tanh output quantised to 8 bits.

Each hidden unit takes at most 256 values (evenly spaced on [-1, 1]), so every hidden layer has a finite
alphabet and the ``discrete`` estimator gives its exact I(X;T) and I(T;Y) on the probe set, with no bins to
choose. Gradients pass straight through the rounding. The softmax output is not quantised (the loss reads the
logits), so only the hidden layers are finite-alphabet. Track it with
``infoplane track examples/tishby_tanh_q8.py --estimator discrete``.
"""
from tishby_tanh import build_model as build_unquantized  # the model file's folder is on sys.path

from infoplane.networks import quantize

BITS = 8


def build_model():
    return quantize(build_unquantized(), bits=BITS)

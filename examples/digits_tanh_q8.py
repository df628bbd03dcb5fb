"""A 64-32-16-10 tanh MLP on scikit-learn's 8x8 digits with every tanh output quantised to 8 bits.

As ``tishby_tanh_q8.py`` does for the 12-bit task: each hidden unit takes at most 256 values (evenly spaced on
[-1, 1]), so both hidden layers have finite alphabets and the ``discrete`` estimator gives their exact I(X;T)
and I(T;Y) on the probe set. Gradients pass straight through the rounding; the logits are not quantised. Track
it with ``infoplane track examples/digits_tanh_q8.py --estimator discrete``.
"""
import math

from torch import nn

from infoplane.networks import quantize

WIDTHS = [64, 32, 16, 10]  # 64 pixels in, two tanh layers, 10 class logits out
BITS = 8


def data():
    from infoplane.data import digits  # imported here so that loading this file stays cheap

    return digits()  # inputs float32 [1797, 64] in [0, 1], labels int64 [1797]


def build_model():
    layers = []
    for fan_in, fan_out in zip(WIDTHS[:-2], WIDTHS[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    layers.append(nn.Linear(WIDTHS[-2], WIDTHS[-1]))
    model = nn.Sequential(*layers)
    for module in model:
        if isinstance(module, nn.Linear):  # as the other examples: truncated normal, std 1/sqrt(fan_in), zero biases
            std = 1.0 / math.sqrt(module.in_features)
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(module.bias)
    return quantize(model, bits=BITS)

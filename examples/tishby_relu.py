"""The 12-10-7-5-4-3-2 network of Shwartz-Ziv & Tishby (2017) with ReLU units instead of tanh.

Track it with ``infoplane track examples/tishby_relu.py``. The default data (the 12-bit task),
optimiser (Adam, lr 4e-4) and loss (cross-entropy) apply, since this file overrides none of them.

ReLU outputs are unbounded: on the original fixed grid over [-1, 1] every value >= 1 falls into one
cell, which by itself looks like compression. Compare with adaptive bins or KDE before reading the
plane.
"""
import math

from torch import nn

WIDTHS = [12, 10, 7, 5, 4, 3, 2]


def init_like_original(module):
    # The original code draws weights from a normal truncated at two standard deviations, with
    # std 1/sqrt(fan_in), and starts biases at zero (not torch's default uniform init).
    if isinstance(module, nn.Linear):
        std = 1.0 / math.sqrt(module.in_features)
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(module.bias)


def build_model():
    layers = []
    for fan_in, fan_out in zip(WIDTHS[:-2], WIDTHS[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    # The last layer gives logits; the cross-entropy loss applies the softmax.
    layers.append(nn.Linear(WIDTHS[-2], WIDTHS[-1]))
    return nn.Sequential(*layers).apply(init_like_original)

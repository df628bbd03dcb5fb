"""The 12-10-7-5-4-3-2 tanh network of Shwartz-Ziv & Tishby (2017), as an infoplane model file.

Track it with ``infoplane track examples/tishby_tanh.py``. The default data (the 12-bit task),
optimiser (Adam, lr 4e-4) and loss (cross-entropy) apply, since this file overrides none of them.
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
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    # The last layer gives logits; the cross-entropy loss applies the softmax.
    layers.append(nn.Linear(WIDTHS[-2], WIDTHS[-1]))
    return nn.Sequential(*layers).apply(init_like_original)

"""A small ReLU MLP on scikit-learn's 8x8 digits (1797 images, 10 classes), as an infoplane model file.

Track it with ``infoplane track examples/digits_relu.py``; it is digits_mlp.py with ReLU units.
Like that file it brings its own data through ``data()``.
"""
import math

from torch import nn

WIDTHS = [64, 32, 20, 14, 10]  # 64 pixels in, three ReLU layers, 10 class logits out


def data():
    # Imported inside the function so that loading this file stays cheap and the import only
    # happens when the data are actually needed.
    from infoplane.data import digits

    return digits()  # inputs float32 [1797, 64] in [0, 1], labels int64 [1797]


def build_model():
    layers = []
    for fan_in, fan_out in zip(WIDTHS[:-2], WIDTHS[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(WIDTHS[-2], WIDTHS[-1]))
    model = nn.Sequential(*layers)
    for module in model:
        if isinstance(module, nn.Linear):
            # Same initialisation as the 12-bit examples: truncated normal, std 1/sqrt(fan_in).
            std = 1.0 / math.sqrt(module.in_features)
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(module.bias)
    return model

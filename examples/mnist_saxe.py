"""Saxe et al.'s MNIST network (784-1024-20-20-20-10, tanh, SGD at learning rate 1e-3), as an infoplane model file.

The images come from MNIST's distribution files (see docs/data.md: put them into the cache, or let
``infoplane.data.load("mnist", download=True)`` fetch them once). Track it with

    infoplane track examples/mnist_saxe.py --batch-size 128 --epochs 100 --fraction 0.8571 --probe test \\
        --estimator kde --noise-var 0.1 --schedule saxe

``--fraction 0.8571`` trains on 60,000 of the 70,000 images (a stratified split, not the distribution's own) and
``--probe test`` measures the plane on the other 10,000, as Saxe et al. did on the test set (ceiling 13.29 bits).
"""
import math

import torch
from torch import nn

WIDTHS = [784, 1024, 20, 20, 20, 10]


def data():
    # Imported here so that loading the model file stays cheap.
    from infoplane.data import load

    return load("mnist")  # inputs float32 [70000, 784] in [0, 1], labels int64 [70000]


def build_model():
    layers = []
    for fan_in, fan_out in zip(WIDTHS[:-2], WIDTHS[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    layers.append(nn.Linear(WIDTHS[-2], WIDTHS[-1]))
    model = nn.Sequential(*layers)
    for module in model:
        if isinstance(module, nn.Linear):
            std = 1.0 / math.sqrt(module.in_features)
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(module.bias)
    return model


def optimizer(parameters):
    return torch.optim.SGD(parameters, lr=1e-3)

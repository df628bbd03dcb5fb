"""A small CNN with Gaussian noise after every hidden tanh, on scikit-learn's 8x8 digits, as an infoplane model file.

The network of the noisy-CNN reproduction (docs/reproductions.md): conv(8, 3x3)-tanh on 8 x 8 positions,
conv(16, 3x3, stride 2)-tanh on 4 x 4, dense 32-tanh, dense 10, with noise of std 0.2 after each tanh
(``add_noise``), in training and in probing. Its noisy layers have a finite information that the noisy
estimator measures, each with the noise variance that reaches it after the layer reduction (std^2 / 64 and
std^2 / 16 for the two conv layers' channel means, std^2 for the dense layer):

    infoplane track examples/digits_noisy_cnn.py --estimator noisy --reduce channel-mean --epochs 60 \\
        --batch-size 64 --lr 1e-3 --schedule log:16

No noise level is passed on the command line: it is read from the network.
"""
from torch import nn

NOISE_STD = 0.2  # noise standard deviation after every hidden tanh (activation units)

# The noisy layers' noise-free outputs, which the noisy estimator measures (the output layer has no noise).
layers = ["1.clean", "3.clean", "6.clean"]


def data():
    from infoplane.data import digits

    x, y = digits()  # float32 [1797, 64] in [0, 1], int64 [1797]
    return x.reshape(-1, 1, 8, 8), y


def build_model():
    from infoplane import add_noise

    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.Tanh(), nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, 10))
    return add_noise(cnn, NOISE_STD)

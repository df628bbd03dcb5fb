"""add_noise: Gaussian noise after chosen layers, in training and in eval mode, reproducible."""
import copy
import math
import pickle

import pytest
import torch
from torch import nn

import infoplane
from infoplane import Noisy, Tracker, add_noise
from infoplane.capture import resolve_layers
from infoplane.networks.noise import GaussianNoise


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2), nn.Softmax(-1))


def test_noise_in_train_and_eval_mode_and_original_untouched():
    model = _mlp()
    noisy = add_noise(model, 0.1)
    assert not any(isinstance(m, GaussianNoise) for m in model.modules())
    wrapped = [n for n, m in noisy.named_modules() if isinstance(m, GaussianNoise)]
    assert wrapped == ["1", "3"]  # the hidden nonlinearities; Softmax is left alone
    x = torch.randn(20, 3)
    for train in (True, False):
        noisy.train(train)
        assert not torch.equal(noisy(x), noisy(x))
    # The noise is N(0, std^2) added to the clean output.
    layer = add_noise(nn.Sequential(nn.Identity(), nn.Tanh()), 0.3, layers="1")
    big = torch.zeros(200000, 1)
    diff = layer(big) - torch.tanh(big)
    assert abs(float(diff.mean())) < 0.005 and abs(float(diff.std()) - 0.3) < 0.005


def test_reproducible_and_probe_does_not_shift_training_noise():
    x = torch.randn(10, 3)
    a, b = add_noise(_mlp(), 0.2, seed=4), add_noise(_mlp(), 0.2, seed=4)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(add_noise(_mlp(), 0.2, seed=4)(x), add_noise(_mlp(), 0.2, seed=5)(x))
    # An eval-mode pass (as the tracker's probe) draws from its own stream: training noise is unchanged.
    a.eval()
    a(x)
    a.train()
    assert torch.equal(a(x), b(x))
    # Copies continue the same streams; the global RNG is never used.
    c = copy.deepcopy(a)
    state = torch.get_rng_state()
    assert torch.equal(a(x), c(x))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(pickle.loads(pickle.dumps(add_noise(_mlp(), 0.2, seed=4)))(x), add_noise(_mlp(), 0.2, seed=4)(x))


def test_chosen_layers_only():
    model = _mlp()
    for layers, expected in (("3", ["3"]), (nn.Tanh, ["1"]), (["[13]"], ["1", "3"]), ("5", ["5"])):
        noisy = add_noise(model, 0.1, layers=layers)
        assert [n for n, m in noisy.named_modules() if isinstance(m, GaussianNoise)] == expected
    x = torch.randn(5, 3)
    only_last = add_noise(model, 0.1, layers="5")
    clean_part = only_last[:5](x)
    assert torch.equal(clean_part, model[:5](x))  # layers before the chosen one are noise-free
    with pytest.raises(ValueError, match="matches no module"):
        add_noise(model, 0.1, layers="nope")
    with pytest.raises(ValueError, match="std"):
        add_noise(model, 0.0)


def test_tracker_records_clean_layers_and_noisy_mi_is_finite():
    noisy = add_noise(_mlp(), 0.3)
    x, y = torch.randn(256, 3), torch.arange(256) % 2
    names = [l.name for l in resolve_layers(noisy, x[:2])]
    assert names == ["1.clean", "3.clean", "5"]
    with Tracker(noisy, x, y, estimators=[Noisy(noise_var=0.09, samples=256)], schedule=[0]) as tr:
        tr.step(0)
    ixt = tr.run.get("ixt")[0, 0]
    # With noise of std 0.3 on tanh units (|a| < 1), I(X;T') is finite and far below log2 N = 8 bits.
    assert (ixt > 0).all() and (ixt < 0.8 * math.log2(256)).all()
    assert infoplane.add_noise is add_noise

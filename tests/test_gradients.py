"""Per-layer gradient statistics against gradients collected by hand and reduced with numpy."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from infoplane.tracking.gradients import GradientStats


def make_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))


def data(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 2, (n,), generator=g)


def oracle(samples):
    """numpy: norm of the mean and norm of the element-wise population std over the steps."""
    s = np.stack([np.concatenate([g.numpy().astype(np.float64).ravel() for g in step]) for step in samples])
    mean_norm = np.linalg.norm(s.mean(0))
    std_norm = np.linalg.norm(s.std(0))
    return mean_norm, std_norm


def train(net, x, y, *, batch=16, micro=1, stats=None, scaler=None, collect=None, layers=(0, 2, 4)):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    for i0 in range(0, len(x), batch):
        opt.zero_grad()
        xb, yb = x[i0:i0 + batch], y[i0:i0 + batch]
        for xm, ym in zip(xb.chunk(micro), yb.chunk(micro)):
            loss = loss_fn(net(xm), ym) / micro
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(opt)
        if collect is not None:
            collect.append([[net[k].weight.grad.clone() for k in (layer,)] for layer in layers])
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


@pytest.mark.parametrize("micro", [1, 4])
def test_statistics_equal_numpy_on_hand_collected_gradients(micro):
    x, y = data()
    net = make_net()
    collected = []
    with GradientStats({"0": net[0], "2": net[2], "4": net[4]}) as stats:
        train(net, x, y, micro=micro, collect=collected)
    rows = stats.read()
    assert [r.layer for r in rows] == ["0", "2", "4"]
    for k, row in enumerate(rows):
        mean_norm, std_norm = oracle([step[k] for step in collected])
        assert row.batches == 4 and not row.frozen  # one sample per optimiser step, not per backward()
        assert row.mean_norm == pytest.approx(mean_norm, rel=1e-12)
        assert row.std_norm == pytest.approx(std_norm, rel=1e-12)
        assert row.snr == pytest.approx(mean_norm / std_norm, rel=1e-12)


def test_a_new_period_starts_after_each_read_and_detach_stops_listening():
    x, y = data()
    net = make_net()
    stats = GradientStats({"0": net[0]}).attach()
    train(net, x, y)
    assert stats.read()[0].batches == 4
    collected = []
    train(net, x, y, batch=32, collect=collected, layers=(0,))
    row = stats.read()[0]
    assert row.batches == 2
    assert row.mean_norm == pytest.approx(oracle([s[0] for s in collected])[0], rel=1e-12)
    stats.detach()
    train(net, x, y)
    assert stats.read()[0].batches == 0


def test_grad_scaler_gives_the_unscaled_statistics():
    x, y = data()
    plain, scaled = make_net(), make_net()
    with GradientStats({"2": plain[2]}) as a:
        train(plain, x, y)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with GradientStats({"2": scaled[2]}) as b:
        train(scaled, x, y, scaler=scaler)
    ra, rb = a.read()[0], b.read()[0]
    assert rb.batches == ra.batches == 4
    assert rb.mean_norm == pytest.approx(ra.mean_norm, rel=1e-6)
    assert rb.std_norm == pytest.approx(ra.std_norm, rel=1e-6)


def test_frozen_layers_are_reported_as_such_and_shared_weights_count_in_each_layer():
    x, y = data()
    net = make_net()
    net[0].weight.requires_grad_(False)
    tied = nn.Linear(5, 4)
    tied.weight = net[2].weight  # one Parameter held by two layers
    collected = []
    with GradientStats({"0": net[0], "2": net[2], "tied": tied}) as stats:
        train(net, x, y, collect=collected, layers=(2,))
    frozen, layer, other = stats.read()
    assert frozen.frozen and frozen.batches == 0 and frozen.mean_norm is None and frozen.snr is None
    assert (layer.mean_norm, layer.std_norm, layer.batches) == (other.mean_norm, other.std_norm, other.batches)
    assert layer.batches == 4 and not layer.frozen
    assert layer.mean_norm == pytest.approx(oracle([s[0] for s in collected])[0], rel=1e-12)
    with pytest.raises(ValueError, match="no tracked layer has a trainable weight"):
        GradientStats({"0": net[0]})


def test_tracking_gradients_changes_training_by_not_a_single_bit():
    x, y = data()
    a, b = make_net(), make_net()
    train(a, x, y)
    with GradientStats({"0": b[0], "4": b[4]}):
        train(b, x, y)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_float64_accumulation_keeps_a_tiny_spread_under_a_large_mean():
    # Drift phase: the mean is 1e8 times the spread; E[g^2] - E[g]^2 in float64 would lose it entirely.
    w = nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))
    layer = nn.Module()
    layer.weight = w
    opt = torch.optim.SGD([w], lr=0.0)
    rng = np.random.default_rng(0)
    samples = [1e4 + 1e-4 * rng.standard_normal((3, 3)) for _ in range(50)]
    with GradientStats({"w": layer}) as stats:
        for s in samples:
            w.grad = torch.from_numpy(s)
            opt.step()
    row = stats.read()[0]
    expected = np.linalg.norm(np.stack(samples).std(0))
    assert row.std_norm == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(row.snr) and row.snr > 1e7


def test_the_transition_is_the_first_epoch_after_which_the_smoothed_snr_stays_below_one():
    from infoplane.tracking.gradients import phase_transition

    epochs = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128])
    snr = np.array([9.0, 8.0, 7.0, 3.0, 0.5, 2.0, 0.4, 0.3, 0.2])
    # window 1: no smoothing; the last value at or above 1 is at epoch 16, so diffusion starts at 32
    assert phase_transition(epochs, snr, window=1) == 32
    # window 3: the spike at 16 is smoothed away (median of 0.5, 2.0, 0.4 = 0.5), but epoch 8's window
    # (3.0, 0.5, 2.0) has median 2.0, so diffusion starts at 16
    assert phase_transition(epochs, snr, window=3) == 16
    assert phase_transition(epochs, snr * 10, window=3, threshold=10.0) == 16  # rescaling changes nothing
    assert phase_transition(epochs, np.full(9, 2.0)) is None  # never diffusive
    assert phase_transition(epochs, np.full(9, 0.5)) == 0  # diffusive from the start
    assert phase_transition(epochs, np.full(9, np.nan)) is None
    with_gap = snr.copy()
    with_gap[5] = np.nan
    assert phase_transition(epochs, with_gap, window=1) == 8
    with pytest.raises(ValueError, match="strictly increasing"):
        phase_transition([0, 2, 1], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="window must be a positive integer"):
        phase_transition(epochs, snr, window=0)

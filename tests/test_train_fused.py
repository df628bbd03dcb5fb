"""The fused training kernel against the torch path: same parameters and losses to float32 rounding, quantised
activations on their grid, checkpoints interchangeable, and a fallback that says why once.

Tolerance: rtol 1e-5, atol 1e-6 on parameters and losses after 3 epochs (12 Adam steps at lr 1e-2). The kernel and
torch round each product and sum to float32 but add in different orders (and use their own exp/tanh, both within
1.5 ulp of exact, checked below), so the two paths differ by a few ulp per step; a parameter moves by at most lr per
Adam step, so the difference after 12 steps stays orders of magnitude below the tolerance, while a wrong gradient
or update (a missing bias correction, a sign, a skipped batch) moves parameters by about lr = 1e-2.
"""
import ctypes
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from infoplane._native import build as _native
from infoplane.networks import quantize
from infoplane.networks.quantize import _fake_quantize
from infoplane.tracking.gradients import GradientStats
from infoplane.train import fit, fused, fused_kernel

N_ROWS, N_FEATURES, N_CLASSES, BATCH = 120, 5, 3, 16
TOL = dict(rtol=1e-5, atol=1e-6)

LIB = fused_kernel.load()
# Skipped only where the kernel cannot exist; where a compiler works, a kernel that fails to build fails the module.
pytestmark = [pytest.mark.skipif(_native.compiler() is None or _native.disabled(),
                                 reason="no C compiler on this machine, or INFOPLANE_NO_NATIVE is set"),
              pytest.mark.usefixtures("built_kernel")]


@pytest.fixture
def built_kernel():
    assert not isinstance(LIB, str), f"the fused kernel did not build although a compiler exists: {LIB}"


def build_tanh():
    return nn.Sequential(nn.Linear(N_FEATURES, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, N_CLASSES))


def build_relu():
    return nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU(), nn.Linear(8, 6), nn.Sigmoid(), nn.Linear(6, N_CLASSES))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(5)
    inputs = torch.randn(N_ROWS, N_FEATURES, generator=g)
    labels = torch.randint(0, N_CLASSES, (N_ROWS,), generator=g)
    perms = torch.stack([torch.randperm(N_ROWS, generator=g) for _ in range(3)])
    return inputs, labels, perms


def close(a, b):
    for ma, mb in zip(a.members, b.members, strict=True):
        for (name, pa), pb in zip(ma.named_parameters(), mb.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, **TOL, msg=name)
    for key in ("train_loss", "train_acc"):
        torch.testing.assert_close(torch.tensor(a.metrics[key]), torch.tensor(b.metrics[key]), **TOL)


# n_train 10 < batch (one partial minibatch per epoch, like 5% of the data) and 50 = 3 * 16 + 2 (like 85%).
@pytest.mark.parametrize("n_train", [10, 50])
@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("builder", [build_tanh, build_relu])
def test_fused_equals_torch_path(data, builder, seeds, n_train):
    inputs, labels, perms = data
    train = perms[:seeds, :n_train]
    kw = dict(seeds=seeds, epochs=3, batch_size=BATCH, optimizer="adam", lr=1e-2)
    fast = fit(builder, inputs, labels, train, fused=True, **kw)
    slow = fit(builder, inputs, labels, train, fused=False, **kw)
    assert "fused kernel" in fast.reason and "fused" not in slow.reason
    initial = fit(builder, inputs, labels, train, fused=True, **{**kw, "epochs": 0})
    assert not torch.allclose(fast.members[0][0].weight, initial.members[0][0].weight, atol=1e-3)  # it trained
    close(fast, slow)
    # The returned members own their parameters (no views into the kernel's buffers).
    storages = {p.untyped_storage().data_ptr() for m in fast.members for p in m.parameters()}
    assert len(storages) == seeds * len(list(fast.members[0].parameters()))


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
])
def test_fused_optimiser_settings(data, optimizer):
    inputs, labels, perms = data
    kw = dict(seeds=2, epochs=3, batch_size=BATCH, optimizer=optimizer)
    close(fit(build_tanh, inputs, labels, perms[:2, :50], fused=True, **kw),
          fit(build_tanh, inputs, labels, perms[:2, :50], fused=False, **kw))


def test_activations_match_torch_to_rounding():
    x = torch.cat([torch.linspace(-20, 20, 400_001), torch.logspace(-10, 1, 10_001), -torch.logspace(-10, 1, 10_001)])
    exact = {1: torch.tanh(x.double()), 3: torch.sigmoid(x.double())}
    for code, ref in exact.items():
        out = torch.empty_like(x)
        params = torch.zeros(2)
        LIB.ip_activate(code, ctypes.c_void_p(params.data_ptr()), ctypes.c_void_p(x.data_ptr()),
                        ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(len(x)))
        # Within 1.5 float32 ulps of the exact value (torch's own tanh and sigmoid are within 1).
        torch.testing.assert_close(out.double(), ref, rtol=1.5 * 2.0**-23, atol=1e-38)


def test_quantiser_is_bit_exact():
    g = torch.Generator().manual_seed(0)
    a = torch.cat([torch.rand(100_000, generator=g) * 2.4 - 1.2, torch.linspace(-1, 1, 20_001)])
    for bits, low, high in ((2, -1.0, 1.0), (5, 0.0, 1.0), (8, -1.0, 1.0), (3, 0.0, 6.0)):
        levels = 2**bits
        step = (high - low) / (levels - 1)
        q = torch.tensor([low, high, step], dtype=torch.float32)
        out = torch.empty_like(a)
        LIB.ip_quantize(ctypes.c_void_p(q.data_ptr()), ctypes.c_void_p(a.data_ptr()), ctypes.c_void_p(out.data_ptr()),
                        ctypes.c_int64(len(a)))
        assert torch.equal(out, _fake_quantize(a, levels, low, high))


def test_quantised_network_trains_on_the_fused_path(data):
    inputs, labels, perms = data
    bits = 3

    def build():
        return quantize(build_tanh(), bits=bits)

    kw = dict(seeds=3, epochs=3, batch_size=BATCH, optimizer="adam", lr=1e-2, vectorize=True)
    fast = fit(build, inputs, labels, perms[:, :50], fused=True, **kw)
    slow = fit(build, inputs, labels, perms[:, :50], fused=False, **kw)
    assert "quantised" in fast.reason and "torch.func.vmap" in slow.reason
    close(fast, slow)
    # Each hidden unit of the trained network takes at most 2**bits values.
    seen = []
    hooks = [fast.members[0][i].register_forward_hook(lambda m, i, o: seen.append(o)) for i in (1, 3)]
    with torch.no_grad():
        fast.members[0](inputs)
    for h in hooks:
        h.remove()
    for out in seen:
        assert max(len(torch.unique(out[:, u])) for u in range(out.shape[1])) <= 2**bits


def test_checkpoints_move_between_paths(data):
    inputs, labels, perms = data
    kw = dict(seeds=2, batch_size=BATCH, optimizer="adam", lr=1e-2)
    train = perms[:2, :50]
    straight = fit(build_tanh, inputs, labels, train, epochs=4, fused=True, **kw)
    half = fit(build_tanh, inputs, labels, train, epochs=2, fused=True, **kw)
    resumed = fit(build_tanh, inputs, labels, train, epochs=4, fused=True, state=half.state, **kw)
    for ma, mb in zip(straight.members, resumed.members):
        for pa, pb in zip(ma.parameters(), mb.parameters()):
            assert torch.equal(pa, pb)  # same kernel, same state: exact
    on_torch = fit(build_tanh, inputs, labels, train, epochs=4, fused=False, state=half.state, **kw)
    close(straight, on_torch)
    torch_half = fit(build_tanh, inputs, labels, train, epochs=2, fused=False, **kw)
    close(straight, fit(build_tanh, inputs, labels, train, epochs=4, fused=True, state=torch_half.state, **kw))


def test_fallback_reason_is_printed_once(data, monkeypatch):
    inputs, labels, perms = data
    monkeypatch.setattr(fused, "_ANNOUNCED", set())
    kw = dict(seeds=2, epochs=1, batch_size=BATCH, optimizer=lambda p: torch.optim.RMSprop(p, lr=1e-2))
    with pytest.warns(fused.FusedFallbackWarning, match="not RMSprop"):
        first = fit(build_tanh, inputs, labels, perms[:2, :50], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fused.FusedFallbackWarning)
        second = fit(build_tanh, inputs, labels, perms[:2, :50], **kw)
    assert first.vectorized and "fused" not in first.reason  # still trained together, on the torch path
    initial = fit(build_tanh, inputs, labels, perms[:2, :50], **{**kw, "epochs": 0})
    assert not torch.allclose(second.members[0][0].weight, initial.members[0][0].weight)
    with pytest.raises(ValueError, match="fused=True.*RMSprop"):
        fit(build_tanh, inputs, labels, perms[:2, :50], fused=True, **kw)


def test_no_compiler_falls_back(data, monkeypatch):
    inputs, labels, perms = data
    monkeypatch.setattr(fused, "_ANNOUNCED", set())
    monkeypatch.setattr(fused_kernel, "_LOADED", None)
    monkeypatch.setattr(fused_kernel, "_compiler", lambda: None)
    with pytest.warns(fused.FusedFallbackWarning, match="no C compiler"):
        result = fit(build_tanh, inputs, labels, perms[:2, :50], seeds=2, epochs=1, batch_size=BATCH)
    assert "batched matrix products" in result.reason


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_pthread_build_trains_exactly_like_the_openmp_one(data, monkeypatch, threads):
    # With torch on GNU OpenMP the kernel runs its seeds in torch's OpenMP threads; elsewhere it starts pthreads.
    # The seeds never interact, so both builds, at any thread count, must give the same bits.
    inputs, labels, perms = data
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    kw = dict(seeds=3, epochs=2, batch_size=BATCH, fused=True)
    default = fit(build_tanh, inputs, labels, perms[:, :50], **kw)
    monkeypatch.setattr(fused_kernel, "_LOADED", None)
    monkeypatch.setattr(fused_kernel._native, "openmp_flags", lambda: ())
    plain = fit(build_tanh, inputs, labels, perms[:, :50], **kw)
    for ma, mb in zip(default.members, plain.members, strict=True):
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            assert torch.equal(pa, pb)


@pytest.mark.parametrize("seeds", [1, 3])
def test_gradient_statistics_equal_the_torch_path_with_gradient_stats(data, seeds):
    # The kernel's per-seed statistics against GradientStats hooked into the torch path's optimisers (one seed at a
    # time): same batches, norms and SNR to float32 rounding; the Tanh layer has no weight and is reported frozen.
    inputs, labels, perms = data
    layers = ["0", "1", "2", "4"]
    weights = {"0": ["0.weight"], "1": [], "2": ["2.weight"], "4": ["4.weight"]}  # the Tanh "1" has none
    kw = dict(seeds=seeds, epochs=3, batch_size=BATCH, optimizer="adam", lr=1e-2)
    train = perms[:seeds, :50]  # 3 full minibatches and one of 2 rows per epoch
    fused_rows = {}

    def on_fused(epoch, members, metrics):
        fused_rows[epoch] = metrics.gradients

    fast = fit(build_tanh, inputs, labels, train, fused=True, gradients=weights, callback=on_fused,
               gradient_epochs=lambda epoch: epoch != 2, **kw)
    torch_rows, stats = {}, []

    def on_torch(epoch, members, metrics):
        if not stats:
            stats.extend(GradientStats({n: dict(m.named_modules())[n] for n in layers}).attach() for m in members)
        torch_rows[epoch] = [s.read() for s in stats]

    try:
        fit(build_tanh, inputs, labels, train, fused=False, vectorize=False, callback=on_torch, **kw)
    finally:
        for s in stats:
            s.detach()
    assert fused_rows[2] is None and sorted(fused_rows) == [0, 1, 2, 3]
    for epoch in (0, 1, 3):
        assert len(fused_rows[epoch]) == seeds
        for mine, theirs in zip(fused_rows[epoch], torch_rows[epoch], strict=True):
            assert [(r.layer, r.batches, r.frozen) for r in mine] == [(r.layer, r.batches, r.frozen) for r in theirs]
            assert [r.batches for r in mine] == ([0, 0, 0, 0] if epoch == 0 else [4, 0, 4, 4])
            assert mine[1].frozen and mine[1].mean_norm is None
            for a, b in zip(mine, theirs):
                if a.mean_norm is None:
                    assert b.mean_norm is None and a.snr is None
                    continue
                assert a.std_norm > 0
                np.testing.assert_allclose([a.mean_norm, a.std_norm, a.snr], [b.mean_norm, b.std_norm, b.snr],
                                           rtol=1e-4)
    # Collecting changes nothing in training, to the bit.
    plain = fit(build_tanh, inputs, labels, train, fused=True, **kw)
    for ma, mb in zip(fast.members, plain.members, strict=True):
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            assert torch.equal(pa, pb)
    if seeds == 1:
        with pytest.raises(ValueError, match="no layer named '9'"):
            fit(build_tanh, inputs, labels, train, fused=True, gradients={"9": ["9.weight"]}, **kw)
        with pytest.raises(ValueError, match="no tracked layer has a trainable weight"):
            fit(build_tanh, inputs, labels, train, fused=True, gradients={"1": [], "3": []}, **kw)


def test_the_kernels_exp_keeps_nan_and_infinities():
    # NaN must come out NaN (a diverged run is never hidden), and no input may reach undefined behaviour in C
    # (make sanitize runs this with UBSan).
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0])
    out = torch.empty_like(x)
    params = torch.zeros(2)
    for code in (1, 3):
        LIB.ip_activate(code, ctypes.c_void_p(params.data_ptr()), ctypes.c_void_p(x.data_ptr()),
                        ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(len(x)))
        assert torch.isnan(out[0])
        expected = torch.tanh(x[1:]) if code == 1 else torch.sigmoid(x[1:])
        torch.testing.assert_close(out[1:], expected, rtol=0, atol=1e-7)

"""The epochs' orders of training rows drawn in C equal torch.randperm's, and leave the generators where torch would.

The oracle is torch itself: ``idx[torch.randperm(len(idx), generator=g)]`` from a twin generator, epoch by epoch,
and the twin's ``get_state()`` after each sync.
"""
import numpy as np
import pytest
import torch
from torch import nn

from infoplane._native import build as _native
from infoplane._native import kernels
from infoplane.train import fit, shuffle
from infoplane.train.shuffle import EpochOrders

pytestmark = pytest.mark.skipif(_native.compiler() is None or _native.disabled(),
                                reason="no C compiler on this machine, or INFOPLANE_NO_NATIVE is set")


def twins(count, used=0):
    """Two lists of generators in the same states; ``used`` draws already taken from each."""
    a = [torch.Generator().manual_seed(100 + i) for i in range(count)]
    b = [torch.Generator().manual_seed(100 + i) for i in range(count)]
    for g in a + b:
        for _ in range(used):
            torch.randperm(7, generator=g)
    return a, b


def test_the_compiled_route_builds_and_matches_torch_here():
    lib = shuffle._load()
    assert not isinstance(lib, str), f"the shuffle kernel did not build or did not match torch: {lib}"


@pytest.mark.parametrize("seeds, n, used", [(1, 1, 0), (1, 2, 3), (3, 205, 0), (20, 3482, 1), (2, 5000, 90)])
def test_orders_and_generator_states_equal_torch_randperm(seeds, n, used):
    mine, ref = twins(seeds, used)
    g = torch.Generator().manual_seed(seeds)
    sets = [torch.randperm(10 * n + 1, generator=g)[:n] for _ in range(seeds)]
    orders = EpochOrders(sets, mine, torch.device("cpu"))
    assert orders.compiled
    for epoch in range(9):
        got = orders()
        want = torch.stack([idx.index_select(0, torch.randperm(n, generator=r)) for idx, r in zip(sets, ref)])
        assert torch.equal(got, want), f"epoch {epoch}"
        if epoch % 4 == 1:  # a checkpoint reads the generators in between
            orders.sync()
            for a, b in zip(mine, ref):
                assert torch.equal(a.get_state(), b.get_state())
    orders.sync()
    for a, b in zip(mine, ref):
        assert torch.equal(a.get_state(), b.get_state())


def test_a_generator_drawn_from_after_a_sync_is_read_again():
    mine, ref = twins(2)
    sets = [torch.arange(50), torch.arange(50, 100)]
    orders = EpochOrders(sets, mine, torch.device("cpu"))
    orders()
    orders.sync()
    for g in mine:  # something else draws from the generators between epochs
        torch.randperm(13, generator=g)
    got = orders()
    for r in ref:
        torch.randperm(50, generator=r)
        torch.randperm(13, generator=r)
    want = torch.stack([idx.index_select(0, torch.randperm(50, generator=r)) for idx, r in zip(sets, ref)])
    assert torch.equal(got, want)


def test_thread_counts_give_the_same_orders():
    sets = torch.stack([torch.randperm(4000)[:3000] for _ in range(7)])
    outs = []
    for threads in (1, 2, 3):
        gens = [torch.Generator().manual_seed(i) for i in range(7)]
        raw = np.stack([g.get_state().numpy() for g in gens])
        words, counters = shuffle._unpack(raw)
        out = torch.empty_like(sets)
        assert kernels.shuffle(shuffle._load(), states=words, counters=counters, idx=sets, out=out,
                               threads=threads) == 0
        outs.append(out)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_counters_no_generator_has_are_refused():
    words, counters = shuffle._unpack(torch.Generator().manual_seed(0).get_state().numpy()[None].copy())
    out = torch.empty(1, 5, dtype=torch.int64)
    for left, nxt in ((0, 0), (624, 2), (1, -1)):
        counters[0] = (left, nxt)
        assert kernels.shuffle(shuffle._load(), states=words, counters=counters, idx=torch.arange(5)[None],
                               out=out, threads=1) == -2


def test_a_shuffle_that_differs_from_torch_is_not_used(monkeypatch):
    def reversed_shuffle(lib, *, states, counters, idx, out, threads):
        out.copy_(idx.flip(1))
        return 0

    monkeypatch.setattr(kernels, "shuffle", reversed_shuffle)
    reason = shuffle._matches_torch(shuffle._load())
    assert isinstance(reason, str) and "does not reproduce torch.randperm" in reason


def test_sets_of_different_lengths_take_the_torch_route():
    mine, ref = twins(2)
    sets = [torch.arange(30), torch.arange(31)]
    orders = EpochOrders(sets, mine, torch.device("cpu"))
    assert not orders.compiled
    got = orders()
    assert [torch.equal(o, idx.index_select(0, torch.randperm(len(idx), generator=r)))
            for o, idx, r in zip(got, sets, ref)] == [True, True]


def build():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


@pytest.mark.parametrize("fused", [True, False])
def test_fit_is_bit_identical_with_either_route(monkeypatch, fused):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(90, 4, generator=g), torch.randint(0, 3, (90,), generator=g)
    train = torch.stack([torch.randperm(90, generator=g)[:70] for _ in range(3)])
    runs = []
    for loaded in (None, "the torch route, for the comparison"):
        monkeypatch.setattr(shuffle, "_LOADED", loaded)
        runs.append(fit(build, x, y, train, seeds=3, epochs=4, batch_size=16, lr=1e-2, fused=fused))
    compiled, plain = runs
    for a, b in zip(compiled.members, plain.members, strict=True):
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)
    # the saved generator states (what a resume continues from) are the torch route's
    for a, b in zip(compiled.state["members"], plain.state["members"], strict=True):
        assert torch.equal(a["generator"], b["generator"])

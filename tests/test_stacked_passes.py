"""The ensemble's one-pass probes and metrics against the members' own passes, bit for bit.

Identical plain MLPs are probed together (:mod:`infoplane.capture.stacked`) and their train and test metrics come
from one stacked pass per index set (:class:`infoplane.train.metrics.MemberMetrics`); the per-member passes stay
the reference, and every number must be the same to the last bit.
"""
import pytest
import torch
from torch import nn

import infoplane
from infoplane.capture import stacked
from infoplane.capture.hooks import probe, resolve_layers
from infoplane.estimators import Binning
from infoplane.runs.writer import read_table
from infoplane.train import fit
from infoplane.train.metrics import MemberMetrics, evaluate_members


def _members(count, seed=0):
    torch.manual_seed(seed)
    nets = [nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 7), nn.LeakyReLU(0.1), nn.Linear(7, 3))
            for _ in range(count)]
    with torch.no_grad():
        for net in nets:
            for p in net.parameters():
                p.add_(torch.randn_like(p))
    return nets


def test_stacked_probe_and_metrics_equal_the_members_own_passes():
    nets = _members(5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(203, 12, generator=g)  # rows not a multiple of 16, several probe batches
    y = torch.randint(0, 3, (203,), generator=g)
    layers = resolve_layers(nets[0], x)
    assert [layer.transform for layer in layers][-1] == "softmax"
    assert stacked.stackable(nets, x, layers)
    together = stacked.stacked_probe(nets, x, layers, batch_size=90)
    for net, acts in zip(nets, together):
        own = probe(net, x, layers, batch_size=90)
        assert own.keys() == acts.keys()
        assert all(torch.equal(own[k], acts[k]) for k in own)
    chooser = stacked.StackedProbe()
    first, again = chooser(nets, x, layers, 90), chooser(nets, x, layers, 90)
    assert chooser.exact is True
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    # not stackable: a different member, a selector, a model with buffers
    other = _members(1)[0]
    other[3] = nn.LeakyReLU(0.2)
    assert not stacked.stackable(nets[:2] + [other], x, layers)
    assert chooser(nets[:1], x, layers, 90) is None

    train = [torch.randperm(203, generator=g)[:77] for _ in nets]
    test = [torch.randperm(203, generator=g)[:50] for _ in nets]
    loss = nn.CrossEntropyLoss()
    metrics = MemberMetrics()
    got = metrics(nets, loss, x, y, train, test)
    assert metrics.exact is True
    assert got == evaluate_members(nets, loss, x, y, train, test)
    for i, net in enumerate(nets):  # and against a loss and accuracy written out here
        with torch.no_grad():
            out = net(x[train[i]])
        want = -torch.log_softmax(out.double(), dim=1)[torch.arange(77), y[train[i]]].mean()
        assert abs(got["train_loss"][i] - float(want)) < 1e-6
        assert got["train_acc"][i] == pytest.approx(float((out.argmax(1) == y[train[i]]).sum()) / 77, abs=1e-12)


def test_metrics_follow_inputs_changed_in_place_and_take_one_hot_labels():
    nets = _members(3, seed=4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(120, 12, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (120,), generator=g), 3).float()
    train = [torch.randperm(120, generator=g)[:70] for _ in nets]
    test = [torch.randperm(120, generator=g)[:33] for _ in nets]
    loss = nn.CrossEntropyLoss()
    metrics = MemberMetrics()
    assert metrics(nets, loss, x, y, train, test) == evaluate_members(nets, loss, x, y, train, test)
    assert metrics.exact is True
    x.mul_(3.0)  # the rows gathered for the last call are stale now
    y.copy_(y.roll(1, dims=1))
    assert metrics(nets, loss, x, y, train, test) == evaluate_members(nets, loss, x, y, train, test)


def test_the_stacked_probe_says_which_members_are_not_finite():
    nets = _members(3, seed=6)
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(7))
    layers = resolve_layers(nets[0], x)
    chooser = stacked.StackedProbe()
    chooser(nets, x, layers, 16)  # the first call compares the stacked pass with the members' own
    assert chooser.exact is True and chooser.finite == [True, True, True]
    with torch.no_grad():  # one member diverges
        nets[1][2].weight[0, 0] = float("inf")
    acts = chooser(nets, x, layers, 16)
    assert chooser.finite == [True, False, True]
    assert [all(bool(torch.isfinite(a).all()) for a in per.values()) for per in acts] == chooser.finite
    assert not any(a.requires_grad for per in acts for a in per.values())  # activations, not part of a graph


def test_quantised_members_are_probed_together_bit_for_bit():
    from infoplane import quantize

    nets = [quantize(net, bits=8, ranges={nn.LeakyReLU: (-4.0, 4.0)}) for net in _members(4, seed=3)]
    x = torch.randn(150, 12, generator=torch.Generator().manual_seed(2))
    layers = resolve_layers(nets[0], x)
    assert stacked.same_mlps(nets) and stacked.stackable(nets, x, layers)
    together = stacked.stacked_probe(nets, x, layers, batch_size=64)
    for net, acts in zip(nets, together):
        own = probe(net, x, layers, batch_size=64)
        assert all(torch.equal(own[k], acts[k]) for k in own)
        # each quantised tanh layer holds levels of the 256-level grid on [-1, 1] only
        tanh, step = acts[layers[0].name], 2.0 / 255
        assert torch.equal(tanh, torch.round((tanh + 1) / step) * step - 1)
    # a quantised network next to the same network unquantised: not the same members
    assert not stacked.same_mlps([nets[0], _members(1, seed=3)[0]])


def test_tracked_fit_is_bit_identical_with_and_without_the_stacked_passes(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(150, 12, generator=g), torch.randint(0, 3, (150,), generator=g)
    train = torch.stack([torch.randperm(150, generator=g)[:100] for _ in range(3)])
    test = torch.stack([torch.arange(150)[~torch.isin(torch.arange(150), t)] for t in train])

    def run(out):
        def build():
            return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))

        tracker = None
        metrics_seen = []

        def callback(epoch, members, metrics):
            nonlocal tracker
            if tracker is None:
                tracker = infoplane.Tracker(members, x, y, estimators=[Binning(bins=30, range=(-1, 1))],
                                            schedule=[0, 1, 3, 4], out=out, seeds=[0, 1, 2])
            values = dict(metrics)
            metrics_seen.append(values)
            tracker.step(epoch, **values)

        fit(build, x, y, train, seeds=3, epochs=4, batch_size=32, callback=callback, test_idx=test)
        tracker.close()
        return [tuple(map(repr, row)) for row in read_table(out / "infoplane.csv")], metrics_seen

    together = run(tmp_path / "together")
    monkeypatch.setattr(stacked, "stackable", lambda *args: False)
    monkeypatch.setattr(MemberMetrics, "_applies", staticmethod(lambda *args: False))
    one_by_one = run(tmp_path / "one_by_one")
    assert together[1] == one_by_one[1]
    assert len(together[0]) == len(one_by_one[0]) == 4 * 3 * 3
    assert together[0] == one_by_one[0]

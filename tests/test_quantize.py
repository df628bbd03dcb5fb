"""infoplane.networks.quantize: fake-quantised activations (at most 2**bits values per unit), straight-through training,
and exact discrete measurements of the quantised layers against np.unique row codes + sklearn."""
import copy
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score
from torch import nn

import infoplane
from infoplane.capture import probe, resolve_layers
from infoplane.estimators import discrete_mi

LN2 = math.log(2)


def make_net(seed, act=nn.Tanh, d_in=6, width=8, n_out=2, **act_kw):
    with torch.random.fork_rng():  # keep the global generator untouched for other tests
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d_in, width), act(**act_kw), nn.Linear(width, 5), nn.Tanh(),
                             nn.Linear(5, n_out))


def inputs(seed, n=300, d=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 2
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def hidden_layers(model, x):
    layers = [l for l in resolve_layers(model, x[:4]) if l.kind == "hidden"]
    return {name: a.cpu() for name, a in probe(model, x, layers).items()}


@pytest.mark.parametrize("bits", [1, 2, 3])
@pytest.mark.parametrize("act,kw,ranges,lo_hi", [
    (nn.Tanh, {}, None, (-1.0, 1.0)),
    (nn.Sigmoid, {}, None, (0.0, 1.0)),
    (nn.ReLU6, {}, None, (0.0, 6.0)),
    (nn.Hardtanh, dict(min_val=-2.0, max_val=2.0), None, (-2.0, 2.0)),
    (nn.ReLU, {}, {nn.ReLU: (0.0, 3.0)}, (0.0, 3.0)),
    (nn.LeakyReLU, {}, {"1": (-0.5, 4.0)}, (-0.5, 4.0)),
])
def test_every_unit_takes_at_most_2_to_the_bits_values(bits, act, kw, ranges, lo_hi):
    x, _ = inputs(bits)
    q = infoplane.quantize(make_net(0, act, **kw), bits=bits, ranges=ranges)
    acts = hidden_layers(q, x)
    assert set(acts) == {"1", "3"}
    lo, hi = lo_hi
    levels = lo + torch.arange(2**bits, dtype=torch.float64) * (hi - lo) / (2**bits - 1)
    for name, a in acts.items():
        low, high = (lo, hi) if name == "1" else (-1.0, 1.0)
        for j in range(a.shape[1]):
            values = torch.unique(a[:, j])
            assert len(values) <= 2**bits
            assert float(values.min()) >= low and float(values.max()) <= high
        if name == "1":  # the values are the levels themselves, to float32 rounding
            dist = (a.double().reshape(-1, 1) - levels.reshape(1, -1)).abs().min(dim=1).values
            assert float(dist.max()) < 1e-6


def test_softmax_and_copy_semantics():
    net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=-1))
    q = infoplane.quantize(net, bits=2)
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    out = q(x).detach()
    assert len(torch.unique(out)) <= 4 and float(out.min()) >= 0 and float(out.max()) <= 1
    # a deep copy: the original is untouched and shares no parameters; names and types are kept
    assert type(net[1]) is nn.Softmax and torch.allclose(net(x).sum(-1), torch.ones(50))
    assert all(p.data_ptr() != r.data_ptr() for p, r in zip(net.parameters(), q.parameters()))
    assert [n for n, _ in net.named_modules()] == [n for n, _ in q.named_modules()]
    assert isinstance(q[1], nn.Softmax) and q[1].dim == -1
    assert isinstance(copy.deepcopy(q)[1], nn.Softmax)


def test_unbounded_activation_needs_a_range_and_bad_arguments_are_named():
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.GELU())
    with pytest.raises(ValueError, match=r"activation '3' \(GELU\) is unbounded.*ranges=\{'3': \(low, high\)\}"):
        infoplane.quantize(net)
    q = infoplane.quantize(net, bits=3, ranges={"3": (-0.2, 3.0)})
    assert q[3].quant_levels == 8 and (q[3].quant_low, q[3].quant_high) == (-0.2, 3.0)
    for bad in (0, 25, 2.5, True):
        with pytest.raises(ValueError, match="bits must be an integer"):
            infoplane.quantize(net, bits=bad, ranges={"3": (0, 1)})
    with pytest.raises(ValueError, match="low < high"):
        infoplane.quantize(net, ranges={"3": (1.0, 1.0)})
    with pytest.raises(ValueError, match="no activation module"):
        infoplane.quantize(nn.Linear(3, 3))


def test_straight_through_gradients_train_and_vmap_works():
    x, y = inputs(3, n=256)
    q = infoplane.quantize(make_net(1), bits=4)
    opt = torch.optim.Adam(q.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(q(x), y)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in q.parameters())
    assert min(losses[-5:]) < 0.8 * losses[0]
    # an ensemble through torch.func: vmap over stacked parameters equals each member's own forward
    members = [infoplane.quantize(make_net(s), bits=3) for s in range(3)]
    params, buffers = torch.func.stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")
    out = torch.func.vmap(lambda p, b: torch.func.functional_call(base, (p, b), (x,)))(params, buffers)
    for k, m in enumerate(members):
        assert torch.equal(out[k], m(x))


@pytest.mark.parametrize("seed", [0, 1])
def test_discrete_mi_of_quantised_layers_is_exact(seed):
    x, y = inputs(10 + seed, n=400)
    q = infoplane.quantize(make_net(seed), bits=2)
    acts = hidden_layers(q, x)
    for a in acts.values():
        r = discrete_mi(a, y)
        codes = np.unique(a.numpy(), axis=0, return_inverse=True)[1].ravel()
        assert math.isfinite(float(r.ixt)) and math.isfinite(float(r.ity))
        assert abs(float(r.ixt) - mutual_info_score(codes, codes) / LN2) < 1e-9
        assert abs(float(r.ity) - mutual_info_score(codes, y.numpy()) / LN2) < 1e-9

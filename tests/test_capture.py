import pytest
import torch
from torch import nn

from infoplane.capture import as_probe_tensors, probe, resolve_layers


def tanh_net(dims=(12, 10, 7, 5, 4, 3, 2)):
    mods = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*mods[:-1])


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def x12():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 2, (64, 12), generator=g).float()


def test_default_is_hidden_after_tanh_plus_softmax_output(x12):
    torch.manual_seed(0)
    net = tanh_net()
    layers = resolve_layers(net, x12[:2])
    assert [l.name for l in layers] == ["1", "3", "5", "7", "9", "10"]
    assert [l.width for l in layers] == [10, 7, 5, 4, 3, 2]
    assert [l.kind for l in layers] == ["hidden"] * 5 + ["output"]
    acts = probe(net, x12, layers)
    h = x12
    for i in range(0, 10, 2):
        h = torch.tanh(net[i](h))
        torch.testing.assert_close(acts[str(i + 1)], h)
    torch.testing.assert_close(acts["10"], torch.softmax(net(x12), dim=1))
    assert hook_count(net) == 0


def test_pre_activation_takes_linear_outputs(x12):
    net = tanh_net()
    layers = resolve_layers(net, x12[:2], pre_activation=True)
    assert [l.name for l in layers] == ["0", "2", "4", "6", "8", "10"]
    acts = probe(net, x12, layers)
    torch.testing.assert_close(acts["2"], net[2](net[1](net[0](x12))))
    torch.testing.assert_close(acts["10"], net(x12))  # logits, no softmax


class Functional(nn.Module):
    """Nonlinearities applied functionally: no activation modules, layers registered out of call order."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(4, 3)
        self.fc1 = nn.Linear(12, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_functional_nonlinearity_uses_layer_output_in_call_order(x12):
    net = Functional()
    layers = resolve_layers(net, x12[:2])
    assert [(l.name, l.kind) for l in layers] == [("fc1", "hidden"), ("fc2", "hidden"), ("out", "output")]
    acts = probe(net, x12, layers)
    torch.testing.assert_close(acts["fc1"], net.fc1(x12))
    torch.testing.assert_close(acts["out"].sum(1), torch.ones(len(x12)))


def test_single_output_unit_gives_sigmoid(x12):
    net = nn.Sequential(nn.Linear(12, 3), nn.ReLU(), nn.Linear(3, 1))
    layers = resolve_layers(net, x12[:2])
    assert layers[-1].transform == "sigmoid"
    torch.testing.assert_close(probe(net, x12, layers)["2"], torch.sigmoid(net(x12)))


def test_log_softmax_output_is_turned_into_probabilities(x12):
    net = nn.Sequential(nn.Linear(12, 3), nn.Tanh(), nn.Linear(3, 2), nn.LogSoftmax(dim=1))
    layers = resolve_layers(net, x12[:2])
    assert [l.name for l in layers] == ["1", "3"]
    torch.testing.assert_close(probe(net, x12, layers)["3"], net(x12).exp())


class Coder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_selection_by_name_glob_and_type(x12):
    net = Coder()
    names = lambda sel: [l.name for l in resolve_layers(net, x12[:2], sel)]
    assert names(["head", "encoder.1"]) == ["encoder.1", "head"]  # model order, not request order
    assert names("encoder.*") == ["encoder.0", "encoder.1", "encoder.2", "encoder.3"]
    assert names([nn.ReLU]) == ["encoder.1", "encoder.3"]
    assert names([nn.Linear, "encoder.1"]) == ["encoder.0", "encoder.1", "encoder.2", "head"]
    layers = resolve_layers(net, x12[:2], ["head"])
    assert layers[0].kind == "selected" and layers[0].transform is None
    torch.testing.assert_close(probe(net, x12, layers)["head"], net(x12))  # explicit: raw output


def test_conv_outputs_are_flattened_per_sample():
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    x = torch.randn(10, 1, 6, 6)
    layers = resolve_layers(net, x[:2])
    assert [(l.name, l.width) for l in layers] == [("1", 48), ("3", 2)]
    acts = probe(net, x, layers, batch_size=3)
    torch.testing.assert_close(acts["1"], torch.relu(net[0](x)).reshape(10, -1))
    pre = resolve_layers(net, x[:2], pre_activation=True)
    torch.testing.assert_close(probe(net, x, pre)["0"], net[0](x).reshape(10, -1))


def test_batching_does_not_change_activations(x12):
    net = tanh_net()
    layers = resolve_layers(net, x12[:2])
    a, b = probe(net, x12, layers, batch_size=7), probe(net, x12, layers, batch_size=64)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_unknown_name_lists_valid_names(x12):
    with pytest.raises(ValueError, match=r"'nope'.*matches no layer.*'encoder.0'.*'head'"):
        resolve_layers(Coder(), x12[:2], ["nope"])
    with pytest.raises(ValueError, match="matches no layer"):
        resolve_layers(Coder(), x12[:2], "decoder.*")
    with pytest.raises(ValueError, match="matches no layer"):
        resolve_layers(Coder(), x12[:2], [nn.Tanh])


def test_empty_selection_is_an_error(x12):
    with pytest.raises(ValueError, match="empty"):
        resolve_layers(Coder(), x12[:2], [])
    with pytest.raises(ValueError, match="no layer to record"):
        resolve_layers(nn.Sequential(nn.Tanh(), nn.Identity()), x12[:2])


def test_shared_activation_module_is_refused(x12):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(12, 5), nn.Linear(5, 2), nn.Tanh()

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))

    with pytest.raises(ValueError, match="'act' runs 2 times"):
        resolve_layers(Shared(), x12[:2])


def test_model_that_cannot_take_inputs(x12):
    net = nn.Sequential(nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"cannot take the probe inputs.*RuntimeError.*mat1 and mat2"):
        resolve_layers(net, x12[:2])
    assert hook_count(net) == 0 and net.training


def test_probe_restores_flags_removes_hooks_and_draws_no_random_numbers(x12):
    net = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2))
    net.train()
    net[3].eval()  # a mixed state must come back exactly
    flags = [m.training for m in net.modules()]
    layers = resolve_layers(net, x12[:2])
    stats = net[1].running_mean.clone()
    rng = torch.get_rng_state()
    a = probe(net, x12, layers)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(net[1].running_mean, stats)
    assert [m.training for m in net.modules()] == flags
    assert hook_count(net) == 0
    assert not any(t.requires_grad for t in a.values())
    torch.testing.assert_close(a["2"], probe(net, x12, layers)["2"])  # deterministic: eval mode


def test_hooks_removed_when_forward_raises(x12):
    class Boom(nn.Module):
        armed = False

        def forward(self, x):
            if self.armed:
                raise RuntimeError("boom")
            return x

    net = nn.Sequential(nn.Linear(12, 4), nn.Tanh(), Boom(), nn.Linear(4, 2))
    layers = resolve_layers(net, x12[:2])
    net[2].armed = True
    net.train()
    with pytest.raises(RuntimeError, match="boom"):
        probe(net, x12, layers)
    assert hook_count(net) == 0 and all(m.training for m in net.modules())


def test_probe_tensor_checks():
    x = torch.zeros(6, 3)
    with pytest.raises(ValueError, match="5 labels for 6 input"):
        as_probe_tensors(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="one-hot"):
        as_probe_tensors(x, torch.zeros(6, 2))
    with pytest.raises(ValueError, match="integer"):
        as_probe_tensors(x, torch.full((6,), 0.5))
    xi, yi = as_probe_tensors(x.numpy(), [0, 1, 0, 1, 2, 2])
    assert isinstance(xi, torch.Tensor) and yi.dtype == torch.int64

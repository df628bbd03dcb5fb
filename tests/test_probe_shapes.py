"""Any model's shape: several inputs, keyword inputs, tuple outputs, token sequences and loaders as probe sets.

Each recorded value is checked against ``binned_mi`` on the same activations taken by hand.
"""
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import infoplane
from infoplane.capture import probe, resolve_layers
from infoplane.estimators import Binning, binned_mi

BIN = Binning(bins=30, range=(-1, 1))


def labels_for(n, seed=3):
    return torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))


def record(model, inputs, labels, layers=None, epochs=2, train=None, **kw):
    """Record epochs 0..epochs-1 (``train`` runs one update between them); return the run and, per epoch,
    nothing else: the caller's hand computation follows the same updates."""
    t = infoplane.Tracker(model, inputs, labels, layers=layers, estimators=[BIN], **kw)
    for e in range(epochs):
        if e and train is not None:
            train()
        t.step(e)
    t.close()
    return t.run


def assert_matches(run, epoch, layer, acts, labels):
    ref = binned_mi(acts.reshape(acts.shape[0], -1).float(), labels, bins=30, range=(-1, 1))
    i, j = list(run.epochs).index(epoch), run.layers.index(layer)
    assert run.ixt[i, j] == pytest.approx(float(ref.ixt), abs=1e-12)
    assert run.ity[i, j] == pytest.approx(float(ref.ity), abs=1e-12)


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(3, 4)
        self.act = nn.Tanh()
        self.out = nn.Linear(4, 3)

    def forward(self, xa, xb, scale=1.0):
        return self.out(self.act(self.a(xa) + self.b(xb)) * scale)


def test_multi_input_tuple_and_list():
    torch.manual_seed(0)
    net = TwoInputs()
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.randn(96, 5, generator=g), torch.randn(96, 3, generator=g)
    y = labels_for(96)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)

    def train():
        loss = nn.functional.cross_entropy(net(xa, xb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t = infoplane.Tracker(net, (xa, xb), y, layers=["act", "out"], estimators=[BIN])
    hidden0 = torch.tanh(net.a(xa) + net.b(xb)).detach()
    t.step(0)
    train()
    hidden1 = torch.tanh(net.a(xa) + net.b(xb)).detach()
    t.step(1)
    t.close()
    assert_matches(t.run, 0, "act", hidden0, y)
    assert_matches(t.run, 1, "act", hidden1, y)
    assert_matches(t.run, 1, "out", net(xa, xb).detach(), y)
    assert t.run.meta["probe"]["input_shape"] == {"args": [[96, 5], [96, 3]]}
    # A list works like a tuple, numpy arrays like tensors.
    same = record(net, [xa.numpy(), xb.numpy()], y, layers=["act"], epochs=1, schedule=[0])
    assert_matches(same, 0, "act", hidden1, y)
    assert hook_count(net) == 0


def test_dict_inputs_call_with_keywords():
    torch.manual_seed(1)
    net = TwoInputs()
    g = torch.Generator().manual_seed(1)
    xa, xb = torch.randn(80, 5, generator=g), torch.randn(80, 3, generator=g)
    y = labels_for(80)
    inputs = {"xa": xa, "xb": xb, "scale": torch.full((80, 1), 0.5)}
    run = record(net, inputs, y, layers=["act", "out"], epochs=1)
    with torch.no_grad():
        assert_matches(run, 0, "act", torch.tanh(net.a(xa) + net.b(xb)), y)
        assert_matches(run, 0, "out", net.out(torch.tanh(net.a(xa) + net.b(xb)) * 0.5), y)
    assert run.meta["probe"]["input_shape"] == {"kwargs": {"xa": [80, 5], "xb": [80, 3], "scale": [80, 1]}}


def test_inputs_must_share_the_sample_count():
    with pytest.raises(ValueError, match="same N"):
        infoplane.Tracker(TwoInputs(), (torch.randn(10, 5), torch.randn(9, 3)), labels_for(10))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        seq, (h, c) = self.lstm(x)
        return self.head(seq[:, -1])


def test_lstm_tuple_output_through_a_selector():
    torch.manual_seed(2)
    net = Recurrent()
    x = torch.randn(64, 7, 4, generator=torch.Generator().manual_seed(2))
    y = labels_for(64)
    # Without a selector the tuple output is refused, naming the fix.
    with pytest.raises(ValueError, match="lambda out: out\\[0\\]"):
        infoplane.Tracker(net, x, y, layers=["lstm"])
    run = record(net, x, y, layers={"lstm": lambda out: out[1][0][-1], "head": None}, epochs=1)
    with torch.no_grad():
        seq, (h, _) = net.lstm(x)
        assert_matches(run, 0, "lstm", h[-1], y)
        assert_matches(run, 0, "head", net.head(seq[:, -1]), y)
    assert run.meta["layers"][0]["select"].endswith("<lambda>")
    # The named pooling of a tuple reads its first element: the whole sequence [N, L, d].
    run = record(net, x, y, layers={"lstm": "mean"}, epochs=1)
    with torch.no_grad():
        assert_matches(run, 0, "lstm", net.lstm(x)[0].mean(1), y)
    assert hook_count(net) == 0


class TokenNet(nn.Module):
    def __init__(self, vocab=11, d=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.block = nn.Sequential(nn.Linear(d, d), nn.Tanh())
        self.head = nn.Linear(d, 2)

    def forward(self, input_ids, attention_mask=None):
        h = self.block(self.embed(input_ids))
        return self.head(h[:, 0])


def test_token_sequences_pooled_by_mean_cls_and_flatten():
    torch.manual_seed(3)
    net = TokenNet()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 11, (72, 6), generator=g)
    lengths = torch.randint(2, 7, (72,), generator=g)
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()
    y = labels_for(72)
    inputs = {"input_ids": ids, "attention_mask": mask}
    run = record(net, inputs, y, layers={"block": "mean", "embed": "cls", "block.0": "flatten"}, epochs=1,
                 probe_batch_size=20)  # several probe batches: each uses its own rows of the mask
    with torch.no_grad():
        h = net.block(net.embed(ids))
        w = mask[:, :, None].float()
        assert_matches(run, 0, "block", (h * w).sum(1) / w.sum(1), y)
        assert_matches(run, 0, "embed", net.embed(ids)[:, 0], y)
        assert_matches(run, 0, "block.0", net.block[0](net.embed(ids)).reshape(72, -1), y)
    assert [l["pool"] for l in run.meta["layers"]] == ["cls", "flatten", "mean"]
    # The mask is respected: padding changes the plain mean, not the masked one.
    plain = record(net, ids, y, layers={"block": "mean"}, epochs=1)
    with torch.no_grad():
        assert_matches(plain, 0, "block", net.block(net.embed(ids)).mean(1), y)
    with pytest.raises(ValueError, match="token sequence"):
        infoplane.Tracker(net, inputs, y, layers={"head": "cls"})
    with pytest.raises(ValueError, match="pooling in"):
        infoplane.Tracker(net, inputs, y, layers={"head": "max"})


def test_dataloader_probe_set_collected_once_in_order():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(90, 6, generator=g), labels_for(90)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)
    run = record(net, loader, None, epochs=1)
    with torch.no_grad():
        assert_matches(run, 0, "1", torch.tanh(net[0](x)), y)
        assert_matches(run, 0, "2", torch.softmax(net(x), 1), y)
    assert run.n == 90
    # The same as the tensors themselves, row for row.
    direct = record(net, x, y, epochs=1)
    assert run.rows == direct.rows
    assert record(net, x.tolist(), y.tolist(), epochs=1).rows == direct.rows  # nested lists are one array
    # A plain iterable of (inputs, labels) batches, and dict batches carrying "labels", work too.
    pairs = [(x[i:i + 30], y[i:i + 30]) for i in range(0, 90, 30)]
    assert record(net, pairs, None, epochs=1).rows == direct.rows
    dicts = ({"input": x[i:i + 45], "labels": y[i:i + 45]} for i in range(0, 90, 45))

    class Kw(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input):
            return self.inner(input)

    kw = record(Kw(net), dicts, None, epochs=1)
    assert [(r.epoch, r.ixt, r.ity) for r in kw.rows] == [(r.epoch, r.ixt, r.ity) for r in direct.rows]


def test_shuffling_loader_is_refused_with_the_fix():
    x, y = torch.randn(20, 6), labels_for(20)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    net = nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="shuffle=False"):
        infoplane.Tracker(net, loader, None)
    with pytest.raises(ValueError, match="labels=None"):
        infoplane.Tracker(net, DataLoader(TensorDataset(x, y), batch_size=8), y)


def test_default_choice_warns_once_listing_skipped_modules():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.rnn = nn.GRU(4, 4, batch_first=True)
            self.fc = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.1)
            self.act = nn.ReLU()
            self.out = nn.Linear(4, 2)

        def forward(self, ids):
            seq, _ = self.rnn(self.embed(ids))
            return self.out(self.act(self.drop(self.fc(seq[:, -1]))))

    torch.manual_seed(5)
    net = Mixed()
    ids = torch.randint(0, 7, (16, 5))
    with pytest.warns(UserWarning, match="skips 2 module") as caught:
        layers = resolve_layers(net, ids[:2])
    message = str(caught[0].message)
    assert "'embed' (Embedding is not a Linear/Conv layer" in message and "'rnn' (GRU returns a tuple" in message
    assert "drop" not in message  # dropout between layers is not a layer
    assert [l.name for l in layers] == ["act", "out"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_layers(net, ids[:2])  # once: the same message is not repeated
        resolve_layers(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)), torch.zeros(2, 3))  # none
    acts = probe(net, ids, layers)
    assert acts["out"].shape == (16, 2)

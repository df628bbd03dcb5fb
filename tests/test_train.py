"""The default trainer: vectorised ensembles against one-at-a-time training, RNG hygiene, fallbacks,
callbacks and exact resumption."""
import contextlib
import copy
import textwrap

import pytest
import torch
from torch import nn

from infoplane.data.modelfile import load_model_file
from infoplane.train import STATE_FORMAT, fit, load_state, save_state

N_ROWS, N_FEATURES, N_CLASSES = 120, 5, 3
N_TRAIN, BATCH = 50, 16  # 50 = 3 * 16 + 2: every epoch ends with a partial batch of 2


def build_mlp():
    return nn.Sequential(nn.Linear(N_FEATURES, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, N_CLASSES))


def build_bn():
    return nn.Sequential(nn.Linear(N_FEATURES, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, N_CLASSES))


def build_dropout():
    return nn.Sequential(nn.Linear(N_FEATURES, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, N_CLASSES))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(11)
    inputs = torch.randn(N_ROWS, N_FEATURES, generator=g)
    labels = torch.randint(0, N_CLASSES, (N_ROWS,), generator=g)
    # Equal-size, different training sets per seed; test rows are the rest of each seed's permutation.
    perms = torch.stack([torch.randperm(N_ROWS, generator=g) for _ in range(3)])
    return inputs, labels, perms[:, :N_TRAIN], perms[:, N_TRAIN:]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_members_close(a, b, **tol):
    for ma, mb in zip(a, b, strict=True):
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, **tol)


def run(data, **kw):
    inputs, labels, train, test = data
    options = dict(seeds=3, epochs=3, batch_size=BATCH)
    options.update(kw)
    return fit(options.pop("model", build_mlp), inputs, labels, options.pop("train_idx", train), **options)


@pytest.mark.parametrize("optimizer, lr", [("adam", 1e-2), ("sgd", 0.1)])
def test_vectorised_equals_sequential(data, optimizer, lr):
    _, _, _, test = data
    vec = run(data, optimizer=optimizer, lr=lr, vectorize=True, test_idx=test)
    seq = run(data, optimizer=optimizer, lr=lr, vectorize=False, test_idx=test)
    assert vec.vectorized and not seq.vectorized
    # Training moved the parameters, and by the same amounts in both paths.
    start = [load(build_mlp, s) for s in range(3)]
    assert all(not torch.allclose(a, b) for a, b in zip(params(vec.members[0]), params(start[0])))
    assert_members_close(vec.members, seq.members, rtol=1e-5, atol=1e-6)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        torch.testing.assert_close(torch.tensor(vec.metrics[key]), torch.tensor(seq.metrics[key]), rtol=1e-5, atol=1e-6)
    # One optimiser over stacked tensors holds the same per-seed state as S separate optimisers.
    for a, b in zip(vec.state["members"], seq.state["members"]):
        for k, entry in a["optimizer"]["state"].items():
            for key, value in entry.items():
                other = b["optimizer"]["state"][k][key]
                if torch.is_tensor(value):
                    torch.testing.assert_close(value, other, rtol=1e-5, atol=1e-7)


def load(builder, seed):
    torch.manual_seed(seed)
    return builder()


def test_shared_train_idx_and_seed_list(data):
    inputs, labels, train, _ = data
    result = fit(build_mlp, inputs, labels, train[0], seeds=[4, 9], epochs=2, batch_size=BATCH)
    assert result.seeds == [4, 9] and result.vectorized
    alone = fit(build_mlp, inputs, labels, train[0], seeds=[9], epochs=2, batch_size=BATCH)
    # A member's training depends on its own seed only, not on which other seeds share the run.
    assert_members_close(result.members[1:], alone.members, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vectorize", [True, False])
def test_seeds_differ_and_are_reproducible(data, vectorize):
    a = run(data, epochs=2, vectorize=vectorize)
    b = run(data, epochs=2, vectorize=vectorize)
    for ma, mb in zip(a.members, b.members):
        assert all(torch.equal(x, y) for x, y in zip(params(ma), params(mb)))
    assert not torch.allclose(params(a.members[0])[0], params(a.members[1])[0])


def test_same_split_different_seeds_get_different_batch_orders(data):
    # Same initial weights for every seed isolates the minibatch order: results must still differ.
    inputs, labels, train, _ = data
    torch.manual_seed(0)
    fixed = build_mlp()
    result = fit(lambda: copy.deepcopy(fixed), inputs, labels, train[0], seeds=2, epochs=1, batch_size=BATCH)
    assert not torch.allclose(params(result.members[0])[0], params(result.members[1])[0])


@pytest.mark.parametrize("builder, vectorize", [(build_mlp, True), (build_mlp, False), (build_dropout, "auto")])
def test_global_rng_untouched(data, builder, vectorize):
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    with pytest.warns(UserWarning) if builder is build_dropout else contextlib.nullcontext():
        run(data, model=builder, epochs=2, vectorize=vectorize, callback=lambda e, m, met: dict(met))
    assert torch.equal(torch.get_rng_state(), before)


def test_batchnorm_falls_back_and_says_why(data):
    with pytest.warns(UserWarning, match="BatchNorm1d"):
        result = run(data, model=build_bn, epochs=1)
    assert not result.vectorized and "BatchNorm1d" in result.reason
    with pytest.raises(ValueError, match="cannot be trained together.*BatchNorm1d"):
        run(data, model=build_bn, epochs=1, vectorize=True)


def test_dropout_falls_back_and_resumes_exactly(data, tmp_path):
    # Each run starts from a different global RNG state: the results must not depend on it.
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match="vmap trial step failed"):
        full = run(data, model=build_dropout, epochs=4)
    assert not full.vectorized
    torch.manual_seed(2)
    with pytest.warns(UserWarning):
        half = run(data, model=build_dropout, epochs=2)
    save_state(tmp_path / "s.pt", half.state)
    torch.manual_seed(3)
    with pytest.warns(UserWarning):
        rest = run(data, model=build_dropout, epochs=4, state=load_state(tmp_path / "s.pt"))
    # Dropout masks come from per-seed RNG states saved with the state, so resuming is exact.
    for a, b in zip(full.members, rest.members):
        assert all(torch.equal(x, y) for x, y in zip(params(a), params(b)))


def test_custom_train_step_is_used_sequentially(data, tmp_path):
    path = tmp_path / "custom.py"
    path.write_text(textwrap.dedent(f"""
        import torch
        from torch import nn
        calls = []

        def build_model():
            return nn.Sequential(nn.Linear({N_FEATURES}, 4), nn.Tanh(), nn.Linear(4, {N_CLASSES}))

        def train_step(model, batch, optimizer):
            x, y = batch
            calls.append(len(x))
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    """))
    mf = load_model_file(path)
    with pytest.warns(UserWarning, match="custom train_step"):
        result = run(data, model=mf, epochs=2)
    assert not result.vectorized and "train_step" in result.reason
    calls = mf.train_step.__globals__["calls"]
    # 3 seeds x 2 epochs x 4 batches, the last of each epoch partial.
    assert calls == [16, 16, 16, 2] * 6
    # The custom step does what the default step does, so the results agree.
    default = run(data, model=mf.build_model, epochs=2, vectorize=False)
    assert_members_close(result.members, default.members, rtol=1e-6, atol=1e-7)


def test_model_file_optimizer_and_loss_are_used(data, tmp_path):
    path = tmp_path / "opt.py"
    path.write_text(textwrap.dedent(f"""
        import torch
        from torch import nn

        def build_model():
            return nn.Linear({N_FEATURES}, {N_CLASSES})

        def optimizer(parameters):
            return torch.optim.SGD(parameters, lr=0.0)

        loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    """))
    mf = load_model_file(path)
    result = run(data, model=mf, epochs=2)
    assert result.vectorized
    for seed, member in enumerate(result.members):  # lr=0: the file's optimiser, not Adam, was used
        assert all(torch.equal(a, b) for a, b in zip(params(member), params(mf.build(seed))))
    with pytest.raises(ValueError, match="lr only applies"):
        run(data, model=mf, lr=0.1)


def test_callback_sees_current_members_and_their_metrics(data):
    inputs, labels, train, test = data
    seen = {}

    def callback(epoch, members, metrics):
        seen[epoch] = ([params(m) for m in members], dict(metrics))

    for vectorize in (True, False):
        seen.clear()
        run(data, epochs=3, vectorize=vectorize, callback=callback, test_idx=test)
        assert sorted(seen) == [0, 1, 2, 3]
        for epoch in (0, 2):
            # Members in the callback after `epoch` epochs equal a run stopped there.
            stopped = run(data, epochs=epoch, vectorize=vectorize)
            for got, want in zip(seen[epoch][0], stopped.members):
                assert all(torch.equal(a, b) for a, b in zip(got, params(want)))
        # Metrics describe those parameters, in eval mode, on each seed's own rows.
        model = build_mlp()
        with torch.no_grad():
            for p, value in zip(model.parameters(), seen[3][0][1]):
                p.copy_(value)
            out = model(inputs[test[1]])
            loss = nn.functional.cross_entropy(out, labels[test[1]])
            acc = (out.argmax(1) == labels[test[1]]).float().mean()
            train_out = model(inputs[train[1]])
        assert seen[3][1]["test_loss"][1] == pytest.approx(float(loss), rel=1e-5)
        assert seen[3][1]["test_acc"][1] == pytest.approx(float(acc))
        assert seen[3][1]["train_acc"][1] == pytest.approx(float((train_out.argmax(1) == labels[train[1]]).float().mean()))


def test_metrics_are_lazy_and_only_valid_inside_callback(data):
    kept = []
    run(data, epochs=1, callback=lambda e, m, metrics: kept.append(metrics))
    assert set(kept[0]) == {"train_loss", "train_acc"}
    with pytest.raises(RuntimeError, match="inside the callback"):
        kept[0]["train_loss"]


@pytest.mark.parametrize("vectorize", [True, False])
def test_save_load_resume_equals_uninterrupted(data, tmp_path, vectorize):
    full = run(data, epochs=4, vectorize=vectorize)
    saved = []
    half = run(data, epochs=2, vectorize=vectorize, checkpoint=lambda s: saved.append(s["epoch"]), checkpoint_every=1)
    assert saved == [1, 2]
    path = save_state(tmp_path / "state.pt", half.state)
    assert not [p for p in tmp_path.iterdir() if p.name != "state.pt"]  # temp file renamed away
    state = load_state(path)  # weights_only=True inside
    assert state["format"] == STATE_FORMAT and state["epoch"] == 2
    epochs_seen = []
    rest = run(data, epochs=4, vectorize=vectorize, state=state, callback=lambda e, m, met: epochs_seen.append(e))
    assert epochs_seen == [3, 4]  # epoch 2 was reported by the first run
    for a, b in zip(full.members, rest.members):
        assert all(torch.equal(x, y) for x, y in zip(params(a), params(b)))


def test_state_moves_between_paths(data):
    vec_full = run(data, epochs=4, vectorize=True)
    seq_half = run(data, epochs=2, vectorize=False)
    vec_rest = run(data, epochs=4, vectorize=True, state=seq_half.state)
    seq_rest = run(data, epochs=4, vectorize=False, state=run(data, epochs=2, vectorize=True).state)
    assert_members_close(vec_full.members, vec_rest.members, rtol=1e-5, atol=1e-6)
    assert_members_close(vec_full.members, seq_rest.members, rtol=1e-5, atol=1e-6)


def test_unequal_splits_fall_back(data):
    inputs, labels, train, _ = data
    ragged = [train[0], train[1, :40], train[2]]
    with pytest.warns(UserWarning, match="differ in size"):
        result = fit(build_mlp, inputs, labels, ragged, seeds=3, epochs=1, batch_size=BATCH)
    assert not result.vectorized


def test_bad_arguments(data, tmp_path):
    train = data[2]
    with pytest.raises(ValueError, match="2 rows but there are 3 seeds"):
        run(data, train_idx=train[:2])
    with pytest.raises(ValueError, match="outside"):
        run(data, train_idx=train + N_ROWS)
    with pytest.raises(ValueError, match="optimizer must be"):
        run(data, optimizer="lbfgs")
    with pytest.raises(ValueError, match="seeds"):
        run(data, seeds=0)
    with pytest.raises(ValueError, match="holds seeds"):
        run(data, seeds=2, state=run(data, epochs=1).state)
    with pytest.raises(ValueError, match="start_epoch=1"):
        run(data, state=run(data, epochs=2).state, start_epoch=1)
    single = tmp_path / "single.py"
    single.write_text(f"from torch import nn\nmodel = nn.Linear({N_FEATURES}, {N_CLASSES})\n")
    with pytest.raises(ValueError, match="only seed 0"):
        run(data, model=load_model_file(single))
    torch.save({"x": torch.zeros(1)}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not an infoplane training state"):
        load_state(tmp_path / "junk.pt")


class _Residual(nn.Module):
    """Not an nn.Sequential: trained together through torch.func.vmap rather than the batched-matmul path."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(N_FEATURES, 6), nn.Linear(6, N_CLASSES)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("builder, how", [(build_mlp, "batched matrix products"), (_Residual, "torch.func.vmap")])
def test_both_vectorised_paths_equal_sequential(data, builder, how):
    vec = run(data, model=builder, vectorize=True, fused=False, optimizer="adam", lr=1e-2)  # the torch path
    seq = run(data, model=builder, vectorize=False, optimizer="adam", lr=1e-2)
    assert vec.vectorized and how in vec.reason
    assert_members_close(vec.members, seq.members, rtol=1e-5, atol=1e-6)


def test_custom_loss_takes_the_vmap_path(data):
    vec = run(data, vectorize=True, loss=nn.CrossEntropyLoss(label_smoothing=0.1))
    seq = run(data, vectorize=False, loss=nn.CrossEntropyLoss(label_smoothing=0.1))
    assert "torch.func.vmap" in vec.reason
    assert_members_close(vec.members, seq.members, rtol=1e-5, atol=1e-6)


def test_optimizer_that_groups_by_shape_falls_back(data):
    def grouped(parameters):
        parameters = list(parameters)
        return torch.optim.Adam([{"params": [p for p in parameters if p.ndim > 1], "weight_decay": 0.1},
                                 {"params": [p for p in parameters if p.ndim <= 1]}], lr=1e-2)

    with pytest.warns(UserWarning, match="groups the stacked parameters differently"):
        vec = run(data, optimizer=grouped)
    seq = run(data, optimizer=grouped, vectorize=False)
    assert not vec.vectorized
    assert_members_close(vec.members, seq.members, rtol=0, atol=0)

"""Training with SAM / ASAM through fit and `infoplane track`, against a hand-written two-step update."""
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from infoplane.train import fit
from infoplane.train.state import derive_seed


def build():
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def data(n=13):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 4, generator=g)
    return x, torch.randint(0, 3, (n,), generator=g)


def by_hand(x, y, seed, epochs, batch, lr, rho, adaptive, eta=0.01, make=build, train=None):
    """SAM written out: gradient at w, e = rho g/||g|| (ASAM: rho T^2 g/||T g||), gradient at w + e, SGD step at w."""
    torch.manual_seed(seed)  # fit builds each seed's network with torch's RNG seeded from the seed
    model = make()
    params = list(model.parameters())
    order_rng = torch.Generator().manual_seed(derive_seed(seed, 1))
    train = torch.arange(len(x)) if train is None else torch.as_tensor(train)
    for _ in range(epochs):
        order = train[torch.randperm(len(train), generator=order_rng)]
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            g = torch.autograd.grad(nn.functional.cross_entropy(model(x[idx]), y[idx]), params)
            with torch.no_grad():
                if adaptive:
                    t = [p.abs() + eta for p in params]
                    norm = torch.sqrt(sum(((ti * gi).double() ** 2).sum() for ti, gi in zip(t, g)))
                    e = [(rho / norm).float() * ti * ti * gi for ti, gi in zip(t, g)]
                else:
                    norm = torch.sqrt(sum((gi.double() ** 2).sum() for gi in g))
                    e = [(rho / norm).float() * gi for gi in g]
                saved = [p.clone() for p in params]
                for p, ei in zip(params, e):
                    p.add_(ei)
            g2 = torch.autograd.grad(nn.functional.cross_entropy(model(x[idx]), y[idx]), params)
            with torch.no_grad():
                for p, w, gi in zip(params, saved, g2):
                    p.copy_(w - lr * gi)
    return model


@pytest.mark.parametrize("batch", [1, 5, 13])
def test_fit_with_sam_equals_the_two_step_update(batch):
    x, y = data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(build, x, y, np.arange(len(x)), seeds=[0, 2], epochs=1, batch_size=batch, lr=0.1,
                     optimizer="sam", rho=0.2)
    assert not result.vectorized and "SAM" in result.reason
    # one note at most (printed once per process), and no second "one at a time" warning
    assert sum("one at a time" in str(w.message) for w in caught) <= 1
    for seed, member in zip([0, 2], result.members):
        expected = by_hand(x, y, seed, 1, batch, 0.1, 0.2, adaptive=False)
        for p, q in zip(member.parameters(), expected.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        # and SAM moved it somewhere else than plain SGD does
    sgd = fit(build, x, y, np.arange(len(x)), seeds=[0], epochs=1, batch_size=batch, lr=0.1, optimizer="sgd",
              fused=False)
    assert not torch.allclose(next(sgd.members[0].parameters()), next(result.members[0].parameters()))


def test_fit_with_asam_and_bad_rho():
    x, y = data()
    result = fit(build, x, y, np.arange(len(x)), seeds=[1], epochs=1, batch_size=4, lr=0.1, optimizer="asam",
                 rho=0.5)
    expected = by_hand(x, y, 1, 1, 4, 0.1, 0.5, adaptive=True)
    for p, q in zip(result.members[0].parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rho must be a finite number > 0"):
        fit(build, x, y, np.arange(len(x)), seeds=[1], epochs=1, optimizer="sam", rho=0.0)
    with pytest.raises(ValueError, match="rho is the radius.*'sam' or 'asam'"):
        fit(build, x, y, np.arange(len(x)), seeds=[1], epochs=1, optimizer="sgd", rho=0.1)
    with pytest.raises(ValueError, match="fused=True cannot be met: SAM"):
        fit(build, x, y, np.arange(len(x)), seeds=[1], epochs=1, optimizer="sam", fused=True)


MODEL_FILE = '''
import torch
from torch import nn

optimizer = "sam"
rho = 0.1


def build_model():
    return nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 2))
'''


def test_track_cli_with_sam_from_the_model_file_and_sharpness(tmp_path, capsys):
    from cli.main import main

    model_file = tmp_path / "net.py"
    model_file.write_text(MODEL_FILE)
    out = tmp_path / "runs"
    code = main(["track", str(model_file), "--epochs", "1", "--seeds", "2", "--lr", "0.05", "--schedule", "every:1",
                 "--batch-size", "1024", "--quiet", "--out", str(out), "--sharpness",
                 "sam_sharpness", "--sharpness-samples", "64", "--sharpness-rho", "0.02"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    run_dir = out / "fraction-0.8"
    assert (run_dir / "sharpness.csv").exists() and (run_dir / "sharpness.png").exists()
    assert f"figure: {run_dir / 'sharpness.png'}" in captured.out
    assert "sharpness at epoch 1: sam_sharpness " in captured.out
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["sharpness"]["measures"]["sam_sharpness"]["rho"] == 0.02
    # each seed's 64 rows come from its own training split, and are recorded as rows of the data set
    rows = meta["sharpness_rows"]
    assert len(rows) == 2 and all(len(r) == 64 and set(r) <= set(t) for r, t in zip(rows, meta["split"]["train"]))
    from infoplane import load_run
    from infoplane.data import tishby12

    run = load_run(run_dir)
    # the job trained what the two-step update trains: the trained network's training loss, seed 1
    x, y = tishby12()
    namespace = {}
    exec(MODEL_FILE, namespace)
    train = meta["split"]["train"][1]
    net = by_hand(x.float(), y, 1, 1, 1024, 0.05, 0.1, adaptive=False, make=namespace["build_model"], train=train)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(net(x.float()[train]), y[train]).item()
    assert run.metric("train_loss", seed=1)[-1] == pytest.approx(expected, rel=1e-5)
    assert run.sharpness.get("sam_sharpness").shape == (2, 2)
    assert np.isfinite(run.sharpness.get("sam_sharpness")).all()
    # errors found before anything trains
    assert main(["track", str(model_file), "--epochs", "1", "--quiet", "--out", str(tmp_path / "x"),
                 "--sharpness", "flatness"]) == 2
    assert "unknown sharpness measure 'flatness'" in capsys.readouterr().err
    assert main(["track", str(model_file), "--epochs", "1", "--quiet", "--out", str(tmp_path / "x"),
                 "--optimizer", "adam", "--rho", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--rho" in err and "--optimizer" in err


def test_model_file_names_its_optimizer(tmp_path):
    from infoplane.data.modelfile import ModelFileError, load_model_file
    from infoplane.optim import SAM
    from infoplane.train.spec import TrainSpec

    def write(body):
        path = tmp_path / "m.py"
        path.write_text("from torch import nn\ndef build_model():\n    return nn.Linear(3, 2)\n" + body)
        return path

    mf = load_model_file(write('optimizer = "asam"\nrho = 0.3\n'))
    assert mf.optimizer == "asam" and mf.rho == 0.3
    opt = TrainSpec.from_args(mf, 0.1, None, None).make_optimizer(mf.build(0).parameters())
    assert isinstance(opt, SAM) and opt.param_groups[0]["rho"] == 0.3 and opt.param_groups[0]["adaptive"]
    assert isinstance(opt.base_optimizer, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(ModelFileError, match="names no optimizer.*'sam'"):
        load_model_file(write('optimizer = "lbfgs"\n'))
    with pytest.raises(ModelFileError, match="rho in m.py is the radius"):
        load_model_file(write('optimizer = "adam"\nrho = 0.1\n'))
    with pytest.raises(ModelFileError, match="rho in m.py must be a number > 0"):
        load_model_file(write('optimizer = "sam"\nrho = -1\n'))

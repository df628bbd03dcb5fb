"""Layer reductions: shapes, reproducibility, oracles (numpy PCA, explicit means) and the tracker wiring."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import infoplane
from infoplane import Binning, Tracker
from infoplane.capture.reduce import parse, reduce_activations, resolve


def test_channel_mean_gives_c_columns():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 4, 5, 6, generator=g)
    out = reduce_activations(x, "channel-mean")
    assert out.shape == (10, 4)
    assert torch.allclose(out, torch.from_numpy(x.numpy().mean(axis=(2, 3))), atol=1e-6)
    # Flattened input with the per-sample shape, batched over epochs: the same numbers.
    flat = torch.stack([x, 2 * x]).reshape(2, 10, -1)
    out2 = reduce_activations(flat, "channel-mean", shape=(4, 5, 6))
    assert out2.shape == (2, 10, 4) and torch.allclose(out2[1], 2 * out, atol=1e-6)
    # A 1-D layer is left as it is.
    assert torch.equal(reduce_activations(x[:, :, 0, 0], "channel-mean"), x[:, :, 0, 0])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n,d", [(50, 8), (6, 20)])  # covariance route and Gram route
def test_pca_matches_numpy_svd(seed, n, d):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(3, 0.5, d)
    out = reduce_activations(torch.from_numpy(x), "pca:3")
    assert out.shape == (n, 3)
    xc = x - x.mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    ref = u[:, :3] * s[:3]
    ref *= np.sign(ref[np.abs(ref).argmax(0), range(3)])  # the documented sign convention
    assert np.allclose(out.numpy(), ref, atol=1e-8)
    assert torch.equal(out, reduce_activations(torch.from_numpy(x), "pca:3"))  # reproducible


def test_pca_is_fitted_per_batch_item():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 40, 5, generator=g, dtype=torch.float64)
    out = reduce_activations(a, "pca:2", shape=(5,))
    for b in range(3):
        assert torch.allclose(out[b], reduce_activations(a[b], "pca:2"))


def test_random_projection_fixed_per_layer():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(30, 12, generator=g), torch.randn(30, 12, generator=g)
    pa = reduce_activations(a, "random:4", layer="fc1")
    assert pa.shape == (30, 4)
    assert torch.equal(pa, reduce_activations(a, "random:4", layer="fc1"))
    # The same matrix for every epoch of a layer: the map is linear with one fixed matrix.
    both = reduce_activations(torch.stack([a, b]), "random:4", shape=(12,), layer="fc1")
    assert torch.allclose(both[0], pa) and torch.allclose(both[1] - both[0],
                                                          reduce_activations(b - a, "random:4", layer="fc1"))
    assert not torch.allclose(pa, reduce_activations(a, "random:4", layer="fc2"))
    assert not torch.allclose(pa, reduce_activations(a, "random:4:1", layer="fc1"))
    # Entries N(0, 1/k): squared norms are kept on average.
    big = reduce_activations(torch.eye(400, dtype=torch.float64), "random:300", layer="x")
    assert abs(float((big ** 2).sum(1).mean()) - 1.0) < 0.05


@pytest.mark.parametrize("spec,match", [("pca", "malformed"), ("pca:0", "at least 1"), ("pca:x", "integers"),
                                        ("median", "unknown"), ("random:2:3:4", "malformed"), (3, "string")])
def test_bad_specs_raise_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse(spec)


def test_resolve_checks_layers():
    layers = [("conv", (4, 3, 3)), ("fc", (10,))]
    plan = resolve({"conv": "channel-mean", "f*": "pca:2"}, layers)
    assert plan["conv"].width((4, 3, 3)) == 4 and plan["fc"].width((10,)) == 2
    assert resolve(None, layers)["conv"].kind == "flatten"
    with pytest.raises(ValueError, match="matches no recorded layer"):
        resolve({"nope": "pca:2"}, layers)
    with pytest.raises(ValueError, match="fewer than"):
        resolve({"fc": "pca:11"}, layers)
    # One spec for every layer leaves the layers already that narrow alone.
    assert resolve("pca:11", layers)["fc"].kind == "flatten" and resolve("pca:11", layers)["conv"].k == 11
    with pytest.raises(ValueError, match="per-sample shape"):
        resolve("channel-mean", [("conv", None)])


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 6), nn.Tanh(),
                         nn.Linear(6, 2))


def test_tracker_stores_reduce_in_meta_and_uses_reduced_width(tmp_path):
    model, x, y = _cnn(), torch.randn(60, 1, 4, 4), torch.arange(60) % 2
    est = Binning(width=0.05)
    with Tracker(model, x, y, estimators=[est], schedule=[0], out=tmp_path / "r",
                 reduce={"1": "channel-mean", "4": "random:2"}, keep_activations=True) as tr:
        tr.step(0)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["reduce"] == {"spec": {"1": "channel-mean", "4": "random:2"}, "widths": {"1": 3, "4": 2, "5": 2}}
    assert tr.reduced_widths == {"1": 3, "4": 2, "5": 2}
    assert meta["layer_shapes"]["1"] == [3, 4, 4]
    # The stored estimate is that of the reduced layer (oracle: the estimator on the reduced activations).
    relu = torch.relu(model[0](x)).detach()
    expected = est(relu.mean(dim=(2, 3)), y)
    run = infoplane.load_run(tmp_path / "r")
    assert run.get("ixt")[0, 0, 0] == pytest.approx(float(expected.ixt), abs=1e-9)
    # Saved activations stay unreduced; estimate() applies the run's reduction by default, or another.
    again = infoplane.estimate(tmp_path / "r")
    assert np.allclose(again.get("ixt"), run.get("ixt"), equal_nan=True)
    assert again.meta["reduce"]["spec"] == meta["reduce"]["spec"]
    flat = infoplane.estimate(tmp_path / "r", reduce="flatten")
    assert flat.get("ixt")[0, 0, 0] == pytest.approx(float(est(relu.flatten(1), y).ixt), abs=1e-9)
    with pytest.raises(ValueError, match="matches no recorded layer"):
        Tracker(model, x, y, reduce={"nope": "pca:2"})
    # Without reduce the meta says so, and nothing changes.
    plain = Tracker(model, x, y, estimators=[est], schedule=[0])
    assert plain._writer.meta["reduce"] is None
    plain.close()


def test_cli_reduce_option(capsys):
    from cli.main import build_parser

    args = build_parser().parse_args(["track", "model.py", "--reduce", "PCA:3"])
    assert args.reduce == "pca:3"
    assert build_parser().parse_args(["track", "model.py"]).reduce is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["track", "model.py", "--reduce", "pca:zero"])
    assert "K (and SEED) must be integers" in capsys.readouterr().err

"""The noisy estimator through Tracker: each layer's noise variance read from the network and its reduction."""
import numpy as np
import pytest
import torch
from torch import nn

from infoplane import Noisy, Tracker, add_noise, estimate
from infoplane.estimators import noisy_mi

STD = 0.3
SAMPLES = 64


def small_cnn():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(),            # 2 x 8 x 8
                        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(),  # 3 x 4 x 4
                        nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    return add_noise(cnn, STD, seed=1)


def probe_set():
    g = torch.Generator().manual_seed(2)
    return torch.rand(48, 1, 8, 8, generator=g), torch.arange(48) % 3


def test_noise_variance_follows_the_network_and_the_reduction(tmp_path):
    model, (x, y) = small_cnn(), probe_set()
    layers = ["1.clean", "3.clean"]
    ests = [Noisy(samples=SAMPLES, name="auto"),
            Noisy(noise_var={"3.*": 0.01}, samples=SAMPLES, name="override")]
    with Tracker(model, x, y, layers=layers, estimators=ests, schedule=[0], out=tmp_path / "run",
                 keep_activations=True, reduce={"1.clean": "channel-mean", "3.clean": "pca:2"}) as t:
        t.step(0)
    run = t.run
    with np.load(tmp_path / "run" / "activations" / "0" / "0.npz") as saved:  # the probe pass's clean outputs
        acts = {name: torch.from_numpy(saved[name]) for name in layers}
    # By hand: channel means over 8 x 8 positions carry STD^2 / 64; two principal components keep STD^2.
    cmean = acts["1.clean"].reshape(48, 2, 64).mean(dim=2)
    flat = acts["3.clean"].reshape(48, 48).double()
    centred = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    pca = centred @ v[:2].T
    # The tracker fixes each component's sign (its largest score positive) and keeps the layer's dtype.
    pca = (pca * torch.sign(pca.gather(0, pca.abs().argmax(0, keepdim=True)))).float()
    want = {("auto", "1.clean"): noisy_mi(cmean, y, noise_var=STD ** 2 / 64, samples=SAMPLES),
            ("auto", "3.clean"): noisy_mi(pca, y, noise_var=STD ** 2, samples=SAMPLES),
            ("override", "1.clean"): noisy_mi(cmean, y, noise_var=STD ** 2 / 64, samples=SAMPLES),
            ("override", "3.clean"): noisy_mi(pca, y, noise_var=0.01, samples=SAMPLES)}
    for (est, layer), res in want.items():
        j = run.layers.index(layer)
        assert run.get("ixt", est, seed=0)[0, j] == pytest.approx(float(res.ixt), abs=1e-5), (est, layer)
        assert run.get("ity", est, seed=0)[0, j] == pytest.approx(float(res.ity), abs=1e-5), (est, layer)
    by_layer = run.meta["estimator_layers"]
    assert by_layer["auto"]["1.clean"]["noise_var"] == pytest.approx(STD ** 2 / 64)
    assert by_layer["auto"]["3.clean"]["noise_var"] == pytest.approx(STD ** 2)
    assert by_layer["override"]["3.clean"]["noise_var"] == 0.01
    assert run.meta["layer_noise"] == {"1.clean": STD, "3.clean": STD}
    # From the saved activations, estimate() fixes the same per-layer values, and follows another reduction:
    # the two conv layers differ in size, so channel-mean gives each its own variance.
    again = estimate(tmp_path / "run")
    for est in ("auto", "override"):
        assert np.array_equal(again.get("ixt", est), run.get("ixt", est))
        assert np.array_equal(again.get("ity", est), run.get("ity", est))
    cm = estimate(tmp_path / "run", [Noisy(samples=SAMPLES)], reduce="channel-mean")
    assert cm.meta["estimator_layers"]["noisy"]["3.clean"]["noise_var"] == pytest.approx(STD ** 2 / 16)
    cmean3 = acts["3.clean"].reshape(48, 3, 16).mean(dim=2)
    want3 = noisy_mi(cmean3, y, noise_var=STD ** 2 / 16, samples=SAMPLES)
    assert cm.get("ixt", seed=0)[0, 1] == pytest.approx(float(want3.ixt), abs=1e-9)


def test_noisy_without_noise_is_refused():
    x, y = probe_set()
    plain = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(128, 3))
    with pytest.raises(ValueError, match=r"noise inside it, and this network adds none.*add_noise.*another estim"):
        Tracker(plain, x, y, estimators=[Noisy()])
    # The output layer of a noisy network has no noise of its own: refused, naming the noisy layers.
    with pytest.raises(ValueError, match=r"layer '5'.*no noise of its own.*after 1.clean, 3.clean"):
        Tracker(small_cnn(), x, y, estimators=[Noisy()])
    # random:k makes the noise anisotropic; an explicit value for the layer is accepted.
    with pytest.raises(ValueError, match="random:2"):
        Tracker(small_cnn(), x, y, layers=["1.clean"], estimators=[Noisy()], reduce="random:2")
    Tracker(small_cnn(), x, y, layers=["1.clean"], estimators=[Noisy({"1.clean": 0.1})], reduce="random:2").close()
    # The rule itself: a projection keeps the variance, a mean over H x W positions divides it by H W.
    from infoplane.capture.reduce import parse
    assert parse("flatten").noise_variance((2, 8, 8), 0.09) == parse("pca:3").noise_variance((2, 8, 8), 0.09) == 0.09
    assert parse("channel-mean").noise_variance((3, 4, 5), 0.09) == pytest.approx(0.09 / 20)
    assert parse("channel-mean").noise_variance((7,), 0.09) == 0.09  # a [C] layer is left as it is
    with pytest.raises(ValueError, match="direct call"):
        Noisy()(torch.rand(10, 2), torch.arange(10) % 2)


def test_cli_refuses_noisy_without_noise_and_explains(tmp_path, capsys):
    from infoplane.cli.main import main

    model = tmp_path / "relu.py"
    model.write_text("from torch import nn\n\ndef build_model():\n"
                     "    return nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 2))\n")
    rc = main(["track", str(model), "--estimator", "noisy", "--epochs", "1", "--out", str(tmp_path / "o"),
               "--quiet", "--no-plot"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "noise inside it" in err.splitlines()[0] and "add_noise" in err and "another estimator" in err
    assert not (tmp_path / "o").exists()  # refused before anything was trained or written


def test_fixed_range_bins_warn_once_per_layer_outside_their_range(tmp_path, capsys):
    from infoplane import Binning
    from infoplane.cli.main import main
    from infoplane.estimators import BinRangeWarning

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(40, 4) * 4, torch.arange(40) % 2
    with torch.no_grad():
        relu_max = float(torch.relu(net[0](x)).max())
    with pytest.warns(BinRangeWarning) as record:
        with Tracker(net, x, y, estimators=[Binning(bins=30, range=(-1, 1))], schedule=[0, 1, 2]) as t:
            for epoch in range(3):
                t.step(epoch)
    messages = [str(w.message) for w in record if issubclass(w.category, BinRangeWarning)]
    # Once for the ReLU layer (values up to relu_max), never for the tanh layer or the softmax output.
    assert len(messages) == 1 and messages[0].startswith("layer '1'")
    assert f"{relu_max:.4g}]" in messages[0] and "--range 0 " in messages[0] and "adaptive" in messages[0]
    top = float(messages[0].split("--range 0 ")[1].split(",")[0])
    assert relu_max <= top <= relu_max * 1.1
    # The command line prints it as one warning line per layer.
    model = tmp_path / "relu.py"
    model.write_text("import torch\nfrom torch import nn\n\n"
                     "def data():\n    return torch.rand(64, 12, generator=torch.Generator().manual_seed(0)), "
                     "torch.arange(64) % 2\n\n"
                     "def build_model():\n"
                     "    first = nn.Linear(12, 6)\n"
                     "    nn.init.constant_(first.weight, 0.5)  # ReLU outputs up to about 6 on inputs in [0, 1]\n"
                     "    return nn.Sequential(first, nn.ReLU(), nn.Linear(6, 2))\n")
    rc = main(["track", str(model), "--epochs", "2", "--schedule", "every:1", "--out", str(tmp_path / "o"),
               "--quiet", "--no-plot"])
    err = capsys.readouterr().err
    assert rc == 0
    lines = [l for l in err.splitlines() if "outside the bins' range" in l]
    assert len(lines) == 1 and lines[0].startswith("warning: layer '1'")


def test_the_noisy_cnn_example_records_its_noisy_layers():
    from pathlib import Path

    from infoplane.data.modelfile import load_model_file
    from infoplane.networks.noise import noise_levels

    mf = load_model_file(Path(__file__).resolve().parents[1] / "examples" / "digits_noisy_cnn.py")
    model = mf.build(0)
    assert noise_levels(model) == {name: 0.2 for name in mf.layers}  # every recorded layer gets its own noise
    x, y = mf.data()
    assert tuple(x.shape[1:]) == (1, 8, 8) and len(x) == len(y)

"""The finite-information reproductions (benchmarks/reproduce.py --only finite) run and report sane planes."""
import math
from pathlib import Path

import numpy as np
from _benchmark_scripts import REPO, load


def load_script():
    return load("reproduce")


def test_finite_noisy_quick(tmp_path):
    reproduce = load_script()
    doc = tmp_path / "reproductions.md"
    start, end = reproduce.markers("tishby")
    doc.write_text(f"# Reproductions\n\nkept\n\n{start}\nclassic\n{end}\n")
    out = reproduce.main(["--only", "finite-noisy", "--quick", "--quiet", "--out", str(tmp_path / "runs"),
                          "--figures", str(tmp_path / "figures"), "--doc", str(doc)])
    assert list(out) == ["finite-noisy"]  # only the noisy CNN ran
    text = doc.read_text()
    assert "kept" in text and "\nclassic\n" in text  # the classic block is left alone
    assert reproduce.markers("finite-noisy")[0] in text
    for name in ("finite-noisy", "finite-noisy-knn-renyi"):
        assert f"figures/{name}.png" in text
        assert (tmp_path / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert text.count("| layer | peak I(X;T) |") == 5
    runs = out["finite-noisy"]
    binned = runs["binning (flatten)"]
    log2_n = math.log2(binned.n)
    for name, run in runs.items():
        assert run.complete  # the figures would otherwise say "incomplete run"
        ixt, ity = run.get("ixt"), run.get("ity")
        assert np.isfinite(ixt).all() and np.isfinite(ity).all()
        if name.startswith("KSG"):
            continue  # k-NN values are not clipped (they may be negative or pass log2 N by design)
        assert ixt.min() >= 0 and ixt.max() <= log2_n + 1e-9 and ity.max() <= run.h_y + 1e-9
    # The binned conv layer of a 512-unit layer is saturated; the noisy estimates are well below log2 N.
    assert np.allclose(binned.get("ixt")[:, :, 0], log2_n)
    pca = f"pca:{reproduce_finite().PCA_K}"
    for name in ("noisy_mi (channel-mean)", f"noisy_mi ({pca})"):
        assert (runs[name].get("ixt") < log2_n - 1).all()
        assert np.isfinite(runs[name].get("ixt_se")).all()
    # The data-processing inequality is checked on whole layers only: reduced layers are not a chain.
    for name in ("binning (flatten)", "Rényi (flatten)"):
        assert runs[name].meta["chain"]["source"] == "graph", runs[name].meta["chain"]
    for name in ("noisy_mi (channel-mean)", f"noisy_mi ({pca})", f"KSG / Ross ({pca})"):
        assert runs[name].meta["chain"]["chain"] is False
    # Every variant has a value for every seed, epoch and layer.
    for name in (f"KSG / Ross ({pca})", "Rényi (flatten)"):
        assert runs[name].get("ixt").shape == binned.get("ixt").shape
    check_same_as_direct_route(runs)


def _old_route(module, seed):
    """The noisy CNN's seed as the reproduction computed it before it went through Tracker: one probe pass per
    recorded epoch, the estimator functions called on the activations with the noise variances worked out by hand.
    Returns {(variant, layer): (ixt [epochs], ity [epochs])}."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from infoplane import log_schedule
    from infoplane.capture import probe, resolve_layers
    from infoplane.capture.reduce import reduce_activations
    from infoplane.estimators import binned_mi, noisy_mi

    digits = load_digits()
    x = torch.tensor(digits.images[:300, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[:300])
    epochs, samples, schedule = 2, 64, log_schedule(2, 4)
    model = module._digits_cnn(seed)
    layers = [l for l in resolve_layers(model, x[:2]) if l.kind == "hidden"]
    train_idx, _ = train_test_split(range(len(y)), train_size=0.8, stratify=y.numpy(), random_state=seed)
    train_idx = torch.tensor(train_idx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    recorded = {l.name: [] for l in layers}
    for epoch in range(epochs + 1):
        if epoch in schedule:
            acts = probe(model, x, layers)
            for l in layers:
                recorded[l.name].append(acts[l.name])
        if epoch == epochs:
            break
        model.train()
        for batch in train_idx[torch.randperm(len(train_idx), generator=g)].split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    out = {}
    std2, pca = module.NOISE_STD ** 2, f"pca:{module.PCA_K}"
    for l in layers:
        acts = torch.stack(recorded[l.name])
        hw = math.prod(l.shape[1:]) if len(l.shape) > 1 else 1
        # The tracker keeps reduced activations in the layer's dtype (float32).
        reduced = reduce_activations(acts, pca, shape=l.shape).float()
        results = {"binning (flatten)": binned_mi(acts, y, bins=30, range=(-1, 1)),
                   "noisy_mi (channel-mean)": noisy_mi(reduce_activations(acts, "channel-mean", shape=l.shape), y,
                                                       noise_var=std2 / hw, samples=samples, seed=seed),
                   f"noisy_mi ({pca})": noisy_mi(reduced, y, noise_var=std2, samples=samples, seed=seed)}
        # (k-NN and Rényi see the same activations as binning: equal binned planes show the probe passes agree.)
        for v, r in results.items():
            out[(v, l.name)] = (r.ixt.numpy(), r.ity.numpy())
    return out


def check_same_as_direct_route(runs):
    """Through Tracker, with the noise read from the network, the quick run's numbers are those of the direct
    route (the same probe noise, the variances std^2 / (H W) and std^2 set by hand)."""
    for (variant, layer), (ixt, ity) in _old_route(reproduce_finite(), 0).items():
        run = runs[variant]
        j = run.layers.index(layer)
        got_ixt, got_ity = run.get("ixt", seed=0)[:, j], run.get("ity", seed=0)[:, j]
        assert np.allclose(got_ixt, ixt, rtol=0, atol=1e-9), (variant, layer, got_ixt, ixt)
        assert np.allclose(got_ity, ity, rtol=0, atol=1e-9), (variant, layer, got_ity, ity)


def reproduce_finite():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import reproduce_finite as module

    return module


def test_finite_quantized_quick(tmp_path):
    reproduce = load_script()
    doc = tmp_path / "reproductions.md"
    out = reproduce.main(["--only", "finite-quantized", "--quick", "--quiet", "--out", str(tmp_path / "runs"),
                          "--figures", str(tmp_path / "figures"), "--doc", str(doc)])
    q_runs, f_runs = out["finite-quantized"]["tanh-q8"], out["finite-quantized"]["tanh"]
    assert [r.fraction for r in q_runs] == [0.05, 0.85] == [r.fraction for r in f_runs]
    # The unquantised runs are the Shwartz-Ziv & Tishby section's directories (reused when that section ran).
    assert all(Path(r.path).parent == tmp_path / "runs" / "tishby" / "tanh" for r in f_runs)
    for run in q_runs:
        assert run.meta["complete"] and run.estimators == ["discrete", "binning"]
        ixt = run.get("ixt", "discrete")
        assert np.isfinite(ixt).all() and ixt.min() >= 0 and ixt.max() <= 12 + 1e-9
        # The probe inputs are the 4096 distinct 12-bit patterns: exactly 12 bits when the input is recorded.
        if "input" in run.layers:
            assert np.allclose(ixt[:, :, run.layers.index("input")], 12)
    text = doc.read_text()
    assert reproduce.markers("finite-quantized")[0] in text and "figures/finite-quantized.png" in text
    assert (tmp_path / "figures" / "finite-quantized.png").read_bytes()[:4] == b"\x89PNG"
    assert text.count("| layer | peak I(X;T) |") == 2  # exact tables of both fractions
    assert "| fraction | layer | exact, quantised |" in text

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
    # Every variant has a value for every seed, epoch and layer.
    for name in (f"KSG / Ross ({pca})", "Rényi (flatten)"):
        assert runs[name].get("ixt").shape == binned.get("ixt").shape


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

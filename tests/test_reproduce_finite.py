"""The finite-information reproduction (benchmarks/reproduce.py --only finite) runs and reports sane planes."""
import importlib.util
import math
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_finite_noisy_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    doc = tmp_path / "reproductions.md"
    doc.write_text("# Reproductions\n\nkept\n\n<!-- generated:start -->\nclassic\n<!-- generated:end -->\n")
    out = reproduce.main(["--only", "finite", "--quick", "--quiet", "--out", str(tmp_path / "runs"),
                          "--figures", str(tmp_path / "figures"), "--doc", str(doc)])
    assert list(out) == ["finite"]  # only the finite block ran
    text = doc.read_text()
    assert "kept" in text and "\nclassic\n" in text  # the classic block is left alone
    assert reproduce.FINITE_NOISY_START in text and "figures/finite-noisy.png" in text
    assert (tmp_path / "figures" / "finite-noisy.png").read_bytes()[:4] == b"\x89PNG"
    assert text.count("| layer | peak I(X;T) |") == 3
    runs = out["finite"]
    binned = runs["binning (flatten)"]
    for name, run in runs.items():
        ixt = run.get("ixt", run.estimators[0])
        assert np.isfinite(ixt).all() and ixt.min() >= 0 and ixt.max() <= math.log2(run.n) + 1e-9
    # The binned conv layer of a 512-unit layer is saturated; the noisy estimates are well below log2 N.
    assert np.allclose(binned.get("ixt")[:, :, 0], math.log2(binned.n))
    for name in ("noisy_mi (channel-mean)", f"noisy_mi (pca:{reproduce.FINITE_PCA})"):
        assert (runs[name].get("ixt") < math.log2(binned.n) - 1).all()
        assert np.isfinite(runs[name].get("ixt_se")).all()

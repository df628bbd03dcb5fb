"""The reproductions (benchmarks/reproduce.py) keep working: a tiny-budget run of each, checked for structure."""
import math

import numpy as np
from _benchmark_scripts import REPO, load


def load_script():
    return load("reproduce")


def test_reduced_reproductions(tmp_path):
    reproduce = load_script()
    doc = tmp_path / "reproductions.md"
    start, end = reproduce.markers("tishby")
    other_start, other_end = reproduce.markers("finite-noisy")
    doc.write_text(f"# Reproductions\n\nhand-written text stays\n\n{start}\nold\n{end}\n\nmore text\n\n"
                   f"{other_start}\nanother section's block\n{other_end}\n")
    all_runs = reproduce.main(["--quick", "--quiet", "--out", str(tmp_path / "runs"),
                               "--figures", str(tmp_path / "figures"), "--doc", str(doc)])
    plan = {item["key"]: item for item in reproduce.plan(quick=True)}
    assert set(all_runs) == set(plan)
    for key, by_label in all_runs.items():
        for spec in plan[key]["runs"]:
            runs = by_label[spec["label"]]
            assert [r.fraction for r in runs] == spec["fractions"]
            for run in runs:
                assert run.meta["complete"]
                assert run.epochs.tolist() == spec["schedule"].epochs.tolist()  # every recorded epoch present
                assert run.estimators == [e.name for e in spec["estimators"]]
                assert len(run.seeds) == spec["seeds"] and len(run.layers) >= 4
                for est in run.estimators:
                    ixt, ity = run.get("ixt", est), run.get("ity", est)
                    assert np.all(np.isfinite(ixt)) and np.all(np.isfinite(ity))  # every layer, epoch, seed
                    # binning is exact; KDE's default float32 kernel rounds at about 1e-7 bits
                    tol = 1e-6 if est == "kde" else 1e-9
                    assert ixt.min() >= -tol and ixt.max() <= math.log2(run.n) + tol
                    assert ity.min() >= -tol and ity.max() <= run.h_y + tol
    assert (tmp_path / "figures" / "tishby-animation.gif").read_bytes()[:6] == b"GIF89a"  # docs/plotting.md
    text = doc.read_text()
    assert "hand-written text stays" in text and "more text" in text and "\nold\n" not in text
    # Every section writes its own block, in place; blocks of sections that did not run are left alone.
    assert "another section's block" in text
    for key in reproduce.CLASSIC:
        key_start, key_end = reproduce.markers(key)
        assert text.count(key_start) == 1 and text.count(key_end) == 1
        assert text.index(key_start) < text.index(key_end)
    assert text.index(start) < text.index("more text")  # the tishby block stayed where it was
    for name in ("tishby-compare", "saxe-binning", "saxe-binning-width", "saxe-kde", "digits-kde",
                 "digits-adaptive"):
        figure = tmp_path / "figures" / f"{name}.png"
        assert figure.read_bytes()[:4] == b"\x89PNG" and f"figures/{name}.png" in text
    assert text.count("| layer | peak I(X;T) |") == 2 + 2 * 3 + 2 * 2  # one table per run and estimator
    assert "infoplane track examples/tishby_tanh.py --fraction 0.05 --fraction 0.85" in text


def test_documented_figures_exist():
    # docs/reproductions.md shows the committed figures of the full reproduction.
    text = (REPO / "docs" / "reproductions.md").read_text()
    names = set(__import__("re").findall(r"\(figures/([\w.-]+\.png)\)", text))
    assert names, "docs/reproductions.md shows no figures"
    for name in names:
        assert (REPO / "docs" / "figures" / name).exists()


def test_only_one_section_rewrites_only_its_block(tmp_path):
    # A run of one section (--only saxe) must keep the other sections' generated text.
    reproduce = load_script()
    doc = tmp_path / "reproductions.md"
    blocks = {key: f"{reproduce.markers(key)[0]}\n{key} text kept\n{reproduce.markers(key)[1]}"
              for key in reproduce.CLASSIC}
    doc.write_text("# Reproductions\n\n" + "\n\n".join(blocks.values()) + "\n")
    reproduce.main(["--quick", "--quiet", "--only", "saxe", "--out", str(tmp_path / "runs"),
                    "--figures", str(tmp_path / "figures"), "--doc", str(doc)])
    text = doc.read_text()
    assert "tishby text kept" in text and "digits text kept" in text and "saxe text kept" not in text
    assert text.count("| layer | peak I(X;T) |") == 2 * 3  # the saxe tables only
    assert text.index("tishby text kept") < text.index("Saxe et al.") < text.index("digits text kept")

"""The memorisation / compression / flatness section: a quick run, its block, and its numbers recomputed by hand
from the run directories."""
import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402
import reproduce_question as q  # noqa: E402

from infoplane import sharpness  # noqa: E402
from infoplane.data.modelfile import load_model_file  # noqa: E402


def _ranks(x):
    """Average ranks (1-based) by sorting, ties sharing the mean of their positions."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("question")
    doc = tmp / "reproductions.md"
    doc.write_text("# Reproductions\n\nabove\n\n<!-- generated:question:start -->\nold\n"
                   "<!-- generated:question:end -->\n\nbelow\n")
    out = reproduce.main(["--only", "question", "--quick", "--quiet", "--out", str(tmp / "runs"), "--figures",
                          str(tmp / "fig"), "--doc", str(doc)])
    return out["question"], doc.read_text(), tmp


def test_block_structure(quick):
    result, text, tmp = quick
    start, end = reproduce.markers("question")
    assert text.startswith("# Reproductions\n\nabove\n") and text.endswith(f"{end}\n\nbelow\n")
    block = text.split(start, 1)[1].split(end, 1)[0]
    assert "old" not in block and "(quick budget)" in block
    assert "complete already" not in block  # every configuration was trained by this invocation
    configs, seeds = q.grid(True)
    for dataset in q.datasets(True):
        # the medians table has one line per configuration, the correlation table one per predictor
        medians = block.split(f"#### {dataset}: medians")[1].split("####")[0]
        assert sum(line.startswith("| full |") for line in medians.splitlines()) == len(configs)
        corr = block.split(f"#### {dataset}: Spearman")[1].split("####")[0]
        for p in q.PREDICTORS:
            assert f"| {q._label(p)} |" in corr
    assert len(result["rows"]) == len(q.datasets(True)) * len(configs) * seeds
    for name in ("question-gap.png", "question-memorization-12bit.png", "question-error-digits.png"):
        assert (tmp / "fig" / name).stat().st_size > 0 and f"(figures/{name})" in block
    with open(tmp / "runs" / "question" / "per-run.csv") as f:
        assert len(list(csv.DictReader(f))) == len(result["rows"])


def test_correlations_by_hand(quick):
    result, _, _ = quick
    for dataset, corr in result["correlations"].items():
        rows = [r for r in result["rows"] if r["dataset"] == dataset]
        checked = 0
        for (p, t, subset), (rho, low, high) in corr.items():
            chosen = rows if subset == "all" else [r for r in rows if r["noise"] == 0]
            a, b = np.array([r[p] for r in chosen]), np.array([r[t] for r in chosen])
            if np.ptp(a) == 0 or np.ptp(b) == 0:
                assert np.isnan(rho)
                continue
            assert rho == pytest.approx(_pearson(_ranks(a), _ranks(b)), abs=1e-12)
            # the bootstrap interval: the same resamples, each ranked by hand
            boot = 200
            idx = np.random.default_rng(q.BOOTSTRAP_SEED).integers(0, len(a), (boot, len(a)))
            draws = [_pearson(_ranks(a[i]), _ranks(b[i])) for i in idx if np.ptp(a[i]) > 0 and np.ptp(b[i]) > 0]
            assert (low, high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])), abs=1e-9)
            checked += 1
        assert checked > 0


def test_per_run_values_from_the_files(quick):
    result, _, _ = quick
    run = result["runs"]["12-bit"][("full", "sgd", 0.5)]
    rows = [r for r in result["rows"] if r["dataset"] == "12-bit" and r["optimiser"] == "sgd" and r["noise"] == 0.5]
    layer = run.layers[-2]
    table = {}
    with open(Path(run.path) / "infoplane.csv") as f:
        for line in csv.DictReader(f):
            if line["layer"] == layer:
                table.setdefault((int(line["seed"]), line["estimator"], line["target"]), []).append(
                    (int(line["epoch"]), float(line["ixt"]), float(line["ity"])))
    with open(Path(run.path) / "metrics.csv") as f:
        metrics = [m for m in csv.DictReader(f) if int(m["epoch"]) == int(run.epochs[-1])]
    for row in rows:
        for est in q.ESTIMATORS:
            pts = sorted(table[(row["seed"], est, "")])
            assert row[f"compression_{est}"] == pytest.approx(max(v for _, v, _ in pts) - pts[-1][1], abs=1e-12)
            assert row[f"ity_trained_{est}"] == pytest.approx(pts[-1][2], abs=1e-12)
            assert row[f"ity_clean_{est}"] == pytest.approx(sorted(table[(row["seed"], est, "y_clean")])[-1][2],
                                                           abs=1e-12)
        m = next(m for m in metrics if int(m["seed"]) == row["seed"])
        assert row["gap_trained"] == pytest.approx(float(m["train_acc"]) - float(m["test_acc"]), abs=1e-12)
        assert row["gap_clean"] == pytest.approx(float(m["train_acc_clean"]) - float(m["test_acc_clean"]),
                                                 abs=1e-12)


def test_final_sharpness_is_the_trained_network_on_its_training_rows(quick):
    """SAM sharpness of one seed, measured directly on the network rebuilt from the saved state, on the first
    training rows the measures use, against the labels the network was trained on."""
    result, _, _ = quick
    run = result["runs"]["digits"][("full", "sam", 0.5)]
    row = next(r for r in result["rows"] if r["dataset"] == "digits" and r["optimiser"] == "sam")
    i = run.seeds.index(row["seed"])
    mf = load_model_file(q.common.REPO / "examples" / "digits_tanh_q8.py")
    state = torch.load(Path(run.path) / "train_state.pt", weights_only=True)
    member = next(m for m in state["members"] if int(m["seed"]) == row["seed"])
    net = mf.build(row["seed"])
    net.load_state_dict({**member["params"], **member["buffers"]})
    train = np.asarray(run.meta["split"]["train"][i])
    from infoplane.tracking.sharpness import subset_indices

    take = torch.as_tensor(train[subset_indices(len(train), q.sharpness_rows(True), 0)])
    x = torch.as_tensor(np.asarray(mf.data()[0]), dtype=torch.float32)[take]
    labels = np.asarray(run.corruption["labels"])  # one draw for every seed, or one row per seed
    y = torch.as_tensor(labels[i] if labels.ndim == 2 else labels)[take]
    opts = q.QUICK_OPTIONS["sam_sharpness"]
    direct = sharpness.sam_sharpness(net, torch.nn.CrossEntropyLoss(), x, y, seed=row["seed"], **opts).value
    assert row["sam_sharpness"] == pytest.approx(direct, rel=1e-4, abs=1e-7)

"""The gradient-statistics reproductions: a quick run of one section, checked against the run's own files."""
import csv
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402
import reproduce_dynamics as dyn  # noqa: E402

from infoplane.tracking.gradients import phase_transition  # noqa: E402


def test_fullbatch_quick_and_per_seed_epochs(tmp_path):
    doc = tmp_path / "reproductions.md"
    out = reproduce.main(["--only", "fullbatch", "--quick", "--quiet", "--out", str(tmp_path / "runs"),
                          "--figures", str(tmp_path / "fig"), "--doc", str(doc)])
    runs = out["fullbatch"]
    start, end = reproduce.markers("fullbatch")
    assert start in doc.read_text() and end in doc.read_text()
    assert (tmp_path / "fig" / "fullbatch-vs-minibatch.png").stat().st_size > 0
    # One optimiser step per epoch with the whole training set as the batch; ceil(n_train / 256) with mini-batches.
    n_train = len(runs["full batch"].meta["split"]["train"][0])
    for label, per_epoch in (("full batch", 1), ("mini-batch 256", math.ceil(n_train / 256))):
        run = runs[label]
        with open(Path(run.path) / "gradients.csv") as f:
            lines = list(csv.DictReader(f))
        later = {int(r["batches"]) for r in lines if int(r["epoch"]) > 0}
        assert later == {per_epoch}, (label, later)
    # per_seed's epochs, recomputed from the files by hand
    run = runs["mini-batch 256"]
    trans, peak = dyn.per_seed(run, "binning")
    with open(Path(run.path) / "gradients.csv") as f:
        lines = list(csv.DictReader(f))
    table = {}
    with open(Path(run.path) / "infoplane.csv") as f:
        for r in csv.DictReader(f):
            if r["estimator"] == "binning" and not r.get("target"):
                table.setdefault((int(r["seed"]), r["layer"]), []).append((int(r["epoch"]), float(r["ixt"])))
    for i, seed in enumerate(run.seeds):
        for j, layer in enumerate(run.layers[:-1]):
            pts = sorted(table[(seed, layer)])
            best = max(v for _, v in pts)
            assert peak[i, j] == next(e for e, v in pts if v == best)
            mine = sorted((int(r["epoch"]), float(r["snr"])) for r in lines
                          if int(r["seed"]) == seed and r["layer"] == layer and r["snr"] != "")
            expected = phase_transition([e for e, _ in mine], [s for _, s in mine], window=dyn.WINDOW,
                                        threshold=dyn.THRESHOLD) if mine else None
            assert (np.isnan(trans[i, j]) and expected is None) or trans[i, j] == expected

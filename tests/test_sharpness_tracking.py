"""Sharpness recorded beside the plane: Tracker(sharpness=...), sharpness.csv, Run.sharpness, the loggers' tags,
and training bit-identical with and without it."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import infoplane
from infoplane import load_run
from infoplane.runs import lifecycle
from infoplane.runs.format import SHARPNESS, SharpnessRow, format_sharpness_row, parse_sharpness_row
from infoplane.sharpness import hessian_top_eigenvalue, hessian_trace, sam_sharpness
from infoplane.tracking.sharpness import as_measures, subset_indices


def make_data(n=96, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def build(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 2))


def train(model, x, y, epochs, tracker=None, batch=16, seed=0):
    """A plain loop with dropout (so that a measure moving the global RNG would change training)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    torch.manual_seed(seed + 100)
    if tracker is not None:
        tracker.step(0)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if tracker is not None:
            tracker.step(epoch, train_loss=losses[-1])
    return losses, opt


MEASURES = {"hessian_top_eigenvalue": {"max_iter": 8}, "hessian_trace": {"samples": 2},
            "sam_sharpness": {"rho": 0.05, "steps": 2}}


def test_tracker_records_sharpness_and_leaves_training_bit_identical(tmp_path):
    x, y = make_data()
    plain = build(0)
    losses_plain, opt_plain = train(plain, x, y, 3)

    model = build(0)
    out = tmp_path / "run"
    with infoplane.Tracker(model, x, y, out=out, seed=0, schedule=[0, 3], sharpness=MEASURES,
                           sharpness_data=(x, y), sharpness_samples=40, sharpness_seed=7) as t:
        losses, opt = train(model, x, y, 3, tracker=t)
    # training bit for bit the same: losses, parameters, momentum buffers
    assert losses == losses_plain
    for p, q in zip(model.parameters(), plain.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(opt.state.values(), opt_plain.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])

    run = load_run(out)
    assert run.complete and run.meta["format_version"] == 3
    settings = run.meta["sharpness"]
    rows = subset_indices(len(x), 40, 7)
    assert settings["subset"] == rows.tolist() and settings["samples"] == 40
    assert len(set(settings["subset"])) == 40
    assert run.sharpness.measures == list(MEASURES)
    assert len(run.sharpness.rows) == 2 * 3
    # the stored value is the pure function's on the recorded subset, seeded with the model's seed
    final = run.sharpness.get("hessian_top_eigenvalue", seed=0)
    direct = hessian_top_eigenvalue(model, nn.CrossEntropyLoss(), x[rows], y[rows], max_iter=8, seed=0)
    assert final[-1] == direct.value
    assert run.sharpness.get("hessian_top_eigenvalue", "converged")[0, -1] == float(direct.converged)
    tr = hessian_trace(model, nn.CrossEntropyLoss(), x[rows], y[rows], samples=2, seed=0)
    assert run.sharpness.get("hessian_trace", "stderr", seed=0)[-1] == tr.stderr
    sam = sam_sharpness(model, nn.CrossEntropyLoss(), x[rows], y[rows], rho=0.05, steps=2, seed=0)
    assert run.sharpness.get("sam_sharpness", "one_step", seed=0)[-1] == sam.one_step
    assert np.isnan(run.sharpness.get("hessian_trace", "one_step")).all()  # not given: NaN, empty in the file
    # epochs are aligned with the run's; unrecorded epochs are absent
    assert run.epochs.tolist() == [0, 3]
    # the file: keys, then empty cells where a measure gives no such diagnostic, never "nan" for them
    with open(out / SHARPNESS) as f:
        lines = list(csv.DictReader(f))
    trace_line = next(r for r in lines if r["measure"] == "hessian_trace")
    assert trace_line["one_step"] == "" and trace_line["converged"] == "" and trace_line["stderr"] != ""
    # pandas: one column per measure beside the table, and the long table with diagnostics
    pytest.importorskip("pandas")
    df = run.to_pandas()
    assert {"sharpness:hessian_trace", "sharpness:sam_sharpness"} <= set(df.columns)
    last = df[df.epoch == 3]["sharpness:hessian_top_eigenvalue"].unique()
    assert last.tolist() == [direct.value]
    assert len(run.sharpness.to_pandas()) == 6
    # the file is infoplane's own: overwriting the run removes it
    assert lifecycle.foreign_entries(out) == []


def test_sharpness_rows_round_trip_and_nan_is_not_empty():
    row = SharpnessRow(seed=1, epoch=5, measure="hessian_trace", value=math.nan, loss=0.25, stderr=0.5,
                       samples=4)
    cells = format_sharpness_row(row)
    assert cells[3] == "nan" and cells[5] == ""  # a computed NaN stays "nan"; rho (absent) is empty
    back = parse_sharpness_row(cells)
    assert math.isnan(back.value) and back.loss == 0.25 and back.samples == 4 and back.rho is None


def test_resume_drops_sharpness_of_epochs_missing_from_the_table(tmp_path):
    x, y = make_data()
    model = build(1)
    out = tmp_path / "run"
    t = infoplane.Tracker(model, x, y, out=out, seed=0, schedule=[0, 1, 2], flush_seconds=None,
                          sharpness={"hessian_trace": {"samples": 2}}, sharpness_data=(x, y))
    t.step(0)
    t.flush()
    t.step(1)  # its sharpness is written at once, its plane row only buffered
    with open(out / SHARPNESS) as f:
        assert sum(1 for _ in f) == 3
    t._writer.finish(complete=False)  # a crash: the buffered epoch is lost
    t._finalizer.detach()
    t2 = infoplane.Tracker(model, x, y, out=out, seed=0, schedule=[0, 1, 2], resume=True,
                           sharpness={"hessian_trace": {"samples": 2}}, sharpness_data=(x, y))
    assert [r.epoch for r in t2._writer.sharpness] == [0]
    t2.step(1)
    t2.step(2)
    t2.close()
    run = load_run(out)
    assert sorted((r.epoch for r in run.sharpness.rows)) == [0, 1, 2]
    # other measures on resume: refused, naming the setting
    with pytest.raises(ValueError, match="sharpness"):
        infoplane.Tracker(model, x, y, out=out, seed=0, schedule=[0, 1, 2], resume=True,
                          sharpness={"hessian_trace": {"samples": 3}}, sharpness_data=(x, y))


def test_old_runs_without_sharpness_load(tmp_path):
    x, y = make_data()
    out = tmp_path / "run"
    with infoplane.Tracker(build(0), x, y, out=out, seed=0, schedule=[0]) as t:
        t.step(0)
    meta = json.loads((out / "meta.json").read_text())
    meta["format_version"] = 2
    (out / "meta.json").write_text(json.dumps(meta))
    run = load_run(out)
    assert not run.sharpness and run.sharpness.measures == [] and not os.path.exists(out / SHARPNESS)
    with pytest.raises(ValueError, match="no sharpness measure"):
        run.sharpness.get("hessian_trace")


def test_bad_sharpness_requests_are_named():
    x, y = make_data()
    model = build(0)
    with pytest.raises(ValueError, match="unknown sharpness measure 'sharpest'.*hessian_trace"):
        infoplane.Tracker(model, x, y, sharpness=["sharpest"], sharpness_data=(x, y))
    with pytest.raises(ValueError, match="rho.*> 0"):
        infoplane.Tracker(model, x, y, sharpness={"sam_sharpness": {"rho": 0}}, sharpness_data=(x, y))
    with pytest.raises(ValueError, match="rho.*> 0"):
        as_measures("random_sharpness", rho=-1.0)
    with pytest.raises(ValueError, match="no option.*'seed'.*model's seed"):
        as_measures({"hessian_trace": {"seed": 3}})
    with pytest.raises(ValueError, match="sharpness_data"):
        infoplane.Tracker(model, x, y, sharpness="hessian_trace")
    frozen = build(0).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        infoplane.Tracker(frozen, x, y, sharpness="hessian_trace", sharpness_data=(x, y))
    with pytest.raises(ValueError, match="scalar.*returned \\[2\\]"):
        infoplane.Tracker(model, x, y, schedule=[0], sharpness="hessian_trace", sharpness_data=(x, y),
                          sharpness_loss=nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="sharpness_data failed"):
        infoplane.Tracker(model, x, y, sharpness="hessian_trace", sharpness_data=(x[:, :3], y))
    assert model.training
    assert as_measures("sam_sharpness, adaptive_sharpness", rho=0.2) == {
        "sam_sharpness": {"rho": 0.2}, "adaptive_sharpness": {"rho": 0.2}}


def test_ensemble_and_loggers_get_sharpness_tags(tmp_path):
    x, y = make_data()
    models = [build(0), build(1)]

    class Sink:
        def __init__(self):
            self.tags = []

        def log_rows(self, rows, run):
            pass

        def log_sharpness(self, rows, run):
            from infoplane.integrations.backend import sharpness_tags
            self.tags += [tag for r in rows for tag, _ in sharpness_tags(r, len(run.seeds))]

        def close(self, run):
            pass

    sink = Sink()
    data = [(x[:50], y[:50]), (x[50:], y[50:])]
    with infoplane.Tracker(models, x, y, seeds=[3, 4], schedule=[0], loggers=sink,
                           sharpness={"hessian_trace": {"samples": 2}}, sharpness_data=data,
                           sharpness_samples=None) as t:
        t.step(0)
    run = t.run
    assert sorted(sink.tags) == ["sharpness/hessian_trace/seed3", "sharpness/hessian_trace/seed4"]
    # each seed on its own data, with its own seed
    direct = hessian_trace(models[1], nn.CrossEntropyLoss(), x[50:], y[50:], samples=2, seed=4).value
    assert run.sharpness.get("hessian_trace", seed=4)[0] == direct
    assert run.meta["sharpness"]["subset"] == [list(range(50)), list(range(46))]


@pytest.mark.parametrize("fused", ["auto", False])
def test_fit_engines_train_the_same_with_sharpness_recorded(fused):
    """The fused kernel and the stacked ensemble hand the tracker torch modules over their weights: measuring
    them changes nothing in training."""
    from infoplane.train import fit

    x, y = make_data(n=64)

    def net():
        return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))

    plain = fit(net, x, y, np.arange(48), seeds=3, epochs=1, batch_size=16, lr=0.05, optimizer="sgd", fused=fused)
    trackers = []

    def callback(epoch, members, metrics):
        if not trackers:
            trackers.append(infoplane.Tracker(members, x, y, seeds=[0, 1, 2], sharpness={"hessian_trace": {
                "samples": 2}}, sharpness_data=(x[:48], y[:48])))
        trackers[0].step(epoch)

    recorded = fit(net, x, y, np.arange(48), seeds=3, epochs=1, batch_size=16, lr=0.05, optimizer="sgd",
                   fused=fused, callback=callback)
    trackers[0].close()
    assert recorded.vectorized and recorded.reason == plain.reason
    for a, b in zip(plain.members, recorded.members):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    run = trackers[0].run
    assert run.sharpness.get("hessian_trace").shape == (3, 2)
    # the last epoch's value is the trained network's
    final = hessian_trace(recorded.members[2], nn.CrossEntropyLoss(), x[:48], y[:48], samples=2, seed=2).value
    assert run.sharpness.get("hessian_trace", seed=2)[-1] == pytest.approx(final, rel=1e-5)


def test_ensemble_batches_seeds_and_matches_each_network_alone():
    from infoplane.sharpness import adaptive_sharpness, ensemble, random_sharpness

    x, y = make_data(n=40)
    models = [build(s) for s in range(3)]
    xs, ys = [x[:20], x[20:], x[10:30]], [y[:20], y[20:], y[10:30]]
    loss = nn.CrossEntropyLoss()
    calls = {"hessian_top_eigenvalue": (hessian_top_eigenvalue, {"max_iter": 8, "tol": 1e-3}),
             "hessian_trace": (hessian_trace, {"samples": 2}),
             "random_sharpness": (random_sharpness, {"rho": 0.1, "samples": 2}),
             "sam_sharpness": (sam_sharpness, {"rho": 0.1, "steps": 3}),
             "adaptive_sharpness": (adaptive_sharpness, {"rho": 0.3, "steps": 3})}
    for name, (f, options) in calls.items():
        results, how = ensemble(models, loss, xs, ys, name, seeds=[5, 6, 7], **options)
        assert how == "batched"
        for r, m, xi, yi, s in zip(results, models, xs, ys, [5, 6, 7]):
            alone = f(m, loss, xi, yi, seed=s, **options)
            assert r.value == pytest.approx(alone.value, rel=1e-4, abs=1e-6)
            assert r.loss == pytest.approx(alone.loss, rel=1e-6)
            if hasattr(alone, "one_step"):
                assert r.one_step == pytest.approx(alone.one_step, rel=1e-4, abs=1e-6)
    # the models are left as they were: training mode, parameters
    assert all(m.training for m in models)
    # data of other shapes: one network at a time, saying why
    _, how = ensemble(models, loss, [x[:20], x[:21], x[:20]], [y[:20], y[:21], y[:20]], "hessian_trace",
                      seeds=[0, 1, 2], samples=2)
    assert how == "the seeds' data differ in shape"
    _, how = ensemble(models, loss, xs, ys, "sam_sharpness", seeds=[0, 1, 2], rho=0.05, steps=1, batch_size=8)
    assert how == "batch_size is set"

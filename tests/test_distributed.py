"""Tracker under torch.distributed: 2 CPU processes on the gloo backend against a single-process run.

The two ranks are forked from the test process (no second torch import, which costs seconds on a loaded
machine) and meet through a file in tmp_path (no ports). Everything distributed runs in one launch.
"""
import json
import math
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import infoplane
from infoplane.estimators import KDE, Binning
from infoplane.runs.writer import read_metrics, read_table
from infoplane.tracking.distributed import DistributedStepError, shard_range, strip_prefix, unwrap

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

N = 101                      # odd: the two shards are 51 and 50 samples
SCHEDULE = [0, 1, 2, 3, 5]
EPOCHS = 6
RESUME_AT = 4                # the first tracker stops here; a resumed one finishes the run
ESTIMATORS = [Binning(bins=30, range=(-1, 1)), KDE(noise_var=1e-2)]


def make_net():
    torch.manual_seed(0)
    dims = (12, 10, 7, 5, 4, 3, 2)
    mods = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*mods[:-1])


def data():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 2, (N, 12), generator=g).float()
    return x, (x[:, :6].sum(1) > x[:, 6:].sum(1)).long()


def gradient_epochs(net, x, y, tracker, parts):
    """Two SGD steps per epoch, each on ``parts(step)``: the rows a rank trains on, or (single process) the mean
    of both ranks' losses, which is what DDP's averaged gradient descends."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    tracker.step(0)
    for epoch in (1, 2):
        for k in range(2):
            opt.zero_grad()
            loss = sum(nn.functional.cross_entropy(net(x[q]), y[q]) for q in parts(k)) / len(parts(k))
            loss.backward()
            opt.step()
        tracker.step(epoch)


def _quarter(rank, k):
    return slice(50 * rank + 25 * k, 50 * rank + 25 * (k + 1))


def train_epoch(net, opt, x, y):
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


# ------------------------------------------------------------------------------------------- the two ranks
def _ranks(rank, tmp, world):
    torch.set_num_threads(1)  # forked workers: keep OpenMP out of the children (as DataLoader workers do)
    # The default group's timeout only guards the test against a hang in a bug; the tracker has its own.
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        report = _scenario(rank, Path(tmp))
        with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
            json.dump(report, f)
    finally:
        dist.destroy_process_group()


def _scenario(rank, tmp):
    x, y = data()
    net = nn.parallel.DistributedDataParallel(make_net())
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    report = {}
    # A: default layers, one out= for all ranks (only rank 0 writes). B: explicit names, with and without
    # DDP's `module.` prefix on different ranks, each rank its own out= (rank 1's must stay untouched).
    a = infoplane.Tracker(net, x, y, estimators=ESTIMATORS, schedule=SCHEDULE, out=tmp / "a")
    b = infoplane.Tracker(net, x, y, layers=["module.1", "3"] if rank == 0 else ["1", "module.3"],
                          estimators=ESTIMATORS[:1], schedule=SCHEDULE, out=tmp / ("b" if rank == 0 else "b-rank1"),
                          reduce_metrics="mean")
    report.update(a_layers=a.layers, b_layers=b.layers, a_path=a.path, b_path=b.path, rank=a.rank,
                  world_size=a.world_size, returned=[], resumed=[])
    for epoch in range(EPOCHS):
        if epoch == RESUME_AT:
            a.close()
            a = infoplane.Tracker(net, x, y, estimators=ESTIMATORS, schedule=SCHEDULE, out=tmp / "a", resume=True)
            # Every rank skips what rank 0's run holds, though only rank 0 can read it.
            report["resumed"] = [a.step(e) for e in range(RESUME_AT)]
        loss = train_epoch(net, opt, x, y)
        report["returned"].append([a.step(epoch, loss=loss + rank), b.step(epoch, loss=loss + rank)])
    a.close()
    b.close()
    report["b_rank1_exists"] = (tmp / "b-rank1").exists()

    # Ranks that disagree on the epoch fail at once, on every rank.
    c = infoplane.Tracker(net, x, y, schedule=[0, 1])
    try:
        c.step(rank)
    except ValueError as err:
        report["mismatch"] = str(err)
    c.close()

    # A probe that fails on one rank's shard (NaN there only) fails on every rank, naming that rank.
    bad = make_net()
    if rank == 1:
        with torch.no_grad():
            bad[0].bias[0] = float("nan")
    e = infoplane.Tracker(bad, x[:4], y[:4], schedule=[0])  # rank 1's shard has NaN activations, rank 0's not
    try:
        e.step(0)
    except ValueError as err:
        report["probe_failure"] = str(err)
    e.close()

    # Rank 1 skips step(): rank 0 times out with a clear error, then both meet on the default group.
    d = infoplane.Tracker(net, x, y, schedule=[0], dist_timeout=3)
    if rank == 0:
        try:
            d.step(0)
        except DistributedStepError as err:
            report["timeout"] = str(err)
    dist.barrier()
    d.close()

    # Gradient statistics: each rank steps on its own rows; the stored ones are those of DDP's averaged gradient.
    g_net = nn.parallel.DistributedDataParallel(make_net())
    with infoplane.Tracker(g_net, x, y, schedule=[1, 2], out=tmp / "g", gradients=True) as g:
        gradient_epochs(g_net, x, y, g, lambda k: [_quarter(rank, k)])
    report["g_path"] = g.path
    return report


def _single_process(tmp):
    """The same training and tracking in one process, over the whole probe set."""
    x, y = data()
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    with infoplane.Tracker(net, x, y, estimators=ESTIMATORS, schedule=SCHEDULE, out=tmp / "ref") as t:
        for epoch in range(EPOCHS):
            t.step(epoch, loss=train_epoch(net, opt, x, y))
    g_net = make_net()
    with infoplane.Tracker(g_net, x, y, schedule=[1, 2], out=tmp / "gref", gradients=True) as g:
        gradient_epochs(g_net, x, y, g, lambda k: [_quarter(0, k), _quarter(1, k)])
    return t.layers


def test_two_gloo_ranks_write_the_single_process_rows(tmp_path):
    # The reference first: the forked ranks then inherit its imports (the optimiser's alone take seconds).
    ref_layers = _single_process(tmp_path)
    mp.start_processes(_ranks, args=(str(tmp_path), 2), nprocs=2, start_method="fork")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    # Layers: DDP's inner module, names recorded without `module.` whichever way they were given.
    assert r0["a_layers"] == r1["a_layers"] == ref_layers == ["1", "3", "5", "7", "9", "10"]
    assert r0["b_layers"] == r1["b_layers"] == ["1", "3"]
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)

    # Only rank 0 writes: rank 1 has no path, and its own out= was never created.
    assert r0["a_path"] == str(tmp_path / "a") and r1["a_path"] is None and r1["b_path"] is None
    assert not r1["b_rank1_exists"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["a", "b", "g", "gref", "ref"]

    # Both ranks agree on what was recorded and on what the resumed run already held.
    expected = [[e in SCHEDULE] * 2 for e in range(EPOCHS)]
    assert r0["returned"] == r1["returned"] == expected
    assert r0["resumed"] == r1["resumed"] == [False] * RESUME_AT

    # The rows equal the single-process run: binning exactly, KDE to 1e-6.
    got, ref = read_table(tmp_path / "a" / "infoplane.csv"), read_table(tmp_path / "ref" / "infoplane.csv")
    assert [r[:5] for r in got] == [r[:5] for r in ref]
    assert len(ref) == len(SCHEDULE) * 6 * 2
    for g, r in zip(got, ref):
        for field in ("ixt", "ity", "ixt_lower", "ity_lower"):
            gv, rv = getattr(g, field), getattr(r, field)
            if r.estimator == "binning":
                assert (math.isnan(gv) and math.isnan(rv)) or gv == rv, (g, r)
            else:
                assert gv == pytest.approx(rv, abs=1e-6), (g, r)
    assert infoplane.load_run(tmp_path / "a").meta["complete"]

    # Metrics: rank 0's by default, the mean over ranks (loss + 0, loss + 1) with reduce_metrics="mean".
    _, ref_m = read_metrics(tmp_path / "ref" / "metrics.csv")
    _, a_m = read_metrics(tmp_path / "a" / "metrics.csv")
    _, b_m = read_metrics(tmp_path / "b" / "metrics.csv")
    assert sorted(a_m) == sorted(b_m) == sorted(ref_m) == [(0, e) for e in SCHEDULE]
    for k in ref_m:
        assert a_m[k]["loss"] == pytest.approx(ref_m[k]["loss"], abs=1e-6)
        assert b_m[k]["loss"] == pytest.approx(ref_m[k]["loss"] + 0.5, abs=1e-6)

    # Disagreeing epochs: a clear error on both ranks. A skipped step: a timeout naming the epoch and the fix.
    for r in (r0, r1):
        assert "different epochs" in r["mismatch"] and "rank 0: 0, rank 1: 1" in r["mismatch"]
    for r in (r0, r1):
        assert r["probe_failure"].startswith("rank 1 failed to probe its shard at epoch 0") and "non-finite" in \
            r["probe_failure"]
    assert "step(epoch=0)" in r0["timeout"] and "dist_timeout=3" in r0["timeout"]
    assert "every rank must call it" in r0["timeout"]

    # Gradient statistics of the global mini-batch gradient (not rank 0's own), written by rank 0 alone.
    assert r0["g_path"] == str(tmp_path / "g") and r1["g_path"] is None
    got, ref = (infoplane.load_run(tmp_path / d).gradients for d in ("g", "gref"))
    assert got.epochs.tolist() == ref.epochs.tolist() == [1, 2] and np.all(got.get("batches") == 2)
    for field in ("mean_norm", "std_norm", "snr"):
        assert np.allclose(got.get(field), ref.get(field), rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------------ pure helpers
def test_shard_ranges_cover_the_probe_set_in_order():
    for n in (0, 1, 5, 101, 1000):
        for world in (1, 2, 3, 8):
            ranges = [shard_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [b - a for a, b in ranges]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="rank"):
        shard_range(10, 2, 2)


def test_module_prefix_is_stripped_only_for_wrappers():
    net = make_net()
    wrapped = nn.DataParallel(net)  # same `module.` naming as DDP, no process group needed
    assert unwrap(wrapped) is net and unwrap(net) is net
    assert strip_prefix(["module.1", "3", "module.*"], wrapped) == ["1", "3", "*"]
    assert strip_prefix("module.1", net) == "module.1"
    x, y = data()
    with infoplane.Tracker(wrapped, x, y, layers=["module.1", "3"], schedule=[0]) as t:
        assert t.layers == ["1", "3"] and t.step(0)
    assert [r.layer for r in t.run.rows] == ["1", "3"]


def test_distributed_options_are_checked_outside_a_job():
    x, y = data()
    with pytest.raises(ValueError, match="reduce_metrics"):
        infoplane.Tracker(make_net(), x, y, reduce_metrics="sum")
    with pytest.raises(ValueError, match="dist_timeout"):
        infoplane.Tracker(make_net(), x, y, dist_timeout=0)

"""Side variables (Tracker(targets=...)), the run table's target column, the chain check and the plane's bounds."""
import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

import infoplane
import infoplane.plot
from infoplane.capture.chain import is_chain
from infoplane.estimators import KNN, Binning, Discrete, ksg_mi
from infoplane.runs.format import FIELDS, Row
from infoplane.viz.stats import chain_report, chain_summary


class Rounded(nn.Module):
    """tanh rounded to one decimal: a layer with few exact values, whose discrete MI can be counted by hand."""

    def forward(self, x):
        return torch.round(torch.tanh(x) * 2) / 2


def _mi_by_counts(rows, z):
    """Plug-in I(T;Z) in bits from numpy counts of the distinct rows of T and the values of Z."""
    _, t = np.unique(rows, axis=0, return_inverse=True)
    t = t.reshape(-1)
    n = len(z)
    joint = np.zeros((t.max() + 1, z.max() + 1))
    np.add.at(joint, (t, z), 1.0)
    p = joint / n
    pt, pz = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (pt @ pz)[nz])).sum())


def _entropy(z):
    p = np.bincount(z) / len(z)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def test_side_variables_are_measured_stored_and_read_back(tmp_path):
    torch.manual_seed(0)
    n = 120
    x = torch.randint(0, 2, (n, 6)).float()
    y = (x[:, 0] > 0).long()
    parity = ((x[:, 1] + x[:, 2]) % 2).long()
    x_irr = x[:, 3:] + 0.01 * torch.randn(n, 3)
    model = nn.Sequential(nn.Linear(6, 3), Rounded(), nn.Linear(3, 2), Rounded(), nn.Linear(2, 2))
    layers = ["1", "3"]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ests = [Discrete(), KNN(k=3)]
    with infoplane.Tracker(model, x, y, layers=layers, estimators=ests, out=tmp_path / "run",
                           targets={"parity": parity, "x_irr": x_irr}, flush_seconds=None) as tr:
        tr.step(0)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        tr.step(1)
    run = infoplane.load_run(tmp_path / "run")
    assert run.targets == ["parity", "x_irr"]
    meta = {t["name"]: t for t in run.meta["targets"]}
    assert meta["parity"]["kind"] == "discrete" and meta["x_irr"]["kind"] == "continuous"
    assert meta["parity"]["h"] == pytest.approx(_entropy(parity.numpy()))
    assert run.meta["format_version"] == 3 and run.meta["chain"]["chain"] is True

    # The discrete estimator's I(T;parity) against counts done here, at the final epoch's network.
    acts = {}
    hooks = [dict(model.named_modules())[name].register_forward_hook(
        lambda m, i, o, name=name: acts.__setitem__(name, o.detach().numpy())) for name in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    got = run.get("ity", estimator="discrete", target="parity", seed=0)[-1]
    want = [_mi_by_counts(acts[name], parity.numpy()) for name in layers]
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert np.all(got <= meta["parity"]["h"] + 1e-12)
    # I(X;T) of a target row is the labels' row's; the labels' I(T;Y) is untouched by the targets.
    np.testing.assert_array_equal(run.get("ixt", "discrete", target="parity"), run.get("ixt", "discrete"))
    np.testing.assert_allclose(run.get("ity", "discrete", seed=0)[-1],
                               [_mi_by_counts(acts[name], y.numpy()) for name in layers], atol=1e-9)
    # A continuous target by KSG between Z and the layer (the estimator the run names), float64 inputs.
    ksg = [float(ksg_mi(x_irr.double(), torch.from_numpy(acts[name]), k=3).mi) for name in layers]
    np.testing.assert_allclose(run.get("ity", "knn", target="x_irr", seed=0)[-1], ksg, atol=1e-6)
    # The file: a target column, empty for the labels' rows.
    with open(tmp_path / "run" / "infoplane.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(FIELDS)
    assert sorted({r["target"] for r in table}) == ["", "parity", "x_irr"]
    assert len(table) == 2 * 2 * 5  # epochs x layers x (Y and parity by both estimators, x_irr by knn alone)
    assert run.meta["targets"][1]["estimators"] == ["knn"]
    pd = pytest.importorskip("pandas")
    df = run.to_pandas()
    assert isinstance(df, pd.DataFrame) and set(df["target"]) == {"", "parity", "x_irr"}
    # Seen through a target, the run is an ordinary run of (I(X;T), I(T;Z)).
    view = run.for_target("parity")
    np.testing.assert_array_equal(view.get("ity", "discrete"), run.get("ity", "discrete", target="parity"))
    assert view.h_y == meta["parity"]["h"] and view.targets == []
    # Resuming with other side variables is refused.
    with pytest.raises(ValueError, match="targets"):
        infoplane.Tracker(model, x, y, layers=layers, estimators=ests, out=tmp_path / "run", resume=True,
                          targets={"parity": parity})


def test_side_variables_refused_with_a_clear_error():
    x, y = torch.randn(40, 4), torch.arange(40) % 2
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"has 39 samples.*N = 40"):
        infoplane.Tracker(model, x, y, targets={"z": torch.arange(39) % 2})
    with pytest.raises(ValueError, match=r"continuous side variable.*'binning'.*can: knn, renyi"):
        infoplane.Tracker(model, x, y, estimators=[Binning(bins=30, range=(-1, 1))], targets={"z": x[:, :2]})
    with pytest.raises(ValueError, match=r"targets\['z'\].*negative"):  # through the one label validator
        infoplane.Tracker(model, x, y, targets={"z": torch.arange(40) - 1})
    with pytest.raises(TypeError, match="dict"):
        infoplane.Tracker(model, x, y, targets=[("z", y)])
    with pytest.raises(ValueError, match="names must be"):
        infoplane.Tracker(model, x, y, targets={"": y})


def test_a_version_2_table_still_loads(tmp_path):
    old = list(FIELDS[:13])
    meta = {"format": "infoplane-run", "format_version": 2, "layers": [{"name": "a"}], "seeds": [0],
            "estimators": [{"name": "binning"}], "n": 8, "log2_n": 3.0, "h_y": 1.0, "complete": True}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with open(tmp_path / "infoplane.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(old)
        w.writerow(["0", "", "0", "a", "binning", "1.5", "0.5", "", "", "", "", "", ""])
    run = infoplane.load_run(tmp_path)
    assert run.targets == [] and len(run.rows) == 1
    assert run.rows[0].target == "" and run.rows[0].ixt == 1.5 and np.isnan(run.rows[0].ity_se)
    assert run.get("ity")[0, 0, 0] == 0.5


def test_the_chain_is_found_from_the_graph_and_skip_connections_are_not_chains():
    seq = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    assert is_chain(seq, ["1", "3"])[0] is True

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.ta, self.tb = nn.Tanh(), nn.Tanh()

        def forward(self, x):
            h = self.ta(self.a(x))
            return self.c(self.tb(self.b(h)) + x)  # the input reaches c around both layers

    found, why = is_chain(Skip(), ["ta", "tb", "c"])
    assert found is False and "'c'" in why and "'tb'" in why
    assert is_chain(Skip(), ["ta", "tb"])[0] is True

    class Branchy(nn.Module):  # data-dependent control flow: fx cannot trace it, the question stays open
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) if h.sum() > 0 else self.b(-h)

    assert is_chain(Branchy(), ["a", "b"])[0] is None


def test_reduced_layers_are_not_checked_against_each_other(tmp_path):
    # A CNN whose conv layers are estimated on their channel means: a channel mean of one layer is not what the
    # next layer is computed from, so the inequality does not bind the estimates. Whole layers still form a chain.
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    x = torch.randn(40, 1, 5, 5)
    y = torch.arange(40) % 2
    metas = {}
    for reduce in ("flatten", "channel-mean"):
        with infoplane.Tracker(cnn, x, y, layers=["1", "3"], estimators=[Binning(adaptive=True)], reduce=reduce,
                               flush_seconds=None) as tr:
            tr.step(0)
        metas[reduce] = tr.run.meta["chain"]
    assert metas["flatten"]["chain"] is True and metas["flatten"]["source"] == "graph"
    assert metas["channel-mean"]["chain"] is False and metas["channel-mean"]["source"] == "reduction"
    assert "1 (channel-mean), 3 (channel-mean)" in metas["channel-mean"]["why"]
    run = tr.run
    assert chain_report(run).count == 0 and "not a chain" in chain_summary(run)


def _run(ixt, ity, chain=True, se=None):
    """A hand-made run: one seed, values [epochs, layers]."""
    e, n_layers = np.asarray(ixt).shape
    meta = {"layers": [{"name": f"l{j}"} for j in range(n_layers)], "seeds": [0], "estimators": [{"name": "est"}],
            "n": 16, "log2_n": 4.0, "h_y": 1.0, "complete": True,
            "chain": {"chain": chain, "source": "declared", "why": "declared by the user"}}
    rows = [Row(0, None, i, f"l{j}", "est", float(ixt[i][j]), float(ity[i][j]), np.nan, np.nan,
                np.nan if se is None else se, np.nan if se is None else se)
            for i in range(e) for j in range(n_layers)]
    return infoplane.Run(meta, rows)


def test_chain_report_counts_growth_along_the_layers():
    ixt = [[3.0, 2.0, 1.0], [3.0, 3.8, 1.0]]       # epoch 1: layer 1 holds more than layer 0
    ity = [[1.0, 0.9, 0.8], [0.5, 0.4, 0.45]]      # epoch 1: layer 2 holds more than layer 1
    rep = chain_report(_run(ixt, ity))
    assert rep.count == 2 and rep.epochs == [1]
    assert rep.ixt[1].tolist() == [False, True, False] and rep.ity[1].tolist() == [False, False, True]
    assert chain_report(_run(ixt, ity), tol=0.1).count == 1          # the 0.05 growth is within the tolerance
    assert chain_report(_run(ixt, ity, se=0.2)).count == 1           # ... or within 2 standard errors (0.57)
    assert "2 violation(s)" in chain_summary(_run(ixt, ity))
    skip = _run(ixt, ity, chain=False)
    assert chain_report(skip).count == 0 and "not a chain" in chain_summary(skip)


def test_exact_estimates_of_equal_information_are_not_flagged():
    # T2 is a function of T1 and both determine Y: I(T1;Y) = I(T2;Y) = H(Y), but the two entropies are summed
    # over different count tables and differ in the last bits. That rounding is not a violation.
    from infoplane.bounds import chain_check
    from infoplane.estimators import discrete_mi

    g = torch.Generator().manual_seed(1)
    n = 4096
    y = (torch.rand(n, generator=g) < 0.48).long()
    i = torch.arange(n).float()
    t1 = torch.stack([i // 2, y.float()], 1)
    t2 = torch.stack([i // 64, y.float()], 1)
    ity = [float(discrete_mi(t, y).ity) for t in (t1, t2)]
    assert ity[1] == pytest.approx(ity[0], abs=1e-12) and ity[0] == pytest.approx(_entropy(y.numpy()), abs=1e-12)
    assert chain_check(ity).count == 0
    rep = chain_report(_run([[5.0, 4.0]], [ity]))
    assert rep.count == 0


def test_the_plane_draws_the_bound_the_ib_curve_the_flags_and_a_target():
    import matplotlib.pyplot as plt

    from infoplane.bounds import ib_curve

    run = _run([[3.0, 2.0], [3.0, 3.5]], [[0.9, 0.8], [0.5, 0.6]])
    p_xy = np.array([[0.45, 0.05], [0.05, 0.45]])
    curve = ib_curve(p_xy, betas=np.geomspace(0.1, 100, 40))
    fig = infoplane.plot.information_plane(run, ib_curve=curve)
    ax = fig.axes[0]
    lines = {tuple(np.round(l.get_xdata()[:2], 6)): l for l in ax.get_lines()}
    bound = lines[(0.0, 1.0)]                           # (0, 0) -> (H(Y), H(Y)) -> flat
    assert list(bound.get_ydata()) == [0.0, 1.0, 1.0] and bound.get_zorder() < 2
    ib = [l for l in ax.get_lines() if l.get_label() == "IB curve"][0]
    np.testing.assert_allclose(ib.get_xdata()[:-1], curve.ixt)
    assert ax.get_xlim()[1] < 10                         # the overlays change no limits
    rings = [c for c in ax.collections if c.get_label() == "_chain_flags"]
    assert len(rings) == 1 and np.asarray(rings[0].get_offsets()).tolist() == [[3.5, 0.6]]  # layer 1, epoch 1
    plt.close(fig)
    # A p_xy is turned into the curve; a target's plane labels its axis with the target.
    meta = {**run.meta, "targets": [{"name": "z", "kind": "discrete", "h": 0.5}]}
    rows = run.rows + [r._replace(ity=r.ity / 2, target="z") for r in run.rows]
    fig = infoplane.plot.information_plane(infoplane.Run(meta, rows), target="z", ib_curve=p_xy)
    assert fig.axes[0].get_ylabel() == "I(T;z) [bits]"
    plt.close(fig)


def test_label_joint_merges_samples_without_changing_the_curve():
    from infoplane.bounds import ib_curve, label_joint

    labels = np.array([0, 0, 1, 0, 1, 1, 1])
    p = label_joint(labels, flip=0.2)
    np.testing.assert_allclose(p, [[3 / 7 * 0.8, 3 / 7 * 0.2], [4 / 7 * 0.2, 4 / 7 * 0.8]])
    # The curve of the 7 samples, each its own x, against the merged 2 x 2: the same at every I(X;T) (the full
    # curve continues flat at I(X;Y) beyond the merged curve's end).
    full = np.array([[(0.8 if k == y else 0.2) / 7 for k in (0, 1)] for y in labels])
    betas = np.geomspace(0.1, 300, 120)
    a, b = ib_curve(full, betas=betas), ib_curve(p, betas=betas)
    assert a.i_xy == pytest.approx(b.i_xy, abs=1e-12)
    r = np.linspace(0, b.ixt[-1], 30)
    np.testing.assert_allclose(np.interp(r, a.ixt, a.ity), np.interp(r, b.ixt, b.ity), atol=2e-3)
    with pytest.raises(ValueError, match="flip"):
        label_joint(labels, flip=1.5)


def test_an_epoch_is_complete_only_with_every_side_variable_of_its_estimators():
    from infoplane.runs.format import complete_epochs

    base = [Row(0, None, e, "a", est, 1.0, 0.5, np.nan, np.nan) for e in (0, 1) for est in ("b", "k")]
    targets = {"parity": ["b", "k"], "x": ["k"]}  # x is measured by k alone
    rows = base + [r._replace(target="parity") for r in base] + [r._replace(target="x") for r in base
                                                                  if r.estimator == "k" and r.epoch == 0]
    assert complete_epochs(rows, [0], ["a"], ["b", "k"], targets) == {0}   # epoch 1 lacks its x row
    assert complete_epochs(base, [0], ["a"], ["b", "k"]) == {0, 1}         # a run without side variables

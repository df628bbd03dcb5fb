"""Run.to_pandas: the long-form table that seaborn and plotnine expect."""
import math

import pandas as pd
import pytest
import torch
from torch import nn

import infoplane
from infoplane.estimators import KDE, Binning, binned_mi


def recorded(tmp_path, estimators):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (64, 8), generator=g).float()
    y = (x[:, :4].sum(1) > x[:, 4:].sum(1)).long()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2)))
    with infoplane.Tracker(models, x, y, seeds=[0, 1], fraction=0.5, schedule=[0, 1], estimators=estimators,
                           out=tmp_path / "run") as t:
        for epoch in range(2):
            t.step(epoch, loss=[0.5 + epoch, 0.7 + epoch])
    return infoplane.load_run(tmp_path / "run"), models, x, y


def test_long_form_one_row_per_seed_epoch_layer_estimator(tmp_path):
    run, models, x, y = recorded(tmp_path, [Binning(bins=30, range=(-1, 1))])
    df = run.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["seed", "fraction", "epoch", "layer", "estimator", "ixt", "ity", "loss"]
    assert len(df) == 2 * 2 * 2 * 1
    assert not df.duplicated(["seed", "epoch", "layer", "estimator"]).any()
    # Values: the hidden layer of seed 1 at its last epoch (the models were not trained) by hand.
    hidden = torch.tanh(models[1][0](x)).detach()
    ref = binned_mi(hidden, y, bins=30, range=(-1, 1))
    row = df[(df.seed == 1) & (df.epoch == 1) & (df.layer == "1")].iloc[0]
    assert row.ixt == pytest.approx(float(ref.ixt), abs=1e-12)
    assert row.ity == pytest.approx(float(ref.ity), abs=1e-12)
    assert row.fraction == 0.5 and row.estimator == "binning"
    assert df[(df.seed == 0) & (df.epoch == 1)]["loss"].tolist() == [1.5, 1.5]
    # The pivot a plotting library would do gives back Run.get's array.
    wide = df[df.estimator == "binning"].pivot_table(index=["seed", "epoch"], columns="layer", values="ixt")
    assert wide[run.layers].to_numpy().reshape(2, 2, 2).tolist() == run.get("ixt").tolist()


def test_lower_bound_columns_when_an_estimator_has_them(tmp_path):
    run, _, _, _ = recorded(tmp_path, [Binning(bins=30, range=(-1, 1)), KDE(noise_var=0.1)])
    df = run.to_pandas()
    assert {"ixt_lower", "ity_lower"} <= set(df.columns)
    assert len(df) == 2 * 2 * 2 * 2
    kde = df[df.estimator == run.estimators[1]]
    assert kde.ixt_lower.notna().all() and (kde.ixt_lower <= kde.ixt + 1e-12).all()
    assert df[df.estimator == "binning"].ixt_lower.isna().all()
    assert not any(math.isnan(v) for v in df.ixt)

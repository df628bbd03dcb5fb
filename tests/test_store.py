import csv
import json
import math
import os

import numpy as np
import pytest

from infoplane.runs.writer import FIELDS, Row, Run, RunWriter, load_run, read_table


def base_meta(seeds=(0, 1), layers=("a", "b"), estimators=("binning", "kde")):
    return {"layers": [{"name": n, "width": 3} for n in layers],
            "estimators": [{"name": e, "settings": {"kind": e}} for e in estimators],
            "seeds": list(seeds), "fraction": 0.5, "n": 8, "log2_n": 3.0, "h_y": 1.0,
            "schedule": {"kind": "list", "epochs": [0, 1, 2]}}


def rows_for(epoch, seeds=(0, 1), layers=("a", "b"), rng=None):
    rng = rng or np.random.default_rng(epoch)
    out = []
    for s in seeds:
        for l in layers:
            out.append(Row(s, 0.5, epoch, l, "binning", *rng.random(2), math.nan, math.nan))
            out.append(Row(s, 0.5, epoch, l, "kde", *rng.random(4)))
    return out


def same_rows(a, b):
    fix = lambda rows: [tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in r) for r in rows]
    return fix(a) == fix(b)


def test_rows_round_trip_exactly(tmp_path):
    w = RunWriter(tmp_path / "r", base_meta())
    rows = rows_for(0) + rows_for(1)
    w.add_rows(rows)
    w.finish()
    back = read_table(tmp_path / "r" / "infoplane.csv")
    assert same_rows(back, rows)  # repr floats: bit-exact
    with open(tmp_path / "r" / "infoplane.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert tuple(lines[0]) == FIELDS and lines[1][7] == ""  # absent lower bound: empty cell
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["complete"] is True and meta["end_time"] and meta["start_time"]
    assert not [f for f in os.listdir(tmp_path / "r") if ".tmp" in f]


def test_run_arrays(tmp_path):
    w = RunWriter(tmp_path / "r", base_meta())
    rows = rows_for(2) + rows_for(0)
    w.add_rows(rows)
    w.add_metrics_many([((0, 0), {"loss": 1.5}), ((1, 2), {"loss": 0.5})])
    run = load_run(tmp_path / "r")
    assert run.layers == ["a", "b"] and run.seeds == [0, 1] and run.estimators == ["binning", "kde"]
    assert run.epochs.tolist() == [0, 2] and run.epochs.dtype == np.int64
    assert (run.n, run.log2_n, run.h_y, run.fraction) == (8, 3.0, 1.0, 0.5)
    ixt = run.get("ixt")
    assert ixt.shape == (2, 2, 2)
    for r in rows:
        i, j, k = run.seeds.index(r.seed), run.epochs.tolist().index(r.epoch), run.layers.index(r.layer)
        assert run.get("ity", r.estimator)[i, j, k] == r.ity
        assert run.get("ixt", r.estimator, seed=r.seed)[j, k] == r.ixt
    assert np.isnan(run.get("ixt_lower", "binning")).all()
    assert not np.isnan(run.get("ixt_lower", "kde")).any()
    np.testing.assert_array_equal(run.ixt, ixt)  # several seeds: [n_seeds, n_epochs, n_layers]
    np.testing.assert_array_equal(run.metric("loss"), [[1.5, np.nan], [np.nan, 0.5]])
    np.testing.assert_array_equal(run.metric("loss", seed=1), [np.nan, 0.5])
    with pytest.raises(ValueError, match="no metric named"):
        run.metric("acc")
    with pytest.raises(ValueError, match="estimator 'knn'"):
        run.get("ixt", "knn")
    with pytest.raises(ValueError, match="field"):
        run.get("mi")


def test_single_seed_shapes():
    meta = base_meta(seeds=(3,))
    run = Run(meta, rows_for(0, seeds=(3,)) + rows_for(4, seeds=(3,)))
    assert run.ixt.shape == (2, 2) and run.ity.shape == (2, 2)
    assert run.get("ixt").shape == (1, 2, 2)


def test_partial_last_line_is_ignored_and_trimmed_on_resume(tmp_path):
    path = tmp_path / "r"
    w = RunWriter(path, base_meta(), identity=("seeds",))
    w.add_rows(rows_for(0))
    w.add_rows(rows_for(1)[:3])  # epoch 1 cut short ...
    with open(path / "infoplane.csv", "a") as f:
        f.write("1,0.5,1,b,kd")  # ... in the middle of a line
    run = load_run(path)
    assert len(run.rows) == len(rows_for(0)) + 3
    w.release()  # the writer "dies": the OS would release its lock
    w2 = RunWriter(path, base_meta(), identity=("seeds",), resume=True)
    assert w2.done_epochs() == {0}
    assert same_rows(read_table(path / "infoplane.csv"), rows_for(0))  # incomplete epoch dropped
    w2.add_rows(rows_for(1))
    assert same_rows(load_run(path).rows, rows_for(0) + rows_for(1))


def test_metrics_with_late_keys(tmp_path):
    w = RunWriter(tmp_path / "r", base_meta(seeds=(0,)))
    w.add_metrics(0, 0, {"loss": 2.0})
    w.add_metrics(0, 1, {"loss": 1.0, "acc": 0.25})  # new name: header widens
    w.add_metrics(0, 2, {"acc": 0.5})
    w.add_metrics(0, 2, {"lr": 0.1})  # same line again: merged, not repeated
    with open(tmp_path / "r" / "metrics.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert lines == [["seed", "epoch", "loss", "acc", "lr"], ["0", "0", "2.0", "", ""],
                     ["0", "1", "1.0", "0.25", ""], ["0", "2", "", "0.5", "0.1"]]
    w.add_rows(rows_for(0, seeds=(0,)) + rows_for(1, seeds=(0,)) + rows_for(2, seeds=(0,)))
    run = load_run(tmp_path / "r")
    assert run.metric_names == ["loss", "acc", "lr"]
    np.testing.assert_array_equal(run.metric("acc", seed=0), [np.nan, 0.25, 0.5])


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    path = tmp_path / "r"
    RunWriter(path, base_meta()).add_rows(rows_for(0))
    with pytest.raises(ValueError, match="already holds an infoplane run.*resume=True.*overwrite=True"):
        RunWriter(path, base_meta())
    assert len(read_table(path / "infoplane.csv")) == len(rows_for(0))  # untouched
    RunWriter(path, base_meta(), overwrite=True)
    assert read_table(path / "infoplane.csv") == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        RunWriter(tmp_path / "other", base_meta(), resume=True)
    with pytest.raises(ValueError, match="not both"):
        RunWriter(path, base_meta(), resume=True, overwrite=True)


def test_resume_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "r"
    RunWriter(path, base_meta(), identity=("seeds", "fraction"))
    changed = {**base_meta(), "fraction": 0.8}
    with pytest.raises(ValueError, match=r"settings differ \(fraction: stored 0.5, now 0.8\)"):
        RunWriter(path, changed, identity=("seeds", "fraction"), resume=True)
    RunWriter(path, {**base_meta(), "note": "x"}, identity=("seeds", "fraction"), resume=True)
    assert json.loads((path / "meta.json").read_text())["note"] == "x"


def test_activations_are_plain_npz(tmp_path):
    w = RunWriter(tmp_path / "r", base_meta())
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "enc.1": np.ones((2, 1), np.float32)}
    w.save_activations(1, 7, arrays)
    with np.load(tmp_path / "r" / "activations" / "1" / "7.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["a", "enc.1"]
        np.testing.assert_array_equal(z["a"], arrays["a"])


def test_missing_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        load_run(tmp_path)


def test_to_pandas_joins_metrics(tmp_path):
    pd = pytest.importorskip("pandas")
    w = RunWriter(tmp_path / "r", base_meta())
    w.add_rows(rows_for(0))
    w.add_metrics(1, 0, {"loss": 0.75})
    df = load_run(tmp_path / "r").to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == len(rows_for(0))
    assert set(df.loc[df.seed == 1, "loss"]) == {0.75} and df.loc[df.seed == 0, "loss"].isna().all()


def test_run_files_with_another_header_are_refused_by_name(tmp_path):
    import pytest

    from infoplane.runs.format import FIELDS, read_sharpness, read_table
    from infoplane.runs.gradfile import GRADIENT_FIELDS, read_gradients

    for name, read, fields in (("infoplane.csv", read_table, FIELDS), ("gradients.csv", read_gradients, GRADIENT_FIELDS),
                               ("sharpness.csv", read_sharpness, None)):
        path = tmp_path / name
        assert read(path) == []  # absent: nothing recorded
        path.write_text("a,b,c\n1,2,3\n")
        with pytest.raises(ValueError, match=f"{name}: unexpected header"):
            read(path)
        if fields is not None:
            path.write_text(",".join(fields) + "\n")
            assert read(path) == []  # the header alone: no lines yet


def test_meta_is_indented_json_with_very_long_values_on_one_line():
    from infoplane.runs.format import render_meta

    small = {"seeds": [0, 1], "training": {"lr": 0.0004, "layers": [{"name": "1"}]}, "model": "net"}
    assert render_meta(small) == json.dumps(small, indent=2) + "\n"
    assert render_meta({}) == "{}\n"
    meta = {**small, "split": [list(range(3000)), list(range(5, 2000))]}
    text = render_meta(meta)
    assert json.loads(text) == meta
    split_lines = [line for line in text.splitlines() if line.startswith('  "split"')]
    assert split_lines == [f'  "split": {json.dumps(meta["split"])}']

"""`infoplane track --ray` on a local 2-CPU Ray instance: the numbers of the local path, one progress bar, a failed
fraction reported and resumed alone, the shared-filesystem check, and the settings refused before anything runs."""
import json
import os
import secrets
import sys
from pathlib import Path

import numpy as np
import pytest
import ray  # the test extra installs it (infoplane[ray]): a missing Ray fails here instead of skipping

import infoplane
from infoplane.cli.main import main
from infoplane.data.modelfile import load_model_file
from infoplane.experiment import ConfigError, track
from infoplane.experiment.raysweep import RaySetupError, RaySweepError, _check_worker

# A small task (256 rows of the 12-bit task, a 12-6-2 tanh network) whose loss fails on 64 rows (fraction 0.25: 64
# training rows; fraction 0.5 has 128 and 128) while the file FAIL_SMALL sits next to it: a deterministic failure
# of one fraction only.
MODEL = '''
from pathlib import Path
import torch
from torch import nn
from infoplane.data import tishby12

FLAG = Path(__file__).with_name("FAIL_SMALL")


def data():
    x, y = tishby12()
    return x[::16], y[::16]


def build_model():
    return nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 2))


def loss(output, target):
    if target.shape[0] == 64 and FLAG.exists():
        raise RuntimeError("boom: the small fraction fails")
    return nn.functional.cross_entropy(output, target)
'''
FRACTIONS = ["--fraction", "0.25", "--fraction", "0.5"]
ARGS = [*FRACTIONS, "--seeds", "2", "--epochs", "12", "--schedule", "every:3", "--no-plot"]
# Entries that differ between two runs of the same command by design (times, the command line itself).
VOLATILE = ("start_time", "end_time", "caller", "resumed", "timings")  # when and how long, not what


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance with 2 CPUs for the whole module: no dashboard, no usage statistics, and a token of
    its own (else Ray writes one to ~/.ray/auth_token)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.py"
    path.write_text(MODEL)
    return path


@pytest.fixture(scope="module")
def local_runs(model_file, tmp_path_factory):
    """The reference: the same command without Ray."""
    out = tmp_path_factory.mktemp("local") / "runs"
    assert main(["track", str(model_file), *ARGS, "--out", str(out), "--quiet"]) == 0
    return out


def same_run(a, b):
    """Two run directories hold the same numbers: every estimate, metric, epoch, layer and setting."""
    ra, rb = infoplane.load_run(a), infoplane.load_run(b)
    assert ra.meta["complete"] and rb.meta["complete"]
    assert ra.layers == rb.layers and ra.seeds == rb.seeds and ra.estimators == rb.estimators
    np.testing.assert_array_equal(ra.epochs, rb.epochs)
    for field in ("ixt", "ity"):
        np.testing.assert_array_equal(ra.get(field), rb.get(field))  # binning: exactly
    assert ra.metric_names == rb.metric_names
    for name in ra.metric_names:
        np.testing.assert_array_equal(ra.metric(name), rb.metric(name))
    ma = {k: v for k, v in json.loads((Path(a) / "meta.json").read_text()).items() if k not in VOLATILE}
    mb = {k: v for k, v in json.loads((Path(b) / "meta.json").read_text()).items() if k not in VOLATILE}
    assert ma == mb


def snapshot(run_dir):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(Path(run_dir).iterdir())}


def test_workers_import_this_infoplane(ray_local):
    where = ray.get(ray.remote(lambda: __import__("infoplane").__file__).remote())
    assert where == infoplane.__file__


def test_ray_gives_the_numbers_of_the_local_path_with_one_bar(ray_local, model_file, local_runs, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["track", str(model_file), *ARGS, "--out", str(out), "--ray"]) == 0
    captured = capsys.readouterr()
    # One bar for the whole sweep, brought to its end: 2 fractions x 13 epochs (0 .. 12).
    assert "2 fraction(s) on Ray" in captured.err and "26/26" in captured.err
    assert captured.err.count("fraction 0.25:") == 0  # no bar per fraction
    assert "fraction 0.25" in captured.out and "fraction 0.5" in captured.out  # the summary
    for f in ("0.25", "0.5"):
        same_run(local_runs / f"fraction-{f}", out / f"fraction-{f}")
    assert sorted(p.name for p in out.iterdir()) == ["fraction-0.25", "fraction-0.5"]  # no check file left


def test_failed_fraction_is_reported_and_resume_runs_only_it(ray_local, model_file, local_runs, tmp_path, capsys):
    out = tmp_path / "runs"
    flag = model_file.with_name("FAIL_SMALL")
    flag.write_text("")
    try:
        with pytest.raises(RaySweepError) as info:
            track(model_file, fractions=[0.25, 0.5], seeds=2, epochs=12, schedule=infoplane.every(3, 12),
                  out=out, progress=False, ray=True, caller=["infoplane", "track"])
    finally:
        flag.unlink()
    err = info.value
    assert [f["fraction"] for f in err.failures] == [0.25] and err.failures[0]["seeds"] == [0, 1]
    assert "RuntimeError: boom: the small fraction fails" in err.failures[0]["error"]
    assert "Traceback" in err.failures[0]["traceback"] and ", in loss" in err.failures[0]["traceback"]
    assert "fraction 0.25 (seeds 0, 1)" in str(err) and "`resume=True`" in str(err)
    assert [r.fraction for r in err.runs] == [0.5]
    small, large = out / "fraction-0.25", out / "fraction-0.5"
    assert infoplane.load_run(large).meta["complete"]
    assert not json.loads((small / "meta.json").read_text())["complete"]
    before = snapshot(large)

    # The command line reports the same failure with exit status 1 ...
    flag.write_text("")
    try:
        rc = main(["track", str(model_file), *ARGS, "--out", str(tmp_path / "cli"), "--ray", "--quiet"])
    finally:
        flag.unlink()
    captured = capsys.readouterr()
    assert rc == 1
    assert "fraction 0.25 (seeds 0, 1): RuntimeError: boom" in captured.err and "Traceback" in captured.err
    assert "fraction 0.5" in captured.out  # the finished fraction is summarised

    # ... and --resume runs only the failed fraction: the complete one is not touched.
    assert main(["track", str(model_file), *ARGS, "--out", str(out), "--ray", "--resume"]) == 0
    assert f"{large}: complete, skipped" in capsys.readouterr().err
    assert snapshot(large) == before
    same_run(local_runs / "fraction-0.25", small)


def test_a_single_model_object_trains_with_the_drivers_weights(ray_local, tmp_path):
    # Weights drawn at import from fresh entropy: a second import (in the task) would get others.
    path = tmp_path / "single.py"
    path.write_text("import os, torch\nfrom torch import nn\nfrom infoplane.data import tishby12\n"
                    "torch.manual_seed(int.from_bytes(os.urandom(4), 'little'))\n"
                    "model = nn.Sequential(nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 2))\n"
                    "def data():\n    x, y = tishby12()\n    return x[::32], y[::32]\n")
    mf = load_model_file(path)
    kw = dict(fractions=[0.5], epochs=4, schedule=[0, 2, 4], progress=False, caller="test", log=lambda m: None)
    track(mf, out=tmp_path / "local", **kw)
    track(mf, out=tmp_path / "ray", ray=True, **kw)
    same_run(tmp_path / "local" / "fraction-0.5", tmp_path / "ray" / "fraction-0.5")


def test_a_task_that_cannot_see_out_says_so(ray_local, model_file, tmp_path):
    check = ray.remote(_check_worker)
    missing = tmp_path / "elsewhere" / ".infoplane-ray-check-x"
    with pytest.raises(RaySetupError, match=r"cannot see `out=.*shared filesystem.*every Ray node"):
        ray.get(check.remote(str(missing), "token", str(model_file), infoplane.__version__))
    present = tmp_path / ".infoplane-ray-check-y"
    present.write_text("token\n")
    with pytest.raises(RaySetupError, match=r"cannot read the model file"):
        ray.get(check.remote(str(present), "token", str(tmp_path / "gone.py"), infoplane.__version__))
    with pytest.raises(RaySetupError, match=r"install the same infoplane on every node"):
        ray.get(check.remote(str(present), "token", str(model_file), "0.0.0-other"))
    ray.get(check.remote(str(present), "token", str(model_file), infoplane.__version__))  # all visible: passes


@pytest.mark.parametrize("extra, message", [
    (["--ray-cpus", "2"], "--ray-cpus set the resources of Ray tasks: add --ray"),
    (["--ray-gpus", "1"], "--ray-gpus set the resources of Ray tasks: add --ray"),
    (["--ray", "nohost"], "--ray nohost: expected no address"),
    (["--ray", "host:99999"], "--ray host:99999: the port must be between 1 and 65535"),
    (["--ray", "--device", "cuda:1"], "--device cuda:1 with --ray"),
    (["--ray", "--device", "cuda", "--ray-gpus", "0"], "--device cuda with --ray-gpus 0"),
    (["--ray", "--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
])
def test_bad_ray_settings_exit_2_before_anything_runs(model_file, tmp_path, capsys, extra, message):
    out = tmp_path / "runs"
    assert main(["track", str(model_file), *FRACTIONS, "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_ray_cpus_must_be_positive(model_file, capsys):
    with pytest.raises(SystemExit) as info:
        main(["track", str(model_file), "--ray", "--ray-cpus", "0"])
    assert info.value.code == 2 and "--ray-cpus: expected a positive number" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="`ray_cpus` must be a positive number") as info:
        track(model_file, ray=True, ray_cpus=0, out="unused")
    assert info.value.argument == "ray_cpus" and "--" not in str(info.value)


def test_without_ray_the_error_names_the_extra(model_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'infoplane\[ray\]'"):
        track(model_file, fractions=[0.5], epochs=1, out=tmp_path / "runs", ray=True, progress=False)
    assert not (tmp_path / "runs").exists()
    # Without --ray nothing needs Ray.
    runs = track(model_file, fractions=[0.5], epochs=1, out=tmp_path / "runs", progress=False, log=lambda m: None)
    assert runs[0].meta["complete"] and os.path.isdir(tmp_path / "runs" / "fraction-0.5")

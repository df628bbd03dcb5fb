"""benchmarks/gpu.py stays runnable: its CPU smoke mode produces the table and every comparison passes."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu  # noqa: E402

from infoplane.estimators import base, config  # noqa: E402


def test_cpu_smoke_run_writes_the_table_and_passes(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# GPU benchmark") and f"torch {torch.__version__}" in text and " UTC: CPU" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "workload" not in line]
    # Every registered estimator kind that runs with default settings on both workloads, the others listed as
    # skipped with the reason; the tracked run; every check passed.
    found, skipped = gpu.discover_estimators()
    assert {e.kind for e in found} | {k for k, _ in skipped} == set(base.KINDS)
    for est in found:
        assert sum(r.startswith(f"| {est.name}: ") for r in rows) == 2, est.name
    for kind, _ in skipped:
        assert f"`{kind}`" in text
    assert any(r.startswith("| tracked tanh 12-10-7-5-4-3-2") for r in rows)
    assert any(r.startswith("| kde_mi precision=float32: ") for r in rows)
    assert any(r.startswith("| kde_mi precision=float64: ") for r in rows)
    assert "| tracked 12-bit workload: 2 seeds x 3 epochs" in text
    assert all(r.rstrip(" |").endswith("ok") for r in rows), rows
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "with TF32" in printed and "FAIL" not in printed


class _NeedsSettings(config.Estimator):
    kind = "needs-settings"

    def __init__(self, k, name=None):
        super().__init__(name)


class _NeedsInputs(config.Estimator):
    kind = "needs-inputs"
    default_name = "needs-inputs"

    def _kwargs(self):
        return {}

    def __call__(self, activations, labels, inputs):
        raise AssertionError("not called without its inputs")


def test_estimators_are_discovered_from_the_registry(monkeypatch):
    monkeypatch.setitem(base.KINDS, _NeedsSettings.kind, _NeedsSettings)
    monkeypatch.setitem(base.KINDS, _NeedsInputs.kind, _NeedsInputs)
    found, skipped = gpu.discover_estimators()
    assert {e.kind for e in found} == set(base.KINDS) - {"needs-settings", "needs-inputs"} - set(gpu._LEFT_OUT)
    assert {"binning", "kde"} <= {e.kind for e in found}
    reasons = dict(skipped)
    assert reasons["needs-settings"].startswith("needs settings") and "other inputs" in reasons["needs-inputs"]


def test_tf32_is_enabled_inside_the_block_only():
    before = gpu.precision_state()
    with gpu.tf32_enabled():
        assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    assert gpu.precision_state() == before

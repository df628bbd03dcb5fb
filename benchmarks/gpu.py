"""GPU benchmark: estimators and a tracked ensemble run on CUDA, checked against the CPU (``make bench-gpu``).

One script, under 5 minutes on one GPU. It

1. times every estimator kind registered in ``infoplane.estimators.base.KINDS`` (binning, KDE, and whatever
   is merged later, with its default settings; kinds that cannot be built or called without extra inputs are
   listed as skipped) on the device and on the CPU, on the 12-bit network's layer widths and on MNIST-like
   layers, and checks the device's results against the CPU's: binning kinds exactly, the others to 1e-4 bits;
   the check is repeated with TF32 matrix products enabled (set, then restored, here only);
2. runs the tracked 12-10-7-5-4-3-2 tanh ensemble (``infoplane.experiment.track``: a few seeds, a few hundred
   epochs, binning) on the device and on the CPU, and checks that the device's table equals a CPU re-estimate
   of the activations it saved (exactly);
3. times ``kde_mi`` at float32 (squared distances as sums of squared differences, on the device) and at float64
   (a float64 matrix product) on one 12-bit-sized layer, on the device and the CPU, against the CPU's float64
   result: float32 to 1e-5 bits, float64 to 1e-9 bits, with default precision and with TF32;
4. times the tracked 12-bit workload of ``make bench`` (seeds of the tanh network at fractions 0.05 and 0.85,
   binning at the density of log_schedule(8000, 400)) against training alone on the device (reported, not
   checked);
5. prints a table and writes it, with the date, the device name and the torch version, to ``docs/gpu.md``.

``--device cpu --quick`` runs the same code with tiny sizes on the CPU (the device is then the CPU as well):
the test suite uses it to keep the script working. Exits with status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _common import labels_for, print_table, tanh_activations  # noqa: E402

import infoplane  # noqa: E402
from infoplane.estimators import base as estimator_base  # noqa: E402
from infoplane.estimators import config as estimator_config  # noqa: E402

TISHBY_WIDTHS = (10, 7, 5, 4, 3, 2)
TANH_MODEL = os.path.join(REPO, "examples", "tishby_tanh.py")
KDE_TOLERANCE = 1e-4  # bits; binning kinds must agree exactly


# ------------------------------------------------------------------------------------------------- sizes
def sizes(quick: bool) -> dict:
    if quick:
        return dict(n12=256, widths12=(10, 3), mnist_n=300, mnist_widths=(16,), epochs={"binning": 4},
                    other_epochs=1, mnist_epochs={"binning": 2}, mnist_other_epochs=1, repeats=1,
                    seeds=2, track_epochs=4, track_records=4, track_batch=1024, track_samples=512,
                    kde_n=256, kde_items=2, workload_seeds=2, workload_epochs=3)
    return dict(n12=4096, widths12=TISHBY_WIDTHS, mnist_n=10_000, mnist_widths=(1024, 20), epochs={"binning": 274}, other_epochs=16,
                mnist_epochs={"binning": 4}, mnist_other_epochs=1, repeats=3,
                seeds=4, track_epochs=300, track_records=30, track_batch=256, track_samples=None,
                kde_n=4096, kde_items=6, workload_seeds=20, workload_epochs=300)


# ----------------------------------------------------------------------------------------------- helpers
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats):
    """(result, median seconds) of ``fn()`` over ``repeats`` runs after one warm-up run."""
    result = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return result, float(np.median(times))


def _fields(est, result):
    names = ["ixt", "ity"] + (["ixt_lower", "ity_lower"] if getattr(est, "has_lower", False) else [])
    return {n: torch.as_tensor(getattr(result, n)).detach().to("cpu", torch.float64) for n in names}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _precision_settings() -> list:
    """``(object, attribute)`` of every process-wide float32 precision switch this torch has: the legacy flags
    first, then the newer per-backend ``fp32_precision`` ones (restored last, so that they come back exactly)."""
    b = torch.backends
    pairs = [(b.cuda.matmul, "allow_tf32"), (b.cudnn, "allow_tf32")]
    for obj in (b, b.cuda.matmul, b.cudnn, getattr(b.cudnn, "conv", None), getattr(b.cudnn, "rnn", None),
                getattr(b, "mkldnn", None), getattr(getattr(b, "mkldnn", None), "matmul", None),
                getattr(getattr(b, "mkldnn", None), "conv", None), getattr(getattr(b, "mkldnn", None), "rnn", None)):
        if obj is not None and hasattr(obj, "fp32_precision"):
            pairs.append((obj, "fp32_precision"))
    return pairs


def precision_state() -> tuple:
    """The current values of every float32 precision switch (to check that they come back)."""
    return (torch.get_float32_matmul_precision(), *(getattr(o, a) for o, a in _precision_settings()))


class tf32_enabled:
    """TF32 matrix products (and convolutions) on, for one block; every precision switch comes back after it."""

    def __enter__(self):
        self.saved = [(o, a, getattr(o, a)) for o, a in _precision_settings()]
        self.matmul = torch.get_float32_matmul_precision()
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        return self

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.matmul)
        for obj, attr, value in self.saved:
            setattr(obj, attr, value)


# Kinds that need a setting to be built at all get one here; the rest use their defaults.
_FACTORIES = {
    "noisy": lambda cls: cls(noise_var=0.1, samples=1024),
    "with-null": lambda cls: cls(estimator_config.Binning(bins=30, range=(-1, 1), name="with-null"),
                                 permutations=4),
}
# Kinds left out on purpose, with the reason printed in the table.
_LEFT_OUT = {
    "knn": "needs the probe inputs for I(X;T), and its O(N^2) CPU reference at N = 10,000 does not fit the 5-minute "
           "budget; see `make bench` (bench_knn_renyi)",
    "renyi": "its CPU reference (N x N eigendecompositions at N = 10,000) does not fit the 5-minute budget; see "
             "`make bench` (bench_knn_renyi)",
}


def discover_estimators() -> tuple[list, list]:
    """Estimator objects with default settings for every registered kind, and ``(kind, reason)`` skips."""
    found, skipped = [], []
    for kind, cls in sorted(estimator_base.KINDS.items()):
        if kind in _LEFT_OUT:
            skipped.append((kind, _LEFT_OUT[kind]))
            continue
        try:
            est = _FACTORIES[kind](cls) if kind in _FACTORIES else cls()
        except (TypeError, ValueError) as err:
            skipped.append((kind, f"needs settings: {err}"))
            continue
        try:  # a tiny call shows whether it works on (activations, labels) alone
            est(torch.rand(1, 16, 2), torch.arange(16) % 2)
        except (TypeError, ValueError) as err:
            skipped.append((kind, f"needs other inputs: {type(err).__name__}: {err}"))
            continue
        found.append(est)
    return found, skipped


# ------------------------------------------------------------------------------------------------ part 1
def bench_estimator(est, workload, widths, n, n_epochs, device, repeats):
    """One estimator on one workload: device and CPU timings per layer-epoch, and the device's largest
    difference from the CPU with default precision and with TF32."""
    labels = torch.from_numpy(labels_for(n))
    dev_labels = labels.to(device)
    t_dev = t_cpu = 0.0
    diff = diff_tf32 = 0.0
    for w in widths:
        acts = tanh_activations(n_epochs, n, w, seed=w)
        dev_acts = acts.to(device)
        # CPU: one warm-up on a single epoch, then one timed batched call, which is also the reference.
        est(acts[:1], labels)
        t0 = time.perf_counter()
        ref = _fields(est, est(acts, labels))
        t_cpu += time.perf_counter() - t0
        result, seconds = _timed(lambda dev_acts=dev_acts: est(dev_acts, dev_labels), device, repeats)
        t_dev += seconds
        diff = max(diff, _max_diff(_fields(est, result), ref))
        with tf32_enabled():
            diff_tf32 = max(diff_tf32, _max_diff(_fields(est, est(dev_acts, dev_labels)), ref))
    per = len(widths) * n_epochs
    # Plug-in counts are exact on any device; everything else is compared to 1e-4 bits.
    exact = est.kind in ("binning", "discrete") or getattr(getattr(est, "estimator", None), "kind", "") == "binning"
    tol = 0.0 if exact else KDE_TOLERANCE
    return dict(section="estimator", name=f"{est.name}: {workload}", device_s=t_dev / per, cpu_s=t_cpu / per,
                diff=diff, diff_tf32=diff_tf32, tolerance=tol, ok=diff <= tol and diff_tf32 <= tol)


def estimator_rows(device, sz):
    estimators, skipped = discover_estimators()
    rows = []
    for est in estimators:
        e12 = sz["epochs"].get(est.kind, sz["other_epochs"])
        rows.append(bench_estimator(est, f"12-bit net layers {sz['widths12']}, N={sz['n12']}, {e12} epochs", sz["widths12"],
                                    sz["n12"], e12, device, sz["repeats"]))
        em = sz["mnist_epochs"].get(est.kind, sz["mnist_other_epochs"])
        for w in sz["mnist_widths"]:
            rows.append(bench_estimator(est, f"MNIST-like, N={sz['mnist_n']}, width {w}, {em} epoch(s)", (w,),
                                        sz["mnist_n"], em, device, sz["repeats"]))
    return rows, skipped


# ------------------------------------------------------------------------------------------------ part 2
def _track(device, sz, out, keep):
    from infoplane.data import tishby12
    from infoplane.experiment import track
    data = None  # the model file's default: the whole 12-bit task
    if sz["track_samples"]:
        x, y = tishby12()
        data = (x[:sz["track_samples"]], y[:sz["track_samples"]])
    seeds, epochs, records = sz["seeds"], sz["track_epochs"], sz["track_records"]
    t0 = time.perf_counter()
    runs = track(TANH_MODEL, data=data, fractions=(0.85,), seeds=seeds, epochs=epochs, batch_size=sz["track_batch"],
                 device=str(device), out=out,
                 schedule=infoplane.log_schedule(epochs, records), estimators=[infoplane.Binning()],
                 keep_activations=keep, overwrite=True, progress=False, log=lambda *a, **k: None)
    return runs[0], time.perf_counter() - t0


def tracked_rows(device, sz, tmp):
    seeds, epochs = sz["seeds"], sz["track_epochs"]
    run, t_dev = _track(device, sz, os.path.join(tmp, "device"), keep=True)
    # The device's table against the CPU estimating the very activations the device tracked.
    again = infoplane.estimate(run.path, [infoplane.Binning()], device="cpu")
    diff = float(np.nanmax(np.abs(np.asarray(run.ixt) - np.asarray(again.ixt))))
    diff = max(diff, float(np.nanmax(np.abs(np.asarray(run.ity) - np.asarray(again.ity)))))
    n = sz["track_samples"] or 4096
    name = (f"tracked tanh 12-10-7-5-4-3-2 on {n} samples, {seeds} seeds x {epochs} epochs at 85% (batch "
            f"{sz['track_batch']}), binning, {len(run.epochs)} recorded epochs")
    rows = [dict(section="tracked", name=name + " (device table vs CPU re-estimate)", device_s=t_dev,
                 cpu_s=math.nan, diff=diff, diff_tf32=math.nan, tolerance=0.0, ok=diff == 0.0)]
    if device.type != "cpu":
        cpu_run, t_cpu = _track(torch.device("cpu"), sz, os.path.join(tmp, "cpu"), keep=False)
        # Training itself rounds differently on the two devices, so this difference is reported, not checked.
        spread = float(np.nanmax(np.abs(np.asarray(run.ixt) - np.asarray(cpu_run.ixt))))
        rows.append(dict(section="tracked", name=name + " (device vs CPU training, not checked)", device_s=t_dev,
                         cpu_s=t_cpu, diff=spread, diff_tf32=math.nan, tolerance=math.nan, ok=True))
    return rows


# ------------------------------------------------------------------------------------------------ part 3
def kde_precision_rows(device, sz):
    """kde_mi at float32 and float64 on the device and the CPU, against the CPU's float64 result."""
    from infoplane.estimators import kde_mi

    n, items = sz["kde_n"], sz["kde_items"]
    acts = tanh_activations(items, n, 10, seed=3)
    labels = torch.from_numpy(labels_for(n))
    ref = kde_mi(acts, labels, precision="float64")
    fields = ("ixt", "ity", "ixt_lower", "ity_lower")

    def diff(result):
        return max(float((getattr(result, f).cpu().double() - getattr(ref, f)).abs().max()) for f in fields)

    rows = []
    dev_acts, dev_labels = acts.to(device), labels.to(device)
    for precision, tol in (("float32", 1e-5), ("float64", 1e-9)):
        result, t_dev = _timed(lambda p=precision: kde_mi(dev_acts, dev_labels, precision=p), device, sz["repeats"])
        _, t_cpu = _timed(lambda p=precision: kde_mi(acts, labels, precision=p), torch.device("cpu"), sz["repeats"])
        with tf32_enabled():
            d_tf32 = diff(kde_mi(dev_acts, dev_labels, precision=precision))
        d = diff(result)
        rows.append(dict(section="estimator", name=f"kde_mi precision={precision}: N={n}, d=10 (vs CPU float64)",
                         device_s=t_dev / items, cpu_s=t_cpu / items, diff=d, diff_tf32=d_tf32, tolerance=tol,
                         ok=d <= tol and d_tf32 <= tol))
    return rows


# ------------------------------------------------------------------------------------------------ part 4
def workload_rows(device, sz):
    """The tracked 12-bit workload of ``make bench`` against training alone, on the device."""
    import bench_targets

    seeds, epochs = sz["workload_seeds"], sz["workload_epochs"]
    training, tracked = bench_targets.bench_tracked(seeds, epochs, device=str(device), verdicts=False)
    name = (f"tracked 12-bit workload: {seeds} seeds x {epochs} epochs, fractions 0.05 and 0.85, binning "
            f"({len(bench_targets.tracked_schedule(epochs))} recorded epochs): tracked / training alone = "
            f"{tracked / training:.2f}x (not checked)")
    return [dict(section="tracked", name=name, device_s=tracked, cpu_s=math.nan, diff=math.nan, diff_tf32=math.nan,
                 tolerance=math.nan, ok=True)]


# ------------------------------------------------------------------------------------------------ report
def _fmt_time(seconds, section):
    if seconds is None or math.isnan(seconds):
        return "-"
    return f"{seconds * 1e3:.3f}" if section == "estimator" else f"{seconds:.1f}"


def _fmt(x, digits=1):
    return "-" if x is None or math.isnan(x) else f"{x:.{digits}e}"


def table(rows):
    header = ["workload", "device", "CPU", "speed-up", "max |diff| (bits)", "with TF32", "tolerance", "check"]
    out = []
    for r in rows:
        speed = "-" if math.isnan(r["cpu_s"]) else f"{r['cpu_s'] / r['device_s']:.1f}x"
        tol = "-" if math.isnan(r["tolerance"]) else ("exact" if r["tolerance"] == 0 else _fmt(r["tolerance"], 0))
        check = "-" if math.isnan(r["tolerance"]) else ("ok" if r["ok"] else "FAIL")
        out.append([r["name"], _fmt_time(r["device_s"], r["section"]), _fmt_time(r["cpu_s"], r["section"]), speed,
                    _fmt(r["diff"]), _fmt(r["diff_tf32"]), tol, check])
    return header, out


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def markdown(header, rows, skipped, device, total_s, quick):
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    lines = [
        "# GPU benchmark",
        "",
        f"Written by `benchmarks/gpu.py` (`make bench-gpu`{', --quick' if quick else ''}) on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: {device_name(device)}, "
        f"torch {torch.__version__}{cuda}, {total_s:.0f} s in all.",
        "",
        "Estimator times are per layer-epoch in milliseconds (batched over epochs, as the tracker calls them);",
        "tracked-run times are wall seconds. `max |diff|` compares the device's estimates with the CPU's on the",
        "same activations, with default precision and with TF32 matrix products enabled. Regenerate this file",
        "with `make bench-gpu`; `benchmarks/gpu.py` says what each row measures.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    if skipped:
        lines += ["", "Skipped estimator kinds: " + "; ".join(f"`{k}` ({why})" for k, why in skipped) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    p.add_argument("--out", help="Markdown file for the table (default docs/gpu.md on a GPU, none on the CPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is available: run this on a GPU machine (or pass --device cpu --quick "
                         "for a smoke run on the CPU)")
    out = args.out or (os.path.join(REPO, "docs", "gpu.md") if device.type == "cuda" else None)
    sz = sizes(args.quick)
    print(f"infoplane GPU benchmark: {device_name(device)}, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    rows, skipped = estimator_rows(device, sz)
    rows += kde_precision_rows(device, sz)
    with tempfile.TemporaryDirectory() as tmp:
        rows += tracked_rows(device, sz, tmp)
    rows += workload_rows(device, sz)
    total = time.perf_counter() - t0
    header, cells = table(rows)
    print_table(f"Device {device} against CPU (estimators: ms per layer-epoch; tracked runs: s)", header, cells)
    for kind, why in skipped:
        print(f"skipped estimator kind {kind!r}: {why}")
    print(f"total {total:.0f} s")
    if out:
        with open(out, "w") as f:
            f.write(markdown(header, cells, skipped, device, total, args.quick))
        print(f"wrote {out}")
    failed = [r["name"] for r in rows if not r["ok"]]
    if failed:
        print("FAILED checks: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

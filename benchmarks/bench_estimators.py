"""Estimator benchmark: infoplane against plain numpy implementations of the same algorithms.

Each workload prints the median time per layer-epoch of infoplane (batched over recorded epochs, as the tracker
calls it) and of a straightforward numpy version written here, measured in the same process, their ratio, and
the largest difference between the two results (bits). Run: ``python benchmarks/bench_estimators.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import labels_for, median_time, ms, print_table, tanh_activations  # noqa: E402

from infoplane.estimators import binned_mi, discrete_mi, kde_mi  # noqa: E402

TISHBY_WIDTHS = (10, 7, 5, 4, 3, 2)


# ---------------------------------------------------------------- plain numpy versions of the same algorithms
def _entropy_bits(counts):
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def numpy_binning(a, y, edges):
    """np.digitize, then np.unique over rows with counts, for the layer and for each class (bits)."""
    binned = edges[np.digitize(a, edges) - 1]
    _, counts = np.unique(binned, axis=0, return_counts=True)
    h_t = _entropy_bits(counts)
    h_t_given_y = 0.0
    for c in np.unique(y):
        _, counts = np.unique(binned[y == c], axis=0, return_counts=True)
        h_t_given_y += np.mean(y == c) * _entropy_bits(counts)
    return h_t, h_t - h_t_given_y


def numpy_binning_keys(a, y, edges):
    """The plain route with integer keys: digitize, mixed-radix int64 row keys, np.unique counts (bits)."""
    bins = len(edges)
    cells = (np.digitize(a, edges) - 1) % bins  # the original's indexing: below-range wraps onto the last edge
    keys = cells.astype(np.int64) @ (bins ** np.arange(a.shape[1], dtype=np.int64))
    h_t = _entropy_bits(np.unique(keys, return_counts=True)[1])
    h_t_given_y = sum(np.mean(y == c) * _entropy_bits(np.unique(keys[y == c], return_counts=True)[1])
                      for c in np.unique(y))
    return h_t, h_t - h_t_given_y


def numpy_discrete(a, y):
    """np.unique over rows of exact values (with counts), for the layer and for each class (bits)."""
    a = a + 0.0  # -0.0 and 0.0 are one value
    h_t = _entropy_bits(np.unique(a, axis=0, return_counts=True)[1])
    h_t_given_y = sum(np.mean(y == c) * _entropy_bits(np.unique(a[y == c], axis=0, return_counts=True)[1])
                      for c in np.unique(y))
    return h_t, h_t - h_t_given_y


def bench_discrete(widths, n, n_epochs, n_numpy, bits=8, repeats=3):
    """discrete_mi on tanh layers quantised to 2**bits levels on [-1, 1] (CPU), vs numpy_discrete."""
    y = labels_for(n)
    yt = torch.from_numpy(y)
    ours, theirs, diff = [], [], 0.0
    step = 2.0 / (2**bits - 1)
    for w in widths:
        acts = torch.round((tanh_activations(n_epochs, n, w, seed=w) + 1.0) / step) * step - 1.0
        ours.append(median_time(lambda acts=acts: discrete_mi(acts, yt), repeats) / n_epochs)
        r = discrete_mi(acts, yt)
        host = acts.numpy()
        times = []
        for e in np.linspace(0, n_epochs - 1, n_numpy).astype(int):
            t0 = time.perf_counter()
            ixt, ity = numpy_discrete(host[e], y)
            times.append(time.perf_counter() - t0)
            diff = max(diff, abs(ixt - float(r.ixt[e])), abs(ity - float(r.ity[e])))
        theirs.append(float(np.median(times)))
    return float(np.mean(ours)), float(np.mean(theirs)), diff


def numpy_kde(h, y, noise_var, block=512):
    """Blocked float64 pairwise kernels, recomputed for the layer and for each class, both bounds (bits)."""
    def mean_neg_log_kernel(x):
        n = len(x)
        sq = (x * x).sum(1)
        out = np.zeros(2)
        for i0 in range(0, n, block):
            d = sq[i0:i0 + block, None] + sq[None, :] - 2 * x[i0:i0 + block] @ x.T
            np.maximum(d, 0, out=d)
            for k, div in enumerate((2.0, 8.0)):
                out[k] -= np.log(np.exp(-d / (div * noise_var)).sum(1) / n).sum()
        return out / n

    h = h.astype(np.float64)
    ixt = mean_neg_log_kernel(h)
    cond = sum(np.mean(y == c) * mean_neg_log_kernel(h[y == c]) for c in np.unique(y))
    ity = ixt - cond
    return ixt / math.log(2), ity / math.log(2)  # each: (upper, lower)


# ---------------------------------------------------------------- workloads
def bench_binning(widths, n, n_epochs, n_numpy, device, repeats=3):
    y = labels_for(n)
    yt = torch.from_numpy(y).to(device)
    edges = np.linspace(-1, 1, 30).astype(np.float32)
    ours, theirs, diff = [], [], 0.0
    for w in widths:
        acts = tanh_activations(n_epochs, n, w, seed=w).to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        ours.append(median_time(lambda acts=acts: binned_mi(acts, yt, bins=30, range=(-1, 1)), repeats, sync)
                    / n_epochs)
        r = binned_mi(acts, yt, bins=30, range=(-1, 1))
        host = acts.cpu().numpy()
        picks = np.linspace(0, n_epochs - 1, n_numpy).astype(int)
        times = []
        for e in picks:
            t0 = time.perf_counter()
            ixt, ity = numpy_binning(host[e], y, edges)
            times.append(time.perf_counter() - t0)
            diff = max(diff, abs(ixt - float(r.ixt[e])), abs(ity - float(r.ity[e])))
        theirs.append(float(np.median(times)))
    return float(np.mean(ours)), float(np.mean(theirs)), diff


def bench_binning_per_width(widths, n, n_epochs, repeats=5):
    """Per layer width d: infoplane batched over n_epochs vs the plain integer-key numpy route (CPU)."""
    y = labels_for(n)
    yt = torch.from_numpy(y)
    edges = np.linspace(-1, 1, 30).astype(np.float32)
    rows = []
    for d in widths:
        acts = tanh_activations(n_epochs, n, d, seed=d)
        host = acts.numpy()
        picks = np.linspace(0, n_epochs - 1, 8).astype(int)
        ours, theirs = [], []
        for _ in range(repeats):  # interleaved, so that both sides see the same machine load
            ours.append(median_time(lambda acts=acts: binned_mi(acts, yt, bins=30, range=(-1, 1)), 1) / n_epochs)
            t0 = time.perf_counter()
            for e in picks:
                numpy_binning_keys(host[e], y, edges)
            theirs.append((time.perf_counter() - t0) / len(picks))
        r = binned_mi(acts, yt, bins=30, range=(-1, 1))
        diff = max(max(abs(v - float(w)) for v, w in zip(numpy_binning_keys(host[e], y, edges), (r.ixt[e], r.ity[e])))
                   for e in picks)
        ratios = [t / o for o, t in zip(ours, theirs)]  # per interleaved repeat: both sides under the same load
        rows.append((d, float(np.median(ours)), float(np.median(theirs)), diff,
                     (min(ours), max(ours)), (min(ratios), max(ratios))))
    return rows


# Targets of the per-width binning table: time per layer-epoch batched over epochs, and speed-up over
# the plain integer-key numpy route in the same process.
BINNING_TARGET_MS = 0.1
BINNING_TARGET_SPEEDUP = 10.0


def bench_kde(widths, n, n_epochs, n_numpy, noise_var, device, repeats=1):
    y = labels_for(n)
    yt = torch.from_numpy(y).to(device)
    ours, theirs, diff, diff64 = [], [], 0.0, 0.0
    for w in widths:
        acts = tanh_activations(n_epochs, n, w, seed=w).to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        ours.append(median_time(lambda acts=acts: kde_mi(acts, yt, noise_var=noise_var), repeats, sync) / n_epochs)
        r = kde_mi(acts, yt, noise_var=noise_var)
        host = acts.cpu().numpy()
        times = []
        for e in np.linspace(0, n_epochs - 1, n_numpy).astype(int):
            t0 = time.perf_counter()
            (ixt_u, ixt_l), (ity_u, ity_l) = numpy_kde(host[e], y, noise_var)
            times.append(time.perf_counter() - t0)
            got = (r.ixt[e], r.ixt_lower[e], r.ity[e], r.ity_lower[e])
            diff = max(diff, *(abs(float(g) - v) for g, v in zip(got, (ixt_u, ixt_l, ity_u, ity_l))))
            r64 = kde_mi(acts[e], yt, noise_var=noise_var, precision="float64")
            got = (r64.ixt, r64.ixt_lower, r64.ity, r64.ity_lower)
            diff64 = max(diff64, *(abs(float(g) - v) for g, v in zip(got, (ixt_u, ixt_l, ity_u, ity_l))))
        theirs.append(float(np.median(times)))
    return float(np.mean(ours)), float(np.mean(theirs)), diff, diff64


def bench_kde_routes(widths, n, repeats):
    """kde_mi at float32 by direct float32 differences against the float64 matrix-product route that float32 KDE
    took before (kernel values in float32 either way; ``kde.DIRECT_MAX_UNITS`` switched to 0 for the latter), CPU.
    Rows: width, ms by differences, ms by the product, ratio, max |difference| (bits)."""
    from infoplane.estimators import kde as kde_module

    rows = []
    labels = torch.from_numpy(labels_for(n))
    for w in widths:
        acts = tanh_activations(1, n, w, seed=w)[0]
        saved = dict(kde_module.DIRECT_MAX_UNITS)
        try:
            kde_module.DIRECT_MAX_UNITS["cpu"] = 10**9
            direct = median_time(lambda acts=acts: kde_mi(acts, labels, noise_var=1e-3), repeats)
            r_direct = kde_mi(acts, labels, noise_var=1e-3)
            kde_module.DIRECT_MAX_UNITS["cpu"] = 0
            product = median_time(lambda acts=acts: kde_mi(acts, labels, noise_var=1e-3), repeats)
            r_product = kde_mi(acts, labels, noise_var=1e-3)
        finally:
            kde_module.DIRECT_MAX_UNITS.clear()
            kde_module.DIRECT_MAX_UNITS.update(saved)
        diff = max(float((getattr(r_direct, f) - getattr(r_product, f)).abs().max())
                   for f in ("ixt", "ity", "ixt_lower", "ity_lower"))
        chosen = "differences" if kde_module.direct_route(w, torch.device("cpu")) else "product"
        rows.append([w, ms(direct), ms(product), f"{product / direct:.2f}x", f"{diff:.1e}", chosen])
    return rows


def _peak_rss_mib():
    """Peak resident memory of this process in MiB (VmHWM, which unlike ru_maxrss restarts at exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_of_kde(n, width, noise_var):
    """Peak resident memory (MiB) of a fresh process running one infoplane KDE estimate, and before it."""
    code = (
        "import sys; sys.path.insert(0, %r); import torch; from _common import tanh_activations, labels_for;"
        "from bench_estimators import _peak_rss_mib; from infoplane.estimators import kde_mi;"
        "a = tanh_activations(1, %d, %d); y = torch.from_numpy(labels_for(%d));"
        "base = _peak_rss_mib(); kde_mi(a, y, noise_var=%r); print(_peak_rss_mib(), base)"
    ) % (os.path.dirname(os.path.abspath(__file__)), n, width, n, noise_var)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=274, help="recorded epochs in the 12-bit binning workload")
    p.add_argument("--kde-epochs", type=int, default=16, help="epochs per layer timed for KDE (per-item cost)")
    p.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.kde_epochs = 32, 2
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; devices: {', '.join(map(str, devices))}")
    try:
        import threadpoolctl
        print("numpy BLAS:", ", ".join(f"{i['internal_api']} {i.get('architecture', '?')}"
                                       for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"))
    except ImportError:
        pass
    results = {}
    rows = []
    for device in devices:
        tag = device.type
        ours, theirs, diff = bench_binning(TISHBY_WIDTHS, 4096, args.epochs, 3 if args.quick else 10, device)
        rows.append([f"1. 12-bit binning, 30 bins [-1,1] ({tag})", ms(ours), ms(theirs), f"{theirs / ours:.1f}x",
                     f"{diff:.1e}"])
        results[f"binning_12bit_{tag}"] = dict(ours_s=ours, numpy_s=theirs, max_diff_bits=diff)
        if device.type == "cpu":
            ours, theirs, diff = bench_discrete(TISHBY_WIDTHS, 4096, args.epochs, 3 if args.quick else 10)
            rows.append(["1. 12-bit discrete, tanh quantised to 8 bits (cpu)", ms(ours), ms(theirs),
                         f"{theirs / ours:.1f}x", f"{diff:.1e}"])
            results["discrete_12bit_cpu"] = dict(ours_s=ours, numpy_s=theirs, max_diff_bits=diff)
        ours, theirs, diff, diff64 = bench_kde(TISHBY_WIDTHS, 4096, args.kde_epochs, 1, 1e-3, device)
        rows.append([f"2. 12-bit KDE, s2=1e-3, both bounds ({tag})", ms(ours), ms(theirs), f"{theirs / ours:.1f}x",
                     f"{diff:.1e} (float64 option: {diff64:.1e})"])
        results[f"kde_12bit_{tag}"] = dict(ours_s=ours, numpy_s=theirs, max_diff_bits=diff, float64_diff=diff64)
        n = 2000 if args.quick else 10_000
        for w in (1024, 20):
            ours, theirs, diff = bench_binning((w,), n, 2 if args.quick else 4, 2, device, repeats=2)
            rows.append([f"3. MNIST-like binning, N={n}, width {w} ({tag})", ms(ours), ms(theirs),
                         f"{theirs / ours:.1f}x", f"{diff:.1e}"])
            results[f"binning_mnist_{w}_{tag}"] = dict(ours_s=ours, numpy_s=theirs, max_diff_bits=diff)
            ours, theirs, diff, diff64 = bench_kde((w,), n, 1, 1, 0.1, device)
            rows.append([f"3. MNIST-like KDE s2=0.1, N={n}, width {w} ({tag})", ms(ours), ms(theirs),
                         f"{theirs / ours:.1f}x", f"{diff:.1e} (float64 option: {diff64:.1e})"])
            results[f"kde_mnist_{w}_{tag}"] = dict(ours_s=ours, numpy_s=theirs, max_diff_bits=diff,
                                                   float64_diff=diff64)
    n_epochs = 64 if args.quick else args.epochs
    per_d = bench_binning_per_width(range(2, 11), 4096, n_epochs, repeats=3 if args.quick else 7)
    print_table(f"Binning per layer width: N = 4096, 30 bins on [-1, 1], {n_epochs} epochs in one call (CPU); "
                "numpy = digitize + int64 mixed-radix keys + np.unique; medians of interleaved repeats [min-max]; "
                f"targets: <= {BINNING_TARGET_MS} ms and >= {BINNING_TARGET_SPEEDUP:.0f}x",
                ["d", "infoplane (ms/layer-epoch)", "numpy (ms)", "speed-up", "max |diff| (bits)",
                 f"<= {BINNING_TARGET_MS} ms", f">= {BINNING_TARGET_SPEEDUP:.0f}x"],
                [[d, f"{ms(o)} [{ms(ob[0])}-{ms(ob[1])}]", ms(t), f"{t / o:.1f}x [{rb[0]:.1f}-{rb[1]:.1f}]",
                  f"{df:.1e}", "PASS" if o * 1e3 <= BINNING_TARGET_MS else "FAIL",
                  "PASS" if t / o >= BINNING_TARGET_SPEEDUP else "FAIL"] for d, o, t, df, ob, rb in per_d])
    for d, o, t, df, _, _ in per_d:
        results[f"binning_per_d_{d}_cpu"] = dict(ours_s=o, numpy_s=t, max_diff_bits=df,
                                                 meets_time=o * 1e3 <= BINNING_TARGET_MS,
                                                 meets_speedup=t / o >= BINNING_TARGET_SPEEDUP)
    n_routes = 1024 if args.quick else 4096
    print_table(f"KDE float32 on the CPU, N = {n_routes}, s2 = 1e-3, one layer per call: squared distances by direct "
                "float32 differences vs by the float64 matrix product (the route before; ms, medians)",
                ["width", "differences", "product", "product / differences", "max |diff| (bits)", "default"],
                bench_kde_routes((5, 10, 16, 32) if not args.quick else (10,), n_routes, 1 if args.quick else 5))
    print_table("Estimators: median time per layer-epoch (ms), infoplane vs plain numpy in this process",
                ["workload", "infoplane", "numpy", "speed-up", "max |diff| (bits)"], rows)
    mem_rows = []
    for n, w in ((10_000, 1024), (10_000, 20), (20_000, 20)):
        if args.quick and n > 10_000:
            continue
        peak, base = peak_memory_of_kde(n, w, 0.1)
        mem_rows.append([f"KDE N={n}, width {w}", f"{peak:.0f}", f"{base:.0f}"])
        results[f"kde_peak_mib_{n}_{w}"] = peak
    print_table("KDE peak memory of a fresh process (MiB)", ["workload", "peak RSS", "before estimating"], mem_rows)
    print(f"\nwhole benchmark process peak RSS: {_peak_rss_mib():.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    # The speed-ups only count if both sides computed the same numbers.
    bad = [k for k, v in results.items() if isinstance(v, dict) and (
        v["max_diff_bits"] > (1e-4 if k.startswith("kde") else 1e-9) or v.get("float64_diff", 0) > 1e-9)]
    if bad:
        raise SystemExit(f"infoplane and the numpy reference disagree beyond tolerance in: {', '.join(bad)}")
    return results


if __name__ == "__main__":
    main()

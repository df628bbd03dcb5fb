"""Cost per call of each sharpness measure of infoplane.sharpness, on two networks.

    python benchmarks/bench_sharpness.py                  # defaults below
    python benchmarks/bench_sharpness.py --quick          # small settings, a smoke run
    python benchmarks/bench_sharpness.py --seeds 20       # the ensemble part with 20 seeds (the default)

Networks: the 12-10-7-5-4-3-2 tanh network of examples/tishby_tanh.py on the 4096 patterns of the 12-bit task,
and a CIFAR-sized CNN (three 3x3 convolutions of 16, 32, 64 channels with ReLU and 2x2 max-pooling, then a linear
layer to 10 classes) on random 3x32x32 images. Both are untrained: the cost of a unit of work does not depend on
the weights, only the number of units an iterative measure needs does. For each measure the table gives the median
wall time of one call (after a warm-up call), the work it did (Hessian-vector products, loss-and-gradient
evaluations or forward passes), the time per unit of work and the value. A Hessian-vector product costs a
forward, a backward and a double backward, about four forward passes; ``--batch-size`` chunks the data (same
values, less memory). On a machine shared with other jobs, torch's intra-op threads can slow small networks by
tens of times: compare figures taken with the same OMP_NUM_THREADS on an idle machine.

The second part is what a tracker pays per recorded epoch (``Tracker(sharpness=...)``, ``infoplane track
--sharpness``): every measure, with the options above, through :class:`infoplane.tracking.sharpness.SharpnessPlan`
on 1024 training rows (the CLI's default) of the 12-bit task and on the CNN's images, for one seed and for an
ensemble of ``--seeds`` (20) networks (batched over the seeds where :func:`infoplane.sharpness.ensemble` can,
one after another otherwise; the "how" column says which). The ratio ``ensemble / (seeds x one seed)`` is 1
when batching gains nothing; one training epoch of a seed (plain
SGD, batch 256, over the same rows) is printed for scale.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _common import median_time, print_table  # noqa: E402

from infoplane.data.modelfile import load_model_file  # noqa: E402
from infoplane.sharpness import (  # noqa: E402
    adaptive_sharpness,
    hessian_top_eigenvalue,
    hessian_trace,
    random_sharpness,
    sam_sharpness,
)
from infoplane.tracking.sharpness import SharpnessPlan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tishby_network():
    from infoplane.data import tishby12

    x, y = tishby12()
    model = load_model_file(str(ROOT / "examples" / "tishby_tanh.py")).build(seed=0)
    return "12-10-7-5-4-3-2 tanh, 4096 x 12", model, x.float(), y


def cnn(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


def cifar_cnn(n):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return f"CNN 3x32x32 -> 10, {n} images", cnn(0), x, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small settings: a smoke run in seconds")
    parser.add_argument("--cnn-images", type=int, default=512, help="random images for the CNN (default 512)")
    parser.add_argument("--batch-size", type=int, default=None, help="chunk size for every measure (default: none)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measure, after a warm-up")
    parser.add_argument("--seeds", type=int, default=20, help="networks of the ensemble part (default 20)")
    parser.add_argument("--network", choices=["both", "tishby", "cnn"], default="both",
                        help="which network to time (default both)")
    args = parser.parse_args(argv)

    iters, samples, steps, repeats = (10, 10, 5, 1) if args.quick else (20, 20, 10, args.repeats)
    images = min(args.cnn_images, 128) if args.quick else args.cnn_images
    measures = [
        ("hessian_top_eigenvalue", lambda *a, **kw: hessian_top_eigenvalue(*a, **kw, tol=1e-3, max_iter=iters),
         lambda r: (r.iterations, "HVP")),
        ("hessian_trace", lambda *a, **kw: hessian_trace(*a, **kw, samples=samples), lambda r: (r.samples, "HVP")),
        ("sam_sharpness", lambda *a, **kw: sam_sharpness(*a, **kw, rho=0.05, steps=steps),
         lambda r: (r.evaluations, "grad")),
        ("adaptive_sharpness", lambda *a, **kw: adaptive_sharpness(*a, **kw, rho=0.05, steps=steps),
         lambda r: (r.evaluations, "grad")),
        ("random_sharpness", lambda *a, **kw: random_sharpness(*a, **kw, rho=0.05, samples=samples),
         lambda r: (r.samples + 1, "fwd")),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; batch_size={args.batch_size}")
    wanted = {"both": (0, 1), "tishby": (0,), "cnn": (1,)}[args.network]
    for name, model, x, y in [(tishby_network, lambda: cifar_cnn(images))[i]() for i in wanted]:
        n_params = sum(p.numel() for p in model.parameters())
        loss = nn.CrossEntropyLoss()
        rows = []
        for label, call, work in measures:
            result = {}

            def run(result=result, call=call, model=model, loss=loss, x=x, y=y):
                result["r"] = call(model, loss, x, y, batch_size=args.batch_size)

            seconds = median_time(run, repeats=repeats)
            r = result["r"]
            count, unit = work(r)
            rows.append((label, f"{seconds * 1e3:.1f}", f"{count} {unit}", f"{seconds * 1e3 / count:.1f}",
                         f"{r.value:.4g}"))
        print_table(f"{name}, {n_params} parameters", ("measure", "ms/call", "work", "ms/unit", "value"), rows)
    options = {"hessian_top_eigenvalue": {"tol": 1e-3, "max_iter": iters}, "hessian_trace": {"samples": samples},
               "sam_sharpness": {"rho": 0.05, "steps": steps}, "adaptive_sharpness": {"rho": 0.05, "steps": steps},
               "random_sharpness": {"rho": 0.05, "samples": samples}}
    seeds = 2 if args.quick else args.seeds
    for name, build, x, y in [(tishby_ensemble, lambda: cifar_ensemble(images))[i]() for i in wanted]:
        rows = []
        epoch = training_epoch(build(0), x[:1024], y[:1024])
        for measure, opts in options.items():
            one = per_epoch(build, 1, {measure: opts}, x, y)
            many, how = per_epoch(build, seeds, {measure: opts}, x, y)
            rows.append((measure, f"{one[0] * 1e3:.0f}", f"{many:.2f}", f"{many / (seeds * one[0]):.2f}",
                         f"{one[0] / epoch:.1f}", "batched" if how == "batched" else "one by one"))
        print_table(f"per recorded epoch through the tracker, {name}: 1 seed and {seeds} seeds "
                    f"(one training epoch of one seed: {epoch * 1e3:.0f} ms)",
                    ("measure", "1 seed ms", f"{seeds} seeds s", f"ratio to {seeds} x 1", "1 seed / train epoch",
                     "how"),
                    rows)


def per_epoch(build, seeds, measures, x, y):
    """Seconds the tracker's plan takes to measure ``seeds`` networks once (after a warm-up), and how."""
    models = [build(s) for s in range(seeds)]
    warm = models[:2]  # a warm-up, the batched path's included
    SharpnessPlan.make(measures, warm, (x, y), None, samples=1024, subset_seed=0).measure(warm, [0, 1][:len(warm)], 0)
    plan = SharpnessPlan.make(measures, models, (x, y), None, samples=1024, subset_seed=0)
    t0 = time.perf_counter()
    plan.measure(models, list(range(seeds)), 0)
    return time.perf_counter() - t0, next(iter(plan.how.values()))


def training_epoch(model, x, y, batch=256):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch]).backward()
        opt.step()
    return time.perf_counter() - t0


def tishby_ensemble():
    from infoplane.data import tishby12

    x, y = tishby12()
    file = load_model_file(str(ROOT / "examples" / "tishby_tanh.py"))
    return "12-bit network, 1024 rows", file.build, x.float(), y


def cifar_ensemble(n):
    _, _, x, y = cifar_cnn(n)
    return f"CNN, {n} images", cnn, x, y


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\n{time.perf_counter() - t0:.1f} s in all")

"""Cost of the per-layer gradient statistics: training the 12-10-7-5-4-3-2 tanh network with and without them.

    python benchmarks/bench_gradients.py --epochs 300
    python benchmarks/bench_gradients.py --quick       # a smoke run in seconds

One seed on the torch path (``fit(..., fused=False)``: autograd and Adam, batch 256, 85% of the 4096 patterns),
timed as ``infoplane track`` trains it: with statistics of the mini-batch gradients of every tracked layer gathered
over each epoch and read after it (``fit(..., gradients=...)``), and without. The two are timed alternately,
``--repeats`` times each, and the best of each is compared, in CPU seconds of this process (which a shared,
loaded machine disturbs far less than wall time; wall time is printed too). Target: with / without <= 1.10.
Without statistics no optimiser hook exists at all (checked while training).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.optim import optimizer as torch_optimizer

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.10


def setting():
    """The model file, the data, the training rows and the layers' weight names (as infoplane track finds them)."""
    from infoplane.capture.hooks import resolve_layers, weight_names
    from infoplane.data import stratified_split, tishby12
    from infoplane.data.modelfile import load_model_file

    mf = load_model_file(ROOT / "examples" / "tishby_tanh.py")
    inputs, labels = tishby12()
    inputs, labels = torch.as_tensor(inputs).float(), torch.as_tensor(labels)
    train, _ = stratified_split(labels.numpy(), 0.85, seed=0)
    model = mf.build(0)
    layers = [layer.name for layer in resolve_layers(model, inputs[:2])]
    return mf, inputs, labels, train, weight_names(model, inputs[:2], layers)


def timed(mf, inputs, labels, train, epochs, gradients):
    from infoplane.train import fit

    hooks = []

    def callback(epoch, members, metrics):
        hooks.append(len(torch_optimizer._global_optimizer_pre_hooks))
        if metrics.gradients is not None:
            metrics.gradients[0][0].snr  # noqa: B018 - read, as the tracker does

    t0, c0 = time.perf_counter(), time.process_time()
    fit(mf, inputs, labels, train, seeds=[0], epochs=epochs, fused=False, gradients=gradients, callback=callback)
    return time.process_time() - c0, time.perf_counter() - t0, max(hooks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small settings: a smoke run in seconds")
    args = parser.parse_args(argv)
    epochs, repeats = (4, 1) if args.quick else (args.epochs, args.repeats)
    mf, inputs, labels, train, layers = setting()
    timed(mf, inputs, labels, train, 1, layers)  # warm-up: imports, first allocations
    plain, with_stats = [], []
    for _ in range(repeats):
        cpu, wall, hooks = timed(mf, inputs, labels, train, epochs, None)
        plain.append((cpu, wall))
        assert hooks == 0, "an optimiser hook exists while training without gradient statistics"
        with_stats.append(timed(mf, inputs, labels, train, epochs, layers)[:2])
    (cpu0, wall0), (cpu1, wall1) = min(plain), min(with_stats)
    ratio = cpu1 / cpu0
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    steps = epochs * -(-len(train) // 256)
    print(f"12-bit tanh network, 1 seed, torch path, {epochs} epochs ({steps} optimiser steps), best of {repeats}:")
    print(f"  without gradient statistics {cpu0:7.2f} CPU s {wall0:7.2f} wall s  (no optimiser hook)")
    print(f"  with gradient statistics    {cpu1:7.2f} CPU s {wall1:7.2f} wall s  ({len(layers)} layers)")
    print(f"  ratio {ratio:.3f} CPU, {wall1 / wall0:.3f} wall  (target <= {TARGET:.2f})  {verdict}")
    return ratio


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

"""Shared helpers for the benchmarks: timing, synthetic activations, table printing."""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch


def median_time(fn, repeats=5, sync=None):
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tanh_activations(n_epochs, n, width, seed=0):
    """tanh-like activations whose spread grows with the epoch, as a training net's layers saturate."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(n, width, generator=g)
    drift = torch.randn(n_epochs, 1, width, generator=g) * 0.2
    scale = torch.linspace(0.5, 4.0, n_epochs)[:, None, None]
    return torch.tanh(pre[None] * scale + drift).float()


def print_table(title, header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def ms(seconds):
    return f"{seconds * 1e3:.3f}"


def labels_for(n, n_classes=2, seed=1):
    return np.random.default_rng(seed).integers(0, n_classes, size=n)

"""Run every benchmark of infoplane (``make bench``). ``--quick`` gives a smoke run of each."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BENCHMARKS = [
    ("bench_estimators", "estimators (binning, KDE) vs plain numpy", []),
    ("bench_tracking", "tracking overhead on the 12-bit network", []),
    ("bench_ensemble", "seed ensembles: vectorised vs sequential training", []),
    ("bench_knn_renyi", "k-NN (KSG) vs scipy cKDTree; Renyi vs numpy eigvalsh", []),
    ("bench_sharpness", "sharpness measures on the 12-bit network and a CIFAR-sized CNN", []),
    ("bench_targets", "tracking vs training alone, KDE on a busy machine, the published study (--study)", []),
    ("bench_gradients", "gradient statistics: training the 12-bit network with and without them", []),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", action="append", help="run only these benchmark modules")
    p.add_argument("--study", action="store_true", help="bench_targets: also the published study end to end (long)")
    args = p.parse_args(argv)
    for name, what, extra in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                print(f"\n== {name}: not present, skipped")
                continue
            raise
        print(f"\n== {name}: {what}", flush=True)
        t0 = time.perf_counter()
        study = ["--study"] if args.study and name == "bench_targets" else []
        module.main((["--quick"] if args.quick else []) + study + extra)
        print(f"== {name} took {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()

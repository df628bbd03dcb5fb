"""Wall time of training seed ensembles of the 12-10-7-5-4-3-2 tanh network, vectorised or one by one.

    python benchmarks/bench_ensemble.py --epochs 200

For each training fraction (5% and 85% of the 4096 patterns) it times S=1 and S=20 seeds, the
20 trained together with ``torch.func.vmap`` and one after another. One-after-another training of
20 seeds is timed over fewer epochs (``--sequential-epochs``) and scaled to the full count, which the
output marks as extrapolated. It then times the whole tracked workload as ``infoplane track`` runs it
(training plus binning with 30 bins on [-1, 1] at log_schedule(epochs, 400), checkpoints and files) for both
fractions together, S=1 and S=20. Target: 20 vectorised seeds in under 3x the time of 1 seed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.05, 0.85)
TARGET_RATIO = 3.0


def load_data():
    """The 12-bit task, or random binary data of the same shape when infoplane.data is unavailable."""
    try:
        from infoplane.data import stratified_split, tishby12

        inputs, labels = tishby12()
        return inputs, labels, stratified_split, "infoplane.data.tishby12()"
    except ImportError:
        g = torch.Generator().manual_seed(0)
        inputs = torch.randint(0, 2, (4096, 12), generator=g).float()
        labels = torch.randint(0, 2, (4096,), generator=g)

        def split(labels, fraction, seed):
            perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
            n = round(fraction * len(labels))
            return perm[:n], perm[n:]

        return inputs, labels, split, "random binary 4096x12 (infoplane.data not importable)"


def time_fit(model_file, inputs, labels, train_idx, seeds, epochs, vectorize, device):
    from infoplane.train import fit

    start = time.perf_counter()
    result = fit(model_file, inputs, labels, train_idx, seeds=seeds, epochs=epochs, vectorize=vectorize, device=device)
    return time.perf_counter() - start, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8000, help="epochs per run (default 8000)")
    parser.add_argument("--seeds", type=int, default=20, help="ensemble size (default 20)")
    parser.add_argument("--sequential-epochs", type=int, default=None,
                        help="epochs actually run for one-by-one training of the ensemble (default min(epochs, 20))")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="300 epochs, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 300)
    seq_epochs = min(args.epochs, args.sequential_epochs or 20)

    from infoplane.modelfile import load_model_file
    from infoplane.train import fit

    model_file = load_model_file(ROOT / "examples" / "tishby_tanh.py")
    inputs, labels, split, source = load_data()
    print(f"data: {source}; device: {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"network: examples/tishby_tanh.py; Adam lr 4e-4; batch 256; {args.epochs} epochs\n")

    # Warm-up: first calls pay for lazy initialisation that is not training time.
    fit(model_file, inputs, labels, split(labels, 0.5, 0)[0], seeds=2, epochs=2, device=args.device)

    rows, ratios = [], {}
    for fraction in FRACTIONS:
        splits = [torch.as_tensor(split(labels, fraction, s)[0]) for s in range(args.seeds)]
        train_idx = torch.stack(splits)
        single, _ = time_fit(model_file, inputs, labels, train_idx[:1], 1, args.epochs, "auto", args.device)
        vec, result = time_fit(model_file, inputs, labels, train_idx, args.seeds, args.epochs, True, args.device)
        seq_part, _ = time_fit(model_file, inputs, labels, train_idx, args.seeds, seq_epochs, False, args.device)
        seq = seq_part * args.epochs / max(seq_epochs, 1)
        note = "" if seq_epochs == args.epochs else f"extrapolated from {seq_epochs} epochs"
        n_train = train_idx.shape[1]
        rows += [
            (fraction, n_train, 1, "one seed", single, ""),
            (fraction, n_train, args.seeds, "vectorised", vec, ""),
            (fraction, n_train, args.seeds, "one by one", seq, note),
        ]
        ratios[fraction] = vec / single
        assert result.vectorized, result.reason

    print(f"{'fraction':>8} {'n_train':>7} {'seeds':>5} {'mode':<11} {'wall s':>9} {'ms/epoch':>9}  note")
    for fraction, n_train, seeds, mode, seconds, note in rows:
        print(f"{fraction:>8.2f} {n_train:>7} {seeds:>5} {mode:<11} {seconds:>9.2f} "
              f"{1000 * seconds / max(args.epochs, 1):>9.3f}  {note}")
    print()
    for fraction, ratio in ratios.items():
        verdict = "meets" if ratio < TARGET_RATIO else "misses"
        print(f"fraction {fraction:.2f}: {args.seeds} seeds vectorised / 1 seed = {ratio:.2f}x "
              f"({verdict} the target of < {TARGET_RATIO:g}x)")

    tracked = {}
    for seeds in (1, args.seeds):
        tracked[seeds] = time_track(model_file, seeds, args.epochs, args.device)
    ratio = tracked[args.seeds] / tracked[1]
    verdict = "meets" if ratio < TARGET_RATIO else "misses"
    print(f"\ntracked workload (training + binning, fractions {' and '.join(map(str, FRACTIONS))} together): "
          f"1 seed {tracked[1]:.1f} s, {args.seeds} seeds vectorised {tracked[args.seeds]:.1f} s = {ratio:.2f}x "
          f"({verdict} the target of < {TARGET_RATIO:g}x)")
    return 0


def time_track(model_file, seeds, epochs, device):
    import tempfile

    from infoplane.experiment import track

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        track(model_file, fractions=FRACTIONS, seeds=seeds, epochs=epochs, device=device, out=out, progress=False,
              log=lambda message: None)
        return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())

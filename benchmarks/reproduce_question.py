"""Does a network that memorises compress, and does flatness or compression predict generalisation?

The ``question`` section of ``make reproduce``. Two quantised tanh networks whose hidden layers have finite
alphabets, so that the exact (``discrete``) estimator exists beside 30-bin binning of the same activations: the
12-bit task's 12-10-7-5-4-3-2 network (``examples/tishby_tanh_q8.py``) and a 64-32-16-10 MLP on scikit-learn's
digits (``examples/digits_tanh_q8.py``), both with every tanh quantised to 8 bits. Grid: batch size {32, 256,
full} x optimiser {SGD, SAM around the same SGD} x label noise {0, 0.2, 0.5, 1.0}, 10 seeds each.

Per run (configuration and seed): accuracies against the labels trained on and against the clean labels, the
generalisation gaps (train - test accuracy) against both, the compression of the last hidden layer (peak - final
I(X;T)) under both estimators, its final I(T;Y_clean) and I(T;Y_trained), and the five sharpness measures of the
trained network. Across runs, per data set: Spearman rank correlations between each of these measures and the
gaps, with bootstrap 95% intervals (runs resampled with a fixed seed).

The sharpness measures are taken once, on the trained network only: the tracker would measure them at every
recorded epoch (``Tracker(sharpness=...)``), which for this grid costs far more than the training. They are the
tracker's own measurement (:class:`infoplane.tracking.sharpness.SharpnessPlan`) on the final training state that
``track`` keeps in each run directory (``train_state.pt``), on the same rows the tracker would use (a fixed
subset of each seed's training split) and against the labels the network was trained on. They are cached in
``final-sharpness.json`` beside each run directory, so an interrupted run continues.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import reproduce_common as common

BATCHES = (32, 256, "full")
OPTIMISERS = ("sgd", "sam")
NOISE = (0.0, 0.2, 0.5, 1.0)
MEASURES = ("hessian_top_eigenvalue", "hessian_trace", "sam_sharpness", "adaptive_sharpness", "random_sharpness")
#: Cheaper settings than the measures' defaults (the cost is per seed and configuration); random directions get
#: a radius ten times SAM's, since at 0.05 the loss barely moves along a random direction.
FULL_OPTIONS = {
    "hessian_top_eigenvalue": {"tol": 1e-3, "max_iter": 30},
    "hessian_trace": {"samples": 10},
    "sam_sharpness": {"rho": 0.05, "steps": 10},
    "adaptive_sharpness": {"rho": 0.5, "steps": 10},
    "random_sharpness": {"rho": 0.5, "samples": 30},
}
QUICK_OPTIONS = {  # the same measures with a handful of iterations each (the test's budget)
    "hessian_top_eigenvalue": {"tol": 1e-2, "max_iter": 3},
    "hessian_trace": {"samples": 2},
    "sam_sharpness": {"rho": 0.05, "steps": 2},
    "adaptive_sharpness": {"rho": 0.5, "steps": 2},
    "random_sharpness": {"rho": 0.5, "samples": 2},
}
SHARPNESS_ROWS = 256  # rows of each seed's training split the measures use (32 in the quick budget)
LR, RHO = 0.2, 0.05  # SGD's rate, for SGD and as SAM's base; SAM's radius
BOOTSTRAP, BOOTSTRAP_SEED = 1000, 0
ESTIMATORS = {"binning": "30 bins", "discrete": "exact"}
SHORT = {"hessian_top_eigenvalue": "Hessian top eigenvalue", "hessian_trace": "Hessian trace",
         "sam_sharpness": "SAM sharpness", "adaptive_sharpness": "ASAM sharpness",
         "random_sharpness": "random sharpness"}


def datasets(quick):
    """The two networks, their training fractions and their budgets (epochs per batch size)."""
    epochs = {32: 2, 256: 2, "full": 2} if quick else {32: 100, 256: 300, "full": 1500}
    return {
        "12-bit": dict(model="examples/tishby_tanh_q8.py", fraction=0.25, epochs=epochs),
        "digits": dict(model="examples/digits_tanh_q8.py", fraction=0.5, epochs=epochs),
    }


def grid(quick):
    """(batch size, optimiser, label noise) of every configuration, and the seeds of each."""
    if quick:
        return [("full", "sgd", 0.0), ("full", "sgd", 0.5), ("full", "sam", 0.5)], 3
    return [(b, opt, p) for b in BATCHES for opt in OPTIMISERS for p in NOISE], 10


def config_name(batch, optimiser, noise):
    return f"batch-{batch}_{optimiser}_noise-{noise:g}"


def _complete(where, fraction):
    """Whether the run of this configuration is complete already (``track`` then reads it instead of training)."""
    from infoplane.experiment import fraction_dir

    meta = fraction_dir(where, fraction) / "meta.json"
    return meta.exists() and bool(json.loads(meta.read_text()).get("complete"))


def _track(spec, batch, optimiser, noise, seeds, out, quick, args):
    from infoplane import Binning, Discrete, log_schedule
    from infoplane.experiment import track

    epochs = spec["epochs"][batch]
    return track(common.REPO / spec["model"], fractions=[spec["fraction"]], seeds=seeds, epochs=epochs,
                 batch_size=batch, optimizer=optimiser, lr=LR, rho=RHO if optimiser == "sam" else None,
                 label_noise=noise, gradients=False, estimators=[Discrete(), Binning(bins=30, range=(-1, 1))],
                 schedule=[0, epochs] if quick else log_schedule(epochs, 20), out=out, resume=True, progress=not args.quiet,
                 caller=["benchmarks/reproduce.py", "--only", "question"],
                 log=lambda m: print(m, file=sys.stderr))[0]


def measure_options(quick):
    return QUICK_OPTIONS if quick else FULL_OPTIONS


def sharpness_rows(quick):
    return 32 if quick else SHARPNESS_ROWS


def final_sharpness(run, model_path, options, n_rows=SHARPNESS_ROWS):
    """The five measures of each seed's trained network (``{measure: [value per seed]}``), measured as the tracker
    measures them, on the final state saved in the run directory."""
    import torch

    from infoplane.data import tishby12
    from infoplane.data.modelfile import load_model_file
    from infoplane.runs.format import STATE
    from infoplane.tracking.sharpness import SharpnessPlan, subset_indices
    from infoplane.train.state import load_state

    mf = load_model_file(model_path)
    state = load_state(Path(run.path) / STATE)
    members = {int(m["seed"]): m for m in state["members"]}
    models = []
    for seed in run.seeds:
        net = mf.build(seed)
        net.load_state_dict({**members[seed]["params"], **members[seed]["buffers"]})
        models.append(net)
    x, y = mf.data() if mf.data is not None else tishby12()  # as track() reads a model file's data
    inputs = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    labels = torch.as_tensor(trained_labels(run, y))
    data = []
    for i, train in enumerate(run.meta["split"]["train"]):
        rows = torch.as_tensor(np.asarray(train)[subset_indices(len(train), n_rows, 0)])
        data.append((inputs[rows], labels[i, rows]))
    loss = mf.loss if mf.loss is not None else torch.nn.CrossEntropyLoss()
    plan = SharpnessPlan.make(dict(options), models, data, loss, samples=None, subset_seed=0)
    rows = plan.measure(models, run.seeds, int(run.epochs[-1]))
    return {m: [float(next(r.value for r in rows if r.seed == s and r.measure == m)) for s in run.seeds]
            for m in options}


def trained_labels(run, clean):
    """The labels each seed trained on, ``[n_seeds, N]``: the clean labels, or the corrupted ones that the run stored,
    whether it holds one draw for all seeds (``[N]``) or one per seed (``[n_seeds, N]``, row i for ``run.seeds[i]``)."""
    corruption = run.corruption
    labels = np.asarray(clean if corruption is None else corruption["labels"])
    return np.tile(labels, (len(run.seeds), 1)) if labels.ndim == 1 else labels


def _cached_sharpness(run, model_path, path, options, n_rows):
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("seeds") == run.seeds and cached.get("options") == options and cached.get("rows") == n_rows:
            return cached["values"]
    values = final_sharpness(run, model_path, options, n_rows)
    path.write_text(json.dumps({"seeds": run.seeds, "options": options, "rows": n_rows, "values": values}))
    return values


def per_run(run, sharp, dataset, batch, optimiser, noise):
    """One dict per seed: the configuration, accuracies, gaps, compression and information of the last hidden
    layer under each estimator, and the sharpness of the trained network."""
    layer = run.layers[-2]  # the last hidden layer (the last tracked layer is the output)
    col = run.layers.index(layer)
    clean_target = "y_clean" if "y_clean" in run.targets else None
    final = {name: run.metric(name)[:, -1] for name in run.metric_names}
    rows = []
    for i, seed in enumerate(run.seeds):
        row = dict(dataset=dataset, batch=str(batch), optimiser=optimiser, noise=float(noise), seed=int(seed),
                   layer=layer)
        for which, suffix in (("trained", ""), ("clean", "_clean" if clean_target else "")):
            row[f"train_acc_{which}"] = float(final[f"train_acc{suffix}"][i])
            row[f"test_acc_{which}"] = float(final[f"test_acc{suffix}"][i])
            row[f"gap_{which}"] = row[f"train_acc_{which}"] - row[f"test_acc_{which}"]
        for est in ESTIMATORS:
            ixt = run.get("ixt", est)[i, :, col]
            row[f"compression_{est}"] = float(np.nanmax(ixt) - ixt[-1])
            row[f"ixt_{est}"] = float(ixt[-1])
            row[f"ity_trained_{est}"] = float(run.get("ity", est)[i, -1, col])
            row[f"ity_clean_{est}"] = float(run.get("ity", est, target=clean_target)[i, -1, col])
        for m in MEASURES:
            row[m] = float(sharp[m][i])
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ statistics
def spearman(a, b):
    """Spearman's rank correlation of two equally long samples (NaN where either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _ranks(a):
    """Ranks along the last axis, ties given their average rank (as Spearman's rho needs)."""
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def correlation(a, b, boot=BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """Spearman's rho of ``a`` and ``b`` and its bootstrap 95% interval (pairs resampled ``boot`` times with a
    generator seeded by ``seed``; percentile interval of the resamples where rho is defined).

    Returns
    -------
    (rho, low, high) : tuple of float
        NaN where undefined (a constant sample).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rho = spearman(a, b)
    if not np.isfinite(rho) or boot < 1:
        return rho, float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(a), (boot, len(a)))
    ra, rb = _ranks(a[idx]), _ranks(b[idx])  # [boot, n]: Pearson's r of the ranks, one resample per row
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    norm = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    ok = norm > 0  # a resample whose values are all equal has no rank correlation
    if not ok.any():
        return rho, float("nan"), float("nan")
    draws = (ra * rb).sum(axis=1)[ok] / norm[ok]
    low, high = np.percentile(draws, [2.5, 97.5])
    return rho, float(low), float(high)


PREDICTORS = ("compression_binning", "compression_discrete", *MEASURES)
TARGETS = ("gap_trained", "gap_clean")


def correlations(rows, boot=BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """``{(predictor, target, subset): (rho, low, high)}`` over the given runs (one data set): each predictor
    (compression under each estimator, each sharpness measure) against each gap, over all runs and over the
    runs without label noise; and each compression against each sharpness measure, over all runs."""
    out = {}
    clean = [r for r in rows if r["noise"] == 0]
    for subset, chosen in (("all", rows), ("noise 0", clean)):
        for p in PREDICTORS:
            for t in TARGETS:
                if subset == "noise 0" and t == "gap_clean":
                    continue  # the same as gap_trained without noise
                out[(p, t, subset)] = correlation([r[p] for r in chosen], [r[t] for r in chosen], boot, seed)
    for c in PREDICTORS[:2]:
        for m in MEASURES:
            out[(c, m, "all")] = correlation([r[c] for r in rows], [r[m] for r in rows], boot, seed)
    return out


def _rho(cell):
    rho, low, high = cell
    if not np.isfinite(rho):
        return "n/a (constant)"
    return f"{rho:+.2f} [{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else f"{rho:+.2f}"


def _label(name):
    if name.startswith("compression_"):
        return f"compression ({ESTIMATORS[name.split('_', 1)[1]]})"
    return SHORT.get(name, name)


# ---------------------------------------------------------------------------------------------------- section
def question(args):
    """Train the grid, measure every run, write the block and the figures; returns ``{"rows": [...], "runs":
    {dataset: {config: Run}}, "correlations": {dataset: {...}}}``."""
    import matplotlib

    matplotlib.use("Agg")

    quick, out = args.quick, Path(args.out) / "question"
    configs, seeds = grid(quick)
    start, load_start = time.perf_counter(), os.getloadavg()
    rows, runs, reused = [], {}, 0
    for dataset, spec in datasets(quick).items():
        runs[dataset] = {}
        for batch, optimiser, noise in configs:
            where = out / dataset / config_name(batch, optimiser, noise)
            reused += _complete(where, spec["fraction"])
            run = _track(spec, batch, optimiser, noise, seeds, where, quick, args)
            sharp = _cached_sharpness(run, common.REPO / spec["model"], where / "final-sharpness.json",
                                      measure_options(quick), sharpness_rows(quick))
            runs[dataset][(batch, optimiser, noise)] = run
            rows.extend(per_run(run, sharp, dataset, batch, optimiser, noise))
    seconds, load_end = time.perf_counter() - start, os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, out / "per-run.csv")
    boot = 200 if quick else BOOTSTRAP
    corr = {d: correlations([r for r in rows if r["dataset"] == d], boot) for d in runs}
    figures = [_scatter(rows, Path(args.figures))]
    figures += _memorisation(runs, Path(args.figures), quick)
    lines = _block(rows, runs, corr, quick, (seconds, reused), (load_start, load_end), seeds, figures, boot)
    common.write_block(Path(args.doc), "\n".join(lines), *common.markers("question"))
    return {"rows": rows, "runs": runs, "correlations": corr}


def _write_csv(rows, path):
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _med(values):
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return "n/a" if v.size == 0 else f"{np.median(v):.2f}"


def _med3(values):
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return "n/a" if v.size == 0 else f"{np.median(v):.3g}"


def _block(rows, runs, corr, quick, timing, loads, seeds, figures, boot):
    seconds, reused = timing
    n_configs = sum(len(by_config) for by_config in runs.values())
    # A resumed invocation times only what it trained: say so, rather than pass it off as the section's cost.
    resumed = f" ({reused} of {n_configs} configurations were complete already and only read)" if reused else ""
    specs = datasets(quick)
    ep = next(iter(specs.values()))["epochs"]
    lines = [f"_Generated by `benchmarks/reproduce.py --only question` ({'quick' if quick else 'full'} budget) on "
             f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}: {seconds:.0f} s in all{resumed}; load average "
             f"{loads[0][0]:.1f} at the start and {loads[1][0]:.1f} at the end._\n",
             f"{seeds} seeds per configuration; epochs by batch size "
             f"{', '.join(f'{b}: {e}' for b, e in ep.items())}; "
             f"{'epochs 0 and the last' if quick else '`log_schedule(epochs, 20)`'} recorded; SGD at lr {LR:g} (no momentum), SAM (rho {RHO:g}) "
             f"around the same SGD; 12-bit task at {specs['12-bit']['fraction']:g} of the data, digits at "
             f"{specs['digits']['fraction']:g}; the plane on all samples. Label noise p: each label redrawn "
             f"uniformly with probability p (so about p/K of them keep their class). Gap = train - test accuracy, "
             f"against the labels trained on (\"trained\") and against the clean labels (\"clean\"). Compression = "
             f"peak - final I(X;T) of the last hidden layer (bits) under 30 bins on [-1, 1] and under the exact "
             f"estimator of the same 8-bit activations; I(T;Y) of that layer at the end, exact. Sharpness of the "
             f"trained network on {sharpness_rows(quick)} training rows per seed, against the labels trained on: "
             + ", ".join(f"{SHORT[m]} `{json.dumps(o)}`" for m, o in measure_options(quick).items()) + ".\n"]
    for dataset in runs:
        chosen = [r for r in rows if r["dataset"] == dataset]
        layer = chosen[0]["layer"]
        lines += [f"#### {dataset}: medians over seeds (last hidden layer: {layer})\n",
                  "| batch | optimiser | noise | train acc (trained) | test acc (clean) | gap (trained) | "
                  "gap (clean) | compression, 30 bins | compression, exact | final I(X;T), exact | "
                  "I(T;Y_trained) | I(T;Y_clean) | top eigenvalue | trace | SAM | ASAM | random |",
                  "|---|---|---|" + "---|" * 14]
        for (batch, optimiser, noise) in runs[dataset]:
            sel = [r for r in chosen if r["batch"] == str(batch) and r["optimiser"] == optimiser
                   and r["noise"] == noise]

            def col(k, sel=sel):
                return [r[k] for r in sel]

            lines.append(
                f"| {batch} | {optimiser.upper()} | {noise:g} | {_med(col('train_acc_trained'))} | "
                f"{_med(col('test_acc_clean'))} | {_med(col('gap_trained'))} | {_med(col('gap_clean'))} | "
                f"{_med(col('compression_binning'))} | {_med(col('compression_discrete'))} | "
                f"{_med(col('ixt_discrete'))} | {_med(col('ity_trained_discrete'))} | "
                f"{_med(col('ity_clean_discrete'))} | "
                + " | ".join(_med3(col(m)) for m in MEASURES) + " |")
        c = corr[dataset]
        lines += [f"\n#### {dataset}: Spearman correlations across runs, bootstrap 95% interval "
                  f"({len(chosen)} runs; {boot} resamples, seed {BOOTSTRAP_SEED})\n",
                  "| measure | with gap (trained), all runs | with gap (clean), all runs | with gap, noise 0 only |",
                  "|---|---|---|---|"]
        for p in PREDICTORS:
            lines.append(f"| {_label(p)} | {_rho(c[(p, 'gap_trained', 'all')])} | {_rho(c[(p, 'gap_clean', 'all')])} "
                         f"| {_rho(c[(p, 'gap_trained', 'noise 0')])} |")
        lines += ["", "| compression against | " + " | ".join(SHORT[m] for m in MEASURES) + " |",
                  "|---|" + "---|" * len(MEASURES)]
        for comp in PREDICTORS[:2]:
            lines.append(f"| {_label(comp)} | " + " | ".join(_rho(c[(comp, m, 'all')]) for m in MEASURES) + " |")
        lines.append("")
    lines.append(" ".join(f"![{p.stem}](figures/{p.name})" for p in figures) + "\n")
    return lines


def _scatter(rows, figures):
    """The gap against clean labels against each predictor: one row of panels per data set, colour = noise."""
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(sets), len(PREDICTORS), figsize=(2.6 * len(PREDICTORS), 2.5 * len(sets)),
                             squeeze=False)
    cmap = plt.get_cmap("viridis")
    for i, dataset in enumerate(sets):
        chosen = [r for r in rows if r["dataset"] == dataset]
        for j, p in enumerate(PREDICTORS):
            ax = axes[i, j]
            for k, noise in enumerate(NOISE):
                sel = [r for r in chosen if r["noise"] == noise]
                if not sel:
                    continue
                ax.scatter([r[p] for r in sel], [r["gap_clean"] for r in sel], s=8, alpha=0.7,
                           color=cmap(k / (len(NOISE) - 1)), marker="o" if k % 2 == 0 else "^",
                           label=f"noise {noise:g}", linewidths=0)
            if p in MEASURES and all(r[p] > 0 for r in chosen):
                ax.set_xscale("log")
            ax.set_xlabel(_label(p), fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel(f"{dataset}\ngap (clean labels)", fontsize=8)
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Generalisation gap (train - test accuracy, clean labels) against compression and sharpness; "
                 "one point per run", fontsize=9)
    # fixed margins: tight_layout on 14 panels costs more than the quick budget's training
    fig.subplots_adjust(left=0.06, right=0.91, bottom=0.14, top=0.89, wspace=0.38, hspace=0.45)
    return common.save_figure(fig, figures / "question-gap.png")


def _memorisation(runs, figures, quick):
    """Zhang et al.'s two figures for SGD at batch 32 (``full`` in the quick budget), per data set."""
    import infoplane.plot as plot

    batch = "full" if quick else 32
    written = []
    for dataset, by_config in runs.items():
        chosen = [(noise, run) for (b, opt, noise), run in by_config.items() if b == batch and opt == "sgd"]
        if len(chosen) < 2:
            continue
        levels, sel = [n for n, _ in chosen], [r for _, r in chosen]
        name = dataset.replace("-", "")
        fig = plot.memorization_curves(sel, levels=levels)
        fig.suptitle(f"{dataset}, SGD, batch {batch}", fontsize=9)
        written.append(common.save_figure(fig, figures / f"question-memorization-{name}.png"))
        fig = plot.corruption_error(sel, levels=levels)
        fig.suptitle(f"{dataset}, SGD, batch {batch}", fontsize=9)
        written.append(common.save_figure(fig, figures / f"question-error-{name}.png"))
    return written

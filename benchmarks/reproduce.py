"""Reproduce the classic information-plane experiments and measure them (``make reproduce``).

1. Shwartz-Ziv & Tishby 2017: the 12-10-7-5-4-3-2 tanh network on the 12-bit task, Adam 4e-4, 8000 epochs,
   log_schedule(8000, 400), 30 bins on [-1, 1], 5% and 85% of the data, 20 seeds trained as one ensemble.
2. Saxe et al. 2018: the same network with tanh and with ReLU, 80% of the data, binned on the original grid
   and on 0.07-wide cells, and KDE (noise variance 1e-3, upper estimate), side by side.
3. Real data: an MLP on scikit-learn's digits with tanh and with ReLU, KDE (noise variance 0.1) and adaptive
   binning.

Writes the runs under --out, the figures under --figures and the measured facts (per layer: peak and final
I(X;T), their difference, final I(T;Y); train/test accuracy; median [IQR] over seeds; wall time) into the
generated part of --doc. ``--quick`` runs each reproduction on a tiny budget (for the tests).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- generated:start -->", "<!-- generated:end -->"
# The original implementation's information computation, per layer-epoch on a 2-core CPU (see docs).
ORIGINAL_SECONDS_PER_LAYER_EPOCH = 0.35


def plan(quick):
    from infoplane import KDE, Binning, log_schedule

    ep = (lambda full: 12) if quick else (lambda full: full)
    seeds = (lambda full: 2) if quick else (lambda full: full)
    sched = (lambda n, k: log_schedule(12, 6)) if quick else log_schedule
    return [
        dict(key="tishby", title="Shwartz-Ziv & Tishby 2017: tanh, 5% vs 85% of the data",
             runs=[dict(label="tanh", model="examples/tishby_tanh.py", data=None, fractions=[0.05, 0.85],
                        seeds=seeds(20), epochs=ep(8000), schedule=sched(ep(8000), 400),
                        estimators=[Binning(bins=30, range=(-1, 1))])]),
        dict(key="saxe", title="Saxe et al. 2018: tanh vs ReLU under three estimators",
             runs=[dict(label=act, model=f"examples/tishby_{act.lower()}.py", data=None, fractions=[0.8],
                        seeds=seeds(5), epochs=ep(8000), schedule=sched(ep(8000), 100),
                        estimators=[Binning(bins=30, range=(-1, 1)), Binning(width=0.07), KDE(noise_var=1e-3)])
                   for act in ("tanh", "ReLU")]),
        dict(key="digits", title="scikit-learn digits: tanh vs ReLU, KDE and adaptive bins",
             runs=[dict(label=act, model=f"examples/digits_{'mlp' if act == 'tanh' else 'relu'}.py", data="digits",
                        fractions=[0.8], seeds=seeds(5), epochs=ep(1000), schedule=sched(ep(1000), 100),
                        estimators=[KDE(noise_var=0.1), Binning(bins=30, adaptive=True)])
                   for act in ("tanh", "ReLU")]),
    ]


def command_line(spec):
    """The `infoplane track` command equivalent to one entry of the plan."""
    parts = ["infoplane track", spec["model"]]
    if spec["data"]:
        parts += ["--data", spec["data"]]
    parts += [f"--fraction {f:g}" for f in spec["fractions"]]
    parts += [f"--seeds {spec['seeds']}", f"--epochs {spec['epochs']}",
              f"--schedule log:{spec['schedule'].params['n_points']}"]
    for est in spec["estimators"]:
        s = est.settings()
        if est.kind == "kde":
            parts += ["--estimator kde", f"--noise-var {s['noise_var']:g}"]
        elif "width" in s:
            parts += ["--estimator binning-width", f"--bin-width {s['width']:g}"]
        elif s.get("adaptive"):
            parts += ["--estimator adaptive", f"--bins {s['bins']}"]
        else:
            parts += ["--estimator binning", f"--bins {s['bins']}"]
    return " ".join(parts)


def _stat(values):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "n/a"
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return f"{med:.2f} [{q1:.2f}, {q3:.2f}]" if values.size > 1 else f"{med:.2f}"


TABLE_HEAD = ["| layer | peak I(X;T) | final I(X;T) | peak - final | peak I(T;Y) | final I(T;Y) |",
              "|---|---|---|---|---|---|"]


def facts(run, estimator):
    """Markdown table rows: per layer, peak and final I(X;T), compression, peak and final I(T;Y)
    (median [IQR] over seeds)."""
    ixt, ity = run.get("ixt", estimator), run.get("ity", estimator)
    peak_x, peak_y = np.nanmax(ixt, axis=1), np.nanmax(ity, axis=1)  # [seeds, layers]
    final_x, final_y = ixt[:, -1], ity[:, -1]
    rows = []
    for j, layer in enumerate(run.layers):
        rows.append(f"| {layer} | {_stat(peak_x[:, j])} | {_stat(final_x[:, j])} | "
                    f"{_stat(peak_x[:, j] - final_x[:, j])} | {_stat(peak_y[:, j])} | {_stat(final_y[:, j])} |")
    return rows


def wall_seconds(run):
    """Training and tracking time of a run, from the start and end times in its meta.json."""
    from datetime import datetime

    start, end = run.meta.get("start_time"), run.meta.get("end_time")
    if not start or not end:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def accuracy(run):
    out = []
    for name in ("train_acc", "test_acc"):
        if name in run.metric_names:
            out.append(f"{name.replace('_acc', '')} accuracy {_stat(run.metric(name)[:, -1])}")
    return ", ".join(out)


def run_plan(args):
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import infoplane.plot as plot
    from infoplane.experiment import track

    out, figures = Path(args.out), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    sections = [f"_Generated by `make reproduce` ({'quick' if args.quick else 'full'} budget) on "
                f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}._\n"]
    all_runs = {}
    for item in plan(args.quick):
        if args.only and item["key"] not in args.only:
            continue
        lines = [f"### {item['title']}\n"]
        runs_by_label = {}
        for spec in item["runs"]:
            runs = track(REPO / spec["model"], data=spec["data"], fractions=spec["fractions"], seeds=spec["seeds"],
                         epochs=spec["epochs"], estimators=spec["estimators"], schedule=spec["schedule"],
                         out=out / item["key"] / spec["label"].lower(), resume=True, progress=not args.quiet,
                         caller=["benchmarks/reproduce.py"], log=lambda m: print(m, file=sys.stderr))
            runs_by_label[spec["label"]] = runs
            wall = sum(wall_seconds(r) for r in runs)
            lines.append(f"`{command_line(spec)}`: {wall / 60:.1f} min of training and tracking "
                         f"({', '.join(f'{r.fraction:g}: {wall_seconds(r):.0f} s' for r in runs)})\n")
            for run in runs:
                for est in run.estimators:
                    lines.append(f"{spec['label']}, {run.fraction:.0%} of the data, estimator `{est}` "
                                 f"({len(run.seeds)} seeds; {accuracy(run)}):\n")
                    lines.extend(TABLE_HEAD)
                    lines.extend(facts(run, est))
                    saturated = plot.saturated_layers(run, est)
                    if saturated:
                        lines.append(f"\nSaturated (I(X;T) within 5% of log2 N for most of the run): layers "
                                     f"{', '.join(saturated)}.")
                    lines.append("")
            if item["key"] == "tishby":
                layer_epochs = sum(len(r.epochs) * (len(r.layers) + 1) * len(r.seeds) for r in runs)
                lines.append(f"The original implementation's information computation alone would take about "
                             f"{ORIGINAL_SECONDS_PER_LAYER_EPOCH * layer_epochs / 3600:.1f} h for the same "
                             f"{layer_epochs} layer-epochs (7 layers counting the input, "
                             f"{ORIGINAL_SECONDS_PER_LAYER_EPOCH * 1e3:.0f} ms each).\n")
        all_runs[item["key"]] = runs_by_label
        written = []
        # The saturation notes are in the tables above; the figures carry them too.
        warnings.filterwarnings("ignore", category=plot.SaturationWarning)
        if item["key"] == "tishby":
            written.append(_save(plot.compare(runs_by_label["tanh"]), figures / "tishby-compare.png"))
            write_animation(runs_by_label["tanh"], figures / "tishby-animation.gif", frames=4 if args.quick else 48)
        else:
            labels = list(runs_by_label)
            first = runs_by_label[labels[0]][0]
            for est in first.estimators:
                fig = plot.compare([runs_by_label[l][0] for l in labels], estimator=est, titles=labels)
                written.append(_save(fig, figures / f"{item['key']}-{est}.png"))
        lines.append(" ".join(f"![{p.stem}](figures/{p.name})" for p in written) + "\n")
        sections.append("\n".join(lines))
    _write_doc(Path(args.doc), "\n".join(sections))
    return all_runs


def write_animation(runs, path, frames=48):
    """The animated plane of the 5% vs 85% runs (docs/plotting.md shows it): ``frames`` frames evenly spaced in
    log(epoch + 1), at a size that keeps the GIF under 1 MB."""
    import infoplane.plot as plot

    return plot.animate(runs, out=path, frames=frames, fps=8, size=(760, 380))


def _save(fig, path):
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _write_doc(path, generated):
    text = path.read_text() if path.exists() else f"# Reproductions\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{generated}\n{END}{tail}")


# ----------------------------------------------------------------- networks whose information is finite (issue 10)
FINITE_NOISY_START, FINITE_NOISY_END = "<!-- generated:finite-noisy:start -->", "<!-- generated:finite-noisy:end -->"
FINITE_STD = 0.2  # noise standard deviation after every hidden tanh (activation units)
FINITE_PCA = 4  # principal components kept per layer


def _digits_cnn(seed):
    import torch
    from torch import nn

    from infoplane import add_noise

    torch.manual_seed(seed)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.Tanh(), nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, 10))
    return add_noise(cnn, FINITE_STD, seed=seed)


def finite_noisy(args):
    """A small CNN on scikit-learn's 8x8 digits images with Gaussian noise after every hidden tanh
    (``add_noise``), several seeds. Per hidden layer and recorded epoch: the binned plane of the noise-free
    activations (30 bins on [-1, 1], every unit, saturated), and ``noisy_mi`` planes of the noisy layer after
    ``channel-mean`` and ``pca:k``. Channel means of a layer with H x W positions carry noise of variance
    std^2 / (H W); principal-component scores (an orthonormal projection) keep std^2. Writes
    ``finite-noisy.png`` and its own generated block of the doc. Returns ``{variant: Run}``."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import infoplane.plot as plot
    from infoplane import log_schedule
    from infoplane.capture import probe, resolve_layers
    from infoplane.estimators import binned_mi, noisy_mi
    from infoplane.reduce import reduce_activations
    from infoplane.store import Row, Run

    quick = args.quick
    n_seeds, epochs, samples = (2, 2, 64) if quick else (3, 60, 1024)
    schedule = log_schedule(epochs, 4 if quick else 16)
    digits = load_digits()
    keep = slice(0, 300) if quick else slice(None)  # the quick run (for the tests) uses the first 300 images
    x = torch.tensor(digits.images[keep, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[keep])
    t0 = time.time()
    variants = {"binning (flatten)": "binning", "noisy_mi (channel-mean)": "noisy-channel-mean",
                f"noisy_mi (pca:{FINITE_PCA})": f"noisy-pca{FINITE_PCA}"}
    rows = {v: [] for v in variants}
    accuracies = []
    for seed in range(n_seeds):
        model = _digits_cnn(seed)
        layers = [l for l in resolve_layers(model, x[:2]) if l.kind == "hidden"]  # the three noisy tanh layers
        train_idx, test_idx = train_test_split(range(len(y)), train_size=0.8, stratify=y.numpy(), random_state=seed)
        train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(seed)
        recorded = {l.name: [] for l in layers}
        for epoch in range(epochs + 1):  # epoch e: the network after e epochs of training
            if epoch in schedule:
                acts = probe(model, x, layers)
                for l in layers:
                    recorded[l.name].append(acts[l.name])
            if epoch == epochs:
                break
            model.train()
            for batch in train_idx[torch.randperm(len(train_idx), generator=g)].split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                opt.step()
        if not args.quiet:
            print(f"finite: seed {seed} trained ({time.time() - t0:.0f} s)", file=sys.stderr)
        model.eval()
        with torch.no_grad():
            accuracies.append([float((model(x[i]).argmax(1) == y[i]).float().mean()) for i in (train_idx, test_idx)])
        for l in layers:
            acts = torch.stack(recorded[l.name])  # [epochs, N, width]: every estimate below is one batched call
            hw = math.prod(l.shape[1:]) if len(l.shape) > 1 else 1
            results = {
                "binning (flatten)": binned_mi(acts, y, bins=30, range=(-1, 1)),
                "noisy_mi (channel-mean)": noisy_mi(reduce_activations(acts, "channel-mean", shape=l.shape), y,
                                                    FINITE_STD ** 2 / hw, samples=samples, seed=seed),
                f"noisy_mi (pca:{FINITE_PCA})": noisy_mi(reduce_activations(acts, f"pca:{FINITE_PCA}", shape=l.shape),
                                                          y, FINITE_STD ** 2, samples=samples, seed=seed),
            }
            for v, r in results.items():
                se = [getattr(r, f, None) for f in ("ixt_se", "ity_se")]
                for i, e in enumerate(schedule.epochs.tolist()):
                    rows[v].append(Row(seed, 0.8, e, l.name, variants[v], float(r.ixt[i]), float(r.ity[i]),
                                       math.nan, math.nan, *(math.nan if s is None else float(s[i]) for s in se)))
        if not args.quiet:
            print(f"finite: seed {seed} estimated ({time.time() - t0:.0f} s)", file=sys.stderr)
    wall = time.time() - t0
    h_y = float(-sum(p * math.log2(p) for p in np.bincount(y.numpy()) / len(y)))
    runs = {}
    for v, name in variants.items():
        meta = {"data": "digits", "n": len(y), "log2_n": math.log2(len(y)), "h_y": h_y, "fraction": 0.8,
                "seeds": list(range(n_seeds)), "schedule": schedule.to_json(),
                "layers": [{"name": l.name} for l in layers],
                "estimators": [{"name": name, "settings": {"kind": name}, "has_lower": False}],
                "caller": ["benchmarks/reproduce.py", "--only", "finite"]}
        runs[v] = Run(meta, rows[v])
    acc = np.array(accuracies)
    lines = [f"_Generated by `benchmarks/reproduce.py --only finite` ({'quick' if quick else 'full'} budget) on "
             f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}: {wall:.0f} s in all._\n",
             f"CNN conv(8, 3x3)-tanh, conv(16, 3x3, stride 2)-tanh, dense 32-tanh, dense 10 on the {len(y)} images "
             f"(probe set: all; 80% stratified training split per seed), Gaussian noise of std {FINITE_STD} after "
             f"every tanh (`add_noise`), in training and probing; Adam 1e-3, batch 64, {epochs} epochs, "
             f"{n_seeds} seeds; train accuracy {_stat(acc[:, 0])}, test accuracy {_stat(acc[:, 1])}. Layers "
             f"1.clean (8 x 8 x 8), 3.clean (16 x 4 x 4), 6.clean (32). `noisy_mi` with {samples} draws; "
             f"channel means carry noise variance {FINITE_STD}^2 / (H W) (1/64 and 1/16 of it for the conv "
             f"layers), PCA scores {FINITE_STD}^2. log2 N = {math.log2(len(y)):.2f} bits, H(Y) = {h_y:.2f} "
             f"bits. Median [IQR] over seeds.\n"]
    for v, run in runs.items():
        est = run.estimators[0]
        lines.append(f"{v}:\n")
        lines.extend(TABLE_HEAD)
        lines.extend(facts(run, est))
        if "noisy" in est:
            se = np.nanmax(run.get("ixt_se", est))
            lines.append(f"\nLargest Monte-Carlo standard error of I(X;T): {se:.3f} bits.")
        saturated = plot.saturated_layers(run, est)
        if saturated:
            lines.append(f"\nSaturated (I(X;T) within 5% of log2 N for most of the run): layers "
                         f"{', '.join(saturated)}.")
        lines.append("")
    warnings.filterwarnings("ignore", category=plot.SaturationWarning)
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    fig = plot.compare(list(runs.values()), titles=list(runs))
    fig.suptitle(f"digits | CNN with noise of std {FINITE_STD} after every tanh: binned plane vs noisy_mi",
                 fontsize=10)
    for ax, v in zip(fig.axes, runs):
        for text in ax.texts:  # the plot's saturation note names the bins; for noisy_mi it is the noise level
            if "noisy" in v and "saturated" in text.get_text():
                flat = " ".join(text.get_text().split()).replace(
                    "the bin choice, not the network, drives it", "the noise is small next to the distances "
                    "between rows")
                text.set_text(textwrap.fill(flat, 38))
    path = _save(fig, figures / "finite-noisy.png")
    lines.append(f"![{path.stem}](figures/{path.name})\n")
    _write_block(Path(args.doc), "\n".join(lines), FINITE_NOISY_START, FINITE_NOISY_END)
    return runs


def _write_block(path, generated, start, end):
    """Replace the text between the markers ``start`` and ``end`` of ``path`` (appending them if absent)."""
    text = path.read_text() if path.exists() else "# Reproductions\n"
    if start not in text or end not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{generated}\n{end}{tail}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny budget, for the tests")
    p.add_argument("--only", action="append", choices=["tishby", "saxe", "digits", "finite"])
    p.add_argument("--out", default="runs/reproduce", help="parent of the run directories")
    p.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    p.add_argument("--doc", default=str(REPO / "docs" / "reproductions.md"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    # issue 10: the finite-information networks write their own block of the doc; they run with the full
    # budget or when asked for (--only finite), not in the quick run of the classic reproductions.
    finite = {}
    if (args.only and "finite" in args.only) or (not args.only and not args.quick):
        finite = {"finite": finite_noisy(args)}
        if args.only:
            args.only = [o for o in args.only if o != "finite"]
            if not args.only:
                return finite
    return {**run_plan(args), **finite}


if __name__ == "__main__":
    main()

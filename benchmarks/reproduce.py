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
    stamp = (f"_Generated by `make reproduce` ({'quick' if args.quick else 'full'} budget) on "
             f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}._\n")
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
        # Each section owns its block of the doc, so a run of some sections (--only) leaves the others alone.
        _write_block(Path(args.doc), stamp + "\n" + "\n".join(lines), *markers(item["key"]))
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


def markers(key):
    """The start and end markers of one section's generated block in docs/reproductions.md."""
    return f"<!-- generated:{key}:start -->", f"<!-- generated:{key}:end -->"


def _write_block(path, generated, start, end):
    """Replace the text between the markers ``start`` and ``end`` of ``path`` (appending them if absent)."""
    text = path.read_text() if path.exists() else "# Reproductions\n"
    if start not in text or end not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{generated}\n{end}{tail}")


CLASSIC = ("tishby", "saxe", "digits")
FINITE = ("finite-quantized", "finite-noisy")  # "Networks whose information is finite" (issue 10)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny budget, for the tests")
    p.add_argument("--only", action="append", choices=[*CLASSIC, "finite", *FINITE],
                   help="run only these sections (repeatable; 'finite' = both finite-information sections); "
                        "the other sections' blocks of the doc are left as they are")
    p.add_argument("--out", default="runs/reproduce", help="parent of the run directories")
    p.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    p.add_argument("--doc", default=str(REPO / "docs" / "reproductions.md"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    only = set(args.only or ())
    if "finite" in only:
        only |= set(FINITE)
    # The finite-information sections run with the full budget or when asked for, not in the quick run of the
    # classic reproductions (they have their own quick test).
    finite = [k for k in FINITE if k in only or (not only and not args.quick)]
    args.only = [k for k in CLASSIC if k in only] or (None if not only else [])
    results = run_plan(args) if args.only != [] else {}
    if finite:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import reproduce_finite

        for key in finite:
            results[key] = {"finite-quantized": reproduce_finite.quantized,
                            "finite-noisy": reproduce_finite.noisy_cnn}[key](args)
    return results


if __name__ == "__main__":
    main()

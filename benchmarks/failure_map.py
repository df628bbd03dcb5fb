"""Where the k-NN and Rényi estimators fail: a measured map against known answers.

- KSG (k = 3) on correlated Gaussians X, Y in R^d with equal per-axis correlation, true MI
  -d/2 log2(1 - rho^2) bits, for a grid of d and true MI, at several N.
- The same after infoplane's ``pca:k`` layer reduction of each side to ``--pca`` dims (the reduction a user
  would pass as ``reduce="pca:k"``); the truth of the reduced pair is exact for Gaussians (the components are
  recovered from the scores) and is reported with the estimate, as is the original truth (what PCA itself
  loses).
- Ross (k = 3) on labels Y uniform over C classes and T | Y uniform on the unit cube shifted by s * Y along its
  first axis (the other d - 1 axes are noise); I = log2 C - E[log2 j(T)], j = number of class boxes covering T,
  computed exactly; C and s are chosen to hit the target MI.
- Rényi (alpha = 1.01) entropy: the randomized route against the exact eigenvalues.

Writes docs/figures/failure_map.png and docs/failure_map.md (table, linked from docs/estimators.md).
Run: ``python benchmarks/failure_map.py [--quick]``; the full grid is what is committed (about 50 minutes on a
shared 2-core CPU).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from infoplane.capture.reduce import reduce_activations  # noqa: E402
from infoplane.estimators import ksg_mi, renyi_entropy, ross_mi  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = dict(d=(1, 2, 4, 8, 16, 32, 64), mi=(0.1, 0.5, 1.0, 2.0, 5.0), n=(1000, 4096, 10_000),
            renyi=((1024, 4), (2048, 4), (4096, 4), (2048, 32), (4096, 32)))
QUICK = dict(d=(1, 4, 16, 64), mi=(0.1, 1.0, 5.0), n=(1000, 4096),
             renyi=((1024, 4), (2048, 4), (2048, 32)))


def gaussian_pair(n, d, mi, rng):
    rho = math.sqrt(1 - 2 ** (-2 * mi / d))
    x = rng.normal(size=(n, d))
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(n, d))
    return x, y, rho


def pca(a, k):
    """Scores of ``a`` [N, d] on its k leading components through infoplane's ``pca:k`` reduction, and the
    components themselves [d, k] (scores = centred a @ components, solved back by least squares)."""
    a = torch.from_numpy(a)
    scores = reduce_activations(a, f"pca:{k}")
    centred = a - a.mean(0)
    comps = torch.linalg.lstsq(centred, scores).solution
    return scores, comps.numpy()


def gaussian_mi_of_projections(p, q, rho):
    """I(P^T X; Q^T Y) in bits for Cov X = Cov Y = I, Cov(X, Y) = rho I, P and Q with orthonormal columns."""
    c = rho * p.T @ q  # cross-covariance of the projections; each side's own covariance is I
    return -0.5 * math.log2(max(np.linalg.det(np.eye(c.shape[0]) - c @ c.T), 1e-300))


def ross_truth(c, s):
    """log2 C - E[log2 j(T)] for C boxes [y s, y s + 1] along one axis, each holding 1 / C of the mass."""
    pts = np.unique(np.concatenate([np.arange(c) * s, np.arange(c) * s + 1]))
    total = 0.0
    for lo, hi in zip(pts[:-1], pts[1:]):
        mid = (lo + hi) / 2
        j = int(((np.arange(c) * s <= mid) & (mid < np.arange(c) * s + 1)).sum())
        if j:
            total += (hi - lo) * j / c * math.log2(j)
    return math.log2(c) - total


def ross_setup(mi):
    c = max(2, 2 ** math.ceil(mi - 1e-9))
    lo, hi = 0.0, 1.0  # I grows from 0 (s = 0) to log2 C (s = 1)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ross_truth(c, mid) < mi else (lo, mid)
    return c, (lo + hi) / 2


def ross_data(n, d, c, s, rng):
    y = rng.integers(0, c, size=n)
    t = rng.random(size=(n, d))
    t[:, 0] += s * y
    return t, y


def run_grid(grid, k_pca, log):
    rows = []
    for n in grid["n"]:
        for d in grid["d"]:
            for mi in grid["mi"]:
                rng = np.random.default_rng(1000 * d + int(10 * mi) + n)
                x, y, rho = gaussian_pair(n, d, mi, rng)
                t0 = time.perf_counter()
                ksg = float(ksg_mi(x, y).mi)
                row = dict(n=n, d=d, mi=mi, ksg=ksg, seconds=time.perf_counter() - t0)
                if d > k_pca:
                    xr, px = pca(x, k_pca)
                    yr, py = pca(y, k_pca)
                    row.update(pca=float(ksg_mi(xr.numpy(), yr.numpy()).mi),
                               pca_truth=gaussian_mi_of_projections(px, py, rho))
                c, s = ross_setup(mi)
                t, lab = ross_data(n, d, c, s, rng)
                row.update(ross=float(ross_mi(t, lab).mi), ross_truth=ross_truth(c, s), classes=c)
                rows.append(row)
                log(f"N={n:5d} d={d:2d} MI={mi:4.1f}: KSG {ksg:6.3f}"
                    + (f", PCA-{k_pca} {row['pca']:6.3f} (truth after PCA {row['pca_truth']:.3f})" if 'pca' in row
                       else "") + f", Ross {row['ross']:6.3f} (truth {row['ross_truth']:.3f}, C={c})"
                    + f"  [{row['seconds']:.1f} s]")
    return rows


def run_renyi(grid, log):
    out = []
    for n, d in grid["renyi"]:
        rng = np.random.default_rng(n + d)
        a = np.tanh(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / math.sqrt(d) * 2)
        t0 = time.perf_counter()
        exact = float(renyi_entropy(a, alpha=1.01, method="exact"))
        t1 = time.perf_counter()
        rand = float(renyi_entropy(a, alpha=1.01, method="randomized"))
        t2 = time.perf_counter()
        out.append(dict(n=n, d=d, exact=exact, randomized=rand, t_exact=t1 - t0, t_rand=t2 - t1))
        log(f"Renyi N={n} d={d}: exact {exact:.3f} ({t1 - t0:.1f} s), randomized {rand:.3f} ({t2 - t1:.1f} s)")
    return out


def figure(rows, renyi, grid, k_pca, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_big = max(grid["n"])
    ds, mis = list(grid["d"]), list(grid["mi"])
    sel = {(r["d"], r["mi"]): r for r in rows if r["n"] == n_big}
    panels = [("KSG / truth", lambda r: r["ksg"] / r["mi"]),
              (f"KSG after PCA-{k_pca} / original truth", lambda r: r.get("pca", r["ksg"]) / r["mi"]),
              ("Ross / truth", lambda r: r["ross"] / r["ross_truth"])]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2), gridspec_kw={"wspace": 0.4})
    for ax, (title, f) in zip(axes[:3], panels):
        m = np.array([[f(sel[(d, mi)]) for mi in mis] for d in ds])
        im = ax.imshow(m, vmin=0, vmax=1.2, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(len(mis)), [f"{v:g}" for v in mis])
        ax.set_yticks(range(len(ds)), [str(v) for v in ds])
        ax.set_xlabel("true MI (bits)")
        ax.set_ylabel("dimension d (each side)")
        ax.set_title(f"{title}, N = {n_big}")
        for i in range(len(ds)):
            for j in range(len(mis)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=axes[:3], shrink=0.8, label="estimate / truth (1 = right, 0 = nothing found)")
    ax = axes[3]
    for d in sorted({r["d"] for r in renyi}):
        pts = [r for r in renyi if r["d"] == d]
        ax.plot([r["n"] for r in pts], [r["randomized"] - r["exact"] for r in pts], "o-", label=f"d = {d}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N")
    ax.set_ylabel("randomized - exact (bits)")
    ax.set_title("Renyi S (alpha 1.01): randomized error")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def table(rows, renyi, grid, k_pca, quick, seconds):
    lines = ["<!-- written by benchmarks/failure_map.py; do not edit by hand -->",
             f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/failure_map.py"
             f"{' --quick' if quick else ''}` ({seconds:.0f} s on a shared 2-core CPU). "
             "k = 3. Cells: estimate in bits (estimate / truth).", ""]
    for n in grid["n"]:
        lines += [f"**KSG, N = {n}** (rows: d per side; columns: true MI in bits)", "",
                  "| d | " + " | ".join(f"{m:g}" for m in grid["mi"]) + " |",
                  "|---|" + "---|" * len(grid["mi"])]
        for d in grid["d"]:
            cells = [r for r in rows if r["n"] == n and r["d"] == d]
            lines.append(f"| {d} | " + " | ".join(f"{r['ksg']:.2f} ({r['ksg'] / r['mi']:.2f})" for r in cells) + " |")
        lines.append("")
    n_big = max(grid["n"])
    lines += [f"**KSG after PCA to {k_pca} dims per side, N = {n_big}**: estimate / truth after PCA / original "
              "truth (bits)", "", "| d | " + " | ".join(f"{m:g}" for m in grid["mi"]) + " |",
              "|---|" + "---|" * len(grid["mi"])]
    for d in grid["d"]:
        cells = [r for r in rows if r["n"] == n_big and r["d"] == d]
        if "pca" in cells[0]:
            lines.append(f"| {d} | " + " | ".join(f"{r['pca']:.2f} / {r['pca_truth']:.2f} / {r['mi']:g}"
                                                   for r in cells) + " |")
    lines.append("")
    for n in grid["n"]:
        lines += [f"**Ross, N = {n}** (labels: C classes; estimate (estimate / truth))", "",
                  "| d | " + " | ".join(f"{m:g}" for m in grid["mi"]) + " |", "|---|" + "---|" * len(grid["mi"])]
        for d in grid["d"]:
            cells = [r for r in rows if r["n"] == n and r["d"] == d]
            lines.append(f"| {d} | " + " | ".join(f"{r['ross']:.2f} ({r['ross'] / r['ross_truth']:.2f})"
                                                   for r in cells) + " |")
        lines.append("")
    lines += ["**Rényi entropy (alpha = 1.01), randomized vs exact** (tanh layer)", "",
              "| N | d | exact (bits) | randomized (bits) | error | exact (s) | randomized (s) |",
              "|---|---|---|---|---|---|---|"]
    for r in renyi:
        lines.append(f"| {r['n']} | {r['d']} | {r['exact']:.3f} | {r['randomized']:.3f} | "
                     f"{r['randomized'] - r['exact']:+.3f} | {r['t_exact']:.1f} | {r['t_rand']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smaller grid, for a first look (the committed map is the full grid)")
    p.add_argument("--pca", type=int, default=4, help="dims kept by the PCA reduction (default 4)")
    p.add_argument("--out", default=ROOT, help="repository root to write docs/ into")
    args = p.parse_args(argv)
    grid = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    rows = run_grid(grid, args.pca, lambda s: print(s, flush=True))
    renyi = run_renyi(grid, lambda s: print(s, flush=True))
    seconds = time.perf_counter() - t0
    os.makedirs(os.path.join(args.out, "docs", "figures"), exist_ok=True)
    figure(rows, renyi, grid, args.pca, os.path.join(args.out, "docs", "figures", "failure_map.png"))
    with open(os.path.join(args.out, "docs", "failure_map.md"), "w") as f:
        f.write("# Failure map of the k-NN and Rényi estimators\n\n"
                "![failure map](figures/failure_map.png)\n\n" + table(rows, renyi, grid, args.pca, args.quick,
                                                                       seconds))
    print(f"wrote docs/figures/failure_map.png and docs/failure_map.md in {seconds:.0f} s")


if __name__ == "__main__":
    main()

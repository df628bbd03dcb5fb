"""What the reproductions (``reproduce.py``, ``reproduce_finite.py``) share: the repository root, the facts
table of a run (median [IQR] over seeds), wall time and accuracy, figures saved small, and the generated blocks
of docs/reproductions.md between their markers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def stat(values, digits=2, empty="n/a"):
    """Median [IQR] of the finite values, to ``digits`` decimals (the median alone for one value; ``empty`` for
    none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return empty
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return f"{med:.{digits}f} [{q1:.{digits}f}, {q3:.{digits}f}]" if values.size > 1 else f"{med:.{digits}f}"


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
        rows.append(f"| {layer} | {stat(peak_x[:, j])} | {stat(final_x[:, j])} | "
                    f"{stat(peak_x[:, j] - final_x[:, j])} | {stat(peak_y[:, j])} | {stat(final_y[:, j])} |")
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
            out.append(f"{name.replace('_acc', '')} accuracy {stat(run.metric(name)[:, -1])}")
    return ", ".join(out)


def save_figure(fig, path):
    """Write ``fig`` to ``path`` (its folder made if needed) at the docs' resolution, close it, return the path."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def markers(key):
    """The start and end markers of one section's generated block in docs/reproductions.md."""
    return f"<!-- generated:{key}:start -->", f"<!-- generated:{key}:end -->"


def write_block(path, generated, start, end):
    """Replace the text between the markers ``start`` and ``end`` of ``path`` (appending them if absent)."""
    text = path.read_text() if path.exists() else "# Reproductions\n"
    if start not in text or end not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{generated}\n{end}{tail}")

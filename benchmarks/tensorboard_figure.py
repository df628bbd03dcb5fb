"""Draw docs/figures/tensorboard.png: what TensorBoard shows for a tracked run.

Trains the 12-10-7-5-4-3-2 tanh network on the 12-bit task (Adam 4e-4, full-batch epochs on 85% of the
data) with ``Tracker(loggers=LOGDIR)``, reads the event files back with TensorBoard's own ``EventAccumulator``
and renders, from those events alone, the Scalars view (``infoplane/binning/ixt/<layer>`` and
``.../ity/<layer>`` against the epoch) next to the logged ``infoplane/binning/plane`` image. A real browser
screenshot of TensorBoard needs a browser; this picture is drawn with matplotlib from the same data.

Usage: python benchmarks/tensorboard_figure.py [--epochs 300] [--logdir runs/tensorboard-figure]
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def record(logdir, epochs):
    import torch
    from torch import nn

    import infoplane
    from infoplane.data import tishby12

    x, y = tishby12()
    g = torch.Generator().manual_seed(0)
    train = torch.randperm(len(x), generator=g)[: int(0.85 * len(x))]
    torch.manual_seed(0)
    dims = (12, 10, 7, 5, 4, 3, 2)
    mods = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*mods[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    with infoplane.Tracker(model, x, y, schedule=infoplane.log_schedule(epochs, 60), loggers=logdir) as t:
        t.step(0)
        for epoch in range(1, epochs + 1):  # epoch e: the network after e epochs of training
            for idx in train[torch.randperm(len(train), generator=g)].split(256):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            t.step(epoch)
    return t.layers


def read_events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = {}, {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["images"]:
            images[tag] = acc.Images(tag)[-1].encoded_image_string
    return scalars, images


def draw(scalars, images, layers, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 5.2), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1.05, 1])
    colours = plt.get_cmap("viridis")
    for row, field in enumerate(("ixt", "ity")):
        ax = fig.add_subplot(grid[row, 0])
        for i, layer in enumerate(layers):
            steps, values = zip(*scalars[f"infoplane/binning/{field}/{layer}"])
            ax.plot(steps, values, lw=1.2, color=colours(i / max(1, len(layers) - 1)), label=f"layer {layer}")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_title(f"Scalars: infoplane/binning/{field}/<layer>", fontsize=9, loc="left")
        ax.set_ylabel("I(X;T) [bits]" if field == "ixt" else "I(T;Y) [bits]")
        ax.grid(alpha=0.3)
        if row == 1:
            ax.set_xlabel("step = epoch")
        else:
            ax.legend(fontsize=7, ncol=3, loc="lower right")
    ax = fig.add_subplot(grid[:, 1])
    ax.imshow(mpimg.imread(io.BytesIO(images["infoplane/binning/plane"]), format="png"))
    ax.set_axis_off()
    ax.set_title("Images: infoplane/binning/plane", fontsize=9, loc="left")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--logdir", default=str(REPO / "runs" / "tensorboard-figure"))
    parser.add_argument("--out", default=str(REPO / "docs" / "figures" / "tensorboard.png"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.logdir, ignore_errors=True)
    layers = record(args.logdir, args.epochs)
    scalars, images = read_events(args.logdir)
    draw(scalars, images, layers, args.out)
    print(args.out)


if __name__ == "__main__":
    main()

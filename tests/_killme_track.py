"""Helper for the kill-and-resume test in test_tracker.py (not a test module itself).

Trains a tiny tanh net deterministically and tracks every epoch into the run directory given as the first
argument, printing one line per recorded epoch. ``--sleep`` slows each epoch so that the test can kill the
process half way; ``--resume`` continues an interrupted run. The last line is a JSON summary.
"""
import argparse
import json
import time

import torch
from torch import nn

import infoplane
from infoplane.estimators import Binning

N, WIDTHS = 256, (6, 4, 2)
# Two epochs of activations fill the buffer, so a kill can lose at most two recorded epochs.
EPOCH_BYTES = N * sum(WIDTHS) * 4


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # same arithmetic in every process
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (N, 12), generator=g).float()
    y = (x[:, :6].sum(1) > x[:, 6:].sum(1)).long()
    net = nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    recorded = []
    with infoplane.Tracker(net, x, y, estimators=[Binning(bins=30, range=(-1, 1))], out=args.out,
                           schedule=infoplane.every(1, args.epochs), buffer_bytes=2 * EPOCH_BYTES,
                           resume=args.resume) as tracker:
        for epoch in range(args.epochs):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if tracker.step(epoch, loss=loss.item()):
                recorded.append(epoch)
                print("recorded", epoch, flush=True)
            time.sleep(args.sleep)
    print(json.dumps({"recorded": recorded}), flush=True)


if __name__ == "__main__":
    main()

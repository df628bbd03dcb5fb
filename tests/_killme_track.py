"""Helper for the kill-and-resume test in test_tracker.py (not a test module itself).

Trains a tiny tanh net deterministically and tracks every epoch into the run directory given as the first
argument, printing one line per recorded epoch. Epoch e is the network after e epochs of training: epoch 0 is
recorded before training, the last one is the trained network. ``--pause-after K`` makes it, once epoch K is
recorded, write one line to the pipe whose file descriptor is in ``INFOPLANE_TEST_SIGNAL_FD`` and then block reading
the pipe in ``INFOPLANE_TEST_WAIT_FD``, which the test never writes to: the test kills it exactly there, with no
clock involved. ``--resume`` continues an interrupted run. The last line is a JSON summary.
"""
import argparse
import json
import os

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
    p.add_argument("--pause-after", type=int, default=None)
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
        with torch.no_grad():
            loss = nn.functional.cross_entropy(net(x), y)
        for epoch in range(args.epochs + 1):
            if epoch > 0:  # epoch 0 is the initialisation
                loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if tracker.step(epoch, loss=loss.item()):
                recorded.append(epoch)
                print("recorded", epoch, flush=True)
            if epoch == args.pause_after:
                os.write(int(os.environ["INFOPLANE_TEST_SIGNAL_FD"]), b"paused\n")
                os.read(int(os.environ["INFOPLANE_TEST_WAIT_FD"]), 1)  # blocks until the test kills us
    print(json.dumps({"recorded": recorded}), flush=True)


if __name__ == "__main__":
    main()

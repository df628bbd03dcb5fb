"""Track a DistributedDataParallel training of the 12-10-7-5-4-3-2 tanh network (a torchrun script).

Run ``torchrun --standalone --nproc-per-node 2 examples/ddp_track.py`` (add ``--epochs N --out DIR``). Each rank
trains on its own part of the 12-bit task (DistributedSampler) and probes its own shard of the probe set; rank 0
writes the run directory. On GPUs, use the nccl backend and move the model to ``cuda:LOCAL_RANK``: the tracker's
own traffic still goes through a gloo group of its own.
"""
import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import infoplane
from infoplane.data import tishby12

WIDTHS = [12, 10, 7, 5, 4, 3, 2]


def build_model():
    layers = []
    for fan_in, fan_out in zip(WIDTHS[:-2], WIDTHS[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(WIDTHS[-2], WIDTHS[-1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--out", default="runs/ddp_tanh")
    args = p.parse_args(argv)
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    try:
        x, y = tishby12()
        torch.manual_seed(0)  # the same initialisation on every rank (DDP also broadcasts rank 0's)
        model = nn.parallel.DistributedDataParallel(build_model())
        opt = torch.optim.Adam(model.parameters(), lr=4e-4)
        sampler = DistributedSampler(TensorDataset(x, y), shuffle=True, seed=0)
        loader = DataLoader(TensorDataset(x, y), batch_size=256, sampler=sampler)
        # Every rank passes the whole probe set and the same settings; each probes its shard of it.
        with infoplane.Tracker(model, x, y, schedule=infoplane.log_schedule(args.epochs, 60), out=args.out,
                               overwrite=True, reduce_metrics="mean") as tracker:
            for epoch in range(args.epochs):
                sampler.set_epoch(epoch)
                for xb, yb in loader:
                    loss = nn.functional.cross_entropy(model(xb), yb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                tracker.step(epoch, train_loss=loss.item())  # a collective: every rank calls it
        if tracker.rank == 0:
            run = infoplane.load_run(args.out)
            print(f"{tracker.world_size} ranks; {len(run.epochs)} epochs x {len(run.layers)} layers in {args.out}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

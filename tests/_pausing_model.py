"""Model file for tests that interrupt `infoplane track` at a point they choose (not a test module itself).

It trains a small tanh net with a custom ``train_step``. When the environment names two pipe file descriptors,
``INFOPLANE_TEST_SIGNAL_FD`` and ``INFOPLANE_TEST_WAIT_FD``, and a step number ``INFOPLANE_TEST_PAUSE_STEP``,
that step first writes one line to the signal pipe and then blocks reading the wait pipe, which the test never
writes to: the test reads the signal (no clock involved) and then interrupts or kills the process exactly there.
Without those variables it trains straight through, so the same file gives the uninterrupted reference run.
"""
import os

from torch import nn

_steps = 0
_PAUSE = int(os.environ.get("INFOPLANE_TEST_PAUSE_STEP", "0"))


def build_model():
    return nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2))


def train_step(model, batch, optimizer):
    global _steps
    _steps += 1
    if _steps == _PAUSE:
        os.write(int(os.environ["INFOPLANE_TEST_SIGNAL_FD"]), b"paused\n")
        os.read(int(os.environ["INFOPLANE_TEST_WAIT_FD"]), 1)  # blocks until the test interrupts or kills us
    x, y = batch
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()

"""Default trainer for seed ensembles, vectorised with ``torch.func`` where the model allows it.

``fit`` trains S copies of a network (one per seed), each on its own training indices with its
own minibatch order, and calls a callback after every epoch with the S current networks. When
every member is a plain feed-forward module (no custom training step, no buffers that training
changes, no randomness in ``forward``), the S members are stacked and trained in one call per
minibatch, which is numerically the same as training them one by one.

Modules: :mod:`~infoplane.train.loop` (``fit``, the epoch loop), :mod:`~infoplane.train.spec` (what to train),
:mod:`~infoplane.train.engines` (which engine), :mod:`~infoplane.train.sequential` (one by one),
:mod:`~infoplane.train.vectorized` (stacked parameters, one optimiser),
:mod:`~infoplane.train.fused` (one compiled kernel call per epoch for plain MLPs, built by
:mod:`~infoplane.train.fused_kernel` from ``infoplane/_native/csrc/fused_epoch.c``), :mod:`~infoplane.train.stacked_forward`
(batched matrix products or ``vmap``), :mod:`~infoplane.train.metrics` (per-epoch loss and accuracy),
:mod:`~infoplane.train.state` (checkpoints and per-seed random streams), :mod:`~infoplane.train.arguments`
(argument checks).
"""
from infoplane.train.fused import FusedFallbackWarning
from infoplane.train.loop import FitResult, fit
from infoplane.train.spec import DEFAULT_LR
from infoplane.train.state import STATE_FORMAT, load_state, save_state

__all__ = ["fit", "FitResult", "FusedFallbackWarning", "save_state", "load_state", "STATE_FORMAT", "DEFAULT_LR"]

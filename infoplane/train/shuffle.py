"""Each epoch's order of every seed's training rows.

Seed s trains an epoch on ``idx[torch.randperm(len(idx), generator=g)]``, ``g`` its own batch-order generator. With
many seeds on the CPU those draws cost a noticeable share of a compiled epoch (20 seeds of 3482 rows: about a
third of a millisecond against 2 ms of training), so :class:`EpochOrders` draws them in C
(``infoplane/_native/csrc/shuffle.c``): the same Mersenne twister and the same swaps as torch, for all seeds in one
call, shared among torch's intra-op threads. The generators' states live in that route's arrays while it runs;
:meth:`EpochOrders.sync` writes them back, so that ``g.get_state()`` reads exactly what the torch route would have
left.

The compiled route is taken only after it has drawn, in this process, the same permutation and left the same
generator state as ``torch.randperm`` itself (checked once per process on a throwaway generator; a torch whose
CPU randperm or generator state differs simply keeps the torch route). Otherwise, and for generators, index sets
or sizes it does not cover, the torch route runs.
"""
from __future__ import annotations

import ctypes
from typing import Sequence

import numpy as np
import torch

from infoplane._native import build as _native
from infoplane._native import kernels

SOURCE = _native.source("shuffle.c")

# torch.Generator.get_state() on the CPU: the Mersenne twister's counters and 624 state words (each widened to 8
# bytes) at these byte offsets of the state tensor; checked by the first-use comparison below.
_STATE_BYTES = 5056
_LEFT, _NEXT, _WORDS = 8, 16, 24
_MT_N = 624
# Below this many draws per call the seeds are drawn on one thread (a parallel region costs more than it saves).
_THREADED_DRAWS = 1 << 15

_LOADED: ctypes.CDLL | str | None = None


def _load() -> ctypes.CDLL | str:
    """The compiled library once it has matched torch.randperm here, else the reason (once per process)."""
    global _LOADED
    if _LOADED is None:
        lib = _native.build("shuffle", SOURCE, _native.compiler(), (*_native.FLAGS, *_native.openmp_flags()))
        _LOADED = lib if isinstance(lib, str) else _matches_torch(kernels.declare_shuffle(lib))
    return _LOADED


def _matches_torch(lib: ctypes.CDLL) -> ctypes.CDLL | str:
    """``lib`` if its draws equal torch.randperm's here, permutation and generator state alike; else the reason."""
    g = torch.Generator().manual_seed(20261207)
    # sizes that cross several regenerations of the twister's state, from a fresh and from a used generator
    for n in (1, 2, 1000, 5000, 3):
        state = g.get_state()
        expected = torch.randperm(n, generator=g)
        after = g.get_state()
        raw = state.numpy()[None].copy()
        if raw.shape[1] != _STATE_BYTES:
            return f"torch's CPU generator state has {raw.shape[1]} bytes, not {_STATE_BYTES}"
        words, counters = _unpack(raw)
        out = torch.empty(1, n, dtype=torch.int64)
        if kernels.shuffle(lib, states=words, counters=counters, idx=torch.arange(n)[None], out=out, threads=1):
            return "the compiled shuffle refused torch's generator state"
        _pack(raw, words, counters)
        if not torch.equal(out[0], expected) or not np.array_equal(raw[0], after.numpy()):
            return "the compiled shuffle does not reproduce torch.randperm in this torch"
    return lib


_MATCHES: dict[str, bool] = {}


def _library_matches(lib: ctypes.CDLL) -> bool:
    """Whether another library built with ``shuffle.c`` draws as torch does here (checked once per library)."""
    if lib._name not in _MATCHES:
        _MATCHES[lib._name] = not isinstance(_matches_torch(lib), str)
    return _MATCHES[lib._name]


def as_orders(orders: EpochOrders | torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """An epoch's orders, drawn now where ``orders`` is the :class:`EpochOrders` that draws them."""
    return orders() if isinstance(orders, EpochOrders) else orders


def _unpack(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The twister's state words [S, 624] uint32 and counters [S, 2] int64 of generator states [S, 5056] uint8."""
    words = raw[:, _WORDS:_WORDS + 8 * _MT_N].copy().view(np.uint64).astype(np.uint32)
    left = raw[:, _LEFT:_LEFT + 4].copy().view(np.int32).astype(np.int64)
    nxt = raw[:, _NEXT:_NEXT + 8].copy().view(np.uint64).astype(np.int64)
    return words, np.ascontiguousarray(np.concatenate([left, nxt], axis=1))


def _pack(raw: np.ndarray, words: np.ndarray, counters: np.ndarray) -> None:
    """Write state words and counters back into generator states ``raw`` (in place; every other byte kept)."""
    raw[:, _WORDS:_WORDS + 8 * _MT_N] = words.astype(np.uint64).view(np.uint8)
    raw[:, _LEFT:_LEFT + 4] = counters[:, :1].astype(np.int32).view(np.uint8)
    raw[:, _NEXT:_NEXT + 8] = counters[:, 1:].astype(np.uint64).view(np.uint8)


class EpochOrders:
    """Each epoch, every seed's rows in a fresh random order: ``idx[torch.randperm(len(idx), generator=g)]``.

    Parameters
    ----------
    train_sets : sequence of torch.Tensor
        Per seed, its training rows (int64, on the CPU).
    generators : sequence of torch.Generator
        Per seed, its batch-order generator. While the compiled route runs, their states are held here: call
        :meth:`sync` before reading them (``get_state``) or drawing from them elsewhere.
    device : torch.device
        Where the orders go.

    Calling the object draws one epoch: a tensor [S, n] on the compiled route, a list of S tensors on the torch
    route (the engines take either).
    """

    def __init__(self, train_sets: Sequence[torch.Tensor], generators: Sequence[torch.Generator],
                 device: torch.device) -> None:
        self.train_sets, self.generators, self.device = list(train_sets), list(generators), torch.device(device)
        self.lib: ctypes.CDLL | None = None
        lengths = {len(s) for s in self.train_sets}
        if len(lengths) == 1 and all(g.device.type == "cpu" for g in self.generators) \
                and all(s.device.type == "cpu" and s.dtype == torch.int64 for s in self.train_sets):
            lib = _load()
            if not isinstance(lib, str):
                self.lib = lib
        self.held = False
        if self.lib is not None:
            self.idx = torch.stack(self.train_sets).contiguous()
            self._hold()

    @property
    def compiled(self) -> bool:
        """Whether the orders are drawn in C."""
        return self.lib is not None

    def __call__(self) -> torch.Tensor | list[torch.Tensor]:
        if self.lib is None:
            # index_select, not idx[perm]: the same rows, and on the CPU tens of times faster than advanced indexing
            return [idx.index_select(0, torch.randperm(len(idx), generator=g)).to(self.device)
                    for idx, g in zip(self.train_sets, self.generators)]
        self._hold()
        S, n = self.idx.shape
        out = torch.empty(S, n, dtype=torch.int64)
        threads = max(1, min(torch.get_num_threads(), S)) if S * n >= _THREADED_DRAWS else 1
        status = kernels.shuffle(self.lib, states=self.words, counters=self.counters, idx=self.idx, out=out,
                                 threads=threads)
        if status != 0:
            raise RuntimeError(f"the compiled shuffle failed (status {status})")
        return out.to(self.device)

    def for_kernel(self, lib: ctypes.CDLL) -> tuple[torch.Tensor, tuple[np.ndarray, np.ndarray, torch.Tensor]] | None:
        """For a compiled library that draws the orders itself (the fused training kernel, compiled with
        ``shuffle.c``): the [S, n] tensor to draw into and (states, counters, rows) to draw from, as
        :func:`infoplane._native.kernels.shuffle` takes them. None on the torch route, or where ``lib``'s draws
        do not match torch's (checked once per library); call the object instead then."""
        if self.lib is None or self.device.type != "cpu" or not _library_matches(lib):
            return None
        self._hold()
        return torch.empty(self.idx.shape, dtype=torch.int64), (self.words, self.counters, self.idx)

    def _hold(self) -> None:
        """Take the generators' states into the arrays the C code draws from (again after a :meth:`sync`: the
        generators may have been read or drawn from since)."""
        if not self.held:
            self.raw = np.stack([g.get_state().numpy() for g in self.generators])
            self.words, self.counters = _unpack(self.raw)
            self.held = True

    def sync(self) -> None:
        """Write the held states back into the generators (a no-op on the torch route)."""
        if self.lib is None or not self.held:
            return
        _pack(self.raw, self.words, self.counters)
        for g, raw in zip(self.generators, self.raw):
            g.set_state(torch.from_numpy(raw.copy()))
        self.held = False

"""Build and load the fused ensemble training kernel (C, compiled once per machine, called through ctypes).

The kernel (``infoplane/_native/csrc/fused_epoch.c``, compiled after ``shuffle.c``, whose draws of the epoch's row
orders it can make itself) trains an ensemble of small MLPs for one epoch in one call.
It is compiled and cached by :mod:`infoplane._native.build` (the system C compiler, ``-march=native``, a private
cache under ``~/.cache/infoplane``) and called through :func:`infoplane._native.kernels.fused_epoch`. When no
compiler works (or ``INFOPLANE_NO_NATIVE=1``, or the cache is not private), ``load()`` returns the reason as a
string and training uses the torch path.
"""
from __future__ import annotations

import ctypes

from infoplane._native import build as _native
from infoplane._native import kernels

# One library: the epoch's orders are drawn inside the kernel, seed by seed, with shuffle.c's code.
SOURCE = _native.source("shuffle.c") + "\n" + _native.source("fused_epoch.c")

_LOADED: ctypes.CDLL | str | None = None


def _compiler() -> str | None:
    return _native.compiler()


def _build() -> ctypes.CDLL | str:
    # -fno-trapping-math lets the compiler vectorise the activations' selects without AVX-512's masks (on AVX2
    # they stayed scalar and took most of the epoch); it changes no result, only when FP exceptions may be raised.
    lib = _native.build("fused", SOURCE, _compiler(), (*_native.FLAGS, "-fno-trapping-math", *_native.openmp_flags()))
    if isinstance(lib, str):
        return lib
    return kernels.declare_fused(lib)


def load() -> ctypes.CDLL | str:
    """The compiled kernel library, or a string saying why it is not available (computed once per process).

    Returns
    -------
    ctypes.CDLL or str
    """
    global _LOADED
    if _LOADED is None:
        _LOADED = _build()
    return _LOADED

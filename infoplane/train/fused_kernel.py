"""Build and load the fused ensemble training kernel (C, compiled once per machine, called through ctypes).

The kernel (:mod:`infoplane.train.fused_source`) trains an ensemble of small MLPs for one epoch in one call.
It is compiled and cached by :mod:`infoplane._native.build` (the system C compiler, ``-march=native``, a cache under
``~/.cache/infoplane``). When no compiler works, ``load()`` returns the reason as a string and training uses the
torch path.
"""
from __future__ import annotations

import ctypes

from infoplane._native import build as _native
from infoplane.train.fused_source import SOURCE

_LOADED: ctypes.CDLL | str | None = None


def _compiler() -> str | None:
    return _native.compiler()


def _build() -> ctypes.CDLL | str:
    lib = _native.build("fused", SOURCE, _compiler(), (*_native.FLAGS, *_native.openmp_flags()))
    if isinstance(lib, str):
        return lib
    fn = lib.ip_fused_epoch
    p = ctypes.c_void_p
    fn.argtypes = [ctypes.c_int, ctypes.c_int, p, p, p, p, p, p, p, p, p, p, p, p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int, p, p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return lib


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

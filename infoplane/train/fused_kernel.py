"""Build and load the fused ensemble training kernel (C, compiled once per machine, called through ctypes).

The kernel (:mod:`infoplane.train.fused_source`) trains an ensemble of small MLPs for one epoch in one call.
It is compiled with the system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a shared library
cached under ``$XDG_CACHE_HOME/infoplane`` (default ``~/.cache/infoplane``), keyed by the source, the flags and
the CPU's feature flags (the library is built for the CPU it runs on). When no compiler works, ``load()``
returns the reason as a string and training uses the torch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from .fused_source import SOURCE

# -ffp-contract=off: a*b+c stays two roundings, as in torch's separate elementwise ops (the quantiser's
# output must be the exact grid value). -fno-math-errno lets sqrtf and nearbyintf vectorise.
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-pthread")

_LOADED: ctypes.CDLL | str | None = None


def _cpu_key() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "infoplane"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build() -> ctypes.CDLL | str:
    compiler = _compiler()
    if compiler is None:
        return "no C compiler found (set CC, or install gcc or clang)"
    key = hashlib.sha256("\n".join((SOURCE, " ".join(FLAGS), platform.machine(), _cpu_key())).encode()).hexdigest()
    target = _cache_dir() / f"fused-{key[:16]}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                source = Path(tmp) / "fused.c"
                source.write_text(SOURCE)
                built = Path(tmp) / "fused.so"
                proc = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built), "-lm"],
                                      capture_output=True, text=True, timeout=120)
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["no output"])[0]
                    return f"compiling the fused kernel with {compiler} failed: {first}"
                os.replace(built, target)  # atomic: concurrent builds leave one complete library
        except (OSError, subprocess.SubprocessError) as exc:
            return f"building the fused kernel failed ({type(exc).__name__}: {exc})"
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        return f"loading the fused kernel failed: {exc}"
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

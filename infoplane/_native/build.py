"""Compile and load infoplane's small C kernels (one owner for the compiler, the flags and the cache).

A kernel's C source lives in a Python string next to the code that calls it. :func:`build` compiles it with
the system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a shared library cached under
``$XDG_CACHE_HOME/infoplane`` (default ``~/.cache/infoplane``), keyed by the source, the flags and the CPU's
feature flags (the library is built for the CPU it runs on), and loads it with ctypes, which releases the GIL
while a kernel runs. Where no compiler works, :func:`build` returns the reason as a string and the caller takes
its pure-torch route.
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

# -ffp-contract=off: a*b+c stays two roundings, as in torch's and numpy's separate elementwise ops (results
# must equal those routes' exactly). -fno-math-errno lets sqrtf, floor and nearbyintf vectorise.
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-pthread")


def cpu_key() -> str:
    """The CPU's feature flags (the cache key of a library built with -march=native)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "infoplane"


def compiler() -> str | None:
    """Path of the C compiler to use, or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def openmp_flags() -> tuple[str, ...]:
    """``("-fopenmp",)`` where torch runs on GNU OpenMP (libgomp is loaded in this process, Linux), else ``()``.

    A kernel built with it shares out its work in ``#pragma omp parallel`` regions, which the dynamic loader
    binds to the libgomp already loaded for torch: the same runtime and the same worker threads as torch's
    intra-op pool. Those threads otherwise keep spinning on the other cores for a while after each torch
    operation, so a kernel that starts threads of its own competes with them (measured: 20 seeds of the fused
    trainer gained nothing from a second pthread, and 1.5x from a second OpenMP thread). Elsewhere (another
    OpenMP runtime, or none) kernels use plain pthreads, so that no second runtime is loaded.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ()
    return ("-fopenmp",) if "libgomp" in maps else ()


def build(name: str, source: str, cc: str | None, flags: tuple[str, ...] = FLAGS) -> ctypes.CDLL | str:
    """Compile ``source`` (C) with ``cc`` (cached) and load it; a string saying why not when that fails.

    Parameters
    ----------
    name : str
        Short name of the kernel, used in the cached file's name and in messages.
    source : str
        The C source.
    cc : str or None
        The compiler (see :func:`compiler`); None means there is none.
    flags : tuple of str
        Compiler flags, :data:`FLAGS` by default.

    Returns
    -------
    ctypes.CDLL or str
    """
    if cc is None:
        return "no C compiler found (set CC, or install gcc or clang)"
    key = hashlib.sha256("\n".join((source, " ".join(flags), platform.machine(), cpu_key())).encode()).hexdigest()
    target = cache_dir() / f"{name}-{key[:16]}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src = Path(tmp) / f"{name}.c"
                src.write_text(source)
                built = Path(tmp) / f"{name}.so"
                proc = subprocess.run([cc, *flags, str(src), "-o", str(built), "-lm"],
                                      capture_output=True, text=True, timeout=120)
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["no output"])[0]
                    return f"compiling the {name} kernel with {cc} failed: {first}"
                os.replace(built, target)  # atomic: concurrent builds leave one complete library
        except (OSError, subprocess.SubprocessError) as exc:
            return f"building the {name} kernel failed ({type(exc).__name__}: {exc})"
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        return f"loading the {name} kernel failed: {exc}"

"""Compile and load infoplane's small C kernels (one owner for the compiler, the flags and the cache).

The C sources are package data in ``infoplane/_native/csrc/`` (read with :func:`source`): ``count_rows.c``, the
counting kernel behind ``binned_mi``'s fixed grid and ``discrete_mi`` on the CPU, ``fused_epoch.c``, the fused
MLP-ensemble training kernel, and ``shuffle.c``, which draws the seeds' epoch orders as ``torch.randperm`` does.
:func:`build` compiles one with the system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a shared
library and loads it with ctypes, which releases the GIL while a kernel runs; :mod:`infoplane._native.kernels`
calls it through typed, checked wrappers.

The cache. Libraries are kept in ``$XDG_CACHE_HOME/infoplane`` (default ``~/.cache/infoplane``), created with
mode 0700, under a name keyed by the source, the flags, the compiler's version, the machine and the CPU's feature
flags (a library is built with ``-march=native`` for the CPU it runs on). A library is written to a temporary
file in that directory (0700) and moved into place with ``os.replace``, so concurrent builds leave one complete
file. Since loading a library runs its code, :func:`build` refuses to load from a directory, or a file, that is
not owned by the current user or that its group or others may write.

Environment. ``INFOPLANE_NO_NATIVE=1`` switches the compiled kernels off (nothing is compiled).
``INFOPLANE_NATIVE_FLAGS_EXTRA`` adds compiler flags to every build (and so to the cache key): ``make sanitize``
uses it to build the kernels with AddressSanitizer and UndefinedBehaviorSanitizer and run their parity tests.

Whenever a kernel cannot be built or loaded (no compiler, a refused cache, ``INFOPLANE_NO_NATIVE``), :func:`build`
returns the reason as a string; the caller warns once and takes its slower pure-torch or numpy route, which gives
the same results.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch

# -ffp-contract=off: a*b+c stays two roundings, as in torch's and numpy's separate elementwise ops (results
# must equal those routes' exactly). -fno-math-errno lets sqrtf, floor and nearbyintf vectorise.
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-pthread")

NO_NATIVE_ENV = "INFOPLANE_NO_NATIVE"
# The file a -fopenmp build's "libgomp.so.1" binds to, as /proc/self/maps names it (the link's target, e.g.
# libgomp.so.1.0.0); vendored copies renamed libgomp-<hash>.so.1 carry that name as their soname and are not shared.
_SHAREABLE_GOMP = re.compile(r"libgomp\.so\.1(\.[0-9]+)*$")
EXTRA_FLAGS_ENV = "INFOPLANE_NATIVE_FLAGS_EXTRA"


def source(filename: str) -> str:
    """The text of one of the package's C sources (``infoplane/_native/csrc/<filename>``).

    Parameters
    ----------
    filename : str
        ``"count_rows.c"``, ``"fused_epoch.c"`` or ``"shuffle.c"``.

    Returns
    -------
    str
    """
    source = importlib.resources.files("infoplane._native").joinpath("csrc").joinpath(filename)
    return source.read_text(encoding="utf-8")


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
    """The directory of the compiled libraries: ``$XDG_CACHE_HOME/infoplane``, else ``~/.cache/infoplane``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "infoplane"


def compiler() -> str | None:
    """Path of the C compiler to use, or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.lru_cache(maxsize=None)
def compiler_version(cc: str) -> str:
    """The first line of ``cc --version`` (computed once per compiler and process), or ``"unknown"``.

    Parameters
    ----------
    cc : str
        The compiler's path.

    Returns
    -------
    str
    """
    try:
        proc = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def extra_flags() -> tuple[str, ...]:
    """Compiler flags added to every build from ``$INFOPLANE_NATIVE_FLAGS_EXTRA`` (shell words), e.g. sanitizers."""
    return tuple(shlex.split(os.environ.get(EXTRA_FLAGS_ENV, "")))


def disabled() -> bool:
    """True when ``$INFOPLANE_NO_NATIVE`` is set to anything but empty or ``0``: no kernel is compiled."""
    return os.environ.get(NO_NATIVE_ENV, "").strip() not in ("", "0")


def private_problem(path: Path, directory: bool) -> str | None:
    """Why ``path`` may not be trusted with code this process loads, or None when it may.

    It must be a directory (``directory=True``) or a regular file (not a symbolic link), owned by the current
    user and writable by neither its group nor others.

    Parameters
    ----------
    path : Path
        The cache directory or a library in it.
    directory : bool
        Whether ``path`` is the directory.

    Returns
    -------
    str or None
    """
    try:
        st = os.stat(path) if directory else os.lstat(path)
    except OSError as exc:
        return f"{path} cannot be inspected ({exc})"
    if directory and not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if not directory and not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()}); remove it"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"{path} is writable by its group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run chmod go-w on it, or remove it")
    return None


def uses_torch_gnu_openmp(maps: str, torch_dir: str | os.PathLike, parallel_info: str) -> bool:
    """Whether torch runs its intra-op threads on a GNU OpenMP runtime that a ``-fopenmp`` kernel would share.

    A kernel built with ``-fopenmp`` needs ``libgomp.so.1``; the dynamic loader binds that name to a library
    already loaded under it, and loads a second runtime otherwise. So the answer is yes only when torch's parallel
    backend is OpenMP and the runtime it loaded is a ``libgomp.so.1``: one inside torch's own install (the pip
    wheels ship ``torch/lib/libgomp.so.1``), or, where torch's install holds no OpenMP runtime of its own, the
    process's ``libgomp.so.1`` with neither Intel's nor LLVM's runtime beside it (torch linked to the system's).
    Vendored copies under other names (scikit-learn's ``libgomp-<hash>.so.1``) do not count.

    Parameters
    ----------
    maps : str
        The text of ``/proc/self/maps``.
    torch_dir : str or path
        The directory of the torch package (its shared libraries are in ``lib/`` below it).
    parallel_info : str
        ``torch.__config__.parallel_info()``.

    Returns
    -------
    bool
    """
    if "parallel backend: OpenMP" not in parallel_info:
        return False
    root = os.path.join(os.path.realpath(torch_dir), "")  # the maps list real paths
    loaded = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            loaded.add(fields[5])
    names = {p: os.path.basename(p) for p in loaded}
    runtimes = {p for p, b in names.items() if b.startswith(("libgomp", "libiomp", "libomp"))}
    own = {p for p in runtimes if p.startswith(root)}
    if own:
        return any(_SHAREABLE_GOMP.match(names[p]) for p in own)
    # torch linked to an OpenMP runtime outside its install: GNU's when that is the one loaded (a renamed copy
    # is private to whoever vendored it), not when Intel's or LLVM's is there too.
    others = [p for p in runtimes if not names[p].startswith("libgomp")]
    return not others and any(_SHAREABLE_GOMP.match(names[p]) for p in runtimes)


def openmp_flags() -> tuple[str, ...]:
    """``("-fopenmp",)`` where torch runs on GNU OpenMP (see :func:`uses_torch_gnu_openmp`; Linux), else ``()``.

    A kernel built with it shares out its work in ``#pragma omp parallel`` regions, which run on the libgomp
    already loaded for torch: the same runtime and the same worker threads as torch's intra-op pool. Those threads
    otherwise keep spinning on the other cores for a while after each torch operation, so a kernel that starts
    threads of its own competes with them (measured: 20 seeds of the fused trainer gained nothing from a second
    pthread, and 1.5x from a second OpenMP thread). Elsewhere (another OpenMP runtime, or none) kernels use plain
    pthreads, so that no second runtime is loaded.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ()
    info = torch.__config__.parallel_info()
    return ("-fopenmp",) if uses_torch_gnu_openmp(maps, os.path.dirname(torch.__file__), info) else ()


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
        Compiler flags, :data:`FLAGS` by default; those of ``$INFOPLANE_NATIVE_FLAGS_EXTRA`` are added.

    Returns
    -------
    ctypes.CDLL or str
    """
    if disabled():
        return f"{NO_NATIVE_ENV} is set in the environment"
    if cc is None:
        return "no C compiler found (set CC, or install gcc or clang)"
    flags = (*flags, *extra_flags())
    parts = (source, " ".join(flags), compiler_version(cc), platform.machine(), cpu_key())
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    directory = cache_dir()
    try:
        # The mode applies to the last component alone (and is masked by the umask, which can only narrow it).
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"creating the kernel cache {directory} failed ({type(exc).__name__}: {exc})"
    problem = private_problem(directory, directory=True)
    if problem is not None:
        return f"the kernel cache is not private: {problem}"
    target = directory / f"{name}-{key[:16]}.so"
    if not os.path.lexists(target):
        try:
            with tempfile.TemporaryDirectory(dir=directory) as tmp:  # created 0700
                src = Path(tmp) / f"{name}.c"
                src.write_text(source, encoding="utf-8")
                built = Path(tmp) / f"{name}.so"
                proc = subprocess.run([cc, *flags, str(src), "-o", str(built), "-lm"],
                                      capture_output=True, text=True, timeout=120)
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["no output"])[0]
                    return f"compiling the {name} kernel with {cc} failed: {first}"
                os.chmod(built, 0o700)  # whatever the umask: the check below would refuse a writable library
                os.replace(built, target)  # atomic: concurrent builds leave one complete library
        except (OSError, subprocess.SubprocessError) as exc:
            return f"building the {name} kernel failed ({type(exc).__name__}: {exc})"
    problem = private_problem(target, directory=False)
    if problem is not None:
        return f"refusing the cached {name} kernel: {problem}"
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        return f"loading the {name} kernel failed: {exc}"

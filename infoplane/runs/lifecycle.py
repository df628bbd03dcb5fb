"""The lifecycle of a run directory: create it, recognise it, clear it, lock it.

This module is the one place that decides what infoplane may delete. A directory is an infoplane run when its
``meta.json`` carries the format marker (:data:`infoplane.runs.format.FORMAT`). Infoplane's own files are exactly
those it writes: ``meta.json``, ``infoplane.csv``, ``metrics.csv``, ``gradients.csv``, ``sharpness.csv``,
``corruption.npz``, the CLI's ``train_state.pt``, the lock file, ``activations/labels.npy`` and
``activations/<seed>/<epoch>.npz``, the figures ``plane-<estimator>.png``, ``curves-<estimator>.png``,
``gradients.png`` and ``sharpness.png`` that ``infoplane plot`` writes there, and the temporary files of its atomic
writes.
Overwriting a run removes those and nothing else; if the directory holds anything else (another file, a
symlink, a folder of the user's), it refuses and lists what it found. Symlinks are never followed.

One process writes a run at a time: the writer holds ``.infoplane.lock`` (an OS file lock, released by the
kernel when the process dies, so a lock left behind by a killed process is simply taken over).
"""
from __future__ import annotations

import os
import re
import socket
from types import ModuleType
from typing import Callable, Optional, Union

from infoplane.runs.format import (
    ACTIVATIONS,
    CORRUPTION,
    LOCK,
    META,
    METRICS,
    SHARPNESS,
    STATE,
    TABLE,
    NotARunError,
    read_meta,
)
from infoplane.runs.gradfile import GRADIENTS

fcntl: Optional[ModuleType]
try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["is_run", "foreign_entries", "clear", "open_run_dir", "prepare_run_dir", "RunLock", "RunLockedError",
           "RunExistsError", "RunDirError", "NotARunError"]

_OWN_TOP = (META, TABLE, METRICS, STATE, LOCK, GRADIENTS, CORRUPTION, SHARPNESS)
_TMP = re.compile(r"\.tmp\d+$")          # atomic writes: <name>.tmp<pid>
# The per-run figures that `infoplane plot` / `write_figures` put into a run directory (sharpness.png: the
# sharpness measures against epochs, beside the planes).
_FIGURE = re.compile(r"((plane|curves|sharpness)(-[A-Za-z0-9_.-]+)?|gradients)\.png$")
_INT = re.compile(r"-?\d+$")


class RunLockedError(RuntimeError):
    """Another live writer holds the run directory."""


class RunExistsError(ValueError):
    """The directory already holds a run, and neither resuming nor overwriting was asked for."""


class RunDirError(ValueError):
    """A run directory cannot be created or written (the message says which and the operating system's reason)."""


def os_reason(err: OSError) -> str:
    """The operating system's reason for ``err``, naming the path it concerns: ``Permission denied: '/sys/x'``."""
    reason = err.strerror or str(err) or type(err).__name__
    return f"{reason}: {err.filename!r}" if err.filename else reason


def prepare_run_dir(path: Union[str, os.PathLike]) -> None:
    """Create the directory ``path`` (and its parents) and check that a writer could take it, before any work.

    The check takes and releases the run's lock (:class:`RunLock`), the first file a writer creates, so a
    directory that cannot be created or written to, or one that another writer holds, is found here rather than
    after training. An existing run in ``path`` is left as it is.

    Raises
    ------
    RunDirError
        ``cannot create run directory <path>: <reason>``, the reason as the operating system gives it (e.g. a
        parent that is a file, a read-only or virtual filesystem, no permission).
    RunLockedError
        Another live writer holds the directory.
    """
    path = os.fspath(path)
    try:
        if os.path.lexists(path) and not os.path.isdir(path):
            raise RunDirError(f"cannot create run directory {path}: it is a file, not a directory")
        os.makedirs(path, exist_ok=True)
        RunLock(path).release()
    except OSError as err:
        raise RunDirError(f"cannot create run directory {path}: {os_reason(err)}") from err


def is_run(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a directory holding an infoplane run (``meta.json`` with the format marker)."""
    try:
        read_meta(path)
        return True
    except NotARunError:
        return False


def _own_top(name: str) -> bool:
    base = _TMP.sub("", name)
    return base in _OWN_TOP or bool(_FIGURE.match(base))


def _foreign_in_activations(path: str) -> list[str]:
    """Entries of ``activations/`` that infoplane did not write (relative to the run directory)."""
    found = []
    with os.scandir(path) as it:
        for e in it:
            rel = os.path.join(ACTIVATIONS, e.name)
            if e.is_symlink():
                found.append(rel)
            elif e.is_file(follow_symlinks=False):
                if _TMP.sub("", e.name) != "labels.npy":
                    found.append(rel)
            elif e.is_dir(follow_symlinks=False) and _INT.match(e.name):
                with os.scandir(e.path) as inner:
                    for f in inner:
                        name = _TMP.sub("", f.name)
                        own = (f.is_file(follow_symlinks=False) and not f.is_symlink() and name.endswith(".npz")
                               and _INT.match(name[:-4]))
                        if not own:
                            found.append(os.path.join(rel, f.name))
            else:
                found.append(rel)
    return found


def foreign_entries(path: Union[str, os.PathLike]) -> list[str]:
    """Paths (relative to ``path``) inside a run directory that infoplane did not write; sorted."""
    path = os.fspath(path)
    found = []
    with os.scandir(path) as it:
        for e in it:
            if e.is_symlink():
                found.append(e.name)
            elif e.name == ACTIVATIONS and e.is_dir(follow_symlinks=False):
                found.extend(_foreign_in_activations(e.path))
            elif not (e.is_file(follow_symlinks=False) and _own_top(e.name)):
                found.append(e.name)
    return sorted(found)


def clear(path: Union[str, os.PathLike]) -> None:
    """Remove infoplane's files from the run directory ``path``; refuse if it holds anything else.

    ``meta.json`` goes last, so that a clear cut short by a kill leaves a directory that is still recognised as
    a run. The lock file is left to its holder.

    Raises
    ------
    NotARunError
        ``path`` is not an infoplane run.
    ValueError
        The directory holds files infoplane did not write (listed in the message).
    """
    path = os.fspath(path)
    read_meta(path)  # raises NotARunError with the reason
    foreign = foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise ValueError(f"{path!r} holds files that infoplane did not write ({shown}); move them out of the "
                         f"run directory, or choose another directory")
    acts = os.path.join(path, ACTIVATIONS)
    if os.path.isdir(acts) and not os.path.islink(acts):
        with os.scandir(acts) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    with os.scandir(e.path) as inner:
                        for f in inner:
                            os.remove(f.path)
                    os.rmdir(e.path)
                else:
                    os.remove(e.path)
        os.rmdir(acts)
    with os.scandir(path) as it:
        names = [e.name for e in it if e.name not in (META, LOCK)]
    for name in names:
        os.remove(os.path.join(path, name))
    os.remove(os.path.join(path, META))


class RunLock:
    """An exclusive, process-owned lock on a run directory (the file ``.infoplane.lock``, holding the pid).

    Two writers, in two processes or in one, cannot hold it at once; the second gets :class:`RunLockedError`
    naming the holder's pid. The OS releases the lock when its process dies, so a stale lock file is taken over.
    """

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.dir = os.fspath(path)
        self.path = os.path.join(self.dir, LOCK)
        self._fd: Optional[int] = None
        self._acquire()

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError:
            return "another writer"
        return f"process {text}" if text else "another writer"

    def _acquire(self) -> None:
        if fcntl is None:  # pragma: no cover - no OS file locks: exclusive creation only
            try:
                self._fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise RunLockedError(self._message()) from None
            self._write_pid()
            return
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunLockedError(self._message()) from None
            # The holder before us may have removed the file between our open and our lock: then we locked a
            # file nobody else will look at, and must start again on the file that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self._write_pid()
                return
            os.close(fd)

    def _message(self) -> str:
        return (f"{self.dir!r} is being written by {self._holder()} (lock file {LOCK}); wait for it to finish or "
                f"stop it, or write to another directory")

    def _write_pid(self) -> None:
        assert self._fd is not None  # called right after the lock is taken
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self):
        # A writer that nobody can reach any more writes nothing: its lock goes with it, as with a dead process.
        try:
            self.release()
        except Exception:
            pass

    def release(self) -> None:
        """Remove the lock file and release the lock. Safe to call twice."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # while still locked, so that nobody locks a file about to vanish
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor releases the OS lock
        self._fd = None


def _inspect(path: str, resume: bool, overwrite: bool) -> bool:
    """Decide, without changing anything, whether ``path`` starts a new run or resumes one; raise if neither."""
    if not os.path.isdir(path):
        return False
    entries = [n for n in os.listdir(path) if n != LOCK]
    if not entries:
        return False
    if not is_run(path):
        shown = ", ".join(sorted(entries)[:10]) + (f" and {len(entries) - 10} more" if len(entries) > 10 else "")
        raise ValueError(f"{path!r} is not empty and holds no infoplane run ({shown}); infoplane writes only into "
                         f"a new or empty directory or one of its own runs: choose another directory")
    if resume:
        return True
    if not overwrite:
        raise RunExistsError(f"{path!r} already holds an infoplane run; pass resume=True to continue it, "
                             f"overwrite=True to replace it, or choose another directory")
    foreign = foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise ValueError(f"{path!r} holds files that infoplane did not write ({shown}), so it will not overwrite "
                         f"the run there: move them out of the run directory, or choose another directory")
    return False


def open_run_dir(path: Union[str, os.PathLike], *, resume: bool = False, overwrite: bool = False,
                 check: Optional[Callable[[str], None]] = None) -> tuple[RunLock, bool]:
    """Take a directory for writing a run: create it, lock it, and decide between a new run and a resumed one.

    Every refusal happens before anything is created, locked or deleted.

    Parameters
    ----------
    path : str or os.PathLike
    resume : bool
        Continue the run in ``path`` (a new run starts if there is none).
    overwrite : bool
        Replace the run in ``path``: its infoplane files are removed (:func:`clear`); refused when the directory
        holds anything else.
    check : callable, optional
        Called with ``path`` when a run is to be resumed; it raises to refuse (e.g. other settings).

    Returns
    -------
    lock : RunLock
        Held until the writer releases it.
    resuming : bool
        True when ``path`` holds a run to continue.

    Raises
    ------
    ValueError
        Conflicting options, a path that is a file, a non-empty directory that is not a run, a run without
        ``resume``/``overwrite`` (:class:`RunExistsError`), or foreign files in a run to overwrite.
    RunLockedError
        Another writer holds the directory.
    """
    path = os.fspath(path)
    if resume and overwrite:
        raise ValueError("pass resume=True or overwrite=True, not both")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file, not a directory; give a directory for the run")
    if _inspect(path, resume, overwrite) and check is not None:
        check(path)
    os.makedirs(path, exist_ok=True)
    lock = RunLock(path)
    try:
        # Again under the lock: the directory may have changed since the first look.
        resuming = _inspect(path, resume, overwrite)
        if resuming and check is not None:
            check(path)
        if not resuming and overwrite and is_run(path):
            clear(path)
        return lock, resuming
    except BaseException:
        lock.release()
        raise

"""Atomic writes: a reader sees the old file or the new one, never half of one; and a lock for
read-modify-write updates of a file that two processes share (``metrics.json`` while the pipeline's
two lanes run side by side)."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def file_stamp(path: str | Path) -> str:
    """A file as its size and modification time ("size mtime_ns"): a file written again gets another stamp."""
    stat = Path(path).stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"


@contextmanager
def atomic_path(path: str | Path, optional: bool = False):
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only on success.

    Works for files and folders: write whatever you like at the yielded path. ``optional``: writing
    nothing there (or removing what was written) leaves ``path`` as it was; otherwise that is an
    error. On an exception the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the suffixes so that writers choosing a format by extension (nibabel, numpy) agree
    tmp = path.with_name(f".{path.stem.split('.')[0]}.tmp-{os.getpid()}-{os.urandom(3).hex()}"
                         f"{''.join(path.suffixes)}")
    try:
        yield tmp
        if optional and not tmp.exists():
            return
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{os.urandom(3).hex()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


class Busy(RuntimeError):
    """Another process holds the lock :func:`locked` was asked not to wait for."""


@contextmanager
def locked(path: str | Path, wait: bool = True):
    """Hold an exclusive lock tied to ``path`` (on a hidden sibling ``.<name>.lock``) while the
    block runs: another process entering ``locked`` on the same path waits (without ``wait``: raises
    :class:`Busy`). Where the platform has no ``fcntl`` (Windows) the block runs unlocked; the
    pipeline runs nothing side by side there. Not re-entrant: a process that enters it again on the
    same path, inside the block, waits for ever."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{path} is locked by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Building a site in a temporary folder and swapping it in whole; the build lock."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_RENAME_EXCHANGE = 2


class LockError(RuntimeError):
    """Another build holds the lock."""


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


def recover(out: Path) -> None:
    """Tidy what a killed build left beside ``out``: restore ``out`` if only its old copy
    survives, and remove half-built temporary folders."""
    old = out.with_name(f".{out.name}.old")
    if not out.exists() and old.is_dir():
        old.rename(out)
    for leftover in [old, *out.parent.glob(f".{out.name}.tmp-*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``out``; on success it replaces ``out`` in one step,
    on any exception it is removed and ``out`` stays as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.is_dir() and _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous site
        return
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def build_lock(folder: Path, wait: float = 0.0) -> Iterator[None]:
    """An exclusive lock on ``folder/.galleryvis.lock``; waits up to ``wait`` seconds, then
    raises LockError naming the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".galleryvis.lock"
    with open(path, "a+") as f:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(f"another galleryvis build is using {folder} (lock {path}); "
                                    "wait for it to finish or pass --wait SECONDS") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

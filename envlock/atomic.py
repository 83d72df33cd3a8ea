"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from envlock.errors import UsageError

#: How long a capture waits for another one updating the same lock before it gives up (seconds).
LOCK_WAIT = 60.0


def write_atomic(path: str | os.PathLike[str], data: str) -> None:
    """Write `data` (UTF-8) to `path` through a temporary file in the same folder, fsync and a rename.

    A failed write (disk full, read-only folder, no permission, a folder in the way) raises a one-line UsageError
    and leaves the old file as it was and no temporary file behind. A symbolic link is written through: the file it
    names is replaced, the link stays.
    """
    import tempfile  # here, not at the top: the job-start path writes nothing and should not pay for it

    shown = Path(path)
    target = Path(os.path.realpath(shown)) if os.path.islink(shown) else shown
    folder = target.parent if str(target.parent) else Path(".")
    _check_folder(shown, folder)
    if target.is_dir():
        raise UsageError(f"{shown}: is a directory, not a file")
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    payload = data.encode("utf-8")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _cannot_write(shown, exc) from None
    try:
        try:
            _write_all(fd, payload)
            os.fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _cannot_write(shown, exc) from None
        raise
    _sync_folder(folder)


def _check_folder(shown: Path, folder: Path) -> None:
    """Raise a one-line UsageError unless `folder` is an existing directory."""
    import stat

    try:
        info = os.stat(folder)
    except FileNotFoundError:
        raise UsageError(f"{shown}: folder {folder} does not exist") from None
    except NotADirectoryError:
        raise UsageError(f"{shown}: {folder} is not a folder (a file is in its path)") from None
    except OSError as exc:
        raise _cannot_write(shown, exc) from None
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{shown}: {folder} is not a folder")


def _write_all(fd: int, payload: bytes) -> None:
    """Write every byte of `payload` to `fd` (os.write may write fewer than asked)."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def _sync_folder(folder: Path) -> None:
    """Make the rename durable; a filesystem that cannot fsync a folder is left to its own devices."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _cannot_write(shown: Path, exc: OSError) -> UsageError:
    return UsageError(f"{shown}: cannot write: {exc.strerror or exc}")


@contextmanager
def locked(path: str | os.PathLike[str], wait: float | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on the file at `path` while the block reads, changes and replaces it.

    The lock is taken on the file itself, so no extra file is left next to it and a read-only folder is no obstacle;
    a file that was replaced while this process waited is locked again under its new inode. No file yet, or one that
    is not a regular file: nothing to lock (reading or writing it fails with its own line). Waits at most `wait`
    seconds (LOCK_WAIT by default), then raises a one-line UsageError.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: unserialised, as before
        yield
        return
    bound = LOCK_WAIT if wait is None else wait
    deadline = time.monotonic() + bound
    while True:
        fd = _open_for_lock(path)
        if fd is None:
            yield
            return
        try:
            if not _flock(fcntl, fd, deadline):
                raise UsageError(f"{path}: another envlock is updating this lock and has held it for {bound:g} s; "
                                 "try again when it has finished")
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except OSError:
                continue  # removed while this process waited: there is nothing left to lock
            if (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev):
                continue  # replaced while this process waited: lock the file that is there now
            yield
            return
        finally:
            os.close(fd)


def _open_for_lock(path: str | os.PathLike[str]) -> int | None:
    """A descriptor of the regular file at `path` to flock (read-write where allowed: NFS needs it), or None."""
    import errno
    import stat

    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def _flock(fcntl: Any, fd: int, deadline: float) -> bool:
    """Take the exclusive lock on `fd`, polling until `deadline`; False when the deadline passed first. A
    filesystem that cannot lock at all counts as locked (the rename still keeps every reader whole)."""
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        except OSError:
            return True

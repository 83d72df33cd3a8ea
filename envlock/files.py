"""Reading the files a command is given (a lock, a facts file, a pyproject.toml) without hanging or tracing back.

Apart from the lock model, so that what only needs a lock's bytes (the verdict memo of `verify --fast`) or reads
another kind of file (the facts collectors) does not pay for importing it.
"""

from __future__ import annotations

import os
import stat

from envlock.errors import LockError

MAX_LOCK_BYTES = 8 * 1024 * 1024


def default_lock_name() -> str:
    """The lock a command uses when none is named: $ENVLOCK_LOCK when set (the images `envlock build` makes set
    it), else ./envlock.lock."""
    return os.environ.get("ENVLOCK_LOCK", "").strip() or "envlock.lock"


#: What a path that is not a regular file is, by its stat type (for the one-line refusal).
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def read_regular(path: str | os.PathLike[str], limit: int, *, error: type[LockError] = LockError,
                 what: str = "lock file", missing: str = "") -> bytes:
    """Up to `limit` + 1 bytes of the regular file at `path`; anything else (missing, a directory, a FIFO, a
    device, a socket, a symlink loop, unreadable) is `error` in one line. Never blocks: the file is opened
    non-blocking and checked with fstat before a byte is read, so a FIFO cannot hang a job at its start."""
    name = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        if "\0" in os.fspath(path):
            raise error(name, "a path cannot hold a NUL character")
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(name, missing or f"no such {what}") from None
    except IsADirectoryError:
        raise error(name, f"is a directory, not a {what}") from None
    except OSError as exc:
        raise error(name, f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((label for test, label in _KINDS if test(mode)), "a special file")
            raise error(name, f"is {kind}, not a {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            return handle.read(limit + 1)
    except OSError as exc:
        raise error(name, f"cannot read: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)

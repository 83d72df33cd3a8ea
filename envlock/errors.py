"""The exceptions envlock raises; the CLI maps each to one line and an exit code."""

from __future__ import annotations


class EnvlockError(Exception):
    """Base class: a problem envlock can explain in one line."""

    exit_code = 2


class UsageError(EnvlockError):
    """The user asked for something that cannot be done as asked."""


class LockError(EnvlockError):
    """A lock file is missing, unreadable or invalid; `where` is a dotted place inside it."""

    def __init__(self, file: str, message: str, where: str = "") -> None:
        self.file = file
        self.where = where
        self.message = message
        place = f"{file}: {where}: " if where else f"{file}: "
        super().__init__(place + message)


class FactsError(LockError):
    """A facts dump (`envlock facts` output) is unreadable or malformed."""


class EnvironmentUnavailable(EnvlockError):
    """The environment cannot be examined (a driver that will not load, a daemon that is down)."""

    exit_code = 3

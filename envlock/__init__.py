"""envlock: environment and hardware lockfiles for ML jobs.

`import envlock` stays cheap: the heavy parts (torch, docker, NVML) load only where they are used.
"""

from __future__ import annotations

from typing import Any

from envlock._version import __version__
from envlock.errors import EnvironmentUnavailable, EnvlockError, FactsError, LockError, UsageError

__all__ = [
    "EnvMismatchError",
    "EnvironmentUnavailable",
    "EnvlockError",
    "FactsError",
    "LockError",
    "UsageError",
    "__version__",
    "capture",
    "check",
    "verify",
]


def capture(output: str = "envlock.lock", **kwargs: Any) -> Any:
    """Capture this process's environment into a lock file; returns a CaptureResult."""
    from envlock.capturing import capture as _capture

    return _capture(output, **kwargs)


def verify(path: str | None = None, *, distributed: bool = False, **kwargs: Any) -> Any:
    """Compare this process with the lock (default ./envlock.lock, then $ENVLOCK_LOCK); returns a Report.

    Call it inside a job after its own setup: flags set in code (TF32, thread counts) are seen as they are now.
    `distributed=True` (on every rank; `timeout=` seconds) also compares the ranks with each other and returns a
    FleetReport whose `ok` and `exit_code` are the same on every rank (see docs/fleet.md).
    """
    if distributed:
        from envlock.fleet import verify_fleet

        return verify_fleet(path, **kwargs)
    from envlock.verifying import verify as _verify

    return _verify(path, **kwargs)


def check(path: str | None = None, *, distributed: bool = False, **kwargs: Any) -> Any:
    """Like verify(), but raise EnvMismatchError (carrying the report) when an error-severity mismatch is found."""
    if distributed:
        from envlock.fleet import check_fleet

        return check_fleet(path, **kwargs)
    from envlock.verifying import check as _check

    return _check(path, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "EnvMismatchError":
        from envlock.verifying import EnvMismatchError

        return EnvMismatchError
    raise AttributeError(f"module 'envlock' has no attribute {name!r}")

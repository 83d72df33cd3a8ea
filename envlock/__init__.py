"""envlock: environment and hardware lockfiles for ML jobs.

`import envlock` stays cheap: the heavy parts (torch, docker, NVML) load only where they are used.
"""

from __future__ import annotations

from typing import Any

from envlock._version import __version__
from envlock.errors import EnvironmentUnavailable, EnvlockError, FactsError, LockError, UsageError

__all__ = [
    "EnvironmentUnavailable",
    "EnvlockError",
    "FactsError",
    "LockError",
    "UsageError",
    "__version__",
    "capture",
]


def capture(output: str = "envlock.lock", **kwargs: Any) -> Any:
    """Capture this process's environment into a lock file; returns a CaptureResult."""
    from envlock.capture import capture as _capture

    return _capture(output, **kwargs)

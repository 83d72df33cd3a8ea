"""envlock: environment and hardware lockfiles for ML jobs.

`import envlock` stays cheap: the API (and with it the exceptions, the lock model and the collectors) loads on
first use, and the heavy parts (torch, docker, NVML) load only where they are used. Not even the standard
library's typing is imported here: the console script starts a job's size check before it imports anything else.
"""

from __future__ import annotations

from envlock._version import __version__

TYPE_CHECKING = False  # see the module's doc; type checkers read this as True
if TYPE_CHECKING:
    from typing import Any

    from envlock.api import capture, check, verify
    from envlock.capturing import CaptureResult
    from envlock.errors import (
        EnvironmentUnavailable,
        EnvlockError,
        EnvMismatchError,
        FactsError,
        LockError,
        UsageError,
    )
    from envlock.findings import Finding, Report
    from envlock.fleet.decide import FleetReport
    from envlock.probes.numerics.fingerprint import Fingerprint, fingerprint

__all__ = [
    "CaptureResult",
    "EnvMismatchError",
    "EnvironmentUnavailable",
    "EnvlockError",
    "FactsError",
    "Finding",
    "Fingerprint",
    "FleetReport",
    "LockError",
    "Report",
    "UsageError",
    "__version__",
    "capture",
    "check",
    "fingerprint",
    "verify",
]

#: Names served from other modules on first use (PEP 562), so that `import envlock` costs a few milliseconds.
_LAZY = {**dict.fromkeys(("EnvironmentUnavailable", "EnvlockError", "EnvMismatchError", "FactsError", "LockError",
                          "UsageError"), "envlock.errors"),
         "capture": "envlock.api", "check": "envlock.api", "verify": "envlock.api",
         "CaptureResult": "envlock.capturing", "FleetReport": "envlock.fleet.decide",
         "Finding": "envlock.findings", "Report": "envlock.findings",
         "fingerprint": "envlock.probes.numerics.fingerprint", "Fingerprint": "envlock.probes.numerics.fingerprint"}


#: Optional integrations, submodules imported on first use (`envlock.mlflow.log()` after `import envlock`).
_SUBMODULES = ("mlflow", "wandb", "ray")


def __getattr__(name: str) -> Any:
    if name in _LAZY or name in _SUBMODULES:
        import importlib

        value = importlib.import_module(f"envlock.{name}") if name in _SUBMODULES else getattr(
            importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'envlock' has no attribute {name!r}")

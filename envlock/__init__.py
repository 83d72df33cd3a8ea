"""envlock: environment and hardware lockfiles for ML jobs.

`import envlock` stays cheap: the API (and with it the lock model and the collectors) loads on first use, and the
heavy parts (torch, docker, NVML) load only where they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from envlock._version import __version__
from envlock.errors import EnvironmentUnavailable, EnvlockError, EnvMismatchError, FactsError, LockError, UsageError

if TYPE_CHECKING:
    from envlock.api import capture, check, verify
    from envlock.capturing import CaptureResult
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
_LAZY = {"capture": "envlock.api", "check": "envlock.api", "verify": "envlock.api",
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

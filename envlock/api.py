"""The Python API: capture(), verify() and check(), typed. `envlock` exposes them without importing this early."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from envlock.capturing import CaptureResult
from envlock.capturing import capture as _capture
from envlock.errors import EnvMismatchError
from envlock.findings import Report
from envlock.fleet.run import check_fleet, verify_fleet
from envlock.verifying import VerifyOptions, examine

PathLike = str | os.PathLike[str]


def capture(output: PathLike = "envlock.lock", *, facts: dict[str, Any] | None = None, use_torch: bool = True,
            force: bool = False, add_target: bool = False, numerics: bool = True,
            hashes: bool = False) -> CaptureResult:
    """Capture this process's environment (or recorded `facts`) into a lock file, keeping an old lock's policy."""
    return _capture(output, facts=facts, use_torch=use_torch, force=force, add_target=add_target,
                    numerics=numerics, hashes=hashes)


def _options(fast: bool, deep: bool, ignore: Iterable[str], warn: Iterable[str], target: str | None) -> VerifyOptions:
    return VerifyOptions(fast=fast, deep=deep, ignore=tuple(ignore), warn=tuple(warn), target=target)


def verify(path: PathLike | None = None, *, fast: bool = False, deep: bool = False, ignore: Iterable[str] = (),
           warn: Iterable[str] = (), target: str | None = None, distributed: bool = False,
           timeout: float | None = None) -> Report:
    """Compare this process with the lock (default $ENVLOCK_LOCK when set, else ./envlock.lock); returns a Report.

    Call it inside a job after its own setup: flags set in code (TF32, thread counts) are seen as they are now.
    `distributed=True` (on every rank; `timeout` seconds) also compares the ranks with each other and returns a
    FleetReport whose `ok` and `exit_code` are the same on every rank (see docs/fleet.md).
    """
    options = _options(fast, deep, ignore, warn, target)
    if distributed:
        return verify_fleet(path, options, timeout=timeout)
    return examine(path, options).report


def check(path: PathLike | None = None, *, fast: bool = False, deep: bool = False, ignore: Iterable[str] = (),
          warn: Iterable[str] = (), target: str | None = None, distributed: bool = False,
          timeout: float | None = None) -> Report:
    """Like verify(), but raise EnvMismatchError (carrying the report) when an error-severity mismatch is found."""
    options = _options(fast, deep, ignore, warn, target)
    if distributed:
        return check_fleet(path, options, timeout=timeout)
    report = examine(path, options).report
    if not report.ok:
        raise EnvMismatchError(report)
    return report


"""`envlock run`: make the job's environment match the lock, then become the job."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from envlock.errors import UsageError
from envlock.findings import Report
from envlock.lockfile import default_lock_path, load
from envlock.verifying import verify

MODES = ("strict", "warn", "off")


def verify_mode() -> str:
    """ENVLOCK_VERIFY: strict (default: refuse to start on a mismatch), warn, or off."""
    mode = os.environ.get("ENVLOCK_VERIFY", "strict").strip().lower() or "strict"
    if mode not in MODES:
        raise UsageError(f"ENVLOCK_VERIFY={mode!r}: expected one of {', '.join(MODES)}")
    return mode


@dataclass(frozen=True)
class EnvChange:
    """One env var `envlock run` changed for the job: its value before (None: unset) and after (None: unset)."""

    name: str
    before: str | None
    after: str | None

    def __str__(self) -> str:
        if self.after is None:
            return f"unset {self.name} (was {self.before})"
        return f"{self.name}={self.after}" + (f" (was {self.before})" if self.before is not None else "")


def apply_lock_env(lock: Path | None) -> tuple[Path, tuple[EnvChange, ...]]:
    """Set (or unset) in os.environ each numerics env var as the lock recorded it; the lock's path, and the
    variables that changed."""
    path = lock or default_lock_path()
    loaded, _ = load(path)
    changes = []
    for name, var in loaded.floats.env.items():
        before = os.environ.get(name)
        if var.set:
            os.environ[name] = var.value
        else:
            os.environ.pop(name, None)
        after = var.value if var.set else None
        if before != after:
            changes.append(EnvChange(name, before, after))
    return path, tuple(changes)


@dataclass(frozen=True)
class PreparedJob:
    """What `envlock run` found before starting the job: the report (None when ENVLOCK_VERIFY=off), and whether
    the job may start."""

    report: Report | None
    start: bool
    changes: tuple[EnvChange, ...] = ()


def prepare_job(lock: Path | None, *, fast: bool = False) -> PreparedJob:
    """Apply the lock's env vars and verify as ENVLOCK_VERIFY says; whether the job may start."""
    mode = verify_mode()
    path, changes = apply_lock_env(lock)
    if mode == "off":
        return PreparedJob(None, True, changes)
    report = verify(path, fast=fast, init_cuda=True)
    return PreparedJob(report, report.ok or mode != "strict", changes)


def find_program(command: list[str]) -> str:
    """The program `command` names, as execv needs it (searched on PATH); a UsageError for a command that
    cannot be run: none, an empty name, a NUL in any argument, a name not found, a directory."""
    if not command:
        raise UsageError("no command to run: envlock run [--lock LOCK] -- CMD ...")
    name = command[0]
    if not name.strip():
        raise UsageError(f"the command to run is an empty name ({name!r}): envlock run [--lock LOCK] -- CMD ...")
    for i, arg in enumerate(command):
        if "\0" in arg:
            raise UsageError(f"{name}: {'the command' if i == 0 else f'argument {i}'} holds a NUL character")
    program = shutil.which(name) or name
    try:
        if os.sep not in program and not Path(program).exists():
            raise UsageError(f"{name}: command not found")
        if Path(program).is_dir():
            raise UsageError(f"{name}: is a directory, not a command")
    except OSError as exc:  # a name too long for the file system, a loop of symlinks
        raise UsageError(f"{name}: cannot run: {exc.strerror or exc}") from None
    return program


def exec_job(command: list[str]) -> None:
    """Replace this process with `command` (its signals and exit code are the job's)."""
    program = find_program(command)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(program, command)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"{command[0]}: cannot run: {reason}") from None

"""Helpers shared by the test modules: the real console script in a clean environment, locks from facts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from envlock.capturing import build_lock
from envlock.facts import dumps_facts
from envlock.lockfile import dumps

BIN = Path(sys.executable).parent
ENVLOCK = BIN / ("envlock.exe" if os.name == "nt" else "envlock")
CREATED = "2024-01-01T00:00:00Z"
#: Variables a test run may inherit that would pick another lock or move the numbers.
NUMERIC_NOISE = ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "PYTHONHASHSEED", "SOURCE_DATE_EPOCH")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment, less anything that would pick another lock or change the numerics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVLOCK_") and k != "PYTHONPATH"}
    for name in NUMERIC_NOISE:
        env.pop(name, None)
    env.update(extra)
    return env


def console(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script, in a fresh process."""
    return subprocess.run([str(ENVLOCK), *map(str, args)], cwd=cwd, env=env if env is not None else clean_env(),
                          capture_output=True, text=True, timeout=180, check=False)


def write_lock(facts: dict[str, Any], path: Path, created: str = CREATED) -> Path:
    """The lock the facts imply, written where a user would keep it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(build_lock(facts, created=created), name=path.name), encoding="utf-8")
    return path


def write_facts(facts: dict[str, Any], path: Path) -> Path:
    """A facts dump, as `envlock facts -o` writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_facts(facts), encoding="utf-8")
    return path

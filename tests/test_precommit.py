"""The pre-commit hook: its entry, run as pre-commit runs it, passes sealed locks and names a broken one."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import clean_env, write_lock

HOOKS = Path(__file__).resolve().parent.parent / ".pre-commit-hooks.yaml"


def hook(name: str) -> dict[str, str]:
    """The keys of one hook in .pre-commit-hooks.yaml (flat `key: value` lines, as the file keeps them)."""
    block = HOOKS.read_text(encoding="utf-8").split(f"- id: {name}\n", 1)[1].split("\n- id: ", 1)[0]
    return dict(re.findall(r"^  (\w[\w-]*): (.*)$", block, re.M))


def test_the_hook_passes_sealed_locks_and_names_an_edited_one(machine_facts: dict[str, Any],
                                                              tmp_path: Path) -> None:
    good = write_lock(machine_facts, tmp_path / "envlock.lock")
    edited = tmp_path / "gpu.envlock.lock"
    edited.write_text(good.read_text().replace('implementation = "', 'implementation = "x', 1))
    entry = shlex.split(hook("envlock-check")["entry"])
    env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    ok = subprocess.run([*entry, str(good)], capture_output=True, text=True, env=env, check=False)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*entry, str(good), str(edited)], capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 2
    assert str(edited) in bad.stderr and str(good) + ":" not in bad.stderr


def test_the_hook_matches_lock_files_only() -> None:
    pattern = hook("envlock-check")["files"]
    matches = [p for p in ("envlock.lock", "ci/gpu.envlock.lock", "envlock.lock.bak", "pyproject.toml")
               if re.search(pattern, p)]
    assert matches == ["envlock.lock", "ci/gpu.envlock.lock"]

"""Progress on long work (capture's probe and --hashes, verify --deep, build): drawn on a terminal's stderr, never
into a pipe, never with -q or --json."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envlock.probes.packages import collect_packages
from envlock.progress import bar, wanted
from tests.helpers import ENVLOCK, at_a_terminal, clean_env, make_venv, run_ok, write_facts, write_lock
from tests.test_verify import build_wheel


@pytest.mark.slow
def test_verify_deep_shows_progress_at_a_terminal_only(console_lock: Path, tmp_path: Path) -> None:
    argv = [str(ENVLOCK), "verify", "--deep", "--fast", str(console_lock)]
    code, shown, _ = at_a_terminal(argv, tmp_path, stream="stderr")
    assert code in (0, 1)
    assert "re-hashing installed files" in shown
    piped = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=clean_env(), check=False)
    assert "re-hashing" not in piped.stderr
    _, quiet, _ = at_a_terminal([*argv, "-q"], tmp_path, stream="stderr")
    assert "re-hashing" not in quiet


def test_a_bar_that_is_not_wanted_draws_nothing_and_loads_no_rich(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    was_loaded = "rich.progress" in sys.modules
    with bar("work", 10, enabled=False) as advance:
        advance(5)
    assert capsys.readouterr().err == ""
    assert was_loaded or "rich.progress" not in sys.modules
    assert wanted(quiet=True) is False


def _tiny_lock_and_index(tmp_path: Path, machine_facts: dict[str, Any]) -> tuple[Path, Path, Path]:
    """(facts file with tiny-pkg as the only package, its lock, the find-links folder holding its wheel)."""
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "1.0")
    source = make_venv(tmp_path / "source")
    run_ok(sys.executable, "-m", "pip", "--python", source.python, "install", "--no-index", "--no-deps",
           "--find-links", wheels, "tiny-pkg==1.0")
    facts = copy.deepcopy(machine_facts)
    facts["packages"] = collect_packages([source.site])
    return write_facts(facts, tmp_path / "facts.json"), write_lock(facts, tmp_path / "tiny.lock"), wheels


@pytest.mark.slow
def test_capture_shows_the_probe_and_the_hashes_at_a_terminal_only(tmp_path: Path,
                                                                   machine_facts: dict[str, Any]) -> None:
    facts, _, wheels = _tiny_lock_and_index(tmp_path, machine_facts)
    index = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    argv = [str(ENVLOCK), "capture", "--facts", str(facts), "--hashes", "-o", str(tmp_path / "h.lock")]
    code, shown, _ = at_a_terminal(argv, tmp_path, stream="stderr", **index)
    assert code == 0, shown
    assert "asking the index for artifact hashes" in shown
    piped = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=clean_env(**index), check=False)
    assert piped.returncode == 0 and "asking the index" not in piped.stderr
    assert "\x1b[" not in piped.stderr
    code, quiet, _ = at_a_terminal([*argv, "-q"], tmp_path, stream="stderr", **index)
    assert code == 0 and "asking the index" not in quiet
    # The numerics probe of a real capture of this machine.
    probe = [str(ENVLOCK), "capture", "-o", str(tmp_path / "m.lock")]
    code, shown, _ = at_a_terminal(probe, tmp_path, stream="stderr")
    assert code == 0, shown
    assert "running the numerics probe" in shown
    _, quiet, _ = at_a_terminal([*probe, "--quiet"], tmp_path, stream="stderr")
    assert "running the numerics probe" not in quiet


@pytest.mark.slow
def test_build_shows_the_wheel_checks_at_a_terminal_only(tmp_path: Path, machine_facts: dict[str, Any]) -> None:
    _, lock, wheels = _tiny_lock_and_index(tmp_path, machine_facts)
    base = "registry.example/team/base:1@sha256:" + "c" * 64

    def argv(ctx: str) -> list[str]:
        return [str(ENVLOCK), "build", str(lock), "--base", base, "--context", str(tmp_path / ctx),
                "--wheelhouse", str(wheels)]

    cache = {"ENVLOCK_CACHE_DIR": str(tmp_path / "cache")}
    code, shown, _ = at_a_terminal(argv("ctx1"), tmp_path, stream="stderr", **cache)
    assert code == 0, shown
    assert "checking wheels" in shown
    piped = subprocess.run(argv("ctx2"), capture_output=True, text=True, cwd=tmp_path,
                           env=clean_env(**cache), check=False)
    assert piped.returncode == 0, piped.stderr
    assert "checking wheels" not in piped.stderr
    code, quiet, _ = at_a_terminal([*argv("ctx3"), "-q"], tmp_path, stream="stderr", **cache)
    assert code == 0 and "checking wheels" not in quiet

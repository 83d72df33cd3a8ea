"""The pytest plugin, through pytest itself (pytester runs a real pytest in a subprocess with the entry point)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_lock

pytest_plugins = ["pytester"]

SUITE = """
import sys
from pathlib import Path

def test_runs():
    Path("ran").write_text("yes")

def test_the_plugin_stays_out_of_the_way_unless_asked():
    if "--envlock" not in " ".join(sys.argv) and not any(a.startswith("--envlock") for a in sys.argv):
        assert "envlock.verifying" not in sys.modules
"""


@pytest.fixture
def lock(machine_facts: dict[str, Any], tmp_path: Path) -> Path:
    """A lock of this machine and process, as the pytest subprocess will see it."""
    return write_lock(machine_facts, tmp_path / "locks" / "envlock.lock")


@pytest.fixture
def other_lock(machine_facts: dict[str, Any], tmp_path: Path) -> Path:
    changed = copy.deepcopy(machine_facts)
    major, minor, *_ = changed["python"]["version"].split(".")
    changed["python"]["version"] = f"{major}.{int(minor) + 1}.0"
    return write_lock(changed, tmp_path / "other" / "envlock.lock")


@pytest.mark.slow
def test_a_matching_lock_lets_the_session_run_and_the_header_says_so(pytester: pytest.Pytester, lock: Path) -> None:
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess(f"--envlock={lock}", "--envlock-fast")
    result.assert_outcomes(passed=2)
    header = [line for line in result.outlines if line.startswith("envlock: ")]
    assert len(header) == 1 and header[0].startswith(f"envlock: {lock} (sha256:") and header[0].endswith(": OK")
    assert (pytester.path / "ran").exists()


@pytest.mark.slow
def test_a_mismatch_stops_the_session_before_any_test_with_the_report(pytester: pytest.Pytester,
                                                                      other_lock: Path) -> None:
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess(f"--envlock={other_lock}", "--envlock-fast")
    assert result.ret == 1
    text = result.stdout.str()
    assert f"envlock verify: MISMATCH: 1 error — {other_lock}" in text
    assert "error: python.version is" in text
    assert "the environment does not match the lock" in text
    assert not (pytester.path / "ran").exists()


@pytest.mark.slow
def test_warn_reports_and_runs_the_tests(pytester: pytest.Pytester, other_lock: Path) -> None:
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess(f"--envlock={other_lock}", "--envlock-fast", "--envlock-warn")
    result.assert_outcomes(passed=2)
    assert "envlock verify: MISMATCH" in result.stdout.str()
    assert any(line.endswith(": MISMATCH") and line.startswith("envlock: ") for line in result.outlines)


@pytest.mark.slow
def test_a_missing_lock_is_a_usage_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess(f"--envlock={tmp_path / 'nope.lock'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no such lock file" in result.stderr.str()
    assert not (pytester.path / "ran").exists()


@pytest.mark.slow
def test_without_the_option_the_plugin_does_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2)
    assert not [line for line in result.outlines if line.startswith("envlock: ")]


@pytest.mark.slow
def test_the_fixture_gives_tests_the_report(pytester: pytest.Pytester, lock: Path) -> None:
    pytester.makepyfile("""
def test_report(envlock_report):
    assert envlock_report.ok, str(envlock_report)
    assert envlock_report.target
""")
    result = pytester.runpytest_subprocess(f"--envlock={lock}", "--envlock-fast")
    result.assert_outcomes(passed=1)

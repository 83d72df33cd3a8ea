from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from envlock.cli import app

ROOT = Path(__file__).resolve().parent.parent

# The RECORD digest cache (envlock.probes.packages.DigestCache) of this test session lives in a folder of its own,
# never in the user's ~/.cache; subprocesses inherit it.
if "ENVLOCK_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["ENVLOCK_CACHE_DIR"] = tempfile.mkdtemp(prefix="envlock-test-cache-")
FIXTURES = ROOT / "fixtures"
SHARED = ROOT.parent / "shared"


class Cli:
    """Runs envlock in-process, the way a user would type it."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return self.runner.invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def _machine_facts() -> dict[str, Any]:
    from envlock.facts import collect_facts

    return collect_facts()


@pytest.fixture
def machine_facts(_machine_facts: dict[str, Any]) -> dict[str, Any]:
    """This machine's raw facts (collected once per session; each test gets its own copy)."""
    return copy.deepcopy(_machine_facts)


@pytest.fixture(scope="session")
def console_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lock of this machine captured by the real console script in a fresh, clean process (read-only for tests)."""
    from tests.helpers import console

    work = tmp_path_factory.mktemp("console")
    done = console("capture", "-o", "envlock.lock", cwd=work)
    assert done.returncode == 0, done.stderr
    return work / "envlock.lock"


@pytest.fixture(autouse=True)
def _clean_numeric_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from the environment the suite was launched with, minus a lock chosen by env var."""
    monkeypatch.delenv("ENVLOCK_LOCK", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def pytest_report_header() -> list[str]:
    return [f"envlock tests: shared/ {'found' if SHARED.is_dir() else 'absent'} at {SHARED}",
            f"cpu count: {os.cpu_count()}"]

"""The pytest plugin: `pytest --envlock[=LOCK]` verifies the environment before collection.

Registered through the `pytest11` entry point and off unless asked: without `--envlock` it adds its options and
the `envlock_report` fixture and does nothing else (importing this module loads nothing of envlock's).

- `pytest --envlock` (the lock: `$ENVLOCK_LOCK`, else `./envlock.lock`) or `pytest --envlock=path/to.lock`:
  a mismatch prints the report and stops the session before any test runs, exit status 1 (3 when the machine
  cannot be examined); a missing or invalid lock is a usage error (status 4).
- `--envlock-warn`: report, never stop. `--envlock-fast`: the job-start check (no torch import).
- The session header names the lock, its content hash, the target and the verdict.
- The `envlock_report` fixture gives a test the report (verifying then, when the session did not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from envlock.findings import Report

_KEY = pytest.StashKey["Report"]()
_HEADER = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("envlock", "envlock: check the environment against its lock")
    group.addoption("--envlock", action="store", nargs="?", const="", default=None, metavar="LOCK",
                    help="verify the environment against LOCK (default $ENVLOCK_LOCK, else ./envlock.lock) "
                         "before collecting tests; a mismatch stops the session")
    group.addoption("--envlock-warn", action="store_true", default=False,
                    help="with --envlock: report a mismatch, but run the tests")
    group.addoption("--envlock-fast", action="store_true", default=False,
                    help="with --envlock: check without importing torch or numpy (job-start mode)")


def _verify(config: pytest.Config) -> Report:
    from envlock.verifying import VerifyOptions, examine

    lock = config.getoption("envlock") or None
    return examine(lock, VerifyOptions(fast=bool(config.getoption("envlock_fast")))).report


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if config.getoption("envlock") is None:
        return
    from envlock.errors import EnvlockError, ExitCode, exit_for
    from envlock.report import render_text

    try:
        report = _verify(config)
    except EnvlockError as exc:
        code, message = exit_for(exc)
        if code == ExitCode.UNAVAILABLE:
            pytest.exit(f"envlock: {message}", returncode=int(ExitCode.UNAVAILABLE))
        raise pytest.UsageError(f"envlock: {message}") from None
    config.stash[_KEY] = report
    verdict = "OK" if report.ok else "MISMATCH"
    if report.ok and report.warnings:
        verdict = f"OK with {len(report.warnings)} warning{'s' if len(report.warnings) != 1 else ''}"
    config.stash[_HEADER] = f"envlock: {report.lock}{_hash(report.lock)}, target {report.target}: {verdict}"
    if report.ok and not report.warnings:
        return
    writer = config.pluginmanager.get_plugin("terminalreporter")
    for line in render_text(report):
        if writer is not None:
            writer.write_line(line)
    if not report.ok and not config.getoption("envlock_warn"):
        pytest.exit("envlock: the environment does not match the lock (--envlock-warn runs the tests anyway)",
                    returncode=int(ExitCode.MISMATCH))


def _hash(path: str) -> str:
    """`, sha256:…` of the lock's content hash, for the header ("" when it cannot be read again)."""
    from envlock.errors import EnvlockError
    from envlock.lockfile import load

    try:
        lock, _ = load(path)
    except EnvlockError:
        return ""
    return f" ({lock.lock.content_hash[:19]})"


def pytest_report_header(config: pytest.Config) -> list[str]:
    header = config.stash.get(_HEADER, "")
    return [header] if header else []


@pytest.fixture(scope="session")
def envlock_report(request: pytest.FixtureRequest) -> Any:
    """The envlock report of this session (from `--envlock`, or verified now against the default lock)."""
    report = request.config.stash.get(_KEY, None)
    if report is None:
        report = _verify(request.config)
        request.config.stash[_KEY] = report
    return report

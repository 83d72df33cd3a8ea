"""Progress on long work: drawn on a terminal's stderr, never into a pipe, never with -q or --json."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from envlock.progress import bar, wanted
from tests.helpers import ENVLOCK, at_a_terminal, clean_env


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

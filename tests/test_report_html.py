"""The HTML report in a real browser: Debian's chromium, headless, started by the test (skipped without it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from envlock.facts import load_facts
from tests.helpers import ENVLOCK, clean_env, write_lock

HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("ENVLOCK_REQUIRE_BROWSER") == "1":
    raise RuntimeError("ENVLOCK_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian's chromium package) on PATH")


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={page.parent / 'profile'}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)


def console_errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_the_console_check_sees_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>nosuch();</script></body></html>")
    assert console_errors(chromium(page, "--dump-dom"))


def test_the_html_diff_loads_clean_and_shows_the_causes(tmp_path: Path) -> None:
    facts: dict[str, Any] = load_facts(HOSTS / "linux-nogpu-nocuda-x86_64_v4-devbox" / "facts.json")
    a = write_lock(facts, tmp_path / "a.lock")
    facts["env"]["OMP_NUM_THREADS"] = "4"
    b = write_lock(facts, tmp_path / "b.lock")
    page = tmp_path / "diff.html"
    done = subprocess.run([str(ENVLOCK), "diff", str(a), str(b), "--format", "html", "-o", str(page)],
                          capture_output=True, text=True, env=clean_env(), check=False)
    assert done.returncode == 1, done.stderr
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: no external assets
    dom = chromium(page, "--dump-dom")
    assert console_errors(dom) == []
    assert 'data-ready="yes"' in dom.stdout  # the filter's script ran
    assert "OMP_NUM_THREADS is 4 in B, unset in A" in dom.stdout
    assert dom.stdout.count("<pre>") == 2  # the two locks side by side
    shot = tmp_path / "shot.png"
    picture = chromium(page, f"--screenshot={shot}", "--window-size=1280,900")
    assert console_errors(picture) == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 1280

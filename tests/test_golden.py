"""What the CLI prints for recorded machines, byte for byte: the report a user reads must not move by accident.

Each case runs one command over the recorded hosts in fixtures/ (no machine state is read) through the typer app,
and for verify and capture also through the job-start parse path, and compares exit code, stdout and stderr with
tests/golden/<case>.txt. After a change that is meant to change the output: ENVLOCK_WRITE_GOLDEN=1 pytest
tests/test_golden.py, then read the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli

GOLDEN = Path(__file__).resolve().parent / "golden"
HOSTS = "fixtures/hosts"
DEVBOX = f"{HOSTS}/linux-nogpu-nocuda-x86_64_v4-devbox"
ZEN3 = f"{HOSTS}/linux-nogpu-nocuda-zen3-ryzen5950x"
H100 = f"{HOSTS}/linux-nvidia550-cuda12.4-sapphirerapids-h100x8"
A100 = f"{HOSTS}/linux-nvidia535-cuda12.1-cascadelake-a100x2mig"
L4 = f"{HOSTS}/linux-nvidia550-cuda12.1-x86_64_v3-l4x2"
RTX = f"{HOSTS}/linux-nvidia560-cuda12.4-zen4-rtx4090"
GRAVITON = f"{HOSTS}/linux-nogpu-nocuda-neoverse_v1-graviton3"
SMI = "fixtures/nvidia-smi"

#: case name -> the command line (paths relative to the repository root; `WORK` is a scratch folder).
CASES: dict[str, list[str]] = {
    **{f"show-{Path(h).name}": ["show", f"{h}/expected.lock"] for h in (DEVBOX, H100, A100, L4, RTX, GRAVITON)},
    "verify-same-machine": ["verify", f"{DEVBOX}/expected.lock", "--facts", f"{DEVBOX}/facts.json"],
    "verify-same-machine-json": ["verify", f"{DEVBOX}/expected.lock", "--facts", f"{DEVBOX}/facts.json", "--json"],
    "verify-another-cpu": ["verify", f"{DEVBOX}/expected.lock", "--facts", f"{ZEN3}/facts.json"],
    "verify-another-cpu-json": ["verify", f"{DEVBOX}/expected.lock", "--facts", f"{ZEN3}/facts.json", "--json"],
    "verify-another-cpu-quiet": ["verify", "-q", f"{DEVBOX}/expected.lock", "--facts", f"{ZEN3}/facts.json"],
    "verify-another-arch": ["verify", f"{DEVBOX}/expected.lock", "--facts", f"{GRAVITON}/facts.json"],
    "verify-gpu-lost": ["verify", f"{H100}/expected.lock", "--facts", f"{DEVBOX}/facts.json"],
    "verify-h100-on-a100": ["verify", f"{H100}/expected.lock", "--facts", f"{A100}/facts.json"],
    "verify-l4-on-rtx": ["verify", f"{L4}/expected.lock", "--facts", f"{RTX}/facts.json"],
    "verify-h100-mig-report": ["verify", f"{H100}/expected.lock", "--facts", f"{H100}/facts.json",
                               "--facts", f"{SMI}/h100-80gb-hbm3-mig.xml"],
    "verify-ignore-warn": ["verify", f"{DEVBOX}/expected.lock", "--facts", f"{ZEN3}/facts.json",
                           "--ignore", "cpu.*", "--warn", "blas.*", "--warn", "blas.libraries.*.*"],
    "verify-fast-facts": ["verify", "--fast", f"{DEVBOX}/expected.lock", "--facts", f"{ZEN3}/facts.json"],
    "verify-missing-lock": ["verify", "WORK/nothing.lock", "--facts", f"{DEVBOX}/facts.json"],
    "verify-bad-pattern": ["verify", f"{DEVBOX}/expected.lock", "--facts", f"{DEVBOX}/facts.json",
                           "--ignore", "no such"],
    "verify-unknown-target": ["verify", f"{DEVBOX}/expected.lock", "--facts", f"{DEVBOX}/facts.json",
                              "--target", "nope"],
    "verify-lock-as-facts": ["verify", f"{DEVBOX}/expected.lock", "--facts", f"{DEVBOX}/expected.lock"],
    "diff-same": ["diff", f"{DEVBOX}/expected.lock", f"{DEVBOX}/expected.lock"],
    "diff-cpu": ["diff", f"{DEVBOX}/expected.lock", f"{ZEN3}/expected.lock"],
    "diff-cpu-json": ["diff", f"{DEVBOX}/expected.lock", f"{ZEN3}/expected.lock", "--json"],
    "diff-gpu": ["diff", f"{H100}/expected.lock", f"{A100}/expected.lock"],
    "diff-missing": ["diff", f"{DEVBOX}/expected.lock", "WORK/nothing.lock"],
    "capture-facts": ["capture", "--facts", f"{DEVBOX}/facts.json", "-o", "WORK/a.lock"],
    "capture-gpu-facts": ["capture", "--facts", f"{H100}/facts.json", "-o", "WORK/a.lock"],
    "capture-missing-facts": ["capture", "--facts", "WORK/none.json", "-o", "WORK/a.lock"],
}

#: Cases that run after another capture into the same scratch folder: (first command, then this one).
STAGED: dict[str, tuple[list[str], list[str]]] = {
    "capture-add-target": (["capture", "--facts", f"{DEVBOX}/facts.json", "-o", "WORK/a.lock"],
                           ["capture", "--add-target", "--facts", f"{ZEN3}/facts.json", "-o", "WORK/a.lock"]),
    "verify-two-targets-neither": (
        ["capture", "--facts", f"{DEVBOX}/facts.json", "-o", "WORK/a.lock"],
        ["verify", "WORK/a.lock", "--facts", f"{GRAVITON}/facts.json"],
    ),
    "show-recaptured": (["capture", "--facts", f"{DEVBOX}/facts.json", "-o", "WORK/a.lock"],
                        ["show", "WORK/a.lock"]),
}

FAST_COMMANDS = ("verify", "capture")


def _expand(args: list[str], work: Path) -> list[str]:
    return [a.replace("WORK", str(work)) for a in args]


def _typer(args: list[str]) -> tuple[int, str, str]:
    result = Cli()(*args)
    return result.exit_code, result.stdout, result.stderr


def _fast(args: list[str]) -> tuple[int, str, str]:
    from envlock.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def _shown(code: int, out: str, err: str, work: Path) -> str:
    text = f"exit {code}\n--- stdout\n{out}--- stderr\n{err}"
    return text.replace(str(work), "WORK")


def _setup(work: Path, before: list[str] | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if before:
        code, _, err = _typer(_expand(before, work))
        assert code == 0, err


def _check(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("ENVLOCK_WRITE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.is_file(), f"no golden output for {name}: run with ENVLOCK_WRITE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run from the repository root (the cases name fixtures relative to it); the scratch folder."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "work"


@pytest.mark.parametrize("name", sorted(CASES) + sorted(STAGED))
def test_cli_output_is_unchanged(name: str, at_root: Path) -> None:
    before, args = STAGED[name] if name in STAGED else (None, CASES[name])
    _setup(at_root, before)
    text = _shown(*_typer(_expand(args, at_root)), at_root)
    _check(name, text)
    if args[0] in FAST_COMMANDS:
        _setup(at_root, before)
        assert _shown(*_fast(_expand(args, at_root)), at_root) == text, "the job-start parse path prints otherwise"

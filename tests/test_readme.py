"""The README's recipes run as written, and its sample report is what the code prints.

A code block the README marks `<!-- readme-test: run -->` runs in a fresh folder holding a lock of this machine
(and a `train.py` that does nothing), with the venv's commands first on PATH: a bash block with `set -e`, a
python block with the venv's interpreter. The block marked `<!-- readme-test: sample of VAR=VALUE on HOST -->`
must be the verify report of that fixture host with that env var set, byte for byte (ENVLOCK_WRITE_GOLDEN=1
rewrites it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envlock.facts import load_facts
from envlock.report import render_text
from envlock.verifying import verify
from tests.helpers import clean_env, write_lock

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"<!-- readme-test: (?P<what>[^>]*?) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def blocks(kind: str) -> list[tuple[str, str, str]]:
    """(what the marker says, language, body) of every block marked `kind…`."""
    text = README.read_text(encoding="utf-8")
    return [(m["what"], m["lang"], m["body"]) for m in BLOCK.finditer(text) if m["what"].startswith(kind)]


RUNNABLE = blocks("run")


def test_the_readme_marks_its_recipes() -> None:
    assert len(RUNNABLE) >= 4
    assert {lang for _, lang, _ in RUNNABLE} == {"bash", "python"}


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize(("lang", "body"), [(lang, body) for _, lang, body in RUNNABLE],
                         ids=[f"{lang}-{i}" for i, (_, lang, _) in enumerate(RUNNABLE)])
def test_a_readme_recipe_runs_as_written(lang: str, body: str, console_lock: Path, tmp_path: Path) -> None:
    shutil.copy(console_lock, tmp_path / "envlock.lock")
    (tmp_path / "train.py").write_text("print('training')\n")
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if lang == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", body]
    else:
        argv = [sys.executable, "-c", body]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{body}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert "Traceback" not in done.stderr


def as_one_thread(facts: dict[str, Any], threads: int) -> None:
    """What a process started with OMP_NUM_THREADS=N sees: torch and every BLAS/OpenMP pool at N threads, and at
    N=1 each multi-threaded probe kernel giving the bits of its locked single-thread (-t1) variant."""
    facts["torch"]["num_threads"] = threads
    for pool in facts["blas"]["threadpool_info"]:
        pool["num_threads"] = threads
    kernels = facts["numerics"]["kernels"]
    for key, result in kernels.items():
        single = kernels.get(f"{key}-t1")
        if threads == 1 and single is not None:
            moved = ("output_sha256", "samples", "error_bits", "error_class")
            result.update({k: single[k] for k in moved if k in single})


def _sample_text(what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    match = re.fullmatch(r"sample of (\w+)=(\S+) on (\S+)", what)
    assert match, what
    name, value, host = match.groups()
    facts = load_facts(ROOT / host / "facts.json")
    lock = write_lock(facts, tmp_path / "envlock.lock")
    facts["env"][name] = value
    if name == "OMP_NUM_THREADS":
        as_one_thread(facts, int(value))
    monkeypatch.chdir(tmp_path)
    report = verify(lock.name, facts=facts)
    return "\n".join([f"$ {name}={value} envlock verify", *render_text(report)]) + "\n"


def test_the_sample_report_is_what_the_code_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (sample,) = blocks("sample")
    what, _, body = sample
    printed = _sample_text(what, tmp_path, monkeypatch)
    if os.environ.get("ENVLOCK_WRITE_GOLDEN") == "1":
        text = README.read_text(encoding="utf-8")
        README.write_text(text.replace(f"-->\n```\n{body}```", f"-->\n```\n{printed}```", 1), encoding="utf-8")
        body = printed
    assert body == printed

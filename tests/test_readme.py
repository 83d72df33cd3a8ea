"""The README's recipes run as written, and its sample report is what the code prints.

A code block the README marks `<!-- readme-test: run -->` runs in a fresh folder holding a lock of this machine
(and a `train.py` that does nothing, a `test_train.py` with one passing test, and `old.lock`, the lock of a fixture
host), with the venv's commands first on PATH: a bash block with `set -e`, a python block with the venv's
interpreter. `run with …` says what else the block needs, which the test sets up and then checks the block made:
`a lock that has its files` (a lock captured with `--hashes` from a local index, uv, no network), `mlflow` (a
local tracking store) or `wandb` (offline mode); a block whose tool is absent is skipped with the reason, or fails
under ENVLOCK_REQUIRE_<TOOL>=1. The `pre-commit config` block must name hooks that .pre-commit-hooks.yaml offers;
their entries run on the lock as pre-commit would. The block marked `<!-- readme-test: sample of VAR=VALUE on
HOST -->` must be the verify report of that fixture host with that env var set, byte for byte
(ENVLOCK_WRITE_GOLDEN=1 rewrites it).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envlock.facts import load_facts
from envlock.probes.packages import collect_packages
from envlock.report import render_text
from envlock.verifying import verify
from tests.helpers import clean_env, make_venv, run_ok, write_facts, write_lock
from tests.test_verify import build_wheel

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"<!-- readme-test: (?P<what>[^>]*?) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def blocks(kind: str) -> list[tuple[str, str, str]]:
    """(what the marker says, language, body) of every block marked `kind…`."""
    text = README.read_text(encoding="utf-8")
    return [(m["what"], m["lang"], m["body"]) for m in BLOCK.finditer(text) if m["what"].startswith(kind)]


RUNNABLE = blocks("run")
HOOKS = ROOT / ".pre-commit-hooks.yaml"
DEVBOX_LOCK = ROOT / "fixtures" / "hosts" / "linux-nogpu-nocuda-x86_64_v4-devbox" / "expected.lock"
#: What each `run with …` block needs: (the module or program, the ENVLOCK_REQUIRE_ suffix).
NEEDS = {"run with a lock that has its files": ("uv", "UV"), "run with mlflow": ("mlflow", "MLFLOW"),
         "run with wandb": ("wandb", "WANDB")}


def test_the_readme_marks_its_recipes() -> None:
    assert len(RUNNABLE) >= 4
    assert {lang for _, lang, _ in RUNNABLE} == {"bash", "python"}
    kinds = {what for what, _, _ in RUNNABLE}
    assert {what for what in kinds if what != "run"} <= set(NEEDS), kinds
    # "Use it with…": a recipe for each integration, each run.
    use = README.read_text(encoding="utf-8").split("## Use it with…\n", 1)[1].split("\n## ", 1)[0]
    for needle in ("--format pylock", "uv pip install", "--require-hashes", "pytest --envlock", "--format github",
                   "--format junit -o", "--format markdown", "--format html -o", "envlock.mlflow.log()",
                   "envlock.wandb.log()", "id: envlock-check"):
        assert any(needle in body for _, _, body in [*RUNNABLE, *blocks("pre-commit config")]), needle
        assert needle in use, needle


def _require(what: str) -> None:
    """Skip a block whose tool is absent (fail under ENVLOCK_REQUIRE_<TOOL>=1)."""
    if what not in NEEDS:
        return
    tool, flag = NEEDS[what]
    present = (BIN / tool).exists() if tool == "uv" else importlib.util.find_spec(tool) is not None
    if present:
        return
    if os.environ.get(f"ENVLOCK_REQUIRE_{flag}") == "1":
        pytest.fail(f"ENVLOCK_REQUIRE_{flag}=1 but {tool} is not installed")
    pytest.skip(f"{tool} is not installed (ENVLOCK_REQUIRE_{flag}=1 makes this a failure)")


def _lock_with_files(work: Path, aside: Path, machine_facts: dict[str, Any]) -> dict[str, str]:
    """Replace the folder's lock with one of a one-package environment captured with --hashes from a local
    index; the environment that lets pip, uv and `capture --hashes` use that index and nothing else."""
    wheels = aside / "index"
    build_wheel(wheels, "1.0")
    source = make_venv(aside / "source")
    run_ok(sys.executable, "-m", "pip", "--python", source.python, "install", "--no-index", "--no-deps",
           "--find-links", wheels, "tiny-pkg==1.0")
    facts = copy.deepcopy(machine_facts)
    facts["packages"] = collect_packages([source.site])
    write_facts(facts, aside / "facts.json")
    index = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
             "XDG_CACHE_HOME": str(aside / "cache"), "UV_OFFLINE": "1", "UV_NO_CONFIG": "1",
             "UV_CACHE_DIR": str(aside / "uv-cache"), "UV_PYTHON_DOWNLOADS": "never"}
    done = subprocess.run([str(BIN / "envlock"), "capture", "--facts", str(aside / "facts.json"), "--hashes", "-o",
                           str(work / "envlock.lock")], cwd=work, env=clean_env(**index), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return index


def _site(venv: Path) -> str:
    python = venv / "bin" / "python"
    return run_ok(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize(("what", "lang", "body"), RUNNABLE,
                         ids=[f"{lang}-{i}" for i, (_, lang, _) in enumerate(RUNNABLE)])
def test_a_readme_recipe_runs_as_written(what: str, lang: str, body: str, console_lock: Path, tmp_path: Path,
                                         machine_facts: dict[str, Any]) -> None:
    _require(what)
    work, aside = tmp_path / "work", tmp_path / "aside"
    work.mkdir()
    shutil.copy(console_lock, work / "envlock.lock")
    shutil.copy(DEVBOX_LOCK, work / "old.lock")
    (work / "train.py").write_text("print('training')\n")
    (work / "test_train.py").write_text("def test_loss():\n    assert 2 * 2 == 4\n")
    extra: dict[str, str] = {}
    if what == "run with a lock that has its files":
        extra = _lock_with_files(work, aside, machine_facts)
    elif what == "run with mlflow":
        extra = {"MLFLOW_TRACKING_URI": f"sqlite:///{aside / 'mlflow.db'}"}
        aside.mkdir()
    elif what == "run with wandb":
        extra = {"WANDB_MODE": "offline", "WANDB_DIR": str(aside), "WANDB_SILENT": "true",
                 "WANDB_DATA_DIR": str(aside / "data"), "WANDB_CACHE_DIR": str(aside / "cache"),
                 "WANDB_CONFIG_DIR": str(aside / "config")}
        aside.mkdir()
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    if lang == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", body]
    else:
        argv = [sys.executable, "-c", body]
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{body}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert "Traceback" not in done.stderr
    # What the block was for happened.
    if what == "run with a lock that has its files":
        for venv in ("job-env", "pip-env"):
            assert {p["name"]: p["version"] for p in collect_packages([_site(work / venv)])
                    if p["name"] not in ("pip", "setuptools")} == {"tiny-pkg": "1.0"}, venv  # venv seeds
    elif what == "run with mlflow":
        assert list(work.glob("**/artifacts/envlock/envlock.lock")) or list(aside.glob("**/envlock/envlock.lock"))
    elif what == "run with wandb":
        assert list(aside.glob("wandb/offline-run-*/run-*.wandb"))
    if "--format junit -o envlock.xml" in body:
        assert (work / "envlock.xml").read_text().startswith("<?xml")
        assert "| " in (work / "diff.md").read_text() and "<html" in (work / "diff.html").read_text().lower()


def test_the_pre_commit_sample_names_hooks_envlock_offers_and_they_pass_a_sealed_lock(
        machine_facts: dict[str, Any], tmp_path: Path) -> None:
    (config,) = blocks("pre-commit config")
    ids = re.findall(r"- id: ([\w-]+)", config[2])
    assert ids and "repo: https://github.com/" in config[2]
    offered = HOOKS.read_text(encoding="utf-8")
    lock = write_lock(machine_facts, tmp_path / "envlock.lock")
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for hook_id in ids:
        assert f"\n- id: {hook_id}\n" in offered, hook_id
        block = offered.split(f"- id: {hook_id}\n", 1)[1].split("\n- id: ", 1)[0]
        (entry,) = re.findall(r"^  entry: (.*)$", block, re.M)
        done = subprocess.run([*shlex.split(entry), str(lock)], capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr


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

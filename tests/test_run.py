"""`envlock run`: apply the lock's env vars, verify, then become the job — or refuse to start it."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envlock.facts import load_facts
from tests.helpers import clean_env, write_lock

pytestmark = pytest.mark.slow

CREATED = "2024-01-01T00:00:00Z"
ENVLOCK = Path(sys.executable).parent / ("envlock.exe" if os.name == "nt" else "envlock")
PY = sys.executable
MARKER_JOB = [PY, "-c", "open('started', 'w').close()"]



def envlock(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENVLOCK), *map(str, args)], cwd=cwd, env=env if env is not None else clean_env(),
                          capture_output=True, text=True, timeout=180, check=False)



@pytest.fixture(scope="module")
def locks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Locks built from facts a fresh console process saw: as seen, with OMP_NUM_THREADS=3, with a package moved."""
    root = tmp_path_factory.mktemp("run")
    done = envlock("facts", "-o", "facts.json", cwd=root)
    assert done.returncode == 0, done.stderr
    facts = load_facts(root / "facts.json")
    assert "OMP_NUM_THREADS" not in facts["env"]

    omp = copy.deepcopy(facts)
    omp["env"]["OMP_NUM_THREADS"] = "3"
    moved = copy.deepcopy(facts)
    (typer_pkg,) = [p for p in moved["packages"] if p["name"].lower() == "typer"]
    typer_pkg["version"] = "0.0.1"
    return {
        "clean": write_lock(facts, root / "clean.lock"),
        "omp": write_lock(omp, root / "omp.lock"),
        "moved": write_lock(moved, root / "moved.lock"),
    }


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    work = tmp_path / "job"
    work.mkdir()
    return work


def test_the_job_s_exit_code_is_passed_through(locks: dict[str, Path], job_dir: Path) -> None:
    # Full verify (torch and numpy imported, as a job would) and the fast job-start mode.
    full = envlock("run", "--lock", locks["clean"], "--", PY, "-c", "import sys; sys.exit(7)", cwd=job_dir)
    assert full.returncode == 7, full.stdout + full.stderr
    assert full.stderr == ""
    fast = envlock("run", "--fast", "--lock", locks["clean"], "--", PY, "-c", "import sys; sys.exit(7)", cwd=job_dir)
    assert fast.returncode == 7, fast.stderr


def test_the_job_replaces_envlock_and_gets_its_arguments_verbatim(locks: dict[str, Path], job_dir: Path) -> None:
    code = "import os, sys; print(os.getpid()); print(sys.argv[1:])"
    proc = subprocess.Popen(
        [str(ENVLOCK), "run", "--fast", "--lock", str(locks["clean"]), "--", PY, "-c", code, "--lock", "x", "--fast",
         "--", "-h"],
        cwd=job_dir, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    pid, argv = out.splitlines()
    assert int(pid) == proc.pid
    assert argv == "['--lock', 'x', '--fast', '--', '-h']"


def test_the_job_sees_the_lock_s_env_vars(locks: dict[str, Path], job_dir: Path) -> None:
    show = [PY, "-c", "import os; print(os.environ.get('OMP_NUM_THREADS', 'unset'))"]

    # Locked as 3, unset in the caller: the job gets 3 (and verify, run after the env is applied, agrees).
    done = envlock("run", "--fast", "--lock", locks["omp"], "--", *show, cwd=job_dir)
    assert (done.returncode, done.stdout.strip()) == (0, "3"), done.stderr

    # Locked as unset, set in the caller: the job does not see it.
    done = envlock("run", "--fast", "--lock", locks["clean"], "--", *show, cwd=job_dir,
                   env=clean_env(OMP_NUM_THREADS="5"))
    assert (done.returncode, done.stdout.strip()) == (0, "unset"), done.stderr


def test_a_mismatch_does_not_start_the_job(locks: dict[str, Path], job_dir: Path) -> None:
    done = envlock("run", "--fast", "--lock", locks["moved"], "--", *MARKER_JOB, cwd=job_dir)

    assert done.returncode == 1, done.stdout + done.stderr
    assert not (job_dir / "started").exists()
    assert done.stdout == ""
    assert "packages.typer.version" in done.stderr
    assert "pip install typer==0.0.1" in " ".join(done.stderr.split())
    assert "was not started" in done.stderr


def test_envlock_verify_warn_reports_and_starts_the_job(locks: dict[str, Path], job_dir: Path) -> None:
    done = envlock("run", "--fast", "--lock", locks["moved"], "--", *MARKER_JOB, cwd=job_dir,
                   env=clean_env(ENVLOCK_VERIFY="warn"))

    assert done.returncode == 0, done.stderr
    assert (job_dir / "started").exists()
    assert "packages.typer.version" in done.stderr
    assert "was not started" not in done.stderr


def test_envlock_verify_off_starts_the_job_without_a_check(locks: dict[str, Path], job_dir: Path) -> None:
    done = envlock("run", "--fast", "--lock", locks["moved"], "--", *MARKER_JOB, cwd=job_dir,
                   env=clean_env(ENVLOCK_VERIFY="off"))

    assert done.returncode == 0, done.stderr
    assert (job_dir / "started").exists()
    assert done.stderr == ""


def _one_error_line(done: subprocess.CompletedProcess[str], job_dir: Path) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert not (job_dir / "started").exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_bogus_envlock_verify_exits_2(locks: dict[str, Path], job_dir: Path) -> None:
    done = envlock("run", "--fast", "--lock", locks["clean"], "--", *MARKER_JOB, cwd=job_dir,
                   env=clean_env(ENVLOCK_VERIFY="bogus"))
    line = _one_error_line(done, job_dir)
    assert "ENVLOCK_VERIFY" in line and "bogus" in line


@pytest.mark.parametrize("tail", [(), ("--",)], ids=["nothing", "dashes-only"])
def test_run_without_a_command_exits_2(locks: dict[str, Path], job_dir: Path, tail: tuple[str, ...]) -> None:
    done = envlock("run", "--fast", "--lock", locks["clean"], *tail, cwd=job_dir)
    assert done.returncode == 2, done.stdout + done.stderr


def test_a_missing_lock_or_program_exits_2_without_starting(locks: dict[str, Path], job_dir: Path) -> None:
    missing = envlock("run", "--fast", "--lock", job_dir / "nope.lock", "--", *MARKER_JOB, cwd=job_dir)
    assert "nope.lock" in _one_error_line(missing, job_dir)

    unknown = envlock("run", "--fast", "--lock", locks["clean"], "--", "no-such-program-envlock-test", cwd=job_dir)
    assert "no-such-program-envlock-test" in _one_error_line(unknown, job_dir)

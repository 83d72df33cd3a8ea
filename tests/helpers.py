"""Helpers shared by the test modules: the real console script in a clean environment, locks from facts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

from envlock.capturing import build_lock
from envlock.facts import dumps_facts
from envlock.lockfile import dumps

BIN = Path(sys.executable).parent
ENVLOCK = BIN / ("envlock.exe" if os.name == "nt" else "envlock")
CREATED = "2024-01-01T00:00:00Z"
#: Variables a test run may inherit that would pick another lock or move the numbers.
NUMERIC_NOISE = ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "PYTHONHASHSEED", "SOURCE_DATE_EPOCH")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment, less anything that would pick another lock or change the numerics."""
    env = {k: v for k, v in os.environ.items()
           if (not k.startswith("ENVLOCK_") or k == "ENVLOCK_CACHE_DIR") and k != "PYTHONPATH"}
    for name in NUMERIC_NOISE:
        env.pop(name, None)
    env.update(extra)
    return env


def console(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script, in a fresh process."""
    return subprocess.run([str(ENVLOCK), *map(str, args)], cwd=cwd, env=env if env is not None else clean_env(),
                          capture_output=True, text=True, timeout=180, check=False)


def write_lock(facts: dict[str, Any], path: Path, created: str = CREATED) -> Path:
    """The lock the facts imply, written where a user would keep it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(build_lock(facts, created=created), name=path.name), encoding="utf-8")
    return path


def write_facts(facts: dict[str, Any], path: Path) -> Path:
    """A facts dump, as `envlock facts -o` writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_facts(facts), encoding="utf-8")
    return path


def run_ok(*args: str | Path) -> str:
    """Run a command offline (pip sees no index) and return its stdout; fail the test with its output otherwise."""
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


class Venv(NamedTuple):
    """A throwaway virtual environment without pip."""

    root: Path
    python: Path
    site: str


def make_venv(where: Path) -> Venv:
    """A fresh venv without pip (packages go in with this suite's pip: `pip --python VENV/bin/python`)."""
    run_ok(sys.executable, "-m", "venv", "--without-pip", where)
    python = where / ("Scripts" if os.name == "nt" else "bin") / "python"
    site = run_ok(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    return Venv(where, python, site)


def openblas_architecture(lock: Path) -> str:
    """The OpenBLAS core type numpy's BLAS had when `lock` was captured ("" when numpy's BLAS is not OpenBLAS)."""
    from envlock.lockfile import load

    loaded, _ = load(lock)
    (target,) = loaded.targets.values()
    found = [lib.architecture for lib in target.blas.libraries if lib.id == "numpy-openblas"]
    return found[0] if found else ""


def at_a_terminal(argv: list[str], cwd: Path, *, stream: str = "stdout", **env: str) -> tuple[int, str, str]:
    """Run `argv` with one stream (`stdout` or `stderr`) on a pseudo-terminal and the other piped: (exit code,
    what the terminal showed, what the pipe got)."""
    import pty

    main, child = pty.openpty()
    done = subprocess.Popen(argv, cwd=cwd, text=True, env=clean_env(TERM="xterm-256color", COLUMNS="100", **env),
                            stdout=child if stream == "stdout" else subprocess.PIPE,
                            stderr=child if stream == "stderr" else subprocess.PIPE)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed its side
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    out, err = done.communicate(timeout=300)
    return done.returncode, b"".join(chunks).decode("utf-8", "replace"), (err if stream == "stdout" else out) or ""

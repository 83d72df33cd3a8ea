"""Shared helpers for the benchmarks: time whole commands, alternating, and report medians."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Sequence


def installed_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an ordinary install: bytecode caches allowed (some shells here set
    PYTHONDONTWRITEBYTECODE, which would make every run recompile envlock's editable sources but not pip's)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra or {})
    return env


def time_command(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None) -> float:
    """Wall seconds one run of `argv` takes; fails loudly if the command fails."""
    env = env if env is not None else installed_env()
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    return time.perf_counter() - start


def compare(
    candidate: Sequence[str], baseline: Sequence[str], *, runs: int = 7, warmup: int = 1,
    env: dict[str, str] | None = None, cwd: str | None = None,
) -> tuple[list[float], list[float]]:
    """Run both commands `runs` times, alternating so both see the same machine state; return their times."""
    for _ in range(warmup):
        time_command(candidate, env=env, cwd=cwd)
        time_command(baseline, env=env, cwd=cwd)
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(time_command(candidate, env=env, cwd=cwd))
        theirs.append(time_command(baseline, env=env, cwd=cwd))
    return ours, theirs


def report(name: str, ours: list[float], base_name: str, theirs: list[float]) -> float:
    """Print medians and the ratio ours/theirs; return the ratio."""
    a, b = statistics.median(ours), statistics.median(theirs)
    ratio = a / b
    print(f"{name:<28} median {a * 1000:8.1f} ms  (min {min(ours) * 1000:.1f}, max {max(ours) * 1000:.1f})")
    print(f"{base_name:<28} median {b * 1000:8.1f} ms  (min {min(theirs) * 1000:.1f}, max {max(theirs) * 1000:.1f})")
    print(f"ratio {name} / {base_name}: {ratio:.2f}")
    return ratio


def wheel_install_of_this_venv(folder: str) -> str:
    """A copy of this venv in `folder` with envlock installed from its wheel, as its users install it; its python.

    The dev venv holds envlock as an editable install, whose import hook (setuptools' finder, loaded from a .pth at
    every interpreter start) costs this machine ~30 ms in every Python process: `python -c pass` included. The copy
    has every other distribution of this venv (hard links where `folder` is on the venv's file system, else a
    copy) and envlock's wheel, built from a clean copy of this tree's files (not from a `build/` left over)."""
    import glob
    import shutil
    import sys
    import sysconfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.path.join(folder, "venv")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", venv], check=True)  # type: ignore[attr-defined]
    site = sysconfig.get_path("purelib")
    target = sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv})
    for name in sorted(os.listdir(site)):
        if name.startswith("__editable__") or (name.startswith("envlock-") and name.endswith(".dist-info")):
            continue
        if subprocess.run(["cp", "-al", os.path.join(site, name), target], stderr=subprocess.DEVNULL).returncode:
            subprocess.run(["cp", "-a", os.path.join(site, name), target], check=True)  # another file system
    source = os.path.join(folder, "source")
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.so"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", folder, source])
    (wheel,) = glob.glob(os.path.join(folder, "envlock-*.whl"))
    python = os.path.join(venv, "bin", "python")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", wheel])
    return python


def _run(argv: Sequence[str]) -> None:
    """Run a set-up step quietly; when it fails, what it said and exit."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

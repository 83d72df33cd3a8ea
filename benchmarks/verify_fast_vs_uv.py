"""Time `envlock verify --fast` against `uv pip freeze` on the same venv, same run (issue 14's yardstick).

Usage: python benchmarks/verify_fast_vs_uv.py [--runs N]
uv is installed for the benchmark from the index into a temporary folder (`pip install --target`). Both commands
run with bytecode caches allowed, after one warm-up run each (envlock's RECORD digest cache and verdict memo are
then warm, as they are at every job start but the first). Measured twice: in this venv, where envlock is an
editable install (its import hook costs every interpreter start here), and in a copy of this venv where envlock is
installed from its wheel, as users install it (see _timing.wheel_install_of_this_venv). Goal: ratio <= 4 (stretch
3). Exit status 1 when the wheel install's ratio is above 4.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import compare, installed_env, report, wheel_install_of_this_venv


def measure(python: str, uv: str, folder: str, runs: int) -> float:
    """Capture a lock with the venv of `python`, then time verify --fast and python -c pass against uv; the ratio."""
    envlock = os.path.join(os.path.dirname(python), "envlock")
    os.makedirs(folder)
    lock = os.path.join(folder, "envlock.lock")
    env = installed_env({"ENVLOCK_CACHE_DIR": os.path.join(folder, "cache")})
    subprocess.run([envlock, "capture", "--no-numerics", "-o", lock], check=True, stdout=subprocess.DEVNULL, env=env)
    freeze = [uv, "pip", "freeze", "--python", python]
    count = len(subprocess.run(freeze, check=True, capture_output=True, text=True).stdout.splitlines())
    print(f"{count} distributions")
    ours, theirs = compare([envlock, "verify", "--fast", lock], freeze, runs=runs, env=env, cwd=folder)
    bare = compare([python, "-c", "pass"], freeze, runs=max(5, runs // 3), env=env, cwd=folder)
    ratio = report("envlock verify --fast", ours, "uv pip freeze", theirs)
    report("python -c pass", bare[0], "uv pip freeze", bare[1])
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", os.path.join(tmp, "uv"), "uv"], check=True)
        uv = os.path.join(tmp, "uv", "bin", "uv")
        print("== this venv (envlock installed editable)")
        measure(sys.executable, uv, os.path.join(tmp, "editable"), args.runs)
        print("== a copy of this venv with envlock installed from its wheel")
        ratio = measure(wheel_install_of_this_venv(os.path.join(tmp, "copy")), uv, os.path.join(tmp, "wheel"),
                        args.runs)
    print("goal: ratio <= 4 (stretch 3), for the wheel install")
    return 0 if ratio <= 4 else 1


if __name__ == "__main__":
    raise SystemExit(main())

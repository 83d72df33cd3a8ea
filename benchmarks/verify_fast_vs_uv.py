"""Time `envlock verify --fast` against `uv pip freeze` on the same venv, same run (issue 14's yardstick).

Usage: python benchmarks/verify_fast_vs_uv.py [--runs N]
uv is installed for the benchmark from the index into a temporary folder (`pip install --target`). Both commands
run with bytecode caches allowed, after one warm-up run each (envlock's RECORD digest cache is then warm, as it is
at every job start but the first). Goal: ratio <= 4 (stretch 3). Exit status 1 when the ratio is above 4.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import compare, installed_env, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    envlock = os.path.join(os.path.dirname(sys.executable), "envlock")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", os.path.join(tmp, "uv"), "uv"], check=True)
        uv = os.path.join(tmp, "uv", "bin", "uv")
        lock = os.path.join(tmp, "envlock.lock")
        env = installed_env({"ENVLOCK_CACHE_DIR": os.path.join(tmp, "cache")})
        subprocess.run([envlock, "capture", "--no-numerics", "-o", lock], check=True, stdout=subprocess.DEVNULL,
                       env=env)
        count = len(subprocess.run([uv, "pip", "freeze", "--python", sys.executable], check=True,
                                   capture_output=True, text=True).stdout.splitlines())
        print(f"{count} distributions")
        ours, theirs = compare([envlock, "verify", "--fast", lock], [uv, "pip", "freeze", "--python", sys.executable],
                               runs=args.runs, env=env, cwd=tmp)
        bare = compare([sys.executable, "-c", "pass"], [uv, "pip", "freeze", "--python", sys.executable],
                       runs=max(5, args.runs // 3), env=env, cwd=tmp)
    ratio = report("envlock verify --fast", ours, "uv pip freeze", theirs)
    report("python -c pass", bare[0], "uv pip freeze", bare[1])
    print("goal: ratio <= 4 (stretch 3)")
    return 0 if ratio <= 4 else 1


if __name__ == "__main__":
    raise SystemExit(main())

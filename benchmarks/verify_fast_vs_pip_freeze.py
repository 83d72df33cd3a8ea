"""Time `envlock verify --fast` against `python -m pip freeze` in the same environment and run.

Usage: python benchmarks/verify_fast_vs_pip_freeze.py [--runs N]
The goal: verify --fast takes at most half of pip freeze's wall time. Exit status 1 when it does not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import compare, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    envlock = os.path.join(os.path.dirname(sys.executable), "envlock")
    with tempfile.TemporaryDirectory() as tmp:
        lock = os.path.join(tmp, "envlock.lock")
        subprocess.run([envlock, "capture", "-o", lock], check=True, stdout=subprocess.DEVNULL)
        ours, theirs = compare([envlock, "verify", "--fast", lock], [sys.executable, "-m", "pip", "freeze"],
                               runs=args.runs, cwd=tmp)
    ratio = report("envlock verify --fast", ours, "pip freeze", theirs)
    print("goal: ratio <= 0.50")
    return 0 if ratio <= 0.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())

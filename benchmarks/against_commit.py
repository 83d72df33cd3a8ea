"""Time `envlock verify --fast` and `envlock capture` against the same commands of an earlier commit, same run.

Usage: python benchmarks/against_commit.py [--rev REV] [--runs N]
The earlier commit is checked out into a temporary git worktree and run from there (`python -m envlock` with that
tree first on PYTHONPATH), alternating with this tree, on one lock captured by this tree. The goal of a change that
restructures without adding work: both ratios at most 1.05. Exit status 1 when a ratio is above that.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import compare, installed_env, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD~1", help="the earlier commit (default HEAD~1)")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, "old")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", old, args.rev], check=True)
        try:
            new_env = installed_env({"PYTHONPATH": ROOT})
            lock = os.path.join(tmp, "envlock.lock")
            subprocess.run([sys.executable, "-m", "envlock", "capture", "-o", lock], check=True, env=new_env,
                           stdout=subprocess.DEVNULL)
            for title, argv, runs in (("verify --fast", ["verify", "--fast", lock], args.runs),
                                      ("capture", ["capture", "--force", "-o", os.path.join(tmp, "x.lock")],
                                       max(3, args.runs // 3))):
                ours, theirs = compare([sys.executable, "-m", "envlock", *argv],
                                       ["env", f"PYTHONPATH={old}", sys.executable, "-m", "envlock", *argv],
                                       runs=runs, env=new_env, cwd=tmp)
                worst = max(worst, report(f"{title} (this tree)", ours, f"{title} ({args.rev})", theirs))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old], check=False)
    print("goal: each ratio <= 1.05")
    return 0 if worst <= 1.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())

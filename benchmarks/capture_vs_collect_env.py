"""Time `envlock capture` against `python -m torch.utils.collect_env` in the same environment and run.

Usage: python benchmarks/capture_vs_collect_env.py [--runs N]
Both import torch; capture must take less wall time while recording more (a lock, not a report).
Exit status 1 when capture is not faster, so the figure cannot silently regress.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import compare, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lock = os.path.join(tmp, "envlock.lock")
        ours, theirs = compare(
            [sys.executable, "-m", "envlock", "capture", "-o", lock, "--force"],
            [sys.executable, "-m", "torch.utils.collect_env"],
            runs=args.runs,
            cwd=tmp,
        )
    ratio = report("envlock capture", ours, "torch collect_env", theirs)
    return 0 if ratio < 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Time `envlock verify --deep --fast` against parallel `openssl dgst -sha256` over the same files, same run.

Usage: python benchmarks/deep_vs_openssl.py [--runs N]
The files are those --deep re-hashes: every RECORD-listed file (byte code left out) of every package this venv
has. openssl runs on every core (`xargs -P NCPU`, 64 files per call). The goal (issue 14): ratio <= 1.1. Both
commands read from the page cache after a warm-up run. Exit status 1 when the ratio is above the goal.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import compare, report

from envlock.deep import record_checks
from envlock.probes.packages import collect_packages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    envlock = os.path.join(os.path.dirname(sys.executable), "envlock")
    files = []
    for item in collect_packages(digests=False):
        if str(item.get("metadata_dir", "")).endswith(".dist-info"):
            checks, _ = record_checks(item["name"], item["location"], item["metadata_dir"])
            files.extend(c.full for c in checks if os.path.isfile(c.full))
    size = sum(os.path.getsize(f) for f in files)
    print(f"{len(files)} files, {size / 2**30:.2f} GiB, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        lock = os.path.join(tmp, "envlock.lock")
        subprocess.run([envlock, "capture", "--no-numerics", "-o", lock], check=True, stdout=subprocess.DEVNULL)
        listing = os.path.join(tmp, "files.txt")
        with open(listing, "w", encoding="utf-8") as handle:
            handle.write("\0".join(files))
        openssl = ["sh", "-c", f"xargs -0 -P {os.cpu_count() or 1} -n 64 openssl dgst -sha256 < {listing}"]
        ours, theirs = compare([envlock, "verify", "--deep", "--fast", lock], openssl, runs=args.runs, cwd=tmp)
    ratio = report("envlock verify --deep --fast", ours, "openssl dgst -sha256 (parallel)", theirs)
    print("goal: ratio <= 1.10")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())

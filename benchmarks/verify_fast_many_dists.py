"""`envlock verify --fast` on synthetic environments of 500, 1,000 and 2,000 installed distributions.

Usage: python benchmarks/verify_fast_many_dists.py
Each distribution is a generated .dist-info folder (METADATA + a 20-file RECORD) and its 20 files, in a folder put
on PYTHONPATH (verify compares every file's size with RECORD: 40,000 stats at 2,000 distributions).
The goal (issue 14): under 0.3 s at 2,000 distributions, growing linearly. Exit status 1 when over 0.3 s.
"""

from __future__ import annotations

import base64
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import installed_env

SIZES = (500, 1000, 2000)
#: Seconds a verify --fast of 2,000 distributions may take (issue 14).
GOAL_S = 0.3


def make_site(folder: str, count: int) -> None:
    """Write `count` fake installed distributions into `folder`."""
    for i in range(count):
        name = f"synthetic_pkg_{i:05d}"
        info = os.path.join(folder, f"{name}-1.{i % 7}.0.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as handle:
            handle.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.{i % 7}.0\n\nA synthetic package.\n")
        rows = []
        os.makedirs(os.path.join(folder, name))
        for j in range(20):
            body = (f"# {i}/{j}\n".encode() + b"x" * 100)[: 100 + j]
            with open(os.path.join(folder, name, f"module_{j}.py"), "wb") as handle:
                handle.write(body)
            digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
            rows.append(f"{name}/module_{j}.py,sha256={digest},{len(body)}")
        rows.append(f"{name}/__pycache__/module_0.cpython-311.pyc,,")
        rows.append(f"../../../bin/{name},sha256=abc,10")
        rows.append(f"{name}-1.{i % 7}.0.dist-info/RECORD,,")
        with open(os.path.join(info, "RECORD"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(rows) + "\n")


def time_verify(envlock: str, lock: str, env: dict[str, str], runs: int = 5) -> float:
    """Median wall seconds of `envlock verify --fast LOCK`."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([envlock, "verify", "--fast", "-q", lock], env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    envlock = os.path.join(os.path.dirname(sys.executable), "envlock")
    results = []
    for count in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            site = os.path.join(tmp, "site")
            os.makedirs(site)
            make_site(site, count)
            env = installed_env({"PYTHONPATH": site})
            lock = os.path.join(tmp, "envlock.lock")
            subprocess.run([envlock, "capture", "--no-torch", "-o", lock], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            seconds = time_verify(envlock, lock, env)
            results.append((count, seconds))
            print(f"{count:>6} distributions: verify --fast median {seconds * 1000:7.1f} ms "
                  f"({seconds / count * 1e6:.0f} µs per distribution)")
    (n1, t1), (n2, t2) = results[0], results[-1]
    print(f"growth {n1} → {n2} distributions: time ×{t2 / t1:.2f} for ×{n2 / n1:.0f} the distributions")
    return 0 if t2 < GOAL_S else 1


if __name__ == "__main__":
    raise SystemExit(main())

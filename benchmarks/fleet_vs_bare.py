"""The fleet check's cost at job start: a torchrun job of N `envlock verify --distributed --fast` ranks against the
same torchrun job of N bare workers that only `import torch` (issue 14, goal 4: at most 1.2 times as long).

Usage: python benchmarks/fleet_vs_bare.py [--ranks 16] [--runs 3]
Both jobs run under the same torchrun (`--standalone`), alternating, after one warm-up each; the script prints the
median wall time of each job, the ratio, and the per-rank cost above a bare worker ((fleet - bare) / ranks: the
rank's own verify plus the exchange, both spread over the machine's cores). On a machine with fewer cores than
ranks both jobs are mostly N torch imports competing for the cores. Exit status 1 when the ratio is above 1.2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import installed_env, time_command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bindir = os.path.dirname(sys.executable)
    env = installed_env({"OMP_NUM_THREADS": "1"})  # what torchrun sets for its workers; captured the same way
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    torchrun = os.path.join(bindir, "torchrun")
    with tempfile.TemporaryDirectory() as tmp:
        env["ENVLOCK_CACHE_DIR"] = os.path.join(tmp, "cache")
        lock = os.path.join(tmp, "envlock.lock")
        subprocess.run([os.path.join(bindir, "envlock"), "capture", "--no-numerics", "-o", lock], check=True,
                       stdout=subprocess.DEVNULL, env=env, cwd=tmp)
        bare_script = os.path.join(tmp, "bare.py")
        with open(bare_script, "w", encoding="utf-8") as handle:
            handle.write("import torch  # what every rank of a training job does first\n")
        start = [torchrun, "--standalone", "--nproc-per-node", str(args.ranks)]
        fleet_job = [*start, "-m", "envlock", "verify", "--distributed", "--fast", "-q", lock]
        bare_job = [*start, bare_script]
        for argv in (fleet_job, bare_job):  # warm the page cache and envlock's RECORD cache
            time_command(argv, env=env, cwd=tmp)
        fleet, bare = [], []
        for _ in range(args.runs):
            fleet.append(time_command(fleet_job, env=env, cwd=tmp))
            bare.append(time_command(bare_job, env=env, cwd=tmp))
    a, b = statistics.median(fleet), statistics.median(bare)
    print(f"machine: {os.cpu_count()} CPUs, {args.ranks} ranks, {args.runs} runs each, alternating")
    print(f"torchrun {args.ranks} x envlock verify --distributed --fast  median {a:6.2f} s "
          f"(min {min(fleet):.2f}, max {max(fleet):.2f})")
    print(f"torchrun {args.ranks} x python bare.py (import torch)        median {b:6.2f} s "
          f"(min {min(bare):.2f}, max {max(bare):.2f})")
    print(f"ratio fleet / bare: {a / b:.2f} (goal <= 1.2); per rank above a bare worker: "
          f"{(a - b) / args.ranks * 1000:.0f} ms of wall time")
    return 0 if a / b <= 1.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""`envlock capture` (probe included) and full `envlock verify` against the floor they cannot go under: an
interpreter that only imports torch and numpy (issue 14, goal 2: within 5 %).

Usage: python benchmarks/capture_vs_torch_import.py [--runs N]
The three commands run alternating, after one warm-up each, with bytecode caches allowed. Prints the medians and
each ratio against `python -c "import torch, numpy"`. Exit status 1 when a ratio is above 1.05.
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
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    envlock = os.path.join(os.path.dirname(sys.executable), "envlock")
    with tempfile.TemporaryDirectory() as tmp:
        env = installed_env({"ENVLOCK_CACHE_DIR": os.path.join(tmp, "cache")})
        lock = os.path.join(tmp, "envlock.lock")
        subprocess.run([envlock, "capture", "-o", lock], check=True, stdout=subprocess.DEVNULL, env=env, cwd=tmp)
        commands = {
            'python -c "import torch, numpy"': [sys.executable, "-c", "import torch, numpy"],
            "envlock capture (probe included)": [envlock, "capture", "--force", "-q", "-o",
                                                 os.path.join(tmp, "again.lock")],
            "envlock verify (full)": [envlock, "verify", "-q", lock],
        }
        for argv in commands.values():
            time_command(argv, env=env, cwd=tmp)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(time_command(argv, env=env, cwd=tmp))
    floor = statistics.median(times['python -c "import torch, numpy"'])
    worst = 0.0
    for name, values in times.items():
        median = statistics.median(values)
        ratio = median / floor
        worst = max(worst, ratio)
        print(f"{name:<36} median {median * 1000:7.0f} ms (min {min(values) * 1000:.0f}, "
              f"max {max(values) * 1000:.0f})  ratio {ratio:.2f}")
    print("goal: capture and verify within 1.05 of the torch + numpy import")
    return 0 if worst <= 1.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Time `envlock build`: a first build without the engine's cache, then a no-change rebuild.

Usage: python benchmarks/build_time.py   (needs a running Docker Engine and scripts/docker-test-base.sh's base image)
It makes a wheelhouse on the host (envlock's own wheel and its dependencies, plus six), captures a lock inside a
Python environment of the base image, then builds that lock twice and prints both times and their ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = os.environ.get("ENVLOCK_TEST_BASE", "envlock-test-base:bookworm")
PLATFORMS = ("manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def run(*argv: str) -> str:
    """Run a command, fail loudly, return its stdout."""
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def main() -> int:
    envlock = str(Path(sys.executable).parent / "envlock")
    base_id = run("docker", "image", "inspect", "-f", "{{.Id}}", BASE).strip()
    with tempfile.TemporaryDirectory() as tmp:
        wheels, out = Path(tmp, "wheels"), Path(tmp, "out")
        wheels.mkdir()
        out.mkdir()
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(wheels))
        platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
        own = next(wheels.glob("envlock-*.whl"))
        run(sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), "--only-binary", ":all:",
            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *platform_args, str(own),
            "six==1.16.0")
        script = ("python3 -m venv /installer && python3 -m venv --without-pip /venv && /installer/bin/python -m pip "
                  "-q --python /venv/bin/python install --no-index --find-links /wheels envlock six==1.16.0 && "
                  "cd /tmp && /venv/bin/envlock capture --no-numerics -o /out/envlock.lock")
        run("docker", "run", "--rm", "--network", "none", "-v", f"{wheels}:/wheels:ro", "-v", f"{out}:/out",
            base_id, "sh", "-c", script)
        lock = str(out / "envlock.lock")
        tag = f"envlock-bench:{os.getpid()}"
        common = [envlock, "build", lock, "--tag", tag, "--base", base_id, "--wheelhouse", str(wheels)]
        start = time.perf_counter()
        run(*common, "--no-cache")
        first = time.perf_counter() - start
        start = time.perf_counter()
        run(*common)
        again = time.perf_counter() - start
        run("docker", "image", "rm", "-f", tag)
    print(f"{'first build (no cache)':<28} {first:7.1f} s")
    print(f"{'no-change rebuild':<28} {again:7.1f} s")
    print(f"ratio rebuild / first build: {again / first:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

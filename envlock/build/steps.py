"""Build steps that run inside the image's first stage, with the base's python3 and the standard library only.

This file is copied into the build context as `steps.py` and run as `python steps.py seeds|origins`; it reads
`plan.json` next to it (written by the host from the lock, never part of the Dockerfile) and imports nothing of
envlock, since envlock is not installed yet when it runs.

- `seeds`: the job's venv was made with the base's `python3 -m venv`, which seeds pip (and setuptools) from the
  base's own Python. Each seed the lock takes from there must have the locked version and files digest; every
  other seed is removed (the lock does not have it, or a checked wheel replaces it).
- `origins`: each installed distribution that the lock records as coming from somewhere other than an index gets
  the lock's `direct_url.json` (PEP 610), so the image records the origin its lock has.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from typing import Any

VENV = "/opt/venv"
INSTALLER = "/opt/envlock-installer"
PREFIX = "envlock-build: "  # the host's build stream picks the failure line out by this prefix
_INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "RECORD", "direct_url.json", "uv_cache.json"})


def canonical(name: str) -> str:
    """The PEP 503 normalized form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _kept(path: str, dist_info: str) -> bool:
    if path[:3] == "../" or path[:1] == "/" or (len(path) > 1 and path[1] == ":"):
        return False
    if path.endswith((".pyc", ".pyo")) or "/__pycache__/" in f"/{path}":
        return False
    if path.startswith("__editable__"):
        return False
    top, _, leaf = path.partition("/")
    return not (top == dist_info and leaf in _INSTALLER_FILES)


def files_digest(record_text: str, dist_info: str) -> str:
    """The lock's `files` digest of an installed RECORD (the same as envlock.probes.packages.record_digest)."""
    lines = []
    for row in csv.reader(record_text.splitlines()):
        if len(row) < 2 or not row[1]:
            continue
        path = row[0].replace("\\", "/")
        if _kept(path, dist_info):
            lines.append(f"{path} {row[1]}\n")
    lines.sort()
    return "sha256:" + hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def site_packages() -> str:
    """The job venv's site-packages folder."""
    lib = os.path.join(VENV, "lib")
    (folder,) = [os.path.join(lib, n, "site-packages") for n in sorted(os.listdir(lib)) if n.startswith("python")]
    return folder


def installed(site: str) -> dict[str, tuple[str, str]]:
    """canonical name -> (version, dist-info folder) of every distribution in `site`."""
    out: dict[str, tuple[str, str]] = {}
    for entry in sorted(os.listdir(site)):
        if not entry.endswith(".dist-info"):
            continue
        name = version = ""
        with open(os.path.join(site, entry, "METADATA"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                if key == "Name" and not name:
                    name = value.strip()
                elif key == "Version" and not version:
                    version = value.strip()
        if name:
            out[canonical(name)] = (version, entry)
    return out


def fail(message: str) -> int:
    """Print the one failure line the host shows, and the exit status of a failed step."""
    print(PREFIX + message, flush=True)
    return 1


def seeds(plan: dict[str, Any], site: str) -> int:
    """Keep the seeds the lock takes from the base (checked), remove every other one."""
    present = installed(site)
    wanted: dict[str, Any] = plan.get("seeds", {})
    for name in sorted(wanted):
        locked = wanted[name]
        if name not in present:
            return fail(
                f"packages.{name}: the lock has {name} {locked['version']} from {locked['origin']}, but this base "
                f"image's `python3 -m venv` does not seed {name}; put the locked wheel in --wheelhouse"
            )
        version, dist_info = present[name]
        with open(os.path.join(site, dist_info, "RECORD"), encoding="utf-8", errors="replace") as handle:
            digest = files_digest(handle.read(), dist_info)
        if version != locked["version"] or (locked["files"] and digest != locked["files"]):
            why = locked.get("index", "")
            return fail(
                f"packages.{name}: the lock has {name} {locked['version']} from {locked['origin']} "
                f"(files {locked['files'][:19]}…), this base image's `python3 -m venv` seeds {name} {version} "
                f"(files {digest[:19]}…){'; ' + why if why else ''}: build from a base whose Python seeds the "
                f"locked {name}, or put the locked wheel in --wheelhouse"
            )
    extra = sorted(name for name in present if name not in wanted)
    if extra:
        command = [f"{INSTALLER}/bin/python", "-m", "pip", "--python", f"{VENV}/bin/python", "uninstall", "-y",
                   "-q", *extra]
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            return fail(f"removing the seeds the lock does not take from the base failed: {', '.join(extra)}")
    return 0


def origins(plan: dict[str, Any], site: str) -> int:
    """Write the lock's direct_url.json into each installed distribution that has a non-index origin."""
    present = installed(site)
    for name, direct_url in sorted(plan.get("origins", {}).items()):
        if name not in present:
            return fail(f"packages.{name}: not installed, cannot record its origin")
        dist_info = os.path.join(site, present[name][1])
        with open(os.path.join(dist_info, "direct_url.json"), "w", encoding="utf-8") as handle:
            json.dump(direct_url, handle, sort_keys=True)
        with open(os.path.join(dist_info, "RECORD"), "a", encoding="utf-8") as handle:
            handle.write(f"{present[name][1]}/direct_url.json,,\n")
    return 0


def main(argv: list[str]) -> int:
    """Run one step; its exit status."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "plan.json"), encoding="utf-8") as handle:
        plan = json.load(handle)
    steps = {"seeds": seeds, "origins": origins}
    if len(argv) != 1 or argv[0] not in steps:
        return fail("usage: steps.py seeds|origins")
    return steps[argv[0]](plan, site_packages())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

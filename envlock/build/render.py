"""The Dockerfile and requirements file of a build. Pure: only values of closed grammars reach the Dockerfile."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from envlock.errors import LockError
from envlock.model import Package
from envlock.probes.floats import NUMERIC_ENV_VARS

LOCK_PATH = "/etc/envlock/envlock.lock"
VENV = "/opt/venv"
INSTALLER = "/opt/envlock-installer"  # pip lives here, in the first stage only: the job's venv holds the lock alone
_PIP = [f"{INSTALLER}/bin/python", "-m", "pip", "--python", f"{VENV}/bin/python"]
PIP_INSTALL = json.dumps([*_PIP, "install", "--no-index", "--find-links", "/opt/envlock-build/wheels",
                          "--require-hashes", "--no-deps", "--only-binary", ":all:",
                          "-r", "/opt/envlock-build/requirements.txt"])
PIP_CHECK = json.dumps([*_PIP, "check"])
BUILD_DIR = "/opt/envlock-build"
STEPS_FILE, PLAN_FILE = "steps.py", "plan.json"
# Installer seeds: what `python3 -m venv` puts into a venv from the Python that makes it (pip-tools' "unsafe"
# packages). A distribution's Python seeds its own builds (Debian: /usr/share/python-wheels), unlike the index's.
SEEDS = frozenset({"pip", "setuptools", "wheel"})
_ENV_VALUE = re.compile(r"[A-Za-z0-9:._,+=/-]{0,64}")
_CANONICAL = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,127}")
_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Requirement:
    """One locked distribution as it is installed: a pinned name and the sha256 of the wheel used."""

    name: str
    version: str
    wheel: str
    sha256: str


def render_requirements(requirements: list[Requirement]) -> str:
    """`name==version --hash=sha256:...` lines, sorted; every field checked against its grammar."""
    lines = []
    for req in sorted(requirements, key=lambda r: r.name):
        if not (_CANONICAL.fullmatch(req.name) and _PIN.fullmatch(req.version) and _SHA.fullmatch(req.sha256)):
            raise LockError("requirements", f"refusing to write a requirement for {req.name!r}", f"packages.{req.name}")
        lines.append(f"{req.name}=={req.version} --hash=sha256:{req.sha256}\n")
    return "".join(lines)


def lock_env(env: dict[str, tuple[bool, str]], lock_name: str) -> list[tuple[str, str]]:
    """The numerics env vars to set in the image: the fixed list envlock knows, values of a closed grammar. A lock's
    own `extra_env` is never set: a lock is untrusted, and a name such as LD_PRELOAD must not reach an image."""
    out = []
    for name in NUMERIC_ENV_VARS:
        is_set, value = env.get(name, (False, ""))
        if not is_set:
            continue
        if not _ENV_VALUE.fullmatch(value):
            raise LockError(lock_name, f"value {value!r} cannot be set in an image", f"floats.env.{name}")
        out.append((name, value))
    return out


def render_dockerfile(base: str, env: list[tuple[str, str]], *, lock_sha256: str, seeded: bool = False,
                      origins: bool = False) -> str:
    """A two-stage Dockerfile: wheels are installed in the first stage and never reach the final layers.

    `seeded`: the job's venv is made with the base's pip seeds, which `steps.py seeds` checks against the lock;
    `origins`: `steps.py origins` writes the lock's origin of each non-index package into the venv.
    """
    env_lines = "".join(f"ENV {name}={value}\n" for name, value in env)
    steps = seeded or origins
    copy_steps = f"COPY {STEPS_FILE} {PLAN_FILE} {BUILD_DIR}/\n" if steps else ""
    venv = f'RUN ["python3", "-m", "venv", "{VENV}"]\n' if seeded else \
        f'RUN ["python3", "-m", "venv", "--without-pip", "{VENV}"]\n'
    check_seeds = f"RUN {_step('seeds')}\n" if seeded else ""
    write_origins = f"RUN {_step('origins')}\n" if origins else ""
    return f"""\
FROM {base} AS install
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
COPY wheels/ /opt/envlock-build/wheels/
COPY requirements.txt /opt/envlock-build/requirements.txt
{copy_steps}RUN ["python3", "-m", "venv", "{INSTALLER}"]
{venv}{check_seeds}RUN {PIP_INSTALL}
{write_origins}RUN {PIP_CHECK}

FROM {base}
COPY --from=install {VENV} {VENV}
COPY envlock.lock {LOCK_PATH}
ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV ENVLOCK_LOCK={LOCK_PATH} ENVLOCK_LOCK_SHA256={lock_sha256}
{env_lines}ENTRYPOINT ["{VENV}/bin/envlock", "run", "--"]
CMD ["/bin/sh"]
"""


def _step(name: str) -> str:
    return json.dumps([f"{INSTALLER}/bin/python", f"{BUILD_DIR}/{STEPS_FILE}", name])


def direct_url(package: Package) -> dict[str, Any]:
    """The PEP 610 `direct_url.json` that records the package's locked origin (parse_source reads it back)."""
    if package.source == "vcs":
        vcs = "hg" if package.url.startswith("hg+") else "svn" if package.url.startswith("svn+") else "git"
        info: dict[str, Any] = {"vcs": vcs}
        if package.commit:
            info["commit_id"] = package.commit
        return {"url": package.url, "vcs_info": info}
    if package.source == "editable":
        return {"url": package.url, "dir_info": {"editable": True}}
    if package.source == "local" and not package.url.endswith((".whl", ".zip", ".tar.gz")):
        return {"url": package.url, "dir_info": {}}
    return {"url": package.url, "archive_info": {}}


def render_plan(packages: dict[str, Package], seeded: dict[str, str]) -> str:
    """plan.json for steps.py: the seeds taken from the base (name -> why no wheel was used) and the origins."""
    plan: dict[str, Any] = {"seeds": {}, "origins": {}}
    for name, why in sorted(seeded.items()):
        package = packages[name]
        origin = "an index" if package.source == "index" else f"{package.source} {package.url}".strip()
        plan["seeds"][name] = {"version": package.version, "files": package.files, "origin": origin, "index": why}
    for name, package in sorted(packages.items()):
        if package.source != "index":
            plan["origins"][name] = direct_url(package)
    return json.dumps(plan, indent=1, sort_keys=True) + "\n"

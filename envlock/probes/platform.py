"""The operating system: kernel, libc, distribution, and whether we run in a container."""

from __future__ import annotations

import os

from envlock._raw import get
from envlock.probes import host

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    from typing import Any

    from envlock.model import PlatformSection

CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")


def _read(path: str, limit: int = 8192) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(limit)
    except OSError:
        return None


def collect_platform() -> dict[str, Any]:
    """Raw facts about the OS around the process."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        libc = ""
    return {
        "system": host.system(),
        "machine": host.machine(),
        "release": host.release(),
        "libc": libc,
        "os_release": _read("/etc/os-release"),
        "markers": [path for path in CONTAINER_MARKERS if os.path.exists(path)],
        "container_env": os.environ.get("container", ""),
        "kubernetes": "KUBERNETES_SERVICE_HOST" in os.environ,
        "cgroup": _read("/proc/1/cgroup", 4096),
    }


def parse_os_release(text: str) -> str:
    """`ID VERSION_ID` from /etc/os-release text (e.g. `debian 12`)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    return " ".join(part for part in (values.get("ID", ""), values.get("VERSION_ID", "")) if part)


def parse_container(raw: dict[str, Any]) -> str:
    """The kind of container the process runs in, or "" for none."""
    # Every fact is read (and type-checked) up front, so a malformed one is refused whichever comes first.
    markers = get(raw, "markers", list, "platform", [])
    kubernetes = get(raw, "kubernetes", bool, "platform", False)
    env: str = get(raw, "container_env", str, "platform", "")
    cgroup = get(raw, "cgroup", str, "platform", "")
    if "/.dockerenv" in markers:
        return "docker"
    if "/run/.containerenv" in markers:
        return "podman"
    if kubernetes:
        return "kubernetes"
    if env:
        return env
    for needle, kind in (("kubepods", "kubernetes"), ("docker", "docker"), ("containerd", "containerd"),
                         ("libpod", "podman"), ("lxc", "lxc")):
        if needle in cgroup:
            return kind
    return ""


def parse_platform(raw: Any) -> PlatformSection:
    """The `platform` section of a target from raw facts."""
    import re

    from envlock.model import PlatformSection

    kind = parse_container(raw)
    return PlatformSection(
        system=get(raw, "system", str, "platform"),
        machine=get(raw, "machine", str, "platform"),
        kernel=get(raw, "release", str, "platform"),
        libc=get(raw, "libc", str, "platform", ""),
        distro=parse_os_release(get(raw, "os_release", str, "platform", "")),
        container=bool(kind),
        container_kind=re.sub(r"[^A-Za-z0-9_.+-]", "-", kind).strip("-.+_")[:64],
    )

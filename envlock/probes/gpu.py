"""NVIDIA driver and GPUs, from the cheapest source first. A machine without them is data, not an error."""

from __future__ import annotations

import re
from typing import Any

from envlock._raw import get
from envlock.model import GpuSection

PROC_DRIVER = "/proc/driver/nvidia/version"


def collect_gpu() -> dict[str, Any]:
    """Raw facts: the kernel driver's version file, when there is one."""
    try:
        with open(PROC_DRIVER, encoding="utf-8", errors="replace") as handle:
            return {"proc_driver_version": handle.read(4096)}
    except OSError:
        return {}


def parse_proc_driver_version(text: str) -> str:
    """The driver version from /proc/driver/nvidia/version text (e.g. `550.54.15`), or ""."""
    match = re.search(r"Kernel Module(?: for [A-Za-z0-9_]+)?\s+([0-9]+\.[0-9]+(?:\.[0-9]+)?)", text)
    return match.group(1) if match else ""


def parse_gpu(raw: Any) -> GpuSection:
    """The `gpu` section of a target from raw facts."""
    driver = parse_proc_driver_version(get(raw, "proc_driver_version", str, "gpu", ""))
    if not driver:
        return GpuSection(count=0, status="no NVIDIA driver found")
    return GpuSection(count=0, driver=driver, status="driver found; devices are not examined yet")

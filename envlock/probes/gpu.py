"""NVIDIA driver and GPUs, from the cheapest source first. A machine without them is data, not an error.

Sources, in order: NVML (in-process, no subprocess); /proc/driver/nvidia/version (driver only); and, outside
`verify --fast`, `nvidia-smi -q -x`. Raw facts keep what each source said; `parse_gpu` is pure.
"""

from __future__ import annotations

import os

from envlock._raw import get
from envlock.errors import ModelError
from envlock.probes import nvml as sources
from envlock.probes.nvsmi import virtualization_word

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    from typing import Any

    from envlock.model import GpuSection, MigInstance

PROC_DRIVER = "/proc/driver/nvidia/version"
NVIDIA_CTL = "/dev/nvidiactl"
NO_DRIVER = "no NVIDIA driver loaded (no /dev/nvidiactl, no /proc/driver/nvidia)"
#: NVML errors that mean "there is no NVIDIA GPU here" rather than "NVML is broken".
NO_GPU_ERRORS = ("Shared Library Not Found", "nvidia-ml-py is not installed", "Driver Not Loaded", NO_DRIVER)


def driver_present(raw: dict[str, Any]) -> bool:
    """Whether an NVIDIA kernel driver is loaded (its device node or its /proc entry exists)."""
    return "proc_driver_version" in raw or os.path.exists(NVIDIA_CTL)


def collect_gpu(*, nvml: bool = True, subprocess: bool = True, init_cuda: bool = False) -> dict[str, Any]:
    """Raw facts about NVIDIA GPUs; `init_cuda` also asks the CUDA driver for SM counts (CLI processes only)."""
    raw: dict[str, Any] = {}
    try:
        with open(PROC_DRIVER, encoding="utf-8", errors="replace") as handle:
            raw["proc_driver_version"] = handle.read(4096)
    except OSError:
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        raw["cuda_visible_devices"] = visible
    if nvml and not driver_present(raw):
        # No NVIDIA kernel driver: nothing NVML could find, and importing it costs a job-start path time.
        raw["nvml_error"] = NO_DRIVER
    elif nvml:
        found = sources.collect_nvml()
        if "error" in found:
            raw["nvml_error"] = found["error"]
        else:
            raw.update(found)
            if init_cuda and found.get("devices"):
                raw["cuda_devices"] = sources.collect_cuda_driver_devices()
            return raw
    if subprocess and "proc_driver_version" in raw:
        found = sources.collect_nvidia_smi()
        if "error" in found:
            raw["nvidia_smi_error"] = found["error"]
        else:
            raw.update(found)
    return raw


def parse_proc_driver_version(text: str) -> str:
    """The driver version from /proc/driver/nvidia/version text (e.g. `550.54.15`), or ""."""
    import re

    match = re.search(r"Kernel Module(?: for [A-Za-z0-9_]+)?\s+([0-9]+\.[0-9]+(?:\.[0-9]+)?)", text)
    return match.group(1) if match else ""


def nvml_unavailable(raw: Any) -> str:
    """Why the GPUs could not be examined although a driver is there, or "" (also "" on a machine without GPUs)."""
    if not isinstance(raw, dict) or raw.get("devices"):
        return ""
    error = str(raw.get("nvml_error", ""))
    if not error:
        return ""
    if any(marker in error for marker in NO_GPU_ERRORS) and "proc_driver_version" not in raw:
        return ""
    return f"NVML failed: {error}"


def _switch(value: Any, where: str) -> bool | None:
    if value is None:
        return None
    if value in ("Enabled", "Disabled"):
        return bool(value == "Enabled")
    raise ModelError(where, f"expected Enabled or Disabled, got {value!r}")


def _visible(devices: list[dict[str, Any]], spec: str | None) -> list[dict[str, Any]]:
    """The devices CUDA_VISIBLE_DEVICES leaves visible (indices or UUID prefixes; the list stops at a bad entry)."""
    if spec is None:
        return devices
    chosen = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            break
        if entry.startswith("MIG-"):
            return devices  # MIG instance selection: the parent GPUs stay what NVML reports
        if entry.lstrip("-").isascii() and entry.lstrip("-").isdigit() and len(entry) < 10:
            index = int(entry)
            match = [d for d in devices if d.get("index") == index]
        else:
            match = [d for d in devices if str(d.get("uuid", "")).startswith(entry)]
        if not match:
            break
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


def _mig_instances(raw: Any, where: str) -> tuple[MigInstance, ...]:
    from envlock.model import MigInstance

    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ModelError(where, "expected a list")
    out = []
    for i, item in enumerate(raw):
        place = f"{where}[{i}]"
        out.append(MigInstance(
            gpu_instance_id=get(item, "gpu_instance_id", int, place, i),
            compute_instance_id=get(item, "compute_instance_id", int, place, 0),
            sm_count=get(item, "sm_count", int, place, None),
            memory_mib=get(item, "memory_mib", int, place, None),
            profile=get(item, "profile", str, place, ""),
            uuid=get(item, "uuid", str, place, ""),
        ))
    return tuple(sorted(out, key=lambda m: (m.gpu_instance_id, m.compute_instance_id)))


def parse_gpu(raw: Any) -> GpuSection:
    """The `gpu` section of a target from raw facts."""
    import re

    from envlock.model import GpuDevice, GpuSection

    if not isinstance(raw, dict):
        raise ModelError("gpu", "expected an object")
    devices_raw = get(raw, "devices", list, "gpu", [])
    proc_driver = parse_proc_driver_version(get(raw, "proc_driver_version", str, "gpu", ""))
    driver = get(raw, "driver", str, "gpu", "") or proc_driver
    cuda_driver = get(raw, "cuda_driver", str, "gpu", "")
    source = get(raw, "source", str, "gpu", "proc" if proc_driver else "")
    sm_counts = {}
    cuda_devices = raw.get("cuda_devices")
    if isinstance(cuda_devices, list):
        for i, item in enumerate(cuda_devices):
            sm_counts[get(item, "uuid", str, f"gpu.cuda_devices[{i}]")] = get(
                item, "sm_count", int, f"gpu.cuda_devices[{i}]")
    visible = _visible(devices_raw, get(raw, "cuda_visible_devices", str, "gpu", None))
    devices = []
    for item in visible:
        i = devices_raw.index(item)
        where = f"gpu.devices[{i}]"
        uuid = get(item, "uuid", str, where, "")
        mig_mode = _switch(get(item, "mig_mode", str, where, None), f"{where}.mig_mode")
        devices.append(GpuDevice(
            index=get(item, "index", int, where, i),
            name=get(item, "name", str, where),
            compute_capability=get(item, "compute_capability", str, where, ""),
            sm_count=get(item, "sm_count", int, where, None) or sm_counts.get(uuid),
            memory_mib=get(item, "memory_mib", int, where, None),
            mig=bool(mig_mode),
            mig_instances=_mig_instances(item.get("mig_devices"), f"{where}.mig_devices"),
            ecc=_switch(get(item, "ecc", str, where, None), f"{where}.ecc"),
            persistence=_switch(get(item, "persistence", str, where, None), f"{where}.persistence"),
            virtualization=re.sub(r"[^A-Za-z0-9_.+-]", "-",
                                  virtualization_word(get(item, "virtualization", str, where, ""))),
            uuid=uuid,
            serial=get(item, "serial", str, where, ""),
        ))
    if devices:
        status = ""
    elif devices_raw:
        status = "no GPU visible (CUDA_VISIBLE_DEVICES)"
    elif driver:
        status = "NVIDIA driver found, no GPU visible" + (
            f" ({raw['nvml_error']})" if isinstance(raw.get("nvml_error"), str) else "")
    else:
        status = "no NVIDIA driver found"
    return GpuSection(
        count=len(devices), driver=driver, cuda_driver=cuda_driver, source=source if driver or devices else "",
        status=status[:200], devices=tuple(devices),
    )

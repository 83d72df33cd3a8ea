"""Collectors for NVIDIA GPUs: NVML (nvidia-ml-py), the CUDA driver API (SM counts), `nvidia-smi -q -x`.

Each returns envlock's raw GPU facts, the shape `parse_gpu` reads:
`{"source", "driver", "cuda_driver", "devices": [{"index", "name", "compute_capability", "sm_count",
"memory_mib", "mig_mode", "mig_devices": [...], "ecc", "persistence", "virtualization", "uuid", "serial"}]}`;
a collector that cannot run says why in `"error"` instead of raising. Nothing here is imported by `import envlock`.
"""

from __future__ import annotations

import math

from envlock.errors import ModelError
from envlock.probes.nvsmi import VIRTUALIZATION_MODES, parse_nvidia_smi_xml

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    from typing import Any

_ENABLED = {0: "Disabled", 1: "Enabled"}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _try(func: Any, *args: Any) -> Any:
    """The call's result, or None when NVML says the device does not support it."""
    import pynvml

    try:
        return func(*args)
    except pynvml.NVMLError:
        return None


def _mig_devices(pynvml: Any, handle: Any) -> list[dict[str, Any]]:
    out = []
    count = _try(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
    for i in range(count):
        mig = _try(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, i)
        if mig is None:
            continue
        entry: dict[str, Any] = {}
        gi = _try(pynvml.nvmlDeviceGetGpuInstanceId, mig)
        ci = _try(pynvml.nvmlDeviceGetComputeInstanceId, mig)
        if gi is not None:
            entry["gpu_instance_id"] = int(gi)
        if ci is not None:
            entry["compute_instance_id"] = int(ci)
        attrs = _try(pynvml.nvmlDeviceGetAttributes, mig)
        if attrs is not None:
            entry["sm_count"] = int(attrs.multiprocessorCount)
            entry["memory_mib"] = int(attrs.memorySizeMB)
            gi_slices, ci_slices = int(attrs.gpuInstanceSliceCount), int(attrs.computeInstanceSliceCount)
            gigabytes = math.ceil(int(attrs.memorySizeMB) / 1024)
            prefix = f"{ci_slices}c." if ci_slices != gi_slices else ""
            entry["profile"] = f"{prefix}{gi_slices}g.{gigabytes}gb"
        uuid = _try(pynvml.nvmlDeviceGetUUID, mig)
        if uuid is not None:
            entry["uuid"] = _text(uuid)
        out.append(entry)
    return out


def collect_nvml() -> dict[str, Any]:
    """Raw GPU facts through NVML; `{"source": "nvml", "error": ...}` when NVML cannot be used."""
    try:
        import pynvml
    except ImportError:
        return {"source": "nvml", "error": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"source": "nvml", "error": _text(exc)}
    try:
        facts: dict[str, Any] = {"source": "nvml", "driver": _text(pynvml.nvmlSystemGetDriverVersion())}
        cuda = _try(pynvml.nvmlSystemGetCudaDriverVersion)
        if cuda:
            facts["cuda_driver"] = f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}"
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            device: dict[str, Any] = {"index": index, "name": _text(pynvml.nvmlDeviceGetName(handle))}
            cc = _try(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
            if cc is not None:
                device["compute_capability"] = f"{cc[0]}.{cc[1]}"
            memory = _try(pynvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                device["memory_mib"] = int(memory.total) // (1024 * 1024)
            mig = _try(pynvml.nvmlDeviceGetMigMode, handle)
            if mig is not None:
                device["mig_mode"] = _ENABLED.get(int(mig[0]), str(mig[0]))
                if int(mig[0]) == 1:
                    device["mig_devices"] = _mig_devices(pynvml, handle)
            ecc = _try(pynvml.nvmlDeviceGetEccMode, handle)
            if ecc is not None:
                device["ecc"] = _ENABLED.get(int(ecc[0]), str(ecc[0]))
            persistence = _try(pynvml.nvmlDeviceGetPersistenceMode, handle)
            if persistence is not None:
                device["persistence"] = _ENABLED.get(int(persistence), str(persistence))
            virtualization = getattr(pynvml, "nvmlDeviceGetVirtualizationMode", None)  # nvidia-ml-py 11 and newer
            mode = _try(virtualization, handle) if virtualization is not None else None
            if mode is not None and 0 <= int(mode) < len(VIRTUALIZATION_MODES):
                device["virtualization"] = VIRTUALIZATION_MODES[int(mode)]
            for key, func in (("uuid", pynvml.nvmlDeviceGetUUID), ("serial", pynvml.nvmlDeviceGetSerial)):
                value = _try(func, handle)
                if value is not None:
                    device[key] = _text(value)
            devices.append(device)
        facts["devices"] = devices
        return facts
    except pynvml.NVMLError as exc:
        return {"source": "nvml", "error": _text(exc)}
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


# CUdevice_attribute values (cuda.h)
_CU_MULTIPROCESSOR_COUNT = 16


def collect_cuda_driver_devices() -> list[dict[str, Any]] | dict[str, str]:
    """SM count per device UUID from the CUDA driver API (libcuda), which NVML does not give for whole GPUs.

    Call it only in a process of envlock's own (the CLI): cuInit in a job's process before it forks its
    workers would get in the way of CUDA in those workers.
    """
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return {"error": f"libcuda.so.1 not loadable: {exc}"}
    if cuda.cuInit(0) != 0:
        return {"error": "cuInit failed"}
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return {"error": "cuDeviceGetCount failed"}
    out = []
    for ordinal in range(count.value):
        device = ctypes.c_int(0)
        if cuda.cuDeviceGet(ctypes.byref(device), ordinal) != 0:
            continue
        sms = ctypes.c_int(0)
        cuda.cuDeviceGetAttribute(ctypes.byref(sms), _CU_MULTIPROCESSOR_COUNT, device)
        raw = (ctypes.c_ubyte * 16)()
        get_uuid = getattr(cuda, "cuDeviceGetUuid_v2", None) or cuda.cuDeviceGetUuid
        if get_uuid(raw, device) != 0:
            continue
        out.append({"uuid": format_uuid(bytes(raw)), "sm_count": sms.value})
    return out


def format_uuid(raw: bytes) -> str:
    """NVML's spelling of a 16-byte device UUID: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`."""
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def collect_nvidia_smi(timeout: float = 20.0) -> dict[str, Any]:
    """Raw GPU facts from `nvidia-smi -q -x` (a subprocess: the last resort, never used by --fast)."""
    import shutil
    import subprocess


    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"source": "nvidia-smi", "error": "nvidia-smi not found"}
    try:
        done = subprocess.run([exe, "-q", "-x"], capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"source": "nvidia-smi", "error": f"nvidia-smi failed: {exc}"}
    if done.returncode != 0:
        return {"source": "nvidia-smi", "error": f"nvidia-smi exited {done.returncode}"}
    try:
        return parse_nvidia_smi_xml(done.stdout.decode("utf-8", "replace"))
    except ModelError as exc:
        return {"source": "nvidia-smi", "error": f"unreadable nvidia-smi report: {exc}"}

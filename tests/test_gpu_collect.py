"""The GPU and CUDA collectors as a user relies on them, on a machine without a GPU.

NVML is replaced by a small fake of nvidia-ml-py (module `pynvml`) that behaves like the real bindings: an
`NVMLError` class whose subclasses name each error, `str` from modern bindings and `bytes` from old ones, MIG slots
that raise for an empty index, a serial number that consumer cards do not support. The pure parts
(`parse_gpu`, `parse_cuda`, `kernels_for`, the version decoders) are fed hand-made raw facts and the recorded
`nvidia-smi -q -x` reports under fixtures/nvidia-smi/.
"""

from __future__ import annotations

import ctypes
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import envlock.probes.gpu as gpu_probe
import envlock.probes.nvml as nvml_probe
from envlock.errors import FactsError
from envlock.facts import dumps_facts, load_facts, load_facts_files
from envlock.model import GpuSection, ModelError, from_dict, to_dict
from envlock.probes.cuda import (
    collect_cuda,
    decode_cublas,
    decode_cudart,
    decode_cudnn,
    decode_nccl,
    kernels_for,
    loaded_libraries,
    parse_cuda,
)
from envlock.probes.gpu import collect_gpu, nvml_unavailable, parse_gpu
from envlock.probes.nvml import collect_cuda_driver_devices, collect_nvml, format_uuid
from envlock.probes.nvsmi import parse_nvidia_smi_xml

NVSMI = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia-smi"
H100_XML = NVSMI / "h100-80gb-hbm3-mig.xml"
A100_XML = NVSMI / "a100-sxm4-80gb-mig-2gpu.xml"
PROC_TEXT = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
    "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n"
)
MIB = 1024 * 1024


# --- a fake nvidia-ml-py ---------------------------------------------------------------------------------

class NVMLError(Exception):
    """Like pynvml.NVMLError: carries the NVML return code; str() is NVML's message."""

    CODE = 999
    MESSAGES = {
        3: "Not Supported", 6: "Not Found", 9: "Driver Not Loaded", 12: "NVML Shared Library Not Found",
        15: "GPU is lost", 18: "Driver/library version mismatch",
    }

    def __init__(self, value: int | None = None) -> None:
        self.value = self.CODE if value is None else value
        super().__init__(self.value)

    def __str__(self) -> str:
        return self.MESSAGES.get(self.value, f"NVML Error with code {self.value}")


# The subclasses nvidia-ml-py creates for each return code.
class NVMLError_NotSupported(NVMLError):
    CODE = 3


class NVMLError_NotFound(NVMLError):
    CODE = 6


class NVMLError_DriverNotLoaded(NVMLError):
    CODE = 9


class NVMLError_LibraryNotFound(NVMLError):
    CODE = 12


class NVMLError_GpuIsLost(NVMLError):
    CODE = 15


class NVMLError_LibRmVersionMismatch(NVMLError):
    CODE = 18


class Memory:
    """nvmlMemory_t: sizes in bytes."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total // 2
        self.used = total - self.free


class Attributes:
    """c_nvmlDeviceAttributes: what NVML says about a MIG device."""

    def __init__(self, sms: int, memory_mb: int, gi_slices: int, ci_slices: int) -> None:
        self.multiprocessorCount = sms
        self.sharedCopyEngineCount = 1
        self.sharedDecoderCount = 1
        self.gpuInstanceSliceCount = gi_slices
        self.computeInstanceSliceCount = ci_slices
        self.memorySizeMB = memory_mb


class Handle:
    """An opaque device handle (nvidia-ml-py gives a ctypes pointer)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec


def _value(spec: dict[str, Any], key: str) -> Any:
    value = spec[key]
    if isinstance(value, type) and issubclass(value, NVMLError):
        raise value()
    return value


H100_UUID = "GPU-b1000000-0000-4000-8000-000000000001"
RTX_UUID = "GPU-c4090000-0000-4000-8000-000000000002"
MIG_1G = {"gi": 9, "ci": 0, "attrs": Attributes(16, 9984, 1, 1), "uuid": "MIG-9a000000-0000-4000-8000-000000000009"}
MIG_3G = {"gi": 1, "ci": 0, "attrs": Attributes(60, 40448, 3, 3), "uuid": b"MIG-1a000000-0000-4000-8000-000000000001"}
MIG_1C = {"gi": 2, "ci": 1, "attrs": Attributes(16, 40448, 3, 1), "uuid": "MIG-2b000000-0000-4000-8000-000000000002"}


def h100() -> dict[str, Any]:
    """A MIG-enabled H100 as NVML sees it; slot 1 and slots 4-6 are empty."""
    return {
        "name": b"NVIDIA H100 80GB HBM3", "cc": (9, 0), "memory": Memory(81559 * MIB + 4096),
        "mig": [1, 1], "mig_slots": 7, "migs": {0: MIG_1G, 2: MIG_3G, 3: MIG_1C},
        "ecc": [1, 1], "persistence": 1, "virtualization": 0, "uuid": H100_UUID, "serial": "1650000000001",
    }


def rtx4090() -> dict[str, Any]:
    """A consumer card: no MIG, no ECC, no serial number."""
    return {
        "name": "NVIDIA GeForce RTX 4090", "cc": (8, 9), "memory": Memory(24564 * MIB),
        "mig": NVMLError_NotSupported, "mig_slots": NVMLError_NotSupported, "migs": {},
        "ecc": NVMLError_NotSupported, "persistence": 0, "virtualization": 1, "uuid": RTX_UUID,
        "serial": NVMLError_NotSupported,
    }


def fake_pynvml(devices: list[dict[str, Any]], *, init_error: type[NVMLError] | None = None,
                cuda: Any = 12040, count_error: type[NVMLError] | None = None) -> types.ModuleType:
    """A module that answers like nvidia-ml-py for `devices`; `calls` records init/shutdown."""
    module = types.ModuleType("pynvml")
    calls: list[str] = []
    initialised = [False]

    def need_init() -> None:
        if not initialised[0]:
            raise NVMLError(1)  # NVML_ERROR_UNINITIALIZED

    def nvmlInit() -> None:
        calls.append("init")
        if init_error is not None:
            raise init_error()
        initialised[0] = True

    def nvmlShutdown() -> None:
        calls.append("shutdown")
        need_init()
        initialised[0] = False

    def nvmlSystemGetDriverVersion() -> str:
        need_init()
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion() -> int:
        need_init()
        if isinstance(cuda, type):
            raise cuda()
        return int(cuda)

    def nvmlDeviceGetCount() -> int:
        need_init()
        if count_error is not None:
            raise count_error()
        return len(devices)

    def nvmlDeviceGetHandleByIndex(index: int) -> Handle:
        need_init()
        return Handle(devices[index])

    def nvmlDeviceGetMigDeviceHandleByIndex(handle: Handle, index: int) -> Handle:
        if index >= _value(handle.spec, "mig_slots"):
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        mig = handle.spec["migs"].get(index)
        if mig is None:
            raise NVMLError_NotFound()
        return Handle(mig)

    def device_getter(key: str) -> Callable[[Handle], Any]:
        def getter(handle: Handle) -> Any:
            need_init()
            return _value(handle.spec, key)
        return getter

    module.__dict__.update(
        calls=calls,
        NVMLError=NVMLError,
        NVMLError_NotSupported=NVMLError_NotSupported,
        NVMLError_NotFound=NVMLError_NotFound,
        NVMLError_DriverNotLoaded=NVMLError_DriverNotLoaded,
        NVMLError_LibraryNotFound=NVMLError_LibraryNotFound,
        nvmlInit=nvmlInit,
        nvmlShutdown=nvmlShutdown,
        nvmlSystemGetDriverVersion=nvmlSystemGetDriverVersion,
        nvmlSystemGetCudaDriverVersion=nvmlSystemGetCudaDriverVersion,
        nvmlDeviceGetCount=nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex=nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetName=device_getter("name"),
        nvmlDeviceGetCudaComputeCapability=device_getter("cc"),
        nvmlDeviceGetMemoryInfo=device_getter("memory"),
        nvmlDeviceGetMigMode=device_getter("mig"),
        nvmlDeviceGetMaxMigDeviceCount=device_getter("mig_slots"),
        nvmlDeviceGetMigDeviceHandleByIndex=nvmlDeviceGetMigDeviceHandleByIndex,
        nvmlDeviceGetGpuInstanceId=device_getter("gi"),
        nvmlDeviceGetComputeInstanceId=device_getter("ci"),
        nvmlDeviceGetAttributes=device_getter("attrs"),
        nvmlDeviceGetEccMode=device_getter("ecc"),
        nvmlDeviceGetPersistenceMode=device_getter("persistence"),
        nvmlDeviceGetVirtualizationMode=device_getter("virtualization"),
        nvmlDeviceGetUUID=device_getter("uuid"),
        nvmlDeviceGetSerial=device_getter("serial"),
    )
    return module


def install(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> list[str]:
    monkeypatch.setitem(sys.modules, "pynvml", module)
    calls: list[str] = module.calls
    return calls


EXPECTED_NVML = {
    "source": "nvml",
    "driver": "550.54.15",
    "cuda_driver": "12.4",
    "devices": [
        {
            "index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_mib": 81559,
            "mig_mode": "Enabled",
            "mig_devices": [
                {"gpu_instance_id": 9, "compute_instance_id": 0, "sm_count": 16, "memory_mib": 9984,
                 "profile": "1g.10gb", "uuid": "MIG-9a000000-0000-4000-8000-000000000009"},
                {"gpu_instance_id": 1, "compute_instance_id": 0, "sm_count": 60, "memory_mib": 40448,
                 "profile": "3g.40gb", "uuid": "MIG-1a000000-0000-4000-8000-000000000001"},
                {"gpu_instance_id": 2, "compute_instance_id": 1, "sm_count": 16, "memory_mib": 40448,
                 "profile": "1c.3g.40gb", "uuid": "MIG-2b000000-0000-4000-8000-000000000002"},
            ],
            "ecc": "Enabled", "persistence": "Enabled", "virtualization": "none", "uuid": H100_UUID,
            "serial": "1650000000001",
        },
        {
            "index": 1, "name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9", "memory_mib": 24564,
            "persistence": "Disabled", "virtualization": "Pass-Through", "uuid": RTX_UUID,
        },
    ],
}


# --- 1. collect_nvml against the fake ---------------------------------------------------------------------

def test_collect_nvml_gives_the_raw_facts_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = install(monkeypatch, fake_pynvml([h100(), rtx4090()]))
    facts = collect_nvml()
    assert facts == EXPECTED_NVML
    assert json.loads(json.dumps(facts)) == facts  # plain JSON data: no bytes, no handles
    assert calls == ["init", "shutdown"]


@pytest.mark.parametrize(("number", "text"), [(12040, "12.4"), (11080, "11.8"), (12090, "12.9"), (13000, "13.0")])
def test_collect_nvml_cuda_driver_version(monkeypatch: pytest.MonkeyPatch, number: int, text: str) -> None:
    install(monkeypatch, fake_pynvml([rtx4090()], cuda=number))
    assert collect_nvml()["cuda_driver"] == text


def test_collect_nvml_without_cuda_driver_version_leaves_it_out(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, fake_pynvml([rtx4090()], cuda=NVMLError_NotSupported))
    facts = collect_nvml()
    assert "cuda_driver" not in facts
    assert facts["driver"] == "550.54.15"


def test_collect_nvml_mig_enabled_but_no_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    device = h100()
    device["migs"] = {}
    install(monkeypatch, fake_pynvml([device]))
    found = collect_nvml()["devices"][0]
    assert (found["mig_mode"], found["mig_devices"]) == ("Enabled", [])


def test_collect_nvml_mig_disabled_lists_no_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    device = h100()
    device["mig"] = [0, 0]
    install(monkeypatch, fake_pynvml([device]))
    found = collect_nvml()["devices"][0]
    assert found["mig_mode"] == "Disabled"
    assert "mig_devices" not in found


@pytest.mark.parametrize("error", [NVMLError_DriverNotLoaded, NVMLError_LibraryNotFound,
                                   NVMLError_LibRmVersionMismatch])
def test_collect_nvml_init_failure_is_data(monkeypatch: pytest.MonkeyPatch, error: type[NVMLError]) -> None:
    calls = install(monkeypatch, fake_pynvml([h100()], init_error=error))
    assert collect_nvml() == {"source": "nvml", "error": str(error())}
    assert calls == ["init"]  # nothing to shut down: NVML never started


def test_collect_nvml_shuts_down_after_a_failure_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = install(monkeypatch, fake_pynvml([h100()], count_error=NVMLError_GpuIsLost))
    assert collect_nvml() == {"source": "nvml", "error": "GPU is lost"}
    assert calls == ["init", "shutdown"]


def test_collect_nvml_without_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert collect_nvml() == {"source": "nvml", "error": "nvidia-ml-py is not installed"}


def test_nvml_facts_parse_into_a_gpu_section(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, fake_pynvml([h100(), rtx4090()]))
    section = parse_gpu(collect_nvml())
    assert (section.count, section.driver, section.cuda_driver, section.source, section.status) == (
        2, "550.54.15", "12.4", "nvml", "")
    big, small = section.devices
    assert (big.index, big.name, big.compute_capability, big.memory_mib, big.mig) == (
        0, "NVIDIA H100 80GB HBM3", "9.0", 81559, True)
    assert [(m.gpu_instance_id, m.compute_instance_id, m.profile, m.sm_count) for m in big.mig_instances] == [
        (1, 0, "3g.40gb", 60), (2, 1, "1c.3g.40gb", 16), (9, 0, "1g.10gb", 16)]
    assert (big.ecc, big.persistence, big.uuid, big.serial) == (True, True, H100_UUID, "1650000000001")
    assert (small.index, small.mig, small.mig_instances, small.ecc, small.persistence, small.serial) == (
        1, False, (), None, False, "")
    assert small.sm_count is None  # NVML has no SM count for a whole GPU
    assert from_dict(GpuSection, to_dict(section)) == section  # every value fits the lock's grammar


# --- 2. collect_gpu: which sources run, and what is recorded -----------------------------------------------

class Sources:
    """Stand-ins for the three collectors collect_gpu calls, recording each call."""

    def __init__(self, nvml: dict[str, Any], smi: dict[str, Any] | None = None,
                 cuda: list[dict[str, Any]] | dict[str, str] | None = None) -> None:
        self.nvml = nvml
        self.smi = smi if smi is not None else {"source": "nvidia-smi", "error": "nvidia-smi not found"}
        self.cuda = cuda if cuda is not None else {"error": "libcuda.so.1 not loadable"}
        self.calls: list[str] = []

    def collect_nvml(self) -> dict[str, Any]:
        self.calls.append("nvml")
        return json.loads(json.dumps(self.nvml))  # type: ignore[no-any-return]

    def collect_nvidia_smi(self, timeout: float = 20.0) -> dict[str, Any]:
        self.calls.append("nvidia-smi")
        return self.smi

    def collect_cuda_driver_devices(self) -> list[dict[str, Any]] | dict[str, str]:
        self.calls.append("cuda")
        return self.cuda


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Sources]:
    """Point collect_gpu at fake sources and, with `proc=True`, a /proc/driver/nvidia/version file."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def setup(nvml: dict[str, Any], *, proc: bool = True, **kwargs: Any) -> Sources:
        sources = Sources(nvml, **kwargs)
        proc_file = tmp_path / "version"
        if proc:
            proc_file.write_text(PROC_TEXT, encoding="utf-8")
        monkeypatch.setattr(gpu_probe, "PROC_DRIVER", str(proc_file))
        for name in ("collect_nvml", "collect_nvidia_smi", "collect_cuda_driver_devices"):
            monkeypatch.setattr(nvml_probe, name, getattr(sources, name))
        return sources

    return setup


NO_LIBRARY = {"source": "nvml", "error": "NVML Shared Library Not Found"}
MISMATCH = {"source": "nvml", "error": "Driver/library version mismatch"}


def test_collect_gpu_with_nvml_working(machine: Callable[..., Sources]) -> None:
    sources = machine(EXPECTED_NVML)
    raw = collect_gpu()
    assert raw == {"proc_driver_version": PROC_TEXT, **EXPECTED_NVML}
    assert sources.calls == ["nvml"]  # neither nvidia-smi nor the CUDA driver
    assert nvml_unavailable(raw) == ""
    assert parse_gpu(raw).count == 2


def test_collect_gpu_init_cuda_adds_sm_counts(machine: Callable[..., Sources]) -> None:
    sources = machine(EXPECTED_NVML, cuda=[{"uuid": H100_UUID, "sm_count": 132}, {"uuid": RTX_UUID, "sm_count": 128}])
    raw = collect_gpu(init_cuda=True)
    assert sources.calls == ["nvml", "cuda"]
    assert raw["cuda_devices"] == [{"uuid": H100_UUID, "sm_count": 132}, {"uuid": RTX_UUID, "sm_count": 128}]
    assert [d.sm_count for d in parse_gpu(raw).devices] == [132, 128]


def test_collect_gpu_init_cuda_failure_is_recorded_and_harmless(machine: Callable[..., Sources]) -> None:
    machine(EXPECTED_NVML)
    raw = collect_gpu(init_cuda=True)
    assert raw["cuda_devices"] == {"error": "libcuda.so.1 not loadable"}
    assert [d.sm_count for d in parse_gpu(raw).devices] == [None, None]


def test_collect_gpu_init_cuda_skipped_without_devices(machine: Callable[..., Sources]) -> None:
    sources = machine({"source": "nvml", "driver": "550.54.15", "devices": []})
    raw = collect_gpu(init_cuda=True)
    assert sources.calls == ["nvml"]
    assert "cuda_devices" not in raw
    assert parse_gpu(raw).status == "NVIDIA driver found, no GPU visible"


def test_collect_gpu_nvml_broken_without_subprocess(machine: Callable[..., Sources]) -> None:
    sources = machine(MISMATCH)
    raw = collect_gpu(subprocess=False)
    assert raw == {"proc_driver_version": PROC_TEXT, "nvml_error": "Driver/library version mismatch"}
    assert sources.calls == ["nvml"]  # --fast never starts nvidia-smi
    assert nvml_unavailable(raw) == "NVML failed: Driver/library version mismatch"
    section = parse_gpu(raw)
    assert (section.count, section.driver, section.source) == (0, "550.54.15", "proc")
    assert section.status == "NVIDIA driver found, no GPU visible (Driver/library version mismatch)"


def test_collect_gpu_nvml_broken_falls_back_to_nvidia_smi(machine: Callable[..., Sources]) -> None:
    smi = parse_nvidia_smi_xml(H100_XML.read_text(encoding="utf-8"))
    sources = machine(MISMATCH, smi=smi)
    raw = collect_gpu(subprocess=True)
    assert sources.calls == ["nvml", "nvidia-smi"]
    assert raw["nvml_error"] == "Driver/library version mismatch"
    assert raw["devices"] == smi["devices"]
    assert nvml_unavailable(raw) == ""  # nvidia-smi did examine the GPUs
    section = parse_gpu(raw)
    assert (section.count, section.driver, section.cuda_driver, section.source) == (
        1, "560.35.03", "12.6", "nvidia-smi")


def test_collect_gpu_nvidia_smi_failure_is_recorded(machine: Callable[..., Sources]) -> None:
    sources = machine(MISMATCH)
    raw = collect_gpu(subprocess=True)
    assert sources.calls == ["nvml", "nvidia-smi"]
    assert raw["nvidia_smi_error"] == "nvidia-smi not found"
    assert nvml_unavailable(raw) == "NVML failed: Driver/library version mismatch"


def test_collect_gpu_on_a_machine_without_gpus(machine: Callable[..., Sources],
                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sources = machine(NO_LIBRARY, proc=False)
    monkeypatch.setattr(gpu_probe, "NVIDIA_CTL", str(tmp_path / "no-nvidiactl"))
    raw = collect_gpu(subprocess=True)
    assert raw == {"nvml_error": gpu_probe.NO_DRIVER}
    assert sources.calls == []  # no driver: neither NVML (not even imported) nor nvidia-smi is tried
    assert nvml_unavailable(raw) == ""
    section = parse_gpu(raw)
    assert (section.count, section.driver, section.source, section.status) == (0, "", "", "no NVIDIA driver found")


def test_collect_gpu_without_nvml(machine: Callable[..., Sources]) -> None:
    sources = machine(EXPECTED_NVML)
    raw = collect_gpu(nvml=False, subprocess=False)
    assert raw == {"proc_driver_version": PROC_TEXT}
    assert sources.calls == []


@pytest.mark.parametrize(("raw", "why"), [
    ({"nvml_error": "NVML Shared Library Not Found"}, ""),
    ({"nvml_error": "nvidia-ml-py is not installed"}, ""),
    ({"nvml_error": "Driver Not Loaded"}, ""),
    ({"proc_driver_version": PROC_TEXT, "nvml_error": "Driver Not Loaded"}, "NVML failed: Driver Not Loaded"),
    ({"proc_driver_version": PROC_TEXT, "nvml_error": "NVML Shared Library Not Found"},
     "NVML failed: NVML Shared Library Not Found"),
    ({"proc_driver_version": PROC_TEXT, "nvml_error": "Driver/library version mismatch"},
     "NVML failed: Driver/library version mismatch"),
    ({"nvml_error": "Insufficient Permissions"}, "NVML failed: Insufficient Permissions"),
    ({"proc_driver_version": PROC_TEXT}, ""),
    ({"source": "nvml", "driver": "550.54.15", "devices": []}, ""),
    (EXPECTED_NVML, ""),
    (None, ""),
])
def test_nvml_unavailable(raw: Any, why: str) -> None:
    assert nvml_unavailable(raw) == why


@pytest.mark.parametrize("value", ["1", "", "GPU-b1000000", "MIG-2b000000-0000-4000-8000-000000000002"])
def test_collect_gpu_records_cuda_visible_devices(machine: Callable[..., Sources], monkeypatch: pytest.MonkeyPatch,
                                                 value: str) -> None:
    machine(EXPECTED_NVML)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert collect_gpu()["cuda_visible_devices"] == value


def test_collect_gpu_leaves_unset_cuda_visible_devices_out(machine: Callable[..., Sources]) -> None:
    machine(EXPECTED_NVML)
    assert "cuda_visible_devices" not in collect_gpu()


# --- 3. parse_gpu: CUDA_VISIBLE_DEVICES and SM counts ------------------------------------------------------

def three_gpus(visible: str | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "source": "nvml", "driver": "550.54.15", "cuda_driver": "12.4",
        "devices": [
            {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-abc11111-0000-4000-8000-000000000000"},
            {"index": 1, "name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-abd22222-0000-4000-8000-000000000000"},
            {"index": 2, "name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-f0033333-0000-4000-8000-000000000000"},
        ],
    }
    if visible is not None:
        raw["cuda_visible_devices"] = visible
    return raw


@pytest.mark.parametrize(("visible", "indices"), [
    (None, [0, 1, 2]),
    ("1,0", [1, 0]),
    ("2", [2]),
    ("GPU-abc", [0]),
    ("GPU-f00,0", [2, 0]),
    ("GPU-abd22222-0000-4000-8000-000000000000", [1]),
    ("0,7,1", [0]),
    ("1,GPU-zzz,0", [1]),
    ("-1", []),
    ("1,-1,0", [1]),
    ("0,1,", [0, 1]),
    ("MIG-2b000000-0000-4000-8000-000000000002", [0, 1, 2]),
])
def test_parse_gpu_cuda_visible_devices(visible: str | None, indices: list[int]) -> None:
    section = parse_gpu(three_gpus(visible))
    assert [d.index for d in section.devices] == indices
    assert section.count == len(indices)
    if indices:
        assert section.status == ""


def test_parse_gpu_empty_cuda_visible_devices_hides_every_gpu() -> None:
    section = parse_gpu(three_gpus(""))
    assert (section.count, section.devices) == (0, ())
    assert section.status == "no GPU visible (CUDA_VISIBLE_DEVICES)"
    assert (section.driver, section.source) == ("550.54.15", "nvml")


def test_parse_gpu_joins_sm_counts_by_uuid() -> None:
    raw = three_gpus()
    raw["devices"][2]["sm_count"] = 100  # a count the device itself carries wins
    raw["cuda_devices"] = [
        {"uuid": "GPU-f0033333-0000-4000-8000-000000000000", "sm_count": 108},
        {"uuid": "GPU-abc11111-0000-4000-8000-000000000000", "sm_count": 108},
        {"uuid": "GPU-0ther000-0000-4000-8000-000000000000", "sm_count": 132},
    ]
    assert [d.sm_count for d in parse_gpu(raw).devices] == [108, None, 100]


@pytest.mark.parametrize(("cuda_devices", "where"), [
    ([{"uuid": "GPU-abc", "sm_count": "108"}], "gpu.cuda_devices[0].sm_count"),
    ([{"uuid": "GPU-abc", "sm_count": 108}, {"sm_count": 108}], "gpu.cuda_devices[1].uuid"),
    ([{"uuid": "GPU-abc", "sm_count": True}], "gpu.cuda_devices[0].sm_count"),
])
def test_parse_gpu_malformed_cuda_devices_name_the_place(cuda_devices: Any, where: str) -> None:
    raw = three_gpus()
    raw["cuda_devices"] = cuda_devices
    with pytest.raises(ModelError) as caught:
        parse_gpu(raw)
    assert caught.value.where == where


def test_parse_gpu_visible_spec_must_be_text() -> None:
    with pytest.raises(ModelError) as caught:
        parse_gpu(three_gpus(0))  # type: ignore[arg-type]
    assert caught.value.where == "gpu.cuda_visible_devices"


# --- 4. UUIDs and the CUDA driver API ----------------------------------------------------------------------

def test_format_uuid() -> None:
    assert format_uuid(bytes(range(16))) == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert format_uuid(bytes.fromhex("b1000000000040008000000000000001")) == H100_UUID


def test_collect_cuda_driver_devices_without_libcuda_is_data() -> None:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this machine has a CUDA driver")
    found = collect_cuda_driver_devices()
    assert isinstance(found, dict)
    assert set(found) == {"error"}
    assert found["error"].startswith("libcuda.so.1 not loadable")


class FakeLibcuda:
    """The five driver calls collect_cuda_driver_devices makes, answering through ctypes pointers."""

    def __init__(self, init: int = 0, sms: tuple[int, ...] = (132, 108), broken_uuid: int = -1) -> None:
        self.init, self.sms, self.broken_uuid = init, sms, broken_uuid

    def cuInit(self, flags: int) -> int:
        return self.init

    def cuDeviceGetCount(self, count: Any) -> int:
        count._obj.value = len(self.sms)
        return 0

    def cuDeviceGet(self, device: Any, ordinal: int) -> int:
        device._obj.value = ordinal
        return 0

    def cuDeviceGetAttribute(self, value: Any, attribute: int, device: ctypes.c_int) -> int:
        assert attribute == 16  # CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
        value._obj.value = self.sms[device.value]
        return 0

    def cuDeviceGetUuid_v2(self, raw: Any, device: ctypes.c_int) -> int:
        if device.value == self.broken_uuid:
            return 1
        raw[:] = bytes([0xab] * 15 + [device.value])
        return 0


@pytest.mark.parametrize(("lib", "expected"), [
    (FakeLibcuda(), [{"uuid": "GPU-abababab-abab-abab-abab-ababababab00", "sm_count": 132},
                     {"uuid": "GPU-abababab-abab-abab-abab-ababababab01", "sm_count": 108}]),
    (FakeLibcuda(broken_uuid=0), [{"uuid": "GPU-abababab-abab-abab-abab-ababababab01", "sm_count": 108}]),
    (FakeLibcuda(init=100), {"error": "cuInit failed"}),  # CUDA_ERROR_NO_DEVICE
])
def test_collect_cuda_driver_devices_with_a_driver(monkeypatch: pytest.MonkeyPatch, lib: FakeLibcuda,
                                                   expected: Any) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda name: lib)
    assert collect_cuda_driver_devices() == expected


# --- 5. envlock.probes.cuda --------------------------------------------------------------------------------

SITE = "/opt/venv/lib/python3.11/site-packages"
ANONYMOUS = "7f3a2c000000-7f3a2c021000 rw-p 00000000 00:00 0 "  # the kernel pads an empty path with a space
MAPS = f"""\
55d0c0a00000-55d0c0a2c000 r--p 00000000 08:01 131090                     /usr/bin/python3.11
55d0c2e1e000-55d0c3000000 rw-p 00000000 00:00 0                          [heap]
{ANONYMOUS}
7f3a2e000000-7f3a2e200000 r--p 00000000 08:01 2359330                    {SITE}/nvidia/cudnn/lib/libcudnn.so.9
7f3a2e200000-7f3a2e400000 r-xp 00200000 08:01 2359330                    {SITE}/nvidia/cudnn/lib/libcudnn.so.9
7f3a2f000000-7f3a2f800000 r-xp 00000000 08:01 2359331                    {SITE}/nvidia/cudnn/lib/libcudnn_ops.so.9
7f3a30000000-7f3a30080000 r-xp 00000000 08:01 2359400                    {SITE}/nvidia/cuda_runtime/lib/libcudart.so.12
7f3a31000000-7f3a38000000 r-xp 00000000 08:01 2359500                    {SITE}/nvidia/cublas/lib/libcublas.so.12
7f3a38000000-7f3a40000000 r-xp 00000000 08:01 2359501                    {SITE}/nvidia/cublas/lib/libcublasLt.so.12
7f3a40000000-7f3a48000000 r-xp 00000000 08:01 2359600                    {SITE}/nvidia/nccl/lib/libnccl.so.2
7f3a49000000-7f3a49200000 r-xp 00000000 08:01 2359700                    {SITE}/torch/lib/libtorch_cuda.so
7f3a4a000000-7f3a4a1c0000 r-xp 00028000 08:01 1835050                    /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd5e1f0000-7ffd5e211000 rw-p 00000000 00:00 0                          [stack]
7ffd5e3f5000-7ffd5e3f7000 r-xp 00000000 00:00 0                          [vdso]
"""


def test_loaded_libraries_from_proc_maps() -> None:
    assert loaded_libraries(MAPS) == {
        "cudnn": f"{SITE}/nvidia/cudnn/lib/libcudnn.so.9",
        "cudart": f"{SITE}/nvidia/cuda_runtime/lib/libcudart.so.12",
        "cublaslt": f"{SITE}/nvidia/cublas/lib/libcublasLt.so.12",
        "nccl": f"{SITE}/nvidia/nccl/lib/libnccl.so.2",
    }


def test_loaded_libraries_keeps_paths_with_spaces_and_ignores_the_rest() -> None:
    text = "7f3a30000000-7f3a30080000 r-xp 00000000 08:01 2359400   /home/me/my envs/lib/libcudart.so.11.0\n"
    assert loaded_libraries(text) == {"cudart": "/home/me/my envs/lib/libcudart.so.11.0"}
    assert loaded_libraries("") == {}
    assert loaded_libraries("garbage\n7f3a2c000000-7f3a2c021000 rw-p 00000000 00:00 0\n") == {}


def test_loaded_libraries_on_this_process() -> None:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps")
    assert set(loaded_libraries(maps.read_text(encoding="utf-8", errors="replace"))) <= {
        "cudart", "cudnn", "cublaslt", "nccl"}


@pytest.mark.parametrize(("decode", "number", "text"), [
    (decode_cudart, 12040, "12.4"),
    (decode_cudart, 11080, "11.8"),
    (decode_cudart, 12080, "12.8"),
    (decode_cudnn, 8902, "8.9.2"),
    (decode_cudnn, 8700, "8.7.0"),
    (decode_cudnn, 90100, "9.1.0"),
    (decode_cudnn, 91002, "9.10.2"),
    (decode_cublas, 120402, "12.4.2"),
    (decode_cublas, 11601, "11.6.1"),
    (decode_cublas, 110902, "11.9.2"),
    (decode_nccl, 22005, "2.20.5"),
    (decode_nccl, 2708, "2.7.8"),
    (decode_nccl, 21803, "2.18.3"),
])
def test_decode_library_versions(decode: Callable[[int], str], number: int, text: str) -> None:
    assert decode(number) == text


def cuda_raw() -> dict[str, Any]:
    return {
        "torch_cuda": "12.4",
        "arch_list": ["sm_50", "sm_80", "sm_86", "sm_90", "compute_90"],
        "library_versions": {"cudart": 12040, "cudnn": 90100, "cublaslt": 120402, "nccl": 22005},
        "library_paths": {"cudart": f"{SITE}/nvidia/cuda_runtime/lib/libcudart.so.12"},
    }


def test_parse_cuda() -> None:
    section = parse_cuda(cuda_raw())
    assert section is not None
    assert (section.torch_cuda, section.runtime, section.cudnn, section.cublas, section.nccl) == (
        "12.4", "12.4", "9.1.0", "12.4.2", "2.20.5")
    assert section.arch_list == ("sm_50", "sm_80", "sm_86", "sm_90", "compute_90")


def test_parse_cuda_with_only_what_torch_said() -> None:
    section = parse_cuda({"torch_cuda": "11.8", "library_versions": {"cudnn": 8700}})
    assert section is not None
    assert (section.runtime, section.cudnn, section.cublas, section.nccl, section.arch_list) == (
        "", "8.7.0", "", "", ())


def test_parse_cuda_none_is_none() -> None:
    assert parse_cuda(None) is None


@pytest.mark.parametrize(("change", "where"), [
    ({"torch_cuda": 12.4}, "cuda.torch_cuda"),
    ({"torch_cuda": None}, "cuda.torch_cuda"),
    ({"library_versions": [12040]}, "cuda.library_versions"),
    ({"library_versions": {"cudnn": "90100"}}, "cuda.library_versions.cudnn"),
    ({"library_versions": {"nccl": True}}, "cuda.library_versions.nccl"),
    ({"library_versions": {"cudart": 12040.0}}, "cuda.library_versions.cudart"),
    ({"arch_list": "sm_80"}, "cuda.arch_list"),
])
def test_parse_cuda_wrong_types_name_the_place(change: dict[str, Any], where: str) -> None:
    raw = cuda_raw()
    raw.update(change)
    with pytest.raises(ModelError) as caught:
        parse_cuda(raw)
    assert caught.value.where == where


@pytest.mark.parametrize("raw", [[], "12.4", 12040])
def test_parse_cuda_not_an_object(raw: Any) -> None:
    with pytest.raises(ModelError) as caught:
        parse_cuda(raw)
    assert caught.value.where == "cuda"


@pytest.mark.parametrize(("arch_list", "capability", "how"), [
    (("sm_80",), "8.0", "sass"),
    (("sm_80",), "8.6", "sass"),  # same major, higher minor: the SASS runs
    (("sm_86",), "8.0", ""),  # a newer minor's SASS does not run on an older one
    (("sm_80",), "9.0", ""),  # no SASS across a major version
    (("sm_80", "compute_80"), "9.0", "ptx"),  # PTX is JIT-compiled for newer GPUs
    (("compute_90",), "8.6", ""),  # PTX for a newer GPU does not run on an older one
    (("sm_90a",), "9.0", "sass"),
    (("sm_90a",), "10.0", ""),  # arch-specific code runs only on its own capability
    (("sm_90a", "sm_90"), "9.0", "sass"),
    (("sm_100",), "10.0", "sass"),
    (("sm_120",), "12.0", "sass"),
    (("sm_100",), "12.0", ""),
    (("sm_50", "sm_80", "sm_90", "compute_90"), "12.0", "ptx"),
    (("compute_90a",), "9.0", "ptx"),
    (("compute_90a",), "10.0", ""),  # arch-specific PTX is not forward compatible either
    ((), "9.0", ""),
    (("sm_80",), "", "sass"),  # unknown capability: nothing to say
])
def test_kernels_for(arch_list: tuple[str, ...], capability: str, how: str) -> None:
    assert kernels_for(arch_list, capability) == how


def test_collect_cuda_is_none_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert collect_cuda() is None


def test_collect_cuda_is_none_for_a_cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(version=types.SimpleNamespace(cuda=None))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert collect_cuda() is None


def test_collect_cuda_falls_back_to_what_torch_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build whose libraries are not mapped (as here): cuDNN and NCCL versions come from torch."""
    fake = types.SimpleNamespace(
        version=types.SimpleNamespace(cuda="12.4"),
        cuda=types.SimpleNamespace(get_arch_list=lambda: ["sm_80", "sm_90"],
                                   nccl=types.SimpleNamespace(version=lambda: (2, 20, 5))),
        backends=types.SimpleNamespace(cudnn=types.SimpleNamespace(is_available=lambda: True, version=lambda: 90100)),
    )
    monkeypatch.setitem(sys.modules, "torch", fake)
    raw = collect_cuda()
    assert raw is not None
    assert raw["torch_cuda"] == "12.4"
    assert raw["arch_list"] == ["sm_80", "sm_90"]
    assert raw["library_versions"] == {"cudnn": 90100, "nccl": 22005}
    section = parse_cuda(json.loads(json.dumps(raw)))
    assert section is not None
    assert (section.cudnn, section.nccl, section.runtime) == ("9.1.0", "2.20.5", "")


@pytest.mark.torch
def test_collect_cuda_with_this_machines_cpu_torch() -> None:
    torch = pytest.importorskip("torch")
    if torch.version.cuda:
        pytest.skip("a CUDA build of torch")
    assert collect_cuda() is None


# --- 6. facts from an nvidia-smi report --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a100-sxm4-80gb-mig-2gpu.xml", "h100-80gb-hbm3-mig.xml"])
def test_load_facts_on_an_nvidia_smi_report(name: str) -> None:
    path = NVSMI / name
    facts = load_facts(path)
    assert facts == {"envlock_facts": 1, "partial": True,
                     "gpu": parse_nvidia_smi_xml(path.read_text(encoding="utf-8"))}
    section = parse_gpu(facts["gpu"])
    assert section.source == "nvidia-smi"
    assert section.count == len(facts["gpu"]["devices"]) >= 1


def test_load_facts_a100_report_gpu_section() -> None:
    section = parse_gpu(load_facts(A100_XML)["gpu"])
    assert (section.count, section.driver, section.cuda_driver) == (2, "550.54.15", "12.4")
    first, second = section.devices
    assert [(m.gpu_instance_id, m.sm_count, m.memory_mib) for m in first.mig_instances] == [
        (2, 42, 40192), (9, 14, 9728)]
    assert (first.mig, second.mig, second.mig_instances) == (True, False, ())


def test_load_facts_refuses_an_entity_declaration(tmp_path: Path) -> None:
    hostile = tmp_path / "bomb.xml"
    hostile.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE nvidia_smi_log [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n'
        "<nvidia_smi_log><driver_version>&b;</driver_version></nvidia_smi_log>\n", encoding="utf-8")
    with pytest.raises(FactsError) as caught:
        load_facts(hostile)
    assert caught.value.file == str(hostile)
    assert str(hostile) in str(caught.value)
    assert "entity" in str(caught.value)


def test_load_facts_on_a_report_saved_with_a_bom(tmp_path: Path) -> None:
    """Windows tools (PowerShell's `Out-File -Encoding utf8`) save the report with a UTF-8 byte order mark."""
    report = tmp_path / "report.xml"
    report.write_bytes(b"\xef\xbb\xbf" + H100_XML.read_bytes())
    facts = load_facts(report)
    assert facts["gpu"]["driver"] == "560.35.03"


def test_cli_facts_takes_the_gpu_part_from_the_report(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "facts.json"
    result = cli("facts", "--no-torch", "--nvidia-smi", str(H100_XML), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    facts = json.loads(out.read_text(encoding="utf-8"))
    assert facts["gpu"] == parse_nvidia_smi_xml(H100_XML.read_text(encoding="utf-8"))
    assert "partial" not in facts
    assert {"python", "packages", "platform", "cpu"} <= set(facts)  # the rest is this machine
    again = load_facts(out)
    assert again["gpu"]["devices"][0]["uuid"] == H100_UUID


def test_cli_facts_with_a_hostile_report_exits_2(cli: Any, tmp_path: Path) -> None:
    hostile = tmp_path / "bomb.xml"
    hostile.write_text('<!DOCTYPE nvidia_smi_log [<!ENTITY a "x">]><nvidia_smi_log/>', encoding="utf-8")
    out = tmp_path / "facts.json"
    result = cli("facts", "--no-torch", "--nvidia-smi", str(hostile), "-o", str(out))
    assert result.exit_code == 2
    assert str(hostile) in result.output
    assert not out.exists()


def test_load_facts_files_overrides_only_the_gpu(tmp_path: Path) -> None:
    whole = {
        "envlock_facts": 1, "envlock": "0.0.0",
        "python": {"version": "3.11.9"}, "cpu": {"machine": "x86_64"},
        "gpu": {"nvml_error": "NVML Shared Library Not Found"},
    }
    dump = tmp_path / "facts.json"
    dump.write_text(dumps_facts(whole), encoding="utf-8")
    merged = load_facts_files([str(dump), str(A100_XML)])
    assert merged == {**whole, "gpu": parse_nvidia_smi_xml(A100_XML.read_text(encoding="utf-8"))}
    assert "partial" not in merged
    assert parse_gpu(merged["gpu"]).count == 2


def test_load_facts_files_last_report_wins(tmp_path: Path) -> None:
    dump = tmp_path / "facts.json"
    dump.write_text(dumps_facts({"envlock_facts": 1, "gpu": {}}), encoding="utf-8")
    merged = load_facts_files([str(dump), str(A100_XML), str(H100_XML)])
    assert merged["gpu"]["driver"] == "560.35.03"

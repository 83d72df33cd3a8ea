"""The CPU: vendor, model, microarchitecture (archspec), the ISA flags that change numerics, core counts."""

from __future__ import annotations

import math
import os
import platform
from typing import Any

from envlock._raw import get
from envlock.model import CpuSection

# ISA extensions that change which kernels BLAS and ATen pick, or how they round (FMA, bf16/fp16 dot products).
NUMERIC_FLAGS = frozenset({
    # x86-64
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx_vnni_int8", "avx_ne_convert",
    "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512ifma", "avx512vbmi", "avx512vbmi2",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512_bitalg", "avx512_vpopcntdq", "avx10_1",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "amx_complex",
    # aarch64
    "asimd", "asimdhp", "asimddp", "fphp", "bf16", "i8mm", "sve", "sve2", "svebf16", "svei8mm", "sme", "sme2",
    "fcma", "frint",
})


#: Flags a test may make this CPU report (space-separated), to run the OPENBLAS_CORETYPE refusal (probes/coretype)
#: in a subprocess without the SIGILL it prevents. Tests only.
TEST_FLAGS_VAR = "_ENVLOCK_TEST_CPU_FLAGS"


def _first_cpuinfo_block(text: str) -> dict[str, str]:
    data: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if data:
                break
            continue
        data.setdefault(key.strip(), value.strip())
    return data


def _usable_cores() -> int:
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def collect_cpu() -> dict[str, Any]:
    """Raw facts: the first /proc/cpuinfo block and the core counts."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            cpuinfo = _first_cpuinfo_block(handle.read(65536))
    except OSError:
        cpuinfo = {}
    if os.environ.get(TEST_FLAGS_VAR) is not None:
        cpuinfo["flags"] = os.environ[TEST_FLAGS_VAR]
    return {
        "machine": platform.machine(),
        "cpuinfo": cpuinfo,
        "logical_cores": os.cpu_count() or 1,
        "usable_cores": _usable_cores(),
    }


def _aarch64_compatible(info: Any, target: Any) -> bool:
    """Whether `target` fits the aarch64 facts in `info`, whatever OS this parser runs on."""
    # archspec's own aarch64 check branches on the *running* host's platform.system(): on macOS it looks the
    # partial uarch up by name and raises KeyError(''), so Linux facts could not be parsed on a Mac (nor a Mac
    # captured at all). The rule here is its Linux one: same family, vendor or generic, all features present.
    from archspec.cpu import TARGETS

    if target.vendor == "generic" and target.name != "aarch64":
        return False
    return bool(
        target.family == TARGETS["aarch64"]
        and target.vendor in (info.vendor, "generic")
        and target.features.issubset(info.features)
    )


def _archspec(machine: str, vendor: str, flags: set[str], cpu_part: str) -> tuple[str, str]:
    """(microarchitecture, best generic level) for the given facts, the way archspec's host() chooses."""
    from archspec.cpu import TARGETS, generic_microarchitecture
    from archspec.cpu.detect import COMPATIBILITY_CHECKS, partial_uarch

    family = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)
    # Only checks that read nothing but the facts: archspec's power and riscv64 checks start from the *running*
    # host's family (`_machine()`), so ppc64le facts parsed on an x86_64 machine came out as `sapphirerapids`.
    tester = {"x86_64": COMPATIBILITY_CHECKS.get("x86_64"), "aarch64": _aarch64_compatible}.get(family)
    if tester is None:
        return family or "unknown", family or "unknown"
    info = partial_uarch(vendor=vendor or "generic", features=flags, cpu_part=cpu_part)
    candidates = [t for t in TARGETS.values() if tester(info, t)] or [generic_microarchitecture(family)]

    def depth(target: Any) -> tuple[int, int]:
        return len(target.ancestors), len(target.features)

    generics = [t for t in candidates if t.vendor == "generic"] or [generic_microarchitecture(family)]
    best_generic = max(generics, key=depth)
    if cpu_part and any(t.cpu_part == cpu_part for t in candidates):
        candidates = [t for t in candidates if t.cpu_part == cpu_part]
    specific = [t for t in candidates if t > best_generic]
    best = max(specific, key=depth) if specific else best_generic
    return best.name, best_generic.name


def parse_cpu(raw: Any) -> CpuSection:
    """The `cpu` section of a target from raw facts."""
    machine = get(raw, "machine", str, "cpu")
    info = get(raw, "cpuinfo", dict, "cpu", {})
    for key in info:  # /proc/cpuinfo values are text; anything else would be split into garbage flags below
        get(info, key, str, "cpu.cpuinfo", "")
    vendor = str(info.get("vendor_id") or info.get("CPU implementer") or "unknown")
    model = str(info.get("model name") or info.get("Model") or info.get("uarch") or info.get("cpu") or "unknown")
    flags = set(str(info.get("flags") or info.get("Features") or "").split())
    cpu_part = str(info.get("CPU part") or "")
    arch_vendor = vendor
    if machine in ("aarch64", "arm64"):
        from archspec.cpu.detect import _canonicalize_aarch64_vendor

        arch_vendor = _canonicalize_aarch64_vendor({k: str(v) for k, v in info.items()})
    micro, generic = _archspec(machine, arch_vendor, flags, cpu_part)
    return CpuSection(
        vendor=vendor,
        model=" ".join(model.split()),
        microarchitecture=micro,
        generic=generic,
        flags=tuple(sorted(flags & NUMERIC_FLAGS)),
        logical_cores=get(raw, "logical_cores", int, "cpu", 1),
        usable_cores=get(raw, "usable_cores", int, "cpu", 1),
    )

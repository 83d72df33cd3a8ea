"""The CPU: vendor, model, microarchitecture (archspec), the ISA flags that change numerics, core counts, and the
cache sizes per level."""

from __future__ import annotations

import math
import os

from envlock._raw import get
from envlock.errors import ModelError
from envlock.probes import host

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    from typing import Any

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


#: Where Linux describes cpu0's caches: one index<N> folder per cache, each with `level`, `type` and `size`.
SYSFS_CACHE = "/sys/devices/system/cpu/cpu0/cache"
#: The (level, type) of each cache the lock records, as sysfs names them, and its CpuSection field.
CACHE_FIELDS = {("1", "Data"): "cache_l1d", ("1", "Instruction"): "cache_l1i", ("2", "Unified"): "cache_l2",
                ("3", "Unified"): "cache_l3"}
#: py-cpuinfo's key for each cache (the portable fallback off Linux: macOS, the BSDs, Windows).
CPUINFO_CACHE_KEYS = {"l1_data_cache_size": "cache_l1d", "l1_instruction_cache_size": "cache_l1i",
                      "l2_cache_size": "cache_l2", "l3_cache_size": "cache_l3"}


def collect_caches(root: str | None = None) -> list[dict[str, str]]:
    """Raw facts: level, type and size (sysfs text, "48K") of each cache of cpu0 (under `root`, SYSFS_CACHE by
    default); [] without sysfs."""
    root = root or SYSFS_CACHE
    try:
        names = sorted(n for n in os.listdir(root)
                       if n[:5] == "index" and 6 <= len(n) <= 8 and n[5:].isascii() and n[5:].isdigit())
    except OSError:
        return []
    out = []
    for name in names:
        entry: dict[str, str] = {}
        for key in ("level", "type", "size"):
            try:
                with open(os.path.join(root, name, key), encoding="ascii", errors="replace") as handle:
                    entry[key] = handle.read(64).strip()
            except OSError:
                break
        else:
            out.append(entry)
    return out


def collect_cpuinfo_caches() -> dict[str, Any]:
    """Raw facts: py-cpuinfo's cache sizes, or {} when it is not installed or says nothing (about a second: it
    runs itself in a subprocess, so only off Linux, where there is no sysfs cache tree, and never for `verify
    --fast`)."""
    try:
        import cpuinfo  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return {}
    try:
        info = cpuinfo.get_cpu_info()
    except Exception:  # py-cpuinfo probes the machine its own way; any failure only means "no cache sizes"
        return {}
    if not isinstance(info, dict):
        return {}
    return {key: info[key] for key in CPUINFO_CACHE_KEYS if isinstance(info.get(key), (int, str))}


def on_linux() -> bool:
    """Whether this is Linux (where sysfs is the only source of cache sizes worth recording)."""
    return host.system() == "Linux"


def collect_cpu(*, fallback: bool = True, cache_root: str | None = None) -> dict[str, Any]:
    """Raw facts: the first /proc/cpuinfo block, the core counts and the cache sizes (sysfs; off Linux py-cpuinfo,
    when `fallback`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            cpuinfo = _first_cpuinfo_block(handle.read(65536))
    except OSError:
        cpuinfo = {}
    if os.environ.get(TEST_FLAGS_VAR) is not None:
        cpuinfo["flags"] = os.environ[TEST_FLAGS_VAR]
    raw: dict[str, Any] = {
        "machine": host.machine(),
        "cpuinfo": cpuinfo,
        "logical_cores": os.cpu_count() or 1,
        "usable_cores": _usable_cores(),
    }
    caches = collect_caches(cache_root)
    if caches:
        raw["caches"] = caches
    elif fallback and not on_linux() and (sizes := collect_cpuinfo_caches()):
        # Only off Linux: on Linux py-cpuinfo knows no more than sysfs (it asks lscpu, which reads sysfs) and sums
        # the instances (two cores' L2 as one size), so a Linux without the tree records no sizes, not other ones.
        raw["cpuinfo_caches"] = sizes
    return raw


_SIZE = r"(?i)([0-9]{1,12})\s*([KMG]?)(?:i?B)?"
_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def cache_bytes(size: str) -> int | None:
    """A cache size as sysfs ("48K") or py-cpuinfo ("1 MiB", "256 KB") writes it, in bytes; None if unreadable."""
    import re

    match = re.fullmatch(_SIZE, size.strip())
    return int(match.group(1)) * _UNIT[match.group(2).upper()] if match else None


def parse_caches(raw: Any) -> dict[str, int]:
    """CpuSection field -> bytes for each cache level the raw facts give (sysfs first, else py-cpuinfo)."""
    out: dict[str, int] = {}
    entries = get(raw, "caches", list, "cpu", [])
    for i, entry in enumerate(entries):
        where = f"cpu.caches[{i}]"
        level, kind, size = (get(entry, key, str, where) for key in ("level", "type", "size"))
        name = CACHE_FIELDS.get((level, kind))
        value = cache_bytes(size)
        if value is None:
            raise ModelError(f"{where}.size", f"expected a size such as 48K, got {size[:30]!r}")
        if name is not None and value:
            out.setdefault(name, value)
    if entries:
        return out
    sizes = get(raw, "cpuinfo_caches", dict, "cpu", {})
    for key, name in CPUINFO_CACHE_KEYS.items():
        value = get(sizes, key, (int, str), "cpu.cpuinfo_caches", 0)
        number = value if isinstance(value, int) else cache_bytes(value)
        if number is None or number < 0 or isinstance(value, bool):
            raise ModelError(f"cpu.cpuinfo_caches.{key}", f"expected a size in bytes, got {str(value)[:30]!r}")
        if number:
            out[name] = number
    return out


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


def _power_compatible(generation: int) -> Any:
    """The POWER check: a target of this family whose generation (9 for POWER9) is at most the CPU's."""
    # archspec's own check starts from the *running* host's family (`_machine()`), so ppc64le facts parsed on an
    # x86_64 machine would come out as x86 targets; this one reads nothing but the facts.
    def check(info: Any, target: Any) -> bool:
        return bool(target.family.name == info.name and target.generation <= generation)
    return check


def _archspec(machine: str, vendor: str, flags: set[str], cpu_part: str, generation: int) -> Any:
    """archspec's Microarchitecture for the given facts, chosen the way archspec's host() chooses; None for a
    family archspec cannot judge from facts alone."""
    from archspec.cpu import TARGETS, generic_microarchitecture
    from archspec.cpu.detect import COMPATIBILITY_CHECKS, partial_uarch

    family = FAMILIES.get(machine.lower(), machine)
    if family in ("ppc64le", "ppc64"):
        tester: Any = _power_compatible(generation)
        info = partial_uarch(name=family, generation=generation)
    else:
        # Only checks that read nothing but the facts (archspec's riscv64 one starts from the running host too).
        tester = {"x86_64": COMPATIBILITY_CHECKS.get("x86_64"), "aarch64": _aarch64_compatible}.get(family)
        info = partial_uarch(vendor=vendor or "generic", features=flags, cpu_part=cpu_part)
    if tester is None or family not in TARGETS:
        return None
    candidates = [t for t in TARGETS.values() if tester(info, t)] or [generic_microarchitecture(family)]

    def depth(target: Any) -> tuple[int, int, int]:
        return len(target.ancestors), target.generation, len(target.features)

    generics = [t for t in candidates if t.vendor == "generic"] or [generic_microarchitecture(family)]
    best_generic = max(generics, key=depth)
    if cpu_part and any(t.cpu_part == cpu_part for t in candidates):
        candidates = [t for t in candidates if t.cpu_part == cpu_part]
    specific = [t for t in candidates if t > best_generic]
    return max(specific, key=depth) if specific else best_generic


#: platform.machine() spellings of archspec's families (macOS and Windows name them their own way).
FAMILIES = {"amd64": "x86_64", "arm64": "aarch64", "powerpc64le": "ppc64le", "powerpc64": "ppc64"}


def _power_generation(info: dict[str, Any]) -> int:
    """9 for "POWER9, altivec supported" (/proc/cpuinfo's `cpu` line on POWER); 0 when it names none (QEMU)."""
    import re

    match = re.search(r"POWER([0-9]{1,2})", str(info.get("cpu") or ""))
    return int(match.group(1)) if match else 0


def parse_cpu(raw: Any) -> CpuSection:
    """The `cpu` section of a target from raw facts."""
    from envlock.model import CpuSection

    machine = get(raw, "machine", str, "cpu")
    info = get(raw, "cpuinfo", dict, "cpu", {})
    for key in info:  # /proc/cpuinfo values are text; anything else would be split into garbage flags below
        get(info, key, str, "cpu.cpuinfo", "")
    vendor = str(info.get("vendor_id") or info.get("CPU implementer") or "")
    model = str(info.get("model name") or info.get("Model") or info.get("uarch") or info.get("cpu") or "unknown")
    flags = set(str(info.get("flags") or info.get("Features") or "").split())
    cpu_part = str(info.get("CPU part") or "")
    if FAMILIES.get(machine.lower(), machine) == "aarch64" and vendor:
        vendor = arm_vendor(vendor)  # "0x41" -> "ARM", as archspec names it
    target = _archspec(machine, vendor, flags, cpu_part, _power_generation(info))
    if target is None:
        family = FAMILIES.get(machine.lower(), machine) or "unknown"
        micro = generic = family
    else:
        micro, generic = target.name, target.generic.name
        if not vendor and target.vendor != "generic":
            vendor = target.vendor  # POWER's /proc/cpuinfo names no vendor; archspec's target does (IBM)
    return CpuSection(
        vendor=vendor or "unknown",
        model=" ".join(model.split()),
        microarchitecture=micro,
        generic=generic,
        flags=tuple(sorted(flags & NUMERIC_FLAGS)),
        logical_cores=get(raw, "logical_cores", int, "cpu", 1),
        usable_cores=get(raw, "usable_cores", int, "cpu", 1),
        **parse_caches(raw),
    )


def arm_vendor(implementer: str) -> str:
    """archspec's name for an Arm `CPU implementer` code ("0x41" -> "ARM", "0x61" -> "Apple"); the code if unknown."""
    from archspec.cpu.detect import _canonicalize_aarch64_vendor

    return str(_canonicalize_aarch64_vendor({"CPU implementer": implementer}))


#: The families whose generic level (and, for POWER, microarchitecture) envlock 0.1 recorded as the bare
#: family name, and the vendor it recorded as "unknown" (POWER) or as the implementer code (Arm).
_COARSE_BEFORE = {"generic": ("aarch64", "ppc64le", "ppc64"), "microarchitecture": ("ppc64le", "ppc64")}


def older_answer(field: str, locked: Any, now: Any) -> bool:
    """Whether `locked` is what an older envlock wrote for the CPU envlock now describes as `now`: the bare family
    (`aarch64` for `armv8.4a`, `ppc64le` for `power9le`), an Arm implementer code (`0x41` for `ARM`), or `unknown`
    for a vendor it could not name. Such a lock is not wrong, only coarser: no finding."""
    if not isinstance(locked, str) or not isinstance(now, str) or locked == now:
        return False
    if field == "vendor":
        import re

        return locked == "unknown" or (re.fullmatch(r"0x[0-9a-fA-F]{1,4}", locked) is not None
                                       and arm_vendor(locked) == now)
    if locked not in _COARSE_BEFORE.get(field, ()):
        return False
    from archspec.cpu import TARGETS

    target = TARGETS.get(now)
    return target is not None and TARGETS[locked] in target.ancestors

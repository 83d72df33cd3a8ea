"""OPENBLAS_CORETYPE against the CPU: a core type whose kernels this CPU cannot execute kills the process with
SIGILL the moment OpenBLAS loads, so it is judged before anything imports numpy or torch."""

from __future__ import annotations

import os

from envlock.probes import host
from envlock.probes.cpu import TEST_FLAGS_VAR, _first_cpuinfo_block

# OpenBLAS DYNAMIC_ARCH core types (the names `openblas_get_corename()` and OPENBLAS_CORETYPE use, compared
# without case, as OpenBLAS's driver/others/dynamic.c does) -> the /proc/cpuinfo flags their kernels execute.
# From OpenBLAS's README ("Haswell: AVX2 and FMA", "Skylake-X: AVX512 and FMA"), TargetList.txt and dynamic.c,
# which picks Cooperlake only with avx512_bf16 and SapphireRapids only with AMX-BF16 (`support_amx_bf16()`).
# Only core types that need more than the x86-64 / ARMv8 baseline are listed: an older one runs anywhere, and a
# name not listed (a typo, another family's core) is left to OpenBLAS, which falls back to a generic kernel.
_AVX512 = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "fma")
_X86_64 = {
    "sandybridge": ("avx",),
    "bulldozer": ("avx",),
    "piledriver": ("avx", "fma"),
    "steamroller": ("avx", "fma"),
    "excavator": ("avx", "avx2", "fma"),
    "haswell": ("avx", "avx2", "fma"),
    "zen": ("avx", "avx2", "fma"),
    "skylakex": _AVX512,
    "cooperlake": (*_AVX512, "avx512_bf16"),
    "sapphirerapids": (*_AVX512, "avx512_bf16", "amx_tile", "amx_bf16"),
}
_AARCH64 = {
    "a64fx": ("sve",),
    "armv8sve": ("sve",),
    "neoversev1": ("sve",),
    "neoversev2": ("sve", "sve2"),
    "neoversen2": ("sve", "sve2"),
}
CORE_TYPES = {"x86_64": _X86_64, "aarch64": _AARCH64}
_ISA_WORDS = {**{flag: "AVX-512" for flag in _AVX512[:5]}, "avx2": "AVX2", "avx": "AVX", "fma": "FMA",
              "avx512_bf16": "AVX512-BF16", "amx_tile": "AMX", "amx_bf16": "AMX", "sve": "SVE", "sve2": "SVE2"}


def family(machine: str, flags: set[str] | frozenset[str]) -> str:
    """x86_64 or aarch64 from a machine name, or from the flags when the name says neither; "" otherwise."""
    name = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine.lower())
    if name in CORE_TYPES:
        return name
    if "asimd" in flags:
        return "aarch64"
    if flags & {"sse4_2", "avx", "avx2", "avx512f"}:
        return "x86_64"
    return ""


def coretype_verdict(name: str, flags: set[str] | frozenset[str], machine: str = "") -> str:
    """Why OPENBLAS_CORETYPE=`name` cannot run on a CPU with `flags` (the hint's words), "" when it can or unknown."""
    arch = family(machine, flags)
    table = CORE_TYPES.get(arch, {})
    needs = table.get(name.strip().lower())
    if not name.strip() or needs is None:
        return ""
    missing = [flag for flag in needs if flag not in flags]
    if not missing:
        return ""
    words = list(dict.fromkeys(_ISA_WORDS.get(flag, flag) for flag in missing))
    runnable = [core for core, need in table.items() if all(flag in flags for flag in need)]
    choice = f" or pick one of {', '.join(_spelled(core) for core in runnable)}" if runnable else ""
    return (f"OPENBLAS_CORETYPE={name} needs {', '.join(words)}, which this CPU lacks: the job would die with SIGILL "
            f"when OpenBLAS loads; unset it (OpenBLAS then picks this CPU's own kernel){choice}")


def _spelled(core: str) -> str:
    return {"skylakex": "SkylakeX", "sapphirerapids": "SapphireRapids", "cooperlake": "Cooperlake",
            "armv8sve": "ARMV8SVE", "a64fx": "A64FX", "neoversev1": "NeoverseV1", "neoversev2": "NeoverseV2",
            "neoversen2": "NeoverseN2", "sandybridge": "Sandybridge"}.get(core, core.capitalize())


def cpu_flags() -> set[str]:
    """This CPU's /proc/cpuinfo flags (or the test override); empty when they cannot be read."""
    override = os.environ.get(TEST_FLAGS_VAR)
    if override is not None:
        return set(override.split())
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            info = _first_cpuinfo_block(handle.read(65536))
    except OSError:
        return set()
    return set((info.get("flags") or info.get("Features") or "").split())


def blocked_coretype() -> str:
    """Why loading OpenBLAS would kill this process (the requested core type this CPU cannot run), "" if it would not.

    With no flags to read (not Linux), nothing is known, and nothing is refused.
    """
    name = os.environ.get("OPENBLAS_CORETYPE", "")
    if not name:
        return ""
    flags = cpu_flags()
    return coretype_verdict(name, flags, host.machine()) if flags else ""

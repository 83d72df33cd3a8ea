"""Causes: which other finding a mismatch follows from, read from the recorded knobs of both sides (pure).

`candidates(path, want, have)` lists the changed knobs that explain `path`, the likeliest first; `link_causes`
sets each finding's `cause` to the first of them that is itself a finding of the same comparison, walking through
knobs that are not (a kernel blamed on `threads.torch_intraop` ignored by the policy falls back to the
`floats.env.OMP_NUM_THREADS` that moved it). The edges only ever point from a consequence to something it
depends on, so no chain loops; `link_causes` still breaks any loop it would make.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from envlock.findings import UNSET, Finding

#: The environment variables each threading library reads for its thread count, the one it obeys first first.
THREAD_VARS = {
    "openblas": ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"),
    "mkl": ("MKL_NUM_THREADS", "OMP_NUM_THREADS"),
    "blis": ("OMP_NUM_THREADS",),
    "openmp": ("OMP_NUM_THREADS",),
}
#: torch's default intra-op thread count comes from these (ATen's intraop_default_num_threads), else the cores.
TORCH_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: The nvidia-* wheel that ships each library the `cuda` section records.
CUDA_WHEELS = {"cublas": "nvidia-cublas-cu", "cudnn": "nvidia-cudnn-cu", "nccl": "nvidia-nccl-cu",
               "runtime": "nvidia-cuda-runtime-cu"}


def is_set(value: Any) -> bool:
    """Whether an env var's flattened value says it is set."""
    return value not in (None, UNSET)


def changed(want: dict[str, Any], have: dict[str, Any], path: str) -> bool:
    """Whether `path` differs between the two sides (`packages.X`, `floats.torch`: present on one side only)."""
    parts = path.split(".")
    if (parts[0] == "packages" and len(parts) == 2) or path == "floats.torch":
        key = f"{path}.version"
        return (key in want) != (key in have)
    return (path in want or path in have) and want.get(path) != have.get(path)


def thread_var(names: Iterable[str], want: dict[str, Any], have: dict[str, Any]) -> str:
    """The `floats.env.*` path among `names` (in the order the library reads them) whose change decides, or ""."""
    for name in names:
        key = f"floats.env.{name}"
        if changed(want, have, key):
            return key
        if is_set(want.get(key)):
            return ""  # set alike on both sides: it decides the count, the variables after it do not
    return ""


def wheel(want: dict[str, Any], have: dict[str, Any], prefix: str) -> str:
    """`packages.<name>` of the locked (else the present) wheel whose name starts with `prefix`, or ""."""
    for side in (want, have):
        for key in sorted(side):
            if key.startswith(f"packages.{prefix}") and key.endswith(".version"):
                return key.removesuffix(".version")
    return ""


def _owner(lib: str) -> str:
    return lib.split("-")[0]


def _torch_gone(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    return ["floats.torch", "packages.torch"] if changed(want, have, "floats.torch") else []


def candidates(path: str, want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """The changed knobs that explain a mismatch at `path`, likeliest first (none: it is a root cause)."""
    parts = path.split(".")
    out: list[str] = []
    if parts[0] == "threads":
        out += _torch_gone(want, have)
        if path == "threads.torch_intraop":
            out.append(thread_var(TORCH_THREAD_VARS, want, have))
            if not any(is_set(want.get(f"floats.env.{n}")) for n in TORCH_THREAD_VARS):
                out.append("cpu.usable_cores")
    elif parts[:2] == ["blas", "libraries"] and len(parts) >= 3:
        lib, field = parts[2], parts[3] if len(parts) > 3 else ""
        api = str(want.get(f"blas.libraries.{lib}.internal_api") or have.get(f"blas.libraries.{lib}.internal_api"))
        if _owner(lib) == "torch":
            out += _torch_gone(want, have)
        if field == "num_threads":
            out.append(thread_var(THREAD_VARS.get(api, ("OMP_NUM_THREADS",)), want, have))
            if _owner(lib) == "torch":
                out.append("threads.torch_intraop")
            out.append("cpu.usable_cores")
        elif field == "architecture":
            if api == "openblas":
                out.append("floats.env.OPENBLAS_CORETYPE")
            out.append("cpu.microarchitecture")
        else:
            out += [f"packages.{_owner(lib)}", f"packages.{_owner(lib)}.version"]
    elif path in ("blas.torch_blas", "blas.torch_blas_version", "blas.torch_cpu_capability"):
        out += _torch_gone(want, have)
        if path == "blas.torch_cpu_capability":
            out += ["floats.env.ATEN_CPU_CAPABILITY", "cpu.microarchitecture"]
        out += ["packages.torch.version", "floats.torch.version"]
    elif path == "floats.torch":
        out.append("packages.torch")
    elif path == "floats.torch.version":
        out.append("packages.torch.version")
    elif path == "floats.torch.matmul_allow_tf32":
        out.append("floats.env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")
    elif path in ("floats.torch.float32_matmul_precision", "floats.torch.matmul_fp32_precision"):
        out.append("floats.torch.matmul_allow_tf32")  # one setting, read two ways: group them under allow_tf32
    elif parts[0] == "cuda":
        out += _torch_gone(want, have)
        if parts[1] == "kernels" and len(parts) == 3:
            out.append(f"gpu.devices.{parts[2]}.compute_capability")
        elif parts[1] in CUDA_WHEELS:
            name = wheel(want, have, CUDA_WHEELS[parts[1]])
            out += [f"{name}.version", name] if name else []
        out += ["packages.torch.version", "floats.torch.version"]
    elif path in ("gpu.driver_for_cuda", "gpu.cuda_driver"):
        out.append("gpu.driver")
    elif path == "gpu.count" and want.get("gpu.driver") and not have.get("gpu.driver"):
        out.append("gpu.driver")
    elif parts[:2] == ["gpu", "devices"] and len(parts) >= 4:
        device = ".".join(parts[:3])
        if parts[3] == "mig_instances":
            out.append(".".join(parts[:5]) if len(parts) > 5 else "")
            out.append(f"{device}.mig")
        elif parts[3] == "sm_count":
            out += [f"{device}.mig", f"{device}.compute_capability"]
    return [c for c in dict.fromkeys(out) if c and c != path and changed(want, have, c)]


def resolve(start: str, path: str, emitted: set[str], want: dict[str, Any], have: dict[str, Any]) -> str:
    """The first finding reached from `start` (itself, else through the knobs that explain it), or ""."""
    seen = {path}

    def walk(node: str) -> str:
        if not node or node in seen:
            return ""
        seen.add(node)
        if node in emitted:
            return node
        return next((found for nxt in candidates(node, want, have) if (found := walk(nxt))), "")

    return walk(start)


def link_causes(findings: Iterable[Finding], want: dict[str, Any], have: dict[str, Any]) -> tuple[Finding, ...]:
    """The findings with `cause` set to a finding of the same list (a diagnosed cause first), never a loop."""
    items = list(findings)
    emitted = {f.path for f in items}
    causes: dict[str, str] = {}
    for f in items:
        starts = [f.cause] if f.cause else []
        starts += candidates(f.path, want, have)
        causes[f.path] = next((c for s in starts if (c := resolve(s, f.path, emitted, want, have))), "")
    for path in list(causes):  # break a loop, should the edges ever make one
        node, seen = causes[path], {path}
        while node and node not in seen:
            seen.add(node)
            node = causes.get(node, "")
        if node == path:
            causes[path] = ""
    return tuple(dataclasses.replace(f, cause=causes[f.path]) for f in items)

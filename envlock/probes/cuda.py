"""The CUDA libraries a process really runs with: asked of the loaded libraries, not guessed from ldconfig."""

from __future__ import annotations

import os
import sys

from envlock._raw import get
from envlock.errors import ModelError

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    from typing import Any

    from envlock.model import CudaSection

# Library -> (file-name pattern, version function, how it returns the version).
LIBRARIES = {
    "cudart": (r"libcudart\.so", "cudaRuntimeGetVersion", "out"),
    "cudnn": (r"libcudnn\.so", "cudnnGetVersion", "ret"),
    "cublaslt": (r"libcublasLt\.so", "cublasLtGetVersion", "ret"),
    "nccl": (r"libnccl\.so", "ncclGetVersion", "out"),
}


def loaded_libraries(maps_text: str) -> dict[str, str]:
    """name -> path of each CUDA library mapped into the process, from /proc/self/maps text."""
    import re

    found: dict[str, str] = {}
    for line in maps_text.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if not path.startswith("/"):
            continue
        base = os.path.basename(path)
        for name, (pattern, _, _) in LIBRARIES.items():
            if name not in found and re.match(pattern, base):
                found[name] = path
    return found


def _ask(path: str, function: str, style: str) -> int | None:
    import ctypes

    try:
        lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LAZY", 1))
        func = getattr(lib, function)
    except (OSError, AttributeError):
        return None
    if style == "ret":
        func.restype = ctypes.c_size_t
        return int(func())
    value = ctypes.c_int(0)
    func.restype = ctypes.c_int
    return value.value if func(ctypes.byref(value)) == 0 else None


def collect_cuda() -> dict[str, Any] | None:
    """Raw facts: the CUDA build of torch and the versions the loaded CUDA libraries report; None without it."""
    torch = sys.modules.get("torch")
    if torch is None or not getattr(torch.version, "cuda", None):
        return None
    raw: dict[str, Any] = {"torch_cuda": str(torch.version.cuda)}
    try:
        raw["arch_list"] = list(torch.cuda.get_arch_list())
    except (RuntimeError, AttributeError):
        pass
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            paths = loaded_libraries(handle.read())
    except OSError:
        paths = {}
    versions = {}
    for name, path in sorted(paths.items()):
        _, function, style = LIBRARIES[name]
        number = _ask(path, function, style)
        if number is not None:
            versions[name] = number
    raw["library_versions"] = versions
    raw["library_paths"] = paths
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if cudnn is not None and "cudnn" not in versions:
        versions["cudnn"] = int(cudnn)
    if "nccl" not in versions:
        try:
            major, minor, patch = torch.cuda.nccl.version()
            versions["nccl"] = major * 10000 + minor * 100 + patch
        except (RuntimeError, AttributeError, TypeError, ValueError):
            pass
    return raw


def decode_cudart(number: int) -> str:
    """cudaRuntimeGetVersion's 12040 -> "12.4"."""
    return f"{number // 1000}.{number % 1000 // 10}"


def decode_cudnn(number: int) -> str:
    """cudnnGetVersion's 8902 -> "8.9.2" and (from cuDNN 9 on) 90100 -> "9.1.0"."""
    if number >= 90000:
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


def decode_cublas(number: int) -> str:
    """cublasLtGetVersion's 120402 -> "12.4.2" (11.x: 11601 -> "11.6.1")."""
    if number >= 100000:
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


def decode_nccl(number: int) -> str:
    """ncclGetVersion's 22105 -> "2.21.5" (before 2.9: 2708 -> "2.7.8")."""
    if number >= 10000:
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


def parse_cuda(raw: Any) -> CudaSection | None:
    """The `[cuda]` section from raw facts, or None for a process without a CUDA build of torch."""
    from envlock.model import CudaSection

    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ModelError("cuda", "expected an object")
    versions = get(raw, "library_versions", dict, "cuda", {})
    for key, value in versions.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelError(f"cuda.library_versions.{key}", "expected an integer")
    arch = get(raw, "arch_list", list, "cuda", [])
    return CudaSection(
        torch_cuda=get(raw, "torch_cuda", str, "cuda"),
        runtime=decode_cudart(versions["cudart"]) if "cudart" in versions else "",
        cudnn=decode_cudnn(versions["cudnn"]) if "cudnn" in versions else "",
        cublas=decode_cublas(versions["cublaslt"]) if "cublaslt" in versions else "",
        nccl=decode_nccl(versions["nccl"]) if "nccl" in versions else "",
        arch_list=tuple(str(a) for a in arch),
    )


def kernels_for(arch_list: tuple[str, ...], capability: str) -> str:
    """How torch runs on a GPU of `capability` ("9.0"): "sass", "ptx" (JIT), or "" (no kernel image)."""
    import re

    try:
        major, minor = (int(p) for p in capability.split("."))
    except ValueError:
        return "sass"  # unknown capability: nothing to say
    for arch in arch_list:
        match = re.fullmatch(r"sm_(\d+)(\d)[a-z]?", arch)
        if match and int(match.group(1)) == major and int(match.group(2)) <= minor:
            # SASS runs on the same major version with an equal or higher minor; `a` variants only on their own.
            if not arch[-1].isalpha() or int(match.group(2)) == minor:
                return "sass"
    for arch in arch_list:
        match = re.fullmatch(r"compute_(\d+)(\d)([a-z]?)", arch)
        if not match:
            continue
        built = (int(match.group(1)), int(match.group(2)))
        # PTX JIT-compiles forward, except arch-specific PTX (`compute_90a`), which runs only where it was built for.
        if (built == (major, minor)) if match.group(3) else (built <= (major, minor)):
            return "ptx"
    return ""

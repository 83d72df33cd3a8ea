"""CUDA libraries a process loads from outside the nvidia-* wheel installed for them, at another version: judged
from raw facts (what envlock.probes.cuda and envlock.probes.packages collected), for capture's and verify's
warning."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from envlock.probes.cuda import decode_cublas, decode_cudart, decode_cudnn, decode_nccl

#: The `cuda` field of each library, the nvidia-* wheel that ships it (its name up to `-cu12`), and the folder under
#: site-packages/nvidia/ it installs the library into (CUDA 13 wheels, named without `-cuNN`, use `cu13/`).
WHEELS = {"cudart": ("runtime", "nvidia-cuda-runtime", "cuda_runtime"), "cudnn": ("cudnn", "nvidia-cudnn", "cudnn"),
          "cublaslt": ("cublas", "nvidia-cublas", "cublas"), "nccl": ("nccl", "nvidia-nccl", "nccl")}
DECODERS = {"cudart": decode_cudart, "cudnn": decode_cudnn, "cublaslt": decode_cublas, "nccl": decode_nccl}


@dataclass(frozen=True)
class Shadow:
    """A CUDA library the process loaded from outside the nvidia-* wheel that claims to ship it, at another version."""

    field: str  # the `cuda` field: runtime, cudnn, cublas, nccl
    wheel: str  # nvidia-nccl-cu12
    wheel_version: str
    wheel_dir: str  # .../site-packages/nvidia/nccl/lib
    loaded_version: str
    loaded_path: str  # /usr/lib/x86_64-linux-gnu/libnccl.so.2


def _wheel_dir(location: str, name: str, folder: str) -> str:
    """Where the wheel puts the library: nvidia/<folder>/lib for `-cuNN` wheels; the CUDA 13 ones without the suffix
    share per-CUDA folders (nvidia/cu13/lib), so only nvidia/ is certain."""
    if re.search(r"-cu[0-9]{1,3}$", name):
        return os.path.join(location, "nvidia", folder, "lib")
    return os.path.join(location, "nvidia")


def _same_release(loaded: str, wheel: str) -> bool:
    """Whether the version a library reports (12.4, 2.21.5) is the wheel's (12.4.127, 2.21.5): a prefix of it."""
    have, want = loaded.split("."), re.split(r"[.+]", wheel)
    return have == want[: len(have)]


def find_shadowed(cuda: Any, packages: Any) -> tuple[Shadow, ...]:
    """The CUDA libraries loaded from outside their installed nvidia-* wheel's folder at a version the wheel does
    not ship, from raw facts (`cuda.library_paths` / `library_versions`, each package's `location`). Pure; facts
    it cannot read give nothing (parse_cuda and parse_packages name what is malformed)."""
    if not isinstance(cuda, dict) or not isinstance(packages, list):
        return ()
    paths, versions = cuda.get("library_paths"), cuda.get("library_versions")
    if not isinstance(paths, dict) or not isinstance(versions, dict):
        return ()
    out = []
    for library, (field, prefix, folder) in sorted(WHEELS.items()):
        path, number = paths.get(library), versions.get(library)
        if not isinstance(path, str) or not isinstance(number, int) or isinstance(number, bool):
            continue
        wheels = [p for p in packages if isinstance(p, dict) and isinstance(p.get("name"), str)
                  and isinstance(p.get("version"), str) and isinstance(p.get("location"), str)
                  and re.fullmatch(re.escape(prefix) + r"(-cu[0-9]{1,3})?", p["name"].lower().replace("_", "-"))]
        if not wheels:
            continue
        loaded = DECODERS[library](number)
        where = os.path.normpath(path)
        if any(where.startswith(os.path.join(os.path.normpath(p["location"]), "nvidia", "")) for p in wheels):
            continue  # the wheel's own copy (whatever version it reports)
        if any(_same_release(loaded, p["version"]) for p in wheels):
            continue  # another file, the same release: nothing the numbers could tell apart
        first = wheels[0]
        out.append(Shadow(field=field, wheel=first["name"], wheel_version=first["version"],
                          wheel_dir=_wheel_dir(first["location"], first["name"], folder),
                          loaded_version=loaded, loaded_path=path))
    return tuple(out)

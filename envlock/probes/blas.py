"""BLAS and OpenMP libraries loaded in the process (threadpoolctl), and the BLAS compiled into torch."""

from __future__ import annotations

import sys

from envlock._raw import get
from envlock.errors import ModelError
from envlock.probes.coretype import blocked_coretype

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    from typing import Any

    from envlock.model import BlasSection

#: Modules whose import loads the numeric libraries worth locking.
NUMERIC_MODULES = ("numpy", "torch")


def load_numeric_modules(modules: tuple[str, ...] = NUMERIC_MODULES) -> list[str]:
    """Import those of `modules` that are installed, so their BLAS is loaded; return the ones imported.

    None is imported when OPENBLAS_CORETYPE names a kernel this CPU cannot run: the import would die with SIGILL
    (comparison reports it as `blas.coretype`).
    """
    if blocked_coretype():
        return [name for name in modules if name in sys.modules]
    import importlib.util

    loaded = []
    for name in modules:
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            __import__(name)
            loaded.append(name)
    return loaded


def collect_blas(*, import_modules: bool = True) -> dict[str, Any]:
    """Raw facts: threadpoolctl's view of the process, plus torch's build configuration when torch is loaded."""
    if import_modules:
        load_numeric_modules()
    from threadpoolctl import threadpool_info

    raw: dict[str, Any] = {"threadpool_info": threadpool_info()}
    torch = sys.modules.get("torch")
    if torch is not None:
        raw["torch_config"] = torch.__config__.show()
        raw["torch_parallel_info"] = torch.__config__.parallel_info()
        raw["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return raw


def library_owner(filepath: str) -> str:
    """The package that ships a shared library, from its path (`.../numpy.libs/x.so` -> `numpy`)."""
    import re

    parts = re.split(r"[\\/]+", filepath)
    for i, part in enumerate(parts[:-1]):
        if part.endswith(".libs"):
            return part[: -len(".libs")]
        if part in ("site-packages", "dist-packages") and i + 2 < len(parts):
            owner = parts[i + 1]
            return owner[: -len(".libs")] if owner.endswith(".libs") else owner
    name = parts[-1]
    return re.split(r"[.-]", name, maxsplit=1)[0] or "system"


def parse_torch_blas(config: str, parallel_info: str) -> tuple[str, str]:
    """(backend, version) of the BLAS compiled into torch, from its build configuration text."""
    import re

    match = re.search(r"BLAS_INFO=([A-Za-z0-9_+.-]+)", config)
    backend = match.group(1) if match else ""
    version = ""
    mkl = re.search(r"Math Kernel Library Version ([0-9][0-9.]*)", parallel_info)
    if backend == "mkl" and mkl:
        version = mkl.group(1)
    openblas = re.search(r"OpenBLAS ([0-9][0-9.]*)", parallel_info + config)
    if backend == "open" and openblas:
        backend, version = "openblas", openblas.group(1)
    return backend, version


def parse_blas(raw: Any) -> BlasSection:
    """The `blas` section of a target from raw facts."""
    import re

    from envlock.model import BlasLibrary, BlasSection

    infos = get(raw, "threadpool_info", list, "blas", [])
    libraries: dict[str, BlasLibrary] = {}
    for i, info in enumerate(infos):
        where = f"blas.threadpool_info[{i}]"
        internal = get(info, "internal_api", str, where)
        owner = library_owner(get(info, "filepath", str, where, ""))
        lib_id = re.sub(r"[^A-Za-z0-9_.+-]", "-", f"{owner}-{internal}")
        if lib_id in libraries:
            continue
        libraries[lib_id] = BlasLibrary(
            id=lib_id,
            user_api=get(info, "user_api", str, where),
            internal_api=internal,
            num_threads=get(info, "num_threads", int, where),
            version=get(info, "version", str, where, ""),
            architecture=get(info, "architecture", str, where, ""),
            threading_layer=get(info, "threading_layer", str, where, ""),
        )
    backend, version = parse_torch_blas(
        get(raw, "torch_config", str, "blas", ""), get(raw, "torch_parallel_info", str, "blas", "")
    )
    capability = get(raw, "torch_cpu_capability", str, "blas", "")
    if capability and not re.fullmatch(r"[A-Za-z0-9_.+-]+", capability):
        raise ModelError("blas.torch_cpu_capability", f"unexpected value {capability!r}")
    return BlasSection(
        libraries=tuple(libraries[key] for key in sorted(libraries)),
        torch_blas=backend,
        torch_blas_version=version,
        torch_cpu_capability=capability,
    )

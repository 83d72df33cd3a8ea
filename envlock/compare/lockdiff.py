"""Hints between two locks (`envlock diff A B`): facts about A and B and what the difference means for results.

No install or export advice: neither lock is this machine. Values print as hints print them (see hints.show).
"""

from __future__ import annotations

from typing import Any

from envlock.compare.hints import NO_TORCH, TORCH_SETTERS, Context, env_state, show, size
from envlock.compare.links import THREAD_VARS, TORCH_THREAD_VARS, changed, thread_var
from envlock.model import Rule

#: What a difference in each numeric environment variable means for results.
ENV_MEANING = {
    "CUBLAS_WORKSPACE_CONFIG": "cuBLAS's workspace decides whether its GEMMs are deterministic",
    "MKL_CBWR": "MKL's reproducibility branch picks its kernels",
    "NVIDIA_TF32_OVERRIDE": "it turns TF32 off for every CUDA library, so fp32 matmul precision differs",
    "OPENBLAS_CORETYPE": "OpenBLAS picks its kernels by it, so matmul results differ in their last bits",
    "PYTHONHASHSEED": "string hashing, hence set and dict order, differs",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "it forces TF32 for cuBLAS fp32 matmul, so fp32 matmul precision differs",
}
SPLIT = "reductions split per thread, so sums differ in their last bits"


def _env(name: str, value: Any) -> str:
    return "not recorded" if value is None else env_state(value)


def _thread_note(names: tuple[str, ...], want: dict[str, Any], have: dict[str, Any]) -> str:
    key = thread_var(names, want, have)
    if not key:
        return ""
    name = key.split(".")[-1]
    return f" ({name} is {_env(name, want.get(key))} in A, {_env(name, have.get(key))} in B)"


def between_hint(path: str, expected: Any, actual: Any, rule: Rule, context: Context) -> str:
    """What one difference between lock A (`expected`) and lock B (`actual`) is, and what it means for results."""
    want, have = context
    parts = path.split(".")
    a, b = show(expected), show(actual)
    if path == "targets":
        return f"B's machine matches none of A's targets ({str(expected).removeprefix('one of: ')})"
    if parts[0] == "packages":
        name = parts[1]
        if len(parts) == 2:
            return (f"A has {name} {a}, B has none" if actual is None else f"A has no {name}, B has {name} {b}")
        if parts[2] == "version":
            return f"{name} is {a} in A, {b} in B: the two run different code"
        if parts[2] == "files":
            return f"{name} has other files in B than in A at the same version (a local edit, or another build)"
        return f"{name} comes from elsewhere in B ({parts[2]}: {a} in A, {b} in B)"
    if path.startswith("floats.env."):
        name = parts[2]
        said = f"{name} is {_env(name, expected)} in A, {_env(name, actual)} in B"
        meaning = SPLIT.replace("reductions", "BLAS and OpenMP reductions") if name.endswith("_NUM_THREADS") \
            else ENV_MEANING.get(name, "")
        return f"{said}: {meaning}" if meaning else said
    if path == "floats.torch":
        if actual == NO_TORCH:
            return f"A was captured with {expected}, B without torch importable: B locks none of torch's flags"
        return f"A was captured without torch importable, B with {actual}: A locks none of torch's flags"
    if path.startswith("floats.torch."):
        flag = parts[2]
        if flag == "version":
            return f"torch is {a} in A, {b} in B: its kernels, and so its results, may differ"
        label = TORCH_SETTERS.get(flag, (flag, ""))[0]
        said = f"{label} is {a} in A, {b} in B"
        override = "floats.env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"
        if flag == "matmul_allow_tf32" and changed(want, have, override):
            said += " (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE differs too)"
        return said
    if parts[0] == "threads":
        if expected is None or actual is None:
            return f"torch's thread counts ({parts[1]}) are in {'A' if actual is None else 'B'} only"
        if parts[1] == "torch_interop":
            return f"torch inter-op threads are {a} in A, {b} in B: one op's bits do not depend on them"
        note = _thread_note(TORCH_THREAD_VARS, want, have)
        return f"torch intra-op threads are {a} in A, {b} in B{note}: {SPLIT}"
    if parts[0] == "blas":
        return _blas(parts, a, b, want, have)
    if parts[0] == "python":
        return f"Python {parts[1]} is {a} in A, {b} in B"
    if path == "cpu.cache_l2":
        return (f"the L2 caches differ ({size(expected)} in A, {size(actual)} in B): OpenBLAS picks its GEMM blocking "
                "from the L2 size (unless OPENBLAS_L2_SIZE is set), so matmul summation order can differ")
    if parts[0] == "cpu":
        return f"the CPUs differ ({parts[1]}: {a} in A, {b} in B): BLAS and ATen may pick other kernels"
    if parts[0] == "platform":
        return f"the operating system setups differ ({parts[1]}: {a} in A, {b} in B)"
    if parts[0] == "gpu":
        return _gpu(parts, a, b, expected, actual)
    if parts[0] == "cuda":
        if parts[1] == "kernels":
            return f"B's torch carries no kernels for B's GPU {parts[2]} ({a}; it has {b.removeprefix('none ')})"
        return f"{parts[1]} is {a} in A, {b} in B: CUDA kernels, and so GPU results, may differ"
    return f"{path} is {a} in A, {b} in B"


def _blas(parts: list[str], a: str, b: str, want: dict[str, Any], have: dict[str, Any]) -> str:
    if len(parts) == 3 and parts[1] == "libraries":
        return f"BLAS/OpenMP library {parts[2]} is loaded in {'A' if b == 'absent' else 'B'} only"
    field = parts[-1]
    if len(parts) == 4:
        lib = parts[2]
        api = str(want.get(f"blas.libraries.{lib}.internal_api") or have.get(f"blas.libraries.{lib}.internal_api"))
        if field == "num_threads":
            note = _thread_note(THREAD_VARS.get(api, ("OMP_NUM_THREADS",)), want, have)
            return f"{lib} runs {a} threads in A, {b} in B{note}: {SPLIT}"
        if field == "architecture":
            note = _thread_note(("OPENBLAS_CORETYPE",), want, have) if api == "openblas" else ""
            return f"{lib} uses its {a} kernels in A, {b} in B{note}: matmul results differ in their last bits"
        return f"{lib}'s {field} is {a} in A, {b} in B: another BLAS build"
    if field == "torch_cpu_capability":
        return f"ATen picks {a} kernels in A, {b} in B: vectorised reductions differ in their last bits"
    return f"torch's BLAS ({field}) is {a} in A, {b} in B: another torch build"


def _gpu(parts: list[str], a: str, b: str, expected: Any, actual: Any) -> str:
    field = parts[-1]
    if parts[1] == "count":
        return f"A has {a} GPU(s), B {b}"
    if parts[1] == "driver":
        return (f"A has NVIDIA driver {a}, B has no driver loaded" if actual is None
                else f"A has NVIDIA driver {a}, B driver {b}")
    if parts[1] == "cuda_driver":
        return (f"A's driver supports CUDA up to {a}; B has no driver loaded" if actual is None
                else f"A's driver supports CUDA up to {a}, B's up to {b}")
    if parts[1] == "driver_for_cuda":
        return f"A's CUDA needs driver {a}; B has driver {b}: A's torch build would not start on B's machine"
    device = f"GPU {parts[2]}" if len(parts) > 3 else "the GPU"
    if field == "compute_capability":
        return (f"{device} has compute capability {a} in A, {b} in B: no bitwise reproducibility across "
                "architectures")
    if field == "sm_count" and "mig_instances" not in parts:
        return f"{device} has {a} SMs in A, {b} in B: cuBLAS picks kernels by SM count, so matmul results differ"
    if "mig_instances" in parts:
        return f"{device}'s MIG layout differs ({'.'.join(parts[3:])}: {a} in A, {b} in B)"
    if field == "mig":
        return f"MIG mode of {device} is {a} in A, {b} in B"
    return f"{device}'s {field} is {a} in A, {b} in B"

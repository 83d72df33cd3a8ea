"""Hints: for each mismatch, the likely cause and the fix, in words a tired engineer reads at a glance."""

from __future__ import annotations

import re
from typing import Any

from envlock.findings import UNSET
from envlock.model import Rule

# floats.torch.<flag> -> the line of code that sets it back (`{value}` is the locked value).
TORCH_SETTERS = {
    "matmul_allow_tf32": ("TF32 for cuBLAS fp32 matmul", "torch.backends.cuda.matmul.allow_tf32 = {value}"),
    "cudnn_allow_tf32": ("TF32 for cuDNN convolutions", "torch.backends.cudnn.allow_tf32 = {value}"),
    "float32_matmul_precision": ("float32 matmul precision", "torch.set_float32_matmul_precision({value!r})"),
    "matmul_allow_fp16_reduced_precision_reduction": (
        "fp16 reduced-precision reductions",
        "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = {value}",
    ),
    "matmul_allow_bf16_reduced_precision_reduction": (
        "bf16 reduced-precision reductions",
        "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = {value}",
    ),
    "deterministic_algorithms": ("deterministic algorithms", "torch.use_deterministic_algorithms({value})"),
    "deterministic_algorithms_warn_only": (
        "warn-only deterministic mode", "torch.use_deterministic_algorithms(True, warn_only={value})"
    ),
    "cudnn_enabled": ("cuDNN", "torch.backends.cudnn.enabled = {value}"),
    "cudnn_benchmark": ("cuDNN benchmark (autotuning)", "torch.backends.cudnn.benchmark = {value}"),
    "cudnn_deterministic": ("cuDNN deterministic mode", "torch.backends.cudnn.deterministic = {value}"),
    "flush_denormal": ("flush-denormal (FTZ/DAZ)", "torch.set_flush_denormal({value})"),
    "default_dtype": ("the default dtype", "torch.set_default_dtype(torch.{value})"),
    "matmul_fp32_precision": ("cuBLAS fp32 precision", "torch.backends.cuda.matmul.fp32_precision = {value!r}"),
    "cudnn_conv_fp32_precision": ("cuDNN conv fp32 precision", "torch.backends.cudnn.conv.fp32_precision = {value!r}"),
    "mkldnn_matmul_fp32_precision": (
        "oneDNN fp32 matmul precision", "torch.backends.mkldnn.matmul.fp32_precision = {value!r}"
    ),
}

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _show(value: Any) -> str:
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _pylit(value: Any) -> Any:
    return value if not isinstance(value, str) or value not in ("true", "false") else value == "true"


def _env_changes(want: dict[str, Any], have: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        key = f"floats.env.{name}"
        if key in want and want.get(key) != have.get(key):
            out.append(f"{name} is {_env_state(have.get(key))} (was {_env_state(want.get(key))})")
    return out


def _env_state(value: Any) -> str:
    return "unset" if value in (None, UNSET) else f"{value!s}"


def hint_for(path: str, expected: Any, actual: Any, rule: Rule, context: tuple[dict[str, Any], dict[str, Any]]) -> str:
    """The likely cause of one mismatch and how to fix it."""
    want, have = context
    parts = path.split(".")
    if path == "targets":
        return (f"this machine matches none of the lock's targets ({str(expected).removeprefix('one of: ')}); the "
                f"hardware findings compare it with the {str(actual).split('nearest: ')[-1].rstrip(')')} target. "
                "If it should run the job: envlock capture --add-target")
    if parts[0] == "packages":
        return _package_hint(parts, expected, actual, str(want.get(f"packages.{parts[1]}.version", "VERSION")))
    if path.startswith("floats.env."):
        name = parts[2]
        if expected == UNSET:
            return f"{name} was unset at capture and is {actual} now: unset it, or re-capture if this is intended"
        if actual == UNSET:
            return f"{name} was {expected} at capture and is unset now: export {name}={expected}, or re-capture"
        return f"{name} was {expected} at capture and is {actual} now: export {name}={expected}, or re-capture"
    if path == "floats.torch":
        return "torch is in the lock but not importable here" if actual is None else (
            "torch is importable here but was not at capture")
    if path.startswith("floats.torch."):
        flag = parts[2]
        if flag == "version":
            return "another torch build than the one captured: install the locked torch (see packages.torch)"
        label, setter = TORCH_SETTERS.get(flag, (flag, ""))
        text = f"{label} was {_show(_pylit(expected))} at capture and is {_show(_pylit(actual))} now"
        if flag == "matmul_allow_tf32" and have.get("floats.env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") not in (None, UNSET):
            text += " (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE is set)"
        return f"{text}: set `{setter.format(value=_pylit(expected))}` in the job, or re-capture" if setter else text
    if parts[0] == "threads":
        if parts[1] == "torch_interop":
            return (f"torch inter-op threads changed {expected} → {actual} (torch.set_num_interop_threads in code, "
                    "or another core count): it runs independent ops side by side; one op's bits do not depend on it")
        causes = _env_changes(want, have, ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
        why = f" ({'; '.join(causes)})" if causes else " (torch.set_num_threads in code, or another core count)"
        return (f"torch intra-op threads changed {expected} → {actual}{why}: reductions split per thread, "
                "so sums change bits")
    if parts[0] == "blas":
        return _blas_hint(parts, expected, actual, want, have)
    if parts[0] == "python":
        return (f"another Python ({parts[1]} {actual}, locked {expected}): run the job with the locked interpreter, "
                "or re-capture in this one")
    if parts[0] == "cpu":
        return (f"another CPU ({parts[1]} {_show(actual)} vs {_show(expected)}): BLAS and ATen may pick other "
                "kernels; if this machine is meant to run the job, add it as a target")
    if parts[0] == "platform":
        return f"another operating system setup ({parts[1]}): {_show(expected)} at capture, {_show(actual)} now"
    if parts[0] == "gpu":
        return _gpu_hint(parts, expected, actual, want, have)
    if parts[0] == "cuda":
        return _cuda_hint(parts, expected, actual)
    if rule.rule == "min":
        return f"needs at least {expected}, found {_show(actual)}"
    return ""


def _gpu_hint(parts: list[str], expected: Any, actual: Any, want: dict[str, Any], have: dict[str, Any]) -> str:
    field = parts[-1]
    if parts[1] == "count":
        if not actual:
            return (f"the lock needs {expected} GPU(s) and none is visible here (a CPU node? CUDA_VISIBLE_DEVICES? "
                    "the container started without --gpus?)")
        return f"the lock needs at least {expected} GPU(s) and {actual} are visible (CUDA_VISIBLE_DEVICES?)"
    if parts[1] in ("driver", "driver_for_cuda", "cuda_driver") and actual is None:
        return f"no NVIDIA driver is loaded here; the lock needs driver {expected} or later (a CPU node?)"
    if parts[1] == "driver":
        return f"NVIDIA driver {_show(actual)} is older than the locked {expected}: upgrade it to {expected} or later"
    if parts[1] == "driver_for_cuda":
        return f"the locked CUDA needs driver {expected}; this node has {_show(actual)}: upgrade the driver"
    if parts[1] == "cuda_driver":
        return f"the driver supports CUDA up to {_show(actual)}; the lock was made with one supporting {expected}"
    if field == "sm_count" and "mig_instances" not in parts:
        mig = have.get(".".join([*parts[:3], "mig"]))
        why = "a MIG slice is not the full GPU" if mig is True else "another SKU of the same architecture?"
        return (f"different SM count ({expected} → {_show(actual)}; {why}): cuBLAS picks kernels by SM count, "
                "so matmul results change bits")
    if field == "compute_capability":
        return (f"another GPU architecture (compute capability {expected} → {_show(actual)}): no bitwise "
                "reproducibility across architectures; add this GPU as a target if it is meant to run the job")
    if field == "mig":
        return f"MIG mode was {_show(expected)} at capture and is {_show(actual)} now"
    if "mig_instances" in parts:
        return f"the MIG layout changed ({'.'.join(parts[3:])}: {_show(expected)} → {_show(actual)})"
    if field == "name":
        return f"another GPU model ({expected} → {actual})"
    return ""


def _cuda_hint(parts: list[str], expected: Any, actual: Any) -> str:
    field = parts[1]
    if field == "kernels":
        return (f"this torch carries no kernels for the GPU ({expected}; it has {actual}): expect 'no kernel image "
                "is available'; install a torch build that includes this architecture")
    if actual is None:
        return f"{field} was {expected} at capture and is not loaded now"
    return (f"the process loads {field} {actual}, the lock has {expected}: reinstall the locked nvidia-* wheels "
            "and torch build (see [packages]) or re-capture")


def _package_hint(parts: list[str], expected: Any, actual: Any, version: str) -> str:
    name = parts[1]
    if len(parts) == 2:
        if actual is None:
            return f"{name} is in the lock but not installed: pip install {name}=={expected}"
        return f"{name} {actual} is installed but not in the lock: pip uninstall {name}, or re-capture to lock it"
    field = parts[2]
    if field == "version":
        return (f"{name} is {actual} here, {expected} in the lock: pip install {name}=={expected}, "
                "or re-capture if the change is intended")
    if field == "files":
        return (f"the installed files of {name} differ from the locked build (a local edit, or another build "
                f"of the same version): run `envlock verify --deep` to name the files; "
                f"pip install --force-reinstall --no-deps {name}=={version} restores it")
    if field in ("source", "url", "commit"):
        return f"{name} was installed from somewhere else ({field}: {_show(expected)} → {_show(actual)})"
    return ""


def _blas_hint(parts: list[str], expected: Any, actual: Any, want: dict[str, Any], have: dict[str, Any]) -> str:
    if len(parts) == 3 and parts[1] == "libraries":
        lib = parts[2]
        return (f"BLAS/OpenMP library {lib} was loaded at capture and is not now" if actual is None
                else f"BLAS/OpenMP library {lib} is loaded now and was not at capture")
    field = parts[-1]
    if field == "architecture":
        causes = _env_changes(want, have, ("OPENBLAS_CORETYPE",))
        why = causes[0] if causes else "another CPU, or another BLAS build"
        return f"BLAS kernel changed {expected} → {actual} ({why}): matmul results change bits"
    if field == "num_threads":
        causes = _env_changes(want, have, THREAD_VARS)
        in_code = "torch.set_num_threads in code" if "openmp" in parts[2] and parts[2].startswith("torch") else (
            "threadpoolctl limits in code")
        why = "; ".join(causes) if causes else f"{in_code}, or another core count"
        return f"BLAS thread count changed {expected} → {actual} ({why}): results split per thread change bits"
    if field == "version":
        return f"another BLAS version ({expected} → {actual}): reinstall the locked package that ships it"
    if field == "torch_cpu_capability":
        return (f"ATen picks {_show(actual)} kernels here, {_show(expected)} at capture (ATEN_CPU_CAPABILITY, or "
                "another CPU): vectorised reductions change bits")
    if field in ("torch_blas", "torch_blas_version", "internal_api", "threading_layer", "user_api"):
        return f"another BLAS ({field}: {expected} → {actual}): a different build of numpy or torch"
    return re.sub(r"\s+", " ", f"{'.'.join(parts)} changed")

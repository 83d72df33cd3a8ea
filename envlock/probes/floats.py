"""Float and determinism settings: PyTorch's flags as the process sees them, and the env vars that move numbers."""

from __future__ import annotations

import os
import sys

from envlock._raw import get
from envlock.errors import ModelError
from envlock.probes.coretype import blocked_coretype

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from envlock.model import Floats, ThreadsSection

#: Environment variables that change numerical results or the kernels chosen: the BLAS and OpenMP thread counts
#: and kernel choices (OpenBLAS's core type and L2 blocking size, MKL's conditional reproducibility, Intel OpenMP's
#: deterministic reductions), oneDNN's and ATen's instruction-set caps, cuBLAS's and torch's TF32 switches, NCCL's
#: algorithm, protocol and channel choices (they change the order of an all-reduce), and the batch-invariance
#: switch of vLLM.
NUMERIC_ENV_VARS = (
    "ATEN_CPU_CAPABILITY",
    "CUBLAS_WORKSPACE_CONFIG",
    "DNNL_MAX_CPU_ISA",
    "KMP_DETERMINISTIC_REDUCTION",
    "MKL_CBWR",
    "MKL_NUM_THREADS",
    "NCCL_ALGO",
    "NCCL_COLLNET_ENABLE",
    "NCCL_MAX_NCHANNELS",
    "NCCL_MIN_NCHANNELS",
    "NCCL_NVLS_ENABLE",
    "NCCL_PROTO",
    "NVIDIA_TF32_OVERRIDE",
    "OMP_NUM_THREADS",
    "ONEDNN_MAX_CPU_ISA",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "PYTHONHASHSEED",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
    "VLLM_BATCH_INVARIANT",
)

# Lock field -> how to read it from torch. Missing attributes (older torch) are skipped.
TORCH_FLAGS: dict[str, Callable[[Any], Any]] = {
    "matmul_allow_tf32": lambda t: t.backends.cuda.matmul.allow_tf32,
    "cudnn_allow_tf32": lambda t: t.backends.cudnn.allow_tf32,
    "float32_matmul_precision": lambda t: t.get_float32_matmul_precision(),
    "matmul_allow_fp16_reduced_precision_reduction":
        lambda t: t.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
    "matmul_allow_bf16_reduced_precision_reduction":
        lambda t: t.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
    "deterministic_algorithms": lambda t: t.are_deterministic_algorithms_enabled(),
    "deterministic_algorithms_warn_only": lambda t: t.is_deterministic_algorithms_warn_only_enabled(),
    "cudnn_enabled": lambda t: t.backends.cudnn.enabled,
    "cudnn_benchmark": lambda t: t.backends.cudnn.benchmark,
    "cudnn_deterministic": lambda t: t.backends.cudnn.deterministic,
    "default_dtype": lambda t: str(t.get_default_dtype()).replace("torch.", ""),
    "matmul_fp32_precision": lambda t: t.backends.cuda.matmul.fp32_precision,
    "cudnn_conv_fp32_precision": lambda t: t.backends.cudnn.conv.fp32_precision,
    "mkldnn_matmul_fp32_precision": lambda t: t.backends.mkldnn.matmul.fp32_precision,
    "flush_denormal": lambda t: (t.tensor([2.0**-126], dtype=t.float32) * 0.5).item() == 0.0,
}

# Parents of the fp32_precision settings (torch >= 2.9): "none" in a child means "as the parent says".
TORCH_PARENTS: dict[str, Callable[[Any], Any]] = {
    "fp32_precision": lambda t: t.backends.fp32_precision,
    "cudnn_fp32_precision": lambda t: t.backends.cudnn.fp32_precision,
    "mkldnn_fp32_precision": lambda t: t.backends.mkldnn.fp32_precision,
}


def tracked_env(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The variables a lock records: the built-in ones, then the policy's `extra_env` (each once)."""
    return tuple(dict.fromkeys((*NUMERIC_ENV_VARS, *extra)))


def collect_env(extra: Iterable[str] = ()) -> dict[str, str]:
    """The numerics-relevant environment variables that are set, with their values (empty counts as unset,
    as it does for Python, OpenMP and the BLAS libraries); `extra`: the policy's own variables."""
    return {name: os.environ[name] for name in tracked_env(extra) if os.environ.get(name)}


def collect_torch(*, import_torch: bool = True) -> dict[str, Any] | None:
    """Raw torch settings of this process, or None when torch is not importable (or not loaded, if not importing)."""
    torch = sys.modules.get("torch")
    if torch is None and import_torch and not blocked_coretype():
        try:
            import torch
        except ImportError:
            return None
    if torch is None:
        return None
    import warnings

    raw: dict[str, Any] = {"version": str(torch.__version__)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, read in {**TORCH_FLAGS, **TORCH_PARENTS}.items():
            try:
                value = read(torch)
            except (AttributeError, RuntimeError, TypeError):
                continue
            raw[key] = value if isinstance(value, (bool, str)) else str(value)
        raw["num_threads"] = torch.get_num_threads()
        raw["num_interop_threads"] = torch.get_num_interop_threads()
    return raw


def parse_floats(env: Any, torch: Any, extra: Iterable[str] = ()) -> Floats:
    """The `[floats]` section from raw facts: every numeric env var (and the policy's `extra` ones) set or unset,
    and torch's flags."""
    from envlock.model import EnvVar, Floats, TorchFloats

    if not isinstance(env, dict):
        raise ModelError("env", "expected an object")
    variables = {}
    for name in tracked_env(extra):
        value = get(env, name, str, "env", None)
        variables[name] = EnvVar(set=value is not None, value=value or "")
    torch_floats = None
    if torch is not None:
        fields = {key: get(torch, key, (bool, str), "torch") for key in TORCH_FLAGS if key in torch}
        fields.update(effective_precisions(torch, fields))
        torch_floats = TorchFloats(version=get(torch, "version", str, "torch"), **fields)
    return Floats(env=variables, torch=torch_floats)


def effective_precisions(torch: dict[str, Any], fields: dict[str, Any]) -> dict[str, str]:
    """The fp32 precision each backend really uses, with torch's "none" (inherit) resolved.

    torch >= 2.9 reports "none" until a legacy flag such as `allow_tf32` is assigned, after which it reports
    "ieee" or "tf32" for the same behaviour; resolving both spellings keeps a job that sets the default explicitly
    from being told it changed something.
    """
    def parent(key: str) -> str:
        value = get(torch, key, str, "torch", "none")
        return str(value)

    def resolve(own: str, chain: tuple[str, ...], legacy: str) -> str:
        for value in (own, *(parent(k) for k in chain)):
            if value != "none":
                return value
        return legacy

    out = {}
    if "matmul_fp32_precision" in fields:
        out["matmul_fp32_precision"] = resolve(
            str(fields["matmul_fp32_precision"]), ("fp32_precision",),
            "tf32" if fields.get("matmul_allow_tf32") is True else "ieee")
    if "cudnn_conv_fp32_precision" in fields:
        out["cudnn_conv_fp32_precision"] = resolve(
            str(fields["cudnn_conv_fp32_precision"]), ("cudnn_fp32_precision", "fp32_precision"),
            "tf32" if fields.get("cudnn_allow_tf32", True) is True else "ieee")
    if "mkldnn_matmul_fp32_precision" in fields:
        out["mkldnn_matmul_fp32_precision"] = resolve(
            str(fields["mkldnn_matmul_fp32_precision"]), ("mkldnn_fp32_precision", "fp32_precision"), "ieee")
    return out


def parse_threads(torch: Any) -> ThreadsSection | None:
    """Thread counts torch will use, or None without torch."""
    from envlock.model import ThreadsSection

    if torch is None:
        return None
    return ThreadsSection(
        torch_intraop=get(torch, "num_threads", int, "torch"),
        torch_interop=get(torch, "num_interop_threads", int, "torch"),
    )

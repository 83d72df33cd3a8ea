"""Hints: for each mismatch between the lock and this machine, the likely cause and the fix, in words a tired
engineer reads at a glance. Commands are whole and in backticks; values print as the report prints them (true,
false, unset), never as Python (None, True). Between two locks, `envlock.compare.lockdiff` speaks instead.
"""

from __future__ import annotations

import shlex
from typing import Any

from envlock.compare.links import CUDA_WHEELS, THREAD_VARS, TORCH_THREAD_VARS, changed, is_set, thread_var, wheel
from envlock.findings import UNSET, text
from envlock.model import Rule
from envlock.probes.coretype import coretype_verdict

# floats.torch.<flag> -> what it is, and the line of code that sets it back (`{value}` is the locked value).
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

#: The label compare_locks gives the side of a comparison whose torch could not be imported.
NO_TORCH = "torch not importable"

Context = tuple[dict[str, Any], dict[str, Any]]

ADD_TARGET = "`envlock capture --add-target`"
IMPORT_TORCH = '`python -c "import torch"`'


def show(value: Any) -> str:
    """A value as a hint prints it: true/false, lists space-separated, "absent" for none, "unset" for unset."""
    if value is None:
        return "absent"
    if value == UNSET:
        return "unset"
    return text(value)


def pylit(value: Any) -> Any:
    """A locked value as Python source wants it (the strings true/false as booleans)."""
    return value if not isinstance(value, str) or value not in ("true", "false") else value == "true"


def code(command: str) -> str:
    """A command or line of code as hints print it: whole, in backticks."""
    return f"`{command}`"


def pip_install(name: str, version: Any) -> str:
    """The command that installs one locked version."""
    return code(f"pip install {name}=={version}")


def export(name: str, value: Any) -> str:
    """The shell line that sets an environment variable back to its locked value."""
    return code(f"export {name}={shlex.quote(str(value))}")


def env_state(value: Any) -> str:
    """An env var's flattened value as words: "unset", or the value."""
    return str(value) if is_set(value) else "unset"


def thread_cause(names: tuple[str, ...], want: dict[str, Any], have: dict[str, Any]) -> str:
    """ "OMP_NUM_THREADS is 4 (was 12)" for the variable whose change decides the thread count, or ""."""
    key = thread_var(names, want, have)
    if not key:
        return ""
    name = key.split(".")[-1]
    return f"{name} is {env_state(have.get(key))} (was {env_state(want.get(key))})"


def cores_cause(want: dict[str, Any], have: dict[str, Any]) -> str:
    """ "another core count (96 → 48 usable)" when the usable cores moved, else ""."""
    if not changed(want, have, "cpu.usable_cores"):
        return ""
    return f"another core count ({show(want.get('cpu.usable_cores'))} → {show(have.get('cpu.usable_cores'))} usable)"


def _coretype_hint(actual: str, have: dict[str, Any]) -> str:
    """Why the requested OpenBLAS core type cannot run here, and which ones can."""
    flags = have.get("cpu.flags")
    name = actual.removeprefix("OPENBLAS_CORETYPE=")
    return coretype_verdict(name, frozenset(flags if isinstance(flags, (list, tuple)) else ())) or (
        f"OPENBLAS_CORETYPE={name} names kernels this CPU cannot execute: unset it")


def hint_for(path: str, expected: Any, actual: Any, rule: Rule, context: Context) -> str:
    """The likely cause of one mismatch between the lock and this machine, and how to fix it."""
    want, have = context
    parts = path.split(".")
    if path == "targets":
        return (f"this machine matches none of the lock's targets ({str(expected).removeprefix('one of: ')}); the "
                f"hardware findings compare it with the {str(actual).split('nearest: ')[-1].rstrip(')')} target. "
                f"If it should run the job: {ADD_TARGET}")
    if parts[0] == "packages":
        return _package_hint(parts, expected, actual, want.get(f"packages.{parts[1]}.version"))
    if path.startswith("floats.env."):
        return _env_hint(parts[2], expected, actual)
    if path == "floats.torch":
        return _torch_hint(expected, actual, want, have)
    if path.startswith("floats.torch."):
        return _torch_flag_hint(parts[2], expected, actual, want, have)
    if parts[0] == "threads":
        return _threads_hint(parts[1], expected, actual, want, have)
    if path == "blas.coretype":
        return _coretype_hint(str(actual), have)
    if parts[0] == "blas":
        return _blas_hint(parts, expected, actual, want, have)
    if parts[0] == "python":
        return (f"another Python ({parts[1]} {show(actual)}, locked {show(expected)}): run the job with the locked "
                "interpreter, or re-capture in this one")
    if path == "cpu.usable_cores":
        return (f"this process may run on {show(actual)} cores, {show(expected)} at capture (an affinity mask: "
                "`taskset`, a cgroup cpuset, Slurm's `--cpus-per-task`, or another machine): thread counts that "
                "are not pinned follow it, and reductions split per thread change bits; pin them with "
                "`export OMP_NUM_THREADS=N`, or re-capture")
    if path.startswith("cpu.cache_"):
        return _cache_hint(parts[1].removeprefix("cache_"), expected, actual, want, have)
    if parts[0] == "cpu":
        return (f"another CPU ({parts[1]} {show(actual)} here, {show(expected)} at capture): BLAS and ATen may pick "
                f"other kernels; if this machine is meant to run the job, add it: {ADD_TARGET}")
    if parts[0] == "platform":
        return f"another operating system setup ({parts[1]}): {show(expected)} at capture, {show(actual)} now"
    if parts[0] == "gpu":
        return _gpu_hint(parts, expected, actual, want, have)
    if parts[0] == "cuda":
        return _cuda_hint(parts, expected, actual, want)
    if rule.rule == "min":
        return f"needs at least {show(expected)}, found {show(actual)}"
    return ""


CACHE_LEVELS = {"l1d": "L1 data", "l1i": "L1 instruction", "l2": "L2", "l3": "L3"}


def size(value: Any) -> str:
    """A cache size in bytes as people write it: "2 MiB", "48 KiB"."""
    if not isinstance(value, int) or isinstance(value, bool):
        return show(value)
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= 1 << shift and value % (1 << shift) == 0:
            return f"{value >> shift} {unit}"
    return f"{value} bytes"


def _cache_hint(level: str, expected: Any, actual: Any, want: dict[str, Any], have: dict[str, Any]) -> str:
    said = (f"another {CACHE_LEVELS.get(level, level)} cache size ({size(actual)} here, {size(expected)} at "
            "capture)")
    if level != "l2":
        return f"{said}: another CPU model or VM size; blocked kernels may tile differently: {ADD_TARGET} if intended"
    pinned = have.get("floats.env.OPENBLAS_L2_SIZE")
    if is_set(pinned) and not changed(want, have, "floats.env.OPENBLAS_L2_SIZE"):
        return (f"{said}; OpenBLAS ignores it here, OPENBLAS_L2_SIZE={pinned} pins the size it blocks for, but "
                f"other libraries may not: {ADD_TARGET} if this machine should run the job")
    return (f"{said}: OpenBLAS picks its GEMM blocking from the L2 size (unless OPENBLAS_L2_SIZE is set), so the "
            "summation order of a matmul, hence its last bits, can change; set OPENBLAS_L2_SIZE alike on both "
            f"machines, or add this one: {ADD_TARGET}")


def _env_hint(name: str, expected: Any, actual: Any) -> str:
    if expected is None:
        return (f"{name} is {env_state(actual)} here and the lock does not record it yet (a new `extra_env` in "
                "[policy], or a lock of an older envlock): re-capture to lock it")
    if not is_set(expected):
        return f"{name} was unset at capture and is {actual} now: {code(f'unset {name}')}, or re-capture if intended"
    return f"{name} was {expected} at capture and is {env_state(actual)} now: {export(name, expected)}, or re-capture"


def _torch_hint(expected: Any, actual: Any, want: dict[str, Any], have: dict[str, Any]) -> str:
    if actual == NO_TORCH:
        locked = want.get("packages.torch.version") or str(expected).removeprefix("torch ")
        if "packages.torch.version" not in have:
            return f"{expected} is in the lock and torch is not installed here: {pip_install('torch', locked)}"
        return (f"{expected} is in the lock and torch is installed here but does not import: "
                f"{IMPORT_TORCH} shows why")
    return (f"{actual} is importable here and torch was not at capture: its flags, threads and kernels are not "
            "locked; re-capture to lock them")


def _torch_flag_hint(flag: str, expected: Any, actual: Any, want: dict[str, Any], have: dict[str, Any]) -> str:
    if flag == "version":
        locked = want.get("packages.torch.version") or expected
        return f"another torch build than the one captured (torch {show(actual)} here): {pip_install('torch', locked)}"
    label, setter = TORCH_SETTERS.get(flag, (flag, ""))
    expected, actual = (None if v == "" else v for v in (expected, actual))  # "": this torch does not report it
    if expected is None:
        return (f"{label} is {show(actual)} here and the lock does not record it (captured with another torch): "
                "re-capture to lock it")
    if actual is None:
        return f"{label} was {show(expected)} at capture and this torch does not report it (another torch version?)"
    said = f"{label} was {show(expected)} at capture and is {show(actual)} now"
    override = "floats.env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"
    if flag == "matmul_allow_tf32" and changed(want, have, override) and is_set(have.get(override)):
        return (f"{said} because TORCH_ALLOW_TF32_CUBLAS_OVERRIDE is {have[override]}, which overrides the flag: "
                f"{code('unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE')}")
    if flag in ("float32_matmul_precision", "matmul_fp32_precision") and changed(
            want, have, "floats.torch.matmul_allow_tf32"):
        said += " (one setting with torch.backends.cuda.matmul.allow_tf32, which changed with it)"
    if not setter:
        return said
    return f"{said}: set {code(setter.format(value=pylit(expected)))} in the job, or re-capture"


def _threads_hint(field: str, expected: Any, actual: Any, want: dict[str, Any], have: dict[str, Any]) -> str:
    if actual is None or expected is None:
        side = "here" if actual is None else "at capture"
        return f"torch's thread counts ({field}) are unknown {side}: torch was not importable"
    if field == "torch_interop":
        return (f"torch inter-op threads changed {expected} → {actual} (torch.set_num_interop_threads in code, "
                "or another core count): it runs independent ops side by side; one op's bits do not depend on it")
    why = thread_cause(TORCH_THREAD_VARS, want, have) or cores_cause(want, have) or (
        "torch.set_num_threads in code, or another core count")
    return (f"torch intra-op threads changed {expected} → {actual} ({why}): reductions split per thread, "
            "so sums change bits")


def _on(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return show(value)


def _gpu_hint(parts: list[str], expected: Any, actual: Any, want: dict[str, Any], have: dict[str, Any]) -> str:
    field = parts[-1]
    if parts[1] == "count":
        if not actual:
            why = "no NVIDIA driver is loaded" if changed(want, have, "gpu.driver") and not have.get("gpu.driver") \
                else "a CPU node? CUDA_VISIBLE_DEVICES? the container started without --gpus?"
            return f"the lock needs {show(expected)} GPU(s) and none is visible here ({why})"
        return f"the lock needs at least {show(expected)} GPU(s) and {show(actual)} are visible (CUDA_VISIBLE_DEVICES?)"
    if parts[1] == "driver":
        if actual is None:
            return f"no NVIDIA driver is loaded here; the lock needs driver {show(expected)} or later (a CPU node?)"
        return (f"NVIDIA driver {show(actual)} is older than the locked driver {show(expected)}: upgrade the driver "
                f"to {show(expected)} or later")
    if parts[1] == "driver_for_cuda":
        return (f"the locked CUDA needs driver {show(expected)}; this node has driver {show(actual)}: upgrade the "
                "driver")
    if parts[1] == "cuda_driver":
        if actual is None:
            return (f"no NVIDIA driver is loaded here; the lock needs a driver that supports CUDA {show(expected)} "
                    "or later (a CPU node?)")
        return (f"this node's driver supports CUDA up to {show(actual)}; the lock needs one supporting CUDA "
                f"{show(expected)} or later: upgrade the driver (see gpu.driver)")
    if field == "sm_count" and "mig_instances" not in parts:
        mig = have.get(".".join([*parts[:3], "mig"]))
        why = "a MIG slice is not the full GPU" if mig is True else "another SKU of the same architecture?"
        return (f"different SM count ({show(expected)} → {show(actual)}; {why}): cuBLAS picks kernels by SM count, "
                "so matmul results change bits")
    if field == "compute_capability":
        return (f"another GPU architecture (compute capability {show(expected)} → {show(actual)}): no bitwise "
                "reproducibility across architectures; add this GPU as a target if it is meant to run the job: "
                f"{ADD_TARGET}")
    if field == "mig":
        return f"MIG mode was {_on(expected)} at capture and is {_on(actual)} now"
    if "mig_instances" in parts:
        return f"the MIG layout changed ({'.'.join(parts[3:])}: {show(expected)} → {show(actual)})"
    if field == "name":
        return f"another GPU model ({show(expected)} → {show(actual)})"
    return f"{'.'.join(parts[3:]) or field} changed: {show(expected)} at capture, {show(actual)} now"


def _cuda_hint(parts: list[str], expected: Any, actual: Any, want: dict[str, Any]) -> str:
    field = parts[1]
    torch = want.get("packages.torch.version")
    fix = pip_install("torch", torch) if torch else "install the locked torch build"
    if field == "kernels":
        return (f"this torch carries no kernels for the GPU ({show(expected)}; it has {show(actual)}): expect 'no "
                "kernel image is available'; install a torch build that includes this architecture")
    if field in CUDA_WHEELS and (name := wheel(want, {}, CUDA_WHEELS[field])):
        fix = pip_install(name.split(".", 1)[1], want[f"{name}.version"])
    if expected is None:
        return f"{field} {show(actual)} is loaded here and the lock has none (captured with a CPU-only torch?)"
    if actual is None:
        return f"{field} was {show(expected)} at capture and is not loaded now (a CPU-only torch?): {fix}"
    if field == "torch_cuda":
        return f"this torch is built for CUDA {show(actual)}, the locked one for CUDA {show(expected)}: {fix}"
    if field == "arch_list":
        return (f"this torch carries kernels for {show(actual)}, the locked one for {show(expected)}: another torch "
                f"build: {fix}")
    return f"the process loads {field} {show(actual)}, the lock has {show(expected)}: {fix}, or re-capture"


def _package_hint(parts: list[str], expected: Any, actual: Any, version: Any) -> str:
    name = parts[1]
    if len(parts) == 2:
        if actual is None:
            return f"{name} is in the lock but not installed: {pip_install(name, expected)}"
        return (f"{name} {actual} is installed but not in the lock: {code(f'pip uninstall {name}')}, or re-capture "
                "to lock it")
    field = parts[2]
    if field == "version":
        return (f"{name} is {show(actual)} here, {show(expected)} in the lock: {pip_install(name, expected)}, "
                "or re-capture if the change is intended")
    if field == "files":
        reinstall = code(f"pip install --force-reinstall --no-deps {name}=={version}")
        restore = f"; {reinstall} restores it" if version else ""
        return (f"the installed files of {name} differ from the locked build (a local edit, or another build "
                f"of the same version): {code('envlock verify --deep')} names the files{restore}")
    if field in ("source", "url", "commit"):
        return f"{name} was installed from somewhere else ({field}: {show(expected)} → {show(actual)})"
    return f"{name}'s {field} changed: {show(expected)} at capture, {show(actual)} now"


def _blas_hint(parts: list[str], expected: Any, actual: Any, want: dict[str, Any], have: dict[str, Any]) -> str:
    if len(parts) == 3 and parts[1] == "libraries":
        lib = parts[2]
        return (f"BLAS/OpenMP library {lib} was loaded at capture and is not now" if actual is None
                else f"BLAS/OpenMP library {lib} is loaded now and was not at capture")
    field = parts[-1]
    if len(parts) == 4:
        lib = parts[2]
        api = str(want.get(f"blas.libraries.{lib}.internal_api") or have.get(f"blas.libraries.{lib}.internal_api"))
        owner = lib.split("-")[0]
        if field == "architecture":
            coretype = thread_cause(("OPENBLAS_CORETYPE",), want, have) if api == "openblas" else ""
            why = coretype or ("another CPU" if changed(want, have, "cpu.microarchitecture") else
                               "another CPU, or another BLAS build")
            return f"BLAS kernel changed {show(expected)} → {show(actual)} ({why}): matmul results change bits"
        if field == "num_threads":
            why = thread_cause(THREAD_VARS.get(api, ("OMP_NUM_THREADS",)), want, have)
            if not why and owner == "torch" and changed(want, have, "threads.torch_intraop"):
                why = "torch's intra-op thread count changed with it"
            why = why or cores_cause(want, have) or (
                f"{'torch.set_num_threads' if owner == 'torch' else 'threadpoolctl limits'} in code, or another core "
                "count")
            return (f"BLAS thread count changed {show(expected)} → {show(actual)} ({why}): results split per thread "
                    "change bits")
        locked = want.get(f"packages.{owner}.version")
        fix = f": {pip_install(owner, locked)}" if locked else ""
        if field == "version":
            return f"another BLAS version ({show(expected)} → {show(actual)}), shipped by another {owner}{fix}"
        return f"another BLAS ({field}: {show(expected)} → {show(actual)}): a different build of {owner}{fix}"
    if field == "torch_cpu_capability":
        return (f"ATen picks {show(actual)} kernels here, {show(expected)} at capture (ATEN_CPU_CAPABILITY, or "
                "another CPU): vectorised reductions change bits")
    locked = want.get("packages.torch.version")
    fix = f": {pip_install('torch', locked)}" if locked else ""
    return f"another BLAS in torch ({field}: {show(expected)} → {show(actual)}): a different torch build{fix}"

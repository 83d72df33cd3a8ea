"""The lock model: frozen dataclasses (loaded, written and described as JSON Schema by envlock.dataform).

Every string field has a grammar (a regular expression matched in full); the default grammar refuses control
characters and bidirectional overrides, so nothing hostile survives loading. Optional fields are `None`, `""`,
`()` or `{}` in the model and absent from the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from envlock.dataform import SAFE_TEXT as SAFE_TEXT
from envlock.dataform import ModelError as ModelError
from envlock.dataform import describe, grammar, keyed, schema_of
from envlock.dataform import from_dict as from_dict
from envlock.dataform import to_dict as to_dict

SCHEMA_VERSION = "1.0"

# Grammars (matched in full). Kept as plain regex text so the JSON Schema can carry them too.
NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?"
CANONICAL_NAME = r"(?=[a-z0-9-]{1,128}(?![\s\S]))[a-z0-9]+(?:-[a-z0-9]+)*"
VERSION = r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,127}"
SHA256 = r"sha256:[0-9a-f]{64}"
TIMESTAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
SCHEMA = r"[0-9]{1,3}\.[0-9]{1,3}"
IDENT = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}"
ENV_NAME = describe(r"[A-Z][A-Z0-9_]{0,127}", "an environment variable name in capitals: A-Z, then A-Z, 0-9 or _")
POLICY_KEY = r"[A-Za-z0-9_*+.:-]{1,256}"
URL = r"[^\s\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]{1,2048}"
COMMIT = r"[0-9a-f]{7,64}"
CAPABILITY = r"[0-9]{1,3}\.[0-9]{1,3}"
DEVICE = r"cpu|cuda:[0-9]{1,3}"
SHAPE = r"[0-9]{1,9}x[0-9]{1,5}x[0-9]{1,5}"
HEXBITS = r"[0-9a-f]{4,16}"
#: A Python callable by import path, `package.module:function` (or `module:object.method`).
_PY_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
CALLABLE = describe(rf"{_PY_NAME}(?:\.{_PY_NAME}){{0,15}}:{_PY_NAME}(?:\.{_PY_NAME}){{0,7}}",
                    "module:function (a Python module path, a colon, a name in it)")
#: A distribution file name (wheel or sdist), no folder.
FILENAME = r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,254}"

Severity = Literal["error", "warn"]
RuleKind = Literal["exact", "min", "compatible", "ignore"]
#: How loud a missing or an extra package is: a severity, or not at all.
PackageRule = Literal["error", "warn", "ignore"]
SourceKind = Literal["index", "vcs", "url", "local", "editable", "unknown"]


# --- sections ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockHeader:
    """`[lock]`: what wrote the lock and the hash of what it locks."""

    schema: str = grammar(SCHEMA)
    envlock: str = grammar(VERSION)
    created: str = grammar(TIMESTAMP)
    content_hash: str = grammar(SHA256)


@dataclass(frozen=True)
class Rule:
    """One policy rule: how a field is compared and how loud a mismatch is."""

    rule: RuleKind
    severity: Severity = "error"


@dataclass(frozen=True)
class Policy:
    """`[policy]`: per-field rules, keyed by dotted path patterns (`*` stands for one segment, a trailing `**`
    for any depth)."""

    missing_packages: PackageRule = "error"
    extra_packages: PackageRule = "warn"
    probe_shapes: tuple[str, ...] = grammar(SHAPE, default=())
    #: Environment variables of the user's own to record and check like the built-in ones (the next capture
    #: records them, locked and hashed; verify, `--fast` included, compares them).
    extra_env: tuple[str, ...] = grammar(ENV_NAME, default=())
    #: The user's own fingerprints (`module:function`, see docs/fingerprint.md): the next capture runs each and
    #: records its output bits under `numerics.fingerprints`; verify replays what the lock recorded.
    fingerprints: tuple[str, ...] = grammar(CALLABLE, default=())
    rules: dict[str, Rule] = keyed(POLICY_KEY, default_factory=dict)


@dataclass(frozen=True)
class PythonSection:
    """`[python]`: the interpreter."""

    implementation: str = grammar(IDENT)
    version: str = grammar(VERSION)
    abi: str = grammar(IDENT)
    platform: str = grammar(IDENT)
    platform_tag: str = grammar(IDENT)
    byteorder: Literal["little", "big"] = "little"
    pointer_bits: int = 64


@dataclass(frozen=True)
class Artifact:
    """One file the index offers for a locked version (`capture --hashes`): its name, where it is, its sha256.

    Index data, not a fact of the environment: verify and diff never compare it; `export --format pylock` writes it.
    """

    name: str = grammar(FILENAME)
    url: str = grammar(URL)
    sha256: str = grammar(SHA256)


@dataclass(frozen=True)
class Package:
    """One installed distribution (its canonical name is the key in `[packages]`)."""

    version: str = grammar(VERSION)
    source: SourceKind = "index"
    url: str = grammar(URL, default="")
    commit: str = grammar(COMMIT, default="")
    files: str = grammar(SHA256, default="")
    hashes: tuple[str, ...] = grammar(SHA256, default=())
    artifacts: tuple[Artifact, ...] = ()


@dataclass(frozen=True)
class EnvVar:
    """An environment variable that changes numbers: set (with its value) or unset."""

    set: bool
    value: str = grammar(SAFE_TEXT, default="")


@dataclass(frozen=True)
class TorchFloats:
    """PyTorch's float and determinism settings, as the process sees them."""

    version: str = grammar(VERSION)
    default_dtype: str = grammar(IDENT)
    # Unreadable (torch raises) once a job mixes the legacy call with the fp32_precision settings: then absent.
    float32_matmul_precision: str = grammar(IDENT, default="")
    matmul_allow_tf32: bool = False
    cudnn_allow_tf32: bool = True
    matmul_allow_fp16_reduced_precision_reduction: bool = True
    matmul_allow_bf16_reduced_precision_reduction: bool = True
    deterministic_algorithms: bool = False
    deterministic_algorithms_warn_only: bool = False
    cudnn_enabled: bool = True
    cudnn_benchmark: bool = False
    cudnn_deterministic: bool = False
    flush_denormal: bool = False
    matmul_fp32_precision: str = grammar(IDENT, default="")
    cudnn_conv_fp32_precision: str = grammar(IDENT, default="")
    mkldnn_matmul_fp32_precision: str = grammar(IDENT, default="")


@dataclass(frozen=True)
class Floats:
    """`[floats]`: float settings of the frameworks and the environment variables that move numbers."""

    env: dict[str, EnvVar] = keyed(ENV_NAME, default_factory=dict)
    torch: TorchFloats | None = None


@dataclass(frozen=True)
class PlatformSection:
    """The operating system around the process."""

    system: str = grammar(IDENT)
    machine: str = grammar(IDENT)
    kernel: str = grammar(SAFE_TEXT)
    libc: str = grammar(SAFE_TEXT, default="")
    distro: str = grammar(SAFE_TEXT, default="")
    container: bool = False
    container_kind: str = grammar(IDENT, default="")


@dataclass(frozen=True)
class CpuSection:
    """The CPU: who made it (archspec's vendor name), which microarchitecture and generic level archspec sees, the
    ISA flags that change numerics, the core counts and the cache sizes."""

    vendor: str = grammar(SAFE_TEXT)
    model: str = grammar(SAFE_TEXT)
    microarchitecture: str = grammar(IDENT)
    generic: str = grammar(IDENT)
    flags: tuple[str, ...] = grammar(IDENT, default=())
    logical_cores: int = 1
    usable_cores: int = 1
    #: Cache sizes in bytes (cpu0's, per instance: an L2 per core, an L3 per slice); absent where unknown.
    cache_l1d: int | None = None
    cache_l1i: int | None = None
    cache_l2: int | None = None
    cache_l3: int | None = None


@dataclass(frozen=True)
class BlasLibrary:
    """A BLAS or OpenMP library loaded in the process (threadpoolctl's view)."""

    id: str = field(metadata={"pattern": IDENT})
    user_api: str = field(metadata={"pattern": IDENT})
    internal_api: str = field(metadata={"pattern": IDENT})
    num_threads: int = field()
    version: str = grammar(SAFE_TEXT, default="")
    architecture: str = grammar(SAFE_TEXT, default="")
    threading_layer: str = grammar(SAFE_TEXT, default="")


@dataclass(frozen=True)
class BlasSection:
    """`blas`: the loaded BLAS/OpenMP libraries, and the BLAS compiled into torch (invisible to threadpoolctl)."""

    libraries: tuple[BlasLibrary, ...] = ()
    torch_blas: str = grammar(SAFE_TEXT, default="")
    torch_blas_version: str = grammar(SAFE_TEXT, default="")
    torch_cpu_capability: str = grammar(IDENT, default="")


@dataclass(frozen=True)
class ThreadsSection:
    """Thread counts the frameworks will use."""

    torch_intraop: int = 0
    torch_interop: int = 0


@dataclass(frozen=True)
class MigInstance:
    """One MIG instance of a GPU: a slice with its own SM count (a MIG slice is not the full GPU)."""

    gpu_instance_id: int = field()
    compute_instance_id: int = field()
    sm_count: int | None = None
    memory_mib: int | None = None
    profile: str = grammar(IDENT, default="")
    uuid: str = grammar(IDENT, default="")


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as NVML (or nvidia-smi) reports it; uuid and serial are kept for the audit trail, never compared."""

    index: int = field()
    name: str = field(metadata={"pattern": SAFE_TEXT})
    compute_capability: str = grammar(CAPABILITY, default="")
    sm_count: int | None = None
    memory_mib: int | None = None
    mig: bool = False
    mig_instances: tuple[MigInstance, ...] = ()
    ecc: bool | None = None
    persistence: bool | None = None
    virtualization: str = grammar(IDENT, default="")
    uuid: str = grammar(IDENT, default="")
    serial: str = grammar(SAFE_TEXT, default="")


@dataclass(frozen=True)
class GpuSection:
    """`gpu`: the NVIDIA driver and the devices the process can see (count = 0 says: none)."""

    count: int = 0
    driver: str = grammar(VERSION, default="")
    cuda_driver: str = grammar(CAPABILITY, default="")
    source: str = grammar(IDENT, default="")
    status: str = grammar(SAFE_TEXT, default="")
    devices: tuple[GpuDevice, ...] = ()


@dataclass(frozen=True)
class CudaSection:
    """`[cuda]`: the CUDA build of torch and the versions the loaded CUDA libraries report."""

    torch_cuda: str = grammar(CAPABILITY)
    runtime: str = grammar(VERSION, default="")
    cudnn: str = grammar(VERSION, default="")
    cublas: str = grammar(VERSION, default="")
    nccl: str = grammar(VERSION, default="")
    arch_list: tuple[str, ...] = grammar(IDENT, default=())


@dataclass(frozen=True)
class KernelResult:
    """One probe kernel: what ran (enough to replay it) and the bits it gave."""

    op: str = field(metadata={"pattern": IDENT})
    library: str = field(metadata={"pattern": IDENT})
    device: str = field(metadata={"pattern": DEVICE})
    dtype: str = field(metadata={"pattern": IDENT})
    shape: str = field(metadata={"pattern": SHAPE})
    input_sha256: str = field(metadata={"pattern": SHA256})
    output_sha256: str = field(metadata={"pattern": SHA256})
    threads: int = 0
    samples: tuple[str, ...] = grammar(HEXBITS, default=())
    error_class: str = grammar(IDENT, default="")
    canary: str = grammar(SAFE_TEXT, default="")
    repeat_equal: bool = True


@dataclass(frozen=True)
class FingerprintResult:
    """One of the user's own fingerprints: the callable that makes it, and the bits its outputs gave (at the
    process's thread count, again at one thread), with its example inputs' and (for a module) parameters' hashes."""

    source: str = field(metadata={"pattern": CALLABLE})
    input_sha256: str = field(metadata={"pattern": SHA256})
    output_sha256: str = field(metadata={"pattern": SHA256})
    single_thread_sha256: str = grammar(SHA256, default="")
    params_sha256: str = grammar(SHA256, default="")
    outputs: tuple[str, ...] = grammar(SAFE_TEXT, default=())
    samples: tuple[str, ...] = grammar(HEXBITS, default=())
    repeat_equal: bool = True


@dataclass(frozen=True)
class NumericsSection:
    """`numerics`: the probe's results on this target, keyed by kernel id, and the user's fingerprints by name."""

    probe: str = grammar(IDENT)
    generator: str = grammar(IDENT)
    kernels: dict[str, KernelResult] = keyed(IDENT, default_factory=dict)
    fingerprints: dict[str, FingerprintResult] = keyed(IDENT, default_factory=dict)


@dataclass(frozen=True)
class Target:
    """One hardware target: the machine-dependent facts of a lock."""

    platform: PlatformSection
    cpu: CpuSection
    blas: BlasSection
    gpu: GpuSection
    threads: ThreadsSection | None = None
    numerics: NumericsSection | None = None


@dataclass(frozen=True)
class Lock:
    """A whole lock: software sections shared, hardware sections per target."""

    lock: LockHeader
    python: PythonSection
    floats: Floats
    targets: dict[str, Target] = keyed(IDENT)
    packages: dict[str, Package] = keyed(CANONICAL_NAME, default_factory=dict)
    cuda: CudaSection | None = None
    policy: Policy = field(default_factory=Policy)


def kernel_key(op: str, library: str, device: str, dtype: str, shape: str, threads: int) -> str:
    """A probe kernel's id from what it runs: `torch-cpu-sum-float32-t1`, `torch-cuda0-mm-float16-64x64x4096`."""
    suffix = {0: "", 1: "-t1"}.get(threads, f"-t{threads}")
    return f"{library}-{device.replace(':', '')}-{op}-{dtype}-{shape}{suffix}"


def _unique(values: list[Any], where: str, what: str) -> None:
    seen: set[Any] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ModelError(f"{where}[{i}]", f"{what} {value} is repeated; each must be listed once")
        seen.add(value)


def check_lock(lock: Lock) -> None:
    """Refuse a lock whose values each fit their grammar but not each other: no target, a GPU count that is not
    the number of devices listed, a device index (or MIG instance, or BLAS library) listed twice, a probe
    kernel whose id does not say what it runs. Raises ModelError naming the dotted place."""
    if not lock.targets:
        raise ModelError("targets", "a lock needs at least one target; this one has none "
                         "(re-run `envlock capture`)")
    for name, target in lock.targets.items():
        where = f"targets.{name}"
        gpu = target.gpu
        if gpu.count != len(gpu.devices):
            raise ModelError(f"{where}.gpu.count",
                             f"is {gpu.count} but {len(gpu.devices)} devices are listed; they must agree")
        _unique([d.index for d in gpu.devices], f"{where}.gpu.devices", "device index")
        for i, device in enumerate(gpu.devices):
            _unique([(m.gpu_instance_id, m.compute_instance_id) for m in device.mig_instances],
                    f"{where}.gpu.devices[{i}].mig_instances", "MIG instance (gpu, compute)")
        _unique([lib.id for lib in target.blas.libraries], f"{where}.blas.libraries", "library id")
        if target.numerics is not None:
            for key, k in target.numerics.kernels.items():
                wanted = kernel_key(k.op, k.library, k.device, k.dtype, k.shape, k.threads)
                if key != wanted:
                    raise ModelError(f"{where}.numerics.kernels.{key}",
                                     f"kernel id does not match what it runs (its fields make {wanted})")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a lock, derived from the model."""
    defs: dict[str, Any] = {}
    root = schema_of(Lock, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://envlock.dev/schemas/envlock-lock-{SCHEMA_VERSION}.json",
        "title": "envlock lock file",
        **root,
        "$defs": {name: defs[name] for name in sorted(defs)},
    }

"""The numerics probe: tiny kernels on fixed inputs, whose output bits are locked and compared.

Inputs come from integer hashing (lowbias32) with power-of-two scaling — no RNG, no libm — so they are exact in
each dtype and identical on every machine; their sha256 proves it. Three kinds of input per op:
*sensitive* (full mantissas: any change of summation order flips low bits), *canary* (exactly predictable whatever
the order: an identity matmul keeps every bit in true fp32; small integers sum exactly), and a *repeat* of the
sensitive kernels in the same process (run-to-run determinism). Which kernels moved, together with the recorded
knobs, says why (see `diagnose`).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from envlock._raw import get
from envlock.findings import Finding
from envlock.findings import text as _text
from envlock.model import KernelResult, ModelError, NumericsSection
from envlock.policy import rule_for

PROBE_VERSION = "envlock-probe-1"
GENERATOR = "lowbias32-v1"
M32 = 0xFFFFFFFF
SUM_BLOCK = 1 << 16
SUM_TILES = 64  # 4M elements: long enough that torch splits the sum between threads (1M already does)
SAMPLE_POSITIONS = 8
DENORMAL_INPUTS = bytes.fromhex("00008000" "01000000")  # 2^-126 and 2^-149 as little-endian float32
SHAPE = re.compile(r"([0-9]{1,9})x([0-9]{1,5})x([0-9]{1,5})")

# Normalised max error boundaries (-log2) between the precision classes of an fp32 GEMM: fp32 keeps ~22 bits,
# bf16x3 ~19, TF32 ~13, bf16 ~10 (numerics notes §4.5); the boundaries are the midpoints.
ERROR_CLASSES = ((20.7, "fp32"), (16.3, "bf16x3"), (11.8, "tf32"), (0.0, "bf16"))


@dataclass(frozen=True)
class KernelSpec:
    """What to run: enough to replay a kernel exactly at verify time."""
    op: str
    library: str
    device: str
    dtype: str
    shape: str
    threads: int = 0  # 0: as the process is configured; 1: forced to one thread

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"op": self.op, "library": self.library, "device": self.device, "dtype": self.dtype,
                "shape": self.shape, "threads": self.threads}


# --- deterministic inputs -------------------------------------------------------------------------------


def _mul32_torch(x: Any, c: int) -> Any:
    # (x * c) mod 2^32 without int64 overflow: split c into 16-bit halves.
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def hash_torch(n: int, seed: int, device: str = "cpu") -> Any:
    """lowbias32(i, seed) for i < n as an int64 torch tensor on `device`."""
    import torch

    x = torch.arange(n, dtype=torch.int64, device=device)
    x = (_mul32_torch(x, 0x9E3779B1) + seed) & M32
    x ^= x >> 16
    x = _mul32_torch(x, 0x7FEB352D)
    x ^= x >> 15
    x = _mul32_torch(x, 0x846CA68B)
    x ^= x >> 16
    return x


def hash_numpy(n: int, seed: int) -> Any:
    """lowbias32(i, seed) for i < n as a uint64 numpy array (the same numbers as hash_torch)."""
    import numpy as np

    x = np.arange(n, dtype=np.uint64)
    x = (x * np.uint64(0x9E3779B1) + np.uint64(seed)) & np.uint64(M32)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(M32)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(M32)
    x ^= x >> np.uint64(16)
    return x


# Mantissa-filling values for each dtype: (shift, bits) -> ((h >> shift) - 2^bits) * 2^-bits, exact in the dtype.
# float64 draws on two hashes (53 bits): see _sensitive_torch.
SENSITIVE_BITS = {"float64": (10, 53), "float32": (7, 24), "float16": (20, 11), "bfloat16": (23, 8)}


#: Inputs made during one probe run, shared by kernels that differ only in thread count (cleared after the run).
_INPUTS: dict[tuple[Any, ...], Any] = {}


def _cached(key: tuple[Any, ...], make: Any) -> Any:
    if key not in _INPUTS:
        _INPUTS[key] = make()
    return _INPUTS[key]


def sensitive_torch(n: int, seed: int, dtype: str, device: str = "cpu") -> Any:
    """n values in [-1, 1) that fill `dtype`'s mantissa, as a torch tensor."""
    return _cached(("torch", n, seed, dtype, device), lambda: _sensitive_torch(n, seed, dtype, device))


def _sensitive_torch(n: int, seed: int, dtype: str, device: str) -> Any:
    import torch

    shift, bits = SENSITIVE_BITS[dtype]
    raw = hash_torch(n, seed, device)
    if dtype == "float64":
        raw = (raw << 22) | (hash_torch(n, seed ^ 0x5BD1E995, device) >> shift)  # 54 bits from two hashes
        shift = 0
    ints = (raw >> shift) - (1 << bits)
    return (ints.to(torch.float64) * 2.0**-bits).to(getattr(torch, dtype))


def sensitive_numpy(n: int, seed: int) -> Any:
    """n float32 values in [-1, 1) with full mantissas, as a numpy array (equal to sensitive_torch's)."""
    return _cached(("numpy", n, seed), lambda: _sensitive_numpy(n, seed))


def _sensitive_numpy(n: int, seed: int) -> Any:
    import numpy as np

    shift, bits = SENSITIVE_BITS["float32"]
    ints = (hash_numpy(n, seed) >> np.uint64(shift)).astype(np.int64) - (1 << bits)
    return (ints.astype(np.float64) * 2.0**-bits).astype(np.float32)


def int_canary_torch(n: int, seed: int, device: str = "cpu") -> Any:
    """n integers in [-16, 16] as int64 (exact in fp16, bf16 and TF32)."""
    return hash_torch(n, seed, device) % 33 - 16


def _sha(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _bytes(tensor: Any) -> bytes:
    import torch

    t = tensor.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return bytes(t.numpy().tobytes())


def _samples(tensor: Any) -> tuple[str, ...]:
    """Bit patterns (hex) at fixed positions spread over the output."""
    import torch

    flat = tensor.detach().contiguous().cpu().reshape(-1)
    n = flat.numel()
    positions = sorted({(k * (n - 1)) // max(1, SAMPLE_POSITIONS - 1) for k in range(SAMPLE_POSITIONS)})
    as_int = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
              torch.bfloat16: torch.int16}[flat.dtype]
    width = {torch.int64: 16, torch.int32: 8, torch.int16: 4}[as_int]
    bits = flat.view(as_int)
    return tuple(format(int(bits[p]) & ((1 << (4 * width)) - 1), f"0{width}x") for p in positions)


def error_class(out: Any, a: Any, b: Any) -> tuple[str, float]:
    """(class, -log2 of the normalised max error) of a matmul result against a float64 reference."""
    a64, b64 = a.detach().cpu().double(), b.detach().cpu().double()
    reference = a64 @ b64
    scale = a64.abs() @ b64.abs()
    err = ((out.detach().cpu().double() - reference).abs() / scale.clamp_min(1e-300)).max().item()
    bits = 60.0 if err == 0 else -math.log2(err)
    for bound, name in ERROR_CLASSES:
        if bits > bound:
            return name, bits
    return "bf16", bits


def mantissa_bits_kept(out: Any, want: Any) -> int:
    """The fewest leading mantissa bits (of fp32's 23) any element kept of the value it should equal."""
    o, w = out.detach().cpu().double().reshape(-1), want.detach().cpu().double().reshape(-1)
    nonzero = w != 0
    rel = ((o - w).abs()[nonzero] / w.abs()[nonzero]).max().item() if bool(nonzero.any()) else 0.0
    if rel == 0:
        return 23
    return max(0, min(23, math.floor(-math.log2(rel))))


# --- the kernels ------------------------------------------------------------------------------------------


def _threads(spec: KernelSpec) -> Any:
    """A context that runs the kernel at the spec's thread count (torch and the BLAS libraries)."""
    import contextlib

    if spec.threads != 1:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def single() -> Any:
        import torch
        from threadpoolctl import threadpool_limits

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(limits=1):
                yield
        finally:
            torch.set_num_threads(before)

    return single()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _dims(shape: str) -> tuple[int, int, int]:
    match = SHAPE.fullmatch(shape)
    if not match:
        raise ValueError(f"bad shape {shape!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


#: The most multiply-adds (m·n·k) one kernel may ask for: a lock must not be able to make verify run for hours.
MAX_WORK = 1 << 33


def shape_work(shape: str) -> int:
    """m·n·k of a shape (0 when it does not parse)."""
    match = SHAPE.fullmatch(shape)
    return int(match.group(1)) * int(match.group(2)) * int(match.group(3)) if match else 0


def run_kernel(spec: KernelSpec) -> dict[str, Any]:
    """Run one kernel; its input and output hashes, samples, canary verdict, error class and repeat check."""
    runner = KERNELS.get(spec.op)
    if runner is None:
        return {"error": f"unknown op {spec.op!r}"}
    if shape_work(spec.shape) > MAX_WORK:
        return {"error": f"shape {spec.shape} is larger than the probe runs (m·n·k over {MAX_WORK})"}
    started = time.perf_counter()
    with _threads(spec):
        result = runner(spec)
    result["seconds"] = round(time.perf_counter() - started, 6)
    return result


def _matmul(spec: KernelSpec) -> dict[str, Any]:
    import torch

    m, n, k = _dims(spec.shape)
    if spec.library == "numpy":
        import numpy as np

        a_np = sensitive_numpy(m * k, 11).reshape(m, k)
        b_np = sensitive_numpy(k * n, 12).reshape(k, n)
        first, second = np.dot(a_np, b_np), np.dot(a_np, b_np)
        out = torch.from_numpy(first)
        a, b = torch.from_numpy(a_np), torch.from_numpy(b_np)
        repeat = bool(np.array_equal(first.view(np.uint32), second.view(np.uint32)))
    else:
        a = sensitive_torch(m * k, 11, spec.dtype, spec.device).view(m, k)
        b = sensitive_torch(k * n, 12, spec.dtype, spec.device).view(k, n)
        out = a @ b
        again = a @ b
        _sync(spec.device)
        repeat = bool(torch.equal(out, again))
    klass, bits = error_class(out.float(), a.float(), b.float())
    return {"input_sha256": _sha(_bytes(a), _bytes(b)), "output_sha256": _sha(_bytes(out)),
            "samples": list(_samples(out)), "error_class": klass, "error_bits": round(bits, 1),
            "repeat_equal": repeat}


def _identity(spec: KernelSpec) -> dict[str, Any]:
    import torch

    m, n, _ = _dims(spec.shape)
    x = sensitive_torch(m * n, 21, "float32", spec.device).view(m, n)
    eye = torch.eye(n, dtype=torch.float32, device=spec.device)
    out = x @ eye
    _sync(spec.device)
    kept = mantissa_bits_kept(out, x)
    return {"input_sha256": _sha(_bytes(x)), "output_sha256": _sha(_bytes(out)), "samples": list(_samples(out)),
            "canary": f"bits={kept}", "repeat_equal": True}


def _int_canary(spec: KernelSpec) -> dict[str, Any]:
    import torch

    m, n, k = _dims(spec.shape)
    dtype = getattr(torch, spec.dtype)
    a_int = int_canary_torch(m * k, 31, spec.device).view(m, k)
    b_int = int_canary_torch(k * n, 32, spec.device).view(k, n)
    out = a_int.to(dtype) @ b_int.to(dtype)
    _sync(spec.device)
    exact = (a_int.cpu() @ b_int.cpu()).double()
    expected = exact.to(dtype)  # the exact sum, rounded once to the output dtype (RNE)
    mismatches = int((out.cpu() != expected).sum().item())
    return {"input_sha256": _sha(_bytes(a_int), _bytes(b_int)), "output_sha256": _sha(_bytes(out)),
            "samples": list(_samples(out)), "canary": "exact" if mismatches == 0 else f"mismatches={mismatches}",
            "repeat_equal": True}


def _long_input(spec: KernelSpec) -> tuple[Any, str]:
    return _cached(("long", spec.dtype, spec.device), lambda: _make_long_input(spec))  # type: ignore[no-any-return]


def _make_long_input(spec: KernelSpec) -> tuple[Any, str]:
    import torch

    dtype = getattr(torch, spec.dtype)
    block = sensitive_torch(SUM_BLOCK, 41, spec.dtype, spec.device)
    scales = torch.tensor([2.0 ** -(t % 8) for t in range(SUM_TILES)], dtype=dtype, device=spec.device)
    data = (scales.view(-1, 1) * block.view(1, -1)).reshape(-1)
    # Power-of-two tiles of one hashed block: hash the block and the tiling rule rather than 64 MB.
    return data, _sha(_bytes(block), f"tiles={SUM_TILES};scale=2^-(t%8)".encode())


def _reduce(spec: KernelSpec) -> dict[str, Any]:
    import torch

    if spec.library == "numpy":
        import numpy as np

        block = sensitive_numpy(SUM_BLOCK, 41)
        scales = np.array([2.0 ** -(t % 8) for t in range(SUM_TILES)], dtype=np.float32)
        data_np = (scales.reshape(-1, 1) * block.reshape(1, -1)).reshape(-1)
        first, second = np.sum(data_np), np.sum(data_np)
        out = torch.tensor([float(first)], dtype=torch.float32)
        return {"input_sha256": _sha(block.tobytes(), f"tiles={SUM_TILES};scale=2^-(t%8)".encode()),
                "output_sha256": _sha(first.tobytes()), "samples": list(_samples(out)),
                "repeat_equal": bool(first.tobytes() == second.tobytes())}
    data, input_hash = _long_input(spec)
    if spec.op == "mean":
        rows = data.view(-1, 1024)
        out, again = rows.mean(dim=1), rows.mean(dim=1)
    else:
        out, again = data.sum(), data.sum()
    _sync(spec.device)
    return {"input_sha256": input_hash, "output_sha256": _sha(_bytes(out)), "samples": list(_samples(out)),
            "repeat_equal": bool(torch.equal(out, again))}


def _denormal(spec: KernelSpec) -> dict[str, Any]:
    import torch

    tiny = torch.tensor([2.0**-126], dtype=torch.float32, device=spec.device)
    subnormal = torch.tensor([2.0**-149], dtype=torch.float32, device=spec.device)
    ftz = bool((tiny * 0.5).item() == 0.0)  # a result below FLT_MIN flushed to zero
    daz = bool((subnormal * 2.0**23).item() == 0.0)  # a subnormal input read as zero
    # A long op spreads over the intra-op worker threads, which keep their own FTZ/DAZ state.
    many = torch.full((1 << 20,), 2.0**-126, dtype=torch.float32, device=spec.device) * 0.5
    _sync(spec.device)
    workers = int((many == 0).sum().item())
    verdict = f"ftz={'on' if ftz else 'off'} daz={'on' if daz else 'off'} workers-flushed={workers}"
    out = torch.stack([(tiny * 0.5)[0], (subnormal * 2.0**23)[0], many[0], many[-1]])
    # Hash the inputs' float32 bit patterns as constants: with DAZ on, even converting them would flush them.
    return {"input_sha256": _sha(DENORMAL_INPUTS), "output_sha256": _sha(_bytes(out)),
            "samples": list(_samples(out)), "canary": verdict, "repeat_equal": True}


def _conv(spec: KernelSpec) -> dict[str, Any]:
    import torch
    import torch.nn.functional as functional

    x = sensitive_torch(64 * 32 * 32, 51, "float32", spec.device).view(1, 64, 32, 32)
    if spec.op == "conv1x1":
        weight = torch.eye(64, dtype=torch.float32, device=spec.device).view(64, 64, 1, 1)
        out = functional.conv2d(x, weight)
        _sync(spec.device)
        return {"input_sha256": _sha(_bytes(x)), "output_sha256": _sha(_bytes(out)),
                "samples": list(_samples(out)), "canary": f"bits={mantissa_bits_kept(out, x)}",
                "repeat_equal": True}
    weight = sensitive_torch(64 * 64 * 9, 52, "float32", spec.device).view(64, 64, 3, 3)
    out, again = functional.conv2d(x, weight, padding=1), functional.conv2d(x, weight, padding=1)
    _sync(spec.device)
    return {"input_sha256": _sha(_bytes(x), _bytes(weight)), "output_sha256": _sha(_bytes(out)),
            "samples": list(_samples(out)), "repeat_equal": bool(torch.equal(out, again))}


def _index_add(spec: KernelSpec) -> dict[str, Any]:
    import torch

    source = sensitive_torch(4096 * 64, 61, "float32", spec.device).view(4096, 64)
    index = hash_torch(4096, 62, spec.device) % 64

    def once() -> Any:
        return torch.zeros(64, 64, dtype=torch.float32, device=spec.device).index_add_(0, index, source)

    out, again = once(), once()
    _sync(spec.device)
    return {"input_sha256": _sha(_bytes(source), _bytes(index)), "output_sha256": _sha(_bytes(out)),
            "samples": list(_samples(out)), "repeat_equal": bool(torch.equal(out, again))}


KERNELS = {
    "mm": _matmul,
    "identity-mm": _identity,
    "int-mm": _int_canary,
    "sum": _reduce,
    "mean": _reduce,
    "denormal": _denormal,
    "conv2d": _conv,
    "conv1x1": _conv,
    "index-add": _index_add,
}


# --- the kernel set -----------------------------------------------------------------------------------------


def kernel_id(spec: KernelSpec) -> str:
    """A stable, readable key: `torch-cpu-sum-float32-t1`, `torch-cuda0-mm-float16-64x64x4096`."""
    device = spec.device.replace(":", "")
    threads = {0: "", 1: "-t1"}.get(spec.threads, f"-t{spec.threads}")
    return f"{spec.library}-{device}-{spec.op}-{spec.dtype}-{spec.shape}{threads}"


def default_kernels(*, numpy: bool, torch: bool, cuda_devices: int = 0,
                    extra_shapes: tuple[str, ...] = ()) -> dict[str, KernelSpec]:
    """The probe's kernel set for what the process has: CPU kernels, numpy's BLAS, each visible GPU."""
    specs: list[KernelSpec] = []
    if torch:
        for threads in (1, 0):
            specs.append(KernelSpec("sum", "torch", "cpu", "float32", f"{SUM_BLOCK * SUM_TILES}x1x1", threads))
            specs.append(KernelSpec("mm", "torch", "cpu", "float32", "256x256x256", threads))
        specs += [
            KernelSpec("identity-mm", "torch", "cpu", "float32", "256x256x1"),
            KernelSpec("int-mm", "torch", "cpu", "float32", "64x64x1024"),
            KernelSpec("denormal", "torch", "cpu", "float32", "1x1x1"),
        ]
        specs += [KernelSpec("mm", "torch", "cpu", "float32", shape) for shape in extra_shapes]
    if numpy:
        for threads in (1, 0):
            specs.append(KernelSpec("mm", "numpy", "cpu", "float32", "256x256x256", threads))
        specs.append(KernelSpec("sum", "numpy", "cpu", "float32", f"{SUM_BLOCK * SUM_TILES}x1x1"))
    for index in range(cuda_devices if torch else 0):
        device = f"cuda:{index}"
        specs += [
            KernelSpec("mm", "torch", device, "float32", "256x256x256"),
            KernelSpec("identity-mm", "torch", device, "float32", "256x256x1"),
            KernelSpec("mm", "torch", device, "float16", "64x64x4096"),
            KernelSpec("mm", "torch", device, "bfloat16", "64x64x4096"),
            KernelSpec("mm", "torch", device, "float16", "256x256x256"),
            KernelSpec("int-mm", "torch", device, "float16", "64x64x4096"),
            KernelSpec("int-mm", "torch", device, "bfloat16", "64x64x4096"),
            KernelSpec("sum", "torch", device, "float32", f"{SUM_BLOCK * SUM_TILES}x1x1"),
            KernelSpec("mean", "torch", device, "float32", f"{SUM_BLOCK * SUM_TILES}x1x1"),
            KernelSpec("conv2d", "torch", device, "float32", "1x64x32"),
            KernelSpec("conv1x1", "torch", device, "float32", "1x64x32"),
            KernelSpec("index-add", "torch", device, "float32", "4096x64x64"),
            KernelSpec("denormal", "torch", device, "float32", "1x1x1"),
        ]
        specs += [KernelSpec("mm", "torch", device, "float32", shape) for shape in extra_shapes]
    return {kernel_id(s): s for s in specs}


def collect_numerics(specs: dict[str, KernelSpec]) -> dict[str, Any]:
    """Raw facts: run each kernel (a failing one says why) and time the whole probe."""
    started = time.perf_counter()
    kernels: dict[str, Any] = {}
    try:
        for key, spec in specs.items():
            try:
                result = run_kernel(spec)
            except Exception as exc:  # a kernel that cannot run here is a finding, not a crash
                result = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            kernels[key] = {**spec.to_dict(), **result}
    finally:
        _INPUTS.clear()
    return {"probe": PROBE_VERSION, "generator": GENERATOR, "kernels": kernels,
            "seconds": round(time.perf_counter() - started, 6)}


def specs_from_lock(kernels: dict[str, Any]) -> dict[str, KernelSpec]:
    """The kernel specs a lock recorded, to replay them exactly."""
    return {key: KernelSpec(op=k.op, library=k.library, device=k.device, dtype=k.dtype, shape=k.shape,
                            threads=k.threads) for key, k in kernels.items()}


# --- from raw facts to the lock, and the comparison -----------------------------------------------------------


def parse_numerics(raw: Any) -> Any:
    """The `numerics` section of a target from raw probe facts (kernels that could not run are left out)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ModelError("numerics", "expected an object")
    kernels = {}
    for key, item in sorted(get(raw, "kernels", dict, "numerics", {}).items()):
        where = f"numerics.kernels.{key}"
        if not isinstance(item, dict):
            raise ModelError(where, "expected an object")
        if "error" in item:
            continue
        kernels[key] = KernelResult(
            op=get(item, "op", str, where), library=get(item, "library", str, where),
            device=get(item, "device", str, where), dtype=get(item, "dtype", str, where),
            shape=get(item, "shape", str, where), threads=get(item, "threads", int, where, 0),
            input_sha256=get(item, "input_sha256", str, where), output_sha256=get(item, "output_sha256", str, where),
            samples=tuple(get(item, "samples", list, where, [])), error_class=get(item, "error_class", str, where, ""),
            canary=get(item, "canary", str, where, ""), repeat_equal=get(item, "repeat_equal", bool, where, True),
        )
    return NumericsSection(probe=get(raw, "probe", str, "numerics"), generator=get(raw, "generator", str, "numerics"),
                           kernels=kernels)


@dataclass(frozen=True)
class KernelVerdict:
    """How one kernel compares with the lock."""
    key: str
    kind: str  # "match", "precision change", "order drift", "nondeterministic", "invalid probe", "did not run"
    expected: str
    actual: str


def _label(result: Any) -> str:
    extra = ", ".join(part for part in (result.error_class, result.canary) if part)
    return f"{result.output_sha256[7:19]}" + (f" ({extra})" if extra else "")


def classify(expected: Any, actual: Any, errors: dict[str, str]) -> list[KernelVerdict]:
    """Each locked kernel's verdict against the kernels run now (`errors`: the ones that failed to run)."""
    verdicts = []
    have = actual.kernels if actual is not None else {}
    for key, want in sorted(expected.kernels.items()):
        got = have.get(key)
        if got is None:
            why = errors.get(key, "not run")
            verdicts.append(KernelVerdict(key, "did not run", _label(want), why))
        elif got.input_sha256 != want.input_sha256:
            verdicts.append(KernelVerdict(key, "invalid probe", want.input_sha256[7:19], got.input_sha256[7:19]))
        elif got.output_sha256 == want.output_sha256:
            kind = "nondeterministic" if want.repeat_equal and not got.repeat_equal else "match"
            note = " (repeat differs)" if kind == "nondeterministic" else ""
            verdicts.append(KernelVerdict(key, kind, _label(want), _label(got) + note))
        elif got.canary != want.canary or got.error_class != want.error_class:
            verdicts.append(KernelVerdict(key, "precision change", _label(want), _label(got)))
        elif not got.repeat_equal:
            verdicts.append(KernelVerdict(key, "nondeterministic", _label(want), _label(got) + " (repeat differs)"))
        else:
            verdicts.append(KernelVerdict(key, "order drift", _label(want), _label(got)))
    return verdicts


def _changed(want: dict[str, Any], have: dict[str, Any], path: str) -> str:
    a, b = want.get(path), have.get(path)
    return "" if a == b else f"{_text(a)} → {_text(b)}"


def _moved(verdicts: list[KernelVerdict], predicate: Any) -> bool:
    return any(v.kind not in ("match",) and predicate(v.key) for v in verdicts)


def diagnose(verdict: KernelVerdict, verdicts: list[KernelVerdict], spec: Any,
             want: dict[str, Any], have: dict[str, Any]) -> str:
    """The likely cause of one kernel's verdict, from which kernels moved and which recorded knobs changed."""
    key, kind = verdict.key, verdict.kind
    if kind == "invalid probe":
        return "the probe's inputs differ from the lock's: another envlock probe version? re-capture with this envlock"
    if kind == "did not run":
        if spec.device.startswith("cuda"):
            return f"{spec.device} is not available in this process (no GPU visible, or torch without CUDA)"
        return f"the kernel could not run here ({verdict.actual}): is {spec.library} installed?"
    if kind == "nondeterministic":
        return ("this kernel gives different bits from one run to the next in this process: atomics without "
                "torch.use_deterministic_algorithms(True), cuBLAS workspace sharing (CUBLAS_WORKSPACE_CONFIG), "
                "or cudnn.benchmark autotuning")
    if spec.op == "denormal":
        knob = _changed(want, have, "floats.torch.flush_denormal")
        if "ftz=on" in verdict.actual or "daz=on" in verdict.actual:
            text = ("flush-denormal is on: subnormal floats become zero (torch.set_flush_denormal(True), or a shared "
                    "library built with -ffast-math)")
        elif re.search(r"workers-flushed=[1-9]", verdict.actual):
            text = ("torch's intra-op worker threads flush subnormals although this thread does not: they kept the "
                    "FTZ/DAZ state of when they started (set_flush_denormal changes the calling thread only)")
        else:
            text = "denormal handling changed"
        return text + (f"; flush_denormal {knob}" if knob else "")
    if spec.op in ("identity-mm", "conv1x1") and kind == "precision change":
        bits = re.search(r"bits=(\d+)", verdict.actual)
        kept = int(bits.group(1)) if bits else -1
        # cuBLAS rounds to nearest, so TF32 (10 explicit bits) keeps 10-11 and bf16 (7) keeps 7-8.
        mode = "TF32" if 9 <= kept <= 11 else "bf16" if 6 <= kept <= 8 else "bf16x3" if 14 <= kept <= 17 else ""
        if spec.op == "conv1x1":
            knob = _changed(want, have, "floats.torch.cudnn_allow_tf32")
            return f"cuDNN fp32 convolutions keep {kept} mantissa bits ({mode or 'reduced precision'})" + (
                f": cudnn.allow_tf32 {knob}" if knob else ": cudnn.allow_tf32 / cudnn.conv.fp32_precision")
        if spec.device == "cpu":
            return (f"CPU fp32 matmul keeps {kept} mantissa bits: oneDNN fp32 down-conversion "
                    "(torch.backends.mkldnn.matmul.fp32_precision) or a broken BLAS")
        knobs = [f"{p.split('.')[-1]} {c}" for p in ("floats.torch.matmul_allow_tf32",
                 "floats.torch.float32_matmul_precision", "floats.env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
                 "floats.env.NVIDIA_TF32_OVERRIDE") if (c := _changed(want, have, p))]
        what = f"{mode} enabled for cuBLAS fp32 matmul" if mode else f"cuBLAS fp32 matmul keeps {kept} mantissa bits"
        return what + (f" ({'; '.join(knobs)})" if knobs else "")
    if spec.op == "int-mm" and kind == "precision change":
        return ("the integer canary no longer sums exactly: reduced-precision reductions (allow_fp16/bf16_reduced_"
                "precision_reduction), fp16 accumulation, or a torch upgrade that routes GEMMs elsewhere")
    if kind == "precision change":
        return f"the precision class changed ({verdict.expected} → {verdict.actual}): TF32/bf16 modes or another BLAS"
    # order drift: the same precision, another summation order
    if spec.device == "cpu" and spec.library == "torch":
        for path, text in (("floats.env.MKL_CBWR", "MKL's conditional numerical reproducibility branch (MKL_CBWR)"),
                           ("floats.torch.mkldnn_matmul_fp32_precision", "oneDNN's fp32 matmul precision"),
                           ("floats.torch.float32_matmul_precision", "torch's float32 matmul precision")):
            change = _changed(want, have, path)
            if change:
                return f"{text} changed ({change})"
        single = key.endswith("-t1")
        sibling = key[: -len("-t1")] if single else key + "-t1"
        sibling_moved = _moved(verdicts, lambda k: k == sibling)
        threads = _changed(want, have, "threads.torch_intraop")
        if not single and not sibling_moved:
            return f"thread count changed {threads}" if threads else (
                "the multi-threaded result moved but not the single-threaded one: torch's thread count or "
                "OMP_NUM_THREADS")
        capability = _changed(want, have, "blas.torch_cpu_capability")
        version = _changed(want, have, "floats.torch.version")
        return ("ATen's CPU kernels changed" + (f" (CPU capability {capability})" if capability else "")
                + (f" (torch {version})" if version else "") + ": another CPU, ATEN_CPU_CAPABILITY, or torch build")
    if spec.library == "numpy" and spec.op == "sum":
        version = _changed(want, have, "packages.numpy.version")
        return ("numpy's own pairwise summation changed" + (f" (numpy {version})" if version else "")
                + ": another numpy build or its SIMD dispatch (NPY_DISABLE_CPU_FEATURES)")
    if spec.library == "numpy":
        arch = next((c for p in want if p.endswith(".architecture") and p.startswith("blas.libraries.numpy")
                     and (c := _changed(want, have, p))), "")
        single = key.endswith("-t1")
        sibling_moved = _moved(verdicts, lambda k: k == (key[:-3] if single else key + "-t1"))
        if not single and not sibling_moved:
            threads = next((c for p in want if p.endswith(".num_threads") and p.startswith("blas.libraries.numpy")
                            and (c := _changed(want, have, p))), "")
            return f"BLAS thread count changed {threads}" if threads else "BLAS thread count or threading changed"
        if arch:
            return f"BLAS kernel changed {arch}"
        return "numpy's BLAS gives other bits: another BLAS build, version or CPU (OPENBLAS_CORETYPE, MKL_CBWR)"
    # GPU order drift
    index = spec.device.split(":")[-1]
    for path, text in ((f"gpu.devices.{index}.compute_capability", "different GPU architecture"),
                       (f"gpu.devices.{index}.sm_count", "different SM count (MIG slice?)"),
                       ("cuda.cublas", "cuBLAS version changed"), ("cuda.cudnn", "cuDNN version changed"),
                       ("floats.torch.version", "torch version changed"),
                       ("floats.torch.cudnn_benchmark", "cuDNN benchmark (autotuning) changed")):
        change = _changed(want, have, path)
        if change:
            return f"{text} ({change})"
    if spec.op == "conv2d":
        return "cuDNN picked another algorithm (cudnn.benchmark autotuning, or another cuDNN)"
    return ("same precision, another summation order with every recorded version equal: cuBLAS heuristics or "
            "torch's BLAS routing (preferred_blas_library)")


def compare_numerics(expected: Any, actual: Any, errors: dict[str, str], policy: Any,
                     context: tuple[dict[str, Any], dict[str, Any]]) -> list[Any]:
    """Findings for the probe: one per kernel that did not match, with the likely cause.

    Rules per kernel (`numerics.<id>`): exact = the same bits (default); compatible = the same precision class and
    canaries (order drift allowed); ignore.
    """

    want, have = context
    verdicts = classify(expected, actual, errors)
    findings = []
    for verdict in verdicts:
        if verdict.kind == "match":
            continue
        rule = rule_for(policy, f"numerics.{verdict.key}")
        if rule.rule == "ignore" or (rule.rule in ("compatible", "min") and verdict.kind == "order drift"):
            continue
        spec = expected.kernels[verdict.key]
        severity = "error" if verdict.kind in ("precision change", "invalid probe") else rule.severity
        findings.append(Finding(
            path=f"numerics.{verdict.key}", expected=verdict.expected, actual=f"{verdict.kind}: {verdict.actual}",
            severity=severity, hint=diagnose(verdict, verdicts, spec, want, have),
        ))
    return findings

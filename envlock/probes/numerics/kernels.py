"""Running one probe kernel: what to run (`KernelSpec`), the kernels themselves, and the size limit."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from envlock.probes.coretype import blocked_coretype
from envlock.probes.numerics.inputs import (
    SUM_BLOCK,
    SUM_TILES,
    bit_samples,
    cached,
    error_class,
    hash_torch,
    int_canary_torch,
    mantissa_bits_kept,
    precision_class,
    sensitive_numpy,
    sensitive_torch,
    sha,
    tensor_bytes,
)

DENORMAL_INPUTS = bytes.fromhex("00008000" "01000000")  # 2^-126 and 2^-149 as little-endian float32
SHAPE = re.compile(r"([0-9]{1,9})x([0-9]{1,5})x([0-9]{1,5})")


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


#: The most multiply-adds (m·n·k) one shape may ask for (capture refuses a larger `probe_shapes` entry).
MAX_WORK = 1 << 31
#: The most bytes one kernel may allocate, all its tensors counted as if none were freed.
MAX_KERNEL_BYTES = 256 << 20
#: The most work one kernel may do, in float32 multiply-add equivalents (see `kernel_cost`): a few seconds.
MAX_KERNEL_WORK = 1 << 35
#: The whole probe's budget, summed over its kernels. Bytes are summed per device (each is its own memory, and the
#: probe forgets one device's cached inputs before it moves to the next), so the sum bounds what the probe holds
#: at once; work is summed over all kernels and bounds how long verify runs (seconds, never minutes).
MAX_PROBE_BYTES = 768 << 20
MAX_PROBE_WORK = 1 << 37

ITEM_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
# Making one input element: lowbias32 on int64 (the arange and the temporaries each step of the hash leaves
# alive), then the float64 step and the cast. Generous, so the bound holds whatever torch or numpy frees early.
GEN_BYTES = 64
GEN_WORK = 16
# Cost weights against a float32 BLAS multiply-add: float64 (the error-class reference) is about 4x slower on
# CPUs, an int64 matmul (no BLAS) about 8x (measured on 2 cores; order of magnitude, not a benchmark).
F64_WEIGHT = 4
INT64_WEIGHT = 8
# What a kernel costs however small: its launch, synchronisation and hashing (a lock of thousands of 1x1x1 kernels
# must spend the budget too).
KERNEL_WORK = 1 << 20
SUM_ELEMENTS = SUM_BLOCK * SUM_TILES
DENORMAL_ELEMENTS = 1 << 20
CONV_INPUT, CONV_WEIGHT, CONV_OUTPUT = 64 * 32 * 32, 64 * 64 * 9, 64 * 32 * 32
# Fixed sizes of the fused and elementwise kernels (their shape is a label, as for sum): rows x columns of softmax
# and layer-norm, the cumulative sum's length, the random stream's length, attention's heads x sequence x head dim.
ROWS, COLS = 64, 1024
CUMSUM_N = 1 << 14
RANDOM_N = 4096
RANDOM_SEED = 20240601
HEADS, SEQ, HEAD_DIM = 4, 64, 64
SCATTER_ROWS, SCATTER_COLS = 1024, 64
#: The shape label of each fixed-size kernel: capture writes it, and a lock that says another one is replayed at
#: these sizes all the same (its bits then differ: the lock was not written by this probe).
FIXED_SHAPES = {"softmax": f"{ROWS}x{COLS}x1", "layer-norm": f"{ROWS}x{COLS}x1", "cumsum": f"{CUMSUM_N}x1x1",
                "randn": f"{RANDOM_N}x1x1", "rand": f"{RANDOM_N}x1x1", "sdpa": f"{HEADS}x{SEQ}x{HEAD_DIM}",
                "scatter-add": f"{SCATTER_ROWS}x{SCATTER_COLS}x64"}


@dataclass(frozen=True)
class Cost:
    """What a kernel needs before it runs: bytes of every tensor it allocates, and its work (see `kernel_cost`)."""

    bytes: int
    work: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bytes + other.bytes, self.work + other.work)


def shape_work(shape: str) -> int:
    """m·n·k of a shape (0 when it does not parse)."""
    match = SHAPE.fullmatch(shape)
    return int(match.group(1)) * int(match.group(2)) * int(match.group(3)) if match else 0


def _made(n: int, size: int) -> Cost:
    """Making a hashed input of n elements of `size` bytes (kept, cached), and the tensor_bytes copy hashing it."""
    return Cost(n * (GEN_BYTES + 2 * size), n * GEN_WORK)


def kernel_cost(spec: KernelSpec) -> Cost:
    """The bytes and work of one kernel, from its op, shape and dtype alone (raises ValueError for a bad shape).

    Counted per tensor each kernel below allocates, including the checks on the result (the float64 reference of
    `error_class`, the copies that hash and sample it), with no credit for memory freed on the way.
    """
    size = ITEM_BYTES.get(spec.dtype, 8)
    fixed = Cost(0, KERNEL_WORK)
    if spec.op in ("mm", "identity-mm", "int-mm"):
        m, n, k = _dims(spec.shape)
    if spec.op == "mm":
        inputs, outputs = m * k + k * n, m * n
        # a, b; out, again; error_class: .float() copies, float64 a, b, |a|, |b| and six float64 m x n tensors.
        checks = Cost(inputs * (4 + 32) + outputs * (3 * size + 4 + 48), 2 * F64_WEIGHT * m * n * k + 8 * outputs)
        return fixed + _made(inputs, size) + Cost(2 * outputs * size, 2 * m * n * k) + checks
    if spec.op == "identity-mm":
        # x, the n x n identity, out; mantissa_bits_kept: two float64 copies, |o - w|, |w|, the ratio, a mask.
        return fixed + _made(m * n, 4) + Cost(4 * n * n + m * n * (4 + 2 * 4 + 7 * 8 + 1), m * n * n + 8 * m * n)
    if spec.op == "int-mm":
        inputs, outputs = m * k + k * n, m * n
        # int64 inputs (and their % 33 - 16), their casts and CPU copies; out, the exact int64 product, its
        # float64 and rounded forms, the comparison.
        tensors = Cost(inputs * (GEN_BYTES + 16 + size + 8) + outputs * (3 * size + 16 + 1 + 8), 0)
        return fixed + tensors + Cost(0, inputs * GEN_WORK + m * n * k * (1 + INT64_WEIGHT) + 4 * outputs)
    if spec.op in ("sum", "mean"):
        # The shape is a label: the input is always SUM_TILES scaled tiles of one block (numpy or torch).
        tiles = Cost(2 * SUM_ELEMENTS * 4 + 2 * (SUM_ELEMENTS // 1024) * 4, 2 * SUM_ELEMENTS)
        return fixed + _made(SUM_BLOCK, 4) + tiles
    if spec.op == "denormal":
        return fixed + Cost(DENORMAL_ELEMENTS * (2 * 4 + 1 + 8), 3 * DENORMAL_ELEMENTS)
    if spec.op in ("conv2d", "conv1x1"):
        # input, weight (or the 64 x 64 identity), out and again, and an im2col buffer for the 3x3 case.
        weight = CONV_WEIGHT if spec.op == "conv2d" else 64 * 64
        taps = 9 if spec.op == "conv2d" else 1
        buffers = Cost(4 * (2 * CONV_OUTPUT + taps * CONV_INPUT) + 4 * weight, 2 * 64 * 64 * taps * 32 * 32)
        return fixed + _made(CONV_INPUT, 4) + _made(weight, 4) + buffers
    if spec.op == "index-add":
        rows = 4096 * 64
        return fixed + _made(rows, 4) + _made(4096, 8) + Cost(2 * 64 * 64 * 4, 2 * rows)
    if spec.op == "scatter-add":
        rows = SCATTER_ROWS * SCATTER_COLS
        return fixed + _made(rows, 4) + _made(rows, 8) + Cost(2 * 64 * SCATTER_COLS * 4, 2 * rows)
    if spec.op in ("softmax", "layer-norm"):
        # x (scaled), out and again, the float64 reference and its temporaries (about six), the canary rows.
        cells = ROWS * COLS
        return fixed + _made(cells, size) + Cost(cells * (4 * size + 6 * 8) + 8 * COLS * 12, 40 * cells)
    if spec.op == "cumsum":
        # the sensitive input, out and again, the float64 reference, |x| and its cumsum; the integer canary.
        return fixed + _made(CUMSUM_N, size) + Cost(CUMSUM_N * (3 * size + 5 * 8 + GEN_BYTES + 16), 24 * CUMSUM_N)
    if spec.op in ("randn", "rand"):
        return fixed + Cost(RANDOM_N * (2 * size + 8) + (64 << 10), 64 * RANDOM_N)
    if spec.op == "sdpa":
        # q, k, v, out and again; the float64 reference: q, k, v, the scores and their softmax, the output.
        qkv, scores = HEADS * SEQ * HEAD_DIM, HEADS * SEQ * SEQ
        return fixed + _made(3 * qkv, size) + Cost(qkv * (5 * size + 5 * 8) + scores * (4 * size + 3 * 8),
                                                   2 * (2 + F64_WEIGHT) * scores * HEAD_DIM + 20 * scores)
    return fixed


def megabytes(count: int) -> str:
    """A byte count in whole MB, rounded up."""
    return f"{-(-count // (1 << 20))} MB"


def over_bound(spec: KernelSpec, cost: Cost) -> str:
    """Why one kernel is too large for the probe ("" when it fits)."""
    if spec.op in ("mm", "identity-mm", "int-mm") and shape_work(spec.shape) > MAX_WORK:
        return f"shape {spec.shape} is larger than the probe runs (m·n·k over {MAX_WORK})"
    if cost.bytes > MAX_KERNEL_BYTES:
        return (f"shape {spec.shape} needs {megabytes(cost.bytes)} for {spec.op} in {spec.dtype}, more than the "
                f"probe allows ({megabytes(MAX_KERNEL_BYTES)} a kernel)")
    if cost.work > MAX_KERNEL_WORK:
        return (f"shape {spec.shape} is larger than the probe runs ({spec.op} needs {cost.work:.2e} multiply-adds, "
                f"over {MAX_KERNEL_WORK:.2e} a kernel)")
    return ""


def run_kernel(spec: KernelSpec) -> dict[str, Any]:
    """Run one kernel; its input and output hashes, samples, canary verdict, error class and repeat check."""
    runner = KERNELS.get(spec.op)
    if runner is None:
        return {"error": f"unknown op {spec.op!r}"}
    blocked = blocked_coretype()
    if blocked:  # importing numpy or torch would kill the process with SIGILL
        return {"error": f"not run: {blocked}"}
    try:
        cost = kernel_cost(spec)
    except ValueError as exc:
        return {"error": str(exc)}
    refused = over_bound(spec, cost)
    if refused:
        return {"error": refused}
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
    return {"input_sha256": sha(tensor_bytes(a), tensor_bytes(b)), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "error_class": klass, "error_bits": round(bits, 1),
            "repeat_equal": repeat}


def _identity(spec: KernelSpec) -> dict[str, Any]:
    import torch

    m, n, _ = _dims(spec.shape)
    x = sensitive_torch(m * n, 21, "float32", spec.device).view(m, n)
    eye = torch.eye(n, dtype=torch.float32, device=spec.device)
    out = x @ eye
    _sync(spec.device)
    kept = mantissa_bits_kept(out, x)
    return {"input_sha256": sha(tensor_bytes(x)), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "canary": f"bits={kept}", "repeat_equal": True}


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
    return {"input_sha256": sha(tensor_bytes(a_int), tensor_bytes(b_int)), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "canary": "exact" if mismatches == 0 else f"mismatches={mismatches}",
            "repeat_equal": True}


def _long_input(spec: KernelSpec) -> tuple[Any, str]:
    return cached(("long", spec.dtype, spec.device), lambda: _make_long_input(spec))  # type: ignore[no-any-return]


def _make_long_input(spec: KernelSpec) -> tuple[Any, str]:
    import torch

    dtype = getattr(torch, spec.dtype)
    block = sensitive_torch(SUM_BLOCK, 41, spec.dtype, spec.device)
    scales = torch.tensor([2.0 ** -(t % 8) for t in range(SUM_TILES)], dtype=dtype, device=spec.device)
    data = (scales.view(-1, 1) * block.view(1, -1)).reshape(-1)
    # Power-of-two tiles of one hashed block: hash the block and the tiling rule rather than 64 MB.
    return data, sha(tensor_bytes(block), f"tiles={SUM_TILES};scale=2^-(t%8)".encode())


def _reduce(spec: KernelSpec) -> dict[str, Any]:
    import torch

    if spec.library == "numpy":
        import numpy as np

        block = sensitive_numpy(SUM_BLOCK, 41)
        scales = np.array([2.0 ** -(t % 8) for t in range(SUM_TILES)], dtype=np.float32)
        data_np = (scales.reshape(-1, 1) * block.reshape(1, -1)).reshape(-1)
        first, second = np.sum(data_np), np.sum(data_np)
        out = torch.tensor([float(first)], dtype=torch.float32)
        return {"input_sha256": sha(block.tobytes(), f"tiles={SUM_TILES};scale=2^-(t%8)".encode()),
                "output_sha256": sha(first.tobytes()), "samples": list(bit_samples(out)),
                "repeat_equal": bool(first.tobytes() == second.tobytes())}
    data, input_hash = _long_input(spec)
    if spec.op == "mean":
        rows = data.view(-1, 1024)
        out, again = rows.mean(dim=1), rows.mean(dim=1)
    else:
        out, again = data.sum(), data.sum()
    _sync(spec.device)
    return {"input_sha256": input_hash, "output_sha256": sha(tensor_bytes(out)), "samples": list(bit_samples(out)),
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
    return {"input_sha256": sha(DENORMAL_INPUTS), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "canary": verdict, "repeat_equal": True}


def _conv(spec: KernelSpec) -> dict[str, Any]:
    import torch
    import torch.nn.functional as functional

    x = sensitive_torch(64 * 32 * 32, 51, "float32", spec.device).view(1, 64, 32, 32)
    if spec.op == "conv1x1":
        weight = torch.eye(64, dtype=torch.float32, device=spec.device).view(64, 64, 1, 1)
        out = functional.conv2d(x, weight)
        _sync(spec.device)
        return {"input_sha256": sha(tensor_bytes(x)), "output_sha256": sha(tensor_bytes(out)),
                "samples": list(bit_samples(out)), "canary": f"bits={mantissa_bits_kept(out, x)}",
                "repeat_equal": True}
    weight = sensitive_torch(64 * 64 * 9, 52, "float32", spec.device).view(64, 64, 3, 3)
    out, again = functional.conv2d(x, weight, padding=1), functional.conv2d(x, weight, padding=1)
    _sync(spec.device)
    return {"input_sha256": sha(tensor_bytes(x), tensor_bytes(weight)), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "repeat_equal": bool(torch.equal(out, again))}


def _index_add(spec: KernelSpec) -> dict[str, Any]:
    import torch

    source = sensitive_torch(4096 * 64, 61, "float32", spec.device).view(4096, 64)
    index = hash_torch(4096, 62, spec.device) % 64

    def once() -> Any:
        return torch.zeros(64, 64, dtype=torch.float32, device=spec.device).index_add_(0, index, source)

    out, again = once(), once()
    _sync(spec.device)
    return {"input_sha256": sha(tensor_bytes(source), tensor_bytes(index)), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "repeat_equal": bool(torch.equal(out, again))}


def _scatter_add(spec: KernelSpec) -> dict[str, Any]:
    import torch

    source = sensitive_torch(SCATTER_ROWS * SCATTER_COLS, 63, "float32", spec.device).view(SCATTER_ROWS, SCATTER_COLS)
    index = (hash_torch(SCATTER_ROWS * SCATTER_COLS, 64, spec.device) % 64).view(SCATTER_ROWS, SCATTER_COLS)

    def once() -> Any:
        return torch.zeros(64, SCATTER_COLS, dtype=torch.float32, device=spec.device).scatter_add_(0, index, source)

    out, again = once(), once()
    _sync(spec.device)
    return {"input_sha256": sha(tensor_bytes(source), tensor_bytes(index)), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "repeat_equal": bool(torch.equal(out, again))}


def _exact_or(mismatches: int) -> str:
    return "exact" if mismatches == 0 else f"mismatches={mismatches}"


def _rowwise(spec: KernelSpec) -> dict[str, Any]:
    """softmax / layer-norm along rows: sensitive rows (hash, precision class against float64, repeat) and, for
    softmax, a canary whose answer is exact in any order (constant rows: every output 1/COLS)."""
    import torch
    import torch.nn.functional as functional

    dtype = getattr(torch, spec.dtype)
    x = sensitive_torch(ROWS * COLS, 71, spec.dtype, spec.device).view(ROWS, COLS) * 8  # exp spans e^-8..e^8
    x64 = x.detach().cpu().double()
    canary = ""
    if spec.op == "softmax":
        out, again = torch.softmax(x, dim=-1), torch.softmax(x, dim=-1)
        reference = torch.softmax(x64, dim=-1)
        scale: Any = reference.abs().clamp_min(1e-300)
        flat = torch.softmax(torch.full((8, COLS), 0.75, dtype=dtype, device=spec.device), dim=-1)
        canary = _exact_or(int((flat.cpu().double() != 1.0 / COLS).sum().item()))
    else:
        out, again = functional.layer_norm(x, (COLS,)), functional.layer_norm(x, (COLS,))
        reference = functional.layer_norm(x64, (COLS,))
        scale = 1.0  # outputs are about unit size; cancellation in x - mean makes relative errors meaningless
    _sync(spec.device)
    klass, _bits = precision_class(out, reference, scale)
    return {"input_sha256": sha(tensor_bytes(x)), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "error_class": klass, "canary": canary,
            "repeat_equal": bool(torch.equal(out, again))}


def _cumsum(spec: KernelSpec) -> dict[str, Any]:
    """A running sum: sensitive values (hash, precision class, repeat) and integers whose sum is exact in any order."""
    import torch

    dtype = getattr(torch, spec.dtype)
    x = sensitive_torch(CUMSUM_N, 81, spec.dtype, spec.device)
    out, again = torch.cumsum(x, 0), torch.cumsum(x, 0)
    ints = int_canary_torch(CUMSUM_N, 82, spec.device)  # |partial sums| <= 16 * 2^14: exact in fp32
    exact = torch.cumsum(ints, 0).cpu()
    canary = _exact_or(int((torch.cumsum(ints.to(dtype), 0).cpu().double() != exact.double()).sum().item()))
    _sync(spec.device)
    x64 = x.detach().cpu().double()
    klass, _bits = precision_class(out, torch.cumsum(x64, 0), torch.cumsum(x64.abs(), 0).clamp_min(1e-300))
    return {"input_sha256": sha(tensor_bytes(x), tensor_bytes(ints)), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "error_class": klass, "canary": canary,
            "repeat_equal": bool(torch.equal(out, again))}


def _random(spec: KernelSpec) -> dict[str, Any]:
    """A seeded stream from a fresh torch.Generator: `rand` is the generator's own numbers, `randn` those numbers
    through the normal transform (vectorised per CPU capability), so which of the two moved says why."""
    import torch

    dtype = getattr(torch, spec.dtype)
    draw = torch.randn if spec.op == "randn" else torch.rand

    def once() -> Any:
        generator = torch.Generator(device=spec.device).manual_seed(RANDOM_SEED)
        return draw(RANDOM_N, generator=generator, dtype=dtype, device=spec.device)

    out, again = once(), once()
    _sync(spec.device)
    recipe = f"torch.Generator({spec.device}).manual_seed({RANDOM_SEED});{spec.op}({RANDOM_N},{spec.dtype})"
    return {"input_sha256": sha(recipe.encode()), "output_sha256": sha(tensor_bytes(out)),
            "samples": list(bit_samples(out)), "repeat_equal": bool(torch.equal(out, again))}


def _attention(spec: KernelSpec) -> dict[str, Any]:
    """scaled_dot_product_attention (the fused kernel torch picks here) against the float64 math it stands for."""
    import torch
    import torch.nn.functional as functional

    q, k, v = (sensitive_torch(HEADS * SEQ * HEAD_DIM, seed, spec.dtype, spec.device).view(1, HEADS, SEQ, HEAD_DIM)
               for seed in (91, 92, 93))
    out = functional.scaled_dot_product_attention(q, k, v)
    again = functional.scaled_dot_product_attention(q, k, v)
    _sync(spec.device)
    q64, k64, v64 = (t.detach().cpu().double() for t in (q, k, v))
    reference = torch.softmax(q64 @ k64.transpose(-1, -2) / HEAD_DIM**0.5, dim=-1) @ v64
    klass, _bits = precision_class(out, reference, 1.0)  # |v| < 1: outputs are weighted means of v
    return {"input_sha256": sha(tensor_bytes(q), tensor_bytes(k), tensor_bytes(v)),
            "output_sha256": sha(tensor_bytes(out)), "samples": list(bit_samples(out)), "error_class": klass,
            "repeat_equal": bool(torch.equal(out, again))}


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
    "scatter-add": _scatter_add,
    "softmax": _rowwise,
    "layer-norm": _rowwise,
    "cumsum": _cumsum,
    "randn": _random,
    "rand": _random,
    "sdpa": _attention,
}


"""Running one probe kernel: what to run (`KernelSpec`), the kernels themselves, and the size limit."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from envlock.probes.numerics.inputs import (
    SUM_BLOCK,
    SUM_TILES,
    bit_samples,
    cached,
    error_class,
    hash_torch,
    int_canary_torch,
    mantissa_bits_kept,
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


"""Deterministic probe inputs: lowbias32 hashing, sensitive and canary values, and the meters of a result.

Inputs come from integer hashing (lowbias32) with power-of-two scaling — no RNG, no libm — so they are exact in
each dtype and identical on every machine; their sha256 proves it.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

GENERATOR = "lowbias32-v1"
M32 = 0xFFFFFFFF
SUM_BLOCK = 1 << 16
SUM_TILES = 64  # 4M elements: long enough that torch splits the sum between threads (1M already does)
SAMPLE_POSITIONS = 8

# Normalised max error boundaries (-log2) between the precision classes of an fp32 GEMM: fp32 keeps ~22 bits,
# bf16x3 ~19, TF32 ~13, bf16 ~10 (numerics notes §4.5); the boundaries are the midpoints.
ERROR_CLASSES = ((20.7, "fp32"), (16.3, "bf16x3"), (11.8, "tf32"), (0.0, "bf16"))
# The coarser classes of the fused kernels (softmax, layer-norm, attention, cumsum): their libm-like steps (exp,
# rsqrt) already cost fp32 a few bits, which move with the CPU's vector path; only a drop to TF32 or bf16 inputs
# is a precision change.
FUSED_CLASSES = ((15.0, "fp32"), (9.5, "tf32"), (0.0, "bf16"))


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




def clear_inputs() -> None:
    """Forget the inputs of this probe run."""
    _INPUTS.clear()


def cached(key: tuple[Any, ...], make: Any) -> Any:
    """The input made for `key` in this probe run (made now by `make()` when there is none yet)."""
    if key not in _INPUTS:
        _INPUTS[key] = make()
    return _INPUTS[key]


def sensitive_torch(n: int, seed: int, dtype: str, device: str = "cpu") -> Any:
    """n values in [-1, 1) that fill `dtype`'s mantissa, as a torch tensor."""
    return cached(("torch", n, seed, dtype, device), lambda: _sensitive_torch(n, seed, dtype, device))


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
    return cached(("numpy", n, seed), lambda: _sensitive_numpy(n, seed))


def _sensitive_numpy(n: int, seed: int) -> Any:
    import numpy as np

    shift, bits = SENSITIVE_BITS["float32"]
    ints = (hash_numpy(n, seed) >> np.uint64(shift)).astype(np.int64) - (1 << bits)
    return (ints.astype(np.float64) * 2.0**-bits).astype(np.float32)


def int_canary_torch(n: int, seed: int, device: str = "cpu") -> Any:
    """n integers in [-16, 16] as int64 (exact in fp16, bf16 and TF32)."""
    return hash_torch(n, seed, device) % 33 - 16


def sha(*chunks: bytes) -> str:
    """`sha256:<hex>` of the chunks, in order."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def tensor_bytes(tensor: Any) -> bytes:
    """The raw bytes of a tensor (bfloat16 as its int16 bit patterns)."""
    import torch

    t = tensor.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return bytes(t.numpy().tobytes())


def bit_samples(tensor: Any) -> tuple[str, ...]:
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


def precision_class(out: Any, reference: Any, scale: Any) -> tuple[str, float]:
    """(class, -log2 of the normalised max error) of any result against its float64 reference, each element's
    error divided by `scale` (a tensor or a number: what the error is measured against), in FUSED_CLASSES."""
    err = ((out.detach().cpu().double() - reference).abs() / scale).max().item()
    bits = 60.0 if err == 0 else -math.log2(err)
    return next((name for bound, name in FUSED_CLASSES if bits > bound), "bf16"), bits


def mantissa_bits_kept(out: Any, want: Any) -> int:
    """The fewest leading mantissa bits (of fp32's 23) any element kept of the value it should equal."""
    o, w = out.detach().cpu().double().reshape(-1), want.detach().cpu().double().reshape(-1)
    nonzero = w != 0
    rel = ((o - w).abs()[nonzero] / w.abs()[nonzero]).max().item() if bool(nonzero.any()) else 0.0
    if rel == 0:
        return 23
    return max(0, min(23, math.floor(-math.log2(rel))))


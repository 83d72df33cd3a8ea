"""The numerics probe: tiny kernels on fixed inputs, whose output bits are locked and compared.

Inputs come from integer hashing (lowbias32) with power-of-two scaling — no RNG, no libm — so they are exact in
each dtype and identical on every machine; their sha256 proves it (`inputs`). `kernels` runs one kernel,
`kernelset` picks and runs the set (collecting), `parse` turns raw facts into the lock's section; judging the
results is comparing (`envlock.compare.numerics`).
"""

from __future__ import annotations

from envlock.probes.numerics.inputs import GENERATOR
from envlock.probes.numerics.kernels import (
    MAX_KERNEL_BYTES,
    MAX_KERNEL_WORK,
    MAX_PROBE_BYTES,
    MAX_PROBE_WORK,
    MAX_WORK,
    Cost,
    KernelSpec,
    kernel_cost,
    run_kernel,
    shape_work,
)
from envlock.probes.numerics.kernelset import PROBE_VERSION, collect_numerics, default_kernels, specs_from_lock
from envlock.probes.numerics.parse import parse_numerics

__all__ = [
    "GENERATOR",
    "MAX_KERNEL_BYTES",
    "MAX_KERNEL_WORK",
    "MAX_PROBE_BYTES",
    "MAX_PROBE_WORK",
    "MAX_WORK",
    "PROBE_VERSION",
    "Cost",
    "KernelSpec",
    "collect_numerics",
    "default_kernels",
    "kernel_cost",
    "parse_numerics",
    "run_kernel",
    "shape_work",
    "specs_from_lock",
]

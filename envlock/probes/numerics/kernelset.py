"""The probe's kernel set: which kernels a process runs, their ids, and running them all (collecting)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from envlock.model import kernel_key
from envlock.probes.coretype import blocked_coretype
from envlock.probes.numerics.inputs import GENERATOR, SUM_BLOCK, SUM_TILES, clear_inputs
from envlock.probes.numerics.kernels import (
    FIXED_SHAPES,
    KERNEL_WORK,
    MAX_PROBE_BYTES,
    MAX_PROBE_WORK,
    Cost,
    KernelSpec,
    kernel_cost,
    megabytes,
    over_bound,
    run_kernel,
)

PROBE_VERSION = "envlock-probe-1"


def kernel_id(spec: KernelSpec) -> str:
    """A stable, readable key: `torch-cpu-sum-float32-t1`, `torch-cuda0-mm-float16-64x64x4096` (the lock model's
    rule, which loading checks every kernel against)."""
    return kernel_key(spec.op, spec.library, spec.device, spec.dtype, spec.shape, spec.threads)


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
            # Half precision on CPU goes through oneDNN (or ATen's own loops): its ISA caps move these bits.
            KernelSpec("mm", "torch", "cpu", "float16", "128x128x512"),
            KernelSpec("mm", "torch", "cpu", "bfloat16", "128x128x512"),
            KernelSpec("int-mm", "torch", "cpu", "float16", "64x64x256"),
            KernelSpec("int-mm", "torch", "cpu", "bfloat16", "64x64x256"),
            KernelSpec("conv2d", "torch", "cpu", "float32", "1x64x32"),
            *_fused("cpu"),
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
            KernelSpec("scatter-add", "torch", device, "float32", FIXED_SHAPES["scatter-add"]),
            KernelSpec("denormal", "torch", device, "float32", "1x1x1"),
            *_fused(device),
            KernelSpec("sdpa", "torch", device, "float16", FIXED_SHAPES["sdpa"]),  # the flash / cuDNN backends
        ]
        specs += [KernelSpec("mm", "torch", device, "float32", shape) for shape in extra_shapes]
    return {kernel_id(s): s for s in specs}


def _fused(device: str) -> list[KernelSpec]:
    """Fused and generator kernels: softmax and layer-norm (reduction order inside one kernel), a running sum,
    the seeded random stream (uniform and normal) and scaled-dot-product attention, all float32."""
    ops = ("softmax", "layer-norm", "cumsum", "rand", "randn", "sdpa")
    return [KernelSpec(op, "torch", device, "float32", FIXED_SHAPES[op]) for op in ops]


def collect_numerics(specs: dict[str, KernelSpec],
                     advance: Callable[[float], None] = lambda done: None) -> dict[str, Any]:
    """Raw facts: run each kernel (a failing one says why, one past the probe's budget too) and time the probe.

    `advance(1)` is called after each kernel (progress)."""
    started = time.perf_counter()
    kernels: dict[str, Any] = {}
    budget = Budget()
    device = ""
    blocked = blocked_coretype()  # importing numpy or torch would die with SIGILL
    try:
        for key, spec in specs.items():
            if blocked:
                kernels[key] = {**spec.to_dict(), "error": f"not run: {blocked}"}
                continue
            if spec.device != device:
                clear_inputs()  # cached inputs are held per device: the byte budget is per device too
                device = spec.device
            refused = budget.spend(spec)
            if refused:
                kernels[key] = {**spec.to_dict(), "error": refused}
                continue
            try:
                result = run_kernel(spec)
            except Exception as exc:  # a kernel that cannot run here is a finding, not a crash
                result = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            kernels[key] = {**spec.to_dict(), **result}
            advance(1)
    finally:
        clear_inputs()
    return {"probe": PROBE_VERSION, "generator": GENERATOR, "kernels": kernels,
            "seconds": round(time.perf_counter() - started, 6)}


class Budget:
    """What a probe run has spent: bytes per device, work in all (see `kernels.kernel_cost`)."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.work = 0

    def spend(self, spec: KernelSpec) -> str:
        """Charge one kernel; why it is refused ("" when the budget has room: run_kernel then judges it alone)."""
        try:
            cost = kernel_cost(spec)
        except ValueError:
            cost = Cost(0, KERNEL_WORK)
        if over_bound(spec, cost):  # refused by run_kernel itself, before it allocates anything
            cost = Cost(0, KERNEL_WORK)
        held = self.bytes.get(spec.device, 0)
        if held + cost.bytes > MAX_PROBE_BYTES:
            self.work += KERNEL_WORK
            return (f"shape {spec.shape} needs {megabytes(cost.bytes)} more on {spec.device}, more than the probe "
                    f"allows ({megabytes(MAX_PROBE_BYTES)} a device; the kernels before it took {megabytes(held)})")
        if self.work + cost.work > MAX_PROBE_WORK:
            self.work += KERNEL_WORK
            return (f"{spec.op} {spec.shape} is past the probe's budget ({MAX_PROBE_WORK:.2e} multiply-adds in all, "
                    f"{self.work - KERNEL_WORK:.2e} spent by the kernels before it)")
        self.bytes[spec.device] = held + cost.bytes
        self.work += cost.work
        return ""


def specs_from_lock(kernels: dict[str, Any]) -> dict[str, KernelSpec]:
    """The kernel specs a lock recorded, to replay them exactly, in the order a capture runs them (the lock keeps
    them sorted by key; a kernel the default set does not hold, `--probe-shape`'s, right after the last default
    kernel of its library and device, as a capture runs it).

    The order is part of "exactly": the first kernel of a library in a process pays its start-up (oneDNN's, the
    OpenMP pool's), so replayed in key order `conv2d` came first and cost ~90 ms more than at capture."""
    specs = {key: KernelSpec(op=k.op, library=k.library, device=k.device, dtype=k.dtype, shape=k.shape,
                             threads=k.threads) for key, k in kernels.items()}
    gpus = [int(s.device[5:]) for s in specs.values() if s.device.startswith("cuda:") and s.device[5:].isdigit()]
    order = default_kernels(numpy=True, torch=True, cuda_devices=max(gpus, default=-1) + 1)
    rank: dict[str, float] = {key: index for index, key in enumerate(order)}
    last = {(spec.library, spec.device): index for index, spec in enumerate(order.values())}
    for key, spec in specs.items():
        rank.setdefault(key, last.get((spec.library, spec.device), len(order)) + 0.5)
    return dict(sorted(specs.items(), key=lambda item: rank[item[0]]))

"""Resource bounds of the numerics probe, and the OPENBLAS_CORETYPE refusal that keeps a job from SIGILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envlock.probes.coretype import coretype_verdict
from envlock.probes.cpu import TEST_FLAGS_VAR
from envlock.probes.numerics import (
    MAX_KERNEL_BYTES,
    MAX_KERNEL_WORK,
    MAX_PROBE_BYTES,
    MAX_PROBE_WORK,
    KernelSpec,
    collect_numerics,
    default_kernels,
    kernel_cost,
    run_kernel,
)

HASWELL_FLAGS = frozenset({"sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


@pytest.mark.parametrize(
    ("op", "shape"),
    [("identity-mm", "1x60000x1"), ("mm", "999999999x1x1"), ("mm", "1x99999x20000"), ("int-mm", "1x99999x99")],
)
def test_a_kernel_over_the_memory_bound_is_an_error_not_an_allocation(op: str, shape: str) -> None:
    result = run_kernel(KernelSpec(op, "torch", "cpu", "float32", shape))
    assert "more than the probe allows" in result["error"]
    assert f"shape {shape} needs " in result["error"]


def test_the_identity_matrix_counts() -> None:
    assert kernel_cost(KernelSpec("identity-mm", "torch", "cpu", "float32", "1x60000x1")).bytes > 60000**2 * 4


def test_a_kernel_over_the_work_bound_is_refused() -> None:
    result = run_kernel(KernelSpec("mm", "torch", "cpu", "float32", "60000x60000x60000"))
    assert "larger than the probe runs" in result["error"]


@pytest.mark.parametrize("devices", [0, 1, 8])
def test_default_kernels_are_well_inside_the_bounds(devices: int) -> None:
    specs = default_kernels(numpy=True, torch=True, cuda_devices=devices, extra_shapes=("128x512x256",))
    per_device: dict[str, int] = {}
    work = 0
    for spec in specs.values():
        cost = kernel_cost(spec)
        assert cost.bytes < MAX_KERNEL_BYTES / 2 and cost.work < MAX_KERNEL_WORK / 8, spec
        per_device[spec.device] = per_device.get(spec.device, 0) + cost.bytes
        work += cost.work
    # A GPU runs the most kernels (its bytes counted as if none were freed): still well short of the budget, so no
    # default kernel is ever refused on the way.
    assert max(per_device.values()) < MAX_PROBE_BYTES * 0.6
    assert per_device["cpu"] < MAX_PROBE_BYTES / 2
    assert work < MAX_PROBE_WORK / 8


def test_every_op_is_costed_by_what_it_allocates() -> None:
    from envlock.probes.numerics.kernels import KERNEL_WORK, KERNELS

    specs = default_kernels(numpy=True, torch=True, cuda_devices=1)
    for op in KERNELS:
        spec = next(s for s in specs.values() if s.op == op)
        cost = kernel_cost(spec)
        assert cost.bytes > 0 and cost.work > KERNEL_WORK, spec


@pytest.mark.parametrize("op", ["softmax", "layer-norm", "cumsum", "randn", "rand", "sdpa", "scatter-add"])
def test_a_fixed_size_kernel_runs_at_its_own_size_whatever_shape_a_lock_says(op: str) -> None:
    from envlock.probes.numerics.kernels import FIXED_SHAPES

    pytest.importorskip("torch")
    hostile = KernelSpec(op, "torch", "cpu", "float32", "999999999x99999x99999")
    assert kernel_cost(hostile) == kernel_cost(KernelSpec(op, "torch", "cpu", "float32", FIXED_SHAPES[op]))
    result = run_kernel(hostile)
    assert "error" not in result and result["repeat_equal"] is True


def test_the_whole_probe_has_a_budget() -> None:
    # Each kernel is within its own bounds; together they are not: the later ones become kernel errors.
    specs = {f"k{i}": KernelSpec("mm", "torch", "cpu", "float32", f"{i + 1}x1000x1000") for i in range(10)}
    assert all(kernel_cost(s).bytes < MAX_KERNEL_BYTES for s in specs.values())
    raw = collect_numerics({**specs, "late": KernelSpec("no-such-op", "torch", "cpu", "float32", "1x1x1")})
    errors = [key for key, item in raw["kernels"].items() if "error" in item and key != "late"]
    assert errors and "k0" not in errors
    assert "more than the probe allows" in raw["kernels"][errors[0]]["error"]


def test_a_lock_of_many_tiny_kernels_spends_the_budget_too() -> None:
    cost = kernel_cost(KernelSpec("mm", "torch", "cpu", "float32", "1x1x1"))
    assert cost.work * 200_000 > MAX_PROBE_WORK


@pytest.mark.parametrize(
    ("name", "flags", "missing"),
    [
        ("SkylakeX", HASWELL_FLAGS, "AVX-512"),
        ("skylakex", HASWELL_FLAGS, "AVX-512"),
        ("Cooperlake", HASWELL_FLAGS | AVX512, "AVX512-BF16"),
        ("SapphireRapids", HASWELL_FLAGS | AVX512 | {"avx512_bf16"}, "AMX"),
        ("Haswell", frozenset({"sse4_2", "avx"}), "AVX2"),
        ("Zen", frozenset({"sse4_2", "avx"}), "AVX2"),
        ("NeoverseV1", frozenset({"asimd", "fphp"}), "SVE"),
    ],
)
def test_a_core_type_this_cpu_cannot_run(name: str, flags: frozenset[str], missing: str) -> None:
    verdict = coretype_verdict(name, flags)
    assert f"OPENBLAS_CORETYPE={name} needs {missing}" in verdict
    assert "SIGILL" in verdict and "unset it" in verdict


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("SkylakeX", HASWELL_FLAGS | AVX512),
        ("Haswell", HASWELL_FLAGS),
        ("Prescott", frozenset({"sse4_2"})),  # older than the CPU: runs
        ("NoSuchCore", frozenset({"sse4_2"})),  # unknown: OpenBLAS falls back itself
        ("SkylakeX", frozenset({"asimd"})),  # another family's name: OpenBLAS on aarch64 does not know it
        ("", HASWELL_FLAGS),
    ],
)
def test_a_core_type_this_cpu_runs_or_openblas_decides(name: str, flags: frozenset[str]) -> None:
    assert coretype_verdict(name, flags) == ""


def test_the_verdict_names_the_core_types_that_would_run() -> None:
    assert "pick one of" in coretype_verdict("SkylakeX", HASWELL_FLAGS)
    assert "Haswell" in coretype_verdict("SkylakeX", HASWELL_FLAGS)


_CHILD = """
import json, sys
from envlock.facts import collect_facts
from envlock.capturing import build_lock
from envlock.compare import compare_locks
facts = collect_facts(numerics=True)
loaded = sorted(m for m in ("numpy", "torch") if m in sys.modules)
lock = build_lock(facts)
findings = [(f.path, f.severity, f.hint) for f in compare_locks(lock, lock).findings if f.path == "blas.coretype"]
kernels = len(facts.get("numerics", {}).get("kernels", {}))
print(json.dumps({"loaded": loaded, "kernels": kernels, "findings": findings}))
"""


def test_collecting_with_a_core_type_the_cpu_lacks_loads_no_blas_and_says_why() -> None:
    flags = " ".join(sorted(HASWELL_FLAGS | {"sse", "sse2"}))  # a CPU without avx512f, whatever this one has
    env = {**os.environ, "OPENBLAS_CORETYPE": "SkylakeX", TEST_FLAGS_VAR: flags}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert out["loaded"] == [] and out["kernels"] == 0
    ((path, severity, hint),) = out["findings"]
    assert (path, severity) == ("blas.coretype", "error")
    assert hint.startswith("OPENBLAS_CORETYPE=SkylakeX needs AVX-512, which this CPU lacks")


def test_a_blocked_core_type_runs_no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")
    monkeypatch.setenv(TEST_FLAGS_VAR, " ".join(HASWELL_FLAGS))
    raw = collect_numerics({"k": KernelSpec("mm", "torch", "cpu", "float32", "2x2x2")})
    assert raw["kernels"]["k"]["error"].startswith("not run: OPENBLAS_CORETYPE=SkylakeX needs AVX-512")


def test_capture_refuses_a_probe_shape_within_the_work_bound_but_over_the_memory_bound(
        machine_facts: dict[str, Any], tmp_path: Path) -> None:
    import dataclasses

    from envlock.capturing import build_lock
    from envlock.lockfile import dumps, seal
    from tests.helpers import console

    lock = build_lock(machine_facts, created="2024-01-01T00:00:00Z")
    shaped = dataclasses.replace(lock, policy=dataclasses.replace(lock.policy, probe_shapes=("300000000x1x1",)))
    path = tmp_path / "envlock.lock"
    path.write_text(dumps(seal(shaped, envlock_version="0.1.0", created=lock.lock.created)))
    before = path.read_bytes()
    done = console("capture", "-o", path, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "policy.probe_shapes" in line and "more than the probe allows" in line
    assert path.read_bytes() == before

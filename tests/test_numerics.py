"""The numerics probe: it catches what changes the bits of a job's numbers, and says why.

1. In this process and in fresh ones, with nothing else changed: thread count, OpenBLAS kernel, flush-denormal,
   clean runs, --no-numerics / --fast, the [policy] rules for `numerics.<id>`, and user probe shapes.
2. Pure parts: the input generator (pinned), exactness of the inputs, kernel ids and sets, the precision meters.
3. GPU verdicts and diagnoses from hand-built records (no GPU here): each row of the notes' diagnosis table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import envlock
from envlock import verifying
from envlock.compare.numerics import classify, compare_numerics
from envlock.findings import Finding
from envlock.lockfile import load
from envlock.model import NumericsSection, Policy, Rule
from envlock.policy import default_policy
from envlock.probes.numerics import (
    GENERATOR,
    PROBE_VERSION,
    KernelSpec,
    collect_numerics,
    default_kernels,
    inputs,
    kernelset,
    parse_numerics,
)
from envlock.probes.numerics.inputs import (
    SENSITIVE_BITS,
    error_class,
    hash_numpy,
    hash_torch,
    mantissa_bits_kept,
    sensitive_numpy,
    sensitive_torch,
)
from envlock.probes.numerics.kernelset import kernel_id
from tests.helpers import clean_env, console, openblas_architecture

BIN = Path(sys.executable).parent
ENVLOCK = BIN / ("envlock.exe" if os.name == "nt" else "envlock")
SUM = "torch-cpu-sum-float32-4194304x1x1"
DENORMAL = "torch-cpu-denormal-float32-1x1x1"
NUMPY_MM = "numpy-cpu-mm-float32-256x256x256"


# --- helpers --------------------------------------------------------------------------------------------


def by_path(findings: Any) -> dict[str, Any]:
    """Findings (objects or JSON dicts) keyed by their dotted path."""
    return {(f["path"] if isinstance(f, dict) else f.path): f for f in findings}


def numerics_paths(findings: Any) -> list[str]:
    return sorted(p for p in by_path(findings) if p.startswith("numerics."))




def edit_policy(lock: Path, *, top: str = "", rules: tuple[str, ...] = ()) -> None:
    """Hand-edit the lock's [policy] as a user would ([policy] is not hashed)."""
    text = lock.read_text(encoding="utf-8")
    if top:
        text = text.replace('extra_packages = "warn"\n', f'extra_packages = "warn"\n{top}\n', 1)
    if rules:
        text = text.replace("[policy.rules]\n", "[policy.rules]\n" + "".join(r + "\n" for r in rules), 1)
    lock.write_text(text, encoding="utf-8")


def locked_numerics(lock: Path) -> NumericsSection:
    loaded, _ = load(lock)
    (target,) = loaded.targets.values()
    assert target.numerics is not None
    return target.numerics


@pytest.fixture(autouse=True)
def _no_leftover_inputs() -> Iterator[None]:
    """Generator calls made by a test leave no cached inputs behind (the probe clears its own after each run)."""
    yield
    inputs.clear_inputs()


@pytest.fixture
def torch_mod() -> Any:
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def _probe_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lock of this process with the probe (captured once; tests get copies)."""
    pytest.importorskip("torch")
    pytest.importorskip("numpy")
    from envlock.capturing import capture

    return capture(tmp_path_factory.mktemp("probe") / "envlock.lock").path


@pytest.fixture
def probe_lock(_probe_lock: Path, tmp_path: Path) -> Path:
    path = tmp_path / "envlock.lock"
    shutil.copyfile(_probe_lock, path)
    return path


@pytest.fixture
def one_thread(torch_mod: Any) -> Iterator[int]:
    """torch at one intra-op thread for the test; yields the count it had (put back afterwards)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs at least 2 cores: torch at 1 thread is the default here, so nothing would change")
    before = torch_mod.get_num_threads()
    if before < 2:
        pytest.skip(f"torch uses {before} thread here: nothing would change at 1")
    torch_mod.set_num_threads(1)
    try:
        yield before
    finally:
        torch_mod.set_num_threads(before)
    assert torch_mod.get_num_threads() == before


@pytest.fixture
def flush_denormal(torch_mod: Any) -> Iterator[None]:
    if not torch_mod.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals (no SSE3 / not x86)")
    try:
        yield
    finally:
        torch_mod.set_flush_denormal(False)


# --- 1. in this process: the probe catches, and explains ----------------------------------------------------


@pytest.mark.torch
def test_torch_thread_count_moves_the_threaded_sum_only_and_is_named(probe_lock: Path, one_thread: int) -> None:
    report = envlock.verify(str(probe_lock))

    assert not report.ok
    found = by_path(report.findings)
    drift = found[f"numerics.{SUM}"]
    assert drift.actual.startswith("order drift: "), drift
    assert drift.severity == "error"
    assert drift.hint == f"thread count changed {one_thread} → 1"
    # The single-threaded kernels replay as captured: the kernels themselves did not change.
    assert not [p for p in numerics_paths(report.findings) if p.endswith("-t1")]
    assert f"numerics.{SUM}-t1" not in found
    assert found["threads.torch_intraop"].actual == "1"


@pytest.mark.torch
def test_flush_denormal_is_a_precision_change_that_says_so(probe_lock: Path, flush_denormal: None) -> None:
    report = envlock.verify(str(probe_lock))

    found = by_path(report.findings)[f"numerics.{DENORMAL}"]
    assert found.actual.startswith("precision change: ") and "ftz=on" in found.actual, found
    assert "ftz=off" in found.expected
    assert found.severity == "error"
    assert found.hint.startswith("flush-denormal is on")
    assert "torch.set_flush_denormal(True)" in found.hint
    assert not report.ok


@pytest.mark.torch
def test_twenty_clean_verifies_with_the_probe_find_nothing(probe_lock: Path) -> None:
    expected = set(locked_numerics(probe_lock).kernels)
    assert {SUM, f"{SUM}-t1", DENORMAL, NUMPY_MM, f"{NUMPY_MM}-t1", *TORCH_CPU_IDS} <= expected
    for i in range(20):
        report = envlock.verify(str(probe_lock))
        assert report.findings == (), f"run {i}: {report.findings}"
        assert report.ok and report.skipped == ()


@pytest.mark.torch
def test_verify_replays_every_locked_kernel(probe_lock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    real = kernelset.run_kernel

    def spy(spec: KernelSpec) -> dict[str, Any]:
        ran.append(kernel_id(spec))
        return real(spec)

    monkeypatch.setattr(kernelset, "run_kernel", spy)
    assert envlock.verify(str(probe_lock)).findings == ()
    locked = locked_numerics(probe_lock).kernels
    assert sorted(ran) == sorted(locked)
    # In the order a capture runs them, not the lock's (sorted by key): each library's start-up is paid where it
    # was at capture (replayed in key order, conv2d came first and cost ~90 ms more).
    captured = [key for key in default_kernels(numpy=True, torch=True) if key in locked]
    assert ran[:len(captured)] == captured and ran != sorted(ran)


def test_replay_order_is_the_capture_order_with_probe_shapes_where_a_capture_runs_them() -> None:
    from envlock.probes.numerics import specs_from_lock

    ran = default_kernels(numpy=True, torch=True, cuda_devices=2, extra_shapes=("64x64x64", "96x32x16"))
    as_locked = dict(sorted(ran.items()))  # a lock's tables are sorted by key
    assert list(as_locked) != list(ran)
    assert list(specs_from_lock(as_locked)) == list(ran)  # probe shapes among themselves: in the lock's order


@pytest.mark.torch
def test_capture_no_numerics_writes_no_probe_and_verify_runs_none(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch, torch_mod: Any
) -> None:
    lock = tmp_path / "envlock.lock"
    r = cli("capture", "-o", str(lock), "--no-numerics")
    assert r.exit_code == 0, r.stdout
    text = lock.read_text(encoding="utf-8")
    assert ".numerics]" not in text and ".numerics.kernels." not in text
    loaded, _ = load(lock)
    assert all(t.numerics is None for t in loaded.targets.values())

    calls: list[Any] = []
    monkeypatch.setattr(verifying, "collect_numerics", lambda specs: calls.append(specs))
    report = envlock.verify(str(lock))
    assert (report.findings, calls) == ((), [])
    assert "numerics" not in report.skipped


@pytest.mark.torch
def test_verify_fast_skips_the_probe_and_says_so(probe_lock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(verifying, "collect_numerics", lambda specs: calls.append(specs))

    report = envlock.verify(str(probe_lock), fast=True)

    assert calls == []
    assert "numerics" in report.skipped
    assert numerics_paths(report.findings) == []


@pytest.mark.torch
def test_compatible_rule_allows_order_drift_of_one_kernel(probe_lock: Path, one_thread: int) -> None:
    edit_policy(probe_lock, rules=(f'"numerics.{SUM}" = {{rule = "compatible", severity = "error"}}',))

    # Only the probe speaks: the thread count itself is locked elsewhere (threads.*, blas.libraries.*.*).
    report = envlock.verify(str(probe_lock), ignore=["threads.*", "blas.libraries.*.*"])

    assert numerics_paths(report.findings) == []
    assert report.ok, report.findings
    full = envlock.verify(str(probe_lock))
    assert f"numerics.{SUM}" not in by_path(full.findings)
    assert "threads.torch_intraop" in by_path(full.findings)


@pytest.mark.torch
def test_compatible_rule_still_fails_a_precision_change(probe_lock: Path, flush_denormal: None) -> None:
    rule = '{rule = "compatible", severity = "warn"}'
    edit_policy(probe_lock, rules=(f'"numerics.{SUM}" = {rule}', f'"numerics.{DENORMAL}" = {rule}'))
    loaded, _ = load(probe_lock)
    assert loaded.policy.rules[f"numerics.{SUM}"] == Rule(rule="compatible", severity="warn")

    # Live: flush-denormal under a compatible rule is still an error.
    report = envlock.verify(str(probe_lock), ignore=["floats.torch.*"])
    found = by_path(report.findings)[f"numerics.{DENORMAL}"]
    assert (found.actual.split(":")[0], found.severity) == ("precision change", "error")
    assert not report.ok

    # And the threaded sum itself, were its precision to change (a canary moving), fails under its compatible rule.
    section = locked_numerics(probe_lock)
    moved = dataclasses.replace(section.kernels[SUM], output_sha256="sha256:" + "1" * 64, canary="bits=10")
    now = dataclasses.replace(section, kernels={**section.kernels, SUM: moved})
    (finding,) = compare_numerics(section, now, {}, loaded.policy, ({}, {}))
    assert (finding.path, finding.severity) == (f"numerics.{SUM}", "error")
    assert finding.actual.startswith("precision change: ")


@pytest.mark.torch
def test_ignore_rule_silences_a_kernel(probe_lock: Path, one_thread: int) -> None:
    edit_policy(probe_lock, rules=(f'"numerics.{SUM}" = {{rule = "ignore", severity = "warn"}}',))

    report = envlock.verify(str(probe_lock), ignore=["threads.*", "blas.libraries.*.*"])

    assert numerics_paths(report.findings) == []
    assert report.ok


@pytest.mark.torch
def test_probe_shapes_in_policy_are_captured_and_replayed(probe_lock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envlock.capturing import capture

    edit_policy(probe_lock, top='probe_shapes = ["128x512x256"]')
    result = capture(probe_lock)

    assert result.kept_policy
    assert result.lock.policy.probe_shapes == ("128x512x256",)
    kernels = locked_numerics(probe_lock).kernels
    mm = kernels["torch-cpu-mm-float32-128x512x256"]
    assert (mm.op, mm.shape, mm.error_class, mm.threads) == ("mm", "128x512x256", "fp32", 0)
    assert 'probe_shapes = ["128x512x256"]' in probe_lock.read_text(encoding="utf-8")

    ran: list[str] = []
    real = kernelset.run_kernel

    def spy(spec: KernelSpec) -> dict[str, Any]:
        ran.append(kernel_id(spec))
        return real(spec)

    monkeypatch.setattr(kernelset, "run_kernel", spy)
    assert envlock.verify(str(probe_lock)).findings == ()
    assert "torch-cpu-mm-float32-128x512x256" in ran


# --- 1b. fresh processes: the real console script --------------------------------------------------------------



def _openblas_architecture(lock: Path) -> str:
    found = openblas_architecture(lock)
    if not found:
        pytest.skip("numpy here is not built on OpenBLAS (or threadpoolctl does not see its core type)")
    return found


@pytest.mark.slow
@pytest.mark.torch
def test_openblas_coretype_is_caught_by_the_probe_alone(console_lock: Path) -> None:
    default = _openblas_architecture(console_lock)
    other = "Haswell" if default.lower() != "haswell" else "Sandybridge"
    env = clean_env(OPENBLAS_CORETYPE=other)

    done = console("verify", "--json", "--ignore", "floats.env.*", "--ignore", "blas.libraries.*.*",
                   console_lock, cwd=console_lock.parent, env=env)

    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    found = by_path(report["findings"])
    assert set(found) <= {f"numerics.{NUMPY_MM}", f"numerics.{NUMPY_MM}-t1"}, found
    single = found[f"numerics.{NUMPY_MM}-t1"]
    assert single["actual"].startswith("order drift: ") and single["severity"] == "error"
    assert single["hint"] == f"BLAS kernel changed {default} → {other}"
    # The kernel, not the thread count: the threaded sibling (if it moved) says the same.
    if f"numerics.{NUMPY_MM}" in found:
        assert found[f"numerics.{NUMPY_MM}"]["hint"] == f"BLAS kernel changed {default} → {other}"


@pytest.mark.slow
@pytest.mark.torch
def test_openblas_coretype_report_names_the_env_var_and_the_kernel(console_lock: Path) -> None:
    default = _openblas_architecture(console_lock)
    other = "Haswell" if default.lower() != "haswell" else "Sandybridge"

    done = console("verify", console_lock, cwd=console_lock.parent, env=clean_env(OPENBLAS_CORETYPE=other))

    assert done.returncode == 1, done.stdout + done.stderr
    text = done.stdout
    for path in ("floats.env.OPENBLAS_CORETYPE", "blas.libraries.numpy-openblas.architecture",
                 f"numerics.{NUMPY_MM}-t1"):
        assert path in text, text
    flat = " ".join(text.split())
    # One cause: the env var is the headline, the kernel and the probe results that moved are folded under it.
    assert text.splitlines()[1:2] == [f"  error: OPENBLAS_CORETYPE is {other}, was unset"], text
    assert "OPENBLAS_CORETYPE was unset at capture" in flat
    assert "from 1 cause" in text.splitlines()[0]


@pytest.mark.slow
@pytest.mark.torch
def test_three_clean_console_verifies_find_nothing(console_lock: Path) -> None:
    assert locked_numerics(console_lock).kernels
    for i in range(3):
        done = console("verify", "--json", console_lock, cwd=console_lock.parent)
        assert done.returncode == 0, f"run {i}: {done.stdout}{done.stderr}"
        report = json.loads(done.stdout)
        assert (report["ok"], report["findings"], report["skipped"], done.stderr) == (True, [], [], "")


@pytest.mark.slow
@pytest.mark.torch
def test_console_verify_fast_lists_the_probe_once_as_skipped(console_lock: Path) -> None:
    done = console("verify", "--fast", "--json", console_lock, cwd=console_lock.parent)

    assert done.returncode == 0, done.stdout + done.stderr
    skipped = json.loads(done.stdout)["skipped"]
    assert "numerics" in skipped
    assert len(skipped) == len(set(skipped)), f"a section is listed twice as not checked: {skipped}"


def _has_vector_isa(lock: Path) -> None:
    loaded, _ = load(lock)
    (target,) = loaded.targets.values()
    if not {"avx2", "avx512f"} & set(target.cpu.flags):
        pytest.skip("this CPU has no AVX2 or AVX-512: capping oneDNN or ATen at a lower ISA would change nothing")


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("var", ["DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA"])
def test_capping_onednn_isa_moves_conv2d_and_names_the_env_var_as_the_cause(console_lock: Path, var: str) -> None:
    _has_vector_isa(console_lock)
    assert CONV2D in locked_numerics(console_lock).kernels

    done = console("verify", "--json", console_lock, cwd=console_lock.parent, env=clean_env(**{var: "SSE41"}))

    assert done.returncode == 1, done.stdout + done.stderr
    found = by_path(json.loads(done.stdout)["findings"])
    root = found[f"floats.env.{var}"]
    assert (root["expected"], root["actual"], root["severity"]) == (None, "SSE41", "error")  # None: unset
    conv = found[f"numerics.{CONV2D}"]
    assert conv["actual"].startswith("order drift: ") and conv["severity"] == "error"
    assert conv["hint"] == f"oneDNN's ISA cap ({var}) changed ((unset) → SSE41)"
    assert conv["cause"] == f"floats.env.{var}"  # the kernel is a consequence; the env var is the root cause
    # Only what oneDNN runs moved: ATen's own kernels (sums, softmax, the random stream) did not.
    assert {p for p in found if p.startswith("numerics.")} <= {f"numerics.{CONV2D}",
                                                                "numerics.torch-cpu-mm-float16-128x128x512"}
    done = console("verify", console_lock, cwd=console_lock.parent, env=clean_env(**{var: "SSE41"}))
    assert done.stdout.splitlines()[1:2] == [f"  error: {var} is SSE41, was unset"], done.stdout


@pytest.mark.slow
@pytest.mark.torch
def test_aten_default_capability_moves_the_normal_stream_not_the_generator(console_lock: Path) -> None:
    _has_vector_isa(console_lock)

    done = console("verify", "--json", console_lock, cwd=console_lock.parent,
                   env=clean_env(ATEN_CPU_CAPABILITY="default"))

    assert done.returncode == 1, done.stdout + done.stderr
    found = by_path(json.loads(done.stdout)["findings"])
    assert found["floats.env.ATEN_CPU_CAPABILITY"]["actual"] == "default"
    assert found["blas.torch_cpu_capability"]["actual"] == "DEFAULT"
    assert found["blas.torch_cpu_capability"]["cause"] == "floats.env.ATEN_CPU_CAPABILITY"
    randn = found[f"numerics.{RANDN}"]
    assert randn["actual"].startswith("order drift: ")
    assert randn["hint"].startswith(f"the normal transform changed, not the generator ({RAND} still matches): "
                                    "ATEN_CPU_CAPABILITY changed ((unset) → default)"), randn["hint"]
    assert randn["cause"] == "floats.env.ATEN_CPU_CAPABILITY"
    assert f"numerics.{RAND}" not in found  # the generator's own stream is the same
    for key in (SOFTMAX, SDPA):
        assert found[f"numerics.{key}"]["cause"] == "floats.env.ATEN_CPU_CAPABILITY", found[f"numerics.{key}"]
    # The oneDNN kernels follow their own ISA cap, not ATen's.
    assert f"numerics.{CONV2D}" not in found


# --- 2. pure: the generator, the inputs, kernel ids and sets, the meters ------------------------------------------


def lowbias32(i: int, seed: int) -> int:
    """The generator spec (numerics notes §4.2), written out in plain Python."""
    m = 0xFFFFFFFF
    x = (i * 0x9E3779B1 + seed) & m
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    x ^= x >> 16
    return x


#: lowbias32-v1, seed 0, i = 0..7: changing these changes every lock's input hashes (a new generator version).
LOWBIAS32_SEED0 = (0x00000000, 0x6D523710, 0xAC34CDED, 0x2358FE96, 0x4413B773, 0x5CD7E704, 0x059EB5AB, 0x5556689F)


def test_generator_is_pinned() -> None:
    np = pytest.importorskip("numpy")
    assert (PROBE_VERSION, GENERATOR) == ("envlock-probe-1", "lowbias32-v1")
    assert tuple(lowbias32(i, 0) for i in range(8)) == LOWBIAS32_SEED0
    assert tuple(int(v) for v in hash_numpy(8, 0)) == LOWBIAS32_SEED0
    assert hash_numpy(8, 0).dtype == np.uint64
    spots = [0, 1, 2**16 + 3, 99_999]
    values = hash_numpy(100_000, 11)
    assert [int(values[i]) for i in spots] == [lowbias32(i, 11) for i in spots]


@pytest.mark.torch
@pytest.mark.parametrize("seed", [0, 1, 11, 52, 0x7FFFFFFF, 0xFFFFFFFF])
@pytest.mark.parametrize("n", [1, 1000, 100_000])
def test_hash_torch_equals_hash_numpy_bit_for_bit(torch_mod: Any, seed: int, n: int) -> None:
    np = pytest.importorskip("numpy")
    t, a = hash_torch(n, seed), hash_numpy(n, seed)
    assert t.dtype == torch_mod.int64 and t.shape == (n,)
    assert int(t.min()) >= 0 and int(t.max()) <= 0xFFFFFFFF
    assert np.array_equal(t.numpy().astype(np.uint64), a)


def significant_bits(j: int) -> int:
    """Significant bits of an integer: its width less its trailing zeros."""
    j = abs(j)
    return 0 if j == 0 else j.bit_length() - (j & -j).bit_length() + 1


@pytest.mark.torch
@pytest.mark.parametrize("dtype, limit", [("float32", 24), ("float16", 11), ("bfloat16", 8), ("float64", 53)])
def test_sensitive_values_are_exact_in_their_dtype_and_cover_minus_one_to_one(
    torch_mod: Any, dtype: str, limit: int
) -> None:
    values = sensitive_torch(100_000, 7, dtype)
    assert values.dtype == getattr(torch_mod, dtype)
    wide = values.double()
    # float64 -> dtype -> float64 changes nothing: every value is exact in its dtype.
    assert torch_mod.equal(wide.to(getattr(torch_mod, dtype)), values)
    if dtype == "float32":
        assert torch_mod.equal(values.double().float(), values)
    assert float(wide.min()) >= -1.0 and float(wide.max()) < 1.0
    low, high = float(wide.min()), float(wide.max())
    assert low < -0.9 and high > 0.9, f"{dtype} values span [{low}, {high}] only"
    _shift, bits = SENSITIVE_BITS[dtype]
    ints = wide * 2.0**bits
    assert torch_mod.equal(ints, ints.round())
    assert max(significant_bits(int(j)) for j in ints.long().tolist()) <= limit


@pytest.mark.torch
@pytest.mark.parametrize("dtype, significand", [("float32", 24), ("float16", 11), ("bfloat16", 8), ("float64", 53)])
def test_sensitive_values_fill_their_dtypes_mantissa(torch_mod: Any, dtype: str, significand: int) -> None:
    """The notes' rule (§4.2): "Sensitive inputs must fill the tested dtype's mantissa" — all of its bits.

    A value in [0.5, 1) with fewer significant bits than the dtype has leaves its last mantissa bits always zero,
    so a change of summation order that only moves those bits goes unseen (dgemm on 24-bit inputs was
    bit-identical across all 14 OpenBLAS configs, §5).
    """
    wide = sensitive_torch(100_000, 7, dtype).double()
    widest = max(significant_bits(int(j)) for j in (wide * 2.0**significand).long().tolist())
    assert widest == significand, f"{dtype} inputs use at most {widest} of its {significand} significant bits"


@pytest.mark.torch
def test_sensitive_numpy_equals_sensitive_torch(torch_mod: Any) -> None:
    np = pytest.importorskip("numpy")
    for n, seed in ((1, 0), (4096, 11), (100_000, 41)):
        a, t = sensitive_numpy(n, seed), sensitive_torch(n, seed, "float32")
        assert a.dtype == np.float32
        assert np.array_equal(a.view(np.uint32), t.numpy().view(np.uint32))


def test_kernel_ids() -> None:
    assert kernel_id(KernelSpec("sum", "torch", "cpu", "float32", "4194304x1x1", 1)) == f"{SUM}-t1"
    assert kernel_id(KernelSpec("mm", "torch", "cuda:0", "float16", "64x64x4096")) == (
        "torch-cuda0-mm-float16-64x64x4096")
    assert kernel_id(KernelSpec("mm", "numpy", "cpu", "float32", "256x256x256", 4)) == f"{NUMPY_MM}-t4"
    assert kernel_id(KernelSpec("int-mm", "torch", "cuda:12", "bfloat16", "64x64x4096")) == (
        "torch-cuda12-int-mm-bfloat16-64x64x4096")


NUMPY_IDS = [f"{NUMPY_MM}-t1", NUMPY_MM, "numpy-cpu-sum-float32-4194304x1x1"]
CONV2D = "torch-cpu-conv2d-float32-1x64x32"
RANDN, RAND = "torch-cpu-randn-float32-4096x1x1", "torch-cpu-rand-float32-4096x1x1"
SOFTMAX, SDPA = "torch-cpu-softmax-float32-64x1024x1", "torch-cpu-sdpa-float32-4x64x64"


def fused_ids(device: str) -> list[str]:
    d = f"torch-{device}"
    return [f"{d}-softmax-float32-64x1024x1", f"{d}-layer-norm-float32-64x1024x1", f"{d}-cumsum-float32-16384x1x1",
            f"{d}-rand-float32-4096x1x1", f"{d}-randn-float32-4096x1x1", f"{d}-sdpa-float32-4x64x64"]


TORCH_CPU_IDS = [f"{SUM}-t1", "torch-cpu-mm-float32-256x256x256-t1", SUM, "torch-cpu-mm-float32-256x256x256",
                 "torch-cpu-identity-mm-float32-256x256x1", "torch-cpu-int-mm-float32-64x64x1024", DENORMAL,
                 "torch-cpu-mm-float16-128x128x512", "torch-cpu-mm-bfloat16-128x128x512",
                 "torch-cpu-int-mm-float16-64x64x256", "torch-cpu-int-mm-bfloat16-64x64x256", CONV2D,
                 *fused_ids("cpu")]


def cuda_ids(index: int) -> list[str]:
    d = f"torch-cuda{index}"
    return [f"{d}-mm-float32-256x256x256", f"{d}-identity-mm-float32-256x256x1", f"{d}-mm-float16-64x64x4096",
            f"{d}-mm-bfloat16-64x64x4096", f"{d}-mm-float16-256x256x256", f"{d}-int-mm-float16-64x64x4096",
            f"{d}-int-mm-bfloat16-64x64x4096", f"{d}-sum-float32-4194304x1x1", f"{d}-mean-float32-4194304x1x1",
            f"{d}-conv2d-float32-1x64x32", f"{d}-conv1x1-float32-1x64x32", f"{d}-index-add-float32-4096x64x64",
            f"{d}-scatter-add-float32-1024x64x64", f"{d}-denormal-float32-1x1x1", *fused_ids(f"cuda{index}"),
            f"{d}-sdpa-float16-4x64x64"]


def test_default_kernel_sets() -> None:
    assert list(default_kernels(numpy=True, torch=False)) == NUMPY_IDS
    assert list(default_kernels(numpy=False, torch=True)) == TORCH_CPU_IDS
    assert list(default_kernels(numpy=False, torch=False, cuda_devices=2)) == []  # CUDA kernels need torch
    with_gpus = default_kernels(numpy=True, torch=True, cuda_devices=2)
    assert list(with_gpus) == TORCH_CPU_IDS + NUMPY_IDS + cuda_ids(0) + cuda_ids(1)
    assert all(kernel_id(spec) == key for key, spec in with_gpus.items())
    assert {spec.device for spec in with_gpus.values()} == {"cpu", "cuda:0", "cuda:1"}
    shaped = default_kernels(numpy=True, torch=True, cuda_devices=1, extra_shapes=("128x512x256",))
    assert [k for k in shaped if "128x512x256" in k] == ["torch-cpu-mm-float32-128x512x256",
                                                        "torch-cuda0-mm-float32-128x512x256"]


def _mask(t: Any, low_bits: int) -> Any:
    """fp32 with its low mantissa bits zeroed (TF32: 13, bf16: 16), through an int32 view."""
    import torch

    return (t.view(torch.int32) & ~((1 << low_bits) - 1)).view(torch.float32)


def _round_away(t: Any, low_bits: int) -> Any:
    """fp32 rounded to nearest, ties away from zero, at `low_bits` dropped bits (cuBLAS TF32: 1024.5 -> 1025)."""
    import torch

    return ((t.view(torch.int32) + (1 << (low_bits - 1))) & ~((1 << low_bits) - 1)).view(torch.float32)


@pytest.mark.torch
def test_mantissa_bits_kept(torch_mod: Any) -> None:
    x = sensitive_torch(256 * 256, 21, "float32").view(256, 256)
    assert mantissa_bits_kept(x.clone(), x) == 23
    assert mantissa_bits_kept(_mask(x, 13), x) == 10
    assert mantissa_bits_kept(_mask(x, 16), x) == 7
    assert mantissa_bits_kept(torch_mod.zeros(3), torch_mod.zeros(3)) == 23
    # The notes' TF32 example, as cuBLAS rounds it (pytorch#53635).
    assert float(_round_away(torch_mod.tensor([1024.5]), 13)[0]) == 1025.0


@pytest.mark.torch
def test_error_class_of_emulated_precisions(torch_mod: Any) -> None:
    a = sensitive_torch(256 * 256, 11, "float32").view(256, 256)
    b = sensitive_torch(256 * 256, 12, "float32").view(256, 256)

    def emulate(low_bits: int) -> Any:
        return (_mask(a, low_bits).double() @ _mask(b, low_bits).double()).float()

    assert error_class(a @ b, a, b)[0] == "fp32"
    assert error_class(emulate(13), a, b)[0] == "tf32"
    assert error_class(emulate(16), a, b)[0] == "bf16"
    assert error_class((a.double() @ b.double()).float(), a, b)[0] == "fp32"
    _name, bits = error_class(a @ b, a, b)
    assert 20.7 < bits <= 60.0


# --- 3. GPU verdicts and diagnoses from recorded results ------------------------------------------------------


def _hash(c: str) -> str:
    return "sha256:" + c * 64


def recorded(*, devices: int = 1) -> dict[str, Any]:
    """Raw probe facts as a GPU capture records them, with made-up hashes and the canaries of true fp32."""
    kernels = {}
    for key, spec in default_kernels(numpy=False, torch=True, cuda_devices=devices).items():
        item: dict[str, Any] = {**spec.to_dict(), "input_sha256": _hash("a"), "output_sha256": _hash("b"),
                                "samples": ["3f800000"], "repeat_equal": True}
        if spec.op in ("identity-mm", "conv1x1"):
            item["canary"] = "bits=23"
        elif spec.op == "int-mm":
            item["canary"] = "exact"
        elif spec.op == "mm":
            item["error_class"] = "fp32" if spec.dtype == "float32" else "bf16"
        elif spec.op == "denormal":
            item["canary"] = "ftz=off daz=off workers-flushed=0"
        kernels[key] = item
    return {"probe": PROBE_VERSION, "generator": GENERATOR, "kernels": kernels}


CONTEXT: dict[str, Any] = {
    "floats.torch.version": "2.13.0",
    "floats.torch.matmul_allow_tf32": False,
    "floats.torch.cudnn_allow_tf32": False,
    "floats.torch.float32_matmul_precision": "highest",
    "floats.torch.cudnn_benchmark": False,
    "floats.env.NVIDIA_TF32_OVERRIDE": "(unset)",
    "gpu.devices.0.compute_capability": "9.0",
    "gpu.devices.0.sm_count": 132,
    "gpu.devices.1.compute_capability": "9.0",
    "gpu.devices.1.sm_count": 132,
    "cuda.cublas": "12.8.4.1",
    "cuda.cudnn": "9.10.2",
    "threads.torch_intraop": 2,
    "blas.libraries.numpy-openblas.architecture": "SkylakeX",
    "blas.libraries.numpy-openblas.num_threads": 2,
}


def gpu_findings(changes: dict[str, dict[str, Any]], *, context: dict[str, Any] | None = None,
                 devices: int = 1, policy: Policy | None = None, errors: dict[str, str] | None = None,
                 drop: tuple[str, ...] = ()) -> dict[str, Finding]:
    """compare_numerics on a recorded GPU probe against one with `changes` (kernel id -> fields), keyed by path."""
    want = recorded(devices=devices)
    have = recorded(devices=devices)
    for key, fields in changes.items():
        have["kernels"][key].update(fields)
    for key in drop:
        del have["kernels"][key]
    expected, actual = parse_numerics(want), parse_numerics(have)
    findings = compare_numerics(expected, actual, errors or {}, policy or default_policy(),
                                (dict(CONTEXT), {**CONTEXT, **(context or {})}))
    return by_path(findings)


def only(findings: dict[str, Finding], key: str) -> Finding:
    assert list(findings) == [f"numerics.{key}"], list(findings)
    return findings[f"numerics.{key}"]


def test_recorded_probe_against_itself_is_silent() -> None:
    assert gpu_findings({}, devices=2) == {}
    section = parse_numerics(recorded())
    assert {v.kind for v in classify(section, section, {})} == {"match"}


def test_tf32_for_cublas_is_named_with_its_knob() -> None:
    key = "torch-cuda0-identity-mm-float32-256x256x1"
    found = only(gpu_findings({key: {"canary": "bits=10", "output_sha256": _hash("c")}},
                              context={"floats.torch.matmul_allow_tf32": True}), key)
    assert found.actual.startswith("precision change: ") and "bits=10" in found.actual
    assert "bits=23" in found.expected
    assert found.severity == "error"
    assert found.hint.startswith("TF32 enabled for cuBLAS fp32 matmul")
    assert "matmul_allow_tf32" in found.hint


@pytest.mark.torch
def test_tf32_as_cublas_rounds_it_is_still_named_tf32(torch_mod: Any) -> None:
    """cuBLAS rounds fp32 to TF32 to nearest (1024.5 @ [[1]] = 1025, pytorch#53635), it does not truncate.

    The identity canary then measures 11 bits kept, and the diagnosis must still say TF32.
    """
    x = sensitive_torch(256 * 256, 21, "float32").view(256, 256)
    kept = mantissa_bits_kept(_round_away(x, 13), x)
    key = "torch-cuda0-identity-mm-float32-256x256x1"
    found = only(gpu_findings({key: {"canary": f"bits={kept}", "output_sha256": _hash("c")}},
                              context={"floats.torch.matmul_allow_tf32": True}), key)
    assert found.hint.startswith("TF32 enabled for cuBLAS fp32 matmul"), (kept, found.hint)


@pytest.mark.parametrize("bits, mode", [(16, "bf16x3"), (7, "bf16"), (9, "TF32")])
def test_reduced_fp32_matmul_modes_are_named(bits: int, mode: str) -> None:
    key = "torch-cuda0-identity-mm-float32-256x256x1"
    found = only(gpu_findings({key: {"canary": f"bits={bits}", "output_sha256": _hash("c")}},
                              context={"floats.torch.float32_matmul_precision": "medium"}), key)
    assert found.hint.startswith(f"{mode} enabled for cuBLAS fp32 matmul"), found.hint
    assert "float32_matmul_precision highest → medium" in found.hint


def test_int_canary_mismatches_point_at_reduced_precision_reductions() -> None:
    key = "torch-cuda0-int-mm-float16-64x64x4096"
    found = only(gpu_findings({key: {"canary": "mismatches=1398", "output_sha256": _hash("c")}}), key)
    assert found.actual.startswith("precision change: ") and "mismatches=1398" in found.actual
    assert found.severity == "error"
    assert "reduced-precision reductions" in found.hint
    assert "allow_fp16/bf16_reduced_precision_reduction" in found.hint


@pytest.mark.parametrize("path, before, after, text", [
    ("gpu.devices.0.sm_count", 132, 114, "different SM count (MIG slice?) (132 → 114)"),
    ("gpu.devices.0.compute_capability", "8.0", "9.0", "different GPU architecture (8.0 → 9.0)"),
    ("cuda.cublas", "12.8.4.1", "12.9.1.4", "cuBLAS version changed (12.8.4.1 → 12.9.1.4)"),
])
def test_fp32_matmul_order_drift_names_the_hardware_or_library_that_moved(
    path: str, before: Any, after: Any, text: str
) -> None:
    key = "torch-cuda0-mm-float32-256x256x256"
    want = recorded()
    have = recorded()
    have["kernels"][key]["output_sha256"] = _hash("c")
    findings = compare_numerics(parse_numerics(want), parse_numerics(have), {}, default_policy(),
                                ({**CONTEXT, path: before}, {**CONTEXT, path: after}))
    (found,) = findings
    assert found.path == f"numerics.{key}"
    assert found.actual.startswith("order drift: ") and "(fp32)" in found.actual
    assert found.hint == text


def test_conv2d_drift_alone_is_cudnn_algorithm_choice() -> None:
    key = "torch-cuda0-conv2d-float32-1x64x32"
    found = only(gpu_findings({key: {"output_sha256": _hash("c")}}), key)
    assert found.actual.startswith("order drift: ")
    assert found.hint.startswith("cuDNN picked another algorithm")


def test_conv1x1_canary_with_cudnn_tf32_is_named() -> None:
    key = "torch-cuda0-conv1x1-float32-1x64x32"
    found = only(gpu_findings({key: {"canary": "bits=10", "output_sha256": _hash("c")}},
                              context={"floats.torch.cudnn_allow_tf32": True}), key)
    assert found.actual.startswith("precision change: ")
    assert found.hint.startswith("cuDNN fp32 convolutions keep 10 mantissa bits (TF32)")
    assert "cudnn.allow_tf32" in found.hint


@pytest.mark.parametrize("moved", [False, True], ids=["same-bits", "other-bits"])
def test_a_repeat_that_differs_now_is_nondeterminism(moved: bool) -> None:
    key = "torch-cuda0-mm-float16-64x64x4096"
    change: dict[str, Any] = {"repeat_equal": False}
    if moved:
        change["output_sha256"] = _hash("c")
    found = only(gpu_findings({key: change}), key)
    assert found.actual.startswith("nondeterministic: ") and found.actual.endswith("(repeat differs)")
    assert "CUBLAS_WORKSPACE_CONFIG" in found.hint and "use_deterministic_algorithms" in found.hint


def test_kernels_of_a_gpu_that_is_gone_did_not_run() -> None:
    gone = cuda_ids(1)
    findings = gpu_findings({}, devices=2, drop=tuple(gone),
                            errors={gone[0]: "RuntimeError: CUDA error: invalid device ordinal"})
    assert sorted(findings) == sorted(f"numerics.{k}" for k in gone)
    first = findings[f"numerics.{gone[0]}"]
    assert first.actual == "did not run: RuntimeError: CUDA error: invalid device ordinal"
    assert first.severity == "error"
    assert first.hint.startswith("cuda:1 is not available in this process")
    assert findings[f"numerics.{gone[1]}"].actual == "did not run: not run"


def test_other_inputs_make_the_probe_invalid() -> None:
    key = "torch-cuda0-mm-float32-256x256x256"
    found = only(gpu_findings({key: {"input_sha256": _hash("d"), "output_sha256": _hash("c")}}), key)
    assert found.actual.startswith("invalid probe: ")
    assert found.severity == "error"
    assert "the probe's inputs differ from the lock's" in found.hint


def test_policy_on_gpu_kernels_order_drift_versus_precision() -> None:
    policy = Policy(rules={**default_policy().rules, "numerics.*": Rule(rule="compatible", severity="warn")})
    drift = "torch-cuda0-mm-float32-256x256x256"
    tf32 = "torch-cuda0-identity-mm-float32-256x256x1"
    findings = gpu_findings({drift: {"output_sha256": _hash("c")},
                             tf32: {"canary": "bits=10", "output_sha256": _hash("c")}}, policy=policy)
    assert list(findings) == [f"numerics.{tf32}"]
    assert findings[f"numerics.{tf32}"].severity == "error"  # a precision change is never only a warning

    warn = Policy(rules={"numerics.*": Rule(rule="exact", severity="warn")})
    findings = gpu_findings({drift: {"output_sha256": _hash("c")}}, policy=warn)
    assert findings[f"numerics.{drift}"].severity == "warn"


def test_numpy_sum_drift_is_not_blamed_on_blas() -> None:
    """np.sum is numpy's own pairwise sum (unchanged by every OpenBLAS config, notes §5): not a BLAS thread count."""
    raw = {"probe": PROBE_VERSION, "generator": GENERATOR, "kernels": {
        key: {**spec.to_dict(), "input_sha256": _hash("a"), "output_sha256": _hash("b"), "repeat_equal": True}
        for key, spec in default_kernels(numpy=True, torch=False).items()}}
    moved = json.loads(json.dumps(raw))
    moved["kernels"]["numpy-cpu-sum-float32-4194304x1x1"]["output_sha256"] = _hash("c")
    want = {**CONTEXT, "packages.numpy.version": "2.4.6"}
    have = {**CONTEXT, "packages.numpy.version": "2.5.0"}
    (found,) = compare_numerics(parse_numerics(raw), parse_numerics(moved), {}, default_policy(), (want, have))
    assert found.path == "numerics.numpy-cpu-sum-float32-4194304x1x1"
    assert "BLAS" not in found.hint, found.hint
    assert "numpy" in found.hint


def test_a_cpu_kernel_that_cannot_run_says_why() -> None:
    raw = collect_numerics({"x": KernelSpec("no-such-op", "torch", "cpu", "float32", "1x1x1")})
    assert raw["kernels"]["x"]["error"] == "unknown op 'no-such-op'"
    assert parse_numerics(raw).kernels == {}


def test_randn_moving_with_rand_is_the_generator_itself() -> None:
    found = gpu_findings({RANDN: {"output_sha256": _hash("c")}, RAND: {"output_sha256": _hash("d")}},
                         context={"floats.torch.version": "2.14.0"})
    assert set(found) == {f"numerics.{RANDN}", f"numerics.{RAND}"}
    randn = found[f"numerics.{RANDN}"]
    assert randn.hint == (f"the random generator's own stream changed ({RAND} moved too): "
                          "torch changed (2.13.0 → 2.14.0)")
    assert randn.cause == "floats.torch.version"


def test_randn_alone_with_nothing_recorded_changed_is_the_normal_transform() -> None:
    found = only(gpu_findings({RANDN: {"output_sha256": _hash("c")}}), RANDN)
    assert found.hint.startswith(f"the normal transform changed, not the generator ({RAND} still matches)")
    assert "ATEN_CPU_CAPABILITY" in found.hint


def test_cpu_conv2d_drift_with_nothing_recorded_changed_points_at_onednn() -> None:
    found = only(gpu_findings({CONV2D: {"output_sha256": _hash("c")}}), CONV2D)
    assert found.hint.startswith("oneDNN picked another kernel")
    assert "DNNL_MAX_CPU_ISA" in found.hint


def test_gpu_scatter_add_that_stops_repeating_is_atomics() -> None:
    key = "torch-cuda0-scatter-add-float32-1024x64x64"
    found = only(gpu_findings({key: {"repeat_equal": False, "output_sha256": _hash("c")}},
                              context={"floats.torch.deterministic_algorithms": False}), key)
    assert found.actual.startswith("nondeterministic: ")
    assert "atomics without torch.use_deterministic_algorithms(True)" in found.hint


def test_gpu_attention_drift_alone_is_the_backend_choice() -> None:
    key = "torch-cuda0-sdpa-float16-4x64x64"
    found = only(gpu_findings({key: {"output_sha256": _hash("c")}}), key)
    assert found.actual.startswith("order drift: ")
    assert found.hint.startswith("torch picked another attention backend")


@pytest.mark.torch
@pytest.mark.parametrize("op", ["softmax", "cumsum"])
def test_fused_canaries_are_exact_here_and_the_precision_class_is_fp32(torch_mod: Any, op: str) -> None:
    from envlock.probes.numerics.kernels import FIXED_SHAPES, run_kernel

    result = run_kernel(KernelSpec(op, "torch", "cpu", "float32", FIXED_SHAPES[op]))
    assert (result["canary"], result["error_class"], result["repeat_equal"]) == ("exact", "fp32", True)


@pytest.mark.torch
def test_the_random_stream_is_the_seeded_generators(torch_mod: Any) -> None:
    from envlock.probes.numerics.inputs import sha, tensor_bytes
    from envlock.probes.numerics.kernels import RANDOM_N, RANDOM_SEED, run_kernel

    result = run_kernel(KernelSpec("randn", "torch", "cpu", "float32", f"{RANDOM_N}x1x1"))
    want = torch_mod.randn(RANDOM_N, generator=torch_mod.Generator().manual_seed(RANDOM_SEED))
    assert result["output_sha256"] == sha(tensor_bytes(want))
    torch_mod.manual_seed(0)  # the global generator plays no part
    assert run_kernel(KernelSpec("randn", "torch", "cpu", "float32", f"{RANDOM_N}x1x1")) | {"seconds": 0} == (
        result | {"seconds": 0})

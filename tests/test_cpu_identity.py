"""CPU identity: archspec's microarchitecture, generic level and vendor for every family it knows (POWER and Arm
included), the cache sizes per level from sysfs (py-cpuinfo where sysfs is absent), and what verify says when they
differ. Fed from recorded /proc/cpuinfo texts (fixtures/cpuinfo) and fake sysfs cache trees.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock
from envlock.compare import compare_locks
from envlock.facts import collect_facts, dumps_facts, load_facts
from envlock.lockfile import dumps
from envlock.model import Lock, ModelError
from envlock.probes import cpu as cpu_probe
from envlock.probes.cpu import (
    _first_cpuinfo_block,
    cache_bytes,
    collect_caches,
    collect_cpu,
    older_answer,
    parse_caches,
    parse_cpu,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CPUINFO = FIXTURES / "cpuinfo"
GRAVITON3 = FIXTURES / "hosts" / "linux-nogpu-nocuda-neoverse_v1-graviton3"
CREATED = "2026-01-01T00:00:00Z"
MIB = 1 << 20


def cpu_facts(name: str, **extra: Any) -> dict[str, Any]:
    """Raw cpu facts from a recorded /proc/cpuinfo text, its machine taken from the file name."""
    machine = name.split("-")[2]
    text = (CPUINFO / name).read_text(encoding="utf-8")
    return {"machine": machine, "cpuinfo": _first_cpuinfo_block(text), **extra}


def fake_sysfs(root: Path, caches: list[tuple[str, str, str]]) -> Path:
    """A cpu0/cache tree: one index<N> folder per (level, type, size)."""
    for i, (level, kind, size) in enumerate(caches):
        folder = root / f"index{i}"
        folder.mkdir(parents=True)
        for key, value in (("level", level), ("type", kind), ("size", size)):
            (folder / key).write_text(value + "\n", encoding="ascii")
    return root


# --- who the CPU is ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "vendor", "uarch", "generic"), [
    ("linux-rhel8-ppc64le-power9le", "IBM", "power9le", "ppc64le"),
    ("linux-unknown-ppc64le-power10le", "IBM", "power10le", "ppc64le"),
    ("linux-amazon-aarch64-neoverse_v1", "ARM", "neoverse_v1", "armv8.4a"),
    ("linux-asahi-aarch64-m1", "Apple", "m1", "armv8.4a"),
    ("linux-rocky8-aarch64-a64fx", "Fujitsu", "a64fx", "armv8.2a"),
    ("linux-rocky8.5-x86_64-zen4", "AuthenticAMD", "zen4", "x86_64_v4"),
])
def test_recorded_cpuinfo_gives_archspecs_target_generic_level_and_vendor(
    name: str, vendor: str, uarch: str, generic: str
) -> None:
    cpu = parse_cpu(cpu_facts(name))
    assert (cpu.vendor, cpu.microarchitecture, cpu.generic) == (vendor, uarch, generic)
    assert name.endswith(cpu.microarchitecture)  # the file name states the answer


def test_the_generic_level_is_archspecs_own_for_the_target() -> None:
    from archspec.cpu import TARGETS

    for name in sorted(os.listdir(CPUINFO)):
        if name.endswith(".md"):
            continue
        cpu = parse_cpu(cpu_facts(name))
        assert cpu.generic == TARGETS[cpu.microarchitecture].generic.name, name


def test_power_model_and_a_power_without_a_generation() -> None:
    cpu = parse_cpu(cpu_facts("linux-rhel8-ppc64le-power9le"))
    assert cpu.model == "POWER9, altivec supported"
    # Emulated (QEMU shows no POWER generation): the bare family, no vendor to name.
    bare = parse_cpu({"machine": "ppc64le", "cpuinfo": {"cpu": "emulated"}})
    assert (bare.vendor, bare.microarchitecture, bare.generic) == ("unknown", "ppc64le", "ppc64le")


def test_big_endian_power_is_its_own_family() -> None:
    cpu = parse_cpu({"machine": "ppc64", "cpuinfo": {"cpu": "POWER9 (architected), altivec supported"}})
    assert (cpu.vendor, cpu.microarchitecture, cpu.generic) == ("IBM", "power9", "ppc64")


def test_an_unknown_arm_implementer_keeps_its_code() -> None:
    raw = cpu_facts("linux-amazon-aarch64-neoverse_v1")
    raw["cpuinfo"]["CPU implementer"] = "0x99"
    cpu = parse_cpu(raw)
    assert cpu.vendor == "0x99"
    assert cpu.microarchitecture == cpu.generic == "aarch64"


# --- cache sizes -------------------------------------------------------------------------------------------


def test_sysfs_cache_tree_gives_each_level_in_bytes(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "cache", [("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                           ("2", "Unified", "2048K"), ("3", "Unified", "107520K"),
                                           ("4", "Unified", "131072K")])
    raw = collect_caches(str(root))
    assert raw[0] == {"level": "1", "type": "Data", "size": "48K"}
    cpu = parse_cpu({**cpu_facts("linux-rocky8.5-x86_64-zen4"), "caches": raw})
    assert (cpu.cache_l1d, cpu.cache_l1i, cpu.cache_l2, cpu.cache_l3) == (48 << 10, 32 << 10, 2 * MIB, 105 * MIB)


def test_a_cache_folder_missing_a_file_is_left_out_and_no_tree_gives_no_sizes(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "cache", [("1", "Data", "64K"), ("2", "Unified", "1024K")])
    (root / "index1" / "size").unlink()
    assert collect_caches(str(root)) == [{"level": "1", "type": "Data", "size": "64K"}]
    assert collect_caches(str(tmp_path / "absent")) == []


def test_collect_cpu_reads_the_given_tree_and_skips_py_cpuinfo_when_sysfs_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden() -> dict[str, Any]:
        raise AssertionError("py-cpuinfo must not run when sysfs has the caches")

    monkeypatch.setattr(cpu_probe, "collect_cpuinfo_caches", forbidden)
    root = fake_sysfs(tmp_path / "cache", [("2", "Unified", "1024K")])
    raw = collect_cpu(cache_root=str(root))
    assert raw["caches"] == [{"level": "2", "type": "Unified", "size": "1024K"}]
    assert "cpuinfo_caches" not in raw


def test_off_linux_py_cpuinfo_is_the_fallback_but_not_for_fast(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake() -> dict[str, Any]:
        calls.append(1)
        return {"l2_cache_size": 4194304, "l3_cache_size": "16 MiB", "l1_data_cache_size": "128 KiB"}

    monkeypatch.setattr(cpu_probe, "collect_cpuinfo_caches", fake)
    monkeypatch.setattr(cpu_probe, "on_linux", lambda: False)
    raw = collect_cpu(cache_root=str(tmp_path / "absent"))
    assert "caches" not in raw
    cpu = parse_cpu(raw)
    assert (cpu.cache_l1d, cpu.cache_l1i, cpu.cache_l2, cpu.cache_l3) == (128 << 10, None, 4 * MIB, 16 * MIB)
    assert "cpuinfo_caches" not in collect_cpu(fallback=False, cache_root=str(tmp_path / "absent"))
    assert calls == [1]
    # A Linux without the sysfs tree records no sizes: py-cpuinfo would only sum what lscpu reads from sysfs.
    monkeypatch.setattr(cpu_probe, "on_linux", lambda: True)
    assert "cpuinfo_caches" not in collect_cpu(cache_root=str(tmp_path / "absent"))
    assert calls == [1]


def test_verify_fast_facts_never_run_py_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> dict[str, Any]:
        raise AssertionError("py-cpuinfo ran on the --fast path")

    monkeypatch.setattr(cpu_probe, "collect_cpuinfo_caches", forbidden)
    monkeypatch.setattr(cpu_probe, "SYSFS_CACHE", "/nonexistent")  # a machine without sysfs: macOS
    monkeypatch.setattr(cpu_probe, "on_linux", lambda: False)
    facts = collect_facts(fast=True)
    assert "caches" not in facts["cpu"] and "cpuinfo_caches" not in facts["cpu"]


@pytest.mark.skipif(not os.path.isdir(cpu_probe.SYSFS_CACHE), reason="this machine has no sysfs cache tree")
def test_this_machine_has_its_cache_sizes_on_the_fast_path() -> None:
    cpu = parse_cpu(collect_facts(fast=True)["cpu"])
    assert cpu.cache_l1d and cpu.cache_l2 and cpu.cache_l1d < cpu.cache_l2


def test_real_py_cpuinfo_when_installed() -> None:
    try:
        import cpuinfo  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        if os.environ.get("ENVLOCK_REQUIRE_CPUINFO") == "1":
            pytest.fail("ENVLOCK_REQUIRE_CPUINFO=1 but py-cpuinfo is not installed")
        pytest.skip("py-cpuinfo is not installed (pip install py-cpuinfo)")
    sizes = cpu_probe.collect_cpuinfo_caches()
    parsed = parse_caches({"cpuinfo_caches": sizes})
    assert set(parsed) <= {"cache_l1d", "cache_l1i", "cache_l2", "cache_l3"}
    assert parsed, f"py-cpuinfo gave no cache size: {sizes}"
    assert all(isinstance(v, int) and v > 0 for v in parsed.values())


@pytest.mark.parametrize(("text", "size"), [("48K", 48 << 10), ("2048K", 2 * MIB), ("1 MiB", MIB),
                                            ("256 KB", 256 << 10), ("32768", 32768), ("3M", 3 * MIB)])
def test_cache_size_texts(text: str, size: int) -> None:
    assert cache_bytes(text) == size


@pytest.mark.parametrize(("raw", "where"), [
    ({"caches": [{"level": "2", "type": "Unified", "size": "lots"}]}, "cpu.caches[0].size"),
    ({"caches": [{"level": 2, "type": "Unified", "size": "1K"}]}, "cpu.caches[0].level"),
    ({"caches": "2:1024K"}, "cpu.caches"),
    ({"cpuinfo_caches": {"l2_cache_size": "big"}}, "cpu.cpuinfo_caches.l2_cache_size"),
    ({"cpuinfo_caches": {"l2_cache_size": -1}}, "cpu.cpuinfo_caches.l2_cache_size"),
])
def test_malformed_cache_facts_name_the_place(raw: dict[str, Any], where: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_cpu({"machine": "x86_64", **raw})
    assert caught.value.where == where


# --- verify ------------------------------------------------------------------------------------------------


def graviton_facts(l2: str = "1024K") -> dict[str, Any]:
    facts = copy.deepcopy(load_facts(GRAVITON3 / "facts.json"))
    for entry in facts["cpu"]["caches"]:
        if entry["level"] == "2":
            entry["size"] = l2
    return facts


def run_verify(cli: Any, tmp_path: Path, facts: dict[str, Any], lock: Path) -> tuple[int, dict[str, Any]]:
    now = tmp_path / "now.json"
    now.write_text(dumps_facts(facts), encoding="utf-8")
    result = cli("verify", "--json", "--facts", str(now), str(lock))
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def write(lock: Lock, path: Path) -> Path:
    path.write_text(dumps(lock, name=path.name), encoding="utf-8")
    return path


def test_another_l2_size_is_a_warning_that_names_openblas_blocking(cli: Any, tmp_path: Path) -> None:
    lock = write(build_lock(graviton_facts("2048K"), created=CREATED), tmp_path / "envlock.lock")
    code, report = run_verify(cli, tmp_path, graviton_facts("1024K"), lock)
    assert code == 0  # a warning: the numerics probe is what says whether the bits moved
    assert [f["path"] for f in report["findings"]] == ["cpu.cache_l2"]
    (found,) = report["findings"]
    assert (found["severity"], found["expected"], found["actual"]) == ("warn", 2 * MIB, MIB)
    assert "L2 cache size (1 MiB here, 2 MiB at capture)" in found["hint"]
    assert "OpenBLAS picks its GEMM blocking from the L2 size" in found["hint"]
    assert "OPENBLAS_L2_SIZE" in found["hint"]


def test_openblas_l2_size_set_alike_says_openblas_is_pinned() -> None:
    want, have = graviton_facts("2048K"), graviton_facts("1024K")
    for facts in (want, have):
        facts["env"]["OPENBLAS_L2_SIZE"] = "2097152"
    comparison = compare_locks(build_lock(want, created=CREATED), build_lock(have, created=CREATED))
    (found,) = [f for f in comparison.findings if f.path == "cpu.cache_l2"]
    assert "OPENBLAS_L2_SIZE=2097152 pins the size it blocks for" in found.hint


def test_a_lock_without_cache_sizes_still_verifies_clean(cli: Any, tmp_path: Path) -> None:
    old = graviton_facts()
    del old["cpu"]["caches"]
    lock = write(build_lock(old, created=CREATED), tmp_path / "old.lock")
    assert "cache_l2" not in lock.read_text(encoding="utf-8")
    code, report = run_verify(cli, tmp_path, graviton_facts(), lock)  # this machine now records its caches
    assert (code, report["findings"]) == (0, [])


def test_a_machine_whose_caches_cannot_be_read_is_not_a_difference() -> None:
    now = graviton_facts()
    del now["cpu"]["caches"]
    comparison = compare_locks(build_lock(graviton_facts(), created=CREATED), build_lock(now, created=CREATED))
    assert comparison.findings == ()


def _older(lock: Lock, **cpu: Any) -> Lock:
    """The lock as envlock 0.1 wrote it for the same CPU (coarser cpu fields, no cache sizes)."""
    ((name, target),) = lock.targets.items()
    fields = {"cache_l1d": None, "cache_l1i": None, "cache_l2": None, "cache_l3": None, **cpu}
    return dataclasses.replace(lock, targets={name: dataclasses.replace(
        target, cpu=dataclasses.replace(target.cpu, **fields))})


def test_an_arm_lock_of_envlock_0_1_gives_no_false_alarm() -> None:
    now = build_lock(graviton_facts(), created=CREATED)
    old = _older(now, vendor="0x41", generic="aarch64")
    assert compare_locks(old, now).findings == ()


def test_a_power_lock_of_envlock_0_1_gives_no_false_alarm() -> None:
    facts = graviton_facts()
    del facts["cpu"]["caches"]
    facts["cpu"] = {**cpu_facts("linux-rhel8-ppc64le-power9le"), "logical_cores": 64, "usable_cores": 64}
    facts["platform"]["machine"] = "ppc64le"
    now = build_lock(facts, created=CREATED)
    old = _older(now, vendor="unknown", microarchitecture="ppc64le", generic="ppc64le")
    assert compare_locks(old, now).findings == ()


def test_a_real_change_of_vendor_or_generic_level_is_still_found() -> None:
    now = build_lock(graviton_facts(), created=CREATED)
    findings = compare_locks(_older(now, vendor="0x61", generic="armv8.2a"), now).findings
    assert {(f.path, f.expected, f.actual) for f in findings} == {
        ("cpu.vendor", "0x61", "ARM"), ("cpu.generic", "armv8.2a", "armv8.4a")}
    assert not older_answer("microarchitecture", "aarch64", "neoverse_v1")  # Arm targets were always specific
    assert not older_answer("generic", "x86_64", "x86_64_v3")  # x86 levels were always recorded


def test_diff_between_two_locks_names_the_l2_and_openblas(cli: Any, tmp_path: Path) -> None:
    a = write(build_lock(graviton_facts("2048K"), created=CREATED), tmp_path / "a.lock")
    b = write(build_lock(graviton_facts("1024K"), created=CREATED), tmp_path / "b.lock")
    result = cli("diff", "--json", str(a), str(b))
    (found,) = [f for f in json.loads(result.stdout)["findings"] if f["path"] == "cpu.cache_l2"]
    assert "the L2 caches differ (2 MiB in A, 1 MiB in B)" in found["hint"]


def test_ignoring_a_cache_field_is_a_valid_pattern_even_for_a_lock_without_it(cli: Any, tmp_path: Path) -> None:
    old = graviton_facts()
    del old["cpu"]["caches"]
    lock = write(build_lock(old, created=CREATED), tmp_path / "old.lock")
    now = tmp_path / "now.json"
    now.write_text(dumps_facts(old), encoding="utf-8")
    result = cli("verify", "--facts", str(now), "--ignore", "cpu.cache_l2", str(lock))
    assert result.exit_code == 0, result.output


def test_archspec_import_stays_small() -> None:
    """`verify --fast` parses the CPU, so it imports archspec (measured about 13 ms on the 2-vCPU dev machine)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import archspec.cpu"], capture_output=True,
                          text=True, timeout=60, env=env, check=True)
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "archspec.cpu" in modules
    assert not modules & {"cpuinfo", "numpy", "torch"}


def test_a_numpy_matmul_that_moved_with_the_l2_size_names_it() -> None:
    from envlock.compare.numerics import compare_numerics
    from envlock.policy import default_policy
    from envlock.probes.numerics import GENERATOR, PROBE_VERSION, default_kernels, parse_numerics

    def hashed(c: str) -> str:
        return "sha256:" + c * 64

    raw = {"probe": PROBE_VERSION, "generator": GENERATOR, "kernels": {
        key: {**spec.to_dict(), "input_sha256": hashed("a"), "output_sha256": hashed("b"), "repeat_equal": True}
        for key, spec in default_kernels(numpy=True, torch=False).items()}}
    moved = json.loads(json.dumps(raw))
    key = "numpy-cpu-mm-float32-256x256x256-t1"
    moved["kernels"][key]["output_sha256"] = hashed("c")
    base = {"blas.libraries.numpy-openblas.internal_api": "openblas", "blas.libraries.numpy-openblas.version": "0.3.31",
            "blas.libraries.numpy-openblas.architecture": "Haswell", "cpu.microarchitecture": "zen4"}
    want, have = {**base, "cpu.cache_l2": 2 * MIB}, {**base, "cpu.cache_l2": MIB}
    found = {f.path: f for f in compare_numerics(parse_numerics(raw), parse_numerics(moved), {}, default_policy(),
                                                 (want, have))}
    assert found[f"numerics.{key}"].cause == "cpu.cache_l2"
    assert "the L2 cache size OpenBLAS blocks GEMMs for" in found[f"numerics.{key}"].hint
    # A lock from before cache sizes were recorded blames nothing it cannot see.
    old = {f.path: f for f in compare_numerics(parse_numerics(raw), parse_numerics(moved), {}, default_policy(),
                                               (base, have))}
    assert old[f"numerics.{key}"].cause != "cpu.cache_l2"

"""GPU and CUDA rules of `envlock verify`, checked with the recorded GPU hosts in fixtures/hosts.

Each test takes a host's raw facts, changes the one thing the rule is about, and runs
`envlock verify --facts FILE LOCK` (or `envlock.verifying.verify`) against the host's lock: the exit code, the
finding's dotted path, its severity and a hint that names the cause.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock
from envlock.facts import dumps_facts, load_facts
from envlock.lockfile import dumps, load
from envlock.verifying import verify

HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
NVIDIA_SMI = HOSTS.parent / "nvidia-smi"
H100 = HOSTS / "linux-nvidia550-cuda12.4-sapphirerapids-h100x8"
A100_MIG = HOSTS / "linux-nvidia535-cuda12.1-cascadelake-a100x2mig"
RTX4090 = HOSTS / "linux-nvidia560-cuda12.4-zen4-rtx4090"
L4X2 = HOSTS / "linux-nvidia550-cuda12.1-x86_64_v3-l4x2"
CPU_ONLY = HOSTS / "linux-nogpu-nocuda-x86_64_v4-devbox"
GPU_HOSTS = (H100, A100_MIG, RTX4090, L4X2)
CREATED = "2026-01-01T00:00:00Z"
NAME = re.compile(r"(?P<os>[a-z]+)-(?P<gpu>nogpu|nvidia[0-9]+)-(?P<cuda>nocuda|cuda[0-9]+\.[0-9]+)"
                  r"-(?P<uarch>[a-z0-9_]+)-(?P<label>[a-z0-9][a-z0-9_.-]*)")

PROC_DRIVER_TEXT = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
    "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n"
)


# --- helpers -----------------------------------------------------------------------------------------


def facts_of(folder: Path) -> dict[str, Any]:
    """A fresh copy of a recorded host's raw facts."""
    return copy.deepcopy(load_facts(folder / "facts.json"))


def write_facts(path: Path, facts: dict[str, Any]) -> Path:
    path.write_text(dumps_facts(facts), encoding="utf-8")
    return path


def lock_copy(folder: Path, tmp_path: Path) -> Path:
    """The host's expected.lock, copied out of the repository (no pyproject.toml policy above it)."""
    out = tmp_path / f"{folder.name}.lock"
    out.write_bytes((folder / "expected.lock").read_bytes())
    return out


def lock_from(facts: dict[str, Any], path: Path) -> Path:
    """A lock made from raw facts, as `envlock capture --facts` would write it."""
    path.write_text(dumps(build_lock(facts, created=CREATED), name=path.name), encoding="utf-8")
    return path


def run_verify(cli: Any, tmp_path: Path, facts: dict[str, Any], lock: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """`envlock verify --json --facts FILE LOCK`: the exit code and the parsed report."""
    path = write_facts(tmp_path / "now.json", facts)
    result = cli("verify", "--json", "--facts", str(path), str(lock), *extra)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def finding(report: dict[str, Any], path: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [f for f in report["findings"] if f["path"] == path]
    assert found, f"no finding at {path}: {[f['path'] for f in report['findings']]}"
    return found[0]


def paths(report: dict[str, Any]) -> set[str]:
    return {f["path"] for f in report["findings"]}


def set_driver(facts: dict[str, Any], version: str, cuda: str) -> None:
    gpu = facts["gpu"]
    gpu["driver"] = version
    gpu["cuda_driver"] = cuda
    gpu["proc_driver_version"] = re.sub(r"Module  \S+", f"Module  {version}", gpu["proc_driver_version"])


def a100_without_mig() -> dict[str, Any]:
    """The A100 host with MIG turned off on GPU 0: the whole GPU, 108 SMs, as the CUDA driver reports it."""
    facts = facts_of(A100_MIG)
    gpu0 = facts["gpu"]["devices"][0]
    gpu0["mig_mode"] = "Disabled"
    del gpu0["mig_devices"]
    facts["gpu"]["cuda_devices"].insert(0, {"uuid": gpu0["uuid"], "sm_count": 108})
    return facts


# --- the recorded hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", GPU_HOSTS, ids=[f.name for f in GPU_HOSTS])
def test_each_gpu_host_verifies_clean_against_its_own_lock(cli: Any, tmp_path: Path, folder: Path) -> None:
    code, report = run_verify(cli, tmp_path, facts_of(folder), lock_copy(folder, tmp_path))
    assert (code, report["findings"]) == (0, [])


@pytest.mark.parametrize("folder", GPU_HOSTS, ids=[f.name for f in GPU_HOSTS])
def test_gpu_host_names_state_driver_and_cuda(folder: Path) -> None:
    lock, _ = load(folder / "expected.lock")
    match = NAME.fullmatch(folder.name)
    assert match
    (target,) = lock.targets.values()
    assert target.gpu.count >= 1 and target.gpu.source == "nvml"
    assert match.group("gpu") == "nvidia" + target.gpu.driver.split(".")[0]
    assert lock.cuda is not None and match.group("cuda") == f"cuda{lock.cuda.torch_cuda}"
    assert match.group("uarch") == target.cpu.microarchitecture


def test_the_recorded_gpus_are_what_the_readme_says() -> None:
    h100 = next(iter(load(H100 / "expected.lock")[0].targets.values())).gpu
    assert h100.count == 8 and {(d.name, d.compute_capability, d.sm_count, d.mig) for d in h100.devices} == {
        ("NVIDIA H100 80GB HBM3", "9.0", 132, False)}
    a100 = next(iter(load(A100_MIG / "expected.lock")[0].targets.values())).gpu
    gpu0, gpu1 = a100.devices
    assert gpu0.mig and gpu0.sm_count is None  # the CUDA driver sees only MIG slices of GPU 0
    assert [(m.profile, m.sm_count) for m in gpu0.mig_instances] == [("3g.40gb", 42), ("1g.10gb", 14)]
    assert (gpu1.mig, gpu1.sm_count) == (False, 108)
    rtx = next(iter(load(RTX4090 / "expected.lock")[0].targets.values())).gpu.devices[0]
    assert (rtx.compute_capability, rtx.sm_count, rtx.memory_mib, rtx.ecc, rtx.mig) == ("8.9", 128, 24564, None, False)
    l4 = next(iter(load(L4X2 / "expected.lock")[0].targets.values())).gpu
    assert l4.count == 2 and {d.sm_count for d in l4.devices} == {58}
    lock, _ = load(H100 / "expected.lock")
    assert lock.cuda is not None
    cuda = lock.cuda
    assert (cuda.runtime, cuda.cudnn, cuda.cublas, cuda.nccl) == ("12.4", "9.1.0", "12.4.2", "2.20.5")


# --- driver -----------------------------------------------------------------------------------------------


def test_an_older_driver_than_the_locked_one_is_an_error(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    set_driver(facts, "535.183.01", "12.2")
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 1
    f = finding(report, "gpu.driver")
    assert (f["expected"], f["actual"], f["severity"]) == ("550.54.15", "535.183.01", "error")
    assert "older than the locked driver 550.54.15" in f["hint"]
    assert finding(report, "gpu.cuda_driver")["severity"] == "error"
    assert "gpu.driver_for_cuda" not in paths(report)  # 535 is new enough for CUDA 12


def test_a_driver_below_the_minimum_for_the_locked_cuda_major_names_the_needed_driver(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    set_driver(facts, "470.256.02", "11.4")
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 1
    f = finding(report, "gpu.driver_for_cuda")
    assert f["severity"] == "error"
    assert f["expected"] == ">= 525.60.13 (CUDA 12)" and f["actual"] == "470.256.02"
    assert "525.60.13" in f["hint"] and "upgrade the driver" in f["hint"]
    assert finding(report, "gpu.driver")["severity"] == "error"


def test_a_newer_driver_passes(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    set_driver(facts, "560.35.03", "12.6")
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert (code, report["findings"]) == (0, [])


# --- CUDA libraries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("library", "number", "path", "expected", "actual"), [
    ("cudart", 12010, "cuda.runtime", "12.4", "12.1"),
    ("cudnn", 90300, "cuda.cudnn", "9.1.0", "9.3.0"),
    ("nccl", 22105, "cuda.nccl", "2.20.5", "2.21.5"),
    ("cublaslt", 120405, "cuda.cublas", "12.4.2", "12.4.5"),
])
def test_another_cuda_library_is_an_error(
    cli: Any, tmp_path: Path, library: str, number: int, path: str, expected: str, actual: str
) -> None:
    facts = facts_of(H100)
    facts["cuda"]["library_versions"][library] = number
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 1
    assert paths(report) == {path}
    f = finding(report, path)
    assert (f["expected"], f["actual"], f["severity"]) == (expected, actual, "error")
    assert f"{path.split('.')[1]} {actual}" in f["hint"] and expected in f["hint"]


def test_a_cuda_library_no_longer_loaded_is_an_error(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    del facts["cuda"]["library_versions"]["nccl"]
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 1
    f = finding(report, "cuda.nccl")
    assert (f["expected"], f["actual"], f["severity"]) == ("2.20.5", None, "error")
    assert "not loaded" in f["hint"]


def test_torch_without_kernels_for_the_gpu(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    facts["cuda"]["arch_list"] = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"]
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 1
    assert {f"cuda.kernels.{i}" for i in range(8)} <= paths(report)
    f = finding(report, "cuda.kernels.0")
    assert f["severity"] == "error" and f["expected"] == "kernels for sm_90"
    assert "no kernels" in f["hint"] and "no kernel image" in f["hint"]
    assert finding(report, "cuda.arch_list")["severity"] == "warn"


def test_ptx_for_an_older_architecture_is_enough_to_run(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    facts["cuda"]["arch_list"] = ["sm_80", "sm_86", "compute_86"]
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 0
    assert paths(report) == {"cuda.arch_list"}  # JIT from PTX runs; only the build list differs (warn)


# --- architecture, SMs, MIG ------------------------------------------------------------------------------


def test_another_compute_capability_is_an_error(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    for device in facts["gpu"]["devices"]:
        device["compute_capability"] = "8.0"
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 1
    f = finding(report, "gpu.devices.0.compute_capability")
    assert (f["expected"], f["actual"], f["severity"]) == ("9.0", "8.0", "error")
    assert "architecture" in f["hint"] and "9.0 → 8.0" in f["hint"]


def test_another_sku_with_fewer_sms_is_an_error(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    for device, cuda in zip(facts["gpu"]["devices"], facts["gpu"]["cuda_devices"], strict=True):
        device["name"] = "NVIDIA H100 PCIe"
        cuda["sm_count"] = 114
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 1
    f = finding(report, "gpu.devices.0.sm_count")
    assert (f["expected"], f["actual"], f["severity"]) == (132, 114, "error")
    assert "SKU" in f["hint"] and "cuBLAS" in f["hint"]
    assert finding(report, "gpu.devices.0.name")["severity"] == "warn"


def test_a_mig_slice_is_not_the_full_gpu(cli: Any, tmp_path: Path) -> None:
    lock = lock_from(a100_without_mig(), tmp_path / "a100.lock")
    code, report = run_verify(cli, tmp_path, facts_of(A100_MIG), lock)
    assert code == 1
    sm = finding(report, "gpu.devices.0.sm_count")
    assert (sm["expected"], sm["severity"]) == (108, "error")
    assert "MIG" in sm["hint"]
    mig = finding(report, "gpu.devices.0.mig")
    assert (mig["expected"], mig["actual"], mig["severity"]) == (False, True, "error")
    assert "MIG" in mig["hint"]
    slice_ = finding(report, "gpu.devices.0.mig_instances.gi2-ci0")
    assert (slice_["expected"], slice_["actual"], slice_["severity"]) == (None, "present", "error")
    assert not any(p.startswith("gpu.devices.1.") for p in paths(report))  # GPU 1 is the same whole A100


def test_a_mig_slice_seen_as_the_gpu_names_mig(tmp_path: Path) -> None:
    """CUDA_VISIBLE_DEVICES=MIG-... in a job: the SM count is the slice's, and the hint says so."""
    lock = lock_from(a100_without_mig(), tmp_path / "a100.lock")
    facts = facts_of(A100_MIG)
    facts["gpu"]["cuda_devices"].insert(0, {"uuid": facts["gpu"]["devices"][0]["uuid"], "sm_count": 42})
    report = verify(lock, facts=facts)
    assert not report.ok
    (sm,) = [f for f in report.findings if f.path == "gpu.devices.0.sm_count"]
    assert (sm.expected, sm.actual, sm.severity) == ("108", "42", "error")
    assert "a MIG slice is not the full GPU" in sm.hint


def test_a_whole_gpu_where_the_lock_has_mig_is_an_error(tmp_path: Path) -> None:
    report = verify(lock_copy(A100_MIG, tmp_path), facts=a100_without_mig())
    assert not report.ok
    by_path = {f.path: f for f in report.findings}
    assert by_path["gpu.devices.0.mig"].severity == "error" and "MIG mode was on" in by_path["gpu.devices.0.mig"].hint
    assert by_path["gpu.devices.0.mig_instances.gi9-ci0"].actual == "(absent)"
    assert "MIG layout changed" in by_path["gpu.devices.0.mig_instances.gi9-ci0"].hint


def test_a_changed_mig_layout_is_named_instance_by_instance(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(A100_MIG)
    instances = facts["gpu"]["devices"][0]["mig_devices"]
    # GI 2 re-created as 4g.40gb (56 SMs); GI 9 (1g.10gb) replaced by GI 5, a 2g.20gb slice.
    instances[0].update(profile="4g.40gb", sm_count=56)
    instances[1] = {"gpu_instance_id": 5, "compute_instance_id": 0, "sm_count": 28, "memory_mib": 19968,
                    "profile": "2g.20gb", "uuid": "MIG-3b6e9c1f-7a2d-5e48-b0c3-91d4f2a6e805"}
    code, report = run_verify(cli, tmp_path, facts, lock_copy(A100_MIG, tmp_path))
    assert code == 1
    sm = finding(report, "gpu.devices.0.mig_instances.gi2-ci0.sm_count")
    assert (sm["expected"], sm["actual"], sm["severity"]) == (42, 56, "error")
    assert "MIG layout changed" in sm["hint"]
    assert finding(report, "gpu.devices.0.mig_instances.gi2-ci0.profile")["actual"] == "4g.40gb"
    gone = finding(report, "gpu.devices.0.mig_instances.gi9-ci0")
    assert (gone["expected"], gone["actual"], gone["severity"]) == ("present", None, "error")
    new = finding(report, "gpu.devices.0.mig_instances.gi5-ci0")
    assert (new["expected"], new["actual"], new["severity"]) == (None, "present", "error")
    assert not any("uuid" in p for p in paths(report))  # instance UUIDs are for the audit trail only


# --- GPU count, name, memory -----------------------------------------------------------------------------


def test_fewer_gpus_is_an_error(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(L4X2)
    facts["gpu"]["devices"].pop()
    code, report = run_verify(cli, tmp_path, facts, lock_copy(L4X2, tmp_path))
    assert code == 1
    f = finding(report, "gpu.count")
    assert (f["expected"], f["actual"], f["severity"]) == (2, 1, "error")
    assert "at least 2 GPU(s)" in f["hint"] and "CUDA_VISIBLE_DEVICES" in f["hint"]


def test_more_gpus_passes(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(L4X2)
    extra = dict(facts["gpu"]["devices"][1], index=2, uuid="GPU-2e7a4c19-85d6-3f0b-a1c2-4d5e6f7a8b03")
    facts["gpu"]["devices"].append(extra)
    facts["gpu"]["cuda_devices"].append({"uuid": extra["uuid"], "sm_count": 58})
    code, report = run_verify(cli, tmp_path, facts, lock_copy(L4X2, tmp_path))
    assert (code, report["findings"]) == (0, [])


@pytest.mark.parametrize("visible", ["0", "GPU-2e7a4c19-85d6-3f0b-a1c2-4d5e6f7a8b02", "1,7"])
def test_cuda_visible_devices_narrows_the_count(cli: Any, tmp_path: Path, visible: str) -> None:
    facts = facts_of(L4X2)
    facts["gpu"]["cuda_visible_devices"] = visible
    assert list(build_lock(facts, created=CREATED).targets) == ["x86_64_v3-l4x1"]
    code, report = run_verify(cli, tmp_path, facts, lock_copy(L4X2, tmp_path))
    assert code == 1
    f = finding(report, "gpu.count")
    assert (f["expected"], f["actual"]) == (2, 1) and "CUDA_VISIBLE_DEVICES" in f["hint"]


def test_another_name_with_the_same_architecture_and_sms_only_warns(cli: Any, tmp_path: Path) -> None:
    lock = lock_from(a100_without_mig(), tmp_path / "a100.lock")
    facts = a100_without_mig()
    for device in facts["gpu"]["devices"]:
        device["name"] = "NVIDIA A100 80GB PCIe"  # 108 SMs, compute capability 8.0, like the SXM4 part
    code, report = run_verify(cli, tmp_path, facts, lock)
    assert code == 0
    assert paths(report) == {"gpu.devices.0.name", "gpu.devices.1.name"}
    f = finding(report, "gpu.devices.0.name")
    assert f["severity"] == "warn" and "another GPU model" in f["hint"]
    assert "NVIDIA A100-SXM4-80GB" in f["hint"] and "NVIDIA A100 80GB PCIe" in f["hint"]


def test_other_memory_is_ignored(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    for device in facts["gpu"]["devices"]:
        device["memory_mib"] = 81920
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert (code, report["findings"]) == (0, [])


def test_a_gpu_lock_on_a_cpu_only_node_says_none_is_visible(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    facts["gpu"] = {}
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 1
    f = finding(report, "gpu.count")
    assert (f["expected"], f["actual"], f["severity"]) == (8, 0, "error")
    assert "none is visible" in f["hint"]


def test_a_gpu_lock_on_a_cpu_only_node_does_not_blame_an_old_driver(cli: Any, tmp_path: Path) -> None:
    """No driver at all is not 'an older driver': the driver findings must say it is missing, not tell the user
    to upgrade it or that it 'supports CUDA up to absent'."""
    facts = facts_of(H100)
    facts["gpu"] = {}
    _, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    for path in ("gpu.driver", "gpu.cuda_driver"):
        f = finding(report, path)
        assert f["severity"] == "error" and f["actual"] is None
        assert "older than" not in f["hint"] and "up to absent" not in f["hint"], f


def test_a_cpu_lock_passes_on_a_gpu_node(tmp_path: Path) -> None:
    """A lock made where no driver was loaded requires no driver: `min` against nothing is met by any driver."""
    lock = lock_from(facts_of(H100) | {"gpu": {}}, tmp_path / "cpu.lock")
    report = verify(lock, facts=facts_of(H100))
    assert [(f.path, f.expected, f.actual) for f in report.findings if f.path.startswith(("gpu.", "cuda."))] == []
    assert report.ok


# --- NVML broken, live ------------------------------------------------------------------------------------


@pytest.fixture
def nvml_broken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A node whose kernel module and NVML library disagree: /proc names a driver, NVML will not start."""
    proc = tmp_path / "proc-driver-version"
    proc.write_text(PROC_DRIVER_TEXT, encoding="utf-8")
    # collect_gpu imports collect_nvml from envlock.probes.nvml when it runs: patch it there.
    monkeypatch.setattr("envlock.probes.nvml.collect_nvml",
                        lambda: {"source": "nvml", "error": "Driver/library version mismatch"})
    monkeypatch.setattr("envlock.probes.nvml.collect_nvidia_smi",
                        lambda timeout=20.0: {"source": "nvidia-smi", "error": "nvidia-smi exited 18"})
    monkeypatch.setattr("envlock.probes.gpu.PROC_DRIVER", str(proc))


@pytest.mark.usefixtures("nvml_broken")
def test_broken_nvml_with_a_gpu_lock_exits_3(cli: Any, tmp_path: Path) -> None:
    result = cli("verify", str(lock_copy(H100, tmp_path)))
    assert result.exit_code == 3, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("envlock: error: ") and "Driver/library version mismatch" in lines[0]
    assert "needs a GPU" in lines[0]
    assert result.stdout == ""


@pytest.mark.usefixtures("nvml_broken")
def test_broken_nvml_with_a_cpu_lock_is_not_an_environment_error(cli: Any, tmp_path: Path) -> None:
    result = cli("verify", str(lock_copy(CPU_ONLY, tmp_path)))
    assert result.exit_code in (0, 1), result.output
    assert "cannot be examined" not in result.stderr


def test_no_driver_at_all_is_a_cpu_node_not_a_broken_one(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("envlock.probes.nvml.collect_nvml",
                        lambda: {"source": "nvml", "error": "NVML Shared Library Not Found"})
    monkeypatch.setattr("envlock.probes.gpu.PROC_DRIVER", str(tmp_path / "absent"))
    result = cli("verify", "--json", str(lock_copy(H100, tmp_path)))
    assert result.exit_code == 1, result.output
    f = finding(json.loads(result.stdout), "gpu.count")
    assert f["actual"] == 0 and "none is visible" in f["hint"]


def test_recorded_facts_with_an_nvml_error_are_data_not_exit_3(cli: Any, tmp_path: Path) -> None:
    facts = facts_of(H100)
    facts["gpu"] = {"proc_driver_version": PROC_DRIVER_TEXT, "nvml_error": "Driver/library version mismatch"}
    code, report = run_verify(cli, tmp_path, facts, lock_copy(H100, tmp_path))
    assert code == 1
    f = finding(report, "gpu.count")
    assert f["actual"] == 0 and "none is visible" in f["hint"]


# --- several targets ----------------------------------------------------------------------------------------


def _pool_facts(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A (8x H100), B (the same software on 2x A100, MIG off), C (the same software on an RTX 4090)."""
    a = facts_of(H100)
    b = copy.deepcopy(a)
    b["gpu"] = a100_without_mig()["gpu"]
    c = copy.deepcopy(a)
    c["gpu"] = facts_of(RTX4090)["gpu"]
    return (write_facts(tmp_path / "a.json", a), write_facts(tmp_path / "b.json", b),
            write_facts(tmp_path / "c.json", c))


A_NAME = "sapphirerapids-h100-80gb-hbm3x8"
B_NAME = "sapphirerapids-a100-sxm4-80gbx2"


@pytest.fixture
def pool_lock(cli: Any, tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    a, b, c = _pool_facts(tmp_path)
    lock = tmp_path / "pool.lock"
    assert cli("capture", "--facts", str(a), "-o", str(lock)).exit_code == 0
    result = cli("capture", "--add-target", "--facts", str(b), "-o", str(lock))
    assert result.exit_code == 0, result.output
    assert f"added target {B_NAME}" in result.stdout
    return lock, a, b, c


def test_add_target_gives_a_lock_with_two_targets(pool_lock: tuple[Path, Path, Path, Path]) -> None:
    lock, *_ = pool_lock
    loaded, _ = load(lock)
    assert sorted(loaded.targets) == sorted([A_NAME, B_NAME])
    assert loaded.targets[B_NAME].gpu.devices[0].sm_count == 108


def test_add_target_refuses_other_software_naming_the_place(
    cli: Any, tmp_path: Path, pool_lock: tuple[Path, Path, Path, Path]
) -> None:
    lock, _, b, _ = pool_lock
    before = lock.read_bytes()
    facts = json.loads(b.read_text(encoding="utf-8"))
    next(p for p in facts["packages"] if p["name"] == "numpy")["version"] = "2.0.0"
    other = write_facts(tmp_path / "b2.json", facts)
    result = cli("capture", "--add-target", "--facts", str(other), "-o", str(lock))
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert "packages.numpy.version" in line and "2.0.0" in line
    assert lock.read_bytes() == before


def test_add_target_refuses_another_cuda_build(
    cli: Any, tmp_path: Path, pool_lock: tuple[Path, Path, Path, Path]
) -> None:
    lock, _, b, _ = pool_lock
    facts = json.loads(b.read_text(encoding="utf-8"))
    facts["cuda"]["library_versions"]["cudnn"] = 90300
    result = cli("capture", "--add-target", "--facts", str(write_facts(tmp_path / "b3.json", facts)), "-o", str(lock))
    assert result.exit_code == 2
    assert "cuda.cudnn" in result.stderr


@pytest.mark.parametrize(("which", "name"), [(1, A_NAME), (2, B_NAME)])
def test_verify_picks_the_matching_target(
    cli: Any, pool_lock: tuple[Path, Path, Path, Path], which: int, name: str
) -> None:
    lock, facts = pool_lock[0], pool_lock[which]
    result = cli("verify", "--facts", str(facts), str(lock))
    assert result.exit_code == 0, result.output
    assert f"note: matched target {name}" in result.stdout
    result = cli("verify", "--json", "--facts", str(facts), str(lock))
    report = json.loads(result.stdout)
    assert report["target"] == name and report["findings"] == []
    assert any(n.startswith(f"matched target {name}") for n in report["notes"])


def test_a_machine_matching_no_target_names_the_targets_and_the_nearest(
    cli: Any, pool_lock: tuple[Path, Path, Path, Path]
) -> None:
    lock, _, _, c = pool_lock
    result = cli("verify", "--json", "--facts", str(c), str(lock))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    f = finding(report, "targets")
    assert f["severity"] == "error"
    assert f["expected"] == f"one of: {B_NAME}, {A_NAME}"
    assert f["actual"] == f"none (nearest: {report['target']})" and report["target"] in (A_NAME, B_NAME)
    assert A_NAME in f["hint"] and B_NAME in f["hint"] and "--add-target" in f["hint"]
    assert finding(report, "gpu.devices.0.compute_capability")["actual"] == "8.9"


def test_target_option_forces_a_target(cli: Any, pool_lock: tuple[Path, Path, Path, Path]) -> None:
    lock, _, b, _ = pool_lock
    result = cli("verify", "--json", "--target", A_NAME, "--facts", str(b), str(lock))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["target"] == A_NAME
    assert "targets" not in paths(report)
    assert finding(report, "gpu.count")["expected"] == 8
    assert finding(report, "gpu.devices.0.compute_capability")["actual"] == "8.0"
    result = cli("verify", "--target", B_NAME, "--facts", str(b), str(lock))
    assert result.exit_code == 0, result.output


def test_an_unknown_target_is_bad_input(cli: Any, pool_lock: tuple[Path, Path, Path, Path]) -> None:
    lock, a, _, _ = pool_lock
    result = cli("verify", "--target", "zen9-b200x8", "--facts", str(a), str(lock))
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert "zen9-b200x8" in line and A_NAME in line and B_NAME in line


# --- an nvidia-smi report as the GPU part -----------------------------------------------------------------


def test_an_nvidia_smi_report_gives_the_gpu_section(cli: Any, tmp_path: Path) -> None:
    xml = NVIDIA_SMI / "a100-sxm4-80gb-mig-2gpu.xml"
    out = tmp_path / "smi.lock"
    result = cli("capture", "--facts", str(H100 / "facts.json"), "--facts", str(xml), "-o", str(out))
    assert result.exit_code == 0, result.output
    lock, _ = load(out)
    ((name, target),) = lock.targets.items()
    assert name == B_NAME
    gpu = target.gpu
    assert (gpu.source, gpu.driver, gpu.cuda_driver, gpu.count) == ("nvidia-smi", "550.54.15", "12.4", 2)
    gpu0, gpu1 = gpu.devices
    assert (gpu0.name, gpu0.compute_capability, gpu0.mig) == ("NVIDIA A100-SXM4-80GB", "8.0", True)
    assert [(m.gpu_instance_id, m.compute_instance_id, m.sm_count, m.memory_mib) for m in gpu0.mig_instances] == [
        (2, 0, 42, 40192), (9, 0, 14, 9728)]
    assert gpu1.mig is False and gpu1.mig_instances == ()
    assert lock.cuda is not None and lock.cuda.runtime == "12.4"  # the rest still comes from the facts dump
    result = cli("verify", "--facts", str(H100 / "facts.json"), "--facts", str(xml), str(out))
    assert result.exit_code == 0, result.output
    result = cli("verify", "--json", "--facts", str(H100 / "facts.json"), str(out))
    assert result.exit_code == 1
    assert finding(json.loads(result.stdout), "gpu.devices.0.compute_capability")["actual"] == "9.0"

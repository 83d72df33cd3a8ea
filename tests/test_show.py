"""`envlock show`: what a user reads about a lock says what is known in words, and nothing stands in for the rest."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock
from envlock.facts import load_facts, load_facts_files
from envlock.lockfile import load
from envlock.model import Lock, NumericsSection, Policy, Target
from envlock.show import render_summary
from tests.conftest import FIXTURES

HOSTS = sorted(p.parent for p in (FIXTURES / "hosts").glob("*/expected.lock"))
A100 = FIXTURES / "hosts" / "linux-nvidia535-cuda12.1-cascadelake-a100x2mig"
DEVBOX = FIXTURES / "hosts" / "linux-nogpu-nocuda-x86_64_v4-devbox"
GRAVITON = FIXTURES / "hosts" / "linux-nogpu-nocuda-neoverse_v1-graviton3"
XEON = FIXTURES / "hosts" / "linux-nvidia550-nocuda-sapphirerapids-xeon8480"
SMI = FIXTURES / "nvidia-smi"
CREATED = "2026-01-01T00:00:00Z"

#: Words that stand in for a value instead of giving it.
PLACEHOLDER = re.compile(r"(?i:\bunknown\b|\bnull\b|\bnothing\b)|\bNone\b|\?|\(s\)|: ,|, ,|\(\)|\s$")


def _shown(lock: Lock) -> list[str]:
    return render_summary(lock, "envlock.lock")


def _target(lock: Lock) -> Target:
    (target,) = lock.targets.values()
    return target


def _with_target(lock: Lock, **changes: Any) -> Lock:
    ((name, target),) = lock.targets.items()
    return dataclasses.replace(lock, targets={name: dataclasses.replace(target, **changes)})


def _line(lines: list[str], start: str) -> str:
    (found,) = [line for line in lines if line.startswith(start)]
    return found


def _placeholders(lines: list[str]) -> list[str]:
    # A lock's own path and hash are the user's text; the rest is envlock's.
    return [line for line in lines[1:] if PLACEHOLDER.search(line)]


def _nvidia_smi_lock(report: str) -> Lock:
    facts = load_facts_files([str(DEVBOX / "facts.json"), str(SMI / report)])
    return build_lock(facts, created=CREATED)


@pytest.mark.parametrize("host", HOSTS, ids=[h.name for h in HOSTS])
def test_no_fixture_host_shows_a_placeholder(host: Path) -> None:
    lock, _ = load(host / "expected.lock")
    lines = _shown(lock)
    assert _placeholders(lines) == []
    assert all(line == line.rstrip() for line in lines)


def test_what_the_lock_does_not_know_is_left_out_not_spelled_unknown() -> None:
    lock, _ = load(A100 / "expected.lock")
    target = _target(lock)
    gpu = dataclasses.replace(target.gpu, source="", cuda_driver="",
                              devices=tuple(dataclasses.replace(d, compute_capability="", memory_mib=None, ecc=None)
                                            for d in target.gpu.devices))
    bare = _with_target(
        lock,
        gpu=gpu,
        platform=dataclasses.replace(target.platform, libc="", distro="", container=True, container_kind=""),
        cpu=dataclasses.replace(target.cpu, model="unknown", vendor="unknown", microarchitecture="unknown"),
        blas=dataclasses.replace(target.blas, torch_cpu_capability="", torch_blas_version=""),
    )
    assert lock.cuda is not None and lock.floats.torch is not None
    bare = dataclasses.replace(
        bare, cuda=dataclasses.replace(lock.cuda, arch_list=(), runtime="", cudnn="", cublas="", nccl=""),
        floats=dataclasses.replace(lock.floats, torch=dataclasses.replace(lock.floats.torch,
                                                                           float32_matmul_precision="")),
    )
    lines = _shown(bare)
    assert _placeholders(lines) == []
    assert _line(lines, "  gpu  ") == "  gpu        2 GPUs, NVIDIA driver 535.129.03"
    assert _line(lines, "  platform") == ("  platform   Linux x86_64, kernel 6.1.79-99.164.amzn2023.x86_64, "
                                          "in a container")
    assert _line(lines, "  cpu  ") == "  cpu        96 of 96 logical cores usable"
    assert _line(lines, "  torch blas") == "  torch blas mkl (built into torch)"
    assert _line(lines, "cuda ") == "cuda         torch built for CUDA 12.1; no CUDA library versions recorded"
    assert "fp32 matmul precision" not in _line(lines, "torch ")
    assert "    [1]    NVIDIA A100-SXM4-80GB: 108 SMs" in lines


def test_gpu_line_names_driver_cuda_and_where_it_was_read() -> None:
    lines = _shown(load(A100 / "expected.lock")[0])
    assert _line(lines, "  gpu  ") == ("  gpu        2 GPUs, NVIDIA driver 535.129.03, supports CUDA up to 12.2 "
                                       "(read through NVML)")
    lock = _nvidia_smi_lock("a100-sxm4-80gb-mig-2gpu.xml")
    assert _line(_shown(lock), "  gpu  ").endswith("(read from nvidia-smi)")


def test_a_gpu_read_without_a_driver_version_says_only_what_is_known() -> None:
    lock, _ = load(A100 / "expected.lock")
    lock = _with_target(lock, gpu=dataclasses.replace(_target(lock).gpu, driver="", source=""))
    assert _line(_shown(lock), "  gpu  ") == "  gpu        2 GPUs, the driver supports CUDA up to 12.2"


def test_no_gpu_visible_names_the_driver_it_found() -> None:
    lines = _shown(load(XEON / "expected.lock")[0])
    assert _line(lines, "  gpu  ") == "  gpu        none (NVIDIA driver 550.54.15 found, no GPU visible)"


def test_mig_instances_with_profiles_from_nvml() -> None:
    lines = _shown(load(A100 / "expected.lock")[0])
    at = lines.index("    [0]    NVIDIA A100-SXM4-80GB: compute capability 8.0, 81920 MiB, ECC on, MIG on, "
                     "2 instances")
    assert lines[at + 1:at + 4] == [
        "           MIG 3g.40gb (GPU instance 2): 42 SMs, 40192 MiB",
        "           MIG 1g.10gb (GPU instance 9): 14 SMs, 9728 MiB",
        "    [1]    NVIDIA A100-SXM4-80GB: compute capability 8.0, 108 SMs, 81920 MiB, ECC on",
    ]


def test_mig_instances_from_nvidia_smi_are_named_by_their_ids() -> None:
    """nvidia-smi's XML carries no profile name: the instance is named by what the lock does record."""
    lines = _shown(_nvidia_smi_lock("a100-sxm4-80gb-mig-2gpu.xml"))
    at = lines.index("    [0]    NVIDIA A100-SXM4-80GB: compute capability 8.0, 81920 MiB, ECC on, bare metal, "
                     "MIG on, 2 instances")
    assert lines[at + 1:at + 3] == [
        "           MIG GPU instance 2: 42 SMs, 40192 MiB",
        "           MIG GPU instance 9: 14 SMs, 9728 MiB",
    ]
    lines = _shown(_nvidia_smi_lock("h100-80gb-hbm3-mig.xml"))
    at = lines.index("    [0]    NVIDIA H100 80GB HBM3: compute capability 9.0, 81559 MiB, ECC on, bare metal, "
                     "MIG on, 3 instances")
    assert lines[at + 1:at + 4] == [
        "           MIG GPU instance 1: 60 SMs, 40448 MiB",
        "           MIG GPU instance 2, compute instance 0: 32 SMs, 40448 MiB",
        "           MIG GPU instance 2, compute instance 1: 16 SMs, 40448 MiB",
    ]
    assert _placeholders(lines) == []


def test_mig_on_without_instances() -> None:
    lock, _ = load(A100 / "expected.lock")
    gpu = _target(lock).gpu
    first = dataclasses.replace(gpu.devices[0], mig_instances=())
    lock = _with_target(lock, gpu=dataclasses.replace(gpu, devices=(first, *gpu.devices[1:])))
    assert ("    [0]    NVIDIA A100-SXM4-80GB: compute capability 8.0, 81920 MiB, ECC on, MIG on, no instances"
            in _shown(lock))


@pytest.mark.parametrize(("mode", "words"), [("none", "bare metal"), ("Pass-Through", "passed through to a VM"),
                                             ("VGPU", "a vGPU in a VM"), ("Host-VGPU", "vGPU host"),
                                             ("Odd-Mode", "virtualization Odd-Mode")])
def test_virtualization_in_words(mode: str, words: str) -> None:
    lock, _ = load(A100 / "expected.lock")
    gpu = _target(lock).gpu
    devices = tuple(dataclasses.replace(d, virtualization=mode) for d in gpu.devices)
    lines = _shown(_with_target(lock, gpu=dataclasses.replace(gpu, devices=devices)))
    assert _line(lines, "    [1]").endswith(f", ECC on, {words}")


def test_numerics_not_run_is_said_plainly() -> None:
    lines = _shown(load(A100 / "expected.lock")[0])
    assert _line(lines, "  numerics") == ("  numerics   not recorded: the numerics probe did not run when this lock "
                                          "was captured")


def test_numerics_that_recorded_no_kernels() -> None:
    lock = _with_target(load(A100 / "expected.lock")[0],
                        numerics=NumericsSection(probe="envlock-probe-1", generator="lowbias32-v1"))
    assert _line(_shown(lock), "  numerics") == ("  numerics   the numerics probe (envlock-probe-1) ran but recorded "
                                                 "no kernel results")


def test_numerics_kernels_per_device() -> None:
    lock, _ = load(DEVBOX / "expected.lock")
    assert _line(_shown(lock), "  numerics") == "  numerics   10 probe kernels (envlock-probe-1) on cpu"
    numerics = _target(lock).numerics
    assert numerics is not None
    kernels = dict(numerics.kernels)
    key = sorted(kernels)[0]
    kernels[key] = dataclasses.replace(kernels[key], device="cuda:0")
    lock = _with_target(lock, numerics=dataclasses.replace(numerics, kernels=kernels))
    assert _line(_shown(lock), "  numerics") == "  numerics   10 probe kernels (envlock-probe-1) on cpu (9), cuda:0 (1)"


def test_arm_cpu_is_named_by_its_maker_not_by_unknown() -> None:
    lines = _shown(load(GRAVITON / "expected.lock")[0])
    assert _line(lines, "  cpu  ") == ("  cpu        ARM CPU, microarchitecture neoverse_v1 (generic armv8.4a), 64 of "
                                       "64 logical cores usable, caches L1d 64 KiB, L1i 64 KiB, L2 1 MiB, L3 32 MiB")


def test_cpu_generic_level_is_not_repeated() -> None:
    lines = _shown(load(DEVBOX / "expected.lock")[0])
    assert _line(lines, "  cpu  ") == ("  cpu        AMD EPYC [AuthenticAMD], microarchitecture x86_64_v4, "
                                       "2 of 2 logical cores usable")


def test_packages_env_and_policy_in_words() -> None:
    lock, _ = load(DEVBOX / "expected.lock")
    lines = _shown(lock)
    assert _line(lines, "packages ") == "packages     51 (50 from an index, 1 editable)"
    from envlock.policy import DEFAULT_RULES
    from envlock.probes.floats import NUMERIC_ENV_VARS

    variables = len(NUMERIC_ENV_VARS)
    assert _line(lines, "env ") == f"env          none of the {variables} variables that change numbers is set"
    assert _line(lines, "policy ") == (f"policy       {len(DEFAULT_RULES)} rules (the defaults); a missing package is "
                                       "an error, an extra one a warning")
    rules = dict(lock.policy.rules)
    removed = sorted(rules)[0]
    del rules[removed]
    lock = dataclasses.replace(lock, packages={}, policy=Policy(missing_packages="warn", rules=rules))
    lines = _shown(lock)
    assert _line(lines, "packages ") == "packages     none"
    assert _line(lines, "policy ") == (f"policy       {len(DEFAULT_RULES) - 1} rules (removed: {removed}); "
                                       "a missing package is a warning, an extra one a warning")


def test_show_prints_the_summary(cli: Any) -> None:
    result = cli("show", str(A100 / "expected.lock"))
    assert result.exit_code == 0, result.stderr
    assert "           MIG 3g.40gb (GPU instance 2): 42 SMs, 40192 MiB\n" in result.stdout
    assert _placeholders(result.stdout.splitlines()) == []


def test_fixture_facts_give_the_locks_shown() -> None:
    """The summaries above read the recorded locks; those are what their facts give."""
    for host in (A100, DEVBOX):
        built = build_lock(load_facts(host / "facts.json"), created=CREATED)
        assert _shown(built) == _shown(load(host / "expected.lock")[0])

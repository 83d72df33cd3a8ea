"""The pure parsers of envlock.probes, fed recorded and hand-made raw facts; and what collect_torch reads."""

from __future__ import annotations

import copy
import json
import marshal
import platform as host_platform
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock
from envlock.model import ModelError
from envlock.probes import python as python_probe
from envlock.probes.blas import library_owner, parse_blas, parse_torch_blas
from envlock.probes.cpu import NUMERIC_FLAGS, _first_cpuinfo_block, collect_cpu, parse_cpu
from envlock.probes.floats import NUMERIC_ENV_VARS, collect_env, parse_floats, parse_threads
from envlock.probes.gpu import collect_gpu, parse_gpu, parse_proc_driver_version
from envlock.probes.platform import collect_platform, parse_container, parse_os_release, parse_platform
from envlock.probes.python import collect_python, parse_python
from envlock.probes.sizes import frame, unframe

HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
DEVBOX = HOSTS / "linux-nogpu-nocuda-x86_64_v4-devbox"  # real facts of the development machine
GRAVITON3 = HOSTS / "linux-nogpu-nocuda-neoverse_v1-graviton3"


def facts(folder: Path = DEVBOX) -> dict[str, Any]:
    return json.loads((folder / "facts.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def model_error(call: Any, *args: Any) -> ModelError:
    with pytest.raises(ModelError) as info:
        call(*args)
    return info.value


# --- cpu ------------------------------------------------------------------------------------------------

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R)   CPU E5-2680 v3 @ 2.50GHz
flags\t\t: fpu pni vmx aes pclmulqdq rdrand ssse3 fma avx2 sse4_2 sse4_1 avx f16c cx16 lahf_lm abm movbe popcnt \
xsave bmi1 bmi2 mmx sse sse2
power management:

processor\t: 1
vendor_id\t: AuthenticAMD
flags\t\t: fpu
"""


def test_first_cpuinfo_block_stops_at_the_blank_line() -> None:
    block = _first_cpuinfo_block(CPUINFO)
    assert block["vendor_id"] == "GenuineIntel"
    assert block["processor"] == "0"
    assert block["power management"] == ""
    assert "fpu pni vmx" in block["flags"]


def test_parse_cpu_vendor_model_sorted_numeric_flags_and_cores() -> None:
    cpu = parse_cpu({"machine": "x86_64", "cpuinfo": _first_cpuinfo_block(CPUINFO), "logical_cores": 24,
                     "usable_cores": 6})
    assert cpu.vendor == "GenuineIntel"
    assert cpu.model == "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz"  # runs of spaces collapsed
    assert cpu.flags == ("avx", "avx2", "f16c", "fma", "sse4_1", "sse4_2")
    assert set(cpu.flags) <= NUMERIC_FLAGS
    assert (cpu.microarchitecture, cpu.generic) == ("haswell", "x86_64_v3")
    assert (cpu.logical_cores, cpu.usable_cores) == (24, 6)


def test_parse_cpu_on_the_real_devbox() -> None:
    cpu = parse_cpu(facts()["cpu"])
    assert (cpu.vendor, cpu.model) == ("AuthenticAMD", "AMD EPYC")
    assert cpu.microarchitecture == cpu.generic == "x86_64_v4"
    assert {"avx512f", "avx512_bf16", "avx512_vnni"} <= set(cpu.flags)
    assert "sse3" not in cpu.flags and "pni" not in cpu.flags


@pytest.mark.parametrize(("folder", "uarch", "generic"), [
    ("linux-nogpu-nocuda-neoverse_v1-graviton3", "neoverse_v1", "armv8.4a"),
    ("linux-nvidia550-nocuda-sapphirerapids-xeon8480", "sapphirerapids", "x86_64_v4"),
    ("linux-nogpu-nocuda-haswell-xeone52680v3", "haswell", "x86_64_v3"),
    ("linux-nogpu-nocuda-zen3-ryzen5950x", "zen3", "x86_64_v3"),
])
def test_parse_cpu_on_published_cpuinfo(folder: str, uarch: str, generic: str) -> None:
    cpu = parse_cpu(facts(HOSTS / folder)["cpu"])
    assert (cpu.microarchitecture, cpu.generic) == (uarch, generic)
    assert list(cpu.flags) == sorted(cpu.flags)


def test_sapphire_rapids_keeps_its_amx_and_fp16_flags() -> None:
    cpu = parse_cpu(facts(HOSTS / "linux-nvidia550-nocuda-sapphirerapids-xeon8480")["cpu"])
    assert {"amx_tile", "amx_bf16", "amx_int8", "avx512_fp16", "avx_vnni"} <= set(cpu.flags)


def test_aarch64_cpu_part_picks_the_core() -> None:
    raw = facts(GRAVITON3)["cpu"]
    raw["cpuinfo"]["CPU part"] = "0xd0c"  # Neoverse N1's part number, same (superset) features
    assert parse_cpu(raw).microarchitecture == "neoverse_n1"
    raw["cpuinfo"]["CPU implementer"] = "0x99"  # nobody archspec knows: generic, not an error
    assert parse_cpu(raw).microarchitecture == "aarch64"


def test_parse_cpu_does_not_depend_on_the_host_os(monkeypatch: pytest.MonkeyPatch) -> None:
    linux = parse_cpu(facts(GRAVITON3)["cpu"])
    monkeypatch.setattr(host_platform, "system", lambda: "Darwin")
    assert parse_cpu(facts(GRAVITON3)["cpu"]) == linux
    assert parse_cpu({"machine": "arm64", "cpuinfo": {}}).microarchitecture == "aarch64"  # a Mac's own facts


@pytest.mark.parametrize(("machine", "expected"), [
    ("s390x", "s390x"), ("ppc64le", "ppc64le"), ("riscv64", "riscv64"), ("", "unknown"), ("x86_64", "x86_64"),
])
def test_unknown_or_bare_machines_fall_back_to_a_generic_answer(machine: str, expected: str) -> None:
    # A POWER whose generation cannot be read (QEMU shows the host's text) is the bare family; see
    # tests/test_cpu_identity.py for POWER9 and POWER10.
    cpu = parse_cpu({"machine": machine, "cpuinfo": {"cpu": "emulated, altivec supported"}})
    assert (cpu.microarchitecture, cpu.generic) == (expected, expected)
    assert cpu.vendor == "unknown"
    assert (cpu.logical_cores, cpu.usable_cores) == (1, 1)


@pytest.mark.parametrize(("raw", "where"), [
    (None, "cpu"),
    ({"cpuinfo": {}}, "cpu.machine"),
    ({"machine": 86}, "cpu.machine"),
    ({"machine": "x86_64", "cpuinfo": "flags: avx"}, "cpu.cpuinfo"),
    ({"machine": "x86_64", "cpuinfo": {"flags": ["avx2", "fma"]}}, "cpu.cpuinfo.flags"),
    ({"machine": "x86_64", "logical_cores": "2"}, "cpu.logical_cores"),
    ({"machine": "x86_64", "usable_cores": True}, "cpu.usable_cores"),
])
def test_malformed_cpu_facts_name_the_place(raw: Any, where: str) -> None:
    assert model_error(parse_cpu, raw).where == where


def test_collect_cpu_then_parse() -> None:
    raw = collect_cpu()
    cpu = parse_cpu(raw)
    assert cpu.logical_cores >= cpu.usable_cores >= 1
    assert cpu.microarchitecture


# --- platform -------------------------------------------------------------------------------------------

def test_parse_platform_on_the_real_devbox() -> None:
    section = parse_platform(facts()["platform"])
    assert (section.system, section.machine, section.libc) == ("Linux", "x86_64", "glibc 2.36")
    assert section.distro == "debian 12"
    assert (section.container, section.container_kind) == (True, "docker")


@pytest.mark.parametrize(("raw", "kind"), [
    ({"markers": ["/.dockerenv"]}, "docker"),
    ({"markers": ["/run/.containerenv"], "container_env": "podman"}, "podman"),
    ({"markers": ["/.dockerenv"], "kubernetes": True}, "docker"),  # the marker is the stronger fact
    ({"kubernetes": True, "cgroup": "0::/\n"}, "kubernetes"),
    ({"container_env": "systemd-nspawn"}, "systemd-nspawn"),
    ({"cgroup": "12:pids:/kubepods/burstable/pod5e1c/0a3f\n"}, "kubernetes"),
    ({"cgroup": "0::/system.slice/docker-4b1d9e.scope\n"}, "docker"),
    ({"cgroup": "1:name=systemd:/machine.slice/libpod-9c2e.scope\n"}, "podman"),
    ({"cgroup": "0::/system.slice/containerd.service\n"}, "containerd"),
    ({"cgroup": "0::/init.scope\n"}, ""),
    ({"markers": [], "container_env": "", "kubernetes": False, "cgroup": None}, ""),
    ({}, ""),
])
def test_parse_container(raw: dict[str, Any], kind: str) -> None:
    assert parse_container(raw) == kind


def test_container_kind_is_made_safe() -> None:
    raw = {"system": "Linux", "machine": "x86_64", "release": "6.1", "container_env": "my container!\n"}
    section = parse_platform(raw)
    assert (section.container, section.container_kind) == (True, "my-container")


def test_no_container_is_said_as_false() -> None:
    section = parse_platform({"system": "Linux", "machine": "aarch64", "release": "6.1", "cgroup": "0::/init.scope"})
    assert (section.container, section.container_kind, section.distro, section.libc) == (False, "", "", "")


@pytest.mark.parametrize(("text", "expected"), [
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\nID=debian\n', "debian 12"),
    ("ID='rocky'\nVERSION_ID='9.3'\n", "rocky 9.3"),
    ("ID=arch\nBUILD_ID=rolling\n", "arch"),
    ("# no data\n", ""),
    ("", ""),
])
def test_parse_os_release(text: str, expected: str) -> None:
    assert parse_os_release(text) == expected


@pytest.mark.parametrize(("raw", "where"), [
    (None, "platform"),
    ({"machine": "x86_64", "release": "6.1"}, "platform.system"),
    ({"system": "Linux", "machine": "x86_64", "release": 6}, "platform.release"),
    ({"system": "Linux", "machine": "x86_64", "release": "6.1", "markers": "/.dockerenv"}, "platform.markers"),
    ({"system": "Linux", "machine": "x86_64", "release": "6.1", "kubernetes": "yes"}, "platform.kubernetes"),
    ({"system": "Linux", "machine": "x86_64", "release": "6.1", "os_release": ["ID=x"]}, "platform.os_release"),
])
def test_malformed_platform_facts_name_the_place(raw: Any, where: str) -> None:
    assert model_error(parse_platform, raw).where == where


def test_collect_platform_then_parse() -> None:
    section = parse_platform(collect_platform())
    assert section.system == host_platform.system()
    assert section.machine == host_platform.machine()


# --- blas -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "owner"), [
    ("/work/main/.venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-32a4b2a6.so", "numpy"),
    ("/work/main/.venv/lib/python3.11/site-packages/torch/lib/libgomp.so.1", "torch"),
    ("/usr/lib/python3/dist-packages/scipy.libs/libopenblasp-r0-9f9f5dbc.3.18.so", "scipy"),
    ("/opt/venv/lib/python3.12/site-packages/torch.libs/libgomp-a34b3233.so.1", "torch"),
    ("C:\\Python312\\Lib\\site-packages\\numpy.libs\\libscipy_openblas64_-c16e4918.dll", "numpy"),
    ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0", "libopenblas"),
    ("/usr/lib/x86_64-linux-gnu/libgomp.so.1", "libgomp"),
])
def test_library_owner(path: str, owner: str) -> None:
    assert library_owner(path) == owner


def test_parse_torch_blas_on_this_machines_torch_text() -> None:
    blas = facts()["blas"]
    assert "BLAS_INFO=mkl" in blas["torch_config"]  # the recorded text is real torch 2.13.0+cpu output
    assert parse_torch_blas(blas["torch_config"], blas["torch_parallel_info"]) == ("mkl", "2024.2")
    assert parse_torch_blas(blas["torch_config"], "") == ("mkl", "")


def test_parse_torch_blas_openblas_and_nothing() -> None:
    config = "PyTorch built with:\n  - Build settings: BLAS_INFO=open, BUILD_TYPE=Release, LAPACK_INFO=open,\n"
    assert parse_torch_blas(config, "OpenBLAS 0.3.27  (DYNAMIC_ARCH NO_AFFINITY neoversen1 MAX_THREADS=64)\n") == (
        "openblas", "0.3.27")
    assert parse_torch_blas("", "") == ("", "")


def test_parse_blas_on_the_real_devbox() -> None:
    section = parse_blas(facts()["blas"])
    assert [lib.id for lib in section.libraries] == ["numpy-openblas", "torch-openmp"]
    numpy, omp = section.libraries
    assert (numpy.user_api, numpy.internal_api, numpy.version) == ("blas", "openblas", "0.3.31.188.0")
    assert (numpy.architecture, numpy.threading_layer, numpy.num_threads) == ("SkylakeX", "pthreads", 2)
    assert (omp.internal_api, omp.version, omp.architecture) == ("openmp", "", "")  # null version: empty
    assert (section.torch_blas, section.torch_blas_version, section.torch_cpu_capability) == ("mkl", "2024.2", "AVX512")


def test_parse_blas_keeps_one_entry_per_owner_and_api_sorted() -> None:
    lib = {"user_api": "blas", "internal_api": "openblas", "num_threads": 4, "version": "0.3.27",
           "filepath": "/v/lib/python3.12/site-packages/scipy.libs/libscipy_openblas-1.so"}
    first_numpy = dict(lib, filepath="/v/lib/python3.12/site-packages/numpy.libs/libscipy_openblas64_-a.so")
    second_numpy = dict(first_numpy, num_threads=99)
    section = parse_blas({"threadpool_info": [lib, first_numpy, second_numpy]})
    assert [(x.id, x.num_threads) for x in section.libraries] == [("numpy-openblas", 4), ("scipy-openblas", 4)]
    assert parse_blas({}).libraries == ()


@pytest.mark.parametrize(("raw", "where"), [
    ({"threadpool_info": {"user_api": "blas"}}, "blas.threadpool_info"),
    ({"threadpool_info": ["libopenblas.so"]}, "blas.threadpool_info[0]"),
    ({"threadpool_info": [{"user_api": "blas", "internal_api": "openblas", "num_threads": "2"}]},
     "blas.threadpool_info[0].num_threads"),
    ({"threadpool_info": [{"user_api": "blas", "num_threads": 2}]}, "blas.threadpool_info[0].internal_api"),
    ({"torch_config": 1}, "blas.torch_config"),
    ({"torch_cpu_capability": "AVX2; rm -rf /"}, "blas.torch_cpu_capability"),
])
def test_malformed_blas_facts_name_the_place(raw: Any, where: str) -> None:
    assert model_error(parse_blas, raw).where == where


# --- floats ---------------------------------------------------------------------------------------------

def test_parse_floats_lists_every_numeric_env_var_set_or_unset() -> None:
    floats = parse_floats({"OMP_NUM_THREADS": "8", "PYTHONHASHSEED": "", "UNRELATED": "x"}, None)
    assert list(floats.env) == list(NUMERIC_ENV_VARS)
    assert (floats.env["OMP_NUM_THREADS"].set, floats.env["OMP_NUM_THREADS"].value) == (True, "8")
    assert (floats.env["PYTHONHASHSEED"].set, floats.env["PYTHONHASHSEED"].value) == (True, "")  # set, empty
    assert [name for name, var in floats.env.items() if not var.set] == [
        name for name in NUMERIC_ENV_VARS if name not in ("OMP_NUM_THREADS", "PYTHONHASHSEED")]
    assert "UNRELATED" not in floats.env
    assert floats.torch is None


def test_parse_floats_and_threads_on_the_real_devbox() -> None:
    raw = facts()
    floats = parse_floats(raw["env"], raw["torch"])
    assert floats.torch is not None
    assert floats.torch.version == "2.13.0+cpu"
    assert (floats.torch.matmul_allow_tf32, floats.torch.float32_matmul_precision) == (False, "highest")
    assert (floats.torch.flush_denormal, floats.torch.default_dtype) == (False, "float32")
    assert floats.torch.mkldnn_matmul_fp32_precision == "ieee"  # torch says "none" (inherit): resolved
    threads = parse_threads(raw["torch"])
    assert threads is not None and (threads.torch_intraop, threads.torch_interop) == (2, 2)
    assert parse_threads(None) is None


@pytest.mark.parametrize(("env", "torch", "where"), [
    (["OMP_NUM_THREADS=1"], None, "env"),
    ({"OMP_NUM_THREADS": 1}, None, "env.OMP_NUM_THREADS"),
    ({}, {"matmul_allow_tf32": True}, "torch.version"),
    ({}, {"version": "2.3.0", "matmul_allow_tf32": 1}, "torch.matmul_allow_tf32"),
    ({}, ["2.3.0"], "torch"),
])
def test_malformed_float_facts_name_the_place(env: Any, torch: Any, where: str) -> None:
    assert model_error(parse_floats, env, torch).where == where


def test_collect_env_reads_only_numeric_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NUMERIC_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setenv("HOME_OF_SOMETHING", "x")
    assert collect_env() == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert parse_floats(collect_env(), None).env["CUBLAS_WORKSPACE_CONFIG"].value == ":4096:8"


@pytest.mark.torch
def test_collect_torch_sees_flush_denormal_and_tf32() -> None:
    torch = pytest.importorskip("torch")
    from envlock.probes.floats import collect_torch

    before = collect_torch()
    assert before is not None
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    old_flush = before["flush_denormal"]
    try:
        assert torch.set_flush_denormal(True), "this CPU cannot flush denormals"
        torch.backends.cuda.matmul.allow_tf32 = True
        raw = collect_torch()
        assert raw is not None
        assert raw["flush_denormal"] is True
        assert raw["matmul_allow_tf32"] is True
        floats = parse_floats({}, raw)
        assert floats.torch is not None
        assert (floats.torch.flush_denormal, floats.torch.matmul_allow_tf32) == (True, True)
    finally:
        torch.set_flush_denormal(old_flush)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    after = collect_torch()
    assert after is not None
    assert (after["flush_denormal"], after["matmul_allow_tf32"]) == (old_flush, old_tf32)


# --- gpu ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "version"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
     "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n", "550.54.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.104.05  Release Build  "
     "(dvs-builder@U16-I3-B03-4-3)  Tue Aug 22 21:14:14 UTC 2023\n"
     "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
     "535.104.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  560.35.03  Release Build  "
     "(dvs-builder@U16-I1-N07-12-3)  Fri Aug 16 21:17:30 UTC 2024\n", "560.35.03"),
    ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  470.82.01  Wed Oct 27 04:25:08 UTC 2021\n", "470.82.01"),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  390.48  Thu Mar 22 00:42:57 PDT 2018\n", "390.48"),
    ("", ""),
    ("NVRM version: something else entirely\n", ""),
])
def test_parse_proc_driver_version(text: str, version: str) -> None:
    assert parse_proc_driver_version(text) == version


def test_parse_gpu_driver_or_none() -> None:
    found = parse_gpu({"proc_driver_version": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  x\n"})
    assert (found.count, found.driver) == (0, "550.54.15")
    assert "driver found" in found.status
    for raw in ({}, {"proc_driver_version": None}, {"proc_driver_version": "garbage"}):
        none = parse_gpu(raw)
        assert (none.count, none.driver, none.status) == (0, "", "no NVIDIA driver found")


@pytest.mark.parametrize(("raw", "where"), [
    ({"proc_driver_version": ["550.54.15"]}, "gpu.proc_driver_version"),
    ("550.54.15", "gpu"),
])
def test_malformed_gpu_facts_name_the_place(raw: Any, where: str) -> None:
    assert model_error(parse_gpu, raw).where == where


def test_collect_gpu_then_parse() -> None:
    raw = collect_gpu()
    section = parse_gpu(raw)
    if "proc_driver_version" in raw:  # an NVIDIA machine: its own version file must parse
        assert section.driver
    else:
        assert (section.driver, section.status) == ("", "no NVIDIA driver found")


# --- python ---------------------------------------------------------------------------------------------

def test_parse_python_on_the_real_devbox() -> None:
    section = parse_python(facts()["python"])
    assert (section.implementation, section.version, section.abi) == ("cpython", "3.11.7", "cp311")
    assert (section.platform, section.platform_tag) == ("linux-x86_64", "manylinux_2_36_x86_64")
    assert (section.byteorder, section.pointer_bits) == ("little", 64)


@pytest.mark.parametrize(("tag", "abi", "platform_tag"), [
    ("cp313-cp313t-macosx_14_0_arm64", "cp313t", "macosx_14_0_arm64"),
    ("pp310-pypy310_pp73-manylinux_2_17_x86_64", "pypy310_pp73", "manylinux_2_17_x86_64"),
    ("cp311", "cp311", "any"),
])
def test_parse_python_tags(tag: str, abi: str, platform_tag: str) -> None:
    raw = {"implementation": "cpython", "version": "3.11.7", "tag": tag, "sysconfig_platform": "linux-x86_64"}
    section = parse_python(raw)
    assert (section.abi, section.platform_tag) == (abi, platform_tag)
    assert (section.byteorder, section.pointer_bits) == ("little", 64)  # defaults for older dumps


@pytest.mark.parametrize(("change", "where"), [
    ({"tag": None}, "python.tag"),
    ({"version": 3.11}, "python.version"),
    ({"pointer_bits": "64"}, "python.pointer_bits"),
    ({"byteorder": 1}, "python.byteorder"),
])
def test_malformed_python_facts_name_the_place(change: dict[str, Any], where: str) -> None:
    raw = {**facts()["python"], **change}
    assert model_error(parse_python, raw).where == where


def test_collect_python_then_parse() -> None:
    section = parse_python(collect_python())
    assert section.version == host_platform.python_version()
    assert section.abi.startswith("cp") or section.implementation != "cpython"


def test_the_interpreter_tag_is_remembered_under_what_decides_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(tmp_path))
    worked_out = python_probe._work_out_tag()
    calls: list[str] = []

    def counted() -> str:
        calls.append("worked out")
        return worked_out

    monkeypatch.setattr(python_probe, "_work_out_tag", counted)
    assert [python_probe.interpreter_tag() for _ in range(3)] == [worked_out] * 3
    assert calls == ["worked out"]  # once, then from the cache
    cache = tmp_path / "python-tags.marshal"
    # Another C library (or interpreter, platform, packaging) is another key: worked out again.
    monkeypatch.setattr(python_probe.os, "confstr", lambda name: "glibc 9.99", raising=False)
    assert python_probe.interpreter_tag() == worked_out and len(calls) == 2
    keys = marshal.loads(unframe(cache.read_bytes()) or b"")["entries"]
    assert len(keys) == 2
    for damaged in (b"", b"{", frame(b"{"), frame(marshal.dumps({"version": 1, "entries": {"x": 1}})),
                    marshal.dumps({"version": 1, "entries": {key: worked_out for key in keys}}),  # unframed
                    frame(marshal.dumps({"version": 1, "entries": {key: "forged" for key in keys}}))):
        cache.write_bytes(damaged)
        assert python_probe.interpreter_tag() == worked_out
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", "")
    cache.unlink()
    assert python_probe.interpreter_tag() == worked_out and not cache.exists()


# --- the whole lock ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "value", "where"), [
    (("cpu", "logical_cores"), "2", "cpu.logical_cores"),
    (("cpu", "cpuinfo", "model name"), 7, "cpu.cpuinfo.model name"),
    (("platform", "kubernetes"), "no", "platform.kubernetes"),
    (("blas", "threadpool_info"), "none", "blas.threadpool_info"),
    (("gpu", "proc_driver_version"), 550, "gpu.proc_driver_version"),
    (("python", "version"), None, "python.version"),
    (("torch", "num_threads"), 2.0, "torch.num_threads"),
    (("env",), "OMP_NUM_THREADS=1", "env"),
    (("packages",), {}, "packages"),
])
def test_build_lock_refuses_wrong_types_with_a_dotted_place(path: tuple[str, ...], value: Any, where: str) -> None:
    raw = copy.deepcopy(facts())
    holder = raw
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    error = model_error(lambda: build_lock(raw, created="2026-01-01T00:00:00Z"))
    assert error.where == where
    assert str(error).startswith(f"{where}: ")


def test_build_lock_refuses_an_unlockable_string_with_the_lock_place() -> None:
    raw = facts()
    raw["torch"]["default_dtype"] = "float32\n[policy]"
    assert model_error(lambda: build_lock(raw, created="2026-01-01T00:00:00Z")).where == "floats.torch.default_dtype"

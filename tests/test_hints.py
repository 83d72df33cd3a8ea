"""Hints a user trusts: each names the right side, the right module, the right kind of number and the proven cause;
commands are whole and in backticks; between two locks they speak of A and B; `cause` links a consequence to the
finding it follows from. All judged purely: evaluate() / compare_locks() on locks built from recorded facts.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock
from envlock.compare import compare_locks
from envlock.facts import load_facts
from envlock.findings import Finding, Report
from envlock.model import Lock, Policy, Rule
from envlock.probes.numerics import GENERATOR, PROBE_VERSION, default_kernels
from envlock.verifying import Observed, evaluate

HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
H100 = HOSTS / "linux-nvidia550-cuda12.4-sapphirerapids-h100x8" / "facts.json"
CREATED = "2026-01-01T00:00:00Z"
SUM = "torch-cpu-sum-float32-4194304x1x1"
MM = "torch-cpu-mm-float32-256x256x256"
NUMPY_MM = "numpy-cpu-mm-float32-256x256x256"


@pytest.fixture(scope="module")
def h100() -> dict[str, Any]:
    return load_facts(H100)


def changed(facts: dict[str, Any], edit: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    out = copy.deepcopy(facts)
    edit(out)
    return out


def lock_of(facts: dict[str, Any]) -> Lock:
    return build_lock(facts, created=CREATED)


def judge(locked: dict[str, Any], now: dict[str, Any], policy: Policy | None = None,
          errors: dict[str, str] | None = None) -> dict[str, Finding]:
    lock = lock_of(locked)
    current = build_lock(now, policy=lock.policy, created=CREATED)
    skipped = () if "numerics" in now else ("numerics",)
    report = evaluate(lock, Observed(current=current, skipped=skipped, numerics_errors=errors or {}),
                      policy or lock.policy)
    return by_path(report)


def between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Finding]:
    return {f.path: f for f in compare_locks(lock_of(a), lock_of(b), between_locks=True).findings}


def by_path(report: Report) -> dict[str, Finding]:
    return {f.path: f for f in report.findings}


def without_torch(facts: dict[str, Any]) -> None:
    facts.pop("torch")
    facts.pop("cuda", None)
    facts["packages"] = [p for p in facts["packages"] if p["name"] != "torch"]
    facts["blas"]["threadpool_info"] = [i for i in facts["blas"]["threadpool_info"] if "torch" not in i["filepath"]]


def _hash(c: str) -> str:
    return "sha256:" + c * 64


def probe(**outputs: str) -> dict[str, Any]:
    """Raw CPU probe facts: made-up hashes, each single-thread (`-t1`) run with bits of its own ('e')."""
    kernels = {}
    for key, spec in default_kernels(numpy=True, torch=True).items():
        item: dict[str, Any] = {**spec.to_dict(), "input_sha256": _hash("a"),
                                "output_sha256": _hash("e" if spec.threads == 1 else "b"), "repeat_equal": True}
        if spec.op == "identity-mm":
            item["canary"] = "bits=23"
        elif spec.op == "int-mm":
            item["canary"] = "exact"
        elif spec.op == "mm":
            item["error_class"] = "fp32"
        elif spec.op == "denormal":
            item["canary"] = "ftz=off daz=off workers-flushed=0"
        kernels[key] = item
    for key, c in outputs.items():
        kernels[key]["output_sha256"] = _hash(c)
    return {"probe": PROBE_VERSION, "generator": GENERATOR, "kernels": kernels}


def with_probe(facts: dict[str, Any], **outputs: str) -> dict[str, Any]:
    return changed(facts, lambda f: f.update(numerics=probe(**outputs)))


def threads(n: int) -> Callable[[dict[str, Any]], None]:
    def edit(facts: dict[str, Any]) -> None:
        facts["torch"]["num_threads"] = n
        for info in facts["blas"]["threadpool_info"]:
            info["num_threads"] = n
    return edit


def omp(n: str | None) -> Callable[[dict[str, Any]], None]:
    def edit(facts: dict[str, Any]) -> None:
        if n is None:
            facts["env"].pop("OMP_NUM_THREADS", None)
        else:
            facts["env"]["OMP_NUM_THREADS"] = n
        threads(int(n) if n else 48)(facts)
    return edit


# --- 1. torch missing: both directions, and the right side ---------------------------------------------------------


def test_torch_missing_here_says_so_and_how_to_install_it(h100: dict[str, Any]) -> None:
    found = judge(h100, changed(h100, without_torch))
    hint = found["floats.torch"].hint
    assert hint == "torch 2.4.1+cu124 is in the lock and torch is not installed here: `pip install torch==2.4.1+cu124`"
    assert "importable here" not in hint
    assert found["floats.torch"].cause == "packages.torch"


def test_torch_only_here_says_it_was_not_at_capture(h100: dict[str, Any]) -> None:
    found = judge(changed(h100, without_torch), h100)
    assert found["floats.torch"].hint.startswith("torch 2.4.1+cu124 is importable here and torch was not at capture")


def test_torch_installed_but_broken_says_it_does_not_import(h100: dict[str, Any]) -> None:
    found = judge(h100, changed(h100, lambda f: f.pop("torch")))
    assert "installed here but does not import" in found["floats.torch"].hint
    assert '`python -c "import torch"`' in found["floats.torch"].hint


def test_torch_missing_between_locks_names_each_side(h100: dict[str, Any]) -> None:
    assert between(h100, changed(h100, without_torch))["floats.torch"].hint.startswith(
        "A was captured with torch 2.4.1+cu124, B without torch importable")
    assert between(changed(h100, without_torch), h100)["floats.torch"].hint.startswith(
        "A was captured without torch importable, B with torch 2.4.1+cu124")


# --- 2. a probe kernel that could not run names the module that is missing ----------------------------------------


def test_a_numpy_kernel_failing_on_torch_names_torch_not_numpy(h100: dict[str, Any]) -> None:
    now = changed(with_probe(h100), without_torch)
    now["numerics"]["kernels"] = {k: v for k, v in now["numerics"]["kernels"].items() if k.startswith("numpy")}
    del now["numerics"]["kernels"][NUMPY_MM]
    found = judge(with_probe(h100), now, errors={NUMPY_MM: "ModuleNotFoundError: No module named 'torch'"})
    numpy_mm = found[f"numerics.{NUMPY_MM}"]
    assert numpy_mm.hint == "the kernel needs torch, which is not importable here (torch is not installed)"
    assert "numpy installed" not in numpy_mm.hint
    assert numpy_mm.cause == "packages.torch"
    # The torch kernels that were not run at all say torch is missing, never ask about another library.
    assert found[f"numerics.{SUM}"].hint == "torch is not installed here"
    assert found[f"numerics.{SUM}"].cause == "packages.torch"


def test_a_kernel_failing_for_another_reason_says_the_reason(h100: dict[str, Any]) -> None:
    now = with_probe(h100)
    del now["numerics"]["kernels"][SUM]
    found = judge(with_probe(h100), now, errors={SUM: "RuntimeError: out of memory"})
    assert found[f"numerics.{SUM}"].hint == "the kernel failed here (RuntimeError: out of memory)"


# --- 3. no Python None / True / False / repr in any hint ------------------------------------------------------------

PYTHON_WORDS = re.compile(r"\b(None|True|False)\b|(?<![A-Za-z])'[^'\s]+'")


def outside_code(hint: str) -> str:
    return re.sub(r"`[^`]*`", "", hint)


def every_pair() -> list[tuple[Path, Path]]:
    hosts = sorted(HOSTS.glob("*/facts.json"))
    return list(itertools.permutations(hosts, 2))


@pytest.mark.parametrize("between_locks", [False, True], ids=["verify", "diff"])
def test_no_hint_prints_python_values_across_every_pair_of_hosts(between_locks: bool) -> None:
    for a, b in every_pair():
        lock_a, lock_b = lock_of(load_facts(a)), lock_of(load_facts(b))
        for f in compare_locks(lock_a, lock_b, skip=("numerics",), between_locks=between_locks).findings:
            assert not PYTHON_WORDS.search(outside_code(f.hint)), (a.parent.name, b.parent.name, f)
            assert f.hint.count("`") % 2 == 0, f


def test_a_flag_the_lock_does_not_record_prints_no_none(h100: dict[str, Any]) -> None:
    found = judge(h100, changed(h100, lambda f: f["torch"].update(matmul_fp32_precision="tf32")))
    hint = found["floats.torch.matmul_fp32_precision"].hint
    assert hint.startswith("cuBLAS fp32 precision is tf32 here and the lock does not record it"), hint
    assert "None" not in hint and "fp32_precision = " not in hint


# --- 4. numerics: the locked variants prove the cause; knobs that cannot affect a kernel are never blamed -----------


def test_one_thread_plus_tf32_blames_threads_for_the_cpu_sum(h100: dict[str, Any]) -> None:
    """torch.set_num_threads(1) and allow_tf32=True through the API: the sum's bits are the locked -t1 run's."""
    def api(facts: dict[str, Any]) -> None:
        threads(1)(facts)
        facts["torch"].update(matmul_allow_tf32=True, float32_matmul_precision="high")

    found = judge(with_probe(h100), changed(with_probe(h100, **{SUM: "e", MM: "e"}), api))
    for key in (SUM, MM):
        kernel = found[f"numerics.{key}"]
        assert kernel.hint == "thread count changed 12 → 1", kernel
        assert kernel.cause == "threads.torch_intraop"
    assert "matmul" not in found[f"numerics.{SUM}"].hint
    assert found["floats.torch.float32_matmul_precision"].cause == "floats.torch.matmul_allow_tf32"


def test_tf32_is_never_blamed_for_a_cpu_sum(h100: dict[str, Any]) -> None:
    def tf32(facts: dict[str, Any]) -> None:
        facts["torch"].update(matmul_allow_tf32=True, float32_matmul_precision="high")
        facts["blas"]["torch_cpu_capability"] = "AVX2"

    found = judge(with_probe(h100), changed(with_probe(h100, **{SUM: "c", f"{SUM}-t1": "d"}), tf32))
    kernel = found[f"numerics.{SUM}-t1"]
    assert kernel.hint == "ATen's CPU capability changed (AVX512 → AVX2)"
    assert kernel.cause == "blas.torch_cpu_capability"
    assert "matmul" not in found[f"numerics.{SUM}"].hint and "TF32" not in found[f"numerics.{SUM}"].hint


def test_a_moved_threaded_kernel_with_its_single_thread_run_intact_is_threads(h100: dict[str, Any]) -> None:
    found = judge(with_probe(h100), changed(with_probe(h100, **{SUM: "c"}), omp("4")))
    assert found[f"numerics.{SUM}"].hint == "thread count changed 12 → 4"
    # kernel -> threads.torch_intraop -> floats.env.OMP_NUM_THREADS
    assert found[f"numerics.{SUM}"].cause == "threads.torch_intraop"
    assert found["threads.torch_intraop"].cause == "floats.env.OMP_NUM_THREADS"


def test_a_kernel_blamed_on_an_ignored_knob_falls_back_to_its_cause(h100: dict[str, Any]) -> None:
    lock = lock_of(h100)
    policy = Policy(rules={**lock.policy.rules, "threads.*": Rule(rule="ignore", severity="warn")})
    found = judge(with_probe(h100), changed(with_probe(h100, **{SUM: "c"}), omp("4")), policy)
    assert "threads.torch_intraop" not in found
    assert found[f"numerics.{SUM}"].cause == "floats.env.OMP_NUM_THREADS"


# --- 5. driver hints name driver versions as driver versions and CUDA versions as CUDA versions ---------------------


def test_no_driver_loaded_names_the_driver_and_the_cuda_version(h100: dict[str, Any]) -> None:
    found = judge(h100, changed(h100, lambda f: f.update(gpu={"nvml_error": "no NVIDIA driver loaded"})))
    assert found["gpu.driver"].hint.startswith(
        "no NVIDIA driver is loaded here; the lock needs driver 550.54.15 or later")
    assert found["gpu.cuda_driver"].hint.startswith(
        "no NVIDIA driver is loaded here; the lock needs a driver that supports CUDA 12.4 or later")
    assert found["gpu.cuda_driver"].cause == "gpu.driver"
    assert found["gpu.count"].cause == "gpu.driver"
    assert "no NVIDIA driver is loaded" in found["gpu.count"].hint


def test_an_old_driver_names_driver_and_cuda_numbers_apart(h100: dict[str, Any]) -> None:
    found = judge(h100, changed(h100, lambda f: f["gpu"].update(driver="470.57.02", cuda_driver="11.4")))
    assert found["gpu.driver"].hint.startswith(
        "NVIDIA driver 470.57.02 is older than the locked driver 550.54.15")
    assert found["gpu.cuda_driver"].hint.startswith(
        "this node's driver supports CUDA up to 11.4; the lock needs one supporting CUDA 12.4 or later")
    assert found["gpu.driver_for_cuda"].hint == (
        "the locked CUDA needs driver >= 525.60.13 (CUDA 12); this node has driver 470.57.02: upgrade the driver")
    assert found["gpu.driver_for_cuda"].cause == "gpu.driver"


# --- 6. between two locks: facts about A and B, never install or export advice -------------------------------------


def test_between_locks_hints_speak_of_a_and_b(h100: dict[str, Any]) -> None:
    def six(facts: dict[str, Any]) -> None:
        facts["packages"].append({"name": "six", "version": "1.16.0", "location": "/x",
                                  "metadata_dir": "six.dist-info"})

    found = between(changed(h100, six), changed(h100, omp(None)))
    assert found["packages.six"].hint == "A has six 1.16.0, B has none"
    assert found["floats.env.OMP_NUM_THREADS"].hint.startswith("OMP_NUM_THREADS is 12 in A, unset in B: ")
    assert found["threads.torch_intraop"].hint.startswith(
        "torch intra-op threads are 12 in A, 48 in B (OMP_NUM_THREADS is 12 in A, unset in B)")
    assert found["threads.torch_intraop"].cause == "floats.env.OMP_NUM_THREADS"


def test_between_locks_gives_no_advice_across_every_pair_of_hosts() -> None:
    for a, b in every_pair():
        comparison = compare_locks(lock_of(load_facts(a)), lock_of(load_facts(b)), between_locks=True)
        for f in comparison.findings:
            assert "`" not in f.hint, f
            assert not re.search(r"\b(here|now|export|re-capture|in the job)\b|pip (install|uninstall)", f.hint), f


# --- 7. commands are whole and in backticks -------------------------------------------------------------------------


def test_commands_are_whole_and_in_backticks(h100: dict[str, Any]) -> None:
    def older(facts: dict[str, Any]) -> None:
        facts["cuda"]["library_versions"]["cublaslt"] = 120101
        facts["env"]["OMP_NUM_THREADS"] = "4"
        facts["env"]["NVIDIA_TF32_OVERRIDE"] = "0"
        facts["packages"] = [p for p in facts["packages"] if p["name"] != "sympy"]

    found = judge(h100, changed(h100, older))
    assert "`pip install nvidia-cublas-cu12==12.4.2.65`" in found["cuda.cublas"].hint
    assert "`export OMP_NUM_THREADS=12`" in found["floats.env.OMP_NUM_THREADS"].hint
    assert "`unset NVIDIA_TF32_OVERRIDE`" in found["floats.env.NVIDIA_TF32_OVERRIDE"].hint
    assert "`pip install sympy==" in found["packages.sympy"].hint
    for a, b in every_pair():
        for f in compare_locks(lock_of(load_facts(a)), lock_of(load_facts(b))).findings:
            bare = outside_code(f.hint)
            assert not re.search(r"pip (install|uninstall)|export [A-Z]|envlock (verify|capture)", bare), f


# --- 8. causes ------------------------------------------------------------------------------------------------------


def test_thread_env_var_is_the_cause_of_the_thread_counts(h100: dict[str, Any]) -> None:
    found = judge(h100, changed(h100, omp("4")))
    assert found["threads.torch_intraop"].cause == "floats.env.OMP_NUM_THREADS"
    assert found["blas.libraries.numpy-openblas.num_threads"].cause == "floats.env.OMP_NUM_THREADS"
    assert found["blas.libraries.torch-openmp.num_threads"].cause == "floats.env.OMP_NUM_THREADS"
    assert found["floats.env.OMP_NUM_THREADS"].cause == ""
    assert "(OMP_NUM_THREADS is 4 (was 12))" in found["threads.torch_intraop"].hint


def test_openblas_num_threads_beats_omp_for_openblas(h100: dict[str, Any]) -> None:
    def edit(facts: dict[str, Any]) -> None:
        facts["env"]["OPENBLAS_NUM_THREADS"] = "2"
        facts["blas"]["threadpool_info"][0]["num_threads"] = 2

    found = judge(h100, changed(h100, edit))
    assert found["blas.libraries.numpy-openblas.num_threads"].cause == "floats.env.OPENBLAS_NUM_THREADS"
    assert "OPENBLAS_NUM_THREADS is 2 (was unset)" in found["blas.libraries.numpy-openblas.num_threads"].hint


def test_coretype_and_tf32_override_are_causes(h100: dict[str, Any]) -> None:
    def edit(facts: dict[str, Any]) -> None:
        facts["env"].update(OPENBLAS_CORETYPE="Haswell", TORCH_ALLOW_TF32_CUBLAS_OVERRIDE="1")
        facts["blas"]["threadpool_info"][0]["architecture"] = "Haswell"
        facts["torch"]["matmul_allow_tf32"] = True

    found = judge(h100, changed(h100, edit))
    assert found["blas.libraries.numpy-openblas.architecture"].cause == "floats.env.OPENBLAS_CORETYPE"
    tf32 = found["floats.torch.matmul_allow_tf32"]
    assert tf32.cause == "floats.env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"
    assert tf32.hint.endswith("`unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE`")
    assert "torch.backends.cuda.matmul.allow_tf32 = False" not in tf32.hint


def test_a_torch_upgrade_is_the_cause_of_its_build_facts(h100: dict[str, Any]) -> None:
    def edit(facts: dict[str, Any]) -> None:
        next(p for p in facts["packages"] if p["name"] == "torch")["version"] = "2.5.0+cu124"
        facts["torch"]["version"] = "2.5.0+cu124"
        next(p for p in facts["packages"] if p["name"] == "nvidia-cublas-cu12")["version"] = "12.4.5.8"
        facts["cuda"]["library_versions"]["cublaslt"] = 120405

    found = judge(h100, changed(h100, edit))
    assert found["floats.torch.version"].cause == "packages.torch.version"
    assert found["cuda.cublas"].cause == "packages.nvidia-cublas-cu12.version"
    assert "`pip install torch==2.4.1+cu124`" in found["floats.torch.version"].hint


def test_every_cause_is_a_finding_of_the_same_report_and_no_chain_loops() -> None:
    for a, b in every_pair():
        for between_locks in (False, True):
            findings = compare_locks(lock_of(load_facts(a)), lock_of(load_facts(b)),
                                     between_locks=between_locks).findings
            paths = {f.path: f for f in findings}
            for f in findings:
                seen = {f.path}
                node = f.cause
                while node:
                    assert node in paths, (a.parent.name, b.parent.name, f)
                    assert node not in seen, f"cycle through {f.path}"
                    seen.add(node)
                    node = paths[node].cause

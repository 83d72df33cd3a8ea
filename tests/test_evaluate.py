"""The rules, judged purely: evaluate(lock, observed, policy) over recorded facts, with no file and no CLI.

Each test changes one fact of a recorded H100 host (or the devbox) and asserts the finding a user would read.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock
from envlock.errors import LockError, UsageError
from envlock.facts import load_facts
from envlock.findings import Report
from envlock.model import Lock, Policy, Rule
from envlock.policy import merge_policy
from envlock.verifying import Observed, evaluate

HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
H100 = HOSTS / "linux-nvidia550-cuda12.4-sapphirerapids-h100x8" / "facts.json"
DEVBOX = HOSTS / "linux-nogpu-nocuda-x86_64_v4-devbox" / "facts.json"
CREATED = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def h100() -> dict[str, Any]:
    return load_facts(H100)


def judge(locked: dict[str, Any], now: dict[str, Any], policy: Policy | None = None, **kwargs: Any) -> Report:
    lock = build_lock(locked, created=CREATED)
    current = build_lock(now, policy=lock.policy, created=CREATED)
    return evaluate(lock, Observed(current=current, skipped=("numerics",)), policy or lock.policy, **kwargs)


def changed(facts: dict[str, Any], edit: Any) -> dict[str, Any]:
    out = copy.deepcopy(facts)
    edit(out)
    return out


def only(report: Report) -> tuple[str, str, str, str]:
    (finding,) = report.findings
    return finding.path, finding.expected, finding.actual, finding.severity


def test_the_same_facts_give_no_finding(h100: dict[str, Any]) -> None:
    report = judge(h100, h100, name="envlock.lock")
    assert report.ok and report.findings == () and report.lock == "envlock.lock"


def test_another_package_version_is_an_error_with_the_install_line(h100: dict[str, Any]) -> None:
    def bump(facts: dict[str, Any]) -> None:
        numpy = next(p for p in facts["packages"] if p["name"] == "numpy")
        numpy["version"] = "9.9.9"

    report = judge(h100, changed(h100, bump))
    path, expected, actual, severity = only(report)
    assert (path, actual, severity) == ("packages.numpy.version", "9.9.9", "error")
    assert f"pip install numpy=={expected}" in report.findings[0].hint


def test_a_missing_package_is_an_error_and_an_extra_one_a_warning(h100: dict[str, Any]) -> None:
    def drop(facts: dict[str, Any]) -> None:
        facts["packages"] = [p for p in facts["packages"] if p["name"] != "sympy"]

    assert only(judge(h100, changed(h100, drop)))[::3] == ("packages.sympy", "error")
    extra = judge(changed(h100, drop), h100)
    assert only(extra)[::3] == ("packages.sympy", "warn") and extra.ok


def test_a_numerics_env_var_set_since_capture_names_the_variable(h100: dict[str, Any]) -> None:
    report = judge(h100, changed(h100, lambda f: f["env"].update(NVIDIA_TF32_OVERRIDE="0")))
    assert only(report) == ("floats.env.NVIDIA_TF32_OVERRIDE", "(unset)", "0", "error")


def test_tf32_flipped_gives_the_line_that_sets_it_back(h100: dict[str, Any]) -> None:
    report = judge(h100, changed(h100, lambda f: f["torch"].update(matmul_allow_tf32=True)))
    assert only(report) == ("floats.torch.matmul_allow_tf32", "false", "true", "error")
    assert "torch.backends.cuda.matmul.allow_tf32 = False" in report.findings[0].hint


def test_an_older_driver_is_an_error_and_a_newer_one_is_not(h100: dict[str, Any]) -> None:
    older = judge(h100, changed(h100, lambda f: f["gpu"].update(driver="535.54.03")))
    assert "gpu.driver" in {f.path for f in older.errors}
    newer = judge(h100, changed(h100, lambda f: f["gpu"].update(driver="570.86.10")))
    assert newer.ok


def _devices(facts: dict[str, Any], **values: Any) -> None:
    for device in facts["gpu"]["devices"]:
        device.update(values)


def test_another_gpu_architecture_is_an_error_per_device(h100: dict[str, Any]) -> None:
    report = judge(h100, changed(h100, lambda f: _devices(f, compute_capability="8.0")))
    paths = {f.path for f in report.errors}
    assert {f"gpu.devices.{i}.compute_capability" for i in range(8)} <= paths


def test_another_sm_count_is_an_error(h100: dict[str, Any]) -> None:
    def fewer(facts: dict[str, Any]) -> None:
        for device in facts["gpu"]["cuda_devices"]:
            device["sm_count"] = 114

    report = judge(h100, changed(h100, fewer))
    assert "gpu.devices.0.sm_count" in {f.path for f in report.errors}
    assert "cuBLAS picks kernels by SM count" in next(f.hint for f in report.findings
                                                     if f.path == "gpu.devices.0.sm_count")


def test_fewer_gpus_is_an_error_more_is_not(h100: dict[str, Any]) -> None:
    def keep(n: int) -> Any:
        def edit(facts: dict[str, Any]) -> None:
            facts["gpu"]["devices"] = facts["gpu"]["devices"][:n]
            facts["gpu"]["cuda_devices"] = facts["gpu"]["cuda_devices"][:n]
        return edit

    fewer = judge(h100, changed(h100, keep(4)))
    assert ("gpu.count", "8", "4", "error") in {(f.path, f.expected, f.actual, f.severity) for f in fewer.findings}
    assert judge(changed(h100, keep(4)), h100).ok


def test_a_gpu_lock_on_a_cpu_machine_says_no_gpu_is_visible(h100: dict[str, Any]) -> None:
    report = judge(h100, load_facts(DEVBOX))
    count = next(f for f in report.findings if f.path == "gpu.count")
    assert count.severity == "error" and "none is visible here" in count.hint


def test_the_command_line_overrides_the_project_and_the_lock(h100: dict[str, Any]) -> None:
    lock = build_lock(h100, created=CREATED)
    now = changed(h100, lambda f: f["env"].update(OMP_NUM_THREADS="1"))
    project = ("pyproject.toml", {"policy": {"rules": {"floats.env.OMP_NUM_THREADS": {"rule": "ignore"}}}})
    assert not judge(h100, now).ok
    quiet = merge_policy(lock.policy, ("pyproject.toml", project[1]["policy"]))
    assert judge(h100, now, quiet).findings == ()
    loud_again = merge_policy(lock.policy, ("pyproject.toml", project[1]["policy"]), warn=["floats.env.*"])
    assert only(judge(h100, now, loud_again))[::3] == ("floats.env.OMP_NUM_THREADS", "warn")
    ignored = merge_policy(lock.policy, ignore=["floats.env.*"])
    assert ignored.rules["floats.env.*"] == Rule(rule="ignore", severity="warn")
    assert judge(h100, now, ignored).findings == ()


def test_a_bad_project_policy_names_its_file_and_place(h100: dict[str, Any]) -> None:
    lock: Lock = build_lock(h100, created=CREATED)
    with pytest.raises(LockError, match=r"^pyproject.toml: tool.envlock.rules.cpu\.\*"):
        merge_policy(lock.policy, ("pyproject.toml", {"rules": {"cpu.*": {"rule": "sometimes"}}}))
    with pytest.raises(UsageError, match="--ignore 'no such'"):
        merge_policy(lock.policy, ignore=["no such"])


def test_modified_files_become_one_error_per_package(h100: dict[str, Any]) -> None:
    lock = build_lock(h100, created=CREATED)
    observed = Observed(current=lock, skipped=("numerics",),
                        modified={"numpy": (("numpy/core/a.py", "modified"), ("numpy/b.py", "missing"))})
    report = evaluate(lock, observed, lock.policy)
    path, _, actual, severity = only(report)
    assert (path, actual, severity) == ("packages.numpy.files", "2 file(s) changed", "error")
    assert "numpy/core/a.py (modified), numpy/b.py (missing)" in report.findings[0].hint


def test_skipped_sections_are_reported_and_not_judged(h100: dict[str, Any]) -> None:
    lock = build_lock(h100, created=CREATED)
    now = build_lock(changed(h100, lambda f: f["torch"].update(matmul_allow_tf32=True)), policy=lock.policy,
                     created=CREATED)
    report = evaluate(lock, Observed(current=now, skipped=("floats.torch", "numerics")), lock.policy)
    assert report.findings == () and report.skipped == ("floats.torch", "numerics")

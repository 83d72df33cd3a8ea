"""Edge cases a user hits without meaning to: odd terminals, closed pipes, empty variables, stray metadata."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock
from envlock.lockfile import dumps, load, seal
from envlock.probes.packages import collect_packages
from tests.helpers import ENVLOCK, clean_env, console, write_lock


@pytest.mark.slow
def test_a_terminal_that_cannot_show_arrows_still_gets_the_verdict(console_lock: Path) -> None:
    done = console("verify", "--fast", console_lock, cwd=console_lock.parent, env=clean_env(PYTHONIOENCODING="ascii"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("envlock verify: OK")
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_closed_pipe_or_a_full_disk_is_one_line_and_exit_2(console_lock: Path) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run([str(ENVLOCK), "verify", "--fast", str(console_lock)], stdout=full,
                              stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=console_lock.parent, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["envlock: error: cannot write the output: No space left on device"]


def test_empty_variables_count_as_unset(console_lock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envlock.verifying import verify

    monkeypatch.setenv("OMP_NUM_THREADS", "")
    monkeypatch.setenv("PYTHONHASHSEED", "")
    report = verify(console_lock, fast=True)
    assert [f.path for f in report.findings if f.path.startswith("floats.env.")] == []


def test_an_out_of_range_source_date_epoch_is_exit_2(tmp_path: Path, cli: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "9" * 20)
    result = cli("capture", "--no-numerics", "--no-torch", "-o", str(tmp_path / "e.lock"))
    assert result.exit_code == 2
    assert "SOURCE_DATE_EPOCH" in result.stderr and "out of range" in result.stderr
    assert not (tmp_path / "e.lock").exists()


@pytest.mark.slow
def test_fast_verify_in_a_script_that_loaded_numpy_but_not_torch(console_lock: Path) -> None:
    code = ("import numpy, envlock, sys; r = envlock.verify(sys.argv[1], fast=True); "
            "print(r.ok, sorted(f.path for f in r.findings))")
    done = subprocess.run([sys.executable, "-c", code, str(console_lock)], capture_output=True, text=True,
                          env=clean_env(), cwd=console_lock.parent, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True []"


@pytest.mark.slow
def test_the_new_fp32_precision_api_does_not_break_verify(console_lock: Path) -> None:
    code = ("import torch, envlock, sys; torch.backends.cuda.matmul.fp32_precision = 'tf32'; "
            "r = envlock.verify(sys.argv[1], fast=True); "
            "print(sorted(f.path for f in r.findings if f.path.startswith('floats.torch')))")
    done = subprocess.run([sys.executable, "-c", code, str(console_lock)], capture_output=True, text=True,
                          env=clean_env(), cwd=console_lock.parent, check=False)
    assert done.returncode == 0, done.stderr
    assert "floats.torch.matmul_fp32_precision" in done.stdout


def test_an_editable_projects_egg_info_does_not_hide_the_installed_record(tmp_path: Path) -> None:
    project, site = tmp_path / "project", tmp_path / "site"
    (project / "tiny.egg-info").mkdir(parents=True)
    (project / "tiny.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: tiny\nVersion: 1.0\n")
    info = site / "tiny-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny\nVersion: 1.0\n")
    (info / "RECORD").write_text("tiny/__init__.py,sha256=abc,3\n")
    (info / "direct_url.json").write_text('{"url": "file:///src/tiny", "dir_info": {"editable": true}}')

    (fact,) = collect_packages([str(project), str(site)])
    assert fact["metadata_dir"] == "tiny-1.0.dist-info"
    assert fact["direct_url"]["dir_info"] == {"editable": True}
    assert fact["files"].startswith("sha256:")


def test_a_lock_cannot_make_the_probe_run_for_hours(machine_facts: dict[str, Any], tmp_path: Path) -> None:
    from envlock.probes.numerics import KernelSpec, run_kernel

    result = run_kernel(KernelSpec("mm", "torch", "cpu", "float32", "60000x60000x60000"))
    assert "larger than the probe runs" in result["error"]

    facts = copy.deepcopy(machine_facts)
    lock = build_lock(facts, created="2024-01-01T00:00:00Z")
    policy = lock.policy.__class__(missing_packages="error", extra_packages="warn",
                                   probe_shapes=("99999x99999x99999",), rules=dict(lock.policy.rules))
    path = tmp_path / "envlock.lock"
    path.write_text(dumps(seal(lock.__class__(**{**lock.__dict__, "policy": policy}), envlock_version="0.1.0",
                               created=lock.lock.created)))
    assert load(path)[0].policy.probe_shapes == ("99999x99999x99999",)
    done = console("capture", "-o", path, cwd=tmp_path)
    assert done.returncode == 2
    assert "policy.probe_shapes" in done.stderr and "too large" in done.stderr


def test_hints_name_mkl_threads_and_inter_op_threads(machine_facts: dict[str, Any], tmp_path: Path) -> None:
    from envlock.verifying import verify

    lock = write_lock(machine_facts, tmp_path / "envlock.lock")
    later = copy.deepcopy(machine_facts)
    later["env"]["MKL_NUM_THREADS"] = "1"
    later["torch"]["num_threads"] = 1
    later["torch"]["num_interop_threads"] = 1
    report = verify(lock, facts=later)
    hints = {f.path: f.hint for f in report.findings}
    assert "MKL_NUM_THREADS is 1 (was unset)" in hints["threads.torch_intraop"]
    assert "torch.set_num_interop_threads" in hints["threads.torch_interop"]
    assert os.environ.get("MKL_NUM_THREADS") is None


def test_an_unrelated_broken_pyproject_above_the_lock_is_not_envlocks_business(
    machine_facts: dict[str, Any], tmp_path: Path
) -> None:
    from envlock.verifying import verify

    (tmp_path / "pyproject.toml").write_text("[project\nname = 'half-written'\n")
    lock = write_lock(machine_facts, tmp_path / "sub" / "envlock.lock")
    assert verify(lock, facts=machine_facts).ok


def test_fast_facts_without_torch_or_numpy_loaded_have_no_blas_section(monkeypatch: pytest.MonkeyPatch) -> None:
    """`collect_facts(fast=True, use_torch=False)` in a process that has loaded neither numpy nor torch: no BLAS
    facts to read, and none to strip (it used to fail with KeyError: 'blas')."""
    import sys

    from envlock.facts import collect_facts

    for name in ("numpy", "torch"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    facts = collect_facts(fast=True, use_torch=False)
    assert "blas" not in facts and "packages" in facts

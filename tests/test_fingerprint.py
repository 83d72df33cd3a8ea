"""The user's own fingerprint (docs/fingerprint.md): recorded at capture, judged at verify like the probe's kernels.

1. The documented example, as written: capture, a clean verify, a thread change and a changed weight, each named.
2. The lock: results under numerics.fingerprints, in the content hash; [tool.envlock] refuses the key.
3. What a user gets wrong, through the real console script: one line and the exit code (2, or 3 at verify).
4. Pure parts: what fingerprint() records, and the diagnosis from recorded results.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import envlock
from envlock.compare.numerics import compare_numerics
from envlock.errors import EnvironmentUnavailable, ExitCode, LockError, UsageError, exit_for
from envlock.lockfile import load
from envlock.model import NumericsSection
from envlock.policy import default_policy
from envlock.probes.numerics import parse_numerics
from envlock.probes.numerics.fingerprint import fingerprint, load_source, run_source
from tests.helpers import console

DOC = Path(__file__).resolve().parent.parent / "docs" / "fingerprint.md"
EXAMPLE = re.compile(r"<!-- fingerprint-example: (?P<what>[^>]*?) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
MODULES = ("mymodel_fp", "broken_fp")


def doc_blocks() -> dict[str, str]:
    return {m.group("what"): m.group("body") for m in EXAMPLE.finditer(DOC.read_text(encoding="utf-8"))}


def add_to_policy(lock: Path, line: str) -> None:
    """Hand-edit the lock's [policy] as the docs say: a line next to missing_packages."""
    text = lock.read_text(encoding="utf-8")
    assert 'missing_packages = "error"\n' in text
    lock.write_text(text.replace('missing_packages = "error"\n', f'missing_packages = "error"\n{line}', 1),
                    encoding="utf-8")


def fingerprints_of(lock: Path) -> NumericsSection:
    loaded, _ = load(lock)
    (target,) = loaded.targets.values()
    assert target.numerics is not None
    return target.numerics


@pytest.fixture(autouse=True)
def _forget_user_modules() -> Iterator[None]:
    """Each test imports the user's module afresh (the way a new process would)."""
    yield
    for name in MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def torch_mod() -> Any:
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def _example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with the documented module, and a lock captured with its documented registration (once)."""
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("example")
    blocks = doc_blocks()
    (work / "mymodel_fp.py").write_text(blocks["mymodel_fp.py"], encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        lock = envlock.capture(work / "envlock.lock").path
        add_to_policy(lock, blocks["policy"])
        envlock.capture(lock)
    sys.modules.pop("mymodel_fp", None)
    return work


@pytest.fixture
def example(_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example project, the current directory for the test."""
    for name in ("mymodel_fp.py", "envlock.lock"):
        (tmp_path / name).write_bytes((_example / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path / "envlock.lock"


def user_module(lock: Path) -> Any:
    """The user's module as verify will find it (imported once: a job's own import is the same module)."""
    import importlib

    sys.path.insert(0, str(lock.parent))
    try:
        return importlib.import_module("mymodel_fp")
    finally:
        sys.path.remove(str(lock.parent))


# --- 1. the documented example -----------------------------------------------------------------------------


def test_the_docs_mark_the_example_and_the_registration() -> None:
    blocks = doc_blocks()
    assert set(blocks) == {"mymodel_fp.py", "policy"}
    assert blocks["policy"] == 'fingerprints = ["mymodel_fp:model_fingerprint"]\n'


@pytest.mark.torch
def test_the_example_is_recorded_in_the_lock_and_verifies_clean(example: Path) -> None:
    recorded = fingerprints_of(example).fingerprints
    assert list(recorded) == ["tiny"]
    tiny = recorded["tiny"]
    assert tiny.source == "mymodel_fp:model_fingerprint"
    assert tiny.outputs == ("float32[2x256]", "float32[]")
    assert tiny.params_sha256.startswith("sha256:") and tiny.repeat_equal
    text = example.read_text(encoding="utf-8")
    assert ".numerics.fingerprints.tiny]" in text and 'source = "mymodel_fp:model_fingerprint"' in text
    for i in range(3):
        report = envlock.verify(str(example))
        assert report.findings == (), f"run {i}: {report.findings}"
    shown = console("show", example, cwd=example.parent)
    assert shown.returncode == 0 and "; fingerprints: tiny (mymodel_fp:model_fingerprint)" in shown.stdout, shown


@pytest.mark.torch
def test_one_thread_moves_the_fingerprint_and_the_single_thread_run_proves_why(
        example: Path, torch_mod: Any) -> None:
    before = torch_mod.get_num_threads()
    if before < 2:
        pytest.skip(f"torch uses {before} thread here: nothing would change at 1")
    tiny = fingerprints_of(example).fingerprints["tiny"]
    if tiny.single_thread_sha256 == tiny.output_sha256:
        pytest.skip("the example gives the same bits at one thread on this machine")
    torch_mod.set_num_threads(1)
    try:
        report = envlock.verify(str(example))
    finally:
        torch_mod.set_num_threads(before)

    found = {f.path: f for f in report.findings}["numerics.fingerprints.tiny"]
    assert found.actual == f"order drift: {tiny.single_thread_sha256[7:19]}"
    assert found.severity == "error"
    assert found.hint == f"thread count changed {before} → 1: these are the bits of the locked single-thread run"
    assert found.cause == "threads.torch_intraop"
    assert not report.ok


@pytest.mark.torch
def test_a_changed_weight_is_the_model_not_the_environment(example: Path, torch_mod: Any) -> None:
    mymodel_fp = user_module(example)

    with torch_mod.no_grad():
        mymodel_fp.model.body[0].weight[0, 0] += 0.5

    report = envlock.verify(str(example))

    (found,) = report.findings
    assert found.path == "numerics.fingerprints.tiny"
    assert found.actual.startswith("model changed: parameters ") and found.severity == "error"
    assert found.hint.startswith("the model's parameters differ from the lock's")
    assert "the model changed, not the environment" in found.hint


@pytest.mark.torch
def test_other_example_inputs_make_the_fingerprint_invalid(example: Path, torch_mod: Any) -> None:
    mymodel_fp = user_module(example)

    mymodel_fp.inputs = mymodel_fp.inputs * 2

    (found,) = envlock.verify(str(example)).findings
    assert found.path == "numerics.fingerprints.tiny" and found.actual.startswith("invalid probe: inputs ")
    assert "example inputs" in found.hint


@pytest.mark.torch
def test_an_ignore_rule_silences_the_fingerprint(example: Path, torch_mod: Any) -> None:
    mymodel_fp = user_module(example)

    mymodel_fp.inputs = mymodel_fp.inputs * 2
    assert envlock.verify(str(example), ignore=["numerics.fingerprints.tiny"]).findings == ()


@pytest.mark.torch
def test_verify_fast_runs_no_fingerprint(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mymodel_fp = user_module(example)

    def refuse() -> None:
        raise AssertionError("verify --fast ran the fingerprint")

    monkeypatch.setattr(mymodel_fp, "model_fingerprint", refuse)
    report = envlock.verify(str(example), fast=True)
    assert report.ok and "numerics" in report.skipped


# --- 2. the lock ---------------------------------------------------------------------------------------------


@pytest.mark.torch
def test_the_fingerprint_is_covered_by_the_content_hash(example: Path) -> None:
    tiny = fingerprints_of(example).fingerprints["tiny"]
    text = example.read_text(encoding="utf-8")
    example.write_text(text.replace(tiny.output_sha256, "sha256:" + "0" * 64), encoding="utf-8")
    with pytest.raises(LockError, match="content"):
        load(example)


@pytest.mark.torch
def test_tool_envlock_refuses_fingerprints_and_names_the_lock_policy(example: Path) -> None:
    (example.parent / "pyproject.toml").write_text(
        '[tool.envlock]\nfingerprints = ["mymodel_fp:model_fingerprint"]\n', encoding="utf-8")
    with pytest.raises(LockError) as caught:
        envlock.verify(str(example))
    code, line = exit_for(caught.value)
    assert code == ExitCode.BAD_INPUT
    assert "tool.envlock.fingerprints" in line and "the lock's [policy]" in line


# --- 3. what users get wrong: one line, the exit code ----------------------------------------------------------

BROKEN = """
import os
import numpy as np


def fails() -> object:
    if os.environ.get("FP_FAIL") == "1":
        raise RuntimeError("weights file missing")
    return np.arange(8, dtype=np.float32) * np.float32(0.5)
"""


@pytest.fixture(scope="module")
def base_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lock without the probe, captured once by the console script (tests copy it)."""
    work = tmp_path_factory.mktemp("fp")
    done = console("capture", "--no-numerics", "-o", "envlock.lock", cwd=work)
    assert done.returncode == 0, done.stderr
    return work / "envlock.lock"


@pytest.fixture
def project(base_lock: Path, tmp_path: Path) -> Path:
    (tmp_path / "broken_fp.py").write_text(BROKEN, encoding="utf-8")
    lock = tmp_path / "envlock.lock"
    lock.write_bytes(base_lock.read_bytes())
    return lock


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "says"), [
    ('"no_such_module_fp:f"', "fingerprint no_such_module_fp:f: cannot import no_such_module_fp: "
                              "ModuleNotFoundError: No module named 'no_such_module_fp'"),
    ('"broken_fp:absent"', "fingerprint broken_fp:absent: broken_fp has no attribute absent"),
    ('"broken_fp:np"', "fingerprint broken_fp:np: np is a module, not a callable"),
])
def test_a_name_that_does_not_resolve_is_one_line_and_exit_2(project: Path, entry: str, says: str) -> None:
    add_to_policy(project, f"fingerprints = [{entry}]\n")
    before = project.read_bytes()

    done = console("capture", "-o", project, cwd=project.parent)

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [f"envlock: error: {says}"], done.stderr
    assert project.read_bytes() == before


@pytest.mark.slow
def test_a_registration_that_is_not_module_colon_function_is_refused_where_it_is(project: Path) -> None:
    add_to_policy(project, 'fingerprints = ["broken_fp.fails"]\n')

    done = console("capture", "-o", project, cwd=project.parent)

    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "policy.fingerprints" in line and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_fingerprint_that_raises_is_exit_2_at_capture_and_exit_3_at_verify(project: Path) -> None:
    from tests.helpers import clean_env

    add_to_policy(project, 'fingerprints = ["broken_fp:fails"]\n')
    failing = clean_env(FP_FAIL="1")
    before = project.read_bytes()

    done = console("capture", "-o", project, cwd=project.parent, env=failing)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "fingerprint broken_fp:fails raised RuntimeError: weights file missing" in line
    assert project.read_bytes() == before

    done = console("capture", "-o", project, cwd=project.parent)
    assert done.returncode == 0, done.stderr
    assert list(fingerprints_of(project).fingerprints) == ["broken_fp.fails"]  # its tensors, under its own name

    done = console("verify", project, cwd=project.parent, env=failing)
    assert done.returncode == 3, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "fingerprint broken_fp:fails raised RuntimeError: weights file missing at verify" in line

    done = console("verify", project, cwd=project.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_exit_codes_of_the_errors_follow_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_fp.py").write_text(BROKEN.replace("import numpy as np", "np = None"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FP_FAIL", "1")
    with pytest.raises(UsageError):
        run_source("broken_fp:fails")
    with pytest.raises(EnvironmentUnavailable) as caught:
        run_source("broken_fp:fails", at_verify=True)
    assert exit_for(caught.value)[0] == ExitCode.UNAVAILABLE
    with pytest.raises(UsageError, match="expected module:function"):
        load_source("broken_fp")


# --- 4. pure: what fingerprint() records, and the diagnosis ------------------------------------------------------


def test_fingerprint_of_numpy_arrays_without_torch_state() -> None:
    np = pytest.importorskip("numpy")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    first = fingerprint(lambda a: {"double": a * 2, "sum": a.sum(dtype=np.float64)}, x, name="np-example")
    again = fingerprint(lambda a: {"double": a * 2, "sum": a.sum(dtype=np.float64)}, x, name="np-example")
    assert first == again
    assert first.outputs == ("float32[3x4]", "float64[]")
    assert first.params_sha256 == "" and first.repeat_equal
    moved = fingerprint(lambda a: {"double": a * 2, "sum": a.sum(dtype=np.float64) + 1}, x, name="np-example")
    assert moved.output_sha256 != first.output_sha256 and moved.input_sha256 == first.input_sha256


@pytest.mark.torch
def test_a_model_in_training_mode_with_dropout_does_not_repeat(torch_mod: Any) -> None:
    model = torch_mod.nn.Dropout(0.5).train()
    result = fingerprint(model, torch_mod.ones(64), name="dropout")
    assert result.repeat_equal is False


@pytest.mark.parametrize("name", ["", "has space", "a" * 129, "-lead"])
def test_a_bad_name_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError, match="fingerprint name"):
        fingerprint(lambda: [1.0], name=name)


def test_a_callable_returning_no_tensor_is_a_usage_error() -> None:
    pytest.importorskip("numpy")
    with pytest.raises(UsageError, match="returned no tensor or array"):
        fingerprint(lambda: 3.0, name="plain")
    with pytest.raises(UsageError, match="outputs is a object"):
        fingerprint(object, name="odd")


def _hash(c: str) -> str:
    return "sha256:" + c * 64


def _section(print_fields: dict[str, Any], kernel_out: str = "b") -> NumericsSection:
    tiny = {"source": "mymodel_fp:model_fingerprint", "input_sha256": _hash("a"), "output_sha256": _hash("b"),
            "single_thread_sha256": _hash("e"), "params_sha256": _hash("f"), "outputs": ["float32[8]"],
            "repeat_equal": True, **print_fields}
    conv = {"op": "conv2d", "library": "torch", "device": "cpu", "dtype": "float32", "shape": "1x64x32",
            "input_sha256": _hash("a"), "output_sha256": _hash(kernel_out), "repeat_equal": True}
    section = parse_numerics({"probe": "envlock-probe-1", "generator": "lowbias32-v1",
                              "kernels": {"torch-cpu-conv2d-float32-1x64x32": conv}, "fingerprints": {"tiny": tiny}})
    assert section is not None
    return section


def test_a_fingerprint_that_moves_with_a_builtin_kernel_takes_its_cause() -> None:
    want, have = _section({}), _section({"output_sha256": _hash("c"), "single_thread_sha256": _hash("d")}, "c")
    context = ({"floats.env.DNNL_MAX_CPU_ISA": None}, {"floats.env.DNNL_MAX_CPU_ISA": "SSE41"})
    found = {f.path: f for f in compare_numerics(want, have, {}, default_policy(), context)}
    tiny = found["numerics.fingerprints.tiny"]
    assert tiny.actual == f"order drift: {_hash('c')[7:19]}"
    assert tiny.cause == "numerics.torch-cpu-conv2d-float32-1x64x32"
    assert tiny.hint.startswith("the built-in kernel torch-cpu-conv2d-float32-1x64x32 moved too (order drift): "
                                "oneDNN's ISA cap (DNNL_MAX_CPU_ISA) changed")
    assert found["numerics.torch-cpu-conv2d-float32-1x64x32"].cause == "floats.env.DNNL_MAX_CPU_ISA"


def test_a_fingerprint_that_moves_alone_is_the_models_own_path() -> None:
    want, have = _section({}), _section({"output_sha256": _hash("c"), "single_thread_sha256": _hash("d")})
    (found,) = compare_numerics(want, have, {}, default_policy(), ({}, {}))
    assert found.path == "numerics.fingerprints.tiny" and found.cause == ""
    assert found.hint.startswith("the model's outputs moved while every built-in kernel and recorded setting held")


def test_a_compatible_rule_allows_the_fingerprints_order_drift() -> None:
    import dataclasses

    from envlock.model import Rule

    policy = default_policy()
    policy = dataclasses.replace(policy, rules={**policy.rules, "numerics.fingerprints.*": Rule("compatible")})
    want, have = _section({}), _section({"output_sha256": _hash("c"), "single_thread_sha256": _hash("d")})
    assert compare_numerics(want, have, {}, policy, ({}, {})) == []
    changed = _section({"params_sha256": _hash("9")})
    (found,) = compare_numerics(want, changed, {}, policy, ({}, {}))
    assert found.actual.startswith("model changed: ") and found.severity == "error"


@pytest.mark.slow
def test_a_registration_added_after_the_capture_is_a_warning_not_a_silent_pass(project: Path) -> None:
    """A hand-added `fingerprints` line does nothing until the next capture records it: verify says so."""
    add_to_policy(project, 'fingerprints = ["no_such_module_fp:f"]\n')

    done = console("verify", "--fast", "--json", project, cwd=project.parent)

    assert done.returncode == 0, done.stdout + done.stderr
    (found,) = [f for f in json.loads(done.stdout)["findings"] if f["path"] == "numerics.fingerprints"]
    assert (found["severity"], found["actual"]) == ("warn", "no_such_module_fp:f not recorded")
    assert "run `envlock capture` again to record it" in found["hint"]
    quiet = console("verify", "--fast", "--ignore", "numerics.fingerprints", project, cwd=project.parent)
    assert quiet.returncode == 0 and "warning" not in quiet.stdout, quiet.stdout + quiet.stderr

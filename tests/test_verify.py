"""verify and diff: each kind of drift is caught, named by its dotted path, explained, and exits 1; no false alarms."""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import inspect
import io
import json
import os
import stat
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import envlock
from envlock.capturing import build_lock
from envlock.cli import main as cli_main
from envlock.cli.commands import BODIES
from envlock.cli.options import BY_NAME, COMMANDS, FAST, argparse_parser
from envlock.compare import modified_findings
from envlock.errors import EnvMismatchError
from envlock.findings import Finding, Report
from envlock.probes.packages import collect_packages
from envlock.verifying import check, modified_files
from envlock.verifying import verify as verify_api
from tests.helpers import (
    Venv,
    clean_env,
    console,
    make_venv,
    openblas_architecture,
    run_ok,
    write_facts,
    write_lock,
)

CREATED = "2024-01-01T00:00:00Z"
BIN = Path(sys.executable).parent
ENVLOCK = BIN / ("envlock.exe" if os.name == "nt" else "envlock")
TINY = "tiny-pkg"


# --- helpers --------------------------------------------------------------------------------------------


class Result(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str




def by_path(findings: Any) -> dict[str, Any]:
    """Findings (objects or JSON dicts) keyed by their dotted path."""
    out = {}
    for finding in findings:
        path = finding["path"] if isinstance(finding, dict) else finding.path
        out[path] = finding
    return out




@pytest.fixture(params=["typer", "argparse"])
def verify_cmd(request: pytest.FixtureRequest, cli: Any, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """`envlock verify ...` through either front end: the typer command, or the argparse job-start path."""

    def run(*args: str | Path) -> Result:
        argv = [str(a) for a in args]
        if request.param == "typer":
            r = cli("verify", *argv)
            return Result(r.exit_code, r.stdout, r.stderr)
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            cli_main(["verify", *argv])
        out = capsys.readouterr()
        return Result(int(info.value.code or 0), out.out, out.err)

    return run


@pytest.fixture
def recorded(tmp_path: Path, machine_facts: dict[str, Any]) -> dict[str, Any]:
    """This machine's facts, a lock built from them, and the facts file a verify can read."""
    lock = write_lock(machine_facts, tmp_path / "lock" / "envlock.lock")
    return {"facts": machine_facts, "lock": lock, "facts_file": write_facts(machine_facts, tmp_path / "now.json")}


def other_python(facts: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(facts)
    major, minor, *_ = changed["python"]["version"].split(".")
    changed["python"]["version"] = f"{major}.{int(minor) + 1}.0"
    return changed


# --- a tiny wheel in a real second virtual environment ---------------------------------------------------


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def build_wheel(folder: Path, version: str) -> Path:
    """`tiny_pkg-{version}-py3-none-any.whl`, written by hand: no network, no build backend."""
    dist_info = f"tiny_pkg-{version}.dist-info"
    files = {
        "tiny_pkg/__init__.py": f'"""Tiny."""\n\nVERSION = "{version}"\n'.encode(),
        "tiny_pkg/util.py": b"def twice(x):\n    return 2 * x\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: tiny-pkg\nVersion: {version}\n\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: envlock-tests\nRoot-Is-Purelib: true\n"
                               b"Tag: py3-none-any\n",
    }
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for path, data in files.items():
        writer.writerow([path, _hash(data), str(len(data))])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    files[f"{dist_info}/RECORD"] = out.getvalue().encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"tiny_pkg-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, data)
    return wheel


def pip(venv: Venv, *args: str | Path) -> None:
    run_ok(sys.executable, "-m", "pip", "--python", venv.python, *args)


def tiny_facts(base: dict[str, Any], venv: Venv) -> dict[str, Any]:
    """This machine's facts, with the packages of the second venv in place of ours."""
    facts = copy.deepcopy(base)
    facts["packages"] = collect_packages([venv.site])
    return facts


@pytest.fixture(scope="module")
def tiny_states(tmp_path_factory: pytest.TempPathFactory, _machine_facts: dict[str, Any]) -> dict[str, Any]:
    """One venv seen three times: tiny-pkg 1.0 installed, then 2.0, then uninstalled."""
    root = tmp_path_factory.mktemp("tiny")
    venv = make_venv(root / "venv")
    states: dict[str, Any] = {}
    for version in ("1.0", "2.0"):
        pip(venv, "install", "--no-index", "--no-deps", "--upgrade", build_wheel(root / "wheels", version))
        states[version] = tiny_facts(_machine_facts, venv)
    pip(venv, "uninstall", "--yes", "tiny-pkg")
    states["none"] = tiny_facts(_machine_facts, venv)
    assert [p["version"] for p in states["1.0"]["packages"]] == ["1.0"]
    assert [p["version"] for p in states["2.0"]["packages"]] == ["2.0"]
    assert states["none"]["packages"] == []
    return states


@pytest.fixture
def tiny_venv(tmp_path: Path) -> Venv:
    """A venv of this test's own with tiny-pkg 1.0, free to be damaged."""
    venv = make_venv(tmp_path / "venv")
    pip(venv, "install", "--no-index", "--no-deps", build_wheel(tmp_path / "wheels", "1.0"))
    return venv


# --- packages ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_another_version_of_a_package_is_an_error(
    tiny_states: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result]
) -> None:
    lock = write_lock(tiny_states["1.0"], tmp_path / "envlock.lock")
    now = write_facts(tiny_states["2.0"], tmp_path / "now.json")

    report = verify_api(lock, facts=tiny_states["2.0"])
    found = by_path(report.findings)[f"packages.{TINY}.version"]
    assert (found.expected, found.actual, found.severity) == ("1.0", "2.0", "error")
    assert f"pip install {TINY}==1.0" in found.hint
    assert not report.ok
    # Another version has other files: said once, as the version.
    assert f"packages.{TINY}.files" not in by_path(report.findings)

    r = verify_cmd(lock, "--facts", now)
    assert r.exit_code == 1, r
    assert f"packages.{TINY}.version" in r.stdout
    assert f"pip install {TINY}==1.0" in r.stdout.replace("\n", " ")


@pytest.mark.slow
def test_the_same_version_installed_again_matches(tiny_states: dict[str, Any], tmp_path: Path) -> None:
    lock = write_lock(tiny_states["1.0"], tmp_path / "envlock.lock")
    assert verify_api(lock, facts=copy.deepcopy(tiny_states["1.0"])).findings == ()


@pytest.mark.slow
def test_a_missing_package_is_an_error(
    tiny_states: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result]
) -> None:
    lock = write_lock(tiny_states["1.0"], tmp_path / "envlock.lock")

    report = verify_api(lock, facts=tiny_states["none"])
    assert [f.path for f in report.findings] == [f"packages.{TINY}"]
    (found,) = report.findings
    assert (found.expected, found.actual, found.severity) == ("1.0", "not installed", "error")
    assert "not installed" in found.hint and f"pip install {TINY}==1.0" in found.hint

    r = verify_cmd(lock, "--facts", write_facts(tiny_states["none"], tmp_path / "now.json"))
    assert r.exit_code == 1, r
    assert f"packages.{TINY}" in r.stdout and "not installed" in r.stdout


@pytest.mark.slow
def test_an_extra_package_only_warns(
    tiny_states: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result]
) -> None:
    lock = write_lock(tiny_states["none"], tmp_path / "envlock.lock")

    report = verify_api(lock, facts=tiny_states["1.0"])
    assert report.ok
    (found,) = report.findings
    assert (found.path, found.expected, found.actual, found.severity) == (
        f"packages.{TINY}", "not installed", "1.0", "warn")
    assert "not in the lock" in found.hint

    r = verify_cmd(lock, "--facts", write_facts(tiny_states["1.0"], tmp_path / "now.json"))
    assert r.exit_code == 0, r
    assert "OK with 1 warning" in r.stdout
    assert f"packages.{TINY}" in r.stdout and "warn" in r.stdout


@pytest.mark.slow
def test_deep_names_the_file_edited_inside_an_installed_package(
    tiny_venv: Venv, machine_facts: dict[str, Any]
) -> None:
    facts = tiny_facts(machine_facts, tiny_venv)
    lock = build_lock(facts, created=CREATED)
    assert modified_findings(modified_files(facts, lock), lock) == []

    module = Path(tiny_venv.site, "tiny_pkg", "util.py")
    module.write_text("def twice(x):\n    return 3 * x\n", encoding="utf-8")
    Path(tiny_venv.site, "tiny_pkg", "__init__.py").unlink()

    (found,) = modified_findings(modified_files(facts, lock), lock)
    assert (found.path, found.severity) == (f"packages.{TINY}.files", "error")
    assert "tiny_pkg/util.py (modified)" in found.hint
    assert "tiny_pkg/__init__.py (missing)" in found.hint
    # tiny-pkg came from a local wheel: the line reinstalls that file, not whatever the index has as 1.0.
    assert f"`pip install --force-reinstall --no-deps '{lock.packages[TINY].url}'`" in found.hint
    assert lock.packages[TINY].source == "local" and lock.packages[TINY].url.endswith("tiny_pkg-1.0-py3-none-any.whl")
    # The RECORD digest did not move: only --deep sees the edit.
    assert verify_api_lock_facts(lock, facts) == ()


def verify_api_lock_facts(lock: Any, facts: dict[str, Any]) -> tuple[Finding, ...]:
    from envlock.compare import compare_locks

    return compare_locks(lock, build_lock(facts, policy=lock.policy, created=CREATED)).findings


@pytest.mark.slow
def test_verify_deep_on_the_console_names_the_edited_file(tiny_venv: Venv, tmp_path: Path) -> None:
    env = clean_env(PYTHONPATH=tiny_venv.site)
    work = tmp_path / "job"
    work.mkdir()
    done = console("capture", "--no-torch", "-o", "envlock.lock", cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    clean = console("verify", "--fast", "--deep", "envlock.lock", cwd=work, env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    Path(tiny_venv.site, "tiny_pkg", "util.py").write_text("def twice(x):\n    return 3 * x\n", encoding="utf-8")
    plain = console("verify", "--fast", "envlock.lock", cwd=work, env=env)
    deep = console("verify", "--fast", "--deep", "--json", "envlock.lock", cwd=work, env=env)

    # An edit that keeps the file's size is seen by re-hashing only.
    assert plain.returncode == 0, plain.stdout
    assert deep.returncode == 1, deep.stdout + deep.stderr
    found = by_path(json.loads(deep.stdout)["findings"])[f"packages.{TINY}.files"]
    assert "tiny_pkg/util.py (modified)" in found["hint"]
    assert "found by size" not in found["hint"]


@pytest.mark.slow
def test_verify_fast_names_a_file_whose_size_is_not_its_records(tiny_venv: Venv, tmp_path: Path) -> None:
    env = clean_env(PYTHONPATH=tiny_venv.site)
    work = tmp_path / "job"
    work.mkdir()
    done = console("capture", "--no-torch", "-o", "envlock.lock", cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    for _ in range(3):  # clean, also once the parsed RECORDs come from the cache
        clean = console("verify", "--fast", "envlock.lock", cwd=work, env=env)
        assert clean.returncode == 0 and "OK" in clean.stdout, clean.stdout + clean.stderr

    util = Path(tiny_venv.site, "tiny_pkg", "util.py")
    util.write_text(util.read_text(encoding="utf-8") + "# patched by hand\n", encoding="utf-8")
    Path(tiny_venv.site, "tiny_pkg", "__init__.py").unlink()
    for args in (("--fast",), ()):
        r = console("verify", *args, "--json", "envlock.lock", cwd=work, env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        found = by_path(json.loads(r.stdout)["findings"])[f"packages.{TINY}.files"]
        assert found["severity"] == "error" and found["actual"] == "2 file(s) changed"
        assert "tiny_pkg/util.py (" in found["hint"] and " bytes in RECORD, " in found["hint"]
        assert "tiny_pkg/__init__.py (missing)" in found["hint"]
        assert "`pip install --force-reinstall --no-deps 'file://" in found["hint"]
        assert "tiny_pkg-1.0-py3-none-any.whl'` restores it" in found["hint"]
        assert "found by size, `envlock verify --deep` re-hashes every file" in found["hint"]

    warned = console("verify", "--fast", "--warn", f"packages.{TINY}.files", "envlock.lock", cwd=work, env=env)
    assert warned.returncode == 0 and "OK with 1 warning" in warned.stdout, warned.stdout + warned.stderr
    ignored = console("verify", "--fast", "--ignore", f"packages.{TINY}.files", "envlock.lock", cwd=work, env=env)
    assert ignored.returncode == 0 and "warning" not in ignored.stdout, ignored.stdout + ignored.stderr


# --- environment variables ---------------------------------------------------------------------------------


@pytest.fixture
def live_lock(tmp_path: Path, machine_facts: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lock of this process, captured with none of the tested env vars set."""
    for name in ("OMP_NUM_THREADS", "PYTHONHASHSEED", "OPENBLAS_CORETYPE"):
        monkeypatch.delenv(name, raising=False)
        machine_facts["env"].pop(name, None)
    return write_lock(machine_facts, tmp_path / "envlock.lock")


@pytest.mark.parametrize("name, value", [("OMP_NUM_THREADS", "3"), ("PYTHONHASHSEED", "0")])
def test_a_numerics_env_var_set_after_capture_is_an_error(
    live_lock: Path, monkeypatch: pytest.MonkeyPatch, cli: Any, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    report = verify_api(live_lock, fast=True)
    assert [f.path for f in report.findings] == [f"floats.env.{name}"]
    (found,) = report.findings
    assert (found.expected, found.actual, found.severity) == ("(unset)", value, "error")
    assert f"{name} was unset at capture" in found.hint

    r = cli("verify", "--fast", str(live_lock))
    assert r.exit_code == 1, r.stdout
    assert f"floats.env.{name}" in r.stdout and "unset at capture" in r.stdout


def test_an_env_var_unset_since_capture_is_an_error(
    tmp_path: Path, machine_facts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine_facts["env"]["PYTHONHASHSEED"] = "42"
    lock = write_lock(machine_facts, tmp_path / "envlock.lock")
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)

    (found,) = verify_api(lock, fast=True).findings
    assert (found.path, found.expected, found.actual) == ("floats.env.PYTHONHASHSEED", "42", "(unset)")
    assert "export PYTHONHASHSEED=42" in found.hint


# --- the real console script: OpenBLAS kernel, and clean runs ------------------------------------------------


@pytest.mark.slow
def test_openblas_coretype_changes_the_kernel_and_is_named(console_lock: Path) -> None:
    default = openblas_architecture(console_lock)
    other = "Haswell" if default.lower() != "haswell" else "Sandybridge"
    env = clean_env(OPENBLAS_CORETYPE=other)

    done = console("verify", "--json", console_lock, cwd=console_lock.parent, env=env)

    assert done.returncode == 1, done.stdout + done.stderr
    findings = by_path(json.loads(done.stdout)["findings"])
    arch = findings["blas.libraries.numpy-openblas.architecture"]
    assert (arch["expected"], arch["actual"], arch["severity"]) == (default, other, "error")
    assert "OPENBLAS_CORETYPE" in arch["hint"]
    assert findings["floats.env.OPENBLAS_CORETYPE"]["expected"] is None  # unset: JSON null
    text = console("verify", console_lock, cwd=console_lock.parent, env=env)
    assert text.returncode == 1
    assert f"  error: OPENBLAS_CORETYPE is {other}, was unset" in text.stdout.splitlines()
    folded = [line for line in text.stdout.splitlines() if "blas.libraries.numpy-openblas.architecture" in line]
    assert folded[0].startswith("      blas.") and folded[0].endswith(f"  {default} → {other}")  # under the cause
    assert findings["blas.libraries.numpy-openblas.architecture"]["cause"] == "floats.env.OPENBLAS_CORETYPE"


@pytest.mark.slow
@pytest.mark.parametrize("mode", [(), ("--fast",)], ids=["full", "fast"])
def test_clean_console_runs_find_nothing(console_lock: Path, mode: tuple[str, ...]) -> None:
    for _ in range(2):
        done = console("verify", *mode, "--json", console_lock, cwd=console_lock.parent)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert (report["ok"], report["findings"], done.stderr) == (True, [], "")
    quiet = console("verify", *mode, "-q", console_lock, cwd=console_lock.parent)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


@pytest.mark.torch
def test_twenty_clean_runs_in_process_find_nothing(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from envlock.capturing import capture

    lock = capture(tmp_path / "envlock.lock").path
    for i in range(20):
        report = verify_api(lock, fast=bool(i % 2))
        assert report.findings == (), f"run {i}: {report.findings}"
        assert report.ok
    assert check(lock).ok


def test_the_public_api_can_be_called_more_than_once(tmp_path: Path) -> None:
    """`envlock.verify` / `envlock.capture` are functions, and stay so after their modules are imported."""
    import envlock.capturing
    import envlock.verifying  # importing the core modules must not shadow the functions

    result = envlock.capture(str(tmp_path / "envlock.lock"), use_torch=False)
    envlock.capture(str(tmp_path / "envlock.lock"), use_torch=False)
    assert isinstance(envlock.verify(str(result.path), fast=True), Report)
    assert isinstance(envlock.verify(str(result.path), fast=True), Report)


# --- torch settings flipped in-process ---------------------------------------------------------------------


@pytest.fixture
def torch_state() -> Iterator[Any]:
    """torch, with every setting a test may flip put back afterwards (and checked to be back)."""
    torch = pytest.importorskip("torch")
    from envlock.probes.floats import collect_torch

    before = collect_torch()
    threads = torch.get_num_threads()
    matmul = torch.backends.cuda.matmul
    tf32, precision = matmul.allow_tf32, matmul.fp32_precision
    # As a fresh process has it (toggling allow_tf32 leaves "ieee" behind, and other tests may have toggled it).
    matmul.fp32_precision = "none"
    try:
        yield torch
    finally:
        torch.set_num_threads(threads)
        matmul.allow_tf32 = tf32
        matmul.fp32_precision = precision
        assert collect_torch() == before


@pytest.fixture
def torch_lock(tmp_path: Path, torch_state: Any) -> Path:
    from envlock.capturing import capture

    return capture(tmp_path / "envlock.lock").path


@pytest.mark.torch
def test_torch_set_num_threads_is_caught(torch_lock: Path, torch_state: Any) -> None:
    threads = torch_state.get_num_threads()
    other = 1 if threads != 1 else 2
    torch_state.set_num_threads(other)

    report = verify_api(torch_lock)
    found = by_path(report.findings)["threads.torch_intraop"]
    assert (found.expected, found.actual, found.severity) == (str(threads), str(other), "error")
    assert "torch.set_num_threads" in found.hint
    assert not report.ok


@pytest.mark.torch
def test_tf32_flipped_in_code_is_caught_with_the_line_that_sets_it_back(torch_lock: Path, torch_state: Any) -> None:
    torch_state.backends.cuda.matmul.allow_tf32 = True

    report = verify_api(torch_lock)
    found = by_path(report.findings)["floats.torch.matmul_allow_tf32"]
    assert (found.expected, found.actual, found.severity) == ("false", "true", "error")
    assert "torch.backends.cuda.matmul.allow_tf32 = False" in found.hint

    with pytest.raises(envlock.EnvMismatchError) as info:
        envlock.check(str(torch_lock))
    assert info.value.report.findings == report.findings
    assert "floats.torch.matmul_allow_tf32" in str(info.value)
    assert isinstance(info.value, EnvMismatchError)


@pytest.mark.torch
def test_the_line_the_tf32_hint_gives_makes_verify_clean_again(torch_lock: Path, torch_state: Any) -> None:
    """A job that sets TF32 back as the hint says (or sets the default explicitly) must not be stopped."""
    torch_state.backends.cuda.matmul.allow_tf32 = True
    hint = by_path(verify_api(torch_lock).findings)["floats.torch.matmul_allow_tf32"].hint
    line = hint.split("`")[1]
    exec(line, {"torch": torch_state})

    assert verify_api(torch_lock).findings == ()


@pytest.mark.torch
def test_setting_tf32_to_its_default_explicitly_is_not_a_mismatch(torch_lock: Path, torch_state: Any) -> None:
    """Many training scripts write `allow_tf32 = False` up front; that changes no numerics and must pass."""
    assert torch_state.backends.cuda.matmul.allow_tf32 is False
    torch_state.backends.cuda.matmul.allow_tf32 = False

    assert verify_api(torch_lock).findings == ()


# --- Python, JSON output, policy -------------------------------------------------------------------------


def test_another_python_is_an_error(
    recorded: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result]
) -> None:
    changed = other_python(recorded["facts"])
    r = verify_cmd(recorded["lock"], "--facts", write_facts(changed, tmp_path / "other.json"))

    assert r.exit_code == 1, r
    assert "python.version" in r.stdout
    assert "another Python" in r.stdout
    report = verify_api(recorded["lock"], facts=changed)
    found = by_path(report.findings)["python.version"]
    assert (found.expected, found.actual) == (recorded["facts"]["python"]["version"], changed["python"]["version"])


def test_recorded_facts_of_the_same_machine_match(recorded: dict[str, Any], verify_cmd: Callable[..., Result]) -> None:
    r = verify_cmd(recorded["lock"], "--facts", recorded["facts_file"])
    assert (r.exit_code, r.stderr) == (0, ""), r
    assert "OK" in r.stdout


def test_json_output_is_only_json(recorded: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result]) -> None:
    changed = other_python(recorded["facts"])
    changed["env"]["OMP_NUM_THREADS"] = "3"
    r = verify_cmd(recorded["lock"], "--json", "--facts", write_facts(changed, tmp_path / "other.json"))

    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["ok"] is False
    assert {"python.version", "floats.env.OMP_NUM_THREADS"} <= set(by_path(data["findings"]))
    for finding in data["findings"]:
        assert set(finding) == {"path", "expected", "actual", "severity", "hint", "cause"}
        assert finding["severity"] in ("error", "warn")
        assert all(isinstance(finding[k], str) for k in ("path", "severity", "hint"))
    assert by_path(data["findings"])["floats.env.OMP_NUM_THREADS"]["expected"] is None
    assert sorted(p for c in data["causes"] for p in c["paths"]) == sorted(f["path"] for f in data["findings"])
    assert data["errors"] == sum(1 for f in data["findings"] if f["severity"] == "error")

    clean = verify_cmd(recorded["lock"], "--json", "--facts", recorded["facts_file"])
    assert clean.exit_code == 0
    assert json.loads(clean.stdout)["ok"] is True


def test_ignore_and_warn_change_the_outcome(
    recorded: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result]
) -> None:
    other = write_facts(other_python(recorded["facts"]), tmp_path / "other.json")
    lock = recorded["lock"]

    ignored = verify_cmd(lock, "--facts", other, "--ignore", "python.version")
    assert ignored.exit_code == 0, ignored
    assert "then --ignore python.version" in ignored.stdout  # the policy sources line
    assert "python.version" not in ignored.stdout.replace("--ignore python.version", "")

    warned = verify_cmd(lock, "--facts", other, "--warn", "python.version")
    assert warned.exit_code == 0, warned
    assert "python.version" in warned.stdout and "OK with 1 warning" in warned.stdout

    pattern = verify_cmd(lock, "--facts", other, "--ignore", "python.*")
    assert pattern.exit_code == 0, pattern


@pytest.mark.slow
def test_ignoring_the_path_a_finding_names_silences_it(
    tiny_states: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result]
) -> None:
    """What verify printed as the path is what a user passes to --ignore / --warn, whatever the finding."""
    lock = write_lock(tiny_states["1.0"], tmp_path / "envlock.lock")
    now = write_facts(tiny_states["none"], tmp_path / "now.json")

    assert verify_cmd(lock, "--facts", now).exit_code == 1
    ignored = verify_cmd(lock, "--facts", now, "--ignore", f"packages.{TINY}")
    assert ignored.exit_code == 0, ignored
    warned = verify_cmd(lock, "--facts", now, "--warn", f"packages.{TINY}")
    assert warned.exit_code == 0, warned


def test_ignore_with_a_wildcard_beats_the_lock_s_more_specific_rule(
    recorded: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result]
) -> None:
    """--ignore platform.* on the command line covers platform.system, though the policy names that field."""
    changed = copy.deepcopy(recorded["facts"])
    changed["platform"]["system"] = "Darwin" if changed["platform"]["system"] != "Darwin" else "Linux"
    now = write_facts(changed, tmp_path / "other.json")

    assert "platform.system" in verify_cmd(recorded["lock"], "--facts", now).stdout
    r = verify_cmd(recorded["lock"], "--facts", now, "--ignore", "platform.*")
    assert "platform.system" not in r.stdout, r.stdout


def test_pyproject_tool_envlock_in_the_working_directory_changes_a_rule(
    recorded: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = write_facts(other_python(recorded["facts"]), tmp_path / "other.json")
    lock = recorded["lock"]
    monkeypatch.chdir(lock.parent)
    assert verify_cmd(lock, "--facts", other).exit_code == 1

    (lock.parent / "pyproject.toml").write_text(
        '[project]\nname = "job"\n\n[tool.envlock.rules]\n'
        '"python.version" = {rule = "compatible", severity = "warn"}\n',
        encoding="utf-8",
    )
    r = verify_cmd(lock, "--facts", other)
    assert r.exit_code == 0, r
    assert "python.version" in r.stdout and "warn" in r.stdout

    (lock.parent / "pyproject.toml").write_text('[tool.envlock]\nrules = "nonsense"\n', encoding="utf-8")
    bad = verify_cmd(lock, "--facts", other)
    assert bad.exit_code == 2
    assert "pyproject.toml" in bad.stderr


def test_a_hand_edit_of_the_lock_policy_changes_a_rule(
    recorded: dict[str, Any], tmp_path: Path, verify_cmd: Callable[..., Result]
) -> None:
    other = write_facts(other_python(recorded["facts"]), tmp_path / "other.json")
    lock = recorded["lock"]
    text = lock.read_text(encoding="utf-8")
    rule = '"python.*" = {rule = "exact", severity = "error"}'
    assert rule in text
    lock.write_text(text.replace(rule, '"python.*" = {rule = "ignore", severity = "warn"}'), encoding="utf-8")

    r = verify_cmd(lock, "--facts", other)
    assert r.exit_code == 0, r
    assert "python.version" not in r.stdout


# --- bad input: exit 2, one line on stderr ------------------------------------------------------------------


def _one_error_line(r: Result) -> str:
    assert r.exit_code == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("envlock: error: ")
    assert r.stdout == ""
    return lines[0]


def test_a_missing_lock_exits_2(tmp_path: Path, verify_cmd: Callable[..., Result]) -> None:
    line = _one_error_line(verify_cmd(tmp_path / "nope.lock"))
    assert "nope.lock" in line


@pytest.mark.parametrize("text", ["this is [not toml", '[lock]\nschema = "x"\n', ""])
def test_an_invalid_lock_exits_2(tmp_path: Path, verify_cmd: Callable[..., Result], text: str) -> None:
    lock = tmp_path / "envlock.lock"
    lock.write_text(text, encoding="utf-8")
    line = _one_error_line(verify_cmd(lock))
    assert "envlock.lock" in line


def test_a_hand_edited_locked_fact_exits_2(recorded: dict[str, Any], verify_cmd: Callable[..., Result]) -> None:
    lock = recorded["lock"]
    version = recorded["facts"]["python"]["version"]
    text = lock.read_text(encoding="utf-8")
    assert f'version = "{version}"' in text
    lock.write_text(text.replace(f'version = "{version}"', 'version = "3.99.0"', 1), encoding="utf-8")
    line = _one_error_line(verify_cmd(lock, "--facts", recorded["facts_file"]))
    assert "content hash" in line


@pytest.mark.parametrize("option", ["--ignore", "--warn"])
def test_an_invalid_pattern_exits_2(recorded: dict[str, Any], verify_cmd: Callable[..., Result], option: str) -> None:
    line = _one_error_line(verify_cmd(recorded["lock"], "--facts", recorded["facts_file"], option, "not a path!"))
    assert option in line


def test_envlock_lock_is_used_before_a_local_lock(
    recorded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verify_cmd: Callable[..., Result]
) -> None:
    work = tmp_path / "job"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("ENVLOCK_LOCK", str(recorded["lock"]))
    r = verify_cmd("--facts", recorded["facts_file"])
    assert r.exit_code == 0, r
    assert str(recorded["lock"]) in r.stdout

    # $ENVLOCK_LOCK wins over ./envlock.lock (images made by `envlock build` set it): the local one, of another
    # Python, is used only without the variable.
    write_lock(other_python(recorded["facts"]), work / "envlock.lock")
    assert verify_cmd("--facts", recorded["facts_file"]).exit_code == 0
    monkeypatch.delenv("ENVLOCK_LOCK")
    local = verify_cmd("--facts", recorded["facts_file"])
    assert local.exit_code == 1, local
    assert "python.version" in local.stdout
    assert local.stdout.startswith("envlock verify: MISMATCH: 1 error — envlock.lock")

    (work / "envlock.lock").unlink()
    assert "envlock.lock" in _one_error_line(verify_cmd("--facts", recorded["facts_file"]))


# --- diff ---------------------------------------------------------------------------------------------------


def test_diff_of_identical_locks_is_clean(recorded: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    copy_ = write_lock(recorded["facts"], tmp_path / "b" / "envlock.lock")
    r = cli("diff", str(recorded["lock"]), str(copy_))
    assert r.exit_code == 0, r.stdout
    r = cli("diff", "--json", str(recorded["lock"]), str(copy_))
    assert json.loads(r.stdout)["findings"] == []


def test_diff_names_what_moved(recorded: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    changed = copy.deepcopy(recorded["facts"])
    changed["env"]["OMP_NUM_THREADS"] = "3"
    other = write_lock(changed, tmp_path / "b" / "envlock.lock")

    r = cli("diff", str(recorded["lock"]), str(other))
    assert r.exit_code == 1, r.stdout
    assert "floats.env.OMP_NUM_THREADS" in r.stdout
    data = json.loads(cli("diff", "--json", str(recorded["lock"]), str(other)).stdout)
    assert [f["path"] for f in data["findings"]] == ["floats.env.OMP_NUM_THREADS"]
    assert data["findings"][0]["expected"] is None and data["findings"][0]["actual"] == "3"  # env values are text
    assert (data["lock"], data["other"]) == (str(recorded["lock"]), str(other))


def test_diff_of_a_missing_lock_exits_2(recorded: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    r = cli("diff", str(recorded["lock"]), str(tmp_path / "nope.lock"))
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("envlock: error: ")


# --- the two front ends agree ---------------------------------------------------------------------------


def test_both_parsers_and_every_body_come_from_the_one_declaration() -> None:
    import argparse

    from typer.main import get_command

    from envlock.cli import app

    def declared(name: str) -> set[tuple[str, tuple[str, ...], str]]:
        return {(p.name, tuple(sorted(p.flags)), "many" if p.kind in ("repeatable", "variadic") else
                 "flag" if p.kind == "flag" else "one") for p in BY_NAME[name].params}

    group = get_command(app)
    assert list(group.commands) == [c.name for c in COMMANDS]  # type: ignore[attr-defined]
    for command in COMMANDS:
        typer_side = set()
        for param in group.commands[command.name].params:  # type: ignore[attr-defined]
            if param.name == "help":
                continue
            opts = tuple(sorted(o for o in param.opts + param.secondary_opts if o.startswith("-")))
            kind = ("flag" if getattr(param, "is_flag", False)
                    else "many" if getattr(param, "multiple", False) or param.nargs == -1 else "one")
            typer_side.add((param.name, opts, kind))
        assert typer_side == declared(command.name), command.name
        body = inspect.signature(BODIES[command.name]).parameters
        # verify's one keyword that is no option: the job-start path's verdict memo (envlock.cli.verdicts).
        extra = ["memo"] if command.name == "verify" else []
        assert list(body) == [p.name for p in command.params] + extra, command.name
    for name in FAST:
        argparse_side = set()
        for action in argparse_parser(BY_NAME[name])._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            kind = ("flag" if isinstance(action, argparse._StoreTrueAction)
                    else "many" if isinstance(action, argparse._AppendAction) else "one")
            argparse_side.add((action.dest, tuple(sorted(action.option_strings)), kind))
        assert argparse_side == declared(name), name

"""`envlock capture` and `envlock facts`, as a user runs them: the lock's bytes, exit codes, one-line errors."""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from envlock._version import __version__
from envlock.facts import dumps_facts
from envlock.lockfile import load
from envlock.model import SCHEMA_VERSION
from envlock.policy import DEFAULT_RULES
from envlock.probes.floats import NUMERIC_ENV_VARS
from envlock.probes.gpu import PROC_DRIVER

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

VENV_BIN = Path(sys.executable).parent
EPOCH = "1000000000"  # 2001-09-09T01:46:40Z
EPOCH_TEXT = "2001-09-09T01:46:40Z"
CREATED = re.compile(rb'^created = "[^"]*"$', re.MULTILINE)


def without_created(data: bytes) -> bytes:
    """The lock's bytes with its one `created` line blanked, for comparisons that ignore the time."""
    blanked, count = CREATED.subn(b'created = "..."', data)
    assert count == 1, "a lock has exactly one created line"
    return blanked


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def one_error_line(result: Any) -> str:
    """The single stderr line of a failed command (and nothing on stdout, no traceback)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert lines[0].startswith("envlock: error: ")
    return lines[0]


@pytest.fixture
def facts_file(tmp_path: Path, machine_facts: dict[str, Any]) -> Path:
    """This machine's facts, dumped the way `envlock facts -o` writes them."""
    path = tmp_path / "facts.json"
    path.write_text(dumps_facts(machine_facts), encoding="utf-8")
    return path


@pytest.fixture
def locked(tmp_path: Path, cli: Any, facts_file: Path) -> Path:
    """A fresh lock of this machine (built from its facts dump, so it is fast)."""
    path = tmp_path / "envlock.lock"
    result = cli("capture", "--facts", str(facts_file), "-o", str(path))
    assert result.exit_code == 0, result.stderr
    return path


# --- 1. what a capture writes --------------------------------------------------------------------------


@pytest.mark.torch
def test_capture_writes_every_section_of_this_machine(tmp_path: Path, cli: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy
    import torch

    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    for name in NUMERIC_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    path = tmp_path / "envlock.lock"

    result = cli("capture", "-o", str(path))

    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert re.fullmatch(
        rf"wrote {re.escape(str(path))}: {len(data['packages'])} packages, target {next(iter(data['targets']))}, "
        r"sha256:[0-9a-f]{12}\n",
        result.stdout,
    )
    assert text.startswith("# envlock lock file")
    assert "# Regenerate with `envlock capture -o envlock.lock`" in text

    header = data["lock"]
    assert header["schema"] == SCHEMA_VERSION
    assert header["envlock"] == __version__
    assert header["created"] == EPOCH_TEXT
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", header["content_hash"])
    assert header["content_hash"][:19] in result.stdout

    policy = data["policy"]
    assert policy["missing_packages"] == "error"
    assert policy["extra_packages"] == "warn"
    assert policy["rules"] == {k: {"rule": r, "severity": s} for k, (r, s) in DEFAULT_RULES.items()}

    assert data["python"]["implementation"] == sys.implementation.name
    assert data["python"]["version"] == platform.python_version()

    packages = data["packages"]
    assert packages["numpy"]["version"] == numpy.__version__
    assert packages["torch"]["version"] == torch.__version__
    assert packages["envlock"]["version"] == __version__
    assert list(packages) == sorted(packages)
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", p["files"]) for p in packages.values())

    env = data["floats"]["env"]
    assert set(env) == set(NUMERIC_ENV_VARS)
    assert env["MKL_CBWR"] == {"set": True, "value": "COMPATIBLE"}
    assert all(env[name] == {"set": False} for name in NUMERIC_ENV_VARS if name != "MKL_CBWR")
    flags = data["floats"]["torch"]
    assert flags["version"] == torch.__version__
    assert flags["matmul_allow_tf32"] is torch.backends.cuda.matmul.allow_tf32
    assert flags["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert flags["default_dtype"] == "float32"

    (name, target), = data["targets"].items()
    assert set(target) == {"platform", "cpu", "blas", "gpu", "threads", "numerics"}
    assert target["platform"]["system"] == platform.system()
    assert target["platform"]["machine"] == platform.machine()
    assert target["cpu"]["logical_cores"] == os.cpu_count()
    assert target["cpu"]["microarchitecture"] in name
    assert any(lib["internal_api"] == "openblas" for lib in target["blas"]["libraries"])  # numpy's
    assert target["threads"] == {"torch_intraop": torch.get_num_threads(),
                                 "torch_interop": torch.get_num_interop_threads()}
    if not os.path.exists(PROC_DRIVER):
        # No GPU is data, not an error.
        assert target["gpu"] == {"count": 0, "status": "no NVIDIA driver found"}

    shown = cli("show", str(path))
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.startswith(f"{path}: envlock lock, schema {SCHEMA_VERSION}, written by envlock "
                                   f"{__version__} at {EPOCH_TEXT}\n")
    assert "(matches the locked facts)" in shown.stdout
    assert "env          set: MKL_CBWR=COMPATIBLE;" in shown.stdout
    if not os.path.exists(PROC_DRIVER):
        assert "  gpu        none (no NVIDIA driver found)" in shown.stdout


@pytest.mark.torch
def test_capture_records_float_flags_the_process_has_flipped(tmp_path: Path, cli: Any) -> None:
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = True
        result = cli("capture", "-o", str(tmp_path / "envlock.lock"))
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]
    assert result.exit_code == 0, result.stderr
    flags = tomllib.loads((tmp_path / "envlock.lock").read_text(encoding="utf-8"))["floats"]["torch"]
    assert flags["deterministic_algorithms"] is True
    assert flags["matmul_allow_tf32"] is True


# --- 2. determinism -------------------------------------------------------------------------------------


def test_capture_from_facts_dump_equals_live_capture(tmp_path: Path, cli: Any) -> None:
    live, replay = tmp_path / "live" / "envlock.lock", tmp_path / "replay" / "envlock.lock"
    live.parent.mkdir()
    replay.parent.mkdir()
    facts = tmp_path / "f.json"

    assert cli("facts", "-o", str(facts)).exit_code == 0
    assert cli("capture", "--facts", str(facts), "-o", str(replay)).exit_code == 0
    assert cli("capture", "-o", str(live)).exit_code == 0

    assert without_created(replay.read_bytes()) == without_created(live.read_bytes())


def test_capture_is_byte_identical_with_source_date_epoch(tmp_path: Path, cli: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    live, replay = tmp_path / "live" / "envlock.lock", tmp_path / "replay" / "envlock.lock"
    live.parent.mkdir()
    replay.parent.mkdir()
    facts = tmp_path / "f.json"

    assert cli("facts", "-o", str(facts)).exit_code == 0
    assert cli("capture", "--facts", str(facts), "-o", str(replay)).exit_code == 0
    assert cli("capture", "-o", str(live)).exit_code == 0

    assert replay.read_bytes() == live.read_bytes()
    assert f'created = "{EPOCH_TEXT}"'.encode() in live.read_bytes()


def test_two_live_captures_and_a_recapture_differ_only_in_created(tmp_path: Path, cli: Any) -> None:
    first, second = tmp_path / "a" / "envlock.lock", tmp_path / "b" / "envlock.lock"
    first.parent.mkdir()
    second.parent.mkdir()
    assert cli("capture", "-o", str(first)).exit_code == 0
    assert cli("capture", "-o", str(second)).exit_code == 0
    assert without_created(first.read_bytes()) == without_created(second.read_bytes())

    before = first.read_bytes()
    again = cli("capture", "-o", str(first))
    assert again.exit_code == 0
    assert "kept the existing policy and comments" in again.stdout
    assert without_created(first.read_bytes()) == without_created(before)


# --- 3. re-capture keeps the user's comments and policy; refuses to clobber what it cannot read ----------


def _hand_edit(text: str) -> str:
    """What a user does to a lock: notes in the header and in [policy], a rule made stricter, a rule added."""
    edits = [
        ("# Edit [policy] freely; any other hand edit makes the content hash fail.\n",
         "# Edit [policy] freely; any other hand edit makes the content hash fail.\n# NOTE-HEADER: reference run 42\n"),
        ("[policy]\n", "[policy]\n# NOTE-POLICY: the team agreed on these\n"),
        ('extra_packages = "warn"\n', 'extra_packages = "warn"  # NOTE-INLINE-SCALAR\n'),
        ('"cpu.*" = {rule = "exact", severity = "warn"}\n',
         '"cpu.*" = {rule = "exact", severity = "error"}  # NOTE-INLINE-RULE\n'),
        ('"threads.*" = {rule = "exact", severity = "error"}\n',
         '"threads.*" = {rule = "exact", severity = "error"}\n'
         '"packages.numpy.version" = {rule = "compatible", severity = "warn"}\n'
         "# NOTE-AFTER-POLICY: a comment line between [policy] and [python]\n"),
    ]
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def test_recapture_keeps_comments_and_hand_edited_policy(locked: Path, cli: Any, facts_file: Path) -> None:
    locked.write_text(_hand_edit(locked.read_text(encoding="utf-8")), encoding="utf-8")

    result = cli("capture", "--facts", str(facts_file), "-o", str(locked))

    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip().endswith("; kept the existing policy and comments")
    text = locked.read_text(encoding="utf-8")
    for note in ("NOTE-HEADER: reference run 42", "NOTE-POLICY: the team agreed on these", "NOTE-INLINE-SCALAR",
                 "NOTE-INLINE-RULE", "NOTE-AFTER-POLICY"):
        assert text.count(note) == 1, note
    assert text.startswith("# envlock lock file")
    lock, warnings = load(locked)
    assert warnings == []
    assert lock.policy.rules["cpu.*"].severity == "error"
    assert lock.policy.rules["packages.numpy.version"].rule == "compatible"
    assert lock.policy.rules["packages.numpy.version"].severity == "warn"

    shown = cli("show", str(locked))
    assert shown.exit_code == 0, shown.stderr
    rules = len(DEFAULT_RULES) + 1  # the defaults plus the one added above
    assert f"policy       {rules} rules (edited: cpu.*, packages.numpy.version)" in shown.stdout

    # Re-capturing again changes nothing but the time.
    before = locked.read_bytes()
    assert cli("capture", "--facts", str(facts_file), "-o", str(locked)).exit_code == 0
    assert without_created(locked.read_bytes()) == without_created(before)


def test_recapture_keeps_comment_lines_between_other_sections(locked: Path, cli: Any, facts_file: Path) -> None:
    text = locked.read_text(encoding="utf-8")
    text = text.replace("\n[policy]\n", "\n# NOTE-BEFORE-POLICY\n[policy]\n")
    text = text.replace("\n[packages]\n", "\n# NOTE-BEFORE-PACKAGES\n[packages]\n")
    text += "# NOTE-AT-END\n"
    locked.write_text(text, encoding="utf-8")

    assert cli("capture", "--facts", str(facts_file), "-o", str(locked)).exit_code == 0

    text = locked.read_text(encoding="utf-8")
    assert "NOTE-BEFORE-POLICY" in text
    assert "NOTE-BEFORE-PACKAGES" in text
    assert "NOTE-AT-END" in text


def test_recapture_over_invalid_policy_exits_2_and_leaves_file(locked: Path, cli: Any, facts_file: Path) -> None:
    text = locked.read_text(encoding="utf-8")
    text = text.replace('"cpu.*" = {rule = "exact"', '"cpu.*" = {rule = "sometimes"')
    locked.write_text(text, encoding="utf-8")
    before = locked.read_bytes()

    result = cli("capture", "--facts", str(facts_file), "-o", str(locked))

    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith(f"envlock: error: {locked}: policy.rules.cpu.*.rule: ")
    assert "'sometimes'" in line
    assert "--force" in line
    assert locked.read_bytes() == before
    assert temp_files(locked.parent) == []

    forced = cli("capture", "--facts", str(facts_file), "-o", str(locked), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert "kept the existing policy" not in forced.stdout
    lock, _ = load(locked)
    assert lock.policy.rules["cpu.*"].rule == "exact"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not = [toml\n", "not valid TOML"),
        (b"\xff\xfe garbage", "not UTF-8 text"),
        (b'[tool.black]\nline-length = 100\n', "is not an envlock lock (no [lock] table)"),
        (b'[lock]\nversion = 3\npackages = ["a"]\n', "its [lock] table is not an envlock lock header"),
        (b'[lock]\nschema = "1.0"\n[tool]\nx = 1\n', "its [lock] table is not an envlock lock header"),
        (b'# envlock lock file\n[lock]\nschema = "9.0"\nenvlock = "9"\n', "schema version 9.0 is not supported"),
    ],
    ids=["not-toml", "not-utf8", "other-toml-file", "other-tools-lock", "bare-schema", "future-envlock-lock"],
)
def test_capture_refuses_to_overwrite_a_file_that_is_not_a_lock(
    tmp_path: Path, cli: Any, facts_file: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_bytes(content)

    result = cli("capture", "--facts", str(facts_file), "-o", str(path))

    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith(f"envlock: error: {path}: ")
    assert expected in line
    assert line.endswith("refusing to overwrite it: pass --force to overwrite it, or choose another -o")
    assert path.read_bytes() == content
    assert temp_files(tmp_path) == []

    forced = cli("capture", "--facts", str(facts_file), "-o", str(path), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert load(path)[0].packages
    assert path.read_text(encoding="utf-8").startswith("# envlock lock file")


def test_recapture_over_a_lock_without_its_comment_header_needs_no_force(locked: Path, cli: Any,
                                                                         facts_file: Path) -> None:
    text = locked.read_text(encoding="utf-8")
    bare = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("# "))
    locked.write_text(bare, encoding="utf-8")
    result = cli("capture", "--facts", str(facts_file), "-o", str(locked))
    assert result.exit_code == 0, result.stderr
    load(locked)


def test_capture_over_an_empty_file_writes_a_fresh_lock(tmp_path: Path, cli: Any, facts_file: Path) -> None:
    path = tmp_path / "envlock.lock"
    path.write_bytes(b"")
    result = cli("capture", "--facts", str(facts_file), "-o", str(path))
    assert result.exit_code == 0, result.stderr
    assert path.read_text(encoding="utf-8").startswith("# envlock lock file")
    load(path)


def test_capture_into_a_missing_folder_exits_2(tmp_path: Path, cli: Any, facts_file: Path) -> None:
    path = tmp_path / "nope" / "envlock.lock"
    result = cli("capture", "--facts", str(facts_file), "-o", str(path))
    assert result.exit_code == 2
    assert one_error_line(result) == f"envlock: error: {path}: folder {path.parent} does not exist"


# --- 4. atomic writes -----------------------------------------------------------------------------------


def test_failed_write_leaves_previous_lock_and_no_temp_file(locked: Path, cli: Any, facts_file: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    before = locked.read_bytes()

    def disk_full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("envlock.atomic.os.replace", disk_full)
    result = cli("capture", "--facts", str(facts_file), "-o", str(locked))

    assert result.exit_code == 2
    assert one_error_line(result) == f"envlock: error: {locked}: cannot write: {os.strerror(errno.ENOSPC)}"
    assert locked.read_bytes() == before
    assert temp_files(locked.parent) == []


def test_interrupted_write_leaves_previous_lock_and_no_temp_file(locked: Path, cli: Any, facts_file: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    before = locked.read_bytes()

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("envlock.atomic.os.fsync", interrupted)
    result = cli("capture", "--facts", str(facts_file), "-o", str(locked))

    assert result.exit_code == 130
    assert result.stderr == "envlock: error: interrupted\n"
    assert locked.read_bytes() == before
    assert temp_files(locked.parent) == []


def test_recapture_keeps_the_lock_file_mode(locked: Path, cli: Any, facts_file: Path) -> None:
    locked.chmod(0o640)
    assert cli("capture", "--facts", str(facts_file), "-o", str(locked)).exit_code == 0
    assert locked.stat().st_mode & 0o777 == 0o640


def _capture_process(folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "envlock", "capture", "-o", "L"], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


def _assert_lock_intact(path: Path, old: bytes) -> bytes:
    """The lock is the old bytes or a whole, valid new lock; returns what it now holds."""
    now = path.read_bytes()
    if now != old:
        load(path)  # raises on a partial or corrupt lock
        assert without_created(now) == without_created(old)
    return now


@pytest.mark.slow
def test_capture_killed_at_any_moment_leaves_the_previous_lock(tmp_path: Path) -> None:
    lock = tmp_path / "L"
    subprocess.run([sys.executable, "-m", "envlock", "capture", "-o", "L"], cwd=tmp_path, check=True,
                   capture_output=True)
    old = lock.read_bytes()
    load(lock)
    left_behind: set[str] = set()

    # Kills at varied moments: while importing, collecting, writing, exiting.
    for delay in (0.05, 0.5, 1.0, 1.4, 1.8, 2.5):
        process = _capture_process(tmp_path)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        old = _assert_lock_intact(lock, old)
        left_behind |= set(temp_files(tmp_path))

    # Kills timed to the write itself: as soon as a temporary file appears or the lock itself is touched.
    caught_mid_write = 0
    for _ in range(3):
        seen = set(temp_files(tmp_path))
        stamp = _stamp(lock)
        process = _capture_process(tmp_path)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if set(temp_files(tmp_path)) - seen or _stamp(lock) != stamp:
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=60)
        new_temps = set(temp_files(tmp_path)) - seen
        if new_temps:
            caught_mid_write += 1
            # Killed before the rename: the lock is exactly the old one, the partial data stays in the temp file.
            assert lock.read_bytes() == old
            assert all(re.fullmatch(r"\.L\.[^/]+\.tmp", name) for name in new_temps)
        old = _assert_lock_intact(lock, old)
        left_behind |= new_temps

    assert caught_mid_write >= 1, "never caught a capture between creating its temp file and renaming it"
    # A later capture still works and still writes L (SIGKILL's leftovers never take the lock's place).
    subprocess.run([sys.executable, "-m", "envlock", "capture", "-o", "L"], cwd=tmp_path, check=True,
                   capture_output=True)
    _assert_lock_intact(lock, old)
    assert set(temp_files(tmp_path)) <= left_behind


# --- 5. import cost and the Python API -----------------------------------------------------------------


def test_import_envlock_loads_no_heavy_module() -> None:
    code = "import envlock, sys; print(sorted(m for m in ('torch','docker','pynvml','numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


def test_collect_facts_without_torch_does_not_import_it() -> None:
    code = ("import sys; from envlock.facts import collect_facts; f = collect_facts(use_torch=False); "
            "print('torch' in sys.modules, 'torch' in f)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False False\n"


def test_python_api_capture_in_a_fresh_process(tmp_path: Path, facts_file: Path) -> None:
    code = ("import json, sys, envlock; facts = json.load(open(sys.argv[1])); "
            "r = envlock.capture(sys.argv[2], facts=facts); print(r.path, r.kept_policy, len(r.lock.packages))")
    out = subprocess.run([sys.executable, "-c", code, str(facts_file), str(tmp_path / "api.lock")],
                         capture_output=True, text=True, check=True)
    lock, _ = load(tmp_path / "api.lock")
    assert out.stdout == f"{tmp_path / 'api.lock'} False {len(lock.packages)}\n"


def test_python_api_capture(tmp_path: Path, machine_facts: dict[str, Any]) -> None:
    import envlock

    envlock.capture(str(tmp_path / "first.lock"), facts=machine_facts)

    path = tmp_path / "envlock.lock"
    result = envlock.capture(str(path), facts=machine_facts)
    assert result.path == path
    assert result.kept_policy is False
    lock, _ = load(path)
    assert lock == result.lock

    again = envlock.capture(str(path), facts=machine_facts)
    assert again.kept_policy is True
    assert lock.packages == again.lock.packages


def test_capture_core_raises_envlock_error_not_exit(tmp_path: Path, machine_facts: dict[str, Any]) -> None:
    from envlock import EnvlockError, FactsError
    from envlock.capturing import capture

    machine_facts["cpu"]["logical_cores"] = "two"
    with pytest.raises(FactsError, match=r"^x\.json: cpu\.logical_cores: ") as info:
        capture(tmp_path / "envlock.lock", facts=machine_facts, facts_name="x.json")
    assert isinstance(info.value, EnvlockError)
    assert info.value.where == "cpu.logical_cores"
    assert not (tmp_path / "envlock.lock").exists()


# --- 6. bad facts input ---------------------------------------------------------------------------------


def _set(path: list[Any], value: Any) -> Any:
    def edit(facts: dict[str, Any]) -> None:
        node = facts
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


BAD_FACTS: list[tuple[str, Any, str]] = [
    # (id, content or edit of this machine's facts, regex for what follows "<file>: " on the one line)
    ("not-json", b"hello {", r"not a facts dump: not valid JSON \("),
    ("a-lock", b"# envlock lock file\n\n[lock]\nschema = \"1.0\"\n",
     r"not a facts dump: not valid JSON .*\(this is a lock; facts come from `envlock facts -o FILE`\)"),
    ("not-utf8", b"\xff\xfe{}", r"not UTF-8 text"),
    ("json-array", b"[1, 2]", r"not an envlock facts dump"),
    ("not-a-facts-dump", b'{"name": "x"}', r"not an envlock facts dump \(no `envlock_facts` key\)"),
    ("facts-version-99", _set(["envlock_facts"], 99), r"envlock_facts: facts format 99 is not supported"),
    ("cores-not-int", _set(["cpu", "logical_cores"], "two"), r"cpu\.logical_cores: expected int"),
    ("cores-negative", _set(["cpu", "logical_cores"], -1), r"(targets\.[^ ]+\.)?cpu\.logical_cores: .*out of range"),
    ("version-not-str", _set(["packages", 0, "version"], 3), r"packages\[0\]\.version: expected str"),
    ("version-newline", _set(["packages", 0], {"name": "evil", "version": "1.0\n; rm -rf /"}),
     r"packages(\[0\]|\.evil)\.version: .*not allowed"),
    ("name-shell", _set(["packages", 0], {"name": "a b;rm", "version": "1.0"}),
     r'packages(\[0\]\.name|\."?a b;rm"?): .*not allowed'),
    ("hash-not-str", _set(["packages", 0, "hashes"], [1]), r"packages(\[0\]|\.[a-z0-9-]+)\.hashes\[0\]: expected"),
    ("packages-not-list", _set(["packages"], {}), r"packages: expected a list"),
    ("package-not-object", _set(["packages", 0], "numpy"), r"packages\[0\]: expected an object"),
    ("editable-not-bool", _set(["packages", 0, "direct_url"], {"url": "file:///x", "dir_info": {"editable": "y"}}),
     r"packages\[0\]\.direct_url\.dir_info\.editable: expected bool"),
    ("platform-not-object", _set(["platform"], []), r"platform: expected an object"),
    ("gpu-not-object", _set(["gpu"], "none"), r"gpu: expected an object"),
    ("blas-lib-not-object", _set(["blas", "threadpool_info"], ["x"]),
     r"blas\.threadpool_info\[0\]: expected an object"),
    ("torch-threads-not-int", _set(["torch", "num_threads"], "8"), r"torch\.num_threads: expected int"),
    ("env-newline", _set(["env", "OMP_NUM_THREADS"], "1\n2"), r"(floats\.)?env\.OMP_NUM_THREADS(\.value)?: "),
]


@pytest.mark.parametrize(("content", "expected"), [case[1:] for case in BAD_FACTS], ids=[c[0] for c in BAD_FACTS])
def test_bad_facts_exit_2_with_one_line_naming_the_place(
    tmp_path: Path, cli: Any, machine_facts: dict[str, Any], content: Any, expected: str
) -> None:
    facts = tmp_path / "bad.json"
    if isinstance(content, bytes):
        facts.write_bytes(content)
    else:
        if "torch" not in machine_facts and "torch" in expected:
            pytest.skip("torch is not installed")
        content(machine_facts)
        facts.write_text(json.dumps(machine_facts), encoding="utf-8")
    out = tmp_path / "envlock.lock"

    result = cli("capture", "--facts", str(facts), "-o", str(out))

    assert result.exit_code == 2
    line = one_error_line(result)
    assert re.fullmatch(rf"envlock: error: {re.escape(str(facts))}: {expected}.*", line), line
    assert not out.exists()
    assert temp_files(tmp_path) == []


def test_missing_facts_file_exits_2(tmp_path: Path, cli: Any) -> None:
    facts, out = tmp_path / "missing.json", tmp_path / "envlock.lock"
    result = cli("capture", "--facts", str(facts), "-o", str(out))
    assert result.exit_code == 2
    assert one_error_line(result) == (f"envlock: error: {facts}: no such facts file "
                                      "(write one with `envlock facts -o FILE`)")
    assert not out.exists()


def test_bad_facts_leave_an_existing_lock_untouched(locked: Path, cli: Any, machine_facts: dict[str, Any]) -> None:
    before = locked.read_bytes()
    machine_facts["cpu"]["logical_cores"] = "two"
    facts = locked.parent / "bad.json"
    facts.write_text(json.dumps(machine_facts), encoding="utf-8")

    result = cli("capture", "--facts", str(facts), "-o", str(locked))

    assert result.exit_code == 2
    assert "cpu.logical_cores" in one_error_line(result)
    assert locked.read_bytes() == before


# --- 7. --no-torch and `envlock facts` ------------------------------------------------------------------


def test_capture_no_torch_locks_no_torch_settings(tmp_path: Path, cli: Any) -> None:
    pytest.importorskip("torch")  # loaded in this process, the way a training script would have it
    path = tmp_path / "envlock.lock"
    result = cli("capture", "--no-torch", "-o", str(path))
    assert result.exit_code == 0, result.stderr

    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert "torch" not in data["floats"]
    assert set(data["floats"]["env"]) == set(NUMERIC_ENV_VARS)
    (target,) = data["targets"].values()
    assert "threads" not in target
    assert {"platform", "cpu", "blas", "gpu"} <= set(target)
    assert "[floats.torch]" not in path.read_text(encoding="utf-8")
    # torch is imported in this test process, yet a --no-torch lock records none of its build facts either.
    assert not [key for key in target["blas"] if key.startswith("torch_")]
    assert cli("show", str(path)).exit_code == 0


def test_facts_prints_json_to_stdout(cli: Any) -> None:
    result = cli("facts")
    assert result.exit_code == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["envlock_facts"] == 1
    assert facts["envlock"] == __version__
    assert {"python", "packages", "platform", "cpu", "env", "gpu", "blas"} <= set(facts)
    assert any(p["name"] == "envlock" for p in facts["packages"])


def test_facts_no_torch_leaves_torch_out(cli: Any) -> None:
    result = cli("facts", "--no-torch")
    assert result.exit_code == 0, result.stderr
    assert "torch" not in json.loads(result.stdout)


def test_facts_output_file(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "facts.json"
    result = cli("facts", "-o", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"wrote {path}\n"
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text)["envlock_facts"] == 1


# --- 8. the real console script -------------------------------------------------------------------------


@pytest.mark.slow
def test_console_script_capture_then_show(tmp_path: Path) -> None:
    script = VENV_BIN / "envlock"
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    env = {k: v for k, v in os.environ.items() if k not in ("ENVLOCK_LOCK", "SOURCE_DATE_EPOCH")}

    captured = subprocess.run([str(script), "capture", "-o", "X"], cwd=tmp_path, capture_output=True, text=True,
                              env=env, timeout=120)
    assert captured.returncode == 0, captured.stderr
    assert captured.stdout.startswith("wrote X: ")
    assert captured.stderr == ""

    shown = subprocess.run([str(script), "show", "X"], cwd=tmp_path, capture_output=True, text=True, env=env,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"X: envlock lock, schema {SCHEMA_VERSION}, written by envlock {__version__}")
    assert "packages     " in shown.stdout
    assert "\ntarget " in shown.stdout
    assert "(matches the locked facts)" in shown.stdout


# --- --add-target says what it did ----------------------------------------------------------------------------

HOSTS = Path(__file__).resolve().parents[1] / "fixtures" / "hosts"
H100_FACTS = HOSTS / "linux-nvidia550-cuda12.4-sapphirerapids-h100x8" / "facts.json"
H100_TARGET = "sapphirerapids-h100-80gb-hbm3x8"


def _h100_lock(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    from envlock.capturing import capture
    from envlock.facts import load_facts

    facts = load_facts(H100_FACTS)
    path = tmp_path / "pool.lock"
    first = capture(path, facts=facts)
    assert (first.target_action, first.added_target, first.target_name) == ("", "", "")
    return path, facts


def test_add_target_of_a_machine_already_in_the_lock_is_unchanged(tmp_path: Path) -> None:
    from envlock.capturing import capture

    path, facts = _h100_lock(tmp_path)
    before = path.read_bytes()
    again = capture(path, facts=facts, add_target=True)
    assert again.target_action == "unchanged"
    assert again.target_name == H100_TARGET
    assert again.added_target == ""  # nothing was added
    assert path.read_bytes() == before  # nor written: not even the creation time moves
    assert list(again.lock.targets) == [H100_TARGET]


def test_add_target_of_other_hardware_under_a_taken_name_says_so(tmp_path: Path) -> None:
    from envlock.capturing import capture

    path, facts = _h100_lock(tmp_path)
    facts["gpu"]["driver"] = "555.42.02"  # the same machine after a driver upgrade: other hardware facts
    added = capture(path, facts=facts, add_target=True)
    assert added.target_action == "added"
    assert added.added_target == added.target_name == f"{H100_TARGET}-2"
    assert added.name_taken == H100_TARGET
    loaded, _ = load(path)
    assert sorted(loaded.targets) == [H100_TARGET, f"{H100_TARGET}-2"]
    # Captured once more, it is found under its numbered name.
    again = capture(path, facts=facts, add_target=True)
    assert (again.target_action, again.target_name, again.added_target) == ("unchanged", f"{H100_TARGET}-2", "")


def test_add_target_of_a_new_machine_is_added(tmp_path: Path) -> None:
    from envlock.capturing import capture

    path, facts = _h100_lock(tmp_path)
    facts["gpu"]["devices"] = facts["gpu"]["devices"][:4]  # the same software on a machine with half the GPUs
    added = capture(path, facts=facts, add_target=True)
    name = "sapphirerapids-h100-80gb-hbm3x4"
    assert (added.target_action, added.added_target, added.target_name, added.name_taken) == (
        "added", name, name, "")

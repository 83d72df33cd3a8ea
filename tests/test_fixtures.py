"""Every recorded host in fixtures/hosts gives, byte for byte, the lock recorded next to it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock
from envlock.facts import load_facts
from envlock.lockfile import dumps, loads

HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
CREATED = "2026-01-01T00:00:00Z"
FOLDERS = sorted(path.parent for path in HOSTS.glob("*/facts.json"))
NAME = re.compile(r"(?P<os>[a-z]+)-(?P<gpu>nogpu|nvidia[0-9]+)-(?P<cuda>nocuda|cuda[0-9]+\.[0-9]+)"
                  r"-(?P<uarch>[a-z0-9_]+)-(?P<label>[a-z0-9][a-z0-9_.-]*)")


def _regen() -> Any:
    spec = importlib.util.spec_from_file_location("fixtures_regen", HOSTS.parent / "regen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lock_text(folder: Path) -> str:
    return dumps(build_lock(load_facts(folder / "facts.json"), created=CREATED), name="expected.lock")


def _only_target(folder: Path) -> Any:
    lock, warnings = loads((folder / "expected.lock").read_text(encoding="utf-8"), "expected.lock")
    assert warnings == []
    assert len(lock.targets) == 1
    return next(iter(lock.targets.values()))


def test_the_suite_holds_the_hosts_it_promises() -> None:
    names = {folder.name for folder in FOLDERS}
    assert "linux-nogpu-nocuda-x86_64_v4-devbox" in names  # the one real dump
    uarchs = {match.group("uarch") for match in map(NAME.fullmatch, names) if match}
    assert {"neoverse_v1", "sapphirerapids", "haswell", "zen3"} <= uarchs
    assert (HOSTS / "README.md").is_file()


@pytest.mark.parametrize("folder", FOLDERS, ids=[folder.name for folder in FOLDERS])
def test_facts_give_the_expected_lock_byte_for_byte(folder: Path) -> None:
    expected = (folder / "expected.lock").read_bytes()
    assert _lock_text(folder).encode("utf-8") == expected, f"stale: run `python fixtures/regen.py` ({folder.name})"


@pytest.mark.parametrize("folder", FOLDERS, ids=[folder.name for folder in FOLDERS])
def test_folder_name_states_the_answer(folder: Path) -> None:
    match = NAME.fullmatch(folder.name)
    assert match, f"{folder.name} is not <os>-<gpu>-<cuda>-<microarchitecture>-<label>"
    target = _only_target(folder)
    assert target.cpu.microarchitecture == match.group("uarch")
    assert target.platform.system.lower() == match.group("os")
    if match.group("gpu") == "nogpu":
        assert target.gpu.driver == ""
    else:
        assert target.gpu.driver.split(".")[0] == match.group("gpu").removeprefix("nvidia")
    lock = loads((folder / "expected.lock").read_text("utf-8"), "expected.lock")[0]
    assert match.group("cuda") == ("nocuda" if lock.cuda is None else f"cuda{lock.cuda.torch_cuda}")


@pytest.mark.parametrize("folder", FOLDERS, ids=[folder.name for folder in FOLDERS])
def test_a_lock_from_facts_round_trips(folder: Path) -> None:
    text = (folder / "expected.lock").read_text(encoding="utf-8")
    lock, _ = loads(text, "expected.lock")
    assert lock.lock.created == CREATED
    assert dumps(lock, name="expected.lock") == text


def test_regen_check_passes_and_then_catches_a_stale_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    regen = _regen()
    assert regen.main(["--check"]) == 0
    folder = tmp_path / FOLDERS[0].name
    folder.mkdir()
    (folder / "facts.json").write_bytes((FOLDERS[0] / "facts.json").read_bytes())
    (folder / "expected.lock").write_text((FOLDERS[0] / "expected.lock").read_text("utf-8").replace(
        'created = "2026-01-01T00:00:00Z"', 'created = "2025-01-01T00:00:00Z"'), encoding="utf-8")
    assert regen.host_dirs(tmp_path) == [folder]
    capsys.readouterr()
    assert regen.main(["--check"], tmp_path) == 1
    assert capsys.readouterr().out == f"stale: {folder.name}/expected.lock\n"
    assert regen.main([], tmp_path) == 0
    assert (folder / "expected.lock").read_bytes() == (FOLDERS[0] / "expected.lock").read_bytes()
    assert regen.main(["--check"], tmp_path) == 0


def test_the_cli_writes_the_same_bytes(cli: Any, tmp_path: Path) -> None:
    folder = next(f for f in FOLDERS if "sapphirerapids" in f.name)
    out = tmp_path / "expected.lock"
    result = cli("capture", "--facts", str(folder / "facts.json"), "-o", str(out),
                 env={"SOURCE_DATE_EPOCH": "1767225600"})
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (folder / "expected.lock").read_bytes()

"""`envlock capture --hashes`: artifact hashes from a package index (here a local one) through pip-tools."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from envlock.hashes import artifact_hashes
from envlock.lockfile import load
from tests.helpers import write_facts

WHEEL_FILES = {
    "tiny_pkg/__init__.py": b"VALUE = 1\n",
    "tiny_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tiny-pkg\nVersion: 1.0\n",
    "tiny_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    "tiny_pkg-1.0.dist-info/RECORD": b"",
}


def make_index(folder: Path, tags: tuple[str, ...] = ("py3-none-any",)) -> dict[str, str]:
    """A find-links folder with tiny-pkg 1.0 wheels; {file name: sha256}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for tag in tags:
        wheel = folder / f"tiny_pkg-1.0-{tag}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for name, data in WHEEL_FILES.items():
                archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data + tag.encode())
        out[wheel.name] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return out


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """pip looks only at a local find-links folder, as CI has no say over the real index's contents."""
    wheels = make_index(tmp_path / "index", ("py3-none-any", "py2.py3-none-any"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return wheels


def test_every_artifact_of_the_version_is_hashed(local_index: dict[str, str]) -> None:
    found, missing = artifact_hashes([{"name": "tiny_pkg", "version": "1.0"}])
    assert found == {"tiny-pkg": sorted(f"sha256:{h}" for h in local_index.values())}
    assert missing == []


def test_packages_not_on_the_index_are_named_and_direct_installs_skipped(local_index: dict[str, str]) -> None:
    packages = [
        {"name": "tiny-pkg", "version": "2.0"},  # that version is not on the index
        {"name": "nowhere", "version": "1.0"},
        {"name": "mine", "version": "0.1", "direct_url": {"url": "file:///src/mine", "dir_info": {"editable": True}}},
    ]
    found, missing = artifact_hashes(packages)
    assert found == {}
    assert missing == ["nowhere", "tiny-pkg"]


def test_capture_with_hashes_stores_them_in_the_lock(local_index: dict[str, str], tmp_path: Path, cli: Any,
                                                      machine_facts: dict[str, Any]) -> None:
    machine_facts["packages"] = [{"name": "tiny-pkg", "version": "1.0"}, {"name": "nowhere", "version": "1.0"}]
    facts = write_facts(machine_facts, tmp_path / "facts.json")
    out = tmp_path / "envlock.lock"

    result = cli("capture", "--facts", str(facts), "--hashes", "--no-numerics", "-o", str(out))

    assert result.exit_code == 0, result.stderr
    assert "artifact hashes from the index for 1 packages; none for nowhere (not on the index)" in result.stdout
    lock, _ = load(out)
    assert lock.packages["tiny-pkg"].hashes == tuple(sorted(f"sha256:{h}" for h in local_index.values()))
    assert lock.packages["nowhere"].hashes == ()
    assert "hashes = [" in out.read_text() or '"sha256:' in out.read_text()


def test_without_hashes_the_lock_has_none(tmp_path: Path, cli: Any, machine_facts: dict[str, Any]) -> None:
    machine_facts["packages"] = [{"name": "tiny-pkg", "version": "1.0"}]
    facts = write_facts(machine_facts, tmp_path / "facts.json")
    assert cli("capture", "--facts", str(facts), "--no-numerics", "-o", str(tmp_path / "l.lock")).exit_code == 0
    lock, _ = load(tmp_path / "l.lock")
    assert lock.packages["tiny-pkg"].hashes == ()
    assert json.loads(facts.read_text())["packages"] == [{"name": "tiny-pkg", "version": "1.0"}]


def test_without_pip_tools_the_error_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from envlock.errors import UsageError

    real_import = builtins.__import__

    def no_piptools(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("piptools"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_piptools)
    with pytest.raises(UsageError, match=r"pip install 'envlock\[hashes\]'"):
        artifact_hashes([{"name": "six", "version": "1.16.0"}])

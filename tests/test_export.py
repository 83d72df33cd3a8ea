"""`envlock export`: a requirements file pip installs exactly the locked set from, checked by hash."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock
from envlock.export import export_requirements
from envlock.facts import load_facts
from envlock.probes.packages import collect_packages
from tests.helpers import ENVLOCK, clean_env, make_venv, run_ok, write_lock
from tests.test_verify import build_wheel

HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
DEVBOX = HOSTS / "linux-nogpu-nocuda-x86_64_v4-devbox" / "facts.json"


def test_index_packages_get_their_hashes_and_the_pythons_markers() -> None:
    facts = load_facts(DEVBOX)
    numpy = next(p for p in facts["packages"] if p["name"] == "numpy")
    numpy["hashes"] = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    result = export_requirements(build_lock(facts, created="2026-01-01T00:00:00Z"), "envlock.lock")
    block = result.text.split("numpy==", 1)[1].split("\n\n", 1)[0]
    first = block.splitlines()[0]
    assert first.startswith(f"{numpy['version']} ; python_version == \"3.") and 'sys_platform == "linux"' in first
    assert f"--hash=sha256:{'a' * 64}" in block and f"--hash=sha256:{'b' * 64}" in block
    assert any("no artifact hashes in the lock for" in w for w in result.warnings)


def test_vcs_is_exported_as_its_reference_and_editable_installs_are_named_and_left_out() -> None:
    facts = load_facts(DEVBOX)
    packages = copy.deepcopy(facts["packages"][:2])
    packages[0]["direct_url"] = {"url": "https://example.org/a.git", "vcs_info": {"vcs": "git", "commit_id": "ab" * 20}}
    packages[1]["direct_url"] = {"url": "file:///src/b", "dir_info": {"editable": True}}
    facts["packages"] = packages
    lock = build_lock(facts, created="2026-01-01T00:00:00Z")
    result = export_requirements(lock, "envlock.lock")
    first, second = (p["name"] for p in packages)
    assert f"{first} @ git+https://example.org/a.git@{'ab' * 20} ;" in result.text
    assert second not in result.text.split("\n\n", 1)[1]
    assert any(second in w and "left out" in w for w in result.warnings)


@pytest.mark.slow
def test_pip_installs_exactly_the_locked_set_from_the_export(tmp_path: Path, machine_facts: dict[str, Any]) -> None:
    wheels = tmp_path / "wheels"
    wheel = build_wheel(wheels, "1.0")
    source = make_venv(tmp_path / "source")
    run_ok(sys.executable, "-m", "pip", "--python", source.python, "install", "--no-index", "--no-deps",
           "--find-links", wheels, "tiny-pkg==1.0")  # as from an index: no direct_url.json
    facts = copy.deepcopy(machine_facts)
    facts["packages"] = collect_packages([source.site])
    facts["packages"][0]["hashes"] = ["sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()]
    lock = write_lock(facts, tmp_path / "envlock.lock")
    out = tmp_path / "requirements.txt"
    done = subprocess.run([str(ENVLOCK), "export", str(lock), "-o", str(out)], capture_output=True, text=True,
                          env=clean_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert "--require-hashes" in out.read_text()
    target = make_venv(tmp_path / "target")
    run_ok(sys.executable, "-m", "pip", "--python", target.python, "install", "--require-hashes", "--no-deps",
           "--no-index", "--find-links", wheels, "-r", out)
    installed = {p["name"]: (p["version"], p.get("files")) for p in collect_packages([target.site])}
    locked = {p["name"]: (p["version"], p.get("files")) for p in facts["packages"]}
    assert installed == locked
    # A wheel that is not the locked build is refused by pip's hash check.
    tampered = tmp_path / "tampered"
    build_wheel(tampered, "1.0").write_bytes(wheel.read_bytes() + b"\0")
    refused = subprocess.run([sys.executable, "-m", "pip", "--python", str(make_venv(tmp_path / "t2").python),
                              "install", "--require-hashes", "--no-deps", "--no-index", "--find-links", str(tampered),
                              "-r", str(out)], capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "hash" in refused.stderr.lower()

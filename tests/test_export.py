"""`envlock export`: a requirements file pip, and a PEP 751 pylock.toml uv, install exactly the locked set from."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from envlock.capturing import build_lock
from envlock.compare import compare_locks
from envlock.export import export_pylock, export_requirements
from envlock.facts import load_facts
from envlock.hashes import public_url
from envlock.probes.packages import canonical_name, collect_packages
from tests.helpers import BIN, ENVLOCK, clean_env, make_venv, run_ok, write_facts, write_lock
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


# --- pylock (PEP 751) ---------------------------------------------------------------------------------------

A100 = HOSTS / "linux-nvidia535-cuda12.1-cascadelake-a100x2mig" / "facts.json"
WHEEL_SHA = "sha256:" + "c" * 64
SDIST_SHA = "sha256:" + "d" * 64


def _with_files(facts: dict[str, Any], index: int) -> tuple[str, str]:
    """Give the index's files (a wheel and an sdist) to the package at `index`; (its canonical name, version)."""
    pkg = facts["packages"][index]
    stem = canonical_name(pkg["name"]).replace("-", "_")
    wheel, sdist = f"{stem}-{pkg['version']}-py3-none-any.whl", f"{stem}-{pkg['version']}.tar.gz"
    pkg["hashes"] = sorted([WHEEL_SHA, SDIST_SHA])
    pkg["artifacts"] = [{"name": wheel, "url": f"https://files.example.org/p/{wheel}", "sha256": WHEEL_SHA},
                        {"name": sdist, "url": f"file:///srv/wheels/{sdist}", "sha256": SDIST_SHA}]
    return canonical_name(pkg["name"]), pkg["version"]


def test_pylock_holds_the_recorded_files_the_pythons_markers_and_the_hardware() -> None:
    facts = load_facts(A100)
    name, version = _with_files(facts, 0)
    lock = build_lock(facts, created="2026-01-01T00:00:00Z")
    result = export_pylock(lock, "envlock.lock")
    doc = tomllib.loads(result.text)
    assert doc["lock-version"] == "1.0" and doc["created-by"] == "envlock"
    major_minor = ".".join(lock.python.version.split(".")[:2])
    assert doc["requires-python"] == f"=={major_minor}.*"
    assert doc["environments"] == [f'python_version == "{major_minor}" and implementation_name == "cpython" '
                                   'and sys_platform == "linux"']
    (package,) = doc["packages"]
    assert package["name"] == name and package["version"] == version
    (wheel,) = package["wheels"]
    assert wheel["name"].endswith("-py3-none-any.whl") and wheel["url"].startswith("https://files.example.org/")
    assert wheel["hashes"] == {"sha256": "c" * 64}
    assert package["sdist"]["path"] == f"/srv/wheels/{package['sdist']['name']}"  # a local file: its path
    tool = doc["tool"]["envlock"]
    assert tool["content-hash"] == lock.lock.content_hash and tool["cuda"]["torch-cuda"] == "12.1"
    (target,) = tool["targets"].values()
    assert target["gpu"] == "NVIDIA A100-SXM4-80GB" and target["gpu-count"] == 2
    assert target["cpu"] == "cascadelake" and target["compute-capability"] == "8.0"
    # Every other package has no recorded files: left out, and said so in one line.
    (warning,) = result.warnings
    assert warning.startswith("left out, no artifact files in the lock for ") and "capture --hashes" in warning


def test_packagings_pep_751_model_accepts_the_export() -> None:
    pylock = pytest.importorskip("packaging.pylock", reason="this packaging has no PEP 751 model (before 25.1)")
    facts = load_facts(A100)
    _with_files(facts, 0)
    _with_files(facts, 1)
    facts["packages"][2]["direct_url"] = {"url": "https://example.org/c.git",
                                          "vcs_info": {"vcs": "git", "commit_id": "ef" * 20}}
    result = export_pylock(build_lock(facts, created="2026-01-01T00:00:00Z"), "envlock.lock")
    model = pylock.Pylock.from_dict(tomllib.loads(result.text))
    assert [p.name for p in model.packages][:2] == sorted(canonical_name(p["name"]) for p in facts["packages"][:2])
    vcs = next(p for p in model.packages if p.vcs is not None)
    assert vcs.vcs.commit_id == "ef" * 20 and vcs.vcs.url == "https://example.org/c.git" and vcs.version is None


def test_editable_and_local_installs_are_named_and_left_out_of_the_pylock() -> None:
    facts = load_facts(A100)
    _with_files(facts, 0)
    facts["packages"][1]["direct_url"] = {"url": "file:///src/b", "dir_info": {"editable": True}}
    facts["packages"][2]["direct_url"] = {"url": "file:///src/c", "dir_info": {}}
    result = export_pylock(build_lock(facts, created="2026-01-01T00:00:00Z"), "envlock.lock")
    b, c = (canonical_name(p["name"]) for p in facts["packages"][1:3])
    names = [p["name"] for p in tomllib.loads(result.text)["packages"]]
    assert b not in names and c not in names
    assert f"left out, not installable from an index: {b} (editable), {c} (local)" in result.warnings


def test_a_lock_without_recorded_files_cannot_be_exported_as_pylock(tmp_path: Path) -> None:
    lock = write_lock(load_facts(DEVBOX), tmp_path / "envlock.lock")
    done = subprocess.run([str(ENVLOCK), "export", str(lock), "--format", "pylock"], capture_output=True,
                          text=True, env=clean_env(), check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert "nothing to export as pylock" in done.stderr and "envlock capture --hashes" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_file_name_that_is_not_the_locked_package_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("packaging.pylock", reason="this packaging has no PEP 751 model (before 25.1)")
    facts = load_facts(A100)
    _with_files(facts, 0)
    facts["packages"][0]["artifacts"][0]["name"] = "torch-9.9-py3-none-any.whl"
    lock = write_lock(facts, tmp_path / "envlock.lock")
    done = subprocess.run([str(ENVLOCK), "export", str(lock), "--format", "pylock", "-o", str(tmp_path / "p.toml")],
                          capture_output=True, text=True, env=clean_env(), check=False)
    assert done.returncode == 2 and "cannot export as pylock" in done.stderr and "wheels[0]" in done.stderr
    assert not (tmp_path / "p.toml").exists()


def test_index_urls_are_recorded_without_credentials() -> None:
    assert public_url("https://user:tok3n@pypi.corp.example:8443/files/a-1.0.whl#sha256=ab") == \
        "https://pypi.corp.example:8443/files/a-1.0.whl"


def _uv() -> str | None:
    found = BIN / "uv"
    if found.exists():
        return str(found)
    if os.environ.get("ENVLOCK_REQUIRE_UV") == "1":
        pytest.fail("ENVLOCK_REQUIRE_UV=1 but uv is not installed (pip install uv)")
    pytest.skip("uv is not installed (pip install uv; ENVLOCK_REQUIRE_UV=1 makes this a failure)")


@pytest.mark.slow
def test_uv_installs_exactly_the_locked_set_from_the_pylock(tmp_path: Path, machine_facts: dict[str, Any]) -> None:
    uv = _uv()
    wheels = tmp_path / "wheels"
    wheel = build_wheel(wheels, "1.0")
    source = make_venv(tmp_path / "source")
    run_ok(sys.executable, "-m", "pip", "--python", source.python, "install", "--no-index", "--no-deps",
           "--find-links", wheels, "tiny-pkg==1.0")
    facts = copy.deepcopy(machine_facts)
    facts["packages"] = collect_packages([source.site])
    facts_file = write_facts(facts, tmp_path / "facts.json")
    # `capture --hashes` asks the index (here a local find-links folder) for the files and their hashes.
    index = clean_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), XDG_CACHE_HOME=str(tmp_path / "cache"))
    lock = tmp_path / "envlock.lock"
    done = subprocess.run([str(ENVLOCK), "capture", "--facts", str(facts_file), "--hashes", "-o", str(lock)],
                          capture_output=True, text=True, env=index, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f'name = "{wheel.name}"' in lock.read_text() and f"sha256:{sha}" in lock.read_text()
    out = tmp_path / "pylock.toml"
    done = subprocess.run([str(ENVLOCK), "export", str(lock), "--format", "pylock", "-o", str(out)],
                          capture_output=True, text=True, env=clean_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: 1 packages" in done.stderr
    target = make_venv(tmp_path / "target")
    uv_env = clean_env(UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_NO_CONFIG="1", UV_OFFLINE="1")
    installed_by_uv = subprocess.run([uv, "pip", "install", "--python", str(target.python), "-r", str(out)],
                                     capture_output=True, text=True, env=uv_env, check=False, timeout=300)
    assert installed_by_uv.returncode == 0, installed_by_uv.stderr
    installed = {p["name"]: (p["version"], p.get("files")) for p in collect_packages([target.site])}
    locked = {p["name"]: (p["version"], p.get("files")) for p in facts["packages"]}
    assert installed == locked
    # A wheel that is not the locked build is refused by uv's hash check.
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    refused = subprocess.run([uv, "pip", "install", "--python", str(make_venv(tmp_path / "t2").python), "-r",
                              str(out)], capture_output=True, text=True, env=uv_env, check=False, timeout=300)
    assert refused.returncode != 0 and "hash" in refused.stderr.lower()


def test_where_the_index_keeps_the_files_is_never_a_finding() -> None:
    facts = load_facts(A100)
    plain = build_lock(facts, created="2026-01-01T00:00:00Z")
    _with_files(facts, 0)
    recorded = build_lock(facts, created="2026-01-01T00:00:00Z")
    assert recorded.packages != plain.packages  # the lock holds them
    assert compare_locks(recorded, plain).findings == ()
    assert compare_locks(plain, recorded).findings == ()


class _Link:
    def __init__(self, url: str, sha: str) -> None:
        self.url_without_fragment, self.filename = url, url.rsplit("/", 1)[1]
        self.hash, self.hash_name, self.is_file, self.file_path = sha, "sha256", False, ""


class _Candidate:
    def __init__(self, version: str, url: str, sha: str) -> None:
        self.version, self.link = version, _Link(url, sha)


class _Index:
    """What pip-tools' repository answers for a name: its candidates (version and link)."""

    def __init__(self, candidates: list[_Candidate]) -> None:
        self.candidates = candidates

    def find_all_candidates(self, name: str) -> list[_Candidate]:
        return self.candidates


def test_recorded_files_are_the_versions_own_with_a_listed_hash_and_no_credentials_or_odd_names() -> None:
    from envlock.hashes import _files

    good = "https://tok:secret@idx.example/p/a-1.0-py3-none-any.whl"
    index = _Index([_Candidate("1.0", good, "a" * 64),
                    _Candidate("1.0", "https://idx.example/p/a-1.0.tar.gz", "f" * 64),  # hash not in the list
                    _Candidate("2.0", "https://idx.example/p/a-2.0-py3-none-any.whl", "a" * 64),
                    _Candidate("1.0", "https://idx.example/p/a-1.0-py3-none-any.whl%0a;x.whl", "a" * 64)])
    files = _files(index, "a", "1.0", ["sha256:" + "a" * 64])
    assert files == [{"name": "a-1.0-py3-none-any.whl", "url": "https://idx.example/p/a-1.0-py3-none-any.whl",
                      "sha256": "sha256:" + "a" * 64}]

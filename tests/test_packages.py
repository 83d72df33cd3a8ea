"""Installed distributions: names, versions, sources and a prefix-independent digest of the installed files."""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import json
import marshal
import os
import stat
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from envlock.model import ModelError, Package
from envlock.probes.packages import (
    canonical_name,
    collect_packages,
    parse_packages,
    parse_source,
    record_digest,
    search_path,
)
from envlock.probes.sizes import SizeCheck, SizeTables, changed_sizes, changed_sizes_all, frame, record_sizes, unframe
from tests.helpers import make_venv, run_ok

# --- helpers --------------------------------------------------------------------------------------------


def _record(rows: Iterable[tuple[str, str, str]]) -> str:
    """RECORD text, quoted the way csv writes it (as pip does)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _hash(data: bytes) -> str:
    """A RECORD hash: sha256, urlsafe base64 without padding (PEP 376 / the wheel spec)."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _metadata(name: str, version: str | None = "1.0", body: str = "") -> str:
    text = f"Metadata-Version: 2.1\nName: {name}\n"
    if version is not None:
        text += f"Version: {version}\n"
    text += "Summary: a test distribution\n"
    return text + (f"\n{body}" if body else "")


def _dist_info(folder: Path, name: str, version: str | None = "1.0", *, record: str | None = None,
               direct_url: Any = None, body: str = "", dirname: str | None = None) -> Path:
    """A `.dist-info` folder as an installer leaves it."""
    dist = folder / (dirname or f"{name.replace('-', '_')}-{version}.dist-info")
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(_metadata(name, version, body), encoding="utf-8")
    if record is not None:
        (dist / "RECORD").write_text(record, encoding="utf-8")
    if direct_url is not None:
        (dist / "direct_url.json").write_text(json.dumps(direct_url), encoding="utf-8")
    return dist


def _by_name(facts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {canonical_name(fact["name"]): fact for fact in facts}


DIST = "tiny_pkg-1.0.dist-info"
# One distribution's RECORD: shipped files, the installer's notes, a console script, caches, an editable hook.
KEPT = [
    ("tiny_pkg/__init__.py", _hash(b"init"), "4"),
    ("tiny_pkg/cli.py", _hash(b"cli"), "3"),
    (f"{DIST}/METADATA", _hash(b"meta"), "4"),
    (f"{DIST}/WHEEL", _hash(b"wheel"), "5"),
    (f"{DIST}/entry_points.txt", _hash(b"ep"), "2"),
    (f"{DIST}/licenses/LICENSE", _hash(b"mit"), "3"),
    ("tiny_pkg/RECORD", _hash(b"not the installer's"), "19"),  # only the dist-info's own RECORD is the installer's
]
DROPPED = [
    ("../../../bin/tiny", _hash(b"#!/venv-a/bin/python"), "20"),
    ("..\\..\\Scripts\\tiny.exe", _hash(b"MZ"), "2"),
    ("/opt/prefix/share/tiny/data.txt", _hash(b"abs"), "3"),
    ("C:/Users/me/tiny.txt", _hash(b"drive"), "5"),
    ("tiny_pkg/__pycache__/__init__.cpython-311.pyc", _hash(b"pyc-a"), "5"),
    ("tiny_pkg/old.pyc", _hash(b"pyc"), "3"),
    ("tiny_pkg/old.pyo", _hash(b"pyo"), "3"),
    ("__pycache__/top.cpython-311.pyc", _hash(b"top"), "3"),
    (f"{DIST}/INSTALLER", _hash(b"pip\n"), "4"),
    (f"{DIST}/REQUESTED", _hash(b""), "0"),
    (f"{DIST}/direct_url.json", _hash(b'{"url": "file:///a"}'), "20"),
    (f"{DIST}/uv_cache.json", _hash(b"{}"), "2"),
    ("__editable__.tiny_pkg-1.0.pth", _hash(b"/home/me/src"), "12"),
    ("__editable___tiny_pkg_1_0_finder.py", _hash(b"MAPPING = {'/home/me/src'}"), "26"),
    (f"{DIST}/RECORD", "", ""),
    ("tiny_pkg/unhashed.txt", "", ""),
]


# --- record_digest ----------------------------------------------------------------------------------------


def test_record_digest_is_a_sha256_over_the_kept_files_only() -> None:
    digest = record_digest(_record(KEPT + DROPPED), DIST)

    assert digest == record_digest(_record(KEPT), DIST)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert digest != record_digest("", DIST)


@pytest.mark.parametrize("row", DROPPED, ids=[row[0] for row in DROPPED])
def test_record_digest_ignores_prefix_dependent_and_installer_entries(row: tuple[str, str, str]) -> None:
    changed = (row[0], _hash(b"something else entirely"), "99") if row[1] else row

    assert record_digest(_record([*KEPT, changed]), DIST) == record_digest(_record(KEPT), DIST)


@pytest.mark.parametrize("index", range(len(KEPT)), ids=[row[0] for row in KEPT])
def test_record_digest_changes_when_any_kept_file_changes(index: int) -> None:
    before = record_digest(_record(KEPT), DIST)
    edited = list(KEPT)
    path, _, size = edited[index]
    edited[index] = (path, _hash(b"one byte changed"), size)
    renamed = list(KEPT)
    renamed[index] = (path + "x", *KEPT[index][1:])

    assert record_digest(_record(edited), DIST) != before
    assert record_digest(_record(renamed), DIST) != before
    assert record_digest(_record(KEPT[:index] + KEPT[index + 1:]), DIST) != before


def test_record_digest_installer_files_are_only_dropped_in_the_distributions_own_dist_info() -> None:
    other = [("other_pkg-2.0.dist-info/INSTALLER", _hash(b"pip\n"), "4")]

    assert record_digest(_record(KEPT + other), DIST) != record_digest(_record(KEPT), DIST)


def test_record_digest_ignores_the_size_column_and_tolerates_short_rows() -> None:
    resized = [(path, digest, "12345") for path, digest, _ in KEPT]
    text = _record(KEPT) + "lonely-path-without-hash\n\n"

    assert record_digest(_record(resized), DIST) == record_digest(_record(KEPT), DIST)
    assert record_digest(text, DIST) == record_digest(_record(KEPT), DIST)


def test_record_digest_reads_windows_separators_like_posix_ones() -> None:
    windows = [(path.replace("/", "\\"), digest, size) for path, digest, size in KEPT]

    assert record_digest(_record(windows), DIST) == record_digest(_record(KEPT), DIST)


@given(st.permutations(KEPT + DROPPED))
def test_record_digest_does_not_depend_on_row_order(rows: list[tuple[str, str, str]]) -> None:
    assert record_digest(_record(rows), DIST) == record_digest(_record(KEPT), DIST)


# --- parse_source -----------------------------------------------------------------------------------------

COMMIT = "0123456789ABCDEF0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("direct_url", "expected"),
    [
        (None, {"source": "index"}),
        ({"url": "https://github.com/o/r.git", "vcs_info": {"vcs": "git", "commit_id": COMMIT,
                                                            "requested_revision": "main"}},
         {"source": "vcs", "url": "https://github.com/o/r.git", "commit": COMMIT.lower()}),
        ({"url": "https://github.com/o/r.git", "vcs_info": {"vcs": "git"}},
         {"source": "vcs", "url": "https://github.com/o/r.git"}),
        ({"url": "file:///home/me/src/r", "dir_info": {"editable": True}},
         {"source": "editable", "url": "file:///home/me/src/r"}),
        ({"url": "file:///home/me/src/r", "dir_info": {"editable": False}},
         {"source": "local", "url": "file:///home/me/src/r"}),
        ({"url": "file:///home/me/src/r", "dir_info": {}}, {"source": "local", "url": "file:///home/me/src/r"}),
        ({"url": "https://files.example.org/r-1.0-py3-none-any.whl",
          "archive_info": {"hashes": {"sha256": "ab" * 32}}},
         {"source": "url", "url": "https://files.example.org/r-1.0-py3-none-any.whl"}),
        ({"url": "file:///tmp/r-1.0-py3-none-any.whl", "archive_info": {}},
         {"source": "local", "url": "file:///tmp/r-1.0-py3-none-any.whl"}),
    ],
    ids=["index", "vcs-commit", "vcs-no-commit", "editable", "dir", "dir-no-flag", "archive-https", "archive-file"],
)
def test_parse_source_reads_every_pep_610_form(direct_url: Any, expected: dict[str, str]) -> None:
    assert parse_source(direct_url, "packages[0].direct_url") == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:token@host.example/x.whl", "https://host.example/x.whl"),
        ("https://token@host.example/x.whl", "https://host.example/x.whl"),
        ("https://user:token@host.example:8443/simple/x.whl?a=1#sha256=00",
         "https://host.example:8443/simple/x.whl?a=1#sha256=00"),
        ("https://user:p%40ss@[::1]:8080/x.whl", "https://[::1]:8080/x.whl"),
        ("git+https://oauth2:glpat-secret@gitlab.example/o/r.git", "git+https://gitlab.example/o/r.git"),
        # PEP 610: a well-known, non-secret user such as `git` for ssh is kept, or the URL no longer works.
        ("git+ssh://git@github.com/o/r.git", "git+ssh://git@github.com/o/r.git"),
        ("https://host.example/x.whl", "https://host.example/x.whl"),
    ],
    ids=["user-token", "token-only", "port-query-fragment", "ipv6", "vcs-https", "git-ssh-user", "no-credentials"],
)
def test_parse_source_strips_credentials_from_urls(url: str, expected: str) -> None:
    infos: list[dict[str, Any]] = [{"archive_info": {}}, {"vcs_info": {"vcs": "git", "commit_id": "abcdef0"}}]
    for info in infos:
        source = parse_source({"url": url, **info}, "d")
        assert source["url"] == expected
        assert "token" not in source["url"] and "secret" not in source["url"]


@pytest.mark.parametrize(
    ("direct_url", "where"),
    [
        ([], "packages[3].direct_url"),
        ("file:///x", "packages[3].direct_url"),
        ({"url": 7, "archive_info": {}}, "packages[3].direct_url.url"),
        ({"url": "https://h/r.git", "vcs_info": []}, "packages[3].direct_url.vcs_info"),
        ({"url": "https://h/r.git", "vcs_info": {"vcs": "git", "commit_id": 1234567}},
         "packages[3].direct_url.vcs_info.commit_id"),
        ({"url": "file:///x", "dir_info": "editable"}, "packages[3].direct_url.dir_info"),
        ({"url": "file:///x", "dir_info": {"editable": "yes"}}, "packages[3].direct_url.dir_info.editable"),
        ({"url": "https://u:p@[::1/x.whl", "archive_info": {}}, "packages[3].direct_url.url"),
    ],
    ids=["list", "string", "url-int", "vcs-list", "commit-int", "dir-str", "editable-str", "broken-ipv6"],
)
def test_parse_source_rejects_malformed_direct_url_naming_the_place(direct_url: Any, where: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_source(direct_url, "packages[3].direct_url")

    assert caught.value.where == where
    assert str(caught.value).startswith(where + ":")


# --- parse_packages ---------------------------------------------------------------------------------------


def test_parse_packages_keys_are_canonical_and_sorted() -> None:
    raw = [
        {"name": "Zope.Interface", "version": "6.0"},
        {"name": "typing_extensions", "version": "4.12.2", "files": "sha256:" + "1" * 64},
        {"name": "Flask", "version": "3.0.0",
         "direct_url": {"url": "https://github.com/p/f.git", "vcs_info": {"vcs": "git", "commit_id": "ABCDEF1"}}},
        {"name": "a__b..c", "version": "1"},
    ]

    packages = parse_packages(raw)

    assert list(packages) == ["a-b-c", "flask", "typing-extensions", "zope-interface"]
    assert packages["flask"] == Package(version="3.0.0", source="vcs", url="https://github.com/p/f.git",
                                        commit="abcdef1")
    assert packages["typing-extensions"].files == "sha256:" + "1" * 64
    assert packages["zope-interface"] == Package(version="6.0")


def test_parse_packages_keeps_the_first_of_names_equal_after_canonicalization() -> None:
    raw = [
        {"name": "Foo.Bar", "version": "2.0"},
        {"name": "foo_bar", "version": "1.0"},
        {"name": "FOO-BAR", "version": "0.1"},
    ]

    assert parse_packages(raw) == {"foo-bar": Package(version="2.0")}


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"name": "x"}, "packages"),
        ([{"name": "x", "version": "1"}, "x"], "packages[1]"),
        ([{"version": "1"}], "packages[0].name"),
        ([{"name": "x"}], "packages[0].version"),
        ([{"name": "x", "version": "1", "files": 5}], "packages[0].files"),
        ([{"name": "x", "version": "1"}, {"name": "y", "version": "1", "direct_url": {
            "url": "https://h/y.git", "vcs_info": {"commit_id": ["abc"]}}}],
         "packages[1].direct_url.vcs_info.commit_id"),
    ],
    ids=["not-a-list", "not-an-object", "no-name", "no-version", "files-int", "bad-commit"],
)
def test_parse_packages_rejects_malformed_facts_naming_the_place(raw: Any, where: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_packages(raw)

    assert caught.value.where == where


# --- collect_packages on synthetic site folders ---------------------------------------------------------------


def test_collect_packages_reads_dist_info_egg_info_folders_and_egg_info_files(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _dist_info(site, "tiny-pkg", "1.0", record=_record(KEPT + DROPPED), dirname=DIST,
               direct_url={"url": "https://github.com/o/t.git", "vcs_info": {"vcs": "git", "commit_id": COMMIT}})
    (site / "old_style.egg-info").mkdir()
    (site / "old_style.egg-info" / "PKG-INFO").write_text(_metadata("old-style", "0.3"), encoding="utf-8")
    (site / "single_file-2.1-py3.11.egg-info").write_text(_metadata("single_file", "2.1"), encoding="utf-8")
    (site / "tiny_pkg").mkdir()
    (site / "README.txt").write_text("not a distribution", encoding="utf-8")

    facts = _by_name(collect_packages([str(site)]))

    assert sorted(facts) == ["old-style", "single-file", "tiny-pkg"]
    assert facts["tiny-pkg"] == {
        "name": "tiny-pkg", "version": "1.0", "location": str(site), "metadata_dir": DIST,
        "direct_url": {"url": "https://github.com/o/t.git", "vcs_info": {"vcs": "git", "commit_id": COMMIT}},
        "files": record_digest(_record(KEPT), DIST),
    }
    # egg-info carries no RECORD: no digest, and no invented source.
    assert facts["old-style"] == {"name": "old-style", "version": "0.3", "location": str(site),
                                  "metadata_dir": "old_style.egg-info"}
    assert facts["single-file"]["version"] == "2.1" and "files" not in facts["single-file"]
    assert parse_packages(list(facts.values()))["tiny-pkg"].commit == COMMIT.lower()


def test_collect_packages_gives_one_digest_for_one_distribution_in_two_prefixes(tmp_path: Path) -> None:
    """The fast, synthetic twin of the two-venv test: same shipped files, different scripts, caches and notes."""
    digests = []
    for prefix in ("venv-a", "other/place/venv-b"):
        site = tmp_path / prefix / "lib" / "site-packages"
        rows = [*KEPT, ("../../bin/tiny", _hash(f"#!{tmp_path / prefix}/bin/python".encode()), "40"),
                ("tiny_pkg/__pycache__/cli.cpython-311.pyc", _hash(prefix.encode()), "9"),
                (f"{DIST}/direct_url.json", _hash(prefix.encode()), "9")]
        _dist_info(site, "tiny-pkg", record=_record(rows), dirname=DIST)
        digests.append(collect_packages([str(site)])[0]["files"])

    assert digests[0] == digests[1] == record_digest(_record(KEPT), DIST)


def test_collect_packages_digests_false_skips_reading_records(tmp_path: Path) -> None:
    _dist_info(tmp_path / "site", "tiny", record=_record(KEPT))

    (fact,) = collect_packages([str(tmp_path / "site")], digests=False)

    assert "files" not in fact and fact["version"] == "1.0"


def test_collect_packages_first_path_entry_wins_like_importlib_metadata(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _dist_info(first, "Foo_Bar", "2.0")
    _dist_info(second, "foo.bar", "1.0", record=_record(KEPT))
    _dist_info(second, "only-second", "3.0")
    path = [str(first), str(second)]

    facts = _by_name(collect_packages(path))

    assert {key: fact["version"] for key, fact in facts.items()} == {"foo-bar": "2.0", "only-second": "3.0"}
    assert facts["foo-bar"]["location"] == str(first) and "files" not in facts["foo-bar"]
    for name in ("foo-bar", "Foo_Bar", "only-second"):
        first_found = next(iter(importlib.metadata.Distribution.discover(name=name, path=path)))
        assert facts[canonical_name(name)]["version"] == first_found.version
    assert _by_name(collect_packages(path[::-1]))["foo-bar"]["version"] == "1.0"


def test_collect_packages_reads_only_the_metadata_headers(tmp_path: Path) -> None:
    body = "Name: impostor\nVersion: 6.6.6\n\n" + "A long description line.\n" * 20000
    _dist_info(tmp_path / "site", "Real-Name", "1.2.3", body=body)

    (fact,) = collect_packages([str(tmp_path / "site")])

    assert (fact["name"], fact["version"]) == ("Real-Name", "1.2.3")


@pytest.mark.parametrize("before", [0, 4090, 4095, 5000, 20000])
def test_headers_longer_than_the_first_read_are_read_whole(tmp_path: Path, before: int) -> None:
    # The name and version after `before` characters of other headers (many classifiers, a long keyword list):
    # the first read holds no blank line, so the rest of the headers is read too.
    dist = tmp_path / "site" / "late-1.0.dist-info"
    dist.mkdir(parents=True)
    filler = "".join(f"Classifier: Topic :: {i:05d}\n" for i in range(before // 27 + 1))[:before].rpartition("\n")[0]
    head = f"Metadata-Version: 2.1\n{filler}\nName: late\nVersion: 4.5.6\n".replace("\n\n", "\n")
    (dist / "METADATA").write_text(head + "\n" + "body\n" * 5000, encoding="utf-8")
    (fact,) = collect_packages([str(tmp_path / "site")])
    assert (fact["name"], fact["version"]) == ("late", "4.5.6")


@pytest.mark.parametrize("broken", ["no-version", "no-name", "no-metadata", "empty-metadata", "egg-no-pkg-info"])
def test_collect_packages_skips_distributions_it_cannot_name(tmp_path: Path, broken: str) -> None:
    site = tmp_path / "site"
    _dist_info(site, "good", "1.0")
    if broken == "no-version":
        _dist_info(site, "bad", None, dirname="bad-1.0.dist-info")
    elif broken == "no-name":
        (site / "bad-1.0.dist-info").mkdir()
        (site / "bad-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nVersion: 1.0\n")
    elif broken == "no-metadata":
        (site / "bad-1.0.dist-info").mkdir()
    elif broken == "empty-metadata":
        (site / "bad-1.0.dist-info").mkdir()
        (site / "bad-1.0.dist-info" / "METADATA").write_text("")
    else:
        (site / "bad.egg-info").mkdir()

    assert [fact["name"] for fact in collect_packages([str(site)])] == ["good"]


def test_collect_packages_tolerates_broken_direct_url_and_missing_record(tmp_path: Path) -> None:
    dist = _dist_info(tmp_path / "site", "tiny")
    (dist / "direct_url.json").write_text("{not json", encoding="utf-8")

    (fact,) = collect_packages([str(tmp_path / "site")])

    assert "direct_url" not in fact and "files" not in fact
    assert parse_packages([fact])["tiny"].source == "index"


def test_collect_packages_skips_missing_and_non_folder_entries(tmp_path: Path) -> None:
    _dist_info(tmp_path / "site", "tiny")
    archive = tmp_path / "lib.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)

    facts = collect_packages([str(tmp_path / "missing"), str(archive), str(tmp_path / "site"), str(tmp_path / "site")])

    assert [fact["name"] for fact in facts] == ["tiny"]


def test_search_path_skips_the_working_folder_python_adds_unless_pythonpath_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, site = tmp_path / "work", tmp_path / "site"
    _dist_info(work, "from-cwd")
    _dist_info(site, "from-site")
    monkeypatch.chdir(work)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    # `python -c` puts '' first, `python -m` the working folder itself.
    path = ["", ".", str(work), str(site)]

    assert search_path(path) == [str(site)]
    assert [fact["name"] for fact in collect_packages(path)] == ["from-site"]

    for pythonpath in (str(work), ".", os.pathsep.join([str(tmp_path / "elsewhere"), str(work)])):
        monkeypatch.setenv("PYTHONPATH", pythonpath)
        assert [fact["name"] for fact in collect_packages(path)] == ["from-cwd", "from-site"], pythonpath


def test_search_path_defaults_to_sys_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _dist_info(tmp_path, "on-sys-path")
    monkeypatch.setattr(sys, "path", ["", str(tmp_path / "absent"), str(tmp_path)])

    assert search_path() == [str(tmp_path)]
    assert [fact["name"] for fact in collect_packages()] == ["on-sys-path"]


def test_a_packages_vendored_copies_on_the_path_are_not_installs(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """`import ray` puts site-packages/ray/thirdparty_files (its own psutil and colorama, RECORDs and all) on
    sys.path: those are ray's files, not distributions the environment installed."""
    site = tmp_path / "lib" / "site-packages"
    _dist_info(site, "ray")
    vendored = site / "ray" / "thirdparty_files"
    _dist_info(vendored, "colorama")
    elsewhere = tmp_path / "src"
    _dist_info(elsewhere, "mine")
    monkeypatch.setattr(sys, "path", [str(site), str(vendored), str(elsewhere)])

    assert search_path() == [str(site), str(elsewhere)]
    assert [fact["name"] for fact in collect_packages()] == ["ray", "mine"]


def test_collect_packages_matches_importlib_metadata_on_this_environment() -> None:
    folders = search_path()
    expected: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=folders):
        name = dist.metadata["Name"]
        if name and dist.version:
            expected.setdefault(canonical_name(name), dist.version)

    facts = collect_packages()
    packages = parse_packages(facts)

    assert {key: package.version for key, package in packages.items()} == expected
    assert {"pytest", "hypothesis"} <= set(packages)
    assert all(package.files.startswith("sha256:") for key, package in packages.items() if key == "pytest")


# --- two real virtual environments --------------------------------------------------------------------------

MODULE = b'"""A tiny package for envlock tests."""\n\nVALUE = 1\n'
CLI = b'def main() -> None:\n    print("tiny says hello")\n'


def _build_wheel(folder: Path, version: str, module: bytes = MODULE) -> Path:
    """`tiny_pkg-{version}-py3-none-any.whl`, written by hand: no network, no build backend."""
    dist_info = f"tiny_pkg-{version}.dist-info"
    files = {
        "tiny_pkg/__init__.py": module,
        "tiny_pkg/cli.py": CLI,
        # A plain script with a `#!python` shebang: the installer rewrites it for each prefix.
        f"tiny_pkg-{version}.data/scripts/tiny-script": b"#!python\nprint('tiny script')\n",
        f"{dist_info}/METADATA": _metadata("tiny-pkg", version).encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: envlock-tests\nRoot-Is-Purelib: true\n"
                               b"Tag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": b"[console_scripts]\ntiny-cli = tiny_pkg.cli:main\n",
    }
    rows = [(path, _hash(data), str(len(data))) for path, data in files.items()]
    files[f"{dist_info}/RECORD"] = _record([*rows, (f"{dist_info}/RECORD", "", "")]).encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"tiny_pkg-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            # A regular file's mode, with the x bit on scripts: pip keeps it only then.
            info.external_attr = (stat.S_IFREG | (0o755 if "/scripts/" in path else 0o644)) << 16
            archive.writestr(info, data)
    return wheel


def _venv(where: Path) -> tuple[Path, str]:
    """A fresh venv without pip: (its bin folder, its site-packages)."""
    venv = make_venv(where)
    return venv.python.parent, venv.site


def _install(bin_dir: Path, wheel: Path, *extra: str) -> None:
    run_ok(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "--no-index", "--no-deps",
         "--upgrade", *extra, wheel)


def _tiny(site: str) -> dict[str, Any]:
    (fact,) = [fact for fact in collect_packages([site]) if canonical_name(fact["name"]) == "tiny-pkg"]
    return fact


def _record_rows(site: str, version: str = "1.0") -> dict[str, str]:
    text = Path(site, f"tiny_pkg-{version}.dist-info", "RECORD").read_text(encoding="utf-8")
    return {row[0]: row[1] for row in csv.reader(io.StringIO(text)) if row}


@pytest.fixture(scope="module")
def two_venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same wheel installed into two venvs at unrelated paths: `a` with .pyc compiled by pip, `b` without."""
    root = tmp_path_factory.mktemp("venvs")
    wheel = _build_wheel(root / "wheels", "1.0")
    envs: dict[str, Any] = {"wheel": wheel, "root": root}
    for key, where, extra in (("a", root / "a", ()), ("b", root / "deeper" / "path" / "b", ("--no-compile",))):
        bin_dir, site = _venv(where)
        _install(bin_dir, wheel, *extra)
        envs[key] = (where, bin_dir, site)
    return envs


@pytest.mark.slow
def test_same_wheel_in_two_venvs_gives_the_same_digest(two_venvs: dict[str, Any]) -> None:
    (_, _, site_a), (_, _, site_b) = two_venvs["a"], two_venvs["b"]
    rows_a, rows_b = _record_rows(site_a), _record_rows(site_b)

    fact_a, fact_b = _tiny(site_a), _tiny(site_b)

    assert rows_a != rows_b  # the installs really differ: caches in one, scripts with other shebangs
    assert any(path.endswith(".pyc") for path in rows_a) and not any(path.endswith(".pyc") for path in rows_b)
    assert fact_a["files"] == fact_b["files"]
    assert fact_a["files"].startswith("sha256:")
    assert fact_a["location"] == site_a and fact_b["location"] == site_b
    package_a, package_b = parse_packages([fact_a])["tiny-pkg"], parse_packages([fact_b])["tiny-pkg"]
    assert package_a == package_b
    assert package_a.version == "1.0" and package_a.source == "local"
    assert package_a.url == two_venvs["wheel"].as_uri()


@pytest.mark.slow
def test_console_scripts_exist_in_each_venv_with_prefix_dependent_record_entries(two_venvs: dict[str, Any]) -> None:
    script_rows = {}
    for key in ("a", "b"):
        where, bin_dir, site = two_venvs[key]
        rows = _record_rows(site)
        for script in ("tiny-cli", "tiny-script"):
            path = bin_dir / script
            assert path.is_file() and os.access(path, os.X_OK)
            shebang = path.read_text(encoding="utf-8").splitlines()[0]
            assert str(where) in shebang
            (entry,) = [p for p in rows if p.endswith(f"/{script}")]
            assert entry.startswith("../") and (Path(site) / entry).resolve() == path.resolve()
            script_rows[key, script] = rows[entry]
        assert run_ok(bin_dir / "tiny-cli").strip() == "tiny says hello"
        assert run_ok(bin_dir / "tiny-script").strip() == "tiny script"

    assert script_rows["a", "tiny-cli"] != script_rows["b", "tiny-cli"]
    assert script_rows["a", "tiny-script"] != script_rows["b", "tiny-script"]


@pytest.mark.slow
def test_compiling_pyc_in_one_venv_leaves_the_digest_unchanged(two_venvs: dict[str, Any]) -> None:
    _, bin_dir, site_b = two_venvs["b"]
    before = _tiny(site_b)["files"]

    run_ok(bin_dir / "python", "-m", "compileall", "-q", Path(site_b) / "tiny_pkg")

    assert list((Path(site_b) / "tiny_pkg" / "__pycache__").glob("*.pyc"))
    assert _tiny(site_b)["files"] == before == _tiny(two_venvs["a"][2])["files"]


@pytest.mark.slow
def test_a_changed_byte_or_a_new_version_gives_another_digest(two_venvs: dict[str, Any]) -> None:
    root = two_venvs["root"]
    original = _tiny(two_venvs["a"][2])["files"]
    changed = _build_wheel(root / "changed", "1.0", MODULE.replace(b"VALUE = 1", b"VALUE = 2"))
    newer = _build_wheel(root / "newer", "1.1", MODULE.replace(b"VALUE = 1", b"VALUE = 2"))
    bin_dir, site = _venv(root / "c")

    _install(bin_dir, changed)
    fact_changed = _tiny(site)
    _install(bin_dir, newer)
    fact_newer = _tiny(site)

    assert fact_changed["version"] == "1.0" and fact_changed["files"] != original
    assert fact_newer["version"] == "1.1" and fact_newer["files"] not in (original, fact_changed["files"])
    assert not (Path(site) / "tiny_pkg-1.0.dist-info").exists()
    assert parse_packages([fact_newer])["tiny-pkg"].version == "1.1"


@pytest.mark.slow
def test_both_venvs_on_one_path_report_the_first(two_venvs: dict[str, Any]) -> None:
    site_a, site_b = two_venvs["a"][2], two_venvs["b"][2]

    facts = [fact for fact in collect_packages([site_b, site_a]) if fact["name"] == "tiny-pkg"]

    assert [fact["location"] for fact in facts] == [site_b]


# --- the RECORD digest cache ----------------------------------------------------------------------------------


def _dist(folder: Path, name: str = "cached_pkg", record: str = "cached_pkg/__init__.py,sha256=abc,3\n") -> Path:
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n\n")
    (info / "RECORD").write_text(record)
    return info


def test_the_digest_cache_gives_the_same_digests_and_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import envlock.probes.packages as packages

    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(tmp_path / "cache"))
    info = _dist(tmp_path / "site")
    first = collect_packages([str(tmp_path / "site")])
    assert first[0]["files"] == record_digest((info / "RECORD").read_text(), info.name)
    assert list((tmp_path / "cache").glob("record-digests-*.marshal"))

    def refuse(*_: Any) -> str:
        raise AssertionError("the cached digest should have been used")

    monkeypatch.setattr(packages, "record_digest", refuse)
    assert collect_packages([str(tmp_path / "site")]) == first


def test_direct_url_json_is_remembered_and_read_again_when_rewritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import envlock.probes.packages as packages

    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(tmp_path / "cache"))
    info = _dist(tmp_path / "site")
    (info / "direct_url.json").write_text('{"url": "file:///src/a", "dir_info": {"editable": true}}')
    first = collect_packages([str(tmp_path / "site")])[0]
    assert first["direct_url"] == {"url": "file:///src/a", "dir_info": {"editable": True}}

    def refuse(*_: Any) -> Any:
        raise AssertionError("the remembered direct_url.json should have been used")

    with monkeypatch.context() as patched:
        patched.setattr(packages, "_read_direct_url", refuse)
        assert collect_packages([str(tmp_path / "site")])[0] == first
    (info / "direct_url.json").write_text('{"url": "file:///src/bb", "dir_info": {}}')
    assert collect_packages([str(tmp_path / "site")])[0]["direct_url"] == {"url": "file:///src/bb", "dir_info": {}}
    # A cache whose entry holds what no JSON file gives (bytes; framed, so only the entry's check refuses it).
    (cache_path,) = (tmp_path / "cache").glob("record-digests-*.marshal")
    entries = marshal.loads(unframe(cache_path.read_bytes()) or b"")["entries"]
    place = str(info / "direct_url.json")
    entries[place] = [*entries[place][:4], {"url": b"file:///forged"}]
    cache_path.write_bytes(frame(marshal.dumps({"version": 1, "entries": entries})))
    assert collect_packages([str(tmp_path / "site")])[0]["direct_url"] == {"url": "file:///src/bb", "dir_info": {}}
    (info / "direct_url.json").write_text("{not json")  # as before: unreadable means from an index
    assert "direct_url" not in collect_packages([str(tmp_path / "site")])[0]
    (info / "direct_url.json").unlink()
    assert "direct_url" not in collect_packages([str(tmp_path / "site")])[0]


def test_a_rewritten_record_is_digested_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(tmp_path / "cache"))
    info = _dist(tmp_path / "site")
    before = collect_packages([str(tmp_path / "site")])[0]["files"]
    (info / "RECORD").write_text("cached_pkg/__init__.py,sha256=xyz,3\n")  # same size, new content
    after = collect_packages([str(tmp_path / "site")])[0]["files"]
    assert after != before
    assert after == record_digest((info / "RECORD").read_text(), info.name)


def test_a_broken_or_unwritable_cache_only_costs_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(cache))
    info = _dist(tmp_path / "site")
    expected = record_digest((info / "RECORD").read_text(), info.name)
    collect_packages([str(tmp_path / "site")])
    caches = list(cache.glob("record-digests-*.marshal"))
    assert caches
    for file in caches:
        file.write_bytes(marshal.dumps({"version": 1, "entries": {"x": "not a list"}})[:-3])  # truncated
    assert collect_packages([str(tmp_path / "site")])[0]["files"] == expected
    for file in caches:
        file.write_bytes(frame(marshal.dumps({"version": 1, "entries": {str(info / "RECORD"): "not a list"}})))
    assert collect_packages([str(tmp_path / "site")])[0]["files"] == expected
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(blocked))
    assert collect_packages([str(tmp_path / "site")])[0]["files"] == expected
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", "")
    off = tmp_path / "off"
    assert collect_packages([str(tmp_path / "site")])[0]["files"] == expected and not off.exists()


# --- file sizes (every verify compares them with RECORD) -------------------------------------------------


def test_record_sizes_lists_the_kept_files_with_their_sizes() -> None:
    record = "\n".join([
        "pkg/__init__.py,sha256=a,12",
        "pkg/data.bin,sha256=b,4096\r",
        '"pkg/a,b.py",sha256=c,7',  # a comma in the name: the quoted row
        "pkg\\win.py,sha256=d,5",
        "pkg/__pycache__/x.cpython-311.pyc,,",
        "pkg/y.pyc,sha256=e,9",
        "../../bin/tool,sha256=f,300",
        "pkg-1.0.dist-info/RECORD,,",
        "pkg-1.0.dist-info/INSTALLER,sha256=g,4",
        "pkg-1.0.dist-info/METADATA,sha256=h,100",
        "pkg/no-size.py,sha256=i,",
        '"",sha256=j,5',  # an empty path, quoted: no file
    ])
    paths, sizes = record_sizes(record, "pkg-1.0.dist-info")
    assert dict(zip(paths, sizes, strict=True)) == {
        "pkg/__init__.py": 12, "pkg/data.bin": 4096, "pkg/a,b.py": 7, "pkg/win.py": 5,
        "pkg-1.0.dist-info/METADATA": 100}
    # A RECORD whose one quoted row is an empty path: a table of no files (its size check has nothing to stat).
    assert record_sizes('"",sha256=j,5\npkg/x.py,sha256=k,3', "pkg-1.0.dist-info") == (("pkg/x.py",), (3,))
    assert record_sizes('"",sha256=j,5', "pkg-1.0.dist-info") == ((), ())
    plain = record.replace('"pkg/a,b.py",sha256=c,7\n', "")
    assert "pkg/a,b.py" not in record_sizes(plain, "pkg-1.0.dist-info")[0]


def test_changed_sizes_names_resized_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "same.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "grown.py").write_text("x = 1  # edited\n")
    assert changed_sizes(str(tmp_path), ("pkg/same.py", "pkg/grown.py", "pkg/gone.py"), (6, 6, 3)) == [
        ("pkg/grown.py", "6 bytes in RECORD, 16 on disk"), ("pkg/gone.py", "missing")]


#: The tests of the forked child: Linux with two usable cores.
FORKS = pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                           reason="the forked half runs on Linux with two usable cores")


def _size_jobs(root: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    """Four packages of 50 files each; in the first and the last one file grew and one is gone."""
    jobs = []
    for number in range(4):
        location = root / f"site{number}"
        (location / "pkg").mkdir(parents=True)
        paths = tuple(f"pkg/f{i}.py" for i in range(50))
        for path in paths:
            (location / path).write_text("x = 1\n")
        if number in (0, 3):
            (location / "pkg" / "f7.py").write_text("x = 1  # edited\n")
            (location / "pkg" / "f9.py").unlink()
        jobs.append((str(location), "\n".join(paths), (6,) * 50))
    return jobs


def _alone(job: tuple[str, str, tuple[int, ...]]) -> list[tuple[str, str]]:
    """One job's size check on its own (SizeCheck's jobs hold their paths joined by newlines)."""
    location, joined, sizes = job
    return changed_sizes(location, joined.split("\n"), sizes)


@FORKS
def test_the_size_check_shares_the_files_with_a_child_and_gives_the_one_core_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import envlock.probes.sizes as sizes

    jobs = _size_jobs(tmp_path)
    alone = [_alone(job) for job in jobs]
    assert alone[0] == alone[3] == [("pkg/f7.py", "6 bytes in RECORD, 16 on disk"), ("pkg/f9.py", "missing")]
    assert alone[1] == alone[2] == []
    forks: list[int] = []
    real_fork = os.fork

    def counted() -> int:
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(sizes, "_native", lambda: None)  # the check in Python, shared with a forked child
    monkeypatch.setattr(sizes, "_may_fork", lambda: True)
    monkeypatch.setattr(os, "fork", counted)
    assert changed_sizes_all(jobs, parallel_from=0) == alone
    assert forks == [1]
    assert changed_sizes_all(jobs) == alone  # 200 files: below the threshold, no child
    assert forks == [1]


@FORKS
def test_the_child_and_the_parent_share_out_units_and_every_one_is_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import envlock.probes.sizes as sizes

    jobs = _size_jobs(tmp_path)
    alone = [_alone(job) for job in jobs]
    monkeypatch.setattr(sizes, "_native", lambda: None)  # the check in Python, shared with a forked child
    monkeypatch.setattr(sizes, "_may_fork", lambda: True)
    monkeypatch.setattr(sizes, "UNIT_FILES", 7)  # 200 files: 32 units, met somewhere in the middle
    assert SizeCheck(jobs, parallel_from=0).result() == alone  # the parent starts at once
    early = SizeCheck(jobs, parallel_from=0)
    time.sleep(0.5)  # the child (started when the check was made) has done every unit by now
    assert early.result() == alone
    stopped = SizeCheck(jobs, parallel_from=0)
    assert stopped._child is not None
    pid = stopped._child[0]
    stopped.cancel()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, 0)  # reaped: no child left behind


def test_a_child_whose_parent_left_stops_within_a_unit(tmp_path: Path) -> None:
    # A parent that left without stopping its child (killed, or gone by a path that did not cancel): the child,
    # now some other process's, does not go on sizing the whole venv.
    import mmap

    from envlock.probes.sizes import _child_work

    check = SizeCheck(_size_jobs(tmp_path), parallel_from=10**9)  # no child of its own: the work is driven here
    claims = mmap.mmap(-1, len(check.units))
    assert _child_work(check, claims, parent=-1) == {}  # not this process's parent: no unit taken
    assert claims[:] == b"\0" * len(check.units)
    assert len(_child_work(check, claims, parent=os.getppid())) == len(check.units)


def test_a_cache_that_is_not_a_regular_file_is_not_read_and_does_not_block(tmp_path: Path) -> None:
    import marshal

    from envlock.probes.sizes import read_cache

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    fifo = tmp_path / "cache.marshal"
    os.mkfifo(fifo, 0o600)
    assert read_cache(str(fifo), 1024, marshal.loads) == {}  # opening it to read would wait for a writer
    (tmp_path / "folder.marshal").mkdir(mode=0o700)
    assert read_cache(str(tmp_path / "folder.marshal"), 1024, marshal.loads) == {}


def test_a_failed_child_has_its_half_done_by_the_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import envlock.probes.sizes as sizes

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    jobs = _size_jobs(tmp_path)

    def broken(*_: object) -> dict[int, list[tuple[str, str]]]:
        raise RuntimeError("the child fails")

    monkeypatch.setattr(sizes, "_native", lambda: None)  # the check in Python, shared with a forked child
    monkeypatch.setattr(sizes, "_may_fork", lambda: True)
    monkeypatch.setattr(sizes, "_child_work", broken)
    assert changed_sizes_all(jobs, parallel_from=0) == [_alone(job) for job in jobs]


def test_no_child_while_another_thread_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import envlock.probes.sizes as sizes

    release = threading.Event()
    worker = threading.Thread(target=release.wait, args=(10,))
    worker.start()
    try:
        assert sizes._may_fork() is False
    finally:
        release.set()
        worker.join(10)


def test_the_size_tables_are_cached_and_taken_again_when_record_is_rewritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import envlock.probes.sizes as sizes

    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(tmp_path / "cache"))
    info = _dist(tmp_path / "site")
    record = str(info / "RECORD")
    first = SizeTables([str(tmp_path / "site")])
    assert first.table(record, info.name) == ("cached_pkg/__init__.py", (3,))
    first.save({record})
    (cached,) = (tmp_path / "cache").glob("record-sizes-*.marshal")

    def refuse(*_: Any) -> Any:
        raise AssertionError("the cached table should have been used")

    with monkeypatch.context() as patched:
        patched.setattr(sizes, "record_sizes", refuse)
        assert SizeTables([str(tmp_path / "site")]).table(record, info.name) == ("cached_pkg/__init__.py", (3,))
    (info / "RECORD").write_text("cached_pkg/__init__.py,sha256=abc,4\n")
    again = SizeTables([str(tmp_path / "site")])
    assert again.table(record, info.name) == ("cached_pkg/__init__.py", (4,))
    cached.write_bytes(b"\x00garbage")  # a broken cache only costs time
    assert SizeTables([str(tmp_path / "site")]).table(record, info.name) == ("cached_pkg/__init__.py", (4,))
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", "")
    off = SizeTables([str(tmp_path / "site")])
    assert off.path is None and off.table(record, info.name) == ("cached_pkg/__init__.py", (4,))

"""A lock file is untrusted input: every bad lock gives exit 2 and one line naming the file and the dotted place."""

from __future__ import annotations

import copy
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envlock.capturing import build_lock
from envlock.files import MAX_LOCK_BYTES
from envlock.lockfile import content_hash, dumps, load, loads
from envlock.model import Lock

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CREATED = "2026-01-01T00:00:00Z"
GOOD_HASH = "sha256:" + "ab" * 32
PLAIN_KEY = re.compile(r"[A-Za-z0-9_.*+:-]+")


# --- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def lock(machine_facts: dict[str, Any]) -> Lock:
    return build_lock(machine_facts, created=CREATED)


@pytest.fixture
def text(lock: Lock) -> str:
    return dumps(lock)


@pytest.fixture
def data(text: str) -> dict[str, Any]:
    """The valid lock's plain data (a fresh copy per test, free to mutate)."""
    return tomllib.loads(text)


def place(*keys: str) -> str:
    """The dotted place envlock prints: odd keys are TOML-quoted with JSON escapes, so they stay on one line."""
    return ".".join(key if PLAIN_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=True) for key in keys)


def sealed(data: dict[str, Any]) -> str:
    """TOML for `data` with a content hash that matches it, so only the grammar can refuse a hostile value."""
    data["lock"]["content_hash"] = content_hash(data)
    return tomlkit.dumps(data)


def package(data: dict[str, Any]) -> str:
    return "numpy" if "numpy" in data["packages"] else sorted(data["packages"])[0]


def target(data: dict[str, Any]) -> str:
    return str(sorted(data["targets"])[0])


def write(tmp_path: Path, content: str | bytes, name: str = "bad.lock") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def error_line(result: Any, path: Path) -> str:
    """The one stderr line of a refused lock, after `envlock: error: FILE: `."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines: list[str] = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stderr.endswith("\n")
    prefix = f"envlock: error: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


def refused_at(result: Any, path: Path, where: str) -> str:
    """The message of a lock refused at the dotted place `where`."""
    rest = error_line(result, path)
    assert rest.startswith(f"{where}: "), f"expected the place {where!r} in: {rest!r}"
    return rest[len(where) + 2:]


# --- the file itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"[python\n", "not valid TOML", id="unclosed-table"),
        pytest.param(b"x = \n", "not valid TOML", id="missing-value"),
        pytest.param(b'a = "unterminated\n', "not valid TOML", id="unterminated-string"),
        pytest.param(bytes(range(256)) * 4, "not UTF-8", id="binary-garbage"),
        pytest.param(b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 64, "not valid TOML", id="elf-header"),
        pytest.param("a = 1\n".encode("utf-16"), "not UTF-8", id="utf16-bom"),
        pytest.param('schema = "1.0"\n'.encode("utf-16-le"), "not valid TOML", id="utf16-no-bom"),
        pytest.param("\ufeff[lock]\n".encode(), "byte-order mark", id="utf8-bom"),
        pytest.param(b"# caf\xe9\n", "not UTF-8", id="latin1"),
        pytest.param(b"a = 1\x00\n", "not valid TOML", id="nul-byte"),
        pytest.param(b"a = 1\na = 2\n", "not valid TOML", id="duplicate-key"),
        pytest.param(b"[a]\nx = 1\n[a]\ny = 2\n", "not valid TOML", id="duplicate-table"),
        pytest.param(b"[lock]\nschema = \"1.0\"\n[lock]\n", "not valid TOML", id="duplicate-lock-table"),
        pytest.param(b"x = " + b"[" * 5000 + b"]" * 5000, "nesting is too deep", id="deep-arrays"),
        pytest.param(b"x = " + b"{a = " * 5000 + b"}" * 5000, "nesting is too deep", id="deep-inline-tables"),
        pytest.param(b"x = 1" + b"0" * 5000 + b"\n", "not valid TOML", id="5000-digit-integer"),
        pytest.param(b"x = 2026-02-30T00:00:00Z\n", "not valid TOML", id="impossible-date"),
    ],
)
def test_unreadable_file_is_one_line_exit_2(cli: Any, tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, content)
    assert message in error_line(cli("show", str(path)), path)


@pytest.mark.parametrize("content", ["", "\n\n", " \t\n"], ids=["empty", "blank", "spaces"])
def test_an_empty_lock_file_is_called_empty(cli: Any, tmp_path: Path, content: str) -> None:
    path = write(tmp_path, content)
    assert error_line(cli("show", str(path)), path) == (
        "the file is empty, not a lock (write one with `envlock capture`)")


def test_a_lock_of_only_comments_names_the_missing_lock_table(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path, "# only a comment\n")
    assert refused_at(cli("show", str(path)), path, "lock") == (
        "required table is missing: not an envlock lock (`envlock capture` writes one)")


def test_missing_file_and_directory_are_one_line(cli: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.lock"
    assert "no such lock file" in error_line(cli("show", str(missing)), missing)
    folder = tmp_path / "dir.lock"
    folder.mkdir()
    assert "is a directory" in error_line(cli("show", str(folder)), folder)


def test_size_limit_is_exact(cli: Any, tmp_path: Path, text: str) -> None:
    body = text.encode()
    pad = MAX_LOCK_BYTES - len(body)
    at_limit = body + b"#" + b"x" * (pad - 2) + b"\n"
    assert len(at_limit) == MAX_LOCK_BYTES
    ok = cli("show", str(write(tmp_path, at_limit, "at-limit.lock")))
    assert ok.exit_code == 0, ok.stderr

    over = write(tmp_path, at_limit + b"\n", "over.lock")
    assert "larger than 8 MiB" in error_line(cli("show", str(over)), over)


# --- types --------------------------------------------------------------------------------------------


def test_float_version_written_by_hand(cli: Any, tmp_path: Path, text: str) -> None:
    edited, count = re.subn(r'(\[python\]\n(?:.*\n)*?version = )"[^"]*"', r"\g<1>3.10", text, count=1)
    assert count == 1
    path = write(tmp_path, edited)
    assert refused_at(cli("show", str(path)), path, "python.version") == "expected a string, got a float (3.1)"


def test_bare_datetime_written_by_hand(cli: Any, tmp_path: Path, text: str) -> None:
    edited = text.replace(f'created = "{CREATED}"', f"created = {CREATED}")
    assert edited != text
    path = write(tmp_path, edited)
    message = refused_at(cli("show", str(path)), path, "lock.created")
    assert message.startswith("expected a string, got datetime")


def _set(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value


@pytest.mark.parametrize(
    ("keys", "value", "message"),
    [
        (("python", "version"), 3.10, "expected a string, got a float (3.1)"),
        (("python", "version"), 3, "expected a string, got an integer (3)"),
        (("python", "version"), ["3.11"], "expected a string, got an array"),
        (("python", "pointer_bits"), "64", "expected an integer, got a string ('64')"),
        (("python", "pointer_bits"), 64.0, "expected an integer, got a float (64.0)"),
        (("python", "pointer_bits"), True, "expected an integer, got a boolean (True)"),
        (("python", "pointer_bits"), -1, "integer -1 is out of range"),
        (("python", "pointer_bits"), 2**60, f"integer {2**60} is out of range"),
        (("python", "byteorder"), "middle", "expected one of 'little', 'big', got a string ('middle')"),
        (("python",), [1, 2], "expected a table, got an array"),
        (("python",), "cpython", "expected a table, got a string ('cpython')"),
        (("packages",), [{"name": "numpy", "version": "1.0"}], "expected a table, got an array"),
        (("floats", "torch", "matmul_allow_tf32"), "false", "expected a boolean, got a string ('false')"),
        (("floats", "torch", "deterministic_algorithms"), 0, "expected a boolean, got an integer (0)"),
        (("lock", "created"), datetime(2026, 1, 1, tzinfo=timezone.utc), "expected a string, got datetime"),
    ],
    ids=lambda v: None,
)
def test_wrong_type_names_the_place(
    cli: Any, tmp_path: Path, data: dict[str, Any], keys: tuple[str, ...], value: Any, message: str
) -> None:
    _set(data, keys, value)
    if isinstance(value, datetime):
        # The header is not hashed, so no re-seal is needed (and a datetime has no JSON form to hash).
        content = tomlkit.dumps(data)
    else:
        content = sealed(data)
    path = write(tmp_path, content)
    assert refused_at(cli("show", str(path)), path, ".".join(keys)).startswith(message)


@pytest.mark.parametrize("value", ["avx", {"avx": True}, 3], ids=["string", "table", "int"])
def test_wrong_type_in_a_target(cli: Any, tmp_path: Path, data: dict[str, Any], value: Any) -> None:
    name = target(data)
    data["targets"][name]["cpu"]["flags"] = value
    path = write(tmp_path, sealed(data))
    message = refused_at(cli("show", str(path)), path, place("targets", name, "cpu", "flags"))
    assert message.startswith("expected an array")


def test_package_record_that_is_not_a_table(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    name = package(data)
    data["packages"][name] = "1.26.4"
    path = write(tmp_path, sealed(data))
    assert refused_at(cli("show", str(path)), path, f"packages.{name}").startswith("expected a table")


# --- schema version -----------------------------------------------------------------------------------


def _with_schema(text: str, value: str) -> str:
    edited = text.replace('schema = "1.0"', f"schema = {value}", 1)
    assert edited != text
    return edited


@pytest.mark.parametrize("version", ['"2.0"', '"0.9"', '"10.0"'])
def test_unknown_major_schema_is_refused(cli: Any, tmp_path: Path, text: str, version: str) -> None:
    path = write(tmp_path, _with_schema(text, version))
    message = refused_at(cli("show", str(path)), path, "lock.schema")
    assert "is not supported (this envlock reads 1.x)" in message


@pytest.mark.parametrize(
    "version",
    ['"1"', '"1.0.0"', '"v1.0"', '""', '"1.\u00b2"', '"\u0661.0"', '"1.' + "9" * 5000 + '"', "1.0", "1", "true"],
    ids=["no-minor", "three-parts", "v-prefix", "empty", "superscript", "arabic-digit", "5000-digits", "float", "int",
         "bool"],
)
def test_malformed_schema_version_is_refused(cli: Any, tmp_path: Path, text: str, version: str) -> None:
    path = write(tmp_path, _with_schema(text, version))
    message = refused_at(cli("show", str(path)), path, "lock.schema")
    assert "schema version" in message or "expected a string" in message
    assert len(message) < 200


def test_missing_schema_is_refused(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    del data["lock"]["schema"]
    path = write(tmp_path, tomlkit.dumps(data))
    refused_at(cli("show", str(path)), path, "lock.schema")


def test_newer_minor_schema_warns_and_loads(cli: Any, tmp_path: Path, text: str) -> None:
    path = write(tmp_path, _with_schema(text, '"1.9"'))
    result = cli("show", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"envlock: warning: {path}: schema 1.9 is newer than this envlock's 1.0; upgrade envlock"
    ]
    assert "schema 1.9" in result.stdout


def test_a_newer_minor_schemas_new_field_says_to_upgrade(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    data["lock"]["schema"] = "1.9"
    data["python"]["feature_from_the_future"] = "x"
    path = write(tmp_path, tomlkit.dumps(data))
    message = refused_at(cli("show", str(path)), path, "python.feature_from_the_future")
    assert "unknown key" in message
    assert "written by a newer envlock, schema 1.9; this one reads 1.0: upgrade envlock" in message


def test_newer_minor_with_a_bad_hash_is_still_refused(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    data["lock"]["schema"] = "1.9"
    data["python"]["version"] = "3.99.0"
    path = write(tmp_path, tomlkit.dumps(data))
    refused_at(cli("show", str(path)), path, "lock.content_hash")


# --- missing and unknown ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "where", "message"),
    [
        (("python",), "python", "required key is missing"),
        (("floats",), "floats", "required key is missing"),
        (("targets",), "targets", "required key is missing"),
        (("lock",), "lock", "required table is missing: not an envlock lock (`envlock capture` writes one)"),
        (("lock", "content_hash"), "lock.content_hash", "required key is missing"),
        (("lock", "created"), "lock.created", "required key is missing"),
        (("python", "implementation"), "python.implementation", "required key is missing"),
    ],
)
def test_missing_required_key(
    cli: Any, tmp_path: Path, data: dict[str, Any], keys: tuple[str, ...], where: str, message: str
) -> None:
    node = data
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    path = write(tmp_path, sealed(data) if "lock" in data and keys != ("lock", "content_hash") else tomlkit.dumps(data))
    assert refused_at(cli("show", str(path)), path, where) == message


def test_missing_package_version(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    name = package(data)
    del data["packages"][name]["version"]
    path = write(tmp_path, sealed(data))
    assert refused_at(cli("show", str(path)), path, f"packages.{name}.version") == "required key is missing"


@pytest.mark.parametrize(
    ("keys", "where"),
    [
        (("extra",), "extra"),
        (("meta",), "meta"),
        (("python", "evil"), "python.evil"),
        (("lock", "signature"), "lock.signature"),
        (("policy", "auto_update"), "policy.auto_update"),
        (("floats", "torch", "new_flag"), "floats.torch.new_flag"),
    ],
)
def test_unknown_key_is_refused(
    cli: Any, tmp_path: Path, data: dict[str, Any], keys: tuple[str, ...], where: str
) -> None:
    _set(data, keys, {"a": 1} if len(keys) == 1 else "x")
    path = write(tmp_path, sealed(data))
    assert refused_at(cli("show", str(path)), path, where) == "unknown key"


def test_unknown_key_in_a_package(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    name = package(data)
    data["packages"][name]["install_script"] = "curl x | sh"
    path = write(tmp_path, sealed(data))
    assert refused_at(cli("show", str(path)), path, f"packages.{name}.install_script") == "unknown key"


# --- the content hash ---------------------------------------------------------------------------------


def test_hand_edited_package_version_breaks_the_hash(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    name = package(data)
    data["packages"][name]["version"] = "0.0.1"
    path = write(tmp_path, tomlkit.dumps(data))
    message = refused_at(cli("show", str(path)), path, "lock.content_hash")
    assert message.startswith("content hash does not match the locked facts")


def test_removed_package_breaks_the_hash(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    del data["packages"][package(data)]
    path = write(tmp_path, tomlkit.dumps(data))
    refused_at(cli("show", str(path)), path, "lock.content_hash")


def test_hand_edited_float_setting_breaks_the_hash(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    torch = data["floats"]["torch"]
    torch["matmul_allow_tf32"] = not torch["matmul_allow_tf32"]
    path = write(tmp_path, tomlkit.dumps(data))
    refused_at(cli("show", str(path)), path, "lock.content_hash")


def test_text_edit_of_a_version_breaks_the_hash(cli: Any, tmp_path: Path, text: str, data: dict[str, Any]) -> None:
    name = package(data)
    version = data["packages"][name]["version"]
    old = f'{name} = {{version = "{version}"'
    assert old in text
    path = write(tmp_path, text.replace(old, f'{name} = {{version = "{version}.post1"'))
    refused_at(cli("show", str(path)), path, "lock.content_hash")


def test_hand_edited_policy_keeps_the_hash(cli: Any, tmp_path: Path, text: str) -> None:
    old = '"packages.*.version" = {rule = "exact", severity = "error"}'
    assert old in text
    edited = text.replace(old, '"packages.*.version" = {rule = "compatible", severity = "warn"}')
    edited = edited.replace('extra_packages = "warn"', 'extra_packages = "error"\n# we add plugins at run time')
    path = write(tmp_path, edited)
    result = cli("show", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "(edited: packages.*.version)" in result.stdout
    assert "an extra one an error" in result.stdout


def test_comments_do_not_count(cli: Any, tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "# pinned for the 2026 paper\n" + text.replace("\n[python]\n", "\n# hi\n[python]\n"))
    assert cli("show", str(path)).exit_code == 0


def test_policy_is_not_hashed_but_still_checked(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    data["policy"]["rules"]["packages.*.version"]["rule"] = "sometimes"
    path = write(tmp_path, tomlkit.dumps(data))
    message = refused_at(cli("show", str(path)), path, place("policy", "rules", "packages.*.version", "rule"))
    assert message.startswith("expected one of 'exact', 'min', 'compatible', 'ignore'")


def test_hostile_policy_key_is_refused(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    key = "packages.*.version\nRUN id"
    data["policy"]["rules"][key] = {"rule": "ignore"}
    path = write(tmp_path, tomlkit.dumps(data))
    message = refused_at(cli("show", str(path)), path, place("policy", "rules", key))
    assert "is not allowed here" in message


# --- hostile strings (re-sealed, so only the grammar can refuse them) -----------------------------------

HOSTILE_NAMES = [
    "torch\nRUN curl x|sh",
    "torch\n",
    "torch; rm -rf /",
    "$(id)",
    "`id`",
    "-r /etc/passwd",
    "--index-url=http://evil",
    "torch @ https://evil/x.whl",
    "../../x",
    "",
    pytest.param("a" * 300, id="300-chars"),
    "t\u043erch",  # Cyrillic o
    "torch\u202e",
    "tor\u0000ch",
    "Torch",
    "foo_bar",
    "foo.bar",
    "-torch",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n)[:30])
def test_hostile_package_name_is_refused(cli: Any, tmp_path: Path, data: dict[str, Any], name: str) -> None:
    data["packages"][name] = copy.deepcopy(data["packages"][package(data)])
    path = write(tmp_path, sealed(data))
    message = refused_at(cli("show", str(path)), path, place("packages", name))
    assert message.startswith(f"key {name!r} is not allowed here")


def test_hostile_key_is_shown_escaped(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    data["packages"]["t\u043erch\u202e\nRUN id"] = copy.deepcopy(data["packages"][package(data)])
    path = write(tmp_path, sealed(data))
    line = error_line(cli("show", str(path)), path)
    assert line.startswith('packages."t\\u043erch\\u202e\\nRUN id": ')
    assert "\u202e" not in line


HOSTILE_VERSIONS = [
    "1.0\n",
    " 1.0",
    ">=1.0",
    "==1.0",
    "1.0 --hash=sha256:" + "a" * 64,
    "1.0; sys_platform=='x'",
    "*",
    "1.0.0.dev0\\",
    "${HOME}",
    "$(id)",
    "1.0\nRUN id",
    "--index-url=http://evil",
    "1.0 @ https://evil/x.whl",
    "1.\u202e0",
    "1.0\u0000",
    "1.0.\u0430",  # Cyrillic a
    "1" * 300,
    "",
]


@pytest.mark.parametrize("version", HOSTILE_VERSIONS, ids=lambda v: repr(v)[:30])
def test_hostile_version_is_refused(cli: Any, tmp_path: Path, data: dict[str, Any], version: str) -> None:
    name = package(data)
    data["packages"][name]["version"] = version
    path = write(tmp_path, sealed(data))
    message = refused_at(cli("show", str(path)), path, f"packages.{name}.version")
    assert "is not allowed here" in message
    assert "\n" not in message and "\u202e" not in message and "\u0000" not in message


BAD_HASHES = [
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "A" * 64,
    "SHA256:" + "a" * 64,
    "md5:" + "a" * 32,
    "sha256:" + "g" * 64,
    "sha256:" + "a" * 64 + "\n",
    "a" * 64,
    "sha256: " + "a" * 64,
]


@pytest.mark.parametrize("digest", BAD_HASHES, ids=lambda v: repr(v)[:24])
def test_bad_files_digest_is_refused(cli: Any, tmp_path: Path, data: dict[str, Any], digest: str) -> None:
    name = package(data)
    data["packages"][name]["files"] = digest
    path = write(tmp_path, sealed(data))
    assert "is not allowed here" in refused_at(cli("show", str(path)), path, f"packages.{name}.files")


@pytest.mark.parametrize("digest", BAD_HASHES, ids=lambda v: repr(v)[:24])
def test_bad_artifact_hash_names_its_index(cli: Any, tmp_path: Path, data: dict[str, Any], digest: str) -> None:
    name = package(data)
    data["packages"][name]["hashes"] = [GOOD_HASH, digest]
    path = write(tmp_path, sealed(data))
    assert "is not allowed here" in refused_at(cli("show", str(path)), path, f"packages.{name}.hashes[1]")


@pytest.mark.parametrize("digest", BAD_HASHES, ids=lambda v: repr(v)[:24])
def test_malformed_content_hash_is_a_grammar_error(cli: Any, tmp_path: Path, text: str, digest: str) -> None:
    edited, count = re.subn(r'content_hash = "[^"]*"', lambda _: f"content_hash = {json.dumps(digest)}", text)
    assert count == 1
    path = write(tmp_path, edited)
    message = refused_at(cli("show", str(path)), path, "lock.content_hash")
    assert "is not allowed here" in message
    assert "does not match" not in message


@pytest.mark.parametrize(
    ("keys", "value"),
    [
        (("python", "version"), "3.11\nRUN id"),
        (("python", "implementation"), "cpython; rm -rf /"),
        (("python", "platform_tag"), "manylinux\u202e"),
        (("lock", "envlock"), "0.1\n"),
        (("lock", "created"), "2026-01-01T00:00:00Z\n"),
        (("lock", "created"), "2026-01-01 00:00:00"),
        (("floats", "torch", "float32_matmul_precision"), "high$(id)"),
    ],
    ids=lambda v: None,
)
def test_hostile_value_is_refused(
    cli: Any, tmp_path: Path, data: dict[str, Any], keys: tuple[str, ...], value: str
) -> None:
    _set(data, keys, value)
    path = write(tmp_path, sealed(data))
    assert "is not allowed here" in refused_at(cli("show", str(path)), path, ".".join(keys))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "https://evil/x.whl\nRUN id"),
        ("url", "https://evil/x y.whl"),
        ("commit", "HEAD; rm -rf /"),
        ("commit", "abc"),
        ("source", "pypi"),
    ],
)
def test_hostile_package_field_is_refused(
    cli: Any, tmp_path: Path, data: dict[str, Any], field: str, value: str
) -> None:
    name = package(data)
    data["packages"][name][field] = value
    path = write(tmp_path, sealed(data))
    message = refused_at(cli("show", str(path)), path, f"packages.{name}.{field}")
    assert "is not allowed here" in message or "expected one of" in message


@pytest.mark.parametrize("var", ["ld_preload", "A=B", "PATH\n", "OMP NUM THREADS", "$(id)", "1ABC"])
def test_hostile_env_var_name_is_refused(cli: Any, tmp_path: Path, data: dict[str, Any], var: str) -> None:
    data["floats"]["env"][var] = {"set": False}
    path = write(tmp_path, sealed(data))
    assert "is not allowed here" in refused_at(cli("show", str(path)), path, place("floats", "env", var))


@pytest.mark.parametrize("value", ["1\nRUN id", "\x1b[31mred", "a\u202eb", "x\u0000"], ids=repr)
def test_hostile_env_var_value_is_refused(cli: Any, tmp_path: Path, data: dict[str, Any], value: str) -> None:
    data["floats"]["env"]["OMP_NUM_THREADS"] = {"set": True, "value": value}
    path = write(tmp_path, sealed(data))
    refused_at(cli("show", str(path)), path, "floats.env.OMP_NUM_THREADS.value")


def test_hostile_target_fields_are_refused(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    name = target(data)
    cases: list[tuple[tuple[str, ...], Any, str]] = [
        (("gpu", "driver"), "550.54\nRUN id", place("targets", name, "gpu", "driver")),
        (("cpu", "flags"), ["avx", "avx;id"], place("targets", name, "cpu", "flags") + "[1]"),
        (("platform", "kernel"), "6.1\n", place("targets", name, "platform", "kernel")),
    ]
    for keys, value, where in cases:
        mutated = copy.deepcopy(data)
        _set(mutated["targets"][name], keys, value)
        path = write(tmp_path, sealed(mutated))
        assert "is not allowed here" in refused_at(cli("show", str(path)), path, where)


def test_hostile_target_name_is_refused(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    data["targets"]["x86\nRUN id"] = data["targets"][target(data)]
    path = write(tmp_path, sealed(data))
    assert "is not allowed here" in refused_at(cli("show", str(path)), path, place("targets", "x86\nRUN id"))


def test_well_formed_new_package_loads(cli: Any, tmp_path: Path, data: dict[str, Any]) -> None:
    """The grammar is not merely refusing everything: a well-formed new package with a local version loads."""
    data["packages"]["torch-extra"] = {"version": "2.4.1+cu121", "source": "index", "hashes": [GOOD_HASH]}
    path = write(tmp_path, sealed(data))
    result = cli("show", str(path))
    assert result.exit_code == 0, result.stderr


# --- random mutations ---------------------------------------------------------------------------------

_LEAVES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["1.0", "\n", "sha256:" + "0" * 64, "$(id)", "a\u202eb", "x\u0000", "exact", "warn", "index"]),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),
    st.booleans(),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def _containers(node: Any, trail: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every (container path) in plain data, root included."""
    out = [trail]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        if isinstance(child, (dict, list)):
            out.extend(_containers(child, (*trail, key)))
    return out


def _at(root: Any, trail: tuple[Any, ...]) -> Any:
    for key in trail:
        root = root[key]
    return root


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_mutations_never_escape(cli: Any, tmp_path: Path, data: dict[str, Any], draws: st.DataObject) -> None:
    mutated = copy.deepcopy(data)
    for _ in range(draws.draw(st.integers(1, 3), label="mutations")):
        trail = draws.draw(st.sampled_from(_containers(mutated)), label="container")
        node = _at(mutated, trail)
        action = draws.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if isinstance(node, dict):
            keys = sorted(node)
            if action == "add" or not keys:
                node[draws.draw(st.text(max_size=10), label="new key")] = draws.draw(_VALUES, label="value")
            elif action == "delete":
                del node[draws.draw(st.sampled_from(keys), label="key")]
            else:
                node[draws.draw(st.sampled_from(keys), label="key")] = draws.draw(_VALUES, label="value")
        elif node:
            index = draws.draw(st.integers(0, len(node) - 1), label="index")
            if action == "delete":
                del node[index]
            else:
                node[index] = draws.draw(_VALUES, label="value")
    if draws.draw(st.booleans(), label="re-seal") and isinstance(mutated.get("lock"), dict):
        mutated["lock"]["content_hash"] = content_hash(mutated)
    path = write(tmp_path, tomlkit.dumps(mutated), "mutated.lock")

    result = cli("show", str(path))

    assert result.exit_code in (0, 2), (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
    if result.exit_code == 2:
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"envlock: error: {path}: ")
    else:
        loaded, _ = load(path)
        assert loaded.lock.content_hash == content_hash(tomllib.loads(dumps(loaded)))


# --- round trip ---------------------------------------------------------------------------------------


def test_round_trip_is_byte_identical(tmp_path: Path, lock: Lock) -> None:
    path = write(tmp_path, dumps(lock, name="envlock.lock"), "envlock.lock")
    loaded, warnings = load(path)
    assert warnings == []
    assert loaded == lock
    assert dumps(loaded).encode() == path.read_bytes()
    assert dumps(loaded, previous=path.read_text()).encode() == path.read_bytes()


def test_round_trip_keeps_comments_and_edited_policy(tmp_path: Path, text: str) -> None:
    edited = "# pinned for the 2026 paper\n" + text.replace('extra_packages = "warn"', 'extra_packages = "error"')
    assert edited != "# pinned for the 2026 paper\n" + text
    path = write(tmp_path, edited, "envlock.lock")
    loaded, _ = load(path)
    assert loaded.policy.extra_packages == "error"
    assert dumps(loaded, previous=edited).encode() == path.read_bytes()


def test_loads_refuses_what_load_refuses(text: str) -> None:
    """The API raises the same one-line LockError the CLI prints (no other exception type escapes)."""
    from envlock.errors import LockError

    with pytest.raises(LockError) as info:
        loads(text.replace('schema = "1.0"', 'schema = "1.\u00b2"'), "api.lock")
    assert str(info.value) == "api.lock: lock.schema: '1.\u00b2' is not a schema version"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("6.1\x85RUN id", id="NEL"),
        pytest.param("6.1\u2028RUN id", id="LINE-SEPARATOR"),
        pytest.param("6.1\u2029RUN id", id="PARAGRAPH-SEPARATOR"),
        pytest.param("6.1\x9b2J", id="C1-CSI"),
        pytest.param("6.1\x1b[2J", id="ESC"),
        pytest.param("6.1\rRUN id", id="CR"),
    ],
)
def test_line_breaks_and_terminal_controls_in_free_text_are_refused(
    cli: Any, tmp_path: Path, data: dict[str, Any], value: str
) -> None:
    """`show` prints free text such as the kernel string: nothing in it may break a line or drive the terminal."""
    name = target(data)
    data["targets"][name]["platform"]["kernel"] = value
    path = write(tmp_path, sealed(data))
    where = place("targets", name, "platform", "kernel")
    assert "is not allowed here" in refused_at(cli("show", str(path)), path, where)


# --- values that fit their grammar but not each other -------------------------------------------------------


def _fixture_lock(host: str = "linux-nvidia535-cuda12.1-cascadelake-a100x2mig") -> dict[str, Any]:
    path = Path(__file__).resolve().parent.parent / "fixtures" / "hosts" / host / "expected.lock"
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _no_targets(data: dict[str, Any]) -> str:
    data["targets"] = {}
    return "targets"


def _count(data: dict[str, Any]) -> str:
    data["targets"][target(data)]["gpu"]["count"] = 5
    return place("targets", target(data), "gpu", "count")


def _index(data: dict[str, Any]) -> str:
    data["targets"][target(data)]["gpu"]["devices"][1]["index"] = 0
    return place("targets", target(data), "gpu", "devices") + "[1]"


def _mig(data: dict[str, Any]) -> str:
    device = data["targets"][target(data)]["gpu"]["devices"][0]
    device["mig_instances"] = device["mig_instances"][:1] * 2
    return place("targets", target(data), "gpu", "devices") + "[0].mig_instances[1]"


def _library(data: dict[str, Any]) -> str:
    blas = data["targets"][target(data)]["blas"]
    blas["libraries"] = blas["libraries"][:1] * 2
    return place("targets", target(data), "blas", "libraries") + "[1]"


@pytest.mark.parametrize(
    ("break_it", "says"),
    [
        pytest.param(_no_targets, "a lock needs at least one target", id="no-targets"),
        pytest.param(_count, "is 5 but 2 devices are listed", id="gpu-count"),
        pytest.param(_index, "device index 0 is repeated", id="device-index"),
        pytest.param(_mig, "MIG instance (gpu, compute) (2, 0) is repeated", id="mig-instance"),
        pytest.param(_library, "library id numpy-openblas is repeated", id="blas-library"),
    ],
)
def test_a_lock_whose_parts_disagree_is_refused_where_they_do(
    cli: Any, tmp_path: Path, break_it: Any, says: str
) -> None:
    data = _fixture_lock()
    where = break_it(data)
    path = write(tmp_path, sealed(data))
    for command in (("show", str(path)), ("diff", str(path), str(path)), ("verify", "--fast", str(path))):
        assert says in refused_at(cli(*command), path, where)


def test_a_kernel_whose_id_does_not_say_what_it_runs_is_refused(cli: Any, tmp_path: Path) -> None:
    data = _fixture_lock("linux-nogpu-nocuda-x86_64_v4-devbox")
    numerics = data["targets"][target(data)]["numerics"]
    first = sorted(numerics["kernels"])[0]
    numerics["kernels"]["torch-cpu-mm-float32-1x1x1"] = numerics["kernels"].pop(first)
    path = write(tmp_path, sealed(data))
    where = place("targets", target(data), "numerics", "kernels", "torch-cpu-mm-float32-1x1x1")
    message = refused_at(cli("show", str(path)), path, where)
    assert message == f"kernel id does not match what it runs (its fields make {first})"


def test_a_bad_extra_env_name_is_said_in_words_not_as_a_pattern(cli: Any, tmp_path: Path,
                                                                 data: dict[str, Any]) -> None:
    data["policy"]["extra_env"] = ["my_seed"]
    path = write(tmp_path, tomlkit.dumps(data))
    message = refused_at(cli("show", str(path)), path, "policy.extra_env[0]")
    assert message == ("a string ('my_seed') is not allowed here (expected an environment variable name in "
                       "capitals: A-Z, then A-Z, 0-9 or _)")

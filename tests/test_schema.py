"""The JSON Schema in schemas/ is the model's, is current, and agrees with the model's loader."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from envlock.capturing import build_lock
from envlock.lockfile import dumps
from envlock.model import Lock, ModelError, from_dict, json_schema
from envlock.schema import SCHEMA_FILE, schema_text, validate_with_jsonschema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schemas" / SCHEMA_FILE
GOOD_HASH = "sha256:" + "ab" * 32
_VALIDATOR = jsonschema.Draft202012Validator(json_schema())


def _dotted(path: Iterable[str | int]) -> str:
    """A jsonschema error path in the loader's notation: `a.b[0].c`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@pytest.fixture
def data(machine_facts: dict[str, Any]) -> dict[str, Any]:
    """A real lock's plain data, as a reader of the TOML file sees it."""
    return tomllib.loads(dumps(build_lock(machine_facts, created="2026-01-01T00:00:00Z")))


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        f"{SCHEMA_PATH.relative_to(ROOT)} is stale: regenerate it with `python -m envlock.schema`"
    )


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator
    jsonschema.Draft202012Validator.check_schema(schema)
    # check_schema does not look at `format`; with the format checker every `pattern` must also compile.
    meta = jsonschema.Draft202012Validator(
        jsonschema.Draft202012Validator.META_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    assert [e.message for e in meta.iter_errors(schema)] == []


def test_schema_closes_every_table(data: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    tables = [schema, *schema["$defs"].values()]
    assert all(table["additionalProperties"] is False for table in tables)
    assert set(schema["required"]) == {"lock", "python", "floats", "targets"}


def test_jsonschema_accepts_a_real_lock(data: dict[str, Any]) -> None:
    assert validate_with_jsonschema(data) == []
    from_dict(Lock, data)


# --- the schema and the loader agree ------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _pkg(data: dict[str, Any]) -> dict[str, Any]:
    packages: dict[str, dict[str, Any]] = data["packages"]
    return packages["numpy" if "numpy" in packages else sorted(packages)[0]]


def _target(data: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, dict[str, Any]] = data["targets"]
    return targets[sorted(targets)[0]]


def _setter(*keys: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


def _deleter(*keys: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return mutate


def _rule(value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["policy"]["rules"]["packages.*.version"]["rule"] = value

    return mutate


def _add_package(name: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["packages"][name] = {"version": "1.0"}

    return mutate


def _package_field(field: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        _pkg(data)[field] = value

    return mutate


def _target_field(section: str, field: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        _target(data)[section][field] = value

    return mutate


def _first_library(field: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        libraries = _target(data)["blas"]["libraries"]
        if not libraries:
            libraries.append({"id": "x", "user_api": "blas", "internal_api": "openblas", "num_threads": 1})
        libraries[0][field] = value

    return mutate


def _env(name: str, record: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["floats"]["env"][name] = record

    return mutate


BAD: dict[str, Mutation] = {
    "float-version": _setter("python", "version", value=3.10),
    "int-version": _setter("python", "version", value=3),
    "version-trailing-newline": _setter("python", "version", value="3.11\n"),
    "version-shell": _setter("python", "version", value="3.11; id"),
    "empty-ident": _setter("python", "abi", value=""),
    "bool-as-int": _setter("python", "pointer_bits", value=True),
    "negative-int": _setter("python", "pointer_bits", value=-1),
    "int-too-big": _setter("python", "pointer_bits", value=2**53 + 1),
    "bad-enum": _setter("python", "byteorder", value="middle"),
    "unknown-key": _setter("python", "evil", value="x"),
    "missing-key": _deleter("python", "abi"),
    "missing-section": _deleter("python"),
    "section-is-array": _setter("python", value=[1, 2]),
    "unknown-top-level": _setter("extra", value={"a": 1}),
    "targets-is-array": _setter("targets", value=[]),
    "schema-one-part": _setter("lock", "schema", value="1"),
    "content-hash-md5": _setter("lock", "content_hash", value="md5:" + "a" * 32),
    "content-hash-uppercase": _setter("lock", "content_hash", value="sha256:" + "A" * 64),
    "created-date-only": _setter("lock", "created", value="2026-01-01"),
    "policy-rule": _rule("sometimes"),
    "policy-rule-int": _rule(1),
    "policy-severity": _setter("policy", "missing_packages", value="fatal"),
    "policy-key-newline": _setter("policy", "rules", value={"a\nb": {"rule": "exact"}}),
    "package-Torch": _add_package("Torch"),
    "package-foo_bar": _add_package("foo_bar"),
    "package-newline": _add_package("torch\n"),
    "package-cyrillic": _add_package("t\u043erch"),
    "package-url-spec": _add_package("torch @ https://evil/x.whl"),
    "package-version-specifier": _package_field("version", ">=1.0"),
    "package-files-63": _package_field("files", "sha256:" + "a" * 63),
    "package-files-65": _package_field("files", "sha256:" + "a" * 65),
    "package-hash-uppercase": _package_field("hashes", ["sha256:" + "A" * 64]),
    "package-hashes-string": _package_field("hashes", GOOD_HASH),
    "package-source": _package_field("source", "pypi"),
    "package-url-space": _package_field("url", "https://x/a b.whl"),
    "package-not-table": _package_field("version", {"v": "1"}),
    "env-lowercase": _env("ld_preload", {"set": False}),
    "env-equals": _env("A=B", {"set": False}),
    "env-missing-set": _env("OMP_NUM_THREADS", {"value": "1"}),
    "env-string-set": _env("OMP_NUM_THREADS", {"set": "true"}),
    "env-value-escape": _env("OMP_NUM_THREADS", {"set": True, "value": "\x1b[2J"}),
    "tf32-string": _setter("floats", "torch", value={"matmul_allow_tf32": "false"}),
    "flags-string": _target_field("cpu", "flags", "avx"),
    "flag-shell": _target_field("cpu", "flags", ["avx", "avx;id"]),
    "kernel-bidi": _target_field("platform", "kernel", "6.1\u202e"),
    "kernel-too-long": _target_field("platform", "kernel", "x" * 1025),
    "driver-newline": _target_field("gpu", "driver", "550.54\nRUN id"),
    "threads-string": _first_library("num_threads", "2"),
    "library-unknown-key": _first_library("path", "/usr/lib/x.so"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_schema_and_loader_both_refuse(data: dict[str, Any], name: str) -> None:
    BAD[name](data)
    problems = validate_with_jsonschema(data)
    with pytest.raises(ModelError) as info:
        from_dict(Lock, data)
    assert problems, f"jsonschema accepts what the loader refuses ({info.value})"
    # The loader names a place at or below one jsonschema names (for a bad or missing key jsonschema names its table).
    where = info.value.where
    places = [_dotted(error.absolute_path) for error in _VALIDATOR.iter_errors(data)]
    assert any(where == p or where.startswith((p + ".", p + "[")) for p in places if p) or (
        "" in places and "." not in where and "[" not in where
    ), (where, problems)


GOOD: dict[str, Mutation] = {
    "as-captured": lambda data: None,
    "newer-minor-schema": _setter("lock", "schema", value="1.9"),
    "local-version-and-hashes": _add_package("torch-extra"),
    "policy-edited": _rule("compatible"),
    "env-shell-characters-in-value": _env("LD_PRELOAD", {"set": True, "value": "$HOME \"x\" \\y"}),
    "kernel-non-ascii-1024": _target_field("platform", "kernel", "\u00e9" * 1024),
    "hashes": _package_field("hashes", [GOOD_HASH, "sha256:" + "0" * 64]),
    "max-int": _setter("python", "pointer_bits", value=2**53),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_schema_and_loader_both_accept(data: dict[str, Any], name: str) -> None:
    mutated = copy.deepcopy(data)
    GOOD[name](mutated)
    assert validate_with_jsonschema(mutated) == []
    from_dict(Lock, mutated)

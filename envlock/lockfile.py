"""Reading and writing lock files: the only module that knows TOML.

Reading uses the standard `tomllib` (strict and fast, for the job-start path); writing uses tomlkit, so a
re-capture keeps the user's comments and their hand-edited `[policy]`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from envlock.errors import LockError, printable
from envlock.files import MAX_LOCK_BYTES, default_lock_name, read_regular
from envlock.model import SCHEMA as SCHEMA_GRAMMAR
from envlock.model import SCHEMA_VERSION, Lock, LockHeader, ModelError, check_lock, from_dict, to_dict

HEADER = """\
envlock lock file: the Python packages, hardware and float settings this job was captured with.
Written by `envlock capture`; check a machine against it with `envlock verify`.
Regenerate with `envlock capture -o {name}`: comments and [policy] are kept, everything else is rewritten.
Edit [policy] freely; any other hand edit makes the content hash fail.
"""
POLICY_COMMENT = (
    "rule: exact | min (at least) | compatible (same major.minor) | ignore; severity: error | warn. "
    "Keys are dotted paths, * stands for one segment."
)
UNHASHED = ("lock", "policy")


def default_lock_path() -> Path:
    """The lock a command uses when none is named: $ENVLOCK_LOCK when set (the images `envlock build` makes set
    it), else ./envlock.lock."""
    return Path(default_lock_name())


def content_hash(data: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of everything but `[lock]` and `[policy]`."""
    locked = {key: value for key, value in data.items() if key not in UNHASHED}
    text = json.dumps(locked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(lock: Lock, *, envlock_version: str, created: str) -> Lock:
    """The lock with a fresh `[lock]` header whose content hash covers its facts."""
    header = LockHeader(
        schema=SCHEMA_VERSION, envlock=envlock_version, created=created, content_hash=content_hash(to_dict(lock))
    )
    return dataclasses.replace(lock, lock=header)


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of a lock file, refusing what is not a regular file, oversized or non-UTF-8 files with a one-line
    error."""
    name = str(path)
    raw = read_regular(path, MAX_LOCK_BYTES, missing="no such lock file (run `envlock capture` to write one)")
    if len(raw) > MAX_LOCK_BYTES:
        raise LockError(name, f"file is larger than {MAX_LOCK_BYTES // (1024 * 1024)} MiB; not a lock file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LockError(name, f"not UTF-8 text (byte {exc.start}); not a lock file") from None


#: tomllib takes time quadratic in the parts of one dotted key (`a.a.a...= 1`: 10,000 parts take 2 s, a few MB
#: would take days), so a job start could hang on a small file. A lock's deepest key has 6 parts.
MAX_KEY_PARTS = 64
_PART = r"""(?:[A-Za-z0-9_-]+|"[^"\\\n]*"|'[^'\n]*')"""
#: A dotted key of MAX_KEY_PARTS parts; it starts only where a key can (not inside a part, not after a dot), so the
#: search stays linear in the text (searched with the blanks around dots taken out first, for the same reason).
_DEEP_KEY = re.compile(rf"(?<![A-Za-z0-9_.'\"-]){_PART}(?:\.{_PART}){{{MAX_KEY_PARTS - 1}}}")
_BLANKS = re.compile(r"[ \t]+(\.)?")  # a run of blanks, and the dot after it: never fails, so never rescans
_DOT_BLANKS = re.compile(r"\.[ \t]+")


def _without_blanks_at_dots(text: str) -> str:
    if " ." in text or "\t." in text:
        text = _BLANKS.sub(lambda m: "." if m.group(1) else " ", text)
    return _DOT_BLANKS.sub(".", text)


def parse_toml(text: str, name: str) -> dict[str, Any]:
    """Plain data from TOML text, with every parser failure turned into a LockError."""
    if text.startswith("\ufeff"):
        raise LockError(name, "starts with a byte-order mark; save it as plain UTF-8")
    if _DEEP_KEY.search(_without_blanks_at_dots(text)) is not None:
        raise LockError(name, f"a dotted key has more than {MAX_KEY_PARTS} parts; not a lock file")
    # Imported here: what only reads a lock's bytes (the verdict memo of `verify --fast`) never parses TOML.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockError(name, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise LockError(name, "nesting is too deep; not a lock file") from None
    except ValueError:  # tomllib lets int()'s digit limit through: `x = 1000...` with 4,300+ digits
        raise LockError(name, "not valid TOML: a number is too long") from None


def find_project_policy(start: Path | None = None) -> tuple[str, dict[str, Any]] | None:
    """(file, its [tool.envlock] table) from the nearest pyproject.toml that has one, at or above `start` (the
    working directory by default), or None. A pyproject.toml without the table does not stop the search."""
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        text = read_text(candidate)
        if "envlock" not in text:
            continue  # another project's file, perhaps one envlock cannot read: none of envlock's business
        data = parse_toml(text, str(candidate))
        tool = data.get("tool", {})
        section = tool.get("envlock") if isinstance(tool, dict) else None
        if section is None:
            continue
        if not isinstance(section, dict):
            raise LockError(str(candidate), "expected a table", "tool.envlock")
        return str(candidate), section
    return None


def check_schema_version(data: dict[str, Any], name: str) -> list[str]:
    """Refuse an unknown major schema version; return warnings for a newer minor."""
    header = data.get("lock")
    if not isinstance(header, dict):
        raise LockError(name, "required table is missing: not an envlock lock (`envlock capture` writes one)"
                        if header is None else "expected a table", "lock")
    schema = header.get("schema")
    if not isinstance(schema, str):
        raise LockError(name, "expected a string such as \"1.0\"", "lock.schema")
    # ASCII digits only, and few of them: str.isdigit() passes "²" and int() refuses 4,300+ digits.
    if re.fullmatch(SCHEMA_GRAMMAR, schema) is None:
        shown = schema if len(schema) <= 40 else schema[:37] + "..."
        raise LockError(name, f"{shown!r} is not a schema version", "lock.schema")
    major, _, minor = schema.partition(".")
    ours_major, _, ours_minor = SCHEMA_VERSION.partition(".")
    if major != ours_major:
        raise LockError(
            name, f"schema version {schema} is not supported (this envlock reads {ours_major}.x)", "lock.schema"
        )
    if int(minor) > int(ours_minor):
        return [f"{printable(name)}: schema {schema} is newer than this envlock's {SCHEMA_VERSION}; upgrade envlock"]
    return []


def loads(text: str, name: str = "envlock.lock") -> tuple[Lock, list[str]]:
    """A validated Lock from TOML text, and any warnings; raises LockError naming the dotted place."""
    if not text.strip():
        raise LockError(name, "the file is empty, not a lock (write one with `envlock capture`)")
    data = parse_toml(text, name)
    warnings = check_schema_version(data, name)
    try:
        lock = from_dict(Lock, data)
        check_lock(lock)
    except ModelError as exc:
        if warnings:  # a newer schema's new fields, most likely: say what would read it
            raise LockError(name, f"{exc.message} (the lock was written by a newer envlock, schema "
                            f"{data['lock']['schema']}; this one reads {SCHEMA_VERSION}: upgrade envlock)",
                            exc.where) from None
        raise LockError(name, exc.message, exc.where) from None
    expected = content_hash(to_dict(lock))
    if lock.lock.content_hash != expected:
        raise LockError(
            name,
            "content hash does not match the locked facts (edited by hand?); re-run `envlock capture` "
            "or restore the file",
            "lock.content_hash",
        )
    return lock, warnings


def load(path: str | os.PathLike[str]) -> tuple[Lock, list[str]]:
    """A validated Lock read from `path`, and any warnings."""
    return loads(read_text(path), str(path))


# --- writing ------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> Any:
    import tomlkit

    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for key, item in value.items():
            table[key] = _toml_value(item)
        return table
    if isinstance(value, list):
        array = tomlkit.array()
        for item in value:
            array.append(_toml_value(item))
        return array
    return value


#: Tables whose entries are records, written one record per line as inline tables.
INLINE_MAPS = frozenset({"packages", "floats.env", "policy.rules"})
ORDER = ("lock", "policy", "python", "packages", "cuda", "floats", "targets")


def _render_at(place: str, value: Any, parent: str = "") -> Any:
    """The tomlkit item for `value` at `place` (inside `parent`): tables, one-line records, record arrays."""
    import tomlkit

    if place == "policy":
        table = tomlkit.table()
        table.add(tomlkit.comment(POLICY_COMMENT))
        for key, item in value.items():
            table[key] = _render_at(f"policy.{key}", item, "policy")
        return table
    if isinstance(value, dict) and parent in INLINE_MAPS:
        return _toml_value(value)
    if isinstance(value, dict):
        table = tomlkit.table()
        for key, item in value.items():
            table[key] = _render_at(f"{place}.{key}", item, place)
        return table
    if isinstance(value, list) and value and isinstance(value[0], dict):
        array = tomlkit.array()
        for item in value:
            array.append(_toml_value(item))
        array.multiline(True)
        return array
    return _toml_value(value)


def _merge(container: Any, data: dict[str, Any], where: str) -> None:
    """Update a parsed table in place: tables recurse, so comments inside and between them stay."""
    from tomlkit.items import InlineTable, Table

    for key in list(container.keys()):
        if key not in data:
            del container[key]
    for key, value in data.items():
        place = f"{where}.{key}"
        existing = container.get(key) if key in container else None
        if isinstance(value, dict) and isinstance(existing, Table) and not isinstance(existing, InlineTable):
            _merge(existing, value, place)
        elif existing is not None and (existing.unwrap() if hasattr(existing, "unwrap") else existing) == value:
            continue
        else:
            container[key] = _render_at(place, value, where)


def dumps(lock: Lock, *, name: str = "envlock.lock", previous: str | None = None) -> str:
    """The lock as TOML text; with `previous` (the old file's text), its comments and `[policy]` are kept."""
    import tomlkit

    data = to_dict(lock)
    if previous is None:
        doc = tomlkit.document()
        for line in HEADER.format(name=name).splitlines():
            doc.add(tomlkit.comment(line))
        doc.add(tomlkit.nl())
        for key in ORDER:
            if key in data:
                doc[key] = _render_at(key, data[key])
    else:
        try:
            doc = tomlkit.parse(previous)
        except Exception as exc:  # tomlkit's errors share no base class; the text already passed tomllib
            raise LockError(name, f"cannot update this file in place ({exc}); re-capture with --force") from None
        if "policy" in doc:
            data = {key: value for key, value in data.items() if key != "policy"}
            data = {"policy": None, **data}
        for key in list(doc.keys()):
            if key not in data:
                del doc[key]
        from tomlkit.items import Table

        for key in ORDER:
            if key not in data or data[key] is None:
                continue
            existing = doc.get(key) if key in doc else None
            if isinstance(existing, Table) and key != "policy":
                _merge(existing, data[key], key)
            else:
                doc[key] = _render_at(key, data[key])
    text = tomlkit.dumps(doc)
    return text if text.endswith("\n") else text + "\n"


def dumps_document(data: dict[str, Any], *, comments: tuple[str, ...] = (),
                   inline: frozenset[str] = frozenset()) -> str:
    """TOML text of a document that is not a lock (`export --format pylock`): the comment lines first; a table
    whose key is in `inline` is written on one line, other tables as tables, lists of tables as arrays of tables."""
    import tomlkit

    def item(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            if key in inline:
                return _toml_value(value)
            table = tomlkit.table()
            for name, child in value.items():
                table.add(name, item(name, child))
            return table
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            array = tomlkit.aot()
            for child in value:
                array.append(item(key, child))
            return array
        return _toml_value(value)

    doc = tomlkit.document()
    for line in comments:
        doc.add(tomlkit.comment(line))
    if comments:
        doc.add(tomlkit.nl())
    for key, value in data.items():
        doc.add(key, item(key, value))
    text = tomlkit.dumps(doc)
    return text if text.endswith("\n") else text + "\n"

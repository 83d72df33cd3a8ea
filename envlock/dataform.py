"""Frozen dataclasses loaded strictly from plain data, written back, and described as JSON Schema.

The machinery under the lock model (envlock.model): every string field has a grammar, a regular expression matched
in full, carried in the field's metadata; the default grammar refuses control characters and bidirectional
overrides. Errors name the dotted place of the value that does not fit.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal, Union

from envlock.errors import ModelError as ModelError

SAFE_TEXT = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]{0,1024}"


def grammar(pattern: str, **kwargs: Any) -> Any:
    """A dataclass field whose string value (or dict keys, or list items) must match `pattern` in full."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata["pattern"] = pattern
    return field(metadata=metadata, **kwargs)


def keyed(pattern: str, **kwargs: Any) -> Any:
    """A dict field whose keys must match `pattern` in full."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata["key_pattern"] = pattern
    return field(metadata=metadata, **kwargs)


# --- loading from plain data --------------------------------------------------------------------------


_HINTS: dict[type, dict[str, Any]] = {}
_COMPILED: dict[str, re.Pattern[str]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
        _HINTS[cls] = hints
    return hints


#: Lone surrogates: a str can hold them (JSON's `"\ud800"`, undecodable bytes of a path or variable) but no
#: encoder takes them, so the content hash and every output would fail on one. No grammar lets them through.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


#: Grammars with a plain description, said in an error instead of the regular expression.
_PLAIN: dict[str, str] = {}


def describe(pattern: str, text: str) -> str:
    """Give `pattern` a plain description for error messages ("an environment variable name: A-Z, 0-9, _");
    returns the pattern, so a model can write `ENV_NAME = describe(r"...", "...")`."""
    _PLAIN[pattern] = text
    return pattern


def _expected(pattern: str) -> str:
    plain = _PLAIN.get(pattern)
    return f"expected {plain}" if plain else f"must match {pattern}"


def _match(pattern: str, value: str) -> bool:
    if _SURROGATE.search(value) is not None:
        return False
    compiled = _COMPILED.get(pattern)
    if compiled is None:
        compiled = _COMPILED[pattern] = re.compile(pattern)
    return compiled.fullmatch(value) is not None


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.*+:-]+")


def _join(where: str, key: str) -> str:
    # A hostile key (newline, bidi override, lookalike letters) is shown TOML-quoted and escaped, so an error
    # stays on one line and shows what the key really holds.
    if _PLAIN_KEY.fullmatch(key) is None:
        key = json.dumps(key, ensure_ascii=True)
    return f"{where}.{key}" if where else key


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} ({text})" if not isinstance(value, (list, dict)) else kind


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


#: How a field type is loaded, worked out once per type: (kind, what the kind needs).
_KINDS: dict[Any, tuple[str, Any]] = {}


def _kind(tp: Any) -> tuple[str, Any]:
    known = _KINDS.get(tp)
    if known is not None:
        return known
    _optional, inner = _is_optional(tp)
    origin = typing.get_origin(inner)
    if dataclasses.is_dataclass(inner):
        kind: tuple[str, Any] = ("model", inner)
    elif origin is Literal:
        kind = ("choice", typing.get_args(inner))
    elif inner is bool or inner is int or inner is str:
        kind = (inner.__name__, None)
    elif origin is tuple:
        kind = ("tuple", typing.get_args(inner)[0])
    elif origin is dict:
        kind = ("dict", typing.get_args(inner)[1])
    else:
        raise TypeError(f"unsupported field type {inner!r}")  # a model bug, not user input
    _KINDS[tp] = kind
    return kind


def _convert(tp: Any, value: Any, where: str, meta: Mapping[str, Any]) -> Any:
    kind, arg = _kind(tp)
    if kind == "str":
        if not isinstance(value, str):
            raise ModelError(where, f"expected a string, got {_describe(value)}")
        pattern = meta.get("pattern", SAFE_TEXT)
        if _SURROGATE.search(value) is not None:
            raise ModelError(where, f"{_describe(value)} is not valid Unicode text (a lone surrogate)")
        if not _match(pattern, value):
            raise ModelError(where, f"{_describe(value)} is not allowed here ({_expected(pattern)})")
        return value
    if kind == "model":
        return from_dict(arg, value, where)
    if kind == "choice":
        if not isinstance(value, str) or value not in arg:
            raise ModelError(where, f"expected one of {', '.join(repr(c) for c in arg)}, got {_describe(value)}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ModelError(where, f"expected a boolean, got {_describe(value)}")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelError(where, f"expected an integer, got {_describe(value)}")
        if not 0 <= value <= 2**53:
            raise ModelError(where, f"integer {value} is out of range")
        return value
    if kind == "tuple":
        if not isinstance(value, list):
            raise ModelError(where, f"expected an array, got {_describe(value)}")
        return tuple(_convert(arg, item, f"{where}[{i}]", meta) for i, item in enumerate(value))
    # kind == "dict"
    if not isinstance(value, dict):
        raise ModelError(where, f"expected a table, got {_describe(value)}")
    key_pattern = meta.get("key_pattern", SAFE_TEXT)
    out = {}
    for key, item in value.items():
        if not _match(key_pattern, key):
            raise ModelError(_join(where, key), f"key {key!r} is not allowed here ({_expected(key_pattern)})")
        out[key] = _convert(arg, item, _join(where, key), _NO_META)
    return out


_NO_META: Mapping[str, Any] = {}


#: Per model class, worked out once: name -> (type, metadata, required), and the set of names.
_LOADS: dict[type, tuple[dict[str, tuple[Any, Mapping[str, Any], bool]], frozenset[str]]] = {}
#: Per model class, worked out once: (name, default, made by a factory) for writing.
_WRITES: dict[type, tuple[tuple[str, Any, bool], ...]] = {}


def _loads(cls: type) -> tuple[dict[str, tuple[Any, Mapping[str, Any], bool]], frozenset[str]]:
    known = _LOADS.get(cls)
    if known is None:
        hints = _hints(cls)
        plan: dict[str, tuple[Any, Mapping[str, Any], bool]] = {
            f.name: (hints[f.name], dict(f.metadata),
                     f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)}
        known = (plan, frozenset(plan))
        _LOADS[cls] = known
    return known


def _writes(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    known = _WRITES.get(cls)
    if known is None:
        known = _WRITES[cls] = tuple((f.name, f.default, f.default_factory is not dataclasses.MISSING)
                                     for f in dataclasses.fields(cls))
    return known


def from_dict(cls: type[Any], data: Any, where: str = "") -> Any:
    """Build `cls` from plain data, refusing unknown keys, missing keys and values outside their grammar."""
    if not isinstance(data, dict):
        raise ModelError(where, f"expected a table, got {_describe(data)}")
    fields, names = _loads(cls)
    if not names.issuperset(data):
        raise ModelError(_join(where, sorted(set(data) - names)[0]), "unknown key")
    kwargs = {}
    for name, (tp, meta, required) in fields.items():
        if name not in data:
            if required:
                raise ModelError(_join(where, name), "required key is missing")
            continue
        kwargs[name] = _convert(tp, data[name], _join(where, name), meta)
    return cls(**kwargs)


def _empty(value: Any, default: Any, factory: bool) -> bool:
    if value is None:
        return True
    if default is not dataclasses.MISSING and isinstance(value, str) and value == "" == default:
        return True
    if isinstance(value, (tuple, dict)) and not value and (factory or default == ()):
        return True
    return False


def to_dict(obj: Any) -> Any:
    """Plain data for a model object, with empty optional fields left out."""
    cls = type(obj)
    if cls in _WRITES or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        out = {}
        for name, default, factory in _writes(cls):
            value = getattr(obj, name)
            if _empty(value, default, factory):
                continue
            out[name] = to_dict(value)
        return out
    if isinstance(obj, tuple):
        return [to_dict(item) for item in obj]
    if isinstance(obj, dict):
        return {key: to_dict(obj[key]) for key in sorted(obj)}
    return obj


# --- JSON Schema --------------------------------------------------------------------------------------


def _schema_pattern(pattern: str) -> str:
    # `(?![\s\S])` is a true end anchor in both ECMA-262 and Python (`$` also matches before a final newline).
    return f"^(?:{pattern})(?![\\s\\S])"


def _schema_for(tp: Any, meta: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    _optional, tp = _is_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        name = getattr(tp, "__name__", str(tp))
        if name not in defs:
            defs[name] = {}
            defs[name] = schema_of(tp, defs)  # type: ignore[arg-type]
        return {"$ref": f"#/$defs/{name}"}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "minimum": 0, "maximum": 2**53}
    if tp is str:
        return {"type": "string", "pattern": _schema_pattern(meta.get("pattern", SAFE_TEXT))}
    if origin is tuple:
        return {"type": "array", "items": _schema_for(typing.get_args(tp)[0], meta, defs)}
    if origin is dict:
        return {
            "type": "object",
            "propertyNames": {"pattern": _schema_pattern(meta.get("key_pattern", SAFE_TEXT))},
            "additionalProperties": _schema_for(typing.get_args(tp)[1], {}, defs),
        }
    raise TypeError(f"unsupported field type {tp!r}")


def schema_of(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one model class; the classes it refers to are added to `defs`."""
    hints = _hints(cls)
    props = {}
    required = []
    for f in dataclasses.fields(cls):
        props[f.name] = _schema_for(hints[f.name], dict(f.metadata), defs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "description": (cls.__doc__ or "").strip()}
    out["properties"] = props
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out

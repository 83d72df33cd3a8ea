"""Reading raw facts (plain JSON data) with errors that name the dotted place."""

from __future__ import annotations

from envlock.errors import ModelError

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

_MISSING: Any = object()


def get(raw: Any, key: str, kind: type[T] | tuple[type, ...], where: str, default: Any = _MISSING) -> Any:
    """`raw[key]` checked to be of `kind`; a missing key gives `default` or a ModelError at `where.key`."""
    place = f"{where}.{key}" if where else key
    if not isinstance(raw, dict):
        raise ModelError(where, "expected an object")
    if key not in raw or raw[key] is None:
        if default is _MISSING:
            raise ModelError(place, "required fact is missing")
        return default
    value = raw[key]
    if isinstance(value, bool) and kind in (int, float):
        raise ModelError(place, f"expected {getattr(kind, '__name__', kind)}, got a boolean")
    if not isinstance(value, kind):
        name = getattr(kind, "__name__", None) or "/".join(k.__name__ for k in kind)  # type: ignore[union-attr]
        raise ModelError(place, f"expected {name}, got {type(value).__name__}")
    return value

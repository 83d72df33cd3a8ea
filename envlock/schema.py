"""The lock's JSON Schema, generated from the model. `python -m envlock.schema` rewrites schemas/."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from envlock.atomic import write_atomic
from envlock.model import SCHEMA_VERSION, json_schema

SCHEMA_FILE = f"envlock-lock-{SCHEMA_VERSION}.schema.json"


def schema_text() -> str:
    """The schema as the exact text kept in schemas/."""
    return json.dumps(json_schema(), indent=2, sort_keys=False, ensure_ascii=True) + "\n"


def validate_with_jsonschema(data: dict[str, Any]) -> list[str]:
    """Problems jsonschema finds in plain lock data, each as `dotted.place: message` (empty when valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(json_schema())
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        place = ".".join(str(p) for p in error.absolute_path)
        problems.append(f"{place}: {error.message}" if place else error.message)
    return problems


def main(argv: list[str] | None = None) -> int:
    """Write the schema into the given folder (default: schemas/ beside the package)."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "schemas"
    write_atomic(folder / SCHEMA_FILE, schema_text())
    print(f"wrote {folder / SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

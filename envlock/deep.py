"""`verify --deep`: re-hash every installed file of a distribution against the hashes in its RECORD."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os


def _record_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


def check_record(location: str, dist_info: str) -> list[tuple[str, str]]:
    """(path, "modified" | "missing") for every file whose content no longer matches the RECORD."""
    try:
        with open(os.path.join(location, dist_info, "RECORD"), encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return [(f"{dist_info}/RECORD", "missing")]
    problems = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 2 or not row[1].startswith("sha256="):
            continue
        rel = row[0]
        if rel.endswith((".pyc", ".pyo")):
            continue
        full = os.path.normpath(os.path.join(location, rel))
        try:
            actual = _record_hash(full)
        except FileNotFoundError:
            problems.append((rel, "missing"))
            continue
        except OSError:
            problems.append((rel, "unreadable"))
            continue
        if actual != row[1]:
            problems.append((rel, "modified"))
    return problems

"""`verify --deep`: re-hash every installed file of a distribution against the hashes in its RECORD.

The files of every package are hashed on a pool of threads, one per core (hashlib releases the GIL on large
buffers, so the threads hash in parallel); big files are read in large chunks. `on_bytes` (when given) is told
how many bytes each file had, for a progress bar.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

CHUNK = 4 << 20


@dataclass(frozen=True)
class FileCheck:
    """One file to re-hash: its package, its path as RECORD names it, the hash RECORD has, where it lies."""

    package: str
    rel: str
    expected: str
    full: str
    size: int


def _record_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


def record_checks(package: str, location: str, dist_info: str) -> tuple[list[FileCheck], list[tuple[str, str]]]:
    """The files a RECORD lists with a sha256 (byte code left out), and the problems found without hashing (a
    RECORD that is missing)."""
    try:
        with open(os.path.join(location, dist_info, "RECORD"), encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return [], [(f"{dist_info}/RECORD", "missing")]
    checks = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 2 or not row[1].startswith("sha256="):
            continue
        rel = row[0]
        if rel.endswith((".pyc", ".pyo")):
            continue
        size = int(row[2]) if len(row) > 2 and row[2].isascii() and row[2].isdigit() and len(row[2]) < 16 else 0
        checks.append(FileCheck(package, rel, row[1], os.path.normpath(os.path.join(location, rel)), size))
    return checks, []


def _verdict(check: FileCheck) -> str:
    """"" when the file matches its RECORD hash, else what is wrong with it."""
    try:
        return "" if _record_hash(check.full) == check.expected else "modified"
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"


def check_files(checks: Iterable[FileCheck], *, workers: int | None = None,
                on_bytes: Callable[[int], None] | None = None) -> dict[str, list[tuple[str, str]]]:
    """package -> (file, what) for every file that no longer matches, hashing on `workers` threads."""
    # Imported here: `verify --fast`, which never re-hashes, loads this module at job start.
    from concurrent.futures import ThreadPoolExecutor

    ordered = sorted(checks, key=lambda c: -c.size)  # the big files first, so no thread is left with one at the end
    out: dict[str, list[tuple[str, str]]] = {}
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for check, verdict in zip(ordered, pool.map(_verdict, ordered), strict=True):
            if on_bytes is not None:
                on_bytes(check.size)
            if verdict:
                out.setdefault(check.package, []).append((check.rel, verdict))
    return {name: sorted(problems) for name, problems in out.items()}


def check_record(location: str, dist_info: str) -> list[tuple[str, str]]:
    """(path, "modified" | "missing" | "unreadable") for every file of one distribution that no longer matches."""
    checks, problems = record_checks("", location, dist_info)
    return problems + check_files(checks).get("", [])

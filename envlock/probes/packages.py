"""Installed distributions: name, version, where each came from, and a digest of its installed files.

The digest is taken over the file hashes in the distribution's RECORD, leaving out what an install makes
differently in every prefix (console scripts and other files outside site-packages, `.pyc` caches, the
installer's own notes), so the same wheel installed into two environments gives the same digest.
"""

from __future__ import annotations

import marshal
import os
import sys

from envlock._raw import get
from envlock.errors import ModelError
from envlock.probes.sizes import cache_file, kept, read_cache, short_digest, stat_key, write_cache

TYPE_CHECKING = False  # see envlock/errors.py: hashlib, json, csv and re are imported where they are needed
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from envlock.model import Package


def canonical_name(name: str) -> str:
    """The PEP 503 normalized form of a distribution name: each run of `-`, `_` and `.` as one `-`, lower case."""
    out = name.replace("_", "-").replace(".", "-")
    while "--" in out:
        out = out.replace("--", "-")
    return out.lower()


def _headers(text_head: str) -> dict[str, str]:
    """Name and Version from the start of a METADATA / PKG-INFO file."""
    found: dict[str, str] = {}
    for line in text_head.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep and key in ("Name", "Version") and key not in found:
            found[key] = value.strip()
    return found


def _read_head(path: str, limit: int = 65536, first: int = 4096) -> str:
    """Up to `limit` characters of a METADATA file, of which _headers reads up to the first blank line: the first
    `first` characters hold it in practice (a long description follows it), and only without one is more read."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(min(first, limit))
        if len(head) < min(first, limit) or "\n\n" in head or "\n\r\n" in head:
            return head
        return head + handle.read(limit - len(head))


def _record_rows(record_text: str) -> Iterable[tuple[str, str]]:
    """(path, hash) per RECORD row; the csv module only for the rare quoted row (a comma in a file name)."""
    import csv

    for line in record_text.splitlines():
        if '"' in line:
            for row in csv.reader([line]):
                if len(row) >= 2:
                    yield row[0], row[1]
            continue
        head, sep, _size = line.rpartition(",")
        if not sep:
            continue
        path, sep, digest = head.rpartition(",")
        if sep:
            yield path, digest


# A plain RECORD row with a hash: `path,algo=digest,size` (quoting only comes with commas in file names).
_HASHED_ROW = r"(?m)^([^,\n\r]+),([^,\n\r]+),[^,\n\r]*\r?$"


def record_digest(record_text: str, dist_info: str) -> str:
    """sha256 over the sorted `path hash` lines of a RECORD, prefix-dependent entries left out."""
    # The regular expression splits the rows in C (a torch RECORD has ~12,000); csv only for quoted rows.
    import hashlib
    import re

    rows = _record_rows(record_text) if '"' in record_text else re.findall(_HASHED_ROW, record_text)
    lines = []
    for raw_path, digest in rows:
        if not digest:
            continue
        path = raw_path.replace("\\", "/") if "\\" in raw_path else raw_path
        if kept(path, dist_info):
            lines.append(f"{path} {digest}\n")
    lines.sort()
    return "sha256:" + hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def search_path(path: Iterable[str] | None = None) -> list[str]:
    """The folders to look for distributions in: sys.path, less the working folder Python adds for scripts and
    the folders inside a site-packages on the path (a package's vendored copies)."""
    entries = list(sys.path if path is None else path)
    cwd = os.getcwd()
    # Python makes PYTHONPATH entries absolute in sys.path (site.removeduppaths), so compare absolute paths.
    explicit = {os.path.abspath(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry}
    # A folder inside a site-packages that is itself on the path is a package's own (ray/thirdparty_files, which
    # `import ray` puts on sys.path): the distributions there are that package's private copies, not installs.
    sites = [os.path.join(os.path.abspath(e), "") for e in entries
             if e and os.path.basename(os.path.normpath(e)) in ("site-packages", "dist-packages")]
    out = []
    for entry in entries:
        if entry == "" or (os.path.abspath(entry) == cwd and cwd not in explicit):
            continue
        if any(os.path.abspath(entry).startswith(site) for site in sites):
            continue
        if entry not in out and os.path.isdir(entry):
            out.append(entry)
    return out


def iter_dist_dirs(folders: Iterable[str]) -> Iterable[tuple[str, str]]:
    """(folder, entry) for every .dist-info / .egg-info entry, in search order."""
    for folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                yield folder, name


#: No direct_url.json, or one that cannot be read as JSON: the distribution then counts as from an index.
_ABSENT: Any = object()


def _read_direct_url(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            import json  # only where a distribution has one

            return json.load(handle)
    except (OSError, ValueError):
        return _ABSENT


def _json_like(value: Any, depth: int = 0) -> bool:
    """Whether a remembered value is what json.load could have given (a cache holds nothing else)."""
    if value is None or isinstance(value, (str, int, float)):
        return True
    if depth > 32:
        return False
    if isinstance(value, list):
        return all(_json_like(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_like(v, depth + 1) for k, v in value.items())
    return False


class DigestCache:
    """RECORD digests remembered between runs: a digest depends on RECORD's bytes only, so it is kept under RECORD's
    path and (mtime_ns, ctime_ns, size, inode) — any rewrite of the file changes ctime — and taken again only when
    one of them moved; each direct_url.json's content likewise (so a job start loads no JSON parser). The cache is a
    marshal file in the user's cache folder (`$ENVLOCK_CACHE_DIR`, else `$XDG_CACHE_HOME/envlock`, else
    `~/.cache/envlock`); `ENVLOCK_CACHE_DIR=""` turns it off. A cache that cannot be read is ignored, one that
    cannot be written is not written: it only ever saves time."""

    LIMIT = 4 * 1024 * 1024

    def __init__(self, folders: Iterable[str]) -> None:
        # One file per set of folders looked in (one per venv, in practice), so venvs do not evict each other.
        name = short_digest("\0".join(folders))
        self.path = cache_file(f"record-digests-{name}.{sys.implementation.cache_tag}.marshal")
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        if self.path is not None:
            self.entries = read_cache(self.path, self.LIMIT, marshal.loads)

    def digest(self, record: str, dist_info: str) -> str:
        """The digest of the RECORD at `record` (OSError when it cannot be read)."""
        key = stat_key(os.stat(record))
        known = self.entries.get(record)
        if isinstance(known, list) and len(known) == 5 and known[:4] == key and isinstance(known[4], str):
            return known[4]
        with open(record, encoding="utf-8", errors="replace") as handle:
            value = record_digest(handle.read(), dist_info)
        self.entries[record] = [*key, value]
        self.changed = True
        return value

    def direct_url(self, path: str) -> Any:
        """What the `direct_url.json` at `path` says (PEP 610: installed from a URL or a folder), remembered like a
        digest, under the file's stat; _ABSENT when there is none or it is not JSON."""
        try:
            key = stat_key(os.stat(path))
        except OSError:
            return _ABSENT
        known = self.entries.get(path)
        if isinstance(known, list) and len(known) == 5 and known[:4] == key and _json_like(known[4]):
            return known[4]
        value = _read_direct_url(path)
        if value is not _ABSENT:
            self.entries[path] = [*key, value]
            self.changed = True
        return value

    def save(self, seen: set[str]) -> None:
        """Write the cache back when it changed, keeping only the files seen in this run's folders."""
        if self.path is None or not self.changed:
            return
        entries = {k: v for k, v in self.entries.items() if k in seen}
        try:
            data = marshal.dumps({"version": 1, "entries": entries})
        except ValueError:  # not plain data: nothing is remembered
            return
        write_cache(self.path, data)


def collect_packages(path: Iterable[str] | None = None, *, digests: bool = True) -> list[dict[str, Any]]:
    """Raw facts for every distribution visible on `path` (sys.path by default).

    The first of a name wins, as for importlib.metadata, with one exception: a bare `.egg-info` (what
    `pip install -e .` with setuptools leaves in a project's folder) gives way to a later `.dist-info` of the same
    name, which is what the installer actually recorded.
    """
    seen: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    folders = search_path(path)
    cache = DigestCache(folders) if digests else None
    records: set[str] = set()
    for folder, entry in iter_dist_dirs(folders):
        full = os.path.join(folder, entry)
        is_dir = os.path.isdir(full)
        meta_file = os.path.join(full, "METADATA" if entry.endswith(".dist-info") else "PKG-INFO") if is_dir else full
        try:
            headers = _headers(_read_head(meta_file))
        except OSError:
            continue
        name, version = headers.get("Name"), headers.get("Version")
        if not name or not version:
            continue
        key = canonical_name(name)
        if key in seen:
            earlier = out[seen[key]]
            if not (earlier["metadata_dir"].endswith(".egg-info") and entry.endswith(".dist-info")):
                continue
        fact: dict[str, Any] = {"name": name, "version": version, "location": folder, "metadata_dir": entry}
        if is_dir:
            direct_url = os.path.join(full, "direct_url.json")
            found = cache.direct_url(direct_url) if cache is not None else _read_direct_url(direct_url)
            if found is not _ABSENT:
                records.add(direct_url)
                fact["direct_url"] = found
            if cache is not None and entry.endswith(".dist-info"):
                record = os.path.join(full, "RECORD")
                records.add(record)
                try:
                    fact["files"] = cache.digest(record, entry)
                except OSError:
                    pass
        if key in seen:
            out[seen[key]] = fact
        else:
            seen[key] = len(out)
            out.append(fact)
    if cache is not None:
        cache.save(records)
    return out


def _strip_credentials(url: str, where: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ModelError(f"{where}.url", f"not a URL: {exc}") from None
    userinfo, at, host = parts.netloc.rpartition("@")
    # PEP 610: a non-secret user such as `git` in `git+ssh://git@host/repo` is kept; a password never is.
    if at and userinfo != "git":
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def parse_source(direct_url: Any, where: str) -> dict[str, str]:
    """Where a distribution came from, per its `direct_url.json` (PEP 610); none means a package index."""
    if direct_url is None:
        return {"source": "index"}
    if not isinstance(direct_url, dict):
        raise ModelError(where, "expected an object")
    url = _strip_credentials(get(direct_url, "url", str, where, ""), where)
    if "vcs_info" in direct_url:
        vcs = get(direct_url, "vcs_info", dict, where)
        out = {"source": "vcs", "url": url}
        commit = get(vcs, "commit_id", str, f"{where}.vcs_info", "")
        if commit:
            out["commit"] = commit.lower()
        return out
    if "dir_info" in direct_url:
        info = get(direct_url, "dir_info", dict, where)
        editable = get(info, "editable", bool, f"{where}.dir_info", False)
        return {"source": "editable" if editable else "local", "url": url}
    if url.startswith("file:"):
        return {"source": "local", "url": url}
    return {"source": "url", "url": url}


def parse_packages(raw: Any) -> dict[str, Package]:
    """The `[packages]` section from raw facts, keyed by canonical name."""
    from envlock.model import Artifact, Package, from_dict

    if not isinstance(raw, list):
        raise ModelError("packages", "expected a list")
    out: dict[str, Package] = {}
    for i, item in enumerate(raw):
        where = f"packages[{i}]"
        name = get(item, "name", str, where)
        source = parse_source(item.get("direct_url"), f"{where}.direct_url")
        key = canonical_name(name)
        if key in out:
            continue
        out[key] = Package(
            version=get(item, "version", str, where),
            source=source["source"],  # type: ignore[arg-type]
            url=source.get("url", ""),
            commit=source.get("commit", ""),
            files=get(item, "files", str, where, ""),
            hashes=tuple(get(item, "hashes", list, where, ())),
            artifacts=tuple(from_dict(Artifact, a, f"{where}.artifacts[{j}]")
                            for j, a in enumerate(get(item, "artifacts", list, where, ()))),
        )
    return {key: out[key] for key in sorted(out)}

"""Artifact hashes from the package index, through pip-tools: every sha256 the index lists for a locked version.

`envlock capture --hashes` stores them in the lock, and `envlock build` then refuses a wheel whose archive hash is
not among them. pip-tools is an optional dependency (`pip install 'envlock[hashes]'`): it is imported only here.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from envlock.errors import UsageError
from envlock.model import FILENAME, URL
from envlock.probes.packages import canonical_name


@dataclass(frozen=True)
class IndexFiles:
    """What the index has for the locked versions: hashes and files (name, url, sha256) per name, and what it lacks."""

    hashes: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def artifact_hashes(packages: list[dict[str, Any]], *, pip_args: list[str] | None = None,
                    cache_dir: Path | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """({name: sorted sha256 hashes}, [names the index does not have]) for the raw package facts given."""
    found = index_files(packages, pip_args=pip_args, cache_dir=cache_dir)
    return found.hashes, found.missing


def index_files(packages: list[dict[str, Any]], *, pip_args: list[str] | None = None, cache_dir: Path | None = None,
                advance: Callable[[float], None] = lambda done: None) -> IndexFiles:
    """Every sha256 the index lists for each locked version, and the files they belong to where it names them.

    Packages installed from elsewhere than an index (a VCS, a path, editable) are left out. The index, find-links
    and certificates are pip's own configuration (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS...). `advance(1)` is
    called after each package.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pip's vendored pkg_resources announces itself
        try:
            from pip._internal.req.constructors import install_req_from_line
            from piptools.repositories import PyPIRepository
        except ImportError:
            raise UsageError("--hashes needs pip-tools: pip install 'envlock[hashes]'") from None
        return _hashes(packages, PyPIRepository, install_req_from_line, pip_args, cache_dir, advance)


def public_url(url: str) -> str:
    """The URL without credentials or fragment: a lock is committed, a token in an index URL must not be."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _files(repository: Any, name: str, version: str, hashes: list[str]) -> list[dict[str, str]]:
    """The index's files of `name==version` whose sha256 is one of `hashes`, sorted by file name."""
    from packaging.version import Version

    out = {}
    wanted = Version(version)
    for candidate in repository.find_all_candidates(name):
        link = candidate.link
        if Version(str(candidate.version)) != wanted:
            continue
        digest = link.hash if link.hash_name == "sha256" else None
        if digest is None and link.is_file and os.path.isfile(link.file_path):
            digest = _sha256(link.file_path)
        url = public_url(link.url_without_fragment)
        # A name or URL the lock's grammar refuses is left out: the hashes still stand, capture still succeeds.
        if digest and f"sha256:{digest}" in hashes and re.fullmatch(FILENAME, link.filename) and re.fullmatch(URL, url):
            out[link.filename] = {"name": link.filename, "url": url, "sha256": f"sha256:{digest}"}
    return [out[key] for key in sorted(out)]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hashes(packages: list[dict[str, Any]], repository_class: Any, requirement: Any, pip_args: list[str] | None,
            cache_dir: Path | None, advance: Callable[[float], None]) -> IndexFiles:
    cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "envlock" / "pip-tools"
    import logging  # here: capture without --hashes (and every verify) never needs it

    pip_logger = logging.getLogger("pip")
    level = pip_logger.level
    pip_logger.setLevel(logging.ERROR)  # pip's warnings about its own configuration are not the user's business here
    try:
        repository = repository_class(pip_args=list(pip_args or []), cache_dir=str(cache))
        found = IndexFiles()
        for item in packages:
            if item.get("direct_url") is not None:
                advance(1)
                continue
            name, version = canonical_name(str(item["name"])), str(item["version"])
            try:
                hashes = repository.get_hashes(requirement(f"{name}=={version}"))
            except Exception:  # pip-tools and pip raise many kinds for "not on this index"; none is fatal here
                found.missing.append(name)
                advance(1)
                continue
            chosen = sorted(h for h in hashes if h.startswith("sha256:"))
            if chosen:
                found.hashes[name] = chosen
                try:
                    files = _files(repository, name, version, chosen)
                except Exception:  # the names are a convenience (pylock export); the hashes stand without them
                    files = []
                if files:
                    found.files[name] = files
            else:
                found.missing.append(name)
            advance(1)
        found.missing.sort()
        return found
    finally:
        pip_logger.setLevel(level)

"""Artifact hashes from the package index, through pip-tools: every sha256 the index lists for a locked version.

`envlock capture --hashes` stores them in the lock, and `envlock build` then refuses a wheel whose archive hash is
not among them. pip-tools is an optional dependency (`pip install 'envlock[hashes]'`): it is imported only here.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from envlock.errors import UsageError
from envlock.probes.packages import canonical_name


def artifact_hashes(packages: list[dict[str, Any]], *, pip_args: list[str] | None = None,
                    cache_dir: Path | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """({name: sorted sha256 hashes}, [names the index does not have]) for the raw package facts given.

    Packages installed from elsewhere than an index (a VCS, a path, editable) are left out. The index, find-links
    and certificates are pip's own configuration (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS...).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pip's vendored pkg_resources announces itself
        try:
            from pip._internal.req.constructors import install_req_from_line
            from piptools.repositories import PyPIRepository
        except ImportError:
            raise UsageError("--hashes needs pip-tools: pip install 'envlock[hashes]'") from None
        return _hashes(packages, PyPIRepository, install_req_from_line, pip_args, cache_dir)


def _hashes(packages: list[dict[str, Any]], repository_class: Any, requirement: Any, pip_args: list[str] | None,
            cache_dir: Path | None) -> tuple[dict[str, list[str]], list[str]]:
    cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "envlock" / "pip-tools"
    pip_logger = logging.getLogger("pip")
    level = pip_logger.level
    pip_logger.setLevel(logging.ERROR)  # pip's warnings about its own configuration are not the user's business here
    try:
        repository = repository_class(pip_args=list(pip_args or []), cache_dir=str(cache))
        found: dict[str, list[str]] = {}
        missing: list[str] = []
        for item in packages:
            if item.get("direct_url") is not None:
                continue
            name, version = canonical_name(str(item["name"])), str(item["version"])
            try:
                hashes = repository.get_hashes(requirement(f"{name}=={version}"))
            except Exception:  # pip-tools and pip raise many kinds for "not on this index"; none is fatal here
                missing.append(name)
                continue
            chosen = sorted(h for h in hashes if h.startswith("sha256:"))
            if chosen:
                found[name] = chosen
            else:
                missing.append(name)
        return found, sorted(missing)
    finally:
        pip_logger.setLevel(level)

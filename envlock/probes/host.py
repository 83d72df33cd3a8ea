"""What `platform` says of the host and the interpreter, read without it: the platform module imports `re` (and,
through it, a tenth of a job start), and the collectors need only a few of its answers, which os.uname and
sys.version hold. Anywhere those do not (no os.uname, an unusual sys.version), platform itself answers."""

from __future__ import annotations

import os
import sys


def system() -> str:
    """platform.system(): "Linux", "Darwin", "Windows"."""
    return _uname(0)


def release() -> str:
    """platform.release(): the kernel's release."""
    return _uname(2)


def machine() -> str:
    """platform.machine(): "x86_64", "aarch64", "arm64"."""
    return _uname(4)


def _uname(field: int) -> str:
    uname = getattr(os, "uname", None)
    if uname is None or sys.platform.startswith(("win", "cygwin", "java")):
        import platform

        return str(platform.uname()[field])
    try:
        return str(uname()[field])
    except OSError:  # platform falls back to "" where uname fails
        return ""


def python_version() -> str:
    """platform.python_version(): the first word of sys.version, with a patch level ("3.11.7", "3.13.0rc1")."""
    word = sys.version.split(None, 1)[0] if sys.version.strip() else ""
    if not word or not word.isascii() or not all(c.isalnum() or c in "._+" for c in word):
        import platform

        return platform.python_version()
    parts = word.split(".")
    if len(parts) == 2:
        parts.append("0")
    return ".".join(parts)

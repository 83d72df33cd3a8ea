"""The interpreter: implementation, version, ABI and platform tags."""

from __future__ import annotations

import marshal
import os
import sys
import sysconfig

import packaging

from envlock._raw import get
from envlock.probes.host import python_version
from envlock.probes.sizes import cache_file, read_cache, write_cache

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    from typing import Any

    from envlock.model import PythonSection


def collect_python() -> dict[str, Any]:
    """Raw facts about the running interpreter."""
    return {
        "implementation": sys.implementation.name,
        "version": python_version(),
        "tag": interpreter_tag(),
        "sysconfig_platform": sysconfig.get_platform(),
        "byteorder": sys.byteorder,
        "pointer_bits": 64 if sys.maxsize > 2**32 else 32,
    }


def interpreter_tag() -> str:
    """`interpreter-abi-platform` of this interpreter, with the most specific platform tag (manylinux_2_36_x86_64
    rather than linux_x86_64: it says which libc wheels need).

    packaging.tags works it out in about 15 ms, most of a job start's reading of the machine, so the answer is
    remembered with the digest caches (see envlock.probes.sizes) under everything it is made from: the
    interpreter's file (path and stat), version and build, the platform, the C library's version and packaging's
    own version."""
    key = _tag_key()
    path = cache_file("python-tags.marshal")
    entries = read_cache(path, TAG_CACHE_LIMIT, marshal.loads) if path is not None and key else {}
    known = entries.get(key)
    if isinstance(known, str) and known.count("-") >= 2:
        return known
    tag = _work_out_tag()
    if path is not None and key:
        kept = {k: v for k, v in entries.items() if isinstance(v, str)} if len(entries) < 64 else {}
        kept[key] = tag
        write_cache(path, marshal.dumps({"version": 1, "entries": kept}))
    return tag


TAG_CACHE_LIMIT = 256 * 1024


def _work_out_tag() -> str:
    from packaging import tags  # about 15 ms: only when the remembered answer does not hold

    first = next(iter(tags.sys_tags()))
    specific = next((t for t in tags.platform_tags() if not t.startswith("linux_")), first.platform)
    return f"{first.interpreter}-{first.abi}-{specific}"


def _tag_key() -> str:
    """What decides the tag (see interpreter_tag); "" when it cannot all be read (then it is worked out)."""
    try:
        executable = os.path.realpath(sys.executable) if sys.executable else ""
        st = os.stat(executable) if executable else None
        libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else ""
    except (OSError, ValueError):
        return ""
    if st is None:
        return ""
    if sys.platform == "darwin":
        import platform

        mac = platform.mac_ver()[0]
    else:
        mac = ""
    parts = [sys.executable, executable, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, sys.version,
             sys.implementation.cache_tag, getattr(sys, "abiflags", ""), sysconfig.get_platform(), libc or "", mac,
             packaging.__version__]
    return repr(parts)


def parse_python(raw: Any) -> PythonSection:
    """The `[python]` section from raw facts."""
    from envlock.model import PythonSection
    tag = get(raw, "tag", str, "python")
    interpreter, abi, plat = ([*tag.split("-", 2), "", ""])[:3]
    return PythonSection(
        implementation=get(raw, "implementation", str, "python"),
        version=get(raw, "version", str, "python"),
        abi=abi or interpreter,
        platform=get(raw, "sysconfig_platform", str, "python"),
        platform_tag=plat or "any",
        byteorder=get(raw, "byteorder", str, "python", "little"),
        pointer_bits=get(raw, "pointer_bits", int, "python", 64),
    )

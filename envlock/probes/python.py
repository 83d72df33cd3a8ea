"""The interpreter: implementation, version, ABI and platform tags."""

from __future__ import annotations

import platform
import sys
import sysconfig
from typing import Any

from envlock._raw import get
from envlock.model import PythonSection


def collect_python() -> dict[str, Any]:
    """Raw facts about the running interpreter."""
    from packaging import tags

    # The most specific platform tag (manylinux_2_36_x86_64 rather than linux_x86_64) says which libc wheels need.
    first = next(iter(tags.sys_tags()))
    specific = next((t for t in tags.platform_tags() if not t.startswith("linux_")), first.platform)
    return {
        "implementation": sys.implementation.name,
        "version": platform.python_version(),
        "tag": f"{first.interpreter}-{first.abi}-{specific}",
        "sysconfig_platform": sysconfig.get_platform(),
        "byteorder": sys.byteorder,
        "pointer_bits": 64 if sys.maxsize > 2**32 else 32,
    }


def parse_python(raw: Any) -> PythonSection:
    """The `[python]` section from raw facts."""
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

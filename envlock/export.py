"""`envlock export`: the lock's packages for an installer. Pure: a lock in, the file's text and warnings out.

`requirements`: one `name==version` line per package from an index, with every artifact hash the lock holds
(`envlock capture --hashes` records them) and the environment markers of the lock's Python, so that
`pip install --require-hashes --no-deps -r FILE` installs exactly the locked set. A VCS install is exported as
its exact direct reference (`name @ git+URL@COMMIT`); editable and local installs cannot be installed from a
file's text and are left out, each named in a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from envlock.model import Lock

#: sysconfig's platform prefix -> sys.platform, for the `sys_platform` marker.
SYS_PLATFORMS = {"linux": "linux", "macosx": "darwin", "win": "win32", "freebsd": "freebsd"}


@dataclass(frozen=True)
class Export:
    """The exported text, and what the user should know about it (one line each)."""

    text: str
    warnings: tuple[str, ...] = ()


def markers(lock: Lock) -> str:
    """The environment markers of the lock's Python: version, implementation and OS."""
    py = lock.python
    version = ".".join(py.version.split(".")[:2])
    parts = [f'python_version == "{version}"', f'implementation_name == "{py.implementation.lower()}"']
    system = SYS_PLATFORMS.get(py.platform.split("-")[0])
    if system:
        parts.append(f'sys_platform == "{system}"')
    return " and ".join(parts)


def export_requirements(lock: Lock, name: str) -> Export:
    """A requirements file of the lock's packages (see the module's docstring)."""
    marker = markers(lock)
    lines: list[str] = []
    warnings = []
    unhashed = []
    left_out = []
    for pkg_name, pkg in sorted(lock.packages.items()):
        if pkg.source == "vcs" and pkg.url and pkg.commit:
            url = pkg.url if "+" in pkg.url.split("://", 1)[0] else f"git+{pkg.url}"
            lines.append(f"{pkg_name} @ {url}@{pkg.commit} ; {marker}")
            warnings.append(f"{pkg_name} is exported as its VCS reference: pip cannot check it with "
                            "--require-hashes (install it without, or build a wheel of it)")
            continue
        if pkg.source in ("editable", "local") or (pkg.source == "url" and not pkg.url):
            left_out.append(f"{pkg_name} ({pkg.source})")
            continue
        if pkg.source == "url":
            lines.append(f"{pkg_name} @ {pkg.url} ; {marker}")
            continue
        hashes = "".join(f" \\\n    --hash={h}" for h in pkg.hashes)
        if not pkg.hashes:
            unhashed.append(pkg_name)
        lines.append(f"{pkg_name}=={pkg.version} ; {marker}{hashes}")
    install = ("pip install --no-deps -r THIS_FILE  (the lock has no artifact hashes to check)" if unhashed
               else "pip install --require-hashes --no-deps -r THIS_FILE")
    header = [f"# Exported by envlock {lock.lock.envlock} from {name} ({lock.lock.content_hash[:19]}).",
              f"# Python {lock.python.version} ({lock.python.abi}, {lock.python.platform}); install with",
              f"#   {install}", ""]
    lines = header + lines
    if left_out:
        warnings.append(f"left out, not installable from an index: {', '.join(left_out)}")
    if unhashed:
        shown = ", ".join(unhashed[:5]) + (f" and {len(unhashed) - 5} more" if len(unhashed) > 5 else "")
        warnings.append(f"no artifact hashes in the lock for {shown}: `envlock capture --hashes` records them; "
                        "without them pip refuses --require-hashes")
    return Export(text="\n".join(lines) + "\n", warnings=tuple(warnings))

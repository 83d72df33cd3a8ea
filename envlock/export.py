"""`envlock export`: the lock's packages for an installer. Pure: a lock in, the file's text and warnings out.

`requirements`: one `name==version` line per package from an index, with every artifact hash the lock holds
(`envlock capture --hashes` records them) and the environment markers of the lock's Python, so that
`pip install --require-hashes --no-deps -r FILE` installs exactly the locked set. A VCS install is exported as
its exact direct reference (`name @ git+URL@COMMIT`); editable and local installs cannot be installed from a
file's text and are left out, each named in a warning.

`pylock`: a PEP 751 `pylock.toml` (https://packaging.python.org/en/latest/specifications/pylock-toml/). A package
there must name a file to install from, so an index package is exported with the wheels (and sdist) that
`envlock capture --hashes` recorded, each with its URL and sha256; one without recorded files is left out and
named. A VCS install at a commit is exact and becomes `[packages.vcs]`; editable and local installs are not
(their files can change) and are left out. The lock's hardware facts go under `[tool.envlock]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from envlock.errors import UsageError
from envlock.lockfile import dumps_document
from envlock.model import Artifact, Lock, Target

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
        warnings.append(f"no artifact hashes in the lock for {_first_few(unhashed)}: `envlock capture --hashes` "
                        "records them; without them pip refuses --require-hashes")
    return Export(text="\n".join(lines) + "\n", warnings=tuple(warnings))


def _first_few(names: list[str]) -> str:
    """Up to five names, and how many more."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _file_entry(artifact: Artifact) -> dict[str, Any]:
    """A pylock wheel/sdist entry: name, where (a local file as `path`, else `url`), sha256."""
    parts = urlsplit(artifact.url)
    where = {"path": unquote(parts.path)} if parts.scheme == "file" else {"url": artifact.url}
    return {"name": artifact.name, **where, "hashes": {"sha256": artifact.sha256.removeprefix("sha256:")}}


def _vcs(url: str, commit: str) -> dict[str, Any]:
    scheme = url.split("://", 1)[0]
    kind, _, _ = scheme.partition("+") if "+" in scheme else ("git", "", "")
    plain = url.split("+", 1)[1] if "+" in scheme else url
    return {"type": kind, "url": plain, "commit-id": commit}


def _target_facts(target: Target) -> dict[str, Any]:
    """One target's hardware, as `[tool.envlock.targets.NAME]` shows it."""
    out: dict[str, Any] = {"cpu": target.cpu.microarchitecture, "cpu-model": target.cpu.model,
                           "gpu-count": target.gpu.count}
    devices = target.gpu.devices
    if devices:
        names = sorted({d.name for d in devices})
        out["gpu"] = ", ".join(names)
        capabilities = sorted({d.compute_capability for d in devices if d.compute_capability})
        if capabilities:
            out["compute-capability"] = ", ".join(capabilities)
    if target.gpu.driver:
        out["driver"] = target.gpu.driver
    if target.gpu.cuda_driver:
        out["driver-cuda"] = target.gpu.cuda_driver
    return out


def _tool_table(lock: Lock, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"lock": name, "content-hash": lock.lock.content_hash, "envlock": lock.lock.envlock,
                           "python": f"{lock.python.version} ({lock.python.abi}, {lock.python.platform})"}
    if lock.cuda is not None:
        cuda = {"torch-cuda": lock.cuda.torch_cuda, "runtime": lock.cuda.runtime, "cudnn": lock.cuda.cudnn,
                "nccl": lock.cuda.nccl}
        out["cuda"] = {key: value for key, value in cuda.items() if value}
    out["targets"] = {target: _target_facts(lock.targets[target]) for target in sorted(lock.targets)}
    return out


def pylock_data(lock: Lock, name: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The pylock.toml document as plain data, and the warnings (see the module's docstring)."""
    version = ".".join(lock.python.version.split(".")[:2])
    packages: list[dict[str, Any]] = []
    left_out: list[str] = []
    unfiled: list[str] = []
    for pkg_name, pkg in sorted(lock.packages.items()):
        if pkg.source == "vcs" and pkg.url and pkg.commit:
            packages.append({"name": pkg_name, "vcs": _vcs(pkg.url, pkg.commit)})
            continue
        if pkg.source not in ("index", "unknown"):
            left_out.append(f"{pkg_name} ({pkg.source})")
            continue
        wheels = [_file_entry(a) for a in pkg.artifacts if a.name.endswith(".whl")]
        sdists = [_file_entry(a) for a in pkg.artifacts if not a.name.endswith(".whl")]
        if not wheels and not sdists:
            unfiled.append(pkg_name)
            continue
        entry: dict[str, Any] = {"name": pkg_name, "version": pkg.version}
        if sdists:
            entry["sdist"] = sdists[0]
        if wheels:
            entry["wheels"] = wheels
        packages.append(entry)
    if lock.packages and not packages:
        raise UsageError(f"{name}: nothing to export as pylock: no package has its files recorded "
                         "(capture with `envlock capture --hashes`, which records them from the index)")
    warnings = []
    if left_out:
        warnings.append(f"left out, not installable from an index: {', '.join(left_out)}")
    if unfiled:
        warnings.append(f"left out, no artifact files in the lock for {_first_few(unfiled)}: "
                        "`envlock capture --hashes` records them")
    doc = {
        "lock-version": "1.0",
        "environments": [markers(lock)],
        "requires-python": f"=={version}.*",
        "created-by": "envlock",
        "packages": packages,
        "tool": {"envlock": _tool_table(lock, name)},
    }
    return doc, tuple(warnings)


def check_pylock(doc: dict[str, Any], name: str) -> None:
    """Refuse a document packaging's PEP 751 model rejects (a hostile lock's file names), where packaging has it."""
    try:
        from packaging.pylock import Pylock, PylockValidationError
    except ImportError:  # packaging < 25.1: the exporter's own rules stand alone
        return
    try:
        Pylock.from_dict(doc)
    except PylockValidationError as exc:
        raise UsageError(f"{name}: cannot export as pylock: {exc}") from None


def export_pylock(lock: Lock, name: str) -> Export:
    """A PEP 751 pylock.toml of the lock's packages, with the lock's hardware under [tool.envlock]."""
    doc, warnings = pylock_data(lock, name)
    check_pylock(doc, name)
    header = (f"Exported by envlock {lock.lock.envlock} from {name} ({lock.lock.content_hash[:19]}).",
              "Install with: uv pip install -r pylock.toml (or any PEP 751 installer).")
    return Export(text=dumps_document(doc, comments=header, inline=frozenset({"hashes", "vcs"})), warnings=warnings)

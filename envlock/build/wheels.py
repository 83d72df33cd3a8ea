"""The wheels a build installs: found in a wheelhouse or downloaded by the host, then checked against the lock.

Two checks per wheel: its archive sha256 must be one of the lock's artifact hashes (when the lock has them), and
the files it installs must give the lock's `files` digest — so the wheel is the very build that was locked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from envlock.errors import BuildError, UsageError
from envlock.model import Lock, Package, PythonSection
from envlock.probes.packages import canonical_name, record_digest


@dataclass(frozen=True)
class Wheel:
    """A wheel chosen for one locked package, with its archive hash."""

    name: str
    version: str
    path: Path
    sha256: str


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks (wheels can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_files_digest(path: Path) -> str:
    """The `files` digest the wheel's contents give once installed (see probes.packages.record_digest)."""
    with zipfile.ZipFile(path) as archive:
        records = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise BuildError(f"{path.name}: not a wheel (no single .dist-info/RECORD)")
        dist_info = records[0].split("/")[0]
        text = archive.read(records[0]).decode("utf-8", "replace")
    data_dir = dist_info[: -len(".dist-info")] + ".data/"
    lines = []
    for line in text.splitlines():
        if line.startswith(data_dir):
            rest = line[len(data_dir):]
            scheme, _, inner = rest.partition("/")
            if scheme in ("purelib", "platlib"):
                line = inner  # installed at the top of site-packages
            else:
                continue  # scripts, headers, data: installed outside site-packages
        lines.append(line)
    return record_digest("\n".join(lines), dist_info)


def _platforms(tag: str) -> list[str]:
    """The platform tags a wheel may carry to install where `tag` is the most specific one."""
    import re

    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
    if not match:
        return [tag]
    major, minor, arch = int(match.group(1)), int(match.group(2)), match.group(3)
    out = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    out += [f"{name}_{arch}" for m, name in legacy.items() if minor >= m]
    return out


def compatible(filename: str, python: PythonSection) -> bool:
    """Whether a wheel file installs on the locked interpreter and platform."""
    from packaging import tags
    from packaging.utils import parse_wheel_filename

    major, minor = (int(p) for p in python.version.split(".")[:2])
    platforms = _platforms(python.platform_tag)
    supported = set(tags.cpython_tags((major, minor), [python.abi], platforms))
    supported |= set(tags.compatible_tags((major, minor), python.abi, platforms))
    return bool(set(parse_wheel_filename(filename)[3]) & supported)


def find_wheel(name: str, version: str, folders: list[Path], python: PythonSection) -> Path | None:
    """A wheel for name==version in the folders that installs on the locked Python, if any."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    from packaging.version import InvalidVersion, Version

    try:
        wanted = Version(version)
    except InvalidVersion:
        return None
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.suffix != ".whl" or entry.is_symlink() or not entry.is_file():
                continue
            try:
                wheel_name, wheel_version, _, _ = parse_wheel_filename(entry.name)
            except (InvalidWheelFilename, InvalidVersion):
                continue
            if canonical_name(wheel_name) == name and wheel_version == wanted and compatible(entry.name, python):
                return entry
    return None


def download(names: list[tuple[str, str]], dest: Path, python: PythonSection) -> None:
    """`pip download` the pinned wheels for the locked interpreter and platform into `dest` (the host's network)."""
    if not names:
        return
    dest.mkdir(parents=True, exist_ok=True)
    major_minor = ".".join(python.version.split(".")[:2])
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               "--dest", str(dest), "--python-version", major_minor, "--implementation", "cp", "--abi", python.abi]
    for platform in _platforms(python.platform_tag):
        command += ["--platform", platform]
    command += [f"{name}=={version}" for name, version in names]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["pip download failed"]
        raise BuildError(f"downloading the locked wheels failed: {last[0]}")


def gather(lock: Lock, wheelhouses: list[Path], cache: Path, *, allow_download: bool = True) -> list[Wheel]:
    """One checked wheel per locked package: from the wheelhouses, else downloaded (index packages only)."""
    missing_local = []
    to_download = []
    found: dict[str, Path] = {}
    for name, package in lock.packages.items():
        path = find_wheel(name, package.version, [*wheelhouses, cache], lock.python)
        if path is not None:
            found[name] = path
        elif package.source != "index":
            missing_local.append(f"{name} ({package.source})")
        else:
            to_download.append((name, package.version))
    if missing_local:
        raise UsageError(
            "these packages cannot come from a package index: " + ", ".join(missing_local)
            + "; put their wheels (name-version-*.whl) in a folder and pass it with --wheelhouse"
        )
    if to_download:
        if not allow_download:
            raise UsageError("no wheel in --wheelhouse for: " + ", ".join(f"{n}=={v}" for n, v in to_download))
        download(to_download, cache, lock.python)
        for name, version in to_download:
            path = find_wheel(name, version, [cache], lock.python)
            if path is None:
                raise BuildError(f"the index has no wheel of {name}=={version} for this Python and platform")
            found[name] = path
    return [check_wheel(name, lock.packages[name], found[name]) for name in sorted(found)]


def check_wheel(name: str, package: Package, path: Path) -> Wheel:
    """The wheel, once its archive hash and installed-files digest match the lock."""
    sha = file_sha256(path)
    if package.hashes and f"sha256:{sha}" not in package.hashes:
        raise BuildError(f"{path.name}: sha256 {sha[:16]}… is not one of the lock's hashes for {name}")
    if package.files and wheel_files_digest(path) != package.files:
        raise BuildError(
            f"{path.name}: its files differ from the installed {name}=={package.version} that was locked "
            "(another build of the same version?)"
        )
    return Wheel(name=name, version=package.version, path=path, sha256=sha)


def default_cache() -> Path:
    """Where downloaded wheels are kept between builds."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "envlock" / "wheels"


def copy_wheels(wheels: list[Wheel], dest: Path) -> None:
    """Copy the checked wheels into the build context."""
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        shutil.copyfile(wheel.path, dest / wheel.path.name)

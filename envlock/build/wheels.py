"""The wheels a build installs: found in a wheelhouse or downloaded by the host, then checked against the lock.

Two checks per wheel: its archive sha256 must be one of the lock's artifact hashes (when the lock has them), and
the files it installs must give the lock's `files` digest — so the wheel is the very build that was locked.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from envlock.build.render import SEEDS
from envlock.errors import BuildError, UsageError
from envlock.model import Lock, Package, PythonSection
from envlock.probes.packages import canonical_name, record_digest
from envlock.progress import bar


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


def _hostile(path: str) -> bool:
    """Whether an archive or RECORD path would land outside the install folder (or cannot be a file name)."""
    return (path.startswith("/") or "\\" in path or ".." in path.split("/") or (len(path) > 1 and path[1] == ":")
            or any(ord(c) < 32 for c in path))


_ALGORITHMS = {"sha256", "sha384", "sha512"}
_SIGNATURES = ("RECORD.jws", "RECORD.p7s")


def _check_record(archive: zipfile.ZipFile, path: Path, dist_info: str, text: str) -> None:
    """Every archive member is in RECORD with its hash, and every RECORD path is a member (pip checks neither)."""
    members = {info.filename: info for info in archive.infolist() if not info.filename.endswith("/")}
    listed: set[str] = set()
    for row in csv.reader(text.splitlines()):
        if not row:
            continue
        name, digest = row[0], row[1] if len(row) > 1 else ""
        if _hostile(name):
            raise UsageError(f"{path}: its RECORD names a path outside the install folder ({name!r})")
        listed.add(name)
        if name == f"{dist_info}/RECORD":
            continue
        algorithm, _, expected = digest.partition("=")
        if name not in members:
            raise UsageError(f"{path}: its RECORD lists {name!r}, which the archive does not hold")
        if algorithm not in _ALGORITHMS or not expected:
            raise UsageError(f"{path}: its RECORD gives {name!r} no sha256 (or stronger) hash")
        hasher = hashlib.new(algorithm)
        with archive.open(members[name]) as member:
            for chunk in iter(lambda: member.read(1 << 20), b""):
                hasher.update(chunk)
        if base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode() != expected.rstrip("="):
            raise UsageError(f"{path}: {name!r} does not have the hash its RECORD gives (a modified wheel)")
    unlisted = sorted(n for n in members if n not in listed and n not in {f"{dist_info}/{s}" for s in _SIGNATURES})
    if unlisted:
        raise UsageError(f"{path}: holds files its RECORD does not list ({unlisted[0]!r})")


def _files_digest(path: Path, name: str) -> str:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        hostile = [n for n in names if _hostile(n)]
        if hostile:
            raise UsageError(f"{path}: the archive holds a path outside the install folder ({hostile[0]!r})")
        if len(set(names)) != len(names):
            raise UsageError(f"{path}: the archive holds the same path twice")
        records = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise UsageError(f"{path}: not a wheel (no single .dist-info/RECORD)")
        dist_info = records[0].split("/")[0]
        if name and canonical_name(dist_info[: -len(".dist-info")].rpartition("-")[0]) != name:
            raise UsageError(f"{path}: its {dist_info} is not a distribution of {name}")
        text = archive.read(records[0]).decode("utf-8", "replace")
        _check_record(archive, path, dist_info, text)
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


def wheel_files_digest(path: Path, name: str = "") -> str:
    """The `files` digest the wheel's contents give once installed (see probes.packages.record_digest).

    The wheel is checked first: a readable zip, one .dist-info (of `name`, when given) with a RECORD that lists
    exactly the archive's files with their right hashes, and no path outside the install folder. Exit 2 otherwise.
    """
    try:
        return _files_digest(path, name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError,
            csv.Error) as exc:
        why = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
        raise UsageError(f"{path}: not a readable wheel ({why[0][:120]})") from None


def _platforms(tag: str) -> list[str]:
    """The platform tags a wheel may carry to install where `tag` is the most specific one: on glibc Linux the older
    manylinux tags, and last the plain `linux_<arch>` of a wheel built on such a machine (`pip wheel` of an sdist
    with a C extension, envlock's own among them), which pip installs there too."""
    import re

    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
    if not match:
        return [tag]
    major, minor, arch = int(match.group(1)), int(match.group(2)), match.group(3)
    out = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    out += [f"{name}_{arch}" for m, name in legacy.items() if minor >= m]
    return [*out, f"linux_{arch}"]


def compatible(filename: str, python: PythonSection) -> bool:
    """Whether a wheel file installs on the locked interpreter and platform."""
    from packaging import tags
    from packaging.utils import parse_wheel_filename

    major, minor = (int(p) for p in python.version.split(".")[:2])
    platforms = _platforms(python.platform_tag)
    supported = set(tags.cpython_tags((major, minor), [python.abi], platforms))
    supported |= set(tags.compatible_tags((major, minor), python.abi, platforms))
    return bool(set(parse_wheel_filename(filename)[3]) & supported)


def check_names(wheelhouses: list[Path]) -> None:
    """Refuse (exit 2) a `.whl` in a wheelhouse whose name does not parse, so it is not taken for a missing wheel."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    from packaging.version import InvalidVersion

    for folder in wheelhouses:
        for entry in sorted(folder.iterdir()):
            if entry.suffix != ".whl":
                continue
            try:
                parse_wheel_filename(entry.name)
            except (InvalidWheelFilename, InvalidVersion):
                raise UsageError(
                    f"--wheelhouse {entry}: not a wheel file name (name-version[-build]-python-abi-platform.whl)"
                ) from None


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


@dataclass(frozen=True)
class Gathered:
    """The checked wheels of a build, and the installer seeds it takes from the base's venv instead."""

    wheels: list[Wheel]
    seeded: dict[str, str]  # seed name -> why no wheel of it is used ("" when none was found)


def gather(lock: Lock, wheelhouses: list[Path], cache: Path, *, allow_download: bool = True,
           progress: bool = False) -> Gathered:
    """One checked wheel per locked package: from the wheelhouses, else downloaded (index packages only).

    Installer seeds (pip, setuptools, wheel) are the exception: when no wheel of the locked build is found (a
    Linux distribution's venv seeds its own patched pip), the image's venv takes them from the base's
    `python3 -m venv`, and the build checks there that they are the locked ones. `progress` draws the wheel
    checks on stderr (envlock.progress).
    """
    missing_local = []
    to_download = []
    seeds_to_download = []
    found: dict[str, Path] = {}
    folders = [*wheelhouses, cache]
    check_names(wheelhouses)
    for name, package in lock.packages.items():
        path = find_wheel(name, package.version, folders, lock.python)
        if path is not None:
            found[name] = path
        elif name in SEEDS:
            if package.source == "index":
                seeds_to_download.append((name, package.version))
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
    if seeds_to_download and allow_download:
        try:
            download(seeds_to_download, cache, lock.python)
        except BuildError:
            pass  # then the base's venv seeds them, checked against the lock in the image
        for name, version in seeds_to_download:
            path = find_wheel(name, version, [cache], lock.python)
            if path is not None:
                found[name] = path
    wheels = []
    seeded = {name: "" for name in lock.packages if name in SEEDS and name not in found}
    with bar("checking wheels", sum(p.stat().st_size for p in found.values()), enabled=progress,
             unit="B") as advance:
        for name in sorted(found):
            if name in SEEDS:
                why, _ = mismatch(name, lock.packages[name], found[name])
                if why:
                    seeded[name] = why
                    advance(found[name].stat().st_size)
                    continue
            wheels.append(check_wheel(name, lock.packages[name], found[name]))
            advance(found[name].stat().st_size)
    return Gathered(wheels=wheels, seeded=dict(sorted(seeded.items())))


def mismatch(name: str, package: Package, path: Path) -> tuple[str, str]:
    """(why the wheel is not the locked build, its hash or its files, or "" when it is; its sha256)."""
    sha = file_sha256(path)
    if package.hashes and f"sha256:{sha}" not in package.hashes:
        return f"{path.name}: sha256 {sha[:16]}… is not one of the lock's hashes for {name}", sha
    digest = wheel_files_digest(path, name)  # checks the archive too, when the lock has no digest to compare
    if package.files and digest != package.files:
        return (f"{path.name}: its files differ from the installed {name}=={package.version} that was locked "
                "(another build of the same version?)"), sha
    return "", sha


def check_wheel(name: str, package: Package, path: Path) -> Wheel:
    """The wheel, once its archive hash and installed-files digest match the lock."""
    why, sha = mismatch(name, package, path)
    if why:
        raise BuildError(why)
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

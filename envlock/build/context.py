"""The build context: written as files (for `--context DIR`) and packed into a byte-deterministic tar."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from envlock.errors import UsageError


def write_context(folder: Path, files: dict[str, bytes], wheels: dict[str, Path]) -> None:
    """Write the context into `folder`, all or nothing: into a temporary sibling, renamed into place when complete.

    `folder` must be absent or an empty folder (it is replaced). On any failure (read-only place, full disk)
    nothing is left behind and an existing `folder` is untouched; the failure is a UsageError naming `folder`.
    """
    check_context_folder(folder)
    temp = ""
    try:
        temp = _sibling(folder)
        for relative, data in files.items():
            target = Path(temp, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        for relative, source in wheels.items():
            target = Path(temp, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(temp, folder)  # onto an empty folder too (rename(2)); a folder filled meanwhile refuses
        temp = ""
    except OSError as exc:
        raise UsageError(f"--context {folder}: cannot write the build context ({exc.strerror or exc}); "
                         "nothing was written") from None
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def _sibling(folder: Path) -> str:
    """A new empty folder next to `folder` (made with the umask's permissions, unlike mkdtemp's 0700)."""
    parent = folder.absolute().parent
    for _ in range(100):
        temp = str(parent / f".{folder.name}.{secrets.token_hex(4)}.partial")
        try:
            os.mkdir(temp)
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(f"no free temporary name next to {folder}")


def check_context_folder(folder: Path) -> None:
    """Refuse a `--context DIR` that cannot be written whole: DIR must be absent or an empty folder (nothing of
    the user's is replaced, a previous context included) and its parent an existing folder (nothing is created
    around it)."""
    parent = folder.absolute().parent
    try:
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise UsageError(f"--context {folder}: exists and is not a folder; give a new or empty folder")
        if folder.is_dir() and any(folder.iterdir()):
            raise UsageError(f"--context {folder}: the folder exists and is not empty; give a new or empty one")
        if not parent.is_dir():
            raise UsageError(f"--context {folder}: {parent} is not an existing folder")
    except OSError as exc:
        raise UsageError(f"--context {folder}: cannot be used ({exc.strerror or exc})") from None


def _info(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


def pack_context(files: dict[str, bytes], wheels: dict[str, Path]) -> tuple[IO[bytes], str]:
    """A temporary file holding the context tar (sorted entries, fixed times, owners and modes) and its sha256."""
    handle = tempfile.TemporaryFile()
    entries: dict[str, bytes | Path] = {**files, **wheels}
    folders = sorted({str(Path(name).parent) for name in entries} - {"."})
    with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in folders:
            tar.addfile(_info(folder, 0, directory=True))
        for name in sorted(entries):
            content = entries[name]
            if isinstance(content, bytes):
                tar.addfile(_info(name, len(content)), io.BytesIO(content))
            else:
                with open(content, "rb") as source:
                    tar.addfile(_info(name, os.fstat(source.fileno()).st_size), source)
    handle.seek(0)
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    handle.seek(0)
    return handle, digest.hexdigest()

"""The build context: written as files (for `--context DIR`) and packed into a byte-deterministic tar."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import IO


def write_context(folder: Path, files: dict[str, bytes], wheels: dict[str, Path]) -> None:
    """Write the context into `folder` (created; must be empty or absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    for relative, data in files.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for relative, source in wheels.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)


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


def context_folder_is_usable(folder: Path) -> bool:
    """Whether `--context DIR` may be written: absent, or an empty folder (nothing of the user's is replaced)."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))




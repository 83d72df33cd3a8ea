"""Installed distributions: name, version, where each came from, and a digest of its installed files.

The digest is taken over the file hashes in the distribution's RECORD, leaving out what an install makes
differently in every prefix (console scripts and other files outside site-packages, `.pyc` caches, the
installer's own notes), so the same wheel installed into two environments gives the same digest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from envlock._raw import get
from envlock.model import Artifact, ModelError, Package, from_dict

# Written by the installer, not shipped in the wheel: they differ between two installs of one wheel.
INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "RECORD", "direct_url.json", "uv_cache.json"})
_CANONICAL = re.compile(r"[-_.]+")


def canonical_name(name: str) -> str:
    """The PEP 503 normalized form of a distribution name."""
    return _CANONICAL.sub("-", name).lower()


def _headers(text_head: str) -> dict[str, str]:
    """Name and Version from the start of a METADATA / PKG-INFO file."""
    found: dict[str, str] = {}
    for line in text_head.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep and key in ("Name", "Version") and key not in found:
            found[key] = value.strip()
    return found


def _read_head(path: str, limit: int = 65536) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read(limit)


def _record_rows(record_text: str) -> Iterable[tuple[str, str]]:
    """(path, hash) per RECORD row; the csv module only for the rare quoted row (a comma in a file name)."""
    for line in record_text.splitlines():
        if '"' in line:
            for row in csv.reader([line]):
                if len(row) >= 2:
                    yield row[0], row[1]
            continue
        head, sep, _size = line.rpartition(",")
        if not sep:
            continue
        path, sep, digest = head.rpartition(",")
        if sep:
            yield path, digest


def _kept(path: str, dist_info: str) -> bool:
    if path[:3] == "../" or path[:1] == "/" or (len(path) > 1 and path[1] == ":"):
        return False
    if path.endswith((".pyc", ".pyo")) or ("__pycache__/" in path and "/__pycache__/" in f"/{path}"):
        return False
    if path.startswith("__editable__"):
        return False
    top, _, leaf = path.partition("/")
    return not (top == dist_info and leaf in INSTALLER_FILES)


# A plain RECORD row with a hash: `path,algo=digest,size` (quoting only comes with commas in file names).
_HASHED_ROW = re.compile(r"^([^,\n\r]+),([^,\n\r]+),[^,\n\r]*\r?$", re.M)


def record_digest(record_text: str, dist_info: str) -> str:
    """sha256 over the sorted `path hash` lines of a RECORD, prefix-dependent entries left out."""
    # The regular expression splits the rows in C (a torch RECORD has ~12,000); csv only for quoted rows.
    rows = _record_rows(record_text) if '"' in record_text else _HASHED_ROW.findall(record_text)
    lines = []
    for raw_path, digest in rows:
        if not digest:
            continue
        path = raw_path.replace("\\", "/") if "\\" in raw_path else raw_path
        if _kept(path, dist_info):
            lines.append(f"{path} {digest}\n")
    lines.sort()
    return "sha256:" + hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


# A plain RECORD row with a size: `path,hash,size`.
_SIZED_ROW = re.compile(r"^([^,\n\r]+),[^,\n\r]*,(\d{1,15})\r?$", re.M)


def record_sizes(record_text: str, dist_info: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The files a RECORD lists with a size, as (paths, sizes), prefix-dependent entries (console scripts, byte
    code, the installer's own notes) left out: what `verify` compares with the sizes on disk."""
    if '"' in record_text:
        rows = [(r[0], r[2]) for r in csv.reader(record_text.splitlines())
                if len(r) >= 3 and r[2].isascii() and r[2].isdigit() and len(r[2]) <= 15]
    else:
        rows = _SIZED_ROW.findall(record_text)
    paths: list[str] = []
    sizes: list[int] = []
    for raw_path, size in rows:
        path = raw_path.replace("\\", "/") if "\\" in raw_path else raw_path
        if _kept(path, dist_info):
            paths.append(path)
            sizes.append(int(size))
    return tuple(paths), tuple(sizes)


def _read_cache(path: str, limit: int, decode: Callable[[bytes], Any]) -> dict[str, Any]:
    """The entries of a cache file (`{"version": 1, "entries": {...}}`), or {} for one that is missing, too big or
    unreadable in any way: a cache only ever saves time."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
        data = decode(raw) if len(raw) <= limit else {}
    except (OSError, ValueError, EOFError, TypeError):
        data = {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("version") == 1 else None
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: str, data: bytes) -> None:
    """Replace a cache file (write a temporary next to it, then rename); a cache that cannot be written is not."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def _stat_key(st: os.stat_result) -> list[int]:
    """What moves when a file is rewritten in any way: a cached value for it holds while this holds."""
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino]


def changed_sizes(location: str, paths: tuple[str, ...], sizes: tuple[int, ...]) -> list[tuple[str, str]]:
    """(file, what) for every listed file whose size on disk is not RECORD's: one stat per file."""
    out: list[tuple[str, str]] = []
    stat = os.stat
    base = os.path.join(location, "")
    for path, size in zip(paths, sizes, strict=True):
        try:
            have = stat(base + path).st_size
        except FileNotFoundError:
            out.append((path, "missing"))
            continue
        except OSError:
            out.append((path, "unreadable"))
            continue
        if have != size:
            out.append((path, f"{size} bytes in RECORD, {have} on disk"))
    return out


#: Below this many files the size check stays on one core: starting a second process costs more than it saves.
PARALLEL_FILES = 8000


def changed_sizes_all(jobs: list[tuple[str, tuple[str, ...], tuple[int, ...]]], *,
                      parallel_from: int = PARALLEL_FILES) -> list[list[tuple[str, str]]]:
    """changed_sizes for each (location, paths, sizes) job, in order.

    The stats are syscall-bound (about 1.6 µs per file on a cold dentry), so with enough files, on Linux, with a
    second usable core and no other thread running, a forked child stats the second half of the files while this
    process stats the first: the check takes about half as long. A child that fails in any way has its half
    done here, so the answer is always the one-core answer."""
    total = sum(len(paths) for _, paths, _ in jobs)
    split = len(jobs)
    if total >= parallel_from and len(jobs) > 1 and _may_fork():
        done = 0
        for index, (_, paths, _) in enumerate(jobs):
            if done * 2 >= total:  # half the files are in the jobs before this one
                split = index
                break
            done += len(paths)
    child = _start_child(jobs[split:]) if split < len(jobs) else None
    mine = [changed_sizes(*job) for job in jobs[:split]]
    theirs = _join_child(child, len(jobs) - split) if child is not None else None
    if theirs is None:
        theirs = [changed_sizes(*job) for job in jobs[split:]]
    return mine + theirs


def changed_files(items: Iterable[tuple[str, str, str]]) -> dict[str, tuple[tuple[str, str], ...]]:
    """The size check of the (name, location, dist-info folder) of each package: name -> (file, what) for the files
    whose size on disk is not what their RECORD says, only for packages that have one (RECORDs parsed once and
    remembered, see SizeTables; stats shared with a child, see changed_sizes_all). A RECORD that cannot be read is
    left out: its digest was just taken from it, so one gone since is the next run's finding."""
    items = list(items)
    tables = SizeTables(sorted({location for _, location, _ in items}))
    records: set[str] = set()
    names: list[str] = []
    jobs: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = []
    for name, location, dist_info in items:
        record = os.path.join(location, dist_info, "RECORD")
        records.add(record)
        try:
            paths, sizes = tables.table(record, dist_info)
        except OSError:
            continue
        names.append(name)
        jobs.append((location, paths, sizes))
    tables.save(records)
    return {name: tuple(changed) for name, changed in zip(names, changed_sizes_all(jobs), strict=True) if changed}


def _may_fork() -> bool:
    """Whether a child can safely share the work: Linux (fork is cheap and well-behaved there), more than one
    core this process may use, and no other thread (a fork with threads can leave locks held in the child)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return False
    try:
        return len(os.sched_getaffinity(0)) > 1
    except OSError:
        return False


def _child_sizes(jobs: list[tuple[str, tuple[str, ...], tuple[int, ...]]]) -> list[list[tuple[str, str]]]:
    """The child's share of changed_sizes_all (a seam for the tests)."""
    return [changed_sizes(*job) for job in jobs]


def _start_child(jobs: list[tuple[str, tuple[str, ...], tuple[int, ...]]]) -> tuple[int, int] | None:
    """Fork a child that writes the marshalled answer for `jobs` to a pipe: (pid, read end), or None."""
    import marshal

    try:
        read, write = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        return None
    if pid == 0:  # the child: no cleanup, no flushing of the parent's buffers, only the answer
        status = 1
        try:
            os.close(read)
            data = memoryview(marshal.dumps(_child_sizes(jobs)))
            while data:
                data = data[os.write(write, data):]
            status = 0
        except BaseException:  # whatever went wrong, the parent does the work itself
            pass
        os._exit(status)
    os.close(write)
    return pid, read


def _join_child(child: tuple[int, int], count: int) -> list[list[tuple[str, str]]] | None:
    """The child's answer, or None when it failed, was killed or said something that is not one."""
    import marshal

    pid, read = child
    chunks: list[bytes] = []
    try:
        while chunk := os.read(read, 1 << 20):
            chunks.append(chunk)
    except OSError:
        chunks = []
    finally:
        os.close(read)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    if status != 0 or not chunks:
        return None
    try:
        answer = marshal.loads(b"".join(chunks))
    except (ValueError, EOFError, TypeError):
        return None
    if not isinstance(answer, list) or len(answer) != count or not all(isinstance(a, list) for a in answer):
        return None
    return answer


class SizeTables:
    """The (paths, sizes) of each RECORD, remembered between runs like DigestCache's digests (same key, same
    folder), so a job start reads one file instead of parsing every RECORD. Stored with marshal: the tables of a
    large venv (30,000 files) load in a few milliseconds where JSON takes several times that."""

    LIMIT = 64 * 1024 * 1024

    def __init__(self, folders: Iterable[str]) -> None:
        name = hashlib.sha256("\0".join(folders).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        self.path = DigestCache._location(f"record-sizes-{name}.{sys.implementation.cache_tag}.marshal")
        self.entries: dict[str, Any] = {}
        self.changed = False
        if self.path is not None:
            import marshal

            self.entries = _read_cache(self.path, self.LIMIT, marshal.loads)

    def table(self, record: str, dist_info: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The (paths, sizes) of the RECORD at `record` (OSError when it cannot be read)."""
        key = _stat_key(os.stat(record))
        known = self.entries.get(record)
        if (isinstance(known, tuple) and len(known) == 3 and known[0] == key and isinstance(known[1], tuple)
                and isinstance(known[2], tuple) and len(known[1]) == len(known[2])):
            return known[1], known[2]
        with open(record, encoding="utf-8", errors="replace") as handle:
            paths, sizes = record_sizes(handle.read(), dist_info)
        self.entries[record] = (key, paths, sizes)
        self.changed = True
        return paths, sizes

    def save(self, seen: set[str]) -> None:
        """Write the tables back when they changed, keeping only the RECORDs seen in this run."""
        if self.path is None or not self.changed:
            return
        import marshal

        entries = {k: v for k, v in self.entries.items() if k in seen}
        try:
            data = marshal.dumps({"version": 1, "entries": entries})
        except ValueError:
            return
        _write_cache(self.path, data)


def search_path(path: Iterable[str] | None = None) -> list[str]:
    """The folders to look for distributions in: sys.path, less the working folder Python adds for scripts and
    the folders inside a site-packages on the path (a package's vendored copies)."""
    entries = list(sys.path if path is None else path)
    cwd = os.getcwd()
    # Python makes PYTHONPATH entries absolute in sys.path (site.removeduppaths), so compare absolute paths.
    explicit = {os.path.abspath(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry}
    # A folder inside a site-packages that is itself on the path is a package's own (ray/thirdparty_files, which
    # `import ray` puts on sys.path): the distributions there are that package's private copies, not installs.
    sites = [os.path.join(os.path.abspath(e), "") for e in entries
             if e and os.path.basename(os.path.normpath(e)) in ("site-packages", "dist-packages")]
    out = []
    for entry in entries:
        if entry == "" or (os.path.abspath(entry) == cwd and cwd not in explicit):
            continue
        if any(os.path.abspath(entry).startswith(site) for site in sites):
            continue
        if entry not in out and os.path.isdir(entry):
            out.append(entry)
    return out


def iter_dist_dirs(folders: Iterable[str]) -> Iterable[tuple[str, str]]:
    """(folder, entry) for every .dist-info / .egg-info entry, in search order."""
    for folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                yield folder, name


class DigestCache:
    """RECORD digests remembered between runs: a digest depends on RECORD's bytes only, so it is kept under RECORD's
    path and (mtime_ns, ctime_ns, size, inode) — any rewrite of the file changes ctime — and taken again only when
    one of them moved. The cache is a JSON file in the user's cache folder (`$ENVLOCK_CACHE_DIR`, else
    `$XDG_CACHE_HOME/envlock`, else `~/.cache/envlock`); `ENVLOCK_CACHE_DIR=""` turns it off. A cache that cannot be
    read is ignored, one that cannot be written is not written: it only ever saves time."""

    LIMIT = 4 * 1024 * 1024

    def __init__(self, folders: Iterable[str]) -> None:
        # One file per set of folders looked in (one per venv, in practice), so venvs do not evict each other.
        name = hashlib.sha256("\0".join(folders).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        self.path = self._location(f"record-digests-{name}.json")
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        if self.path is not None:
            self.entries = _read_cache(self.path, self.LIMIT, json.loads)

    @staticmethod
    def _location(name: str) -> str | None:
        folder = os.environ.get("ENVLOCK_CACHE_DIR")
        if folder is None:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            folder = os.path.join(base, "envlock")
        return os.path.join(folder, name) if folder else None

    def digest(self, record: str, dist_info: str) -> str:
        """The digest of the RECORD at `record` (OSError when it cannot be read)."""
        key = _stat_key(os.stat(record))
        known = self.entries.get(record)
        if isinstance(known, list) and len(known) == 5 and known[:4] == key and isinstance(known[4], str):
            return known[4]
        with open(record, encoding="utf-8", errors="replace") as handle:
            value = record_digest(handle.read(), dist_info)
        self.entries[record] = [*key, value]
        self.changed = True
        return value

    def save(self, seen: set[str]) -> None:
        """Write the cache back when it changed, keeping only the RECORDs seen in this run's folders."""
        if self.path is None or not self.changed:
            return
        entries = {k: v for k, v in self.entries.items() if k in seen}
        _write_cache(self.path, json.dumps({"version": 1, "entries": entries}, separators=(",", ":")).encode())


def collect_packages(path: Iterable[str] | None = None, *, digests: bool = True) -> list[dict[str, Any]]:
    """Raw facts for every distribution visible on `path` (sys.path by default).

    The first of a name wins, as for importlib.metadata, with one exception: a bare `.egg-info` (what
    `pip install -e .` with setuptools leaves in a project's folder) gives way to a later `.dist-info` of the same
    name, which is what the installer actually recorded.
    """
    seen: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    folders = search_path(path)
    cache = DigestCache(folders) if digests else None
    records: set[str] = set()
    for folder, entry in iter_dist_dirs(folders):
        full = os.path.join(folder, entry)
        is_dir = os.path.isdir(full)
        meta_file = os.path.join(full, "METADATA" if entry.endswith(".dist-info") else "PKG-INFO") if is_dir else full
        try:
            headers = _headers(_read_head(meta_file))
        except OSError:
            continue
        name, version = headers.get("Name"), headers.get("Version")
        if not name or not version:
            continue
        key = canonical_name(name)
        if key in seen:
            earlier = out[seen[key]]
            if not (earlier["metadata_dir"].endswith(".egg-info") and entry.endswith(".dist-info")):
                continue
        fact: dict[str, Any] = {"name": name, "version": version, "location": folder, "metadata_dir": entry}
        if is_dir:
            try:
                with open(os.path.join(full, "direct_url.json"), encoding="utf-8") as handle:
                    fact["direct_url"] = json.load(handle)
            except (OSError, ValueError):
                pass
            if cache is not None and entry.endswith(".dist-info"):
                record = os.path.join(full, "RECORD")
                records.add(record)
                try:
                    fact["files"] = cache.digest(record, entry)
                except OSError:
                    pass
        if key in seen:
            out[seen[key]] = fact
        else:
            seen[key] = len(out)
            out.append(fact)
    if cache is not None:
        cache.save(records)
    return out


def _strip_credentials(url: str, where: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ModelError(f"{where}.url", f"not a URL: {exc}") from None
    userinfo, at, host = parts.netloc.rpartition("@")
    # PEP 610: a non-secret user such as `git` in `git+ssh://git@host/repo` is kept; a password never is.
    if at and userinfo != "git":
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def parse_source(direct_url: Any, where: str) -> dict[str, str]:
    """Where a distribution came from, per its `direct_url.json` (PEP 610); none means a package index."""
    if direct_url is None:
        return {"source": "index"}
    if not isinstance(direct_url, dict):
        raise ModelError(where, "expected an object")
    url = _strip_credentials(get(direct_url, "url", str, where, ""), where)
    if "vcs_info" in direct_url:
        vcs = get(direct_url, "vcs_info", dict, where)
        out = {"source": "vcs", "url": url}
        commit = get(vcs, "commit_id", str, f"{where}.vcs_info", "")
        if commit:
            out["commit"] = commit.lower()
        return out
    if "dir_info" in direct_url:
        info = get(direct_url, "dir_info", dict, where)
        editable = get(info, "editable", bool, f"{where}.dir_info", False)
        return {"source": "editable" if editable else "local", "url": url}
    if url.startswith("file:"):
        return {"source": "local", "url": url}
    return {"source": "url", "url": url}


def parse_packages(raw: Any) -> dict[str, Package]:
    """The `[packages]` section from raw facts, keyed by canonical name."""
    if not isinstance(raw, list):
        raise ModelError("packages", "expected a list")
    out: dict[str, Package] = {}
    for i, item in enumerate(raw):
        where = f"packages[{i}]"
        name = get(item, "name", str, where)
        source = parse_source(item.get("direct_url"), f"{where}.direct_url")
        key = canonical_name(name)
        if key in out:
            continue
        out[key] = Package(
            version=get(item, "version", str, where),
            source=source["source"],  # type: ignore[arg-type]
            url=source.get("url", ""),
            commit=source.get("commit", ""),
            files=get(item, "files", str, where, ""),
            hashes=tuple(get(item, "hashes", list, where, ())),
            artifacts=tuple(from_dict(Artifact, a, f"{where}.artifacts[{j}]")
                            for j, a in enumerate(get(item, "artifacts", list, where, ()))),
        )
    return {key: out[key] for key in sorted(out)}

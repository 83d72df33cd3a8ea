"""The file-size check of `verify`, and the caches that make a job start cheap: the standard library only (and
envlock's own optional C extension).

Every installed file of a locked package is compared by size with what its RECORD says: one `stat` per file, the
RECORDs parsed once and remembered (SizeTables), the stats done on threads by envlock._sizecheck where it is built,
else shared with a forked child (SizeCheck). Nothing here imports the lock model, so `verify --fast`'s verdict memo
(envlock.verdicts) can start the check before it loads anything else.

The caches live in the user's cache folder (`$ENVLOCK_CACHE_DIR`, else `$XDG_CACHE_HOME/envlock`, else
`~/.cache/envlock`); `ENVLOCK_CACHE_DIR=""` turns them all off. A cache that cannot be read is ignored, one that
cannot be written is not written: a cache only ever saves time.
"""

from __future__ import annotations

import os
import stat
import sys
import zlib

TYPE_CHECKING = False  # typing itself is not imported here: this module loads before anything else on a job start
if TYPE_CHECKING:
    import re
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

#: Written by the installer, not shipped in the wheel: they differ between two installs of one wheel.
INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "RECORD", "direct_url.json", "uv_cache.json"})

#: (location, the paths under it joined by newlines, their sizes in RECORD): the paths are split where they are
#: stat'ed (a RECORD's rows are lines, so no path holds a newline), so a job start loads one string per RECORD
#: before its child starts, not one per file.
Job = tuple[str, str, tuple[int, ...]]
Changed = list[tuple[str, str]]  # (file, what): "missing", "unreadable", "N bytes in RECORD, M on disk"


# --- the caches --------------------------------------------------------------------------------------------------


def cache_file(name: str) -> str | None:
    """Where the cache file `name` lives, or None when the caches are off (`ENVLOCK_CACHE_DIR=""`)."""
    folder = os.environ.get("ENVLOCK_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "envlock")
    return os.path.join(folder, name) if folder else None


def frame(data: bytes) -> bytes:
    """A cache file's bytes: `data` after its CRC-32 (4 bytes, little-endian). The decoders (marshal) trust the
    lengths they read, so a damaged file could make one allocate without bound: only data that checks is decoded."""
    return zlib.crc32(data).to_bytes(4, "little") + data


def unframe(raw: bytes) -> bytes | None:
    """The data of a cache file's bytes (see frame), or None when they do not check."""
    data = raw[4:]
    return data if len(raw) >= 4 and zlib.crc32(data) == int.from_bytes(raw[:4], "little") else None


def read_cache(path: str, limit: int, decode: Callable[[bytes], Any]) -> dict[str, Any]:
    """The entries of a cache file (`{"version": 1, "entries": {...}}`, framed by write_cache), or {} for one that
    is missing, too big, damaged or unreadable in any way."""
    try:
        # Opened without blocking and read only when it is a regular file: a FIFO put there cannot hang a job start.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb") as handle:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not _private(st):
                return {}
            raw = handle.read(limit + 5)
        checked = unframe(raw) if len(raw) <= limit + 4 else None
        data = decode(checked) if checked is not None else {}
    except (OSError, ValueError, EOFError, TypeError, MemoryError, RecursionError):
        data = {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("version") == 1 else None
    return entries if isinstance(entries, dict) else {}


def _private(st: os.stat_result) -> bool:
    """Whether a cache file is the user's own: owned by this user and writable by no one else (where the platform
    has owners). A cache decides what verify looks at again, so one that others could have written is not read."""
    if not hasattr(os, "geteuid"):
        return True
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def write_cache(path: str, data: bytes) -> None:
    """Replace a cache file with `data`, framed (write a temporary of the user's own next to it, then rename); a
    cache that cannot be written is not. The temporary's name is random and made exclusively: two writers (two
    ranks, two containers with the same process ids on one shared folder) never write into one file."""
    temporary = f"{path}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(handle, "wb") as out:
            out.write(frame(data))
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def short_digest(text: str) -> str:
    """16 hex digits that tell one text from another, for a cache file's name (what the file holds is checked
    when it is read; zlib's checksums load in a fraction of hashlib's time)."""
    data = text.encode("utf-8", "surrogateescape")
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def stat_key(st: os.stat_result) -> list[int]:
    """What moves when a file is rewritten in any way: a cached value for it holds while this holds."""
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino]


# --- RECORD ------------------------------------------------------------------------------------------------------


def kept(path: str, dist_info: str) -> bool:
    """Whether a RECORD row is the wheel's own file rather than something an install makes differently in every
    prefix (console scripts and other files outside site-packages, byte code, the installer's own notes)."""
    if path[:3] == "../" or path[:1] == "/" or (len(path) > 1 and path[1] == ":"):
        return False
    if path.endswith((".pyc", ".pyo")) or ("__pycache__/" in path and "/__pycache__/" in f"/{path}"):
        return False
    if path.startswith("__editable__"):
        return False
    top, _, leaf = path.partition("/")
    return not (top == dist_info and leaf in INSTALLER_FILES)


_SIZED_ROW: re.Pattern[str] | None = None


def _sized_row() -> re.Pattern[str]:
    """A plain RECORD row with a size: `path,hash,size` (compiled on first use: a job start that finds every
    RECORD in SizeTables never parses one)."""
    global _SIZED_ROW
    if _SIZED_ROW is None:
        import re

        _SIZED_ROW = re.compile(r"^([^,\n\r]+),[^,\n\r]*,(\d{1,15})\r?$", re.M)
    return _SIZED_ROW


def record_sizes(record_text: str, dist_info: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The files a RECORD lists with a size, as (paths, sizes), prefix-dependent entries (see kept) left out: what
    `verify` compares with the sizes on disk."""
    if '"' in record_text:
        import csv

        rows = [(r[0], r[2]) for r in csv.reader(record_text.splitlines())
                if len(r) >= 3 and r[2].isascii() and r[2].isdigit() and len(r[2]) <= 15]
    else:
        rows = _sized_row().findall(record_text)
    paths: list[str] = []
    sizes: list[int] = []
    for raw_path, size in rows:
        path = raw_path.replace("\\", "/") if "\\" in raw_path else raw_path
        if path and kept(path, dist_info):  # an empty path (a quoted row of a hand-made RECORD) names no file
            paths.append(path)
            sizes.append(int(size))
    return tuple(paths), tuple(sizes)


class SizeTables:
    """The (paths joined by newlines, sizes) of each RECORD, remembered between runs under the RECORD's path and
    stat (like the RECORD digests, see envlock.probes.packages.DigestCache), so a job start reads one file instead
    of parsing every RECORD. Stored with marshal, one string of paths per RECORD (not one per file): the tables of a
    large venv (36,000 files) load in under a millisecond."""

    LIMIT = 64 * 1024 * 1024

    def __init__(self, folders: Iterable[str]) -> None:
        name = short_digest("\0".join(folders))
        self.path = cache_file(f"record-sizes-{name}.{sys.implementation.cache_tag}.v2.marshal")
        self.entries: dict[str, Any] = {}
        self.changed = False
        if self.path is not None:
            import marshal

            self.entries = read_cache(self.path, self.LIMIT, marshal.loads)

    def table(self, record: str, dist_info: str) -> tuple[str, tuple[int, ...]]:
        """The (paths joined by newlines, sizes) of the RECORD at `record` (OSError when it cannot be read)."""
        key = stat_key(os.stat(record))
        known = self.entries.get(record)
        if (isinstance(known, tuple) and len(known) == 3 and known[0] == key and isinstance(known[1], str)
                and isinstance(known[2], tuple) and _count(known[1]) == len(known[2])):
            return known[1], known[2]
        with open(record, encoding="utf-8", errors="replace") as handle:
            paths, sizes = record_sizes(handle.read(), dist_info)
        joined = "\n".join(paths)
        self.entries[record] = (key, joined, sizes)
        self.changed = True
        return joined, sizes

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
        write_cache(self.path, data)


def _count(joined: str) -> int:
    """How many paths a newline-joined string holds."""
    return joined.count("\n") + 1 if joined else 0


# --- the check ---------------------------------------------------------------------------------------------------


def changed_sizes(location: str, paths: Sequence[str], sizes: Sequence[int]) -> Changed:
    """(file, what) for every listed file whose size on disk is not RECORD's: one stat per file, relative to the
    location's folder where the platform can (the kernel then walks only the path inside it: ~10 % less time).
    RECORD's paths are relative: record_sizes leaves out absolute and `../` ones (see kept)."""
    out: Changed = []
    stat = os.stat
    folder = _open_folder(location)
    base = os.path.join(location, "") if folder is None else ""
    try:
        for path, size in zip(paths, sizes, strict=True):
            try:
                have = (stat(base + path) if folder is None else stat(path, dir_fd=folder)).st_size
            except FileNotFoundError:
                out.append((path, "missing"))
                continue
            except (OSError, ValueError):  # ValueError: a NUL or a lone surrogate in a hand-made RECORD path
                out.append((path, "unreadable"))
                continue
            if have != size:
                out.append((path, f"{size} bytes in RECORD, {have} on disk"))
    finally:
        if folder is not None:
            os.close(folder)
    return out


def _open_folder(location: str) -> int | None:
    """A descriptor of `location` to stat relative to, or None (no dir_fd on this platform, or it cannot be opened:
    then every path is stat'ed whole, and says for itself what is wrong)."""
    if os.stat not in os.supports_dir_fd or not hasattr(os, "O_DIRECTORY"):
        return None
    try:
        return os.open(location, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return None


#: Below this many files the size check stays on one core: starting a second process costs more than it saves.
PARALLEL_FILES = 8000
#: The files of one unit of work the two processes share out.
UNIT_FILES = 512


def size_jobs(items: Iterable[tuple[str, str, str]]) -> tuple[list[str], list[Job]]:
    """The names and jobs of the size check of each (name, location, dist-info folder), from the RECORDs (parsed
    once and remembered, see SizeTables). A RECORD that cannot be read is left out: its digest was just taken from
    it, so one gone since is the next run's finding."""
    items = list(items)
    tables = SizeTables(sorted({location for _, location, _ in items}))
    records: set[str] = set()
    names: list[str] = []
    jobs: list[Job] = []
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
    return names, jobs


def by_name(names: list[str], changed: list[Changed]) -> dict[str, tuple[tuple[str, str], ...]]:
    """name -> the changed files, for the jobs that have any."""
    return {name: tuple(found) for name, found in zip(names, changed, strict=True) if found}


def changed_sizes_all(jobs: list[Job], *, parallel_from: int = PARALLEL_FILES) -> list[Changed]:
    """changed_sizes for each job, in order (see SizeCheck)."""
    return SizeCheck(jobs, parallel_from=parallel_from).result()


class SizeCheck:
    """changed_sizes for each job, begun when made: by the C check on threads where it is built (see _native), else,
    with enough files, on Linux, with a second usable core and no other thread running, a forked child starts on
    them at once.

    The stats are syscall-bound (a few µs per file), so two processes take about half as long, and a child started
    early works while this process does other things (the verdict memo reads the machine meanwhile). The files are
    cut into units of UNIT_FILES; the child takes units from the front, this process (in result()) from the back,
    each marking a unit in a shared page before it takes it, and each stops at the first unit the other marked: so
    every unit is done, at worst one twice (the same answer). A child that fails in any way has its units done
    here, so the answer is always the one-core answer."""

    def __init__(self, jobs: list[Job], *, parallel_from: int = PARALLEL_FILES) -> None:
        self.jobs = jobs
        self.units: list[tuple[int, int, int]] = []  # (job, first file, end)
        for index, (_, _, sizes) in enumerate(jobs):
            self.units.extend((index, start, min(start + UNIT_FILES, len(sizes)))
                              for start in range(0, len(sizes), UNIT_FILES))
        self._paths: dict[int, list[str]] = {}  # each job's paths, split on first use (in the process that stats)
        self._claims: Any = None
        self._child: tuple[int, int] | None = None
        self._native: Any = None
        files = sum(len(sizes) for _, _, sizes in jobs)
        native = _native()
        if native is not None and files:
            try:
                self._native = native.start(jobs, _threads(files))
            except Exception:  # whatever it refused (nothing a user makes: the jobs are envlock's), Python does it
                self._native = None
            else:
                return
        if files >= parallel_from and len(self.units) > 1 and _may_fork():
            self._start()

    def _start(self) -> None:
        import mmap

        try:
            claims = mmap.mmap(-1, len(self.units))  # anonymous and shared: the child's marks are seen here
        except (OSError, ValueError):
            return
        parent = os.getpid()
        child = _start_child(lambda: _child_work(self, claims, parent))
        if child is None:
            claims.close()
            return
        self._claims, self._child = claims, child

    def _job(self, index: int) -> Changed:
        """changed_sizes of one whole job."""
        location, joined, sizes = self.jobs[index]
        return changed_sizes(location, joined.split("\n") if joined else [], sizes)

    def unit(self, index: int) -> Changed:
        """changed_sizes of one unit."""
        job, start, end = self.units[index]
        location, joined, sizes = self.jobs[job]
        paths = self._paths.get(job)
        if paths is None:
            paths = self._paths[job] = joined.split("\n") if joined else []
        return changed_sizes(location, paths[start:end], sizes[start:end])

    def result(self) -> list[Changed]:
        """changed_sizes for each job, in order: the C check's answer (a job it left is checked here), else this
        process takes units from the back until it meets the child."""
        if self._native is not None:
            native, self._native = self._native, None
            answers = native.result()
            return [self._job(index) if found is None else found for index, found in enumerate(answers)]
        done: dict[int, Changed] = {}
        claims = self._claims
        try:
            for index in range(len(self.units) - 1, -1, -1):
                if claims is not None:
                    if claims[index]:
                        break
                    claims[index] = 2
                done[index] = self.unit(index)
        except BaseException:
            self.cancel()  # the child is stopped and reaped whatever happened here
            raise
        for index, found in (self._join() or {}).items():
            done.setdefault(index, found)
        out: list[Changed] = [[] for _ in self.jobs]
        for index, (job, _, _) in enumerate(self.units):
            out[job].extend(done[index] if index in done else self.unit(index))
        return out

    def cancel(self) -> None:
        """Stop the child (it stops at its next unit) and reap it, or the C check's threads; nothing is answered."""
        if self._native is not None:
            native, self._native = self._native, None
            native.cancel()
        if self._claims is not None:
            self._claims[:] = b"\2" * len(self.units)
        self._join()

    def _join(self) -> dict[int, Changed] | None:
        """The child's answer (unit -> changed), or None when there is none, it failed, was killed or said something
        that is not one; the child reaped, the shared page closed."""
        if self._child is None:
            return None
        child, self._child = self._child, None
        answer = _join_child(child)
        self._claims.close()
        self._claims = None
        if not isinstance(answer, dict) or not all(
                type(k) is int and 0 <= k < len(self.units) and isinstance(v, list)
                and all(isinstance(c, tuple) and len(c) == 2 and all(isinstance(p, str) for p in c) for c in v)
                for k, v in answer.items()):
            return None
        return answer


def _child_work(check: SizeCheck, claims: Any, parent: int | None = None) -> dict[int, Changed]:
    """The child's share of a SizeCheck: units from the front until one is marked, or until `parent` is no longer
    its parent (it left without stopping the child: the child stops within a unit). A seam for the tests."""
    done: dict[int, Changed] = {}
    for index in range(len(check.units)):
        if claims[index] or (parent is not None and os.getppid() != parent):
            break
        claims[index] = 1
        done[index] = check.unit(index)
    return done


#: ENVLOCK_SIZECHECK: which size check runs. auto (or unset): the C one where it was built, else Python's; c: the C
#: one, and a usage error where it was not built; python: Python's, even where the C one was built.
SIZECHECKS = ("auto", "c", "python")


def _native() -> Any:
    """envlock._sizecheck, the size check in C (one fstatat per file, on threads), where it was built and not
    turned off (`ENVLOCK_SIZECHECK=python`); else None, and the check runs in Python, with the same answer. A value
    of ENVLOCK_SIZECHECK that is not one of SIZECHECKS, or `c` where the extension was not built, is a usage error
    (exit 2), not a silent choice."""
    raw = os.environ.get("ENVLOCK_SIZECHECK", "")
    choice = raw.strip().lower() or "auto"
    if choice not in SIZECHECKS:
        from envlock.errors import UsageError

        raise UsageError(f"ENVLOCK_SIZECHECK={raw!r}: expected one of {', '.join(SIZECHECKS)} (auto when unset)")
    if choice == "python":
        return None
    try:
        import envlock._sizecheck as native
    except ImportError as missing:  # built without a C compiler (the extension is optional), or for another Python
        if choice == "c":
            from envlock.errors import UsageError

            raise UsageError(f"ENVLOCK_SIZECHECK=c, but envlock's C size check cannot be loaded ({missing}): it is "
                             f"built at install where a C compiler and Python's headers are") from None
        return None
    return native


#: The C check starts a thread for every NATIVE_THREAD_FILES files, up to one per usable core and MAX_THREADS; the
#: thread that asks for the answer works too, from then on.
NATIVE_THREAD_FILES = 4096
MAX_THREADS = 8


def _threads(files: int) -> int:
    """How many threads the C check of `files` files starts."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS, -(-files // NATIVE_THREAD_FILES)))


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


def _start_child(work: Callable[[], dict[int, Changed]]) -> tuple[int, int] | None:
    """Fork a child that writes the marshalled result of `work()` to a pipe: (pid, read end), or None."""
    import marshal
    import warnings

    try:
        read, write = os.pipe()
    except OSError:
        return None
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns when it sees other threads (a GPU driver's, started by NVML or cuInit): the child
            # only stats, marshals and writes, and takes no lock another thread could hold.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        return None
    if pid == 0:  # the child: no cleanup, no flushing of the parent's buffers, only the answer
        status = 1
        try:
            os.close(read)
            # Not the parent's output: a reader of it (`$(envlock verify)`) waits for this process too.
            quiet = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(quiet, fd)
            os.close(quiet)
            data = memoryview(marshal.dumps(work()))
            while data:
                data = data[os.write(write, data):]
            status = 0
        except BaseException:  # whatever went wrong, the parent does the work itself
            pass
        os._exit(status)
    os.close(write)
    return pid, read


def _join_child(child: tuple[int, int]) -> object:
    """What the child wrote, or None when it failed, was killed or wrote nothing that unmarshals."""
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
        return marshal.loads(b"".join(chunks))
    except (ValueError, EOFError, TypeError):
        return None

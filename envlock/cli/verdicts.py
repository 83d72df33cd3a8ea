"""The verdict memo of `envlock verify --fast`: a job start that sees what the last one saw prints what it printed.

A verdict is a pure function of what verify reads: the lock's bytes, the pyproject.toml files its policy may come
from, the command line, envlock's own code, the facts of this machine and process, the launcher, and the sizes of
the installed files. Loading the lock, turning the facts into a lock and comparing the two is about half of a job
start, so the CLI remembers, per working folder, lock path and command line, the verdict of the last successful
`verify --fast`, keyed by everything above that is not re-read: the lock's and every pyproject.toml's bytes, the
command line, the working folder and envlock's code. A later run reads the facts and sizes the files as always —
nothing that can change on the machine is taken from the memo — and only when it sees what that run saw (the same
facts, launcher and changed files) prints the same report and exits with the same code, without loading the lock.
Anything else, and any doubt (a memo that cannot be read, another format, stdout a terminal) is a miss: the verify
runs in full and the memo is written again. Errors are never remembered.

The memo lives with the digest caches (`$ENVLOCK_CACHE_DIR`, else `$XDG_CACHE_HOME/envlock`, else
`~/.cache/envlock`); `ENVLOCK_CACHE_DIR=""` turns it off with them.
"""

from __future__ import annotations

import hashlib
import io
import json
import marshal
import os
import stat
import sys
from collections.abc import Callable, Mapping
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from envlock._version import __version__
from envlock.errors import EnvlockError, ExitCode
from envlock.launcher import detect
from envlock.probes.sizes import SizeCheck, by_name, cache_file, read_cache, size_jobs, write_cache

FORMAT = 1
#: A memo larger than this is not read (a report of thousands of findings is not worth remembering).
LIMIT = 16 * 1024 * 1024
PACKAGE = Path(__file__).resolve().parent.parent


class Memo:
    """The memo for one `verify --fast` command line in one working folder (see the module's doc).

    `facts` are the facts replay() read, when it got that far: a miss hands them to the verify, which then does not
    read the machine a second time. `key` is what the memo must have been written under to be believed."""

    def __init__(self, path: str, values: Mapping[str, Any], shown: str, cwd: str) -> None:
        self.path = path
        self.values = values
        self.shown = shown
        self.cwd = cwd
        self.facts: dict[str, Any] | None = None
        self.extra_env: tuple[str, ...] = ()  # the variables the facts were read with (the lock's extra_env)
        self.key: str | None = None

    @classmethod
    def open(cls, values: Mapping[str, Any]) -> Memo | None:
        """The memo for the settled options of `envlock verify`, or None where none applies: not --fast; --deep,
        --facts, --distributed, --ray, -o or a format other than text and JSON; stdout a terminal (the report is
        styled there); the memo turned off."""
        if (not values.get("fast") or values.get("deep") or values.get("facts") or values.get("distributed")
                or values.get("ray") or values.get("output") is not None
                or values.get("format", "text") not in ("text", "json") or sys.stdout is None or _is_terminal()):
            return None
        try:
            cwd = os.getcwd()
        except OSError:
            return None
        # The command line, and $ENVLOCK_LOCK when no lock is named: the report names the lock it read.
        lock = "" if values.get("lock") else os.environ.get("ENVLOCK_LOCK", "")
        shown = repr((sorted((k, v) for k, v in values.items()), lock))
        # One file per folder, command line and envlock install: two installs do not overwrite each other's.
        host = os.uname().nodename if hasattr(os, "uname") else ""  # nodes sharing a home folder: one memo each
        where = _digest(f"{cwd}\0{shown}\0{PACKAGE}\0{sys.executable}\0{host}".encode(
            "utf-8", "surrogateescape"))[:16]
        path = cache_file(f"verdict-{where}.{sys.implementation.cache_tag}.marshal")
        return cls(path, values, shown, cwd) if path is not None else None

    def replay(self) -> int | None:
        """Print the remembered report and give its exit code, when this run sees what that one saw; else None.

        The size check of the remembered packages starts first, in a forked child (see SizeCheck), while this
        process reads the lock's bytes and the machine."""
        try:
            entry = self._replay()
        except Exception:  # a memo only ever saves time: whatever went wrong, the verify runs in full
            self.facts = None
            try:
                self.key = self.key or self._key()  # and writes it again
            except Exception:
                self.key = None
            return None
        if entry is None:
            return None
        sys.stdout.write(entry["stdout"])
        sys.stdout.flush()
        return int(entry["code"])

    def _replay(self) -> dict[str, Any] | None:
        """The remembered entry when it holds for this run (see replay)."""
        entry = read_cache(self.path, LIMIT, marshal.loads)
        if not _valid(entry):
            self.key = self._key()
            return None
        names, jobs = size_jobs(entry["sized"])
        check = SizeCheck(jobs)
        try:
            self.key = self._key()
            if self.key is None or entry["key"] != self.key:
                return None
            from envlock.facts import collect_facts  # here: after the child has started on the files

            self.extra_env = entry["extra_env"]
            self.facts = collect_facts(fast=True, init_cuda=True, extra_env=self.extra_env)
            if _facts_digest(self.facts) != entry["facts"] or _launcher() != entry["launcher"]:
                return None
            if by_name(names, check.result()) != entry["modified"]:
                return None
        except EnvlockError:
            self.facts = None
            return None  # the verify meets it again and says it as it says everything
        finally:
            check.cancel()
        return entry

    def keep(self, *, extra_env: tuple[str, ...], facts: Mapping[str, Any], launcher: str,
             sized: tuple[tuple[str, str, str], ...], modified: Mapping[str, tuple[tuple[str, str], ...]],
             code: int, render: Callable[[], None]) -> None:
        """Run `render` (the report on stdout), print what it printed, and remember it with what the verify saw
        (unless the lock or a pyproject.toml changed while it ran)."""
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            render()
        text = buffer.getvalue()
        if code in (ExitCode.OK, ExitCode.MISMATCH) and self.key is not None and self._key() == self.key:
            entry = {"key": self.key, "extra_env": tuple(extra_env), "facts": _facts_digest(facts),
                     "launcher": launcher, "sized": tuple(sized),
                     "modified": {name: tuple(changed) for name, changed in modified.items()},
                     "stdout": text, "code": int(code)}
            try:
                data = marshal.dumps({"version": 1, "entries": entry})
            except ValueError:
                data = b""
            if data and len(data) <= LIMIT:
                write_cache(self.path, data)
        sys.stdout.write(text)
        sys.stdout.flush()

    def _key(self) -> str | None:
        """The digest of what is not read again on a hit: the lock's bytes, every pyproject.toml at or above the
        working folder, the command line, the working folder and envlock's code; None when the lock or a
        pyproject.toml cannot be read (the verify says why)."""
        from envlock.lockfile import MAX_LOCK_BYTES, default_lock_path, read_regular  # after the child started

        try:
            lock = read_regular(self.values.get("lock") or default_lock_path(), MAX_LOCK_BYTES)
            projects = _projects(Path(self.cwd), read_regular, MAX_LOCK_BYTES)
            code = _code_stamp()
        except (OSError, EnvlockError):
            return None
        head = f"{FORMAT}\0{__version__}\0{sys.executable}\0{self.cwd}\0{self.shown}"
        return _digest(b"\0".join([head.encode("utf-8", "surrogateescape"), code, lock, projects]))


def _is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: /proc/cpuinfo lines that move while the machine runs (a core's clock now): no part of a lock (parse_cpu reads
#: none of them), so a run that differs only there saw the same thing.
VOLATILE_CPUINFO = frozenset({"cpu MHz", "cpu MHz dynamic", "cpu MHz static", "bogomips", "BogoMIPS"})


def _facts_digest(facts: Mapping[str, Any]) -> str:
    cpu = facts.get("cpu")
    info = cpu.get("cpuinfo") if isinstance(cpu, dict) else None
    if isinstance(cpu, dict) and isinstance(info, dict):
        steady = {k: "" if k in VOLATILE_CPUINFO and isinstance(v, str) else v for k, v in info.items()}
        facts = {**facts, "cpu": {**cpu, "cpuinfo": steady}}
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return _digest(text.encode("utf-8", "surrogateescape"))


def _launcher() -> str:
    started_by = detect()
    return started_by.name if started_by is not None else ""


def _projects(cwd: Path, read: Callable[..., bytes], limit: int) -> bytes:
    """The bytes of every pyproject.toml at or above the working folder (where the project policy is looked for),
    each with its place; one that is absent or not a regular file counts as absent, as there. Anything that cannot
    be read raises (no memo)."""
    parts = []
    here = cwd.absolute()
    for folder in (here, *here.parents):
        candidate = os.path.join(folder, "pyproject.toml")
        try:
            if not stat.S_ISREG(os.stat(candidate).st_mode):
                continue
        except (FileNotFoundError, NotADirectoryError):
            continue
        data = read(candidate, limit, what="pyproject.toml")
        parts.append(f"{candidate}\0{len(data)}\0".encode("utf-8", "surrogateescape") + data)
    return b"\0".join(parts)


def _code_stamp() -> bytes:
    """What moves when envlock's own code changes: the path, modification time and size of every file of the
    package (an editable install is edited in place)."""
    parts = []
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".pyc"):
                st = os.stat(os.path.join(folder, name))
                parts.append(f"{folder}/{name}\0{st.st_mtime_ns}\0{st.st_size}")
    return "\n".join(parts).encode("utf-8", "surrogateescape")


def _valid(entry: Mapping[str, Any]) -> bool:
    """Whether a memo read back has every field, of its type (anything else is a miss)."""
    try:
        return (isinstance(entry.get("key"), str) and isinstance(entry.get("facts"), str)
                and isinstance(entry.get("launcher"), str) and isinstance(entry.get("stdout"), str)
                and type(entry.get("code")) is int
                and isinstance(entry.get("extra_env"), tuple) and all(isinstance(e, str) for e in entry["extra_env"])
                and isinstance(entry.get("sized"), tuple)
                and all(isinstance(s, tuple) and len(s) == 3 and all(isinstance(p, str) for p in s)
                        for s in entry["sized"])
                and isinstance(entry.get("modified"), dict))
    except TypeError:
        return False

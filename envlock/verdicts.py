"""The verdict memo of `envlock verify --fast`: a job start that sees what the last one saw prints what it printed.

A verdict is a pure function of what verify reads: the lock's bytes, the pyproject.toml files its policy may come
from, the command line, envlock's own code, the facts of this machine and process, the launcher, and the sizes of
the installed files. Loading the lock, turning the facts into a lock and comparing the two is about half of a job
start, so envlock remembers, per working folder and command line, the verdict of the last successful `verify
--fast`, keyed by everything above that is not re-read: the lock's and every pyproject.toml's bytes, the command
line and envlock's own variables (`ENVLOCK_*`: what settles the options and names the lock), the working folder
and envlock's code. A later run reads the facts and sizes the files as always — nothing that can change on the
machine is taken from the memo — and only when it sees what that run saw (the same facts, launcher and changed
files) prints the same report and exits with the same code, without loading the lock. Anything else, and any doubt
(a memo that cannot be read, another format, stdout a terminal) is a miss: the verify runs in full and the memo is
written again. Errors are never remembered.

The console script (envlock.entry) opens the memo by the command line alone, before it imports the command line's
parser, and the size check's child starts from it at once: a hit then costs the interpreter, the facts and half of
the stats. The parser's path (envlock.cli) opens the same file for the options it settled, and writes it.

Until the child has started this module imports only what the interpreter has loaded already, zlib and
envlock.probes.sizes (see test_layout); the rest is imported where it is used.

The memo lives with the digest caches (`$ENVLOCK_CACHE_DIR`, else `$XDG_CACHE_HOME/envlock`, else
`~/.cache/envlock`); `ENVLOCK_CACHE_DIR=""` turns it off with them.
"""

from __future__ import annotations

import marshal
import os
import sys

from envlock._version import __version__
from envlock.probes.sizes import SizeCheck, by_name, cache_file, read_cache, short_digest, size_jobs, write_cache

TYPE_CHECKING = False  # see envlock/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

FORMAT = 3
#: A memo larger than this is not read (a report of thousands of findings is not worth remembering).
LIMIT = 16 * 1024 * 1024
PACKAGE = os.path.dirname(os.path.realpath(__file__))
#: What launchers call a process's rank on its node (torchrun, Slurm, Open MPI): one memo per local rank.
LOCAL_RANKS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")
#: The verify options a memo is never written for (with these the report is not a function of what is keyed).
UNREMEMBERED = ("deep", "facts", "distributed", "ray")


class Memo:
    """The memo of one `verify --fast` command line in one working folder (see the module's doc).

    `facts` are the facts replay() read, when it got that far: a miss hands them to the verify, which then does not
    read the machine a second time. `key` is what the memo must have been written under to be believed; `lock` the
    lock file the key read (None where the command line was not parsed yet: then the memo's own entry names it)."""

    def __init__(self, path: str, argv: Sequence[str], cwd: str, lock: str | None) -> None:
        self.path = path
        self.argv = tuple(argv)
        self.cwd = cwd
        self.lock = lock
        self.facts: dict[str, Any] | None = None
        self.extra_env: tuple[str, ...] = ()  # the variables the facts were read with (the lock's extra_env)
        self.key: bytes | None = None
        self.replayed = False  # replay() ran (a miss): the verify does not ask again
        # After a miss, the size check replay() started: (the packages it sizes, their names, the check, its
        # answer when replay() had it already), for the verify (see sizing).
        self._pending: tuple[tuple[tuple[str, str, str], ...], list[str], SizeCheck, list[Any] | None] | None = None

    @classmethod
    def early(cls, argv: Sequence[str]) -> Memo | None:
        """The memo of `envlock verify ARGV`, by the command line alone (before it is parsed), or None where none
        can apply: stdout a terminal or closed, the memo turned off. Whether the options allow a memo at all is
        open() questions: a line they do not allow it for never wrote one, so its file is not there."""
        return cls._at(argv, None)

    @classmethod
    def open(cls, values: Mapping[str, Any], argv: Sequence[str]) -> Memo | None:
        """The memo of `envlock verify ARGV` with these settled options, or None where none applies: not --fast;
        --deep, --facts, --distributed, --ray, -o or a format other than text and JSON; stdout a terminal (the
        report is styled there) or closed; the memo turned off."""
        if (not values.get("fast") or any(values.get(name) for name in UNREMEMBERED)
                or values.get("output") is not None or values.get("format", "text") not in ("text", "json")):
            return None
        from envlock.files import default_lock_name

        return cls._at(argv, str(values.get("lock") or default_lock_name()))

    @classmethod
    def _at(cls, argv: Sequence[str], lock: str | None) -> Memo | None:
        if sys.stdout is None or _is_terminal():
            return None
        try:
            cwd = os.getcwd()
        except OSError:
            return None
        # One file per folder, command line, envlock install, host and local rank: two installs do not overwrite
        # each other's, nodes that share a home folder keep one each, and the ranks of one node (whose facts can
        # differ: a GPU each) do not take turns overwriting one memo.
        host = os.uname().nodename if hasattr(os, "uname") else ""
        rank = tuple(os.environ.get(name, "") for name in LOCAL_RANKS)
        where = short_digest("\0".join((cwd, *argv, "", *_settings(), PACKAGE, sys.executable, host, *rank)))
        path = cache_file(f"verdict-{where}.{sys.implementation.cache_tag}.marshal")
        return cls(path, argv, cwd, lock) if path is not None else None

    def replay(self) -> tuple[str, int] | None:
        """The remembered report and its exit code when this run sees what that one saw; else None (a miss, after
        which `facts` and `key` are what the verify needs).

        The size check of the remembered packages starts first, in a forked child (see SizeCheck), while this
        process reads the lock's bytes and the machine."""
        self.replayed = True
        try:
            entry = self._replay()
        except Exception:  # a memo only ever saves time: whatever went wrong, the verify runs in full
            self.facts = None
            try:
                self.key = self.key or self._key()  # and writes it again
            except Exception:
                self.key = None
            return None
        return None if entry is None else (entry["stdout"], int(entry["code"]))

    def _replay(self) -> dict[str, Any] | None:
        """The remembered entry when it holds for this run (see replay)."""
        entry = read_cache(self.path, LIMIT, marshal.loads)
        if not _valid(entry):
            if self.lock is not None:
                self.key = self._key()
            return None
        if self.lock is None:
            self.lock = entry["lock"]
        names, jobs = size_jobs(entry["sized"])
        check = SizeCheck(jobs)
        done: list[Any] | None = None
        try:
            # Imported here, after the child has started on the files (inside the try: a Ctrl-C meanwhile stops
            # the child too).
            from envlock.errors import EnvlockError
            from envlock.facts import collect_facts

            try:
                self.key = self._key()
                if self.key is not None and entry["key"] == self.key and entry["lock"] == self.lock:
                    self.extra_env = entry["extra_env"]
                    self.facts = collect_facts(fast=True, init_cuda=True, extra_env=self.extra_env)
                    if _facts_key(self.facts) == entry["facts"] and _launcher() == entry["launcher"]:
                        done = check.result()
                        if by_name(names, done) == entry["modified"]:
                            return entry
            except EnvlockError:
                self.facts = None
                check.cancel()
                return None  # the verify meets it again and says it as it says everything
        except BaseException:
            check.cancel()
            raise
        self._pending = (entry["sized"], names, check, done)  # a miss: the verify may take the check over
        return None

    def sizing(self, sized: tuple[tuple[str, str, str], ...]) -> dict[str, tuple[tuple[str, str], ...]] | None:
        """The changed files of `sized` from the size check replay() started before it missed, when it was started
        for exactly these packages (a verify whose facts moved sizes others); else None, the check stopped."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        started_for, names, check, done = pending
        if tuple(sized) != started_for:
            check.cancel()
            return None
        return by_name(names, done if done is not None else check.result())

    def release(self) -> None:
        """Stop a size check replay() left for the verify that the verify did not take."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[2].cancel()

    def keep(self, *, extra_env: tuple[str, ...], facts: Mapping[str, Any], launcher: str,
             sized: tuple[tuple[str, str, str], ...], modified: Mapping[str, tuple[tuple[str, str], ...]],
             code: int, render: Callable[[], None]) -> None:
        """Run `render` (the report on stdout), print what it printed, and remember it with what the verify saw
        (unless the lock or a pyproject.toml changed while it ran)."""
        import io
        from contextlib import redirect_stdout

        from envlock.errors import ExitCode

        buffer = io.StringIO()
        with redirect_stdout(buffer):
            render()
        text = buffer.getvalue()
        if code in (ExitCode.OK, ExitCode.MISMATCH) and self.key is not None and self._key() == self.key:
            entry = {"key": self.key, "lock": self.lock, "extra_env": tuple(extra_env),
                     "facts": _facts_key(facts), "launcher": launcher, "sized": tuple(sized),
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

    def _key(self) -> bytes | None:
        """What is not read again on a hit, whole (compared byte for byte, no digest to load a hash library for):
        the lock's bytes, every pyproject.toml at or above the working folder, the command line, envlock's
        variables, the working folder and envlock's code; None when the lock or a pyproject.toml cannot be read
        (the verify says why)."""
        from envlock.errors import EnvlockError
        from envlock.files import MAX_LOCK_BYTES, read_regular

        if self.lock is None:
            return None
        try:
            lock = read_regular(self.lock, MAX_LOCK_BYTES)
            projects = _projects(self.cwd, read_regular, MAX_LOCK_BYTES)
            code = _code_stamp()
        except (OSError, EnvlockError):
            return None
        head = repr((FORMAT, __version__, sys.executable, self.cwd, self.argv, _settings(), self.lock))
        return b"\0".join([head.encode("utf-8", "surrogateescape"), code, lock, projects])


def _settings() -> tuple[str, ...]:
    """envlock's own environment variables (`ENVLOCK_LOCK` names the lock when the command line does not; the
    rest say where caches live), as NAME=value: with the command line, what settles a verify's options."""
    return tuple(sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("ENVLOCK_")))


def _is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


#: /proc/cpuinfo lines that move while the machine runs (a core's clock now): no part of a lock (parse_cpu reads
#: none of them), so a run that differs only there saw the same thing.
VOLATILE_CPUINFO = frozenset({"cpu MHz", "cpu MHz dynamic", "cpu MHz static", "bogomips", "BogoMIPS"})


def _facts_key(facts: Mapping[str, Any]) -> bytes:
    """The facts as bytes that are equal exactly when the facts are: marshal's format 2 writes no back-references,
    so equal data gives equal bytes (the facts are plain data; JSON, for anything marshal cannot write)."""
    cpu = facts.get("cpu")
    info = cpu.get("cpuinfo") if isinstance(cpu, dict) else None
    if isinstance(cpu, dict) and isinstance(info, dict):
        steady = {k: "" if k in VOLATILE_CPUINFO and isinstance(v, str) else v for k, v in info.items()}
        facts = {**facts, "cpu": {**cpu, "cpuinfo": steady}}
    try:
        return marshal.dumps(dict(facts), 2)
    except ValueError:
        import json

        text = json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
        return text.encode("utf-8", "surrogateescape")


def _launcher() -> str:
    from envlock.launcher import detect

    started_by = detect()
    return started_by.name if started_by is not None else ""


def _projects(cwd: str, read: Callable[..., bytes], limit: int) -> bytes:
    """The bytes of every pyproject.toml at or above the working folder (where the project policy is looked for),
    each with its place; one that is absent or not a regular file counts as absent, as there. Anything that cannot
    be read raises (no memo)."""
    import stat

    folders = [os.path.abspath(cwd)]
    while os.path.dirname(folders[-1]) != folders[-1]:
        folders.append(os.path.dirname(folders[-1]))
    parts = []
    for folder in folders:
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
        return (isinstance(entry.get("key"), bytes) and isinstance(entry.get("lock"), str)
                and isinstance(entry.get("facts"), bytes)
                and isinstance(entry.get("launcher"), str) and isinstance(entry.get("stdout"), str)
                and type(entry.get("code")) is int
                and isinstance(entry.get("extra_env"), tuple) and all(isinstance(e, str) for e in entry["extra_env"])
                and isinstance(entry.get("sized"), tuple)
                and all(isinstance(s, tuple) and len(s) == 3 and all(isinstance(p, str) for p in s)
                        for s in entry["sized"])
                and isinstance(entry.get("modified"), dict))
    except TypeError:
        return False

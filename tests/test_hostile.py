"""Hostile input: every lock, facts dump or command a user can hand envlock ends in one line and the right code.

The corpus is generated from the recorded fixture locks (empty tables, wrong types, huge numbers, text that is not
Unicode, files that are not regular files...) and each entry goes through every command that reads a lock. A
refused input is exit 2, exactly one line on stderr (`envlock: error: ...`) and, with --json, one JSON object on
stdout; a valid one is a clean verdict. Never a traceback, never a hang.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envlock.cli import main as cli_main
from envlock.errors import EnvlockError, LockError, exit_for, printable
from envlock.files import read_regular
from envlock.lockfile import content_hash, loads
from tests.conftest import FIXTURES
from tests.helpers import ENVLOCK, clean_env, console

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HOSTS = FIXTURES / "hosts"
BASE = HOSTS / "linux-nogpu-nocuda-x86_64_v4-devbox"
GPU = HOSTS / "linux-nvidia535-cuda12.1-cascadelake-a100x2mig"
BASE_TEXT = (BASE / "expected.lock").read_text(encoding="utf-8")
GPU_TEXT = (GPU / "expected.lock").read_text(encoding="utf-8")
BASE_FACTS = json.loads((BASE / "facts.json").read_text(encoding="utf-8"))
BASE_TARGET = "x86_64_v4"
CLEAN = (0, 1)  # a verdict: matches, or does not


# --- running envlock in-process -------------------------------------------------------------------------------


class Done(NamedTuple):
    code: int
    out: str
    err: str


def run(argv: list[str | Path], capsys: pytest.CaptureFixture[str]) -> Done:
    """`envlock ...` in-process (the job-start parser or the typer app, as the console script picks)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli_main([str(a) for a in argv])
    out = capsys.readouterr()
    code = info.value.code
    return Done(code if isinstance(code, int) else 0 if code is None else 1, out.out, out.err)


def assert_refused(done: Done, argv: list[Any], *, as_json: bool = False) -> str:
    """The one error line of a refused input (exit 2), checked against the contract."""
    where = f"{argv}: exit {done.code}\nstdout: {done.out[-2000:]}\nstderr: {done.err[-2000:]}"
    assert done.code == 2, where
    assert "Traceback" not in done.err, where
    lines = done.err.splitlines()
    assert len(lines) == 1, where
    assert lines[0].startswith("envlock: error: "), where
    assert lines[0].isprintable(), where
    if as_json:
        error = json.loads(done.out)
        assert error["ok"] is False and error["error"]["code"] == 2, where
    else:
        assert done.out == "", where
    return lines[0]


def assert_clean(done: Done, argv: list[Any], *, as_json: bool = False) -> None:
    where = f"{argv}: exit {done.code}\nstdout: {done.out[-2000:]}\nstderr: {done.err[-2000:]}"
    assert done.code in CLEAN, where
    assert "Traceback" not in done.err, where
    if as_json:
        assert isinstance(json.loads(done.out), dict), where


@pytest.fixture
def fake_exec(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """`envlock run` never replaces the test process: execv records the job and stops the command."""
    started: list[list[str]] = []

    def execv(program: str, args: list[str]) -> None:
        started.append([program, *args])
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    return started


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with no pyproject.toml above it that envlock would read, and an untouched environment."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ENVLOCK_VERIFY", raising=False)
    saved = dict(os.environ)
    yield work
    os.environ.clear()
    os.environ.update(saved)


def lock_commands(path: Path, good: Path, scratch: Path) -> Iterator[tuple[list[Any], bool]]:
    """Every command that reads a lock, given `path` as the lock: (argv, whether it prints JSON)."""
    yield ["show", path], False
    yield ["verify", path], False
    yield ["verify", "--fast", path], False
    yield ["verify", "--json", path], True
    yield ["verify", "--fast", "--json", path], True
    yield ["diff", path, good], False
    yield ["diff", good, path], False
    yield ["diff", "--json", path, good], True
    yield ["run", "--lock", path, "--", "true"], False
    yield ["build", path, "--context", scratch / "context"], False


# --- the corpus -----------------------------------------------------------------------------------------------


def sealed(data: dict[str, Any]) -> bytes:
    """TOML for `data` with a content hash that matches it, so only the model can refuse what was changed."""
    if isinstance(data.get("lock"), dict) and data["lock"]:
        data["lock"]["content_hash"] = content_hash(data)
    return "".join(f"{_toml(key)} = {_toml(value)}\n" for key, value in data.items()).encode("utf-8")


def _toml(value: Any) -> str:
    """A TOML value (tables inline), quickly: tomlkit takes ~0.1 s a lock, too slow for hundreds of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's; a lone surrogate becomes the \ud800 TOML refuses
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, item in enumerate(value):
            yield from leaves(item, (*path, i))
    else:
        yield path, value


def tables(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        if path:
            yield path
        for key, item in value.items():
            yield from tables(item, (*path, key))


def put(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int):
        return "1"
    if isinstance(value, str):
        return 1
    if isinstance(value, list):
        return {"a": 1}
    return [1]


def name(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)[:60]


class Entry(NamedTuple):
    """One hostile input: its bytes (or a special kind of file) and whether it is a valid lock after all (None:
    generated, either may be right; the contract holds both ways)."""

    content: bytes | str
    valid: bool | None = False


def corpus() -> dict[str, Entry]:
    base: dict[str, Any] = tomllib.loads(BASE_TEXT)
    gpu: dict[str, Any] = tomllib.loads(GPU_TEXT)
    gpu_target = next(iter(gpu["targets"]))
    out: dict[str, Entry] = {
        "valid": Entry(BASE_TEXT.encode(), valid=True),
        "valid-resealed": Entry(sealed(copy.deepcopy(base)), valid=True),
        "valid-newer-minor": Entry(sealed(put(base, ("lock", "schema"), "1.9")), valid=True),
        "valid-crlf": Entry(BASE_TEXT.replace("\n", "\r\n").encode(), valid=True),
        # the file itself
        "empty-file": Entry(b""),
        "only-comments": Entry(b"# nothing here\n"),
        "not-a-lock": Entry(b'[project]\nname = "demo"\nversion = "1.0"\n'),
        "not-a-lock-with-lock-table": Entry(b'[lock]\nschema = "1.0"\n'),
        "bom": Entry(b"\xef\xbb\xbf" + BASE_TEXT.encode()),
        "utf16": Entry(BASE_TEXT.encode("utf-16")),
        "non-utf8-byte": Entry(BASE_TEXT.encode().replace(b"[python]", b"[python]\n# \xff\xfe", 1)),
        "nul-in-value": Entry(BASE_TEXT.replace('schema = "1.0"', 'schema = "1\x00.0"', 1).encode()),
        "nul-in-key": Entry(BASE_TEXT.replace("schema =", '"sch\\u0000ema" = "1.0"\nschema =', 1).encode()),
        "surrogate-escape": Entry(BASE_TEXT.replace('schema = "1.0"', 'schema = "1.0\\ud800"', 1).encode()),
        "surrogate-escape-long": Entry(BASE_TEXT.replace('schema = "1.0"', 'schema = "\\U0000dfff"', 1).encode()),
        "duplicate-key": Entry(BASE_TEXT.replace('schema = "1.0"', 'schema = "1.0"\nschema = "1.0"', 1).encode()),
        "duplicate-table": Entry((BASE_TEXT + '\n[lock]\nschema = "1.0"\n').encode()),
        "deep-arrays": Entry(b"x = " + b"[" * 20000 + b"]" * 20000 + b"\n"),
        "deep-tables": Entry(b"x = " + b"{a = " * 20000 + b"1" + b"}" * 20000 + b"\n"),
        "deep-dotted-key": Entry(b".".join([b"a"] * 20000) + b" = 1\n"),
        "huge-integer-literal": Entry(BASE_TEXT.replace("logical_cores = ", "logical_cores = 9" + "9" * 5000 + "#",
                                                        1).encode()),
        "ten-megabytes": Entry(BASE_TEXT.encode() + (b"# " + b"x" * 1022 + b"\n") * 10 * 1024),
        "ten-megabytes-one-line": Entry(b'x = "' + b"y" * (10 * 1024 * 1024) + b'"\n'),
        "hand-edited": Entry(BASE_TEXT.replace('version = "', 'version = "9', 1).encode()),
        "schema-major-2": Entry(sealed(put(base, ("lock", "schema"), "2.0"))),
        "schema-superscript": Entry(sealed(put(base, ("lock", "schema"), "1.\u00b2"))),
        "schema-huge": Entry(sealed(put(base, ("lock", "schema"), "1." + "9" * 5000))),
        # consistency the grammar alone cannot see
        "no-targets": Entry(sealed(put(base, ("targets",), {}))),
        "gpu-count-mismatch": Entry(sealed(put(gpu, ("targets", gpu_target, "gpu", "count"), 3))),
        "gpu-index-repeated": Entry(sealed(put(gpu, ("targets", gpu_target, "gpu", "devices", 1, "index"), 0))),
        "mig-repeated": Entry(sealed(put(
            gpu, ("targets", gpu_target, "gpu", "devices", 0, "mig_instances"),
            gpu["targets"][gpu_target]["gpu"]["devices"][0]["mig_instances"] * 2))),
        "blas-id-repeated": Entry(sealed(put(
            base, ("targets", BASE_TARGET, "blas", "libraries"),
            [base["targets"][BASE_TARGET]["blas"]["libraries"][0]] * 2))),
        "kernel-id-mismatch": Entry(sealed(_kernel_renamed(base))),
        "target-name-newline": Entry(sealed(_target_renamed(base, "x86\nv4"))),
        "target-name-dotted-bidi": Entry(sealed(_target_renamed(base, "x86.\u202ev4"))),
        "target-name-empty": Entry(sealed(_target_renamed(base, ""))),
        "package-name-shell": Entry(sealed(put(base, ("packages", "numpy; rm -rf /"), {"version": "1.0"}))),
        "package-version-newline": Entry(sealed(put(base, ("packages", "numpy", "version"), "1.0\nRUN evil"))),
        "env-value-escape-sequence": Entry(sealed(put(base, ("floats", "env", "OMP_NUM_THREADS"),
                                                      {"set": True, "value": "\x1b[2J4"}))),
        "float-nan": Entry(sealed(put(base, ("targets", BASE_TARGET, "cpu", "logical_cores"), float("nan")))),
        "float-inf": Entry(sealed(put(base, ("targets", BASE_TARGET, "cpu", "logical_cores"), float("inf")))),
        "negative-integer": Entry(sealed(put(base, ("targets", BASE_TARGET, "cpu", "usable_cores"), -1))),
        "int64-max": Entry(sealed(put(base, ("targets", BASE_TARGET, "cpu", "usable_cores"), 2**63 - 1))),
        "datetime-value": Entry(BASE_TEXT.replace('created = "2026-01-01T00:00:00Z"',
                                                  "created = 2026-01-01T00:00:00Z", 1).encode()),
        # files that are not regular files
        "fifo": Entry("fifo"),
        "directory": Entry("directory"),
        "symlink-loop": Entry("symlink-loop"),
        "dangling-symlink": Entry("dangling-symlink"),
        "character-device": Entry("character-device"),
        "socket": Entry("socket"),
        "missing": Entry("missing"),
        "unreadable": Entry("unreadable"),
    }
    for path in tables(base):
        if path[0] != "packages" and path[:2] != ("policy", "rules"):
            out[f"empty-table-{name(path)}"] = Entry(sealed(put(base, path, {})), valid=None)
    for section in ("lock", "python", "floats", "targets"):
        out[f"table-as-string-{section}"] = Entry(sealed(put(base, (section,), "x")))
        out[f"missing-{section}"] = Entry(sealed({k: v for k, v in base.items() if k != section}))
    seen: set[tuple[Any, ...]] = set()
    for path, value in leaves(base):
        # One mutation per kind of field: the first package, kernel, rule and variable stand for the others.
        shape = tuple("*" if isinstance(p, int) or (i and path[i - 1] in KEYED) else p for i, p in enumerate(path))
        if shape in seen or path == ("lock", "content_hash"):
            continue
        seen.add(shape)
        out[f"wrong-type-{name(path)}"] = Entry(sealed(put(base, path, wrong_type(value))))
        if isinstance(value, str):
            out[f"newline-{name(path)}"] = Entry(sealed(put(base, path, value + "\nsecond line")))
        if isinstance(value, int) and not isinstance(value, bool):
            out[f"huge-{name(path)}"] = Entry(sealed(put(base, path, 10**400)))
    out["unknown-key-top"] = Entry(sealed({**copy.deepcopy(base), "surprise": {"a": 1}}))
    out["unknown-key-target"] = Entry(sealed(put(base, ("targets", BASE_TARGET, "surprise"), 1)))
    return out


def _kernel_renamed(base: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    kernels = out["targets"][BASE_TARGET]["numerics"]["kernels"]
    first = sorted(kernels)[0]
    kernels["torch-cpu-mm-float32-1x1x1"] = kernels.pop(first)
    return out


def _target_renamed(base: dict[str, Any], new: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out["targets"] = {new: out["targets"][BASE_TARGET]}
    return out


#: Tables keyed by names (a package, a kernel, a rule pattern, a variable, a target).
KEYED = frozenset({"packages", "kernels", "rules", "env", "targets"})
CORPUS = corpus()


def make(entry: Entry, where: Path) -> Path:
    """The entry as a file (or a FIFO, a folder, a loop of links...) at `where`."""
    kind = entry.content
    if isinstance(kind, bytes):
        where.write_bytes(kind)
    elif kind == "fifo":
        os.mkfifo(where)
    elif kind == "directory":
        where.mkdir()
    elif kind == "symlink-loop":
        os.symlink(where.with_name("loop-b"), where)
        os.symlink(where, where.with_name("loop-b"))
    elif kind == "dangling-symlink":
        os.symlink(where.with_name("nowhere"), where)
    elif kind == "character-device":
        os.symlink("/dev/zero", where)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(where))
        server.close()
    elif kind == "unreadable":
        where.write_text(BASE_TEXT)
        where.chmod(0)
    elif kind != "missing":
        raise AssertionError(kind)
    return where


needs_posix = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and sockets are POSIX")


@needs_posix
@pytest.mark.parametrize("key", [
    # A lock that may be valid is verified in full, probe and all (seconds): those are the slow part.
    pytest.param(key, marks=[pytest.mark.slow] if CORPUS[key].valid is not False else []) for key in sorted(CORPUS)
])
def test_every_command_that_reads_a_lock_refuses_hostile_input_in_one_line(
    key: str, workdir: Path, capsys: pytest.CaptureFixture[str], fake_exec: list[list[str]]
) -> None:
    entry = CORPUS[key]
    if entry.content == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads any file; tests/test_faults.py meets an unreadable lock as nobody (setpriv)")
    path = make(entry, workdir / f"{key}.lock")
    good = workdir / "good.lock"
    good.write_text(BASE_TEXT, encoding="utf-8")
    for argv, as_json in lock_commands(path, good, workdir / "scratch"):
        done = run(argv, capsys)
        if entry.valid is False:
            line = assert_refused(done, argv, as_json=as_json)
            assert path.name in line, line
        elif done.code == 2:  # a valid lock's build stops at its own options (no --base), in one line
            assert_refused(done, argv, as_json=as_json)
            assert entry.valid is None or argv[0] == "build", done
        else:
            assert_clean(done, argv, as_json=as_json)
    assert all(job[1:] == ["true"] for job in fake_exec)


def test_the_corpus_is_large_and_mostly_hostile() -> None:
    assert len(CORPUS) > 150
    assert sum(entry.valid is True for entry in CORPUS.values()) < 10


def test_a_lock_whose_name_holds_a_newline_is_refused_in_one_escaped_line(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workdir / "two\nlines\x1b[31m.lock"
    path.write_bytes(sealed(put(tomllib.loads(BASE_TEXT), ("targets",), {})))
    for argv in (["show", path], ["verify", "--fast", path], ["diff", path, path]):
        line = assert_refused(run(argv, capsys), argv)
        assert "two\\nlines\\x1b[31m.lock: targets: a lock needs at least one target" in line
    argv = ["verify", "--json", workdir / "no\nsuch.lock"]
    line = assert_refused(done := run(argv, capsys), argv, as_json=True)
    assert "no\\nsuch.lock" in line and "no\\nsuch.lock" in json.loads(done.out)["error"]["message"]


def test_a_fifo_never_blocks_a_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "lock"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_regular(fifo, 10)
        except LockError as exc:
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the reader so the suite can go on, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert [str(e) for e in result] == [f"{fifo}: is a FIFO, not a lock file"]


# --- facts dumps ----------------------------------------------------------------------------------------------


def facts_corpus() -> dict[str, Any]:
    out: dict[str, Any] = {
        "valid": BASE_FACTS,
        "surrogate-release": put(BASE_FACTS, ("platform", "release"), "6.1\ud800"),
        "surrogate-key": put(BASE_FACTS, ("env", "OMP\udcffNUM"), "1"),
        "surrogate-package": put(BASE_FACTS, ("packages", 0, "name"), "num\udcffpy"),
        "format-true": put(BASE_FACTS, ("envlock_facts",), True),
        "format-huge": put(BASE_FACTS, ("envlock_facts",), [1] * 10000),
        "not-an-object": [1, 2, 3],
        "deep": put(BASE_FACTS, ("gpu",), json.loads("[" * 200 + "]" * 200)),
        "deep-text": '{"envlock_facts": 1, "gpu": ' + "[" * 100000 + "]" * 100000 + "}",
        "not-json": "{nope",
        "a-lock": BASE_TEXT,
        "nvidia-smi-garbage": "<?xml version='1.0'?><nvidia_smi_log><gpu><<<",
        "bom-and-nul": "\ufeff\x00",
        "huge-int": put(BASE_FACTS, ("cpu", "logical_cores"), 10**400),
    }
    seen: set[tuple[Any, ...]] = set()
    for path, value in _fact_leaves(BASE_FACTS):
        shape = tuple("*" if isinstance(p, int) or (i and path[i - 1] in KEYED) else p for i, p in enumerate(path))
        if shape in seen or path == ("envlock_facts",):
            continue
        seen.add(shape)
        out[f"wrong-type-{name(path)}"] = put(BASE_FACTS, path, wrong_type(value))
        out[f"null-{name(path)}"] = put(BASE_FACTS, path, None)
        if isinstance(value, str):
            out[f"control-{name(path)}"] = put(BASE_FACTS, path, value + "\n\x1b[2J\u202e")
    return out


def _fact_leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _fact_leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value[:2]):
            yield from _fact_leaves(item, (*path, i))
    else:
        yield path, value


FACTS = facts_corpus()


@pytest.mark.parametrize("key", sorted(FACTS))
def test_a_facts_dump_is_untrusted_input(key: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    facts = workdir / "facts.json"
    value = FACTS[key]  # dumped with ensure_ascii: surrogates as \ud800 escapes
    facts.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
    good = workdir / "good.lock"
    good.write_text(BASE_TEXT, encoding="utf-8")
    for argv, as_json in ((["verify", "--fast", "--facts", facts, good], False),
                          (["verify", "--json", "--facts", facts, good], True),
                          (["capture", "--no-numerics", "--facts", facts, "-o", workdir / "out.lock"], False)):
        done = run(argv, capsys)
        if done.code == 2:
            assert_refused(done, argv, as_json=as_json)
            assert "facts.json" in done.err
        else:
            assert_clean(done, argv, as_json=as_json)
            assert key != "valid" or done.code == 0, done
    if key.startswith(("surrogate", "format", "not-", "deep", "huge", "a-lock", "nvidia", "bom")):
        assert done.code == 2


def test_a_lone_surrogate_in_a_facts_dump_names_the_field(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    facts = workdir / "facts.json"
    facts.write_text(json.dumps(FACTS["surrogate-release"]), encoding="utf-8")
    argv: list[Any] = ["capture", "--facts", facts, "-o", workdir / "out.lock"]
    line = assert_refused(run(argv, capsys), argv)
    assert line == (f"envlock: error: {facts}: platform.release: not valid Unicode text "
                    "(a lone surrogate such as \\ud800)")
    assert not (workdir / "out.lock").exists()


def test_a_variable_with_bytes_that_are_not_utf8_is_refused_by_name(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What os.environ holds for `OMP_NUM_THREADS=$'\xff'`: the byte as a lone surrogate (surrogateescape).
    monkeypatch.setenv("OMP_NUM_THREADS", "4\udcff")
    good = workdir / "good.lock"
    good.write_text(BASE_TEXT, encoding="utf-8")
    for argv in (["verify", "--fast", good], ["capture", "--no-numerics", "--no-torch", "-o", workdir / "o.lock"]):
        line = assert_refused(run(argv, capsys), argv)
        assert line == ("envlock: error: environment variable OMP_NUM_THREADS is not valid UTF-8 text (b'4\\xff'); "
                        "set it to plain text or unset it")


# --- the Python API -------------------------------------------------------------------------------------------


@needs_posix
@pytest.mark.parametrize("key", [k for k in sorted(CORPUS) if CORPUS[k].valid is False][::3])
def test_the_api_raises_only_envlock_errors_for_a_hostile_lock(key: str, workdir: Path) -> None:
    import envlock

    if CORPUS[key].content == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads any file; tests/test_faults.py meets an unreadable lock as nobody (setpriv)")
    path = make(CORPUS[key], workdir / "hostile.lock")
    with pytest.raises(EnvlockError) as info:
        envlock.verify(path)
    code, message = exit_for(info.value)
    assert code == 2 and message.isprintable()


@pytest.mark.parametrize("key", [k for k in sorted(FACTS) if not isinstance(FACTS[k], str)][::4])
def test_the_api_capture_raises_only_envlock_errors_for_hostile_facts(key: str, workdir: Path) -> None:
    import envlock

    value = FACTS[key]
    try:
        envlock.capture(workdir / "api.lock", facts=copy.deepcopy(value))
    except EnvlockError as exc:
        code, message = exit_for(exc)
        assert code == 2 and message.isprintable()


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_lock_or_one_lock_error(text: str) -> None:
    try:
        loads(text, "fuzz.lock")
    except LockError as exc:
        assert exit_for(exc)[1].isprintable()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_printable_leaves_one_line_that_says_what_was_there(text: str) -> None:
    shown = printable(text)
    assert re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]", shown) is None
    shown.encode("utf-8")  # no lone surrogate survives
    if text.isprintable() and text.isascii():
        assert shown == text


# --- degenerate commands for `envlock run` --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "says"),
    [
        pytest.param([""], "empty name", id="empty"),
        pytest.param(["  "], "empty name", id="blank"),
        pytest.param(["folder"], "is a directory", id="directory"),
        pytest.param(["./folder"], "is a directory", id="directory-path"),
        pytest.param(["./plain.txt"], "Permission denied", id="not-executable"),
        pytest.param(["tr\x00ue"], "NUL", id="nul-in-name"),
        pytest.param(["true", "a\x00b"], "argument 1 holds a NUL", id="nul-in-argument"),
        pytest.param(["no-such-command-envlock"], "command not found", id="not-found"),
        pytest.param(["no\nsuch"], "no\\nsuch: command not found", id="newline-in-name"),
        pytest.param(["/no/such/dir/cmd"], "No such file", id="missing-path"),
        pytest.param(["x" * 5000], "", id="name-too-long"),
    ],
)
def test_a_command_envlock_run_cannot_start_is_one_line_and_exit_2(
    command: list[str], says: str, workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "folder").mkdir()
    (workdir / "plain.txt").write_text("echo hi\n")
    good = workdir / "good.lock"
    good.write_text(BASE_TEXT, encoding="utf-8")
    monkeypatch.setenv("ENVLOCK_VERIFY", "off")
    argv: list[Any] = ["run", "--lock", good, "--", *command]
    line = assert_refused(run(argv, capsys), argv)
    assert says in line, line


# --- through the real console script --------------------------------------------------------------------------


@pytest.mark.slow
@needs_posix
def test_the_console_script_refuses_hostile_input_in_one_line(tmp_path: Path) -> None:
    fifo = make(CORPUS["fifo"], tmp_path / "fifo.lock")
    empty = make(CORPUS["no-targets"], tmp_path / "empty\n.lock")
    good = tmp_path / "good.lock"
    good.write_text(BASE_TEXT, encoding="utf-8")
    cases: list[list[str | Path]] = [
        ["show", fifo], ["verify", "--fast", fifo], ["verify", "--json", empty], ["diff", good, empty],
        ["run", "--lock", empty, "--", "true"],
    ]
    for argv in cases:
        done = console(*argv, cwd=tmp_path)
        assert done.returncode == 2, (argv, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, (argv, done.stderr)
    done = console("run", "--lock", good, "--", "", cwd=tmp_path, env=clean_env(ENVLOCK_VERIFY="off"))
    assert done.returncode == 2 and done.stderr.startswith("envlock: error: the command to run is an empty name")
    env = {os.fsencode(k): os.fsencode(v) for k, v in clean_env().items()}
    env[b"OMP_NUM_THREADS"] = b"\xff"
    done_b = subprocess.run([str(ENVLOCK), "verify", "--fast", str(good)], cwd=tmp_path, env=env,
                            capture_output=True, timeout=120, check=False)
    assert done_b.returncode == 2, done_b.stderr
    assert done_b.stderr.splitlines() == [b"envlock: error: environment variable OMP_NUM_THREADS is not valid "
                                          b"UTF-8 text (b'\\xff'); set it to plain text or unset it"]


def test_show_names_a_lock_whose_path_holds_a_newline_on_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workdir / "odd\nname.lock"
    path.write_text(BASE_TEXT, encoding="utf-8")
    done = run(["show", path], capsys)
    assert done.code == 0, done.err
    assert done.out.splitlines()[0].startswith(f"{workdir}/odd\\nname.lock: envlock lock, schema 1.0")

"""The verdict memo of `envlock verify --fast` (envlock.cli.verdicts): a job start that sees what the last one saw
prints the same bytes and exits with the same code without loading the lock; anything that moved is seen.

Every check runs the real command twice over: with the memo (ENVLOCK_CACHE_DIR of the test's own) and without it
(ENVLOCK_CACHE_DIR=""), and the two must agree byte for byte, whatever happened in between."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from envlock import verdicts
from envlock.probes.sizes import frame, unframe
from tests.helpers import ENVLOCK, Venv, at_a_terminal, clean_env, make_venv, run_ok
from tests.test_verify import TINY, build_wheel

pytestmark = pytest.mark.slow

#: `envlock verify ...` in a fresh interpreter through envlock.cli.main (the memo asked once the options are
#: parsed), saying on its last stderr line whether the comparison and the option parser were loaded (the comparison
#: is not when the memo answered).
PROBE = """\
import sys
import envlock.cli
try:
    envlock.cli.main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
loaded = ("envlock.compare" in sys.modules, "envlock.cli.options" in sys.modules)
sys.stderr.write("\\nCOMPARED=%s PARSED=%s" % loaded)
sys.exit(code)
"""
#: The same through the console script's entry (envlock.entry: the memo asked before anything is parsed), which
#: leaves with os._exit (as the size check's forked child does: it says nothing).
CONSOLE_PROBE = """\
import os, sys
leave, me = os._exit, os.getpid()
def report(code):
    if os.getpid() != me:
        leave(code)
    loaded = ("envlock.compare" in sys.modules, "envlock.cli.options" in sys.modules)
    sys.stderr.write("\\nCOMPARED=%s PARSED=%s" % loaded)
    sys.stderr.flush()
    leave(code)
os._exit = report
sys.argv = ["envlock", *sys.argv[1:]]
from envlock.entry import console
console()
"""
VIA = {"main": PROBE, "console": CONSOLE_PROBE}


class Run(NamedTuple):
    code: int
    stdout: str
    stderr: str
    compared: bool
    parsed: bool


class Job:
    """A job folder with a lock of a venv that holds tiny-pkg 1.0, and a cache folder of its own."""

    def __init__(self, root: Path, via: str = "main") -> None:
        self.probe = VIA[via]
        self.venv: Venv = make_venv(root / "venv")
        self.wheels = root / "wheels"
        self.pip("install", "--no-index", "--no-deps", build_wheel(self.wheels, "1.0"))
        self.work = root / "job"
        self.work.mkdir()
        self.cache = root / "cache"
        self.env: dict[str, str] = {}
        done = self.console("capture", "--no-torch", "-o", "envlock.lock")
        assert done.returncode == 0, done.stderr

    def pip(self, *args: str | Path) -> None:
        run_ok(sys.executable, "-m", "pip", "--python", self.venv.python, *args)

    def environ(self, memo: bool) -> dict[str, str]:
        return clean_env(PYTHONPATH=self.venv.site, ENVLOCK_CACHE_DIR=str(self.cache) if memo else "", **self.env)

    def console(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ENVLOCK), *args], cwd=self.work, env=self.environ(True), capture_output=True,
                              text=True, timeout=180, check=False)

    def verify(self, *args: str, memo: bool = True) -> Run:
        done = subprocess.run([sys.executable, "-c", self.probe, "verify", "--fast", *args, "envlock.lock"],
                              cwd=self.work, env=self.environ(memo), capture_output=True, text=True, timeout=180,
                              check=False)
        err, _, last = done.stderr.rpartition("\n")
        assert last.startswith("COMPARED="), done.stderr
        return Run(done.returncode, done.stdout, err, "COMPARED=True" in last, "PARSED=True" in last)

    def memos(self) -> list[Path]:
        return sorted(self.cache.glob("verdict-*")) if self.cache.is_dir() else []


@pytest.fixture(params=list(VIA))
def job(tmp_path: Path, request: pytest.FixtureRequest) -> Job:
    """A job, verified through envlock.cli.main or through the console script's entry (see VIA)."""
    return Job(tmp_path, request.param)


@pytest.fixture
def main_job(tmp_path: Path) -> Job:
    """A job verified through envlock.cli.main, for what does not depend on where the memo is asked (the tests
    that run the real console script run envlock.entry)."""
    return Job(tmp_path)


def same_as_without_memo(job: Job, *args: str) -> Run:
    """verify --fast with the memo, checked against the same verify without it; the run with the memo."""
    with_memo, without = job.verify(*args), job.verify(*args, memo=False)
    assert without.compared
    assert (with_memo.code, with_memo.stdout, with_memo.stderr) == (without.code, without.stdout, without.stderr)
    return with_memo


@pytest.mark.parametrize("args", [(), ("--json",), ("-q",), ("--strict", "--warn", f"packages.{TINY}.files")])
def test_a_second_verify_fast_answers_from_the_memo_with_the_same_bytes(job: Job, args: tuple[str, ...]) -> None:
    first = job.verify(*args)
    assert first.compared and first.code == 0 and job.memos()
    second = same_as_without_memo(job, *args)
    assert not second.compared, "the second run loaded the comparison: the memo did not answer"
    assert (second.code, second.stdout) == (first.code, first.stdout)
    if job.probe is CONSOLE_PROBE:
        assert not second.parsed, "the console script parsed the command line before the memo answered"


def test_a_mismatch_is_remembered_with_its_exit_code(job: Job) -> None:
    job.env["OMP_NUM_THREADS"] = "3"
    first = job.verify("--json")
    assert first.code == 1 and "floats.env.OMP_NUM_THREADS" in first.stdout, first
    second = same_as_without_memo(job, "--json")
    assert not second.compared and second.code == 1 and second.stdout == first.stdout


def _resize(job: Job) -> None:
    util = Path(job.venv.site, "tiny_pkg", "util.py")
    util.write_text(util.read_text(encoding="utf-8") + "# patched by hand\n", encoding="utf-8")


def _remove(job: Job) -> None:
    Path(job.venv.site, "tiny_pkg", "__init__.py").unlink()


def _upgrade(job: Job) -> None:
    job.pip("install", "--no-index", "--no-deps", "--upgrade", build_wheel(job.wheels, "2.0"))


def _set_env(job: Job) -> None:
    job.env["OMP_NUM_THREADS"] = "3"


def _track_env_in_the_lock(job: Job) -> None:
    # The variable was set all along; the lock's [policy] now tracks it (extra_env), so the facts read change.
    lock = job.work / "envlock.lock"
    text = lock.read_text(encoding="utf-8")
    assert "\n[policy]\n" in text
    lock.write_text(text.replace("\n[policy]\n", '\n[policy]\nextra_env = ["MEMO_TEST_KNOB"]\n', 1), encoding="utf-8")


def _project_policy(job: Job) -> None:
    (job.work.parent / "pyproject.toml").write_text(
        '[tool.envlock.rules]\n"floats.env.OMP_NUM_THREADS" = { rule = "exact", severity = "warn" }\n',
        encoding="utf-8")


def _under_torchrun(job: Job) -> None:
    job.env.update(TORCHELASTIC_RUN_ID="memo-test", RANK="1", WORLD_SIZE="2")


#: What may move between two job starts, and the state before it (environment variables set from the start).
MOVES: dict[str, tuple[dict[str, str], Callable[[Job], None]]] = {
    "a file resized": ({}, _resize),
    "a file removed": ({}, _remove),
    "a package upgraded": ({}, _upgrade),
    "an environment variable set": ({}, _set_env),
    "the lock's policy tracks another variable": ({"MEMO_TEST_KNOB": "1"}, _track_env_in_the_lock),
    "a pyproject.toml above the job folder": ({"OMP_NUM_THREADS": "1"}, _project_policy),
    "the job started by torchrun": ({"OMP_NUM_THREADS": "1"}, _under_torchrun),
}


@pytest.mark.parametrize("move", list(MOVES))
def test_what_moved_since_the_last_job_start_is_seen(job: Job, move: str) -> None:
    before, change = MOVES[move]
    job.env.update(before)
    job.verify("--json")
    remembered = job.verify("--json")
    assert not remembered.compared

    change(job)
    after = same_as_without_memo(job, "--json")
    assert after.compared, f"{move}: the memo answered"
    assert after.stdout != remembered.stdout, f"{move}: the report did not change"
    again = same_as_without_memo(job, "--json")
    assert not again.compared and again.stdout == after.stdout


def test_the_lock_named_by_envlock_lock_is_the_one_reported(job: Job) -> None:
    (job.work / "copy.lock").write_bytes((job.work / "envlock.lock").read_bytes())
    shown = {}
    for name in ("envlock.lock", "copy.lock", "envlock.lock", "copy.lock"):
        job.env["ENVLOCK_LOCK"] = name
        done = subprocess.run([sys.executable, "-c", job.probe, "verify", "--fast", "--json"], cwd=job.work,
                              env=job.environ(True), capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr
        shown[name] = json.loads(done.stdout)["lock"]
    assert shown == {"envlock.lock": "envlock.lock", "copy.lock": "copy.lock"}


def test_each_rank_of_a_node_keeps_a_memo_of_its_own(main_job: Job) -> None:
    # Ranks on one node can read different facts (on a GPU node, a GPU each: the GPU collector honours a per-task
    # CUDA_VISIBLE_DEVICES): one memo each, so each rank's next job start is answered rather than missing on the
    # memo another rank wrote last.
    runs = []
    for _ in range(2):
        for rank in ("0", "1"):
            main_job.env.update(LOCAL_RANK=rank, CUDA_VISIBLE_DEVICES=rank)
            runs.append(main_job.verify("--json"))
    assert len(main_job.memos()) == 2
    assert [run.compared for run in runs] == [True, True, False, False]
    assert runs[0].stdout == runs[2].stdout and runs[1].stdout == runs[3].stdout


def test_a_damaged_memo_is_ignored_and_written_again(job: Job) -> None:
    clean = job.verify()
    (memo,) = job.memos()
    good = memo.read_bytes()
    data = unframe(good)
    assert data is not None
    entry = marshal.loads(data)["entries"]
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    damaged = [b"", b"not marshal at all", good[: len(good) // 2], bytes(flipped), data,
               # Checked whole, but what it holds is not a memo (framed, so the entry's own checks are what refuse).
               *(frame(marshal.dumps(forged)) for forged in [
                   {"version": 1, "entries": {**entry, "code": "0"}},
                   {"version": 1, "entries": {**entry, "sized": [["a", "b"]]}},
                   {"version": 2, "entries": entry},
                   # Places no file system can have: a NUL, a lone surrogate (the memo is not believed, nothing breaks).
                   {"version": 1, "entries": {**entry, "sized": (("x", "/tmp/a\0b", "x.dist-info"),)}},
                   {"version": 1, "entries": {**entry, "sized": (("x", "/tmp/\ud800", "x.dist-info"),)}},
                   # A memo that says something else than what was seen is not believed: the key still has to hold.
                   {"version": 1, "entries": {**entry, "key": b"0" * 64, "stdout": "forged\n"}}]),
               # A tuple of 2**31 - 1 items in five bytes, unframed: marshal would allocate for it before it read one.
               b"(\xff\xff\xff\x7f", b"\0\0\0\0(\xff\xff\xff\x7f"]
    for bad in damaged:
        memo.write_bytes(bad)
        run = same_as_without_memo(job)
        assert run.compared and run.stdout == clean.stdout and run.code == 0
        again = unframe(memo.read_bytes())
        assert again is not None and marshal.loads(again)["entries"] == entry, "the memo was not written again"


def test_a_memo_others_could_have_written_is_not_read(main_job: Job) -> None:
    if not hasattr(os, "geteuid"):
        pytest.skip("no file owners on this platform")
    main_job.verify()
    (memo,) = main_job.memos()
    assert memo.stat().st_mode & 0o077 == 0, "the memo is written for its user only"
    assert main_job.cache.stat().st_mode & 0o077 == 0
    assert not main_job.verify().compared
    memo.chmod(0o664)
    again = same_as_without_memo(main_job)
    assert again.compared and memo.stat().st_mode & 0o077 == 0, "a group-writable memo was believed"


def test_a_closed_stdout_is_what_it_is_without_the_memo(main_job: Job) -> None:
    def closed(memo: bool) -> tuple[int, str]:
        done = subprocess.run(["bash", "-c", f'"{ENVLOCK}" verify --fast envlock.lock >&-'], cwd=main_job.work,
                              env=main_job.environ(memo), capture_output=True, text=True, timeout=180, check=False)
        return done.returncode, done.stderr

    without = closed(False)
    assert without[0] == 0 and "Traceback" not in without[1], without
    assert closed(True) == closed(True) == without


def test_a_reader_gone_before_the_report_is_what_it_is_without_the_memo(main_job: Job) -> None:
    def gone(memo: bool) -> tuple[int, str]:
        read, write = os.pipe()
        with subprocess.Popen([str(ENVLOCK), "verify", "--fast", "envlock.lock"], cwd=main_job.work,
                              env=main_job.environ(memo), stdout=write, stderr=subprocess.PIPE, text=True) as proc:
            os.close(write)
            os.close(read)  # long before the report is written: the interpreter alone takes longer to start
            _, err = proc.communicate(timeout=180)
        return proc.returncode, err

    without = gone(False)
    assert without == (2, "envlock: error: cannot write the output: Broken pipe\n"), without
    assert main_job.verify().code == 0 and not main_job.verify().compared  # the memo answers a reader that stays
    assert gone(True) == without


def test_facts_read_for_another_policy_are_not_used(main_job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    # A lock edited between the memo's reading and the verify's: the facts it read are for the old extra_env.
    from envlock.facts import collect_facts
    from envlock.verifying import VerifyOptions, examine

    for name, value in main_job.environ(False).items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(main_job.venv.site)
    monkeypatch.chdir(main_job.work)
    _track_env_in_the_lock(main_job)
    stale = collect_facts(fast=True)
    stale["env"] = {**stale["env"], "OMP_NUM_THREADS": "7"}
    for read_with, used in ((("MEMO_TEST_KNOB",), True), ((), False)):
        report = examine("envlock.lock", VerifyOptions(fast=True, collected=(read_with, stale))).report
        assert ("floats.env.OMP_NUM_THREADS" in {f.path for f in report.findings}) is used, read_with


def test_a_miss_hands_its_size_check_to_the_verify(main_job: Job, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # The memo's size check started before it knew it would miss; the verify that follows takes its answer rather
    # than sizing the same files again, and reports what a verify without the memo reports.
    import envlock.cli
    import envlock.verifying

    for name, value in main_job.environ(True).items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(main_job.venv.site)
    monkeypatch.chdir(main_job.work)

    def verify() -> tuple[int, str]:
        with pytest.raises(SystemExit) as done:
            envlock.cli.main(["verify", "--fast", "--json", "envlock.lock"])
        assert isinstance(done.value.code, int)
        return done.value.code, capsys.readouterr().out

    calls: list[object] = []
    real = envlock.verifying.size_jobs  # where the verify's own size check begins
    monkeypatch.setattr(envlock.verifying, "size_jobs", lambda packages: calls.append(packages) or real(packages))

    def without_memo() -> tuple[int, str]:
        monkeypatch.setenv("ENVLOCK_CACHE_DIR", "")
        try:
            return verify()
        finally:
            monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(main_job.cache))

    verify()
    assert len(calls) == 1 and main_job.memos()
    # A file resized: the facts are the same, so the memo's check runs to its end (and sees the file).
    _resize(main_job)
    calls.clear()
    resized = verify()
    assert calls == [], "the verify sized the files again"
    assert f"packages.{TINY}.files" in resized[1], resized
    assert without_memo() == resized and len(calls) == 1
    # A variable the facts see: the memo misses before it asks its check.
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    calls.clear()
    moved = verify()
    assert calls == [], "the verify sized the files again"
    assert "OMP_NUM_THREADS" in moved[1] and f"packages.{TINY}.files" in moved[1], moved
    assert without_memo() == moved and len(calls) == 1


class _Interrupting(types.ModuleType):
    """A module whose every name is a Ctrl-C: the interrupt lands while the memo imports it."""

    def __getattr__(self, name: str) -> object:
        raise KeyboardInterrupt


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the size check forks on Linux only")
@pytest.mark.parametrize("where", ["envlock.facts", "envlock.cli.commands"])
def test_a_ctrl_c_after_the_size_check_started_stops_its_child(main_job: Job, where: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # envlock.facts: imported by the memo after its child started; envlock.cli.commands: by the verify a miss runs.
    import envlock.cli
    import envlock.probes.sizes as sizes

    for name, value in main_job.environ(True).items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(main_job.venv.site)
    monkeypatch.chdir(main_job.work)
    with pytest.raises(SystemExit):
        envlock.cli.main(["verify", "--fast", "envlock.lock"])
    assert main_job.memos()
    children: list[int] = []
    start = sizes._start_child

    def started(work: Callable[[], dict[int, list[tuple[str, str]]]]) -> tuple[int, int] | None:
        child = start(work)
        children.extend([child[0]] if child is not None else [])
        return child

    monkeypatch.setattr(sizes, "_native", lambda: None)  # the check in Python, shared with a forked child
    monkeypatch.setattr(sizes, "_may_fork", lambda: True)
    monkeypatch.setattr(sizes.SizeCheck.__init__, "__kwdefaults__", {"parallel_from": 0})  # a child for few files
    monkeypatch.setattr(sizes, "_start_child", started)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a miss: the verify runs
    monkeypatch.setitem(sys.modules, where, _Interrupting(where))
    with pytest.raises(SystemExit) as done:
        envlock.cli.main(["verify", "--fast", "envlock.lock"])
    assert done.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert len(children) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(children[0], os.WNOHANG)  # stopped and reaped: no child left behind


def test_the_memo_is_off_where_it_cannot_hold(main_job: Job) -> None:
    main_job.cache.mkdir(exist_ok=True)
    for args in (("--deep",), ("--format", "markdown"), ("-o", "report.txt")):
        done = main_job.console("verify", "--fast", *args, "envlock.lock")
        assert done.returncode == 0, done.stdout + done.stderr
    assert main_job.memos() == []
    code, shown, _ = at_a_terminal([str(ENVLOCK), "verify", "--fast", "envlock.lock"], main_job.work,
                                   PYTHONPATH=main_job.venv.site, ENVLOCK_CACHE_DIR=str(main_job.cache))
    assert code == 0 and "OK" in shown
    assert main_job.memos() == [], "a report at a terminal is styled: it is not remembered"
    for _ in range(2):
        off = main_job.verify(memo=False)
        assert off.compared and off.code == 0
    assert main_job.memos() == []


def test_errors_are_never_remembered(job: Job) -> None:
    lock = job.work / "envlock.lock"
    text = lock.read_text(encoding="utf-8")
    lock.write_text(text.replace('version = "1.0"', 'version = "1.1"', 1), encoding="utf-8")
    for _ in range(2):
        run = same_as_without_memo(job)
        assert run.code == 2 and run.compared and "content hash" in run.stderr, run
    lock.unlink()
    missing = same_as_without_memo(job, "--json")
    assert missing.code == 2 and json.loads(missing.stdout)["error"]["kind"] == "lock"
    assert job.memos() == []


def test_envlocks_own_code_is_part_of_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "envlock"
    (package / "cli").mkdir(parents=True)
    module = package / "cli" / "verdicts.py"
    module.write_text("x = 1\n", encoding="utf-8")
    monkeypatch.setattr(verdicts, "PACKAGE", package)
    first = verdicts._code_stamp()
    module.write_text("x = 22\n", encoding="utf-8")
    assert verdicts._code_stamp() != first
    stamp = verdicts._code_stamp()
    os.utime(module, ns=(0, 0))
    assert verdicts._code_stamp() != stamp


def test_a_cores_clock_now_is_not_something_the_memo_tells_apart() -> None:
    from envlock.facts import collect_facts
    from envlock.probes.cpu import parse_cpu

    read = collect_facts(fast=True)
    info = {**read["cpu"]["cpuinfo"], **{k: "1000.0" for k in verdicts.VOLATILE_CPUINFO}}
    facts = {**read, "cpu": {**read["cpu"], "cpuinfo": info}}
    moved = {**facts, "cpu": {**facts["cpu"], "cpuinfo": {**info, **{k: "1234.5" for k in verdicts.VOLATILE_CPUINFO}}}}
    assert verdicts._facts_key(moved) == verdicts._facts_key(facts)
    assert parse_cpu(moved["cpu"]) == parse_cpu(facts["cpu"])  # no part of the lock: the memo may ignore them
    flagged = {**facts, "cpu": {**facts["cpu"], "cpuinfo": {**info, "flags": "fpu"}}}
    assert verdicts._facts_key(flagged) != verdicts._facts_key(facts)

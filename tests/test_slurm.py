"""Slurm: `srun envlock verify --distributed` without torchrun, and the Prolog gate `envlock slurm-prolog`.

The first half needs no Slurm: host lists, the derived port, where the ranks meet, what the Prolog reads and decides,
and the reason it writes. The second half runs a real one-host Slurm (munged, slurmctld, slurmd) started by
scripts/slurm-test.sh for this module and stopped after it; it is skipped when Slurm cannot be started (not root,
not installed), unless ENVLOCK_REQUIRE_SLURM=1 (CI), where that fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from envlock import slurm
from envlock.errors import EnvironmentUnavailable, UsageError
from envlock.facts import load_facts
from envlock.fleet import store
from tests.conftest import ROOT, Cli
from tests.helpers import ENVLOCK, clean_env, console, write_lock

REQUIRE = os.environ.get("ENVLOCK_REQUIRE_SLURM") == "1"
SCRIPT = ROOT / "scripts/slurm-test.sh"
#: The Python version the mismatching lock records (this machine has another).
OLD_PYTHON = "3.0.1"
#: Every variable of a launcher that could make a test join another job.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
               "TORCHELASTIC_USE_AGENT_STORE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_STEP_ID",
               "SLURM_STEPID", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_COMMENT",
               "SLURM_JOB_WORK_DIR", "SLURM_JOB_UID", "SLURM_JOB_GID", "SLURM_JOB_USER", "SLURMD_NODENAME")


@dataclass(frozen=True)
class Locks:
    good: Path  # this machine, as `envlock facts` saw it
    bad: Path  # the same, but another Python version


@pytest.fixture(scope="module")
def locks(tmp_path_factory: pytest.TempPathFactory) -> Locks:
    """A lock of this machine and one that differs from it in python.version only."""
    work = tmp_path_factory.mktemp("slurm-locks")
    done = console("facts", "--no-torch", "--no-numerics", "-o", "facts.json", cwd=work)
    assert done.returncode == 0, done.stderr
    facts = dict(load_facts(work / "facts.json"))
    good = write_lock(facts, work / "good" / "envlock.lock")
    facts["python"] = {**facts["python"], "version": OLD_PYTHON}
    bad = write_lock(facts, work / "bad" / "envlock.lock")
    return Locks(good=good, bad=bad)


@pytest.fixture(autouse=True)
def as_slurmd_runs_it(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Prolog runs in a fresh process that has imported neither torch nor numpy; a test that judges this node
    in-process against `locks` must not see the torch or numpy earlier tests loaded (`--fast` looks at what is
    loaded). The prolog's path imports neither, so nothing imports them again while they are hidden."""
    if "locks" in request.fixturenames:
        for name in ("torch", "numpy"):
            monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# --- host lists and the port ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "hosts"), [
    ("vm", ["vm"]),
    ("node[01-04,07],gpu3", ["node01", "node02", "node03", "node04", "node07", "gpu3"]),
    ("gpu3,node[8-10]", ["gpu3", "node8", "node9", "node10"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
    ("a.example.org,b[2]", ["a.example.org", "b2"]),
])
def test_a_slurm_host_list_expands_in_slurms_order(text: str, hosts: list[str]) -> None:
    assert slurm.expand_hostlist(text) == hosts
    assert slurm.first_host(text) == hosts[0]


@pytest.mark.parametrize("text", ["", "node[01-", "node01]", "node[3-1]", "node[a-b]", "n[[1]]", "a,,b", "a b"])
def test_a_broken_host_list_is_refused_not_guessed(text: str) -> None:
    with pytest.raises(ValueError):
        slurm.expand_hostlist(text)
    with pytest.raises(ValueError):
        slurm.first_host(text)


def test_the_port_is_one_per_job_step_and_stays_below_the_ephemeral_range() -> None:
    assert slurm.step_port(1234, 0) == slurm.step_port(1234, 0)  # every task of a step computes the same one
    assert slurm.step_port(1234, 0) != slurm.step_port(1234, 1)  # two steps of a job do not collide
    assert slurm.step_port(1234, 0) != slurm.step_port(1235, 0)
    steps = {slurm.step_port(77, s) for s in range(slurm.STEP_SLOTS)}
    assert len(steps) == slurm.STEP_SLOTS
    for job in (0, 1, 99_999, 4_294_967_294):
        for step in (0, 5, 4_294_967_291):
            assert 20000 <= slurm.step_port(job, step) < 32768


def _step_env(monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    values = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "4321", "SLURM_STEP_ID": "3",
              "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[05-08]", **extra}
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_an_srun_step_needs_no_master_addr_or_port(no_launcher: pytest.MonkeyPatch) -> None:
    _step_env(no_launcher)
    store.check_launcher()
    assert store.launcher_rank() == (2, 4)
    assert store.rendezvous() == ("gpu07", slurm.step_port(4321, 3))
    no_launcher.delenv("SLURM_STEP_NODELIST")
    assert store.rendezvous() == ("gpu05", slurm.step_port(4321, 3))


def test_master_addr_and_port_still_win_under_srun(no_launcher: pytest.MonkeyPatch) -> None:
    _step_env(no_launcher, MASTER_ADDR="head.example", MASTER_PORT="29511")
    assert store.rendezvous() == ("head.example", 29511)
    no_launcher.delenv("MASTER_PORT")
    assert store.rendezvous() == ("head.example", slurm.step_port(4321, 3))


def test_a_broken_node_list_names_the_variable_and_the_fix(no_launcher: pytest.MonkeyPatch) -> None:
    _step_env(no_launcher, SLURM_STEP_NODELIST="gpu[07-")
    with pytest.raises(UsageError) as info:
        store.check_launcher()
    assert str(info.value) == ("SLURM_STEP_NODELIST='gpu[07-' is not a Slurm host list ('[' without ']'): set "
                               "MASTER_ADDR (see docs/fleet.md)")


def test_without_a_step_or_a_master_the_error_names_torchrun_and_srun(no_launcher: pytest.MonkeyPatch) -> None:
    _step_env(no_launcher)
    no_launcher.delenv("SLURM_STEP_ID")  # a batch script, not an srun task: no step to meet in
    with pytest.raises(UsageError) as info:
        store.check_launcher()
    assert str(info.value) == ("--distributed needs a process group or a launcher environment: run it under "
                               "torchrun or srun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (see "
                               "docs/fleet.md)")
    # RANK/WORLD_SIZE (a plain env launch) still need both MASTER variables, even inside a Slurm step.
    _step_env(no_launcher, RANK="0", WORLD_SIZE="2")
    with pytest.raises(UsageError, match="run it under torchrun or srun"):
        store.check_launcher()


# --- the Prolog: what it reads and decides ----------------------------------------------------------------------


@pytest.mark.parametrize(("comment", "named"), [
    ("", None), ("(null)", None), ("project x", None), ("envlock:/shared/a.lock", "/shared/a.lock"),
    ("team=ml envlock:runs/envlock.lock nightly", "runs/envlock.lock"), ("envlock:", ""),
])
def test_the_job_names_its_lock_by_one_word_of_its_comment(comment: str, named: str | None) -> None:
    assert slurm.lock_named(comment) == named


class Calls:
    """A stand-in for scontrol, squeue and scancel: records each call, answers as told."""

    def __init__(self, answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.argv: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.argv.append([Path(argv[0]).name, *argv[1:]])
        return self.answers.get(Path(argv[0]).name, (0, ""))


def _prolog_env(comment: str | None, **extra: str) -> dict[str, str]:
    env = {"SLURM_JOB_ID": "77", "SLURMD_NODENAME": "n1", "SLURM_JOB_UID": "0", "SLURM_JOB_GID": "0",
           "SLURM_JOB_USER": "root", "PATH": os.environ.get("PATH", ""), **extra}
    if comment is not None:
        env["SLURM_JOB_COMMENT"] = comment
    return env


def test_no_lock_named_passes_and_touches_nothing(locks: Locks) -> None:
    calls = Calls()
    for comment in ("", "project x"):
        outcome = slurm.decide_prolog(_prolog_env(comment), run=calls)
        assert outcome == slurm.Outcome("pass")
        assert slurm.carry_out(outcome, _prolog_env(comment), run=calls) == (0, [])
    assert calls.argv == []


def test_a_matching_node_passes_quietly(locks: Locks) -> None:
    calls = Calls()
    env = _prolog_env(f"envlock:{locks.good}")
    outcome = slurm.decide_prolog(env, run=calls)
    assert (outcome.action, outcome.code) == ("pass", 0)
    assert slurm.carry_out(outcome, env, run=calls) == (0, [])
    assert calls.argv == []


def test_the_job_env_and_cpu_set_are_not_the_prologs_to_judge(locks: Locks, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "13")  # slurmd's environment, not the job's
    outcome = slurm.decide_prolog(_prolog_env(f"envlock:{locks.good}"), run=Calls())
    assert outcome.action == "pass"


def test_a_mismatch_drains_the_node_with_the_cause_as_the_reason(locks: Locks) -> None:
    calls = Calls()
    env = _prolog_env(f"envlock:{locks.bad}")
    outcome = slurm.decide_prolog(env, run=calls)
    reason = f"envlock: python.version is {sys.version.split()[0]}, was {OLD_PYTHON} (lock {locks.bad})"
    assert outcome == slurm.Outcome("drain", reason, 1, str(locks.bad))
    code, lines = slurm.carry_out(outcome, env, run=calls)
    assert code == 1
    assert calls.argv == [["scontrol", "update", "NodeName=n1", "State=DRAIN", f"Reason={reason}"]]
    assert lines == [f"envlock slurm-prolog: job 77: drained n1: {reason}"]


def test_a_relative_lock_is_the_jobs_work_dir_s(locks: Locks) -> None:
    env = _prolog_env("envlock:bad/envlock.lock", SLURM_JOB_WORK_DIR=str(locks.bad.parent.parent))
    outcome = slurm.decide_prolog(env, run=Calls())
    assert outcome.action == "drain" and outcome.lock == str(locks.bad)


@pytest.mark.parametrize(("comment", "why"), [
    ("envlock:/nonexistent/envlock.lock", "the job's lock cannot be used: /nonexistent/envlock.lock: no such lock "
     "file (run `envlock capture` to write one)"),
    ("envlock:", "the job's comment names no lock after envlock:"),
])
def test_a_lock_the_job_cannot_use_cancels_the_job_and_keeps_the_node(comment: str, why: str) -> None:
    calls = Calls()
    env = _prolog_env(comment)
    outcome = slurm.decide_prolog(env, run=calls)
    assert (outcome.action, outcome.reason, outcome.code) == ("cancel", f"envlock: {why}", 0)
    code, lines = slurm.carry_out(outcome, env, run=calls)
    assert code == 0
    assert calls.argv == [["scontrol", "update", "JobId=77", f"AdminComment=envlock: {why}"], ["scancel", "77"]]
    assert lines == [f"envlock slurm-prolog: job 77: cancelled: envlock: {why}"]


def test_a_lock_its_user_cannot_read_is_not_read_for_them(locks: Locks, tmp_path: Path) -> None:
    private = tmp_path / "private.lock"
    shutil.copy(locks.bad, private)
    private.chmod(0o600)
    if private.stat().st_uid == 12345:
        pytest.skip("the test's own user is uid 12345")
    env = _prolog_env(f"envlock:{private}", SLURM_JOB_UID="12345", SLURM_JOB_GID="12345", SLURM_JOB_USER="")
    outcome = slurm.decide_prolog(env, run=Calls())
    assert (outcome.action, outcome.reason) == ("cancel", f"envlock: the job's lock {private} is not readable by "
                                                          "its user")
    private.chmod(0o644)
    assert slurm.decide_prolog(env, run=Calls()).action == "drain"


def test_without_slurm_job_comment_the_prolog_asks_squeue(locks: Locks) -> None:
    calls = Calls({"squeue": (0, f"envlock:{locks.bad}")})
    outcome = slurm.decide_prolog(_prolog_env(None), run=calls)
    assert calls.argv == [["squeue", "--noheader", "--jobs", "77", "--format", "%k"]]
    assert outcome.action == "drain"
    calls = Calls({"squeue": (0, "(null)")})
    assert slurm.decide_prolog(_prolog_env(None), run=calls).action == "pass"
    calls = Calls({"squeue": (1, "slurm_load_jobs error: Unable to contact slurm controller")})
    outcome = slurm.decide_prolog(_prolog_env(None), run=calls)
    assert (outcome.action, outcome.code) == ("drain", 3)
    assert outcome.reason == ("envlock: cannot read the comment of job 77: slurm_load_jobs error: Unable to contact "
                              "slurm controller")


def test_when_scontrol_or_scancel_fail_the_job_still_does_not_start(locks: Locks) -> None:
    env = _prolog_env(f"envlock:{locks.bad}")
    outcome = slurm.decide_prolog(env, run=Calls())
    code, lines = slurm.carry_out(outcome, env, run=Calls({"scontrol": (1, "Invalid user id")}))
    assert code == 1 and lines[-1] == ("envlock slurm-prolog: could not set the drain reason (Invalid user id); "
                                       "Slurm drains n1 with 'Prolog error'")
    env = _prolog_env("envlock:/nonexistent.lock")
    outcome = slurm.decide_prolog(env, run=Calls())
    code, lines = slurm.carry_out(outcome, env, run=Calls({"scancel": (1, "Access/permission denied")}))
    assert code == 2 and lines[-1] == ("envlock slurm-prolog: could not cancel job 77 (Access/permission denied): "
                                       "failing the Prolog instead")


def test_the_reason_is_one_short_printable_line() -> None:
    assert slurm.reason_line("a\nb\x1b[31m") == "envlock: a\\nb\\x1b[31m"
    long = slurm.reason_line("x" * 500)
    assert len(long) == slurm.REASON_WIDTH and long.endswith("…") and "\n" not in long


def test_the_command_outside_a_prolog_is_one_line_and_exit_2(cli: Cli, no_launcher: pytest.MonkeyPatch) -> None:
    result = cli("slurm-prolog")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == ("envlock: error: envlock slurm-prolog runs as slurm.conf's Prolog, which sets "
                             "SLURM_JOB_ID; it is not set (see docs/fleet.md)\n")


def test_the_command_passes_quietly_and_dry_run_says_what_it_would_do(cli: Cli, no_launcher: pytest.MonkeyPatch,
                                                                      locks: Locks) -> None:
    no_launcher.setenv("SLURM_JOB_ID", "7")
    no_launcher.setenv("SLURMD_NODENAME", "n1")
    no_launcher.setenv("SLURM_JOB_COMMENT", "")
    result = cli("slurm-prolog")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    no_launcher.setenv("SLURM_JOB_COMMENT", f"envlock:{locks.good}")
    result = cli("slurm-prolog")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    no_launcher.chdir(locks.bad.parent.parent)
    no_launcher.setenv("SLURM_JOB_COMMENT", "envlock:bad/envlock.lock")
    result = cli("slurm-prolog", "--dry-run")
    assert result.exit_code == 1
    assert result.stdout == (f"would drain n1: envlock: python.version is {sys.version.split()[0]}, was "
                             f"{OLD_PYTHON} (lock bad/envlock.lock)\n")
    no_launcher.setenv("SLURM_JOB_COMMENT", "envlock:nowhere.lock")
    result = cli("slurm-prolog", "--dry-run")
    assert (result.exit_code, result.stdout) == (0, "would cancel job 7: envlock: the job's lock cannot be used: "
                                                 "nowhere.lock: no such lock file (run `envlock capture` to write "
                                                 "one)\n")


def test_a_node_that_cannot_be_examined_is_drained_with_exit_3(locks: Locks) -> None:
    def broken(path: Path) -> Any:
        raise EnvironmentUnavailable("the lock needs a GPU and the GPUs cannot be examined: NVML not found")

    outcome = slurm.judge(locks.good, verify=broken)
    assert outcome == slurm.Outcome("drain", "envlock: cannot examine the node: the lock needs a GPU and the GPUs "
                                             "cannot be examined: NVML not found", 3, str(locks.good))


# --- a real Slurm -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    dir: Path
    env: dict[str, str]
    node: str

    def run(self, *argv: str | Path, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in argv], env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=cwd or self.dir)

    def node_line(self) -> str:
        return self.run("scontrol", "show", "node", "-o", self.node, timeout=10).stdout

    def job_state(self, job: str) -> str:
        shown = self.run("scontrol", "show", "job", "-o", job, timeout=10).stdout
        return shown.split(" JobState=", 1)[1].split(" ", 1)[0] if " JobState=" in shown else ""


#: The states of a job that has ended.
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"ENVLOCK_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _free_base() -> int:
    """A port p where slurmctld (p), slurmd (p+1) and srun (p+10..p+200) are all free on this host."""
    for base in range(16917, 30000, 301):
        try:
            for port in (base, base + 1, base + 10):
                with socket.socket() as probe:
                    probe.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
    raise OSError("no free port range for Slurm")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A one-host Slurm started by scripts/slurm-test.sh in a temp dir, stopped (by pid) at the end."""
    if sys.platform != "linux" or os.geteuid() != 0:
        _unavailable("a real Slurm needs Linux and root (slurmd runs the jobs)")
    if not shutil.which("slurmctld") or not shutil.which("srun"):
        _unavailable("Slurm is not installed (bash scripts/slurm-test.sh install)")
    where = tmp_path_factory.mktemp("slurm")
    env = clean_env(ENVLOCK_PYTHON=sys.executable, ENVLOCK_SLURM_PORT=str(_free_base()), ENVLOCK_SLURM_WAIT="45")
    done = subprocess.run(["bash", str(SCRIPT), "start", str(where)], env=env, capture_output=True, text=True,
                          timeout=90, check=False)
    try:
        if done.returncode != 0:
            _unavailable(f"Slurm did not start: {(done.stderr or done.stdout).strip()[-400:]}")
        assert done.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={where}/slurm.conf"
        yield Cluster(where, {**env, "SLURM_CONF": str(where / "slurm.conf")}, socket.gethostname().split(".")[0])
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(where)], capture_output=True, timeout=60, check=False)


def _wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds:g} s")
        time.sleep(0.3)


@pytest.mark.slow
def test_srun_verify_distributed_without_torchrun_passes_on_a_matching_node(cluster: Cluster, locks: Locks) -> None:
    done = cluster.run("srun", "--ntasks", "3", "--time", "2", ENVLOCK, "verify", "--distributed", "--fast",
                       "--timeout", "30", locks.good, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"envlock verify --distributed: OK — 3 ranks on 1 host — {locks.good} (target " \
                       f"{lines[0].rsplit('(target ', 1)[1]}"
    assert lines[1].startswith(f"  ranks 0–2 on host {socket.gethostname()}: OK")


@pytest.mark.slow
def test_srun_names_the_rank_whose_env_differs_and_every_rank_exits_1(cluster: Cluster, locks: Locks) -> None:
    wrapper = cluster.dir / "rank1-threads.sh"
    wrapper.write_text('#!/bin/sh\nif [ "$SLURM_PROCID" = 1 ]; then export OMP_NUM_THREADS=5; fi\nexec "$@"\n')
    wrapper.chmod(0o755)
    done = cluster.run("srun", "--ntasks", "3", "--time", "2", wrapper, ENVLOCK, "verify", "--distributed", "--fast",
                       "--timeout", "30", locks.good, timeout=90)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "MISMATCH — 3 ranks on 1 host" in done.stdout.splitlines()[0]
    assert f"  rank 1 on host {socket.gethostname()}: floats.env.OMP_NUM_THREADS (unset) → 5" in done.stdout
    host = socket.gethostname()
    assert f"envlock: rank 1 ({host}): floats.env.OMP_NUM_THREADS (unset) → 5 — the fleet report is on rank 0" \
        in done.stderr.splitlines()
    assert f"srun: error: {cluster.node}: tasks 0-2: Exited with exit code 1" in done.stderr.splitlines()


@pytest.mark.slow
def test_the_prolog_drains_a_node_that_does_not_match_the_jobs_lock(cluster: Cluster, locks: Locks) -> None:
    submitted = cluster.run("sbatch", "--parsable", "--time", "1", "--comment", f"envlock:{locks.bad}",
                            "--output", cluster.dir / "bad-%j.out", "--wrap", "echo ran", timeout=20)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    try:
        _wait_for(lambda: "DRAIN" in cluster.node_line(), 30, "the node was not drained")
        reason = cluster.node_line().split(" Reason=", 1)[1]
        assert reason.startswith(f"envlock: python.version is {sys.version.split()[0]}, was {OLD_PYTHON} "
                                 f"(lock {locks.bad}) ["), reason
        output = cluster.dir / f"bad-{job}.out"  # slurmd writes the Prolog's failure there, and the job never ran
        assert "ran" not in (output.read_text(encoding="utf-8") if output.exists() else "").splitlines()
    finally:
        cluster.run("scancel", job, timeout=10)
        _resume(cluster)


def _resume(cluster: Cluster, seconds: float = 30) -> None:
    """Bring a drained node back to IDLE. RESUME again while it is drained: the Prolog drains the node with its
    reason and exits non-zero, and slurmd's own drain for that failure can land after the first RESUME (seen once in
    a full run: the node stayed drained, and the tests after this one found no node)."""
    deadline = time.monotonic() + seconds
    line = cluster.node_line()
    while "State=IDLE " not in line:
        if time.monotonic() > deadline:
            pytest.fail(f"the node did not come back within {seconds:g} s: {line}")
        if "DRAIN" in line:
            cluster.run("scontrol", "update", f"NodeName={cluster.node}", "State=RESUME", timeout=10)
        time.sleep(1)
        line = cluster.node_line()


@pytest.mark.slow
def test_a_batch_job_naming_a_matching_lock_starts_and_checks_its_ranks(cluster: Cluster, locks: Locks) -> None:
    script = cluster.dir / "job.sh"
    script.write_text(f"#!/bin/sh\n#SBATCH --ntasks=2 --time=2 --comment=envlock:{locks.good}\n"
                      f"srun {ENVLOCK} verify --distributed --fast {locks.good} || exit $?\necho trained\n")
    done = cluster.run("sbatch", "--parsable", "--output", cluster.dir / "good-%j.out", script, timeout=20)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    _wait_for(lambda: cluster.job_state(job) in FINISHED, 60, "the job did not finish")
    shown = cluster.run("scontrol", "show", "job", "-o", job, timeout=10).stdout
    output = (cluster.dir / f"good-{job}.out").read_text(encoding="utf-8")
    assert " JobState=COMPLETED " in shown and " ExitCode=0:0 " in shown, shown + output
    assert output.splitlines()[0].startswith("envlock verify --distributed: OK — 2 ranks on 1 host"), output
    assert output.splitlines()[-1] == "trained"
    assert "DRAIN" not in cluster.node_line()


@pytest.mark.slow
def test_the_prolog_cancels_a_job_whose_lock_is_missing_and_keeps_the_node(cluster: Cluster, locks: Locks) -> None:
    done = cluster.run("srun", "--time", "1", "--comment", f"envlock:{locks.good}", "echo", "ran", timeout=60)
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr
    missing = cluster.dir / "nowhere" / "envlock.lock"
    submitted = cluster.run("sbatch", "--parsable", "--time", "1", "--comment", f"envlock:{missing}",
                            "--output", cluster.dir / "missing-%j.out", "--wrap", "echo ran", timeout=20)
    job = submitted.stdout.strip().split(";")[0]
    _wait_for(lambda: cluster.job_state(job) in FINISHED, 30, "the job did not end")
    assert cluster.job_state(job) == "CANCELLED"
    shown = cluster.run("scontrol", "show", "job", "-o", job, timeout=10).stdout
    assert (f"AdminComment=envlock: the job's lock cannot be used: {missing}: no such lock file (run `envlock "
            "capture` to write one)") in shown
    assert "State=IDLE " in cluster.node_line() and "DRAIN" not in cluster.node_line()

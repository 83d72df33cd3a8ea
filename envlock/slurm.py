"""Slurm: where a job step's ranks meet, and the Prolog gate that checks a node before a job starts on it.

`srun envlock verify --distributed` needs no torchrun: the rank and world size come from SLURM_PROCID and
SLURM_NTASKS (envlock.fleet.store), the head from the step's node list (its first host: task 0 runs there under
srun's block and cyclic distributions), and the port from the job and step ids, so that every task of a step
computes the same one and two steps of a job do not meet on the same one. MASTER_ADDR and MASTER_PORT still win.

`envlock slurm-prolog` runs as slurm.conf's Prolog (as root, in slurmd's environment, before the job's first step
on the node). A job names its lock in its comment (`sbatch --comment envlock:/path/envlock.lock`; Slurm 22.05
hands the comment to the Prolog as SLURM_JOB_COMMENT). The node is verified as `verify --fast` would, less what
belongs to the job's own processes rather than the node (their env vars and CPU set: the Prolog has slurmd's);
a mismatch drains the node with the cause as the reason. A lock the job names that cannot be used is the job's
fault, not the node's: the job is cancelled with the reason as its AdminComment and the node stays in service
(else any user could drain nodes with a typo).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from envlock.errors import EnvironmentUnavailable, EnvlockError, ExitCode, UsageError, exit_for, printable
from envlock.findings import Report, clip, group
from envlock.lockfile import load
from envlock.policy import merge_policy
from envlock.verifying import VerifyOptions, evaluate, gather

#: Derived ports lie in [PORT_BASE, PORT_BASE + PORT_SPAN): above the registered services most hosts run, below
#: Linux's ephemeral range (32768-60999), so an outgoing connection never holds the port a step needs.
PORT_BASE, PORT_SPAN = 20000, 12000
#: Steps of one job get consecutive ports; a job's block of ports is this wide.
STEP_SLOTS = 64
#: The word that names the lock in a job's comment: `envlock:PATH`, anywhere among its words.
COMMENT_KEY = "envlock:"
#: What the Prolog does not judge: the job's processes set these, and the Prolog has slurmd's.
PROLOG_IGNORE = ("floats.env.*", "cpu.usable_cores")
#: The longest drain reason or AdminComment envlock writes (one line in `scontrol show node`).
REASON_WIDTH = 200
#: Where the Prolog looks for scontrol and scancel when it is run without a PATH (slurmd gives it none).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: A bound on each scontrol/squeue/scancel call: the Prolog must finish well inside PrologEpilogTimeout.
TOOL_TIMEOUT = 10.0

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


# --- host lists and ports -----------------------------------------------------------------------------------------


def _split_top(text: str) -> list[str]:
    """`text` split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for at, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError("nested brackets")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("']' without '['")
        elif char == "," and depth == 0:
            parts.append(text[start:at])
            start = at + 1
    if depth:
        raise ValueError("'[' without ']'")
    parts.append(text[start:])
    return parts


def _numbers(ranges: str) -> list[str]:
    """`01-03,7` as ["01", "02", "03", "7"]: each number as wide as the bound it counts from (Slurm's padding)."""
    out: list[str] = []
    for item in ranges.split(","):
        match = _RANGE.fullmatch(item)
        if match is None:
            raise ValueError(f"bad range {item!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"range {item!r} runs backwards")
        if int(high) - int(low) > 1_000_000:
            raise ValueError(f"range {item!r} is too long")
        out.extend(f"{n:0{len(low)}d}" for n in range(int(low), int(high) + 1))
    return out


def _hosts_of(pattern: str) -> Iterator[str]:
    """Every host one pattern (`rack[1-2]-node[01-04]`) stands for, in Slurm's order."""
    head, bracket, rest = pattern.partition("[")
    if not bracket:
        yield pattern
        return
    ranges, _, tail = rest.partition("]")
    for number in _numbers(ranges):
        for suffix in _hosts_of(tail):
            yield head + number + suffix


def expand_hostlist(text: str) -> list[str]:
    """The host names of a Slurm host list (`node[01-04,07],gpu3`), in order; ValueError when it is not one."""
    hosts: list[str] = []
    for pattern in _split_top(text.strip()):
        if not pattern or any(c.isspace() for c in pattern):
            raise ValueError(f"bad host name {pattern!r}")
        hosts.extend(_hosts_of(pattern))
    return hosts


def first_host(text: str) -> str:
    """The first host of a Slurm host list; ValueError when the list is not one (a broken list must not pass for
    its first host)."""
    patterns = _split_top(text.strip())
    if not patterns[0] or any(c.isspace() for c in patterns[0]):
        raise ValueError(f"bad host name {patterns[0]!r}")
    expand_hostlist(text)
    return next(_hosts_of(patterns[0]))


def step_port(job_id: int, step_id: int) -> int:
    """The TCP port a job step's rank 0 serves the fleet's store on: one per (job, step), the same on every task."""
    return PORT_BASE + (job_id * STEP_SLOTS + step_id % STEP_SLOTS) % PORT_SPAN


def _number(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name, "")
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{name}={printable(text[:20])!r} is not a Slurm id: set MASTER_PORT (see docs/fleet.md)")
    return int(text)


def in_step(environ: Mapping[str, str]) -> bool:
    """Whether this process is a task of a Slurm job step (srun), as far as its environment says."""
    return bool(environ.get("SLURM_JOB_ID") and (environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID")))


def head_address(environ: Mapping[str, str]) -> str:
    """The first host of the step's node list (else the job's), where task 0 runs; a UsageError naming the variable
    when there is none or it does not parse."""
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        text = environ.get(name, "")
        if text:
            try:
                return first_host(text)
            except ValueError as exc:
                raise UsageError(f"{name}={printable(clip(text, 40))!r} is not a Slurm host list ({exc}): set "
                                 "MASTER_ADDR (see docs/fleet.md)") from None
    raise UsageError("a Slurm step without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: set MASTER_ADDR "
                     "(see docs/fleet.md)")


def port_of_step(environ: Mapping[str, str]) -> int:
    """step_port() of this step's SLURM_JOB_ID and SLURM_STEP_ID."""
    step = "SLURM_STEP_ID" if environ.get("SLURM_STEP_ID") else "SLURM_STEPID"
    return step_port(_number(environ, "SLURM_JOB_ID"), _number(environ, step))


# --- the Prolog gate ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the Prolog decided: "pass" (the job may start), "drain" (the node does not match) or "cancel" (the
    job's lock cannot be used); `reason` is the one line Slurm shows; `code` the Prolog's exit status."""

    action: str
    reason: str = ""
    code: int = int(ExitCode.OK)
    lock: str = ""


def lock_named(comment: str) -> str | None:
    """The lock path a job's comment names (`envlock:PATH` among its words), or None; "" for `envlock:` alone."""
    for word in comment.split():
        if word.startswith(COMMENT_KEY):
            return word[len(COMMENT_KEY):]
    return None


def reason_line(text: str) -> str:
    """`envlock: text` as one printable line of at most REASON_WIDTH characters."""
    return clip(f"envlock: {printable(text)}", REASON_WIDTH)


def mismatch_reason(report: Report, lock: str) -> str:
    """The drain reason for a failed verify: the first error cause's headline (its path and both values), how many
    more causes there are, and the lock."""
    causes = [c for c in group(report.findings) if c.severity == "error"]
    more = f"; {len(causes) - 1} more" if len(causes) > 1 else ""
    return reason_line(f"{causes[0].headline if causes else 'mismatch'} (lock {lock}{more})")


def _readable_by(path: Path, environ: Mapping[str, str]) -> bool:
    """Whether the job's user could read `path` by its mode bits: the Prolog runs as root and must not read, for a
    job, a file its user cannot."""
    try:
        uid, gid = int(environ.get("SLURM_JOB_UID", "")), int(environ.get("SLURM_JOB_GID", ""))
    except ValueError:
        return True  # Slurm always sets both; without them there is no user to act for
    if uid == 0:
        return True
    try:
        info = path.stat()
    except OSError:
        return True  # the read that follows says why
    if info.st_mode & stat.S_IROTH or (info.st_uid == uid and info.st_mode & stat.S_IRUSR):
        return True
    if info.st_mode & stat.S_IRGRP:
        user = environ.get("SLURM_JOB_USER", "")
        try:
            groups = set(os.getgrouplist(user, gid)) if user else {gid}
        except (KeyError, OSError):
            groups = {gid}
        return info.st_gid in groups
    return False


def lock_of_job(environ: Mapping[str, str], comment: str) -> tuple[str | None, Path | None]:
    """(what the comment says, the path it names resolved against the job's work dir), or (None, None)."""
    named = lock_named(comment)
    if named is None:
        return None, None
    path = Path(named)
    if named and not path.is_absolute() and environ.get("SLURM_JOB_WORK_DIR"):
        path = Path(environ["SLURM_JOB_WORK_DIR"]) / path
    return named, path if named else None


def judge(path: Path, *, verify: Callable[[Path], Report] | None = None) -> Outcome:
    """The Prolog's decision on this node for the lock at `path`."""
    shown = str(path)
    try:
        report = (verify or verify_node)(path)
    except EnvlockError as exc:
        code, message = exit_for(exc)
        if code == ExitCode.BAD_INPUT:
            return Outcome("cancel", reason_line(f"the job's lock cannot be used: {message}"), int(ExitCode.OK),
                           shown)
        return Outcome("drain", reason_line(f"cannot examine the node: {message}"), int(code), shown)
    if report.ok:
        return Outcome("pass", lock=shown)
    return Outcome("drain", mismatch_reason(report, shown), int(ExitCode.MISMATCH), shown)


def verify_node(path: Path) -> Report:
    """`verify --fast` of this node against the lock, less PROLOG_IGNORE (the lock's own policy otherwise)."""
    lock, warnings = load(path)
    policy = merge_policy(lock.policy, None, ignore=PROLOG_IGNORE)
    observed = gather(lock, policy, VerifyOptions(fast=True))
    return evaluate(lock, observed, policy, name=str(path), notes=warnings)


Run = Callable[[Sequence[str]], tuple[int, str]]


def tool(name: str, environ: Mapping[str, str]) -> str:
    """The full path of a Slurm command (the Prolog may have no PATH), or the bare name when it is nowhere."""
    import shutil

    return shutil.which(name, path=environ.get("PATH") or DEFAULT_PATH) or shutil.which(name, path=DEFAULT_PATH) \
        or name


def run_tool(argv: Sequence[str]) -> tuple[int, str]:
    """(exit status, its output's first line) of a Slurm command, bounded by TOOL_TIMEOUT; 127 when it cannot run."""
    import subprocess

    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, f"{argv[0]}: {exc}"
    text = (done.stdout if done.returncode == 0 else done.stderr or done.stdout).strip()
    return done.returncode, text.splitlines()[0] if text else ""


def job_comment(environ: Mapping[str, str], run: Run = run_tool) -> str:
    """The job's comment: SLURM_JOB_COMMENT (Slurm 22.05 gives it to the Prolog), else what squeue says."""
    if "SLURM_JOB_COMMENT" in environ:
        return environ["SLURM_JOB_COMMENT"]
    code, text = run([tool("squeue", environ), "--noheader", "--jobs", environ["SLURM_JOB_ID"], "--format", "%k"])
    if code != 0:
        raise EnvironmentUnavailable(f"cannot read the comment of job {environ['SLURM_JOB_ID']}: {text}")
    return "" if text == "(null)" else text


def node_name(environ: Mapping[str, str]) -> str:
    """This node's Slurm name: SLURMD_NODENAME, else the short host name."""
    import socket

    return environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def decide_prolog(environ: Mapping[str, str], *, run: Run = run_tool,
                  verify: Callable[[Path], Report] | None = None) -> Outcome:
    """What the Prolog of the job in `environ` decides: pass quietly without a lock named, else judge the node."""
    job = environ.get("SLURM_JOB_ID", "")
    if not (job.isascii() and job.isdigit()):
        raise UsageError("envlock slurm-prolog runs as slurm.conf's Prolog, which sets SLURM_JOB_ID; it is "
                         f"{'not set' if not job else repr(printable(job[:20]))} (see docs/fleet.md)")
    try:
        comment = job_comment(environ, run)
    except EnvironmentUnavailable as exc:
        return Outcome("drain", reason_line(str(exc)), int(ExitCode.UNAVAILABLE))
    named, path = lock_of_job(environ, comment)
    if named is None:
        return Outcome("pass")
    if path is None:
        return Outcome("cancel", reason_line(f"the job's comment names no lock after {COMMENT_KEY}"))
    if not _readable_by(path, environ):
        return Outcome("cancel", reason_line(f"the job's lock {path} is not readable by its user"), lock=str(path))
    return judge(path, verify=verify)


def carry_out(outcome: Outcome, environ: Mapping[str, str], *, run: Run = run_tool) -> tuple[int, list[str]]:
    """Drain the node or cancel the job as `outcome` says; (the Prolog's exit status, lines for slurmd's log). A
    cancel that fails becomes a non-zero exit, so the job still does not start (Slurm drains the node then)."""
    if outcome.action == "pass":
        return outcome.code, []
    node, job = node_name(environ), environ.get("SLURM_JOB_ID", "")
    if outcome.action == "drain":
        code, text = run([tool("scontrol", environ), "update", f"NodeName={node}", "State=DRAIN",
                          f"Reason={outcome.reason}"])
        said = [f"envlock slurm-prolog: job {job}: drained {node}: {outcome.reason}"]
        if code != 0:
            said.append(f"envlock slurm-prolog: could not set the drain reason ({text}); Slurm drains {node} with "
                        "'Prolog error'")
        return outcome.code or int(ExitCode.MISMATCH), said
    noted, why = run([tool("scontrol", environ), "update", f"JobId={job}", f"AdminComment={outcome.reason}"])
    code, text = run([tool("scancel", environ), job])
    said = [f"envlock slurm-prolog: job {job}: cancelled: {outcome.reason}"]
    if noted != 0:
        said.append(f"envlock slurm-prolog: could not set the AdminComment of job {job} ({why})")
    if code != 0:
        said.append(f"envlock slurm-prolog: could not cancel job {job} ({text}): failing the Prolog instead")
        return int(ExitCode.BAD_INPUT), said
    return int(ExitCode.OK), said


def describe(outcome: Outcome, environ: Mapping[str, str]) -> str:
    """What the Prolog would do, for --dry-run."""
    if outcome.action == "pass":
        return f"would pass: job {environ.get('SLURM_JOB_ID', '')}" + (
            f" matches {outcome.lock}" if outcome.lock else " names no lock")
    if outcome.action == "drain":
        return f"would drain {node_name(environ)}: {outcome.reason}"
    return f"would cancel job {environ.get('SLURM_JOB_ID', '')}: {outcome.reason}"

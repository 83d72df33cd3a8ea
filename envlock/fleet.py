"""`envlock verify --distributed`: every rank verifies itself, the ranks compare fingerprints, rank 0 reports.

The exchange goes through torch.distributed's key-value store (the c10d TCPStore that torchrun or
`init_process_group` already runs), not through a collective: each rank writes a fixed-size fingerprint under its
own key, rank 0 gathers them against a deadline, decides, and writes one verdict back that every rank exits with.
Every wait is bounded, so a rank that died or hangs is named instead of hanging the others, and the same code runs
on CPU and GPU nodes without NCCL or a CUDA context. No process group is created, so none is left behind; the job's
process group, when there is one, lends its store.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from envlock.compare import _flatten, flatten_software, flatten_target
from envlock.errors import EnvironmentUnavailable, EnvlockError, EnvMismatchError, UsageError
from envlock.findings import ABSENT, UNSET, Finding, Report, ordered
from envlock.findings import clip as _fit
from envlock.findings import text as _text
from envlock.lockfile import default_lock_path
from envlock.model import Lock, Policy, to_dict
from envlock.policy import explicit_rule, rule_for
from envlock.verifying import Verification, VerifyOptions, examine

#: Bytes each rank writes (its fingerprint, padded) and rank 0 writes back (the verdict): constant per rank.
FINGERPRINT_BYTES = 768
VERDICT_BYTES = 512
DEFAULT_TIMEOUT = 60.0
TIMEOUT_ENV = "ENVLOCK_FLEET_TIMEOUT"
KEY_PREFIX = "envlock/fleet"
#: The policy key that makes a fleet whose ranks differ among themselves an error (exact/error) instead of a warning.
HOMOGENEOUS_KEY = "fleet.homogeneous"
#: How long rank 0 waits for the others to read the verdict before it returns (and may close a store it hosts).
ACK_WAIT = 5.0

#: Sections digested one by one, so a differing section can be named even when no summary key shows it.
SECTION_ORDER = ("python", "packages", "floats.env", "floats.torch", "cuda", "platform", "cpu", "blas", "threads",
                 "gpu", "numerics")
SECTION_DIGEST = 6
#: The values that usually differ between nodes, carried in the summary so a difference can be named (if present).
KEY_PATHS = ("python.version", "gpu.driver", "gpu.count", "gpu.devices.0.name", "cuda.runtime", "cuda.nccl",
             "cpu.microarchitecture", "threads.torch_intraop", "floats.torch.matmul_allow_tf32")
MAX_VALUE = 40


class Store(Protocol):
    """The part of torch.distributed.Store the exchange uses."""

    def set(self, key: str, value: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def add(self, key: str, value: int) -> int: ...
    def check(self, keys: list[str]) -> bool: ...
    def wait(self, keys: list[str], timeout: timedelta) -> None: ...
    def multi_get(self, keys: list[str]) -> list[bytes]: ...
    def delete_key(self, key: str) -> bool: ...


# --- one rank's fingerprint ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankSummary:
    """What one rank tells the others: who it is, its own verdict, a digest of its facts and the telling values."""

    rank: int
    host: str
    code: int
    errors: int = 0
    warnings: int = 0
    digest: str = ""
    sections: str = ""
    target: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    failing: tuple[tuple[str, str, str], ...] = ()
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"rank": self.rank, "host": self.host, "exit_code": self.code, "errors": self.errors,
                "warnings": self.warnings, "digest": self.digest, "target": self.target, "keys": dict(self.keys),
                "failing": [{"path": p, "expected": e, "actual": a} for p, e, a in self.failing],
                "message": self.message}


def _clip(text: str, width: int = MAX_VALUE) -> str:
    return _fit(text, width)


def section_of(path: str) -> str:
    """The digest section a dotted path belongs to (`floats.env.X` -> `floats.env`, `gpu.devices.0.name` -> `gpu`)."""
    head = path.split(".", 2)
    if head[0] == "floats" and len(head) > 1:
        return f"floats.{head[1]}"
    return head[0]


def comparable_values(current: Lock, policy: Policy, skipped: Iterable[str] = ()) -> dict[str, str]:
    """Dotted path -> text for every value verify compares here (ignored paths and skipped sections left out)."""
    raw = flatten_software(current)
    target = next(iter(current.targets.values()))
    raw.update(flatten_target(target))
    for name, package in current.packages.items():
        _flatten(f"packages.{name}", to_dict(package), raw)
    if target.numerics is not None:
        for kernel_id, kernel in target.numerics.kernels.items():
            _flatten(f"numerics.{kernel_id}", to_dict(kernel), raw)
    skipped = tuple(skipped)
    out = {}
    for path, value in raw.items():
        if any(path == s or path.startswith(s + ".") for s in skipped):
            continue
        if rule_for(policy, path).rule == "ignore":
            continue
        out[path] = _text(value)
    return out


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def summarize(rank: int, host: str, verification: Verification | None = None,
              error: EnvlockError | None = None) -> RankSummary:
    """This rank's summary: from its verification, or from the error that stopped its verify."""
    if verification is None:
        code = error.exit_code if error is not None else 3
        return RankSummary(rank=rank, host=_clip(host, 64), code=code,
                           message=_clip(str(error) if error is not None else "no report", 200))
    report = verification.report
    values = comparable_values(verification.observed.current, verification.policy, report.skipped)
    per_section: dict[str, dict[str, str]] = {}
    for path, value in values.items():
        per_section.setdefault(section_of(path), {})[path] = value
    sections = "".join(_sha(per_section[s])[:SECTION_DIGEST] if s in per_section else "-" * SECTION_DIGEST
                       for s in SECTION_ORDER)
    keys = {path: _clip(values[path]) for path in KEY_PATHS if path in values}
    keys.update({path: _clip(value) for path, value in values.items()
                 if path.startswith("floats.env.") and value != UNSET})
    return RankSummary(
        rank=rank, host=_clip(host, 64), code=0 if report.ok else 1,
        errors=len(report.errors), warnings=len(report.warnings),
        digest=_sha(values)[:16] if values else "", sections=sections, target=_clip(report.target), keys=keys,
        failing=tuple((_clip(f.path, 80), _clip(f.expected), _clip(f.actual)) for f in report.errors),
    )


def _pack(summary: RankSummary) -> dict[str, Any]:
    data: dict[str, Any] = {"r": summary.rank, "h": summary.host, "c": summary.code}
    optional = {"e": summary.errors, "w": summary.warnings, "d": summary.digest, "s": summary.sections,
                "t": summary.target, "k": summary.keys, "f": [list(f) for f in summary.failing],
                "m": summary.message}
    data.update({key: value for key, value in optional.items() if value})
    return data


def encode_summary(summary: RankSummary, size: int = FINGERPRINT_BYTES) -> bytes:
    """The summary as compact JSON padded to exactly `size` bytes; what does not fit is dropped, least telling first."""
    data = _pack(summary)

    def fits() -> bytes | None:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return text.ljust(size, b" ") if len(text) <= size else None

    encoded = fits()
    # Cut the failing findings to three first (the error count `e` still says how many), then the key values (env
    # vars last), then the rest of the findings.
    while encoded is None and (data.get("f") or data.get("k")):
        if len(data.get("f", ())) > 3 or (data.get("f") and not data.get("k")):
            data["f"] = data["f"][:-1]
        else:
            keys = dict(data["k"])
            keys.pop(next((k for k in keys if not k.startswith("floats.env.")), next(iter(keys))))
            data["k"] = keys
        encoded = fits()
    if encoded is None:
        data = {key: data[key] for key in ("r", "c", "e", "w", "d", "s") if key in data}
        data.update({"h": _clip(summary.host, 32), "m": _clip(summary.message, 60)})
        encoded = fits()
    if encoded is None:  # pragma: no cover - the fields left are bounded well below any sane size
        raise UsageError(f"a fleet fingerprint does not fit in {size} bytes")
    return encoded


def decode_summary(data: bytes, rank: int) -> RankSummary:
    """A rank's summary from the bytes it wrote; garbage gives a summary that says so (exit 3), never an exception."""
    try:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        return RankSummary(
            rank=int(raw.get("r", rank)), host=str(raw.get("h", "?")), code=int(raw["c"]),
            errors=int(raw.get("e", 0)), warnings=int(raw.get("w", 0)), digest=str(raw.get("d", "")),
            sections=str(raw.get("s", "")), target=str(raw.get("t", "")),
            keys={str(k): str(v) for k, v in dict(raw.get("k", {})).items()},
            failing=tuple((str(p), str(e), str(a)) for p, e, a in raw.get("f", [])),
            message=str(raw.get("m", "")),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return RankSummary(rank=rank, host="?", code=3, message="its fingerprint could not be read")


# --- grouping and rendering (pure) ------------------------------------------------------------------------------


def rank_ranges(ranks: Iterable[int]) -> str:
    """Ranks as compressed runs joined by en dashes: [0, 1, 2, 3, 5, 7, 8] -> '0-3, 5, 7-8'."""
    ordered = sorted(set(ranks))
    runs: list[str] = []
    start = prev = None
    for r in [*ordered, None]:
        if start is not None and (r is None or prev is None or r != prev + 1):
            runs.append(str(start) if start == prev else f"{start}–{prev}")
            start = None
        if r is not None and start is None:
            start = r
        prev = r
    return ", ".join(runs)


def ranks_label(ranks: Sequence[int]) -> str:
    """'rank 3' or 'ranks 0-3, 5' (en dashes)."""
    return f"rank {ranks[0]}" if len(set(ranks)) == 1 else f"ranks {rank_ranges(ranks)}"


def hosts_label(hosts: Sequence[str]) -> str:
    """'on host a', 'on hosts a, b' or 'on 12 hosts (a, b, c, …)'."""
    unique = sorted(set(hosts))
    if len(unique) == 1:
        return f"on host {unique[0]}"
    if len(unique) <= 3:
        return "on hosts " + ", ".join(unique)
    return f"on {len(unique)} hosts ({', '.join(unique[:3])}, …)"


@dataclass(frozen=True)
class RankGroup:
    """Ranks that answered the same thing: same verdict, same failing values, same fingerprint when that matters."""

    ranks: tuple[int, ...]
    hosts: tuple[str, ...]
    sample: RankSummary


@dataclass(frozen=True)
class Difference:
    """A key whose value is not the same on every rank: value -> the ranks that have it."""

    key: str
    values: dict[str, tuple[int, ...]]


def group_ranks(summaries: Iterable[RankSummary], *, by_digest: bool) -> list[RankGroup]:
    """Summaries grouped by outcome (and fingerprint when the fleet is not homogeneous), ordered by first rank."""
    groups: dict[tuple[Any, ...], list[RankSummary]] = {}
    for s in sorted(summaries, key=lambda s: s.rank):
        signature = (s.code, s.message, s.failing, s.target, s.digest if by_digest else "")
        groups.setdefault(signature, []).append(s)
    return [RankGroup(ranks=tuple(m.rank for m in members), hosts=tuple(m.host for m in members), sample=members[0])
            for members in groups.values()]


def fleet_differences(summaries: Sequence[RankSummary]) -> tuple[list[Difference], list[str]]:
    """Among ranks that verified: the summary keys that differ, and the sections that differ with no key to show it."""
    verified = [s for s in summaries if s.digest]
    if len({s.digest for s in verified}) <= 1:
        return [], []
    differences = []
    for key in sorted({k for s in verified for k in s.keys}):
        default = UNSET if key.startswith("floats.env.") else ABSENT
        values: dict[str, list[int]] = {}
        for s in verified:
            values.setdefault(s.keys.get(key, default), []).append(s.rank)
        if len(values) > 1:
            differences.append(Difference(key, {v: tuple(r) for v, r in values.items()}))
    if len({s.target for s in verified}) > 1:
        values = {}
        for s in verified:
            values.setdefault(s.target, []).append(s.rank)
        differences.append(Difference("target", {v: tuple(r) for v, r in values.items()}))
    explained = {section_of(d.key) for d in differences}
    sections = []
    for i, name in enumerate(SECTION_ORDER):
        digests = {s.sections[i * SECTION_DIGEST:(i + 1) * SECTION_DIGEST] for s in verified}
        if len(digests) > 1 and name not in explained:
            sections.append(name)
    return differences, sections


def homogeneity_severity(policy: Policy | None) -> str:
    """'error' when the policy asks for a homogeneous fleet (fleet.homogeneous exact/error), '' when it ignores it."""
    rule = explicit_rule(policy, HOMOGENEOUS_KEY) if policy is not None else None
    if rule is None:
        return "warn"
    if rule.rule == "ignore":
        return ""
    return "error" if rule.rule == "exact" and rule.severity == "error" else "warn"


def _failing_text(s: RankSummary, limit: int = 3) -> str:
    if s.code not in (0, 1):
        return f"error (exit {s.code}): {s.message}"
    shown = "; ".join(f"{p} {e} → {a}" for p, e, a in s.failing[:limit])
    more = s.errors - min(limit, len(s.failing))
    return shown + (f" (+{more} more)" if more > 0 else "") if shown else f"{s.errors} error(s)"


def _difference_text(differences: Sequence[Difference], sections: Sequence[str]) -> str:
    parts = []
    for d in differences:
        listed = "; ".join(f"{value} on {ranks_label(ranks)}" for value, ranks in d.values.items())
        parts.append(f"{d.key} ({listed})")
    parts.extend(f"{name} (differs; not in the fingerprint summary)" for name in sections)
    return ", ".join(parts)


@dataclass(frozen=True)
class Decision:
    """Rank 0's verdict on the fleet: the common exit code, a one-line summary, and its findings."""

    code: int
    line: str
    findings: tuple[Finding, ...]
    groups: tuple[RankGroup, ...]
    differences: tuple[Difference, ...] = ()
    sections: tuple[str, ...] = ()
    homogeneity: str = ""


def decide(summaries: Sequence[RankSummary], world_size: int, *, policy: Policy | None,
           timeout: float) -> Decision:
    """The fleet's verdict from the summaries that arrived (ranks absent from them never answered)."""
    answered = {s.rank for s in summaries}
    missing = [r for r in range(world_size) if r not in answered]
    differences, sections = fleet_differences(summaries)
    heterogeneous = bool(differences or sections) or len({s.digest for s in summaries if s.digest}) > 1
    severity = homogeneity_severity(policy) if heterogeneous else ""
    groups = group_ranks(summaries, by_digest=heterogeneous)
    findings: list[Finding] = []
    for g in groups:
        if g.sample.code != 0:
            findings.append(Finding(path=f"fleet.ranks.{rank_ranges(g.ranks).replace(', ', '+')}",
                                    expected="matches the lock", actual=_failing_text(g.sample),
                                    severity="error", hint=f"{ranks_label(g.ranks)} {hosts_label(g.hosts)}"))
    if missing:
        findings.append(Finding(path="fleet.ranks", expected=f"all {world_size} ranks answer",
                                actual=f"{ranks_label(missing)} never answered within {timeout:g} s",
                                severity="error", hint="a rank that died, hangs, or never ran envlock"))
    if severity:
        findings.append(Finding(path=HOMOGENEOUS_KEY, expected="one fingerprint on every rank",
                                actual=f"{len({s.digest for s in summaries if s.digest})} fingerprints",
                                severity=severity, hint=_difference_text(differences, sections)))
    code = max([s.code for s in summaries] + [3 if missing else 0, 1 if severity == "error" else 0])
    failing = [g for g in groups if g.sample.code != 0]
    parts = [f"{ranks_label(g.ranks)} {hosts_label(g.hosts)}: {_failing_text(g.sample, 1)}" for g in failing]
    if missing:
        parts.append(f"{ranks_label(missing)} never answered")
    if severity:
        keys = [d.key for d in differences] + list(sections)
        parts.append("fleet not homogeneous (" + ", ".join(keys) + ")")
    word = "OK" if code == 0 else "MISMATCH" if code == 1 else f"ERROR (exit {code})"
    line = _clip(word + (": " + "; ".join(parts) if parts else ""), 400)
    return Decision(code=code, line=line, findings=tuple(findings), groups=tuple(groups),
                    differences=tuple(differences), sections=tuple(sections), homogeneity=severity)


# --- the report ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetReport(Report):
    """A distributed verify as seen by one rank: its own findings plus the fleet's; ok when the fleet's code is 0.

    On rank 0 it holds every rank's summary and the grouping; on the others, the verdict line rank 0 sent.
    """

    rank: int = 0
    world_size: int = 1
    exit_code: int = 0
    verdict: str = ""
    timeout: float = DEFAULT_TIMEOUT
    me: RankSummary | None = None
    ranks: tuple[RankSummary, ...] = ()
    missing: tuple[int, ...] = ()
    decision: Decision | None = field(default=None, repr=False, compare=False)
    got_verdict: bool = True

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json` (rank 0's view carries every rank)."""
        data = super().to_dict()
        data.update({"ok": self.ok, "exit_code": self.exit_code, "rank": self.rank, "world_size": self.world_size,
                     "verdict": self.verdict, "missing": list(self.missing),
                     "ranks": [s.to_dict() for s in self.ranks]})
        if self.decision is not None:
            data["groups"] = [{"ranks": list(g.ranks), "hosts": sorted(set(g.hosts)), "exit_code": g.sample.code}
                              for g in self.decision.groups]
            data["differences"] = [{"key": d.key, "values": {v: list(r) for v, r in d.values.items()}}
                                   for d in self.decision.differences]
        return data


def render_fleet(report: FleetReport, *, quiet: bool = False) -> list[str]:
    """Rank 0's report as lines: the verdict, one line per group of ranks, then the fleet-wide notes."""
    decision = report.decision
    if decision is None:
        return [f"envlock verify --distributed: {report.verdict}"]
    if quiet and report.ok and not decision.homogeneity:
        return []
    hosts = {s.host for s in report.ranks}
    target = f" (target {report.target})" if report.target else ""
    lines = [f"envlock verify --distributed: {decision.line.split(':', 1)[0]} — {report.world_size} ranks on "
             f"{len(hosts)} host{'s' if len(hosts) != 1 else ''} — {report.lock}{target}"]
    differing = [d.key for d in decision.differences]
    for g in decision.groups:
        s = g.sample
        if s.code == 0:
            text = "OK" + (f" ({s.warnings} warning{'s' if s.warnings != 1 else ''})" if s.warnings else "")
        else:
            text = _failing_text(s, limit=5)
        if decision.homogeneity and s.digest:
            failing = {p for p, _, _ in s.failing}
            shown = [f"{k} {s.keys.get(k, UNSET if k.startswith('floats.env.') else ABSENT)}"
                     for k in differing if k != "target" and k not in failing]
            if s.code == 0 or shown:
                text += f" [fingerprint {s.digest[:8]}" + (": " + ", ".join(shown) if shown else "") + "]"
        if s.target and s.target != report.target:
            text += f" (target {s.target})"
        lines.append(f"  {ranks_label(g.ranks)} {hosts_label(g.hosts)}: {text}")
    if report.missing:
        lines.append(f"  {ranks_label(report.missing)}: never answered within {report.timeout:g} s")
    if decision.homogeneity:
        level = "error" if decision.homogeneity == "error" else "warning"
        advice = "" if level == "error" else (
            f'; to make this an error, add "{HOMOGENEOUS_KEY}" = {{rule = "exact", severity = "error"}} '
            "to [policy.rules]")
        lines.append(f"  {level}: the fleet is not homogeneous: "
                     f"{_difference_text(decision.differences, decision.sections)}{advice}")
    for note in report.notes:
        lines.append(f"  note (rank 0): {note}")
    return lines


def render_rank_line(report: FleetReport) -> str:
    """The one line a rank other than 0 prints (to stderr) when its own verify failed or no verdict came."""
    if not report.got_verdict:
        return f"envlock: rank {report.rank}: error: {report.verdict}"
    me = report.me
    detail = _failing_text(me) if me is not None else report.verdict
    host = f" ({me.host})" if me is not None else ""
    return f"envlock: rank {report.rank}{host}: {detail} — the fleet report is on rank 0"


# --- the store exchange ---------------------------------------------------------------------------------------------


def resolve_timeout(value: float | None) -> float:
    """The bound on every wait: the option, else $ENVLOCK_FLEET_TIMEOUT, else 60 s."""
    if value is None:
        text = os.environ.get(TIMEOUT_ENV, "")
        if not text:
            return DEFAULT_TIMEOUT
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds") from None
    if not 0 < value <= 86400:
        raise UsageError(f"--timeout {value:g}: expected seconds between 0 and 86400")
    return float(value)


@dataclass(frozen=True)
class Exchanged:
    """What one rank got back from the exchange."""

    code: int
    line: str
    severity: str
    got_verdict: bool = True
    summaries: tuple[RankSummary, ...] = ()
    missing: tuple[int, ...] = ()
    decision: Decision | None = None


def encode_verdict(code: int, line: str, severity: str, size: int = VERDICT_BYTES) -> bytes:
    """Rank 0's verdict as JSON padded to exactly `size` bytes, the line clipped to fit."""
    while True:
        text = json.dumps({"c": code, "l": line, "s": severity}, ensure_ascii=False).encode()
        if len(text) <= size:
            return text.ljust(size, b" ")
        line = _clip(line, max(1, len(line) - (len(text) - size) - 1))


def _poll(read: Callable[[], int], target: int, deadline: float) -> int:
    """Poll a counter until it reaches `target` or the deadline passes; its last value."""
    delay = 0.001
    value = read()
    while value < target and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        value = read()
    return value


def exchange(store: Store, rank: int, world_size: int, payload: bytes, timeout: float, *,
             policy: Policy | None = None, generation: str = "0") -> Exchanged:
    """Post this rank's fingerprint; rank 0 gathers (bounded), decides and posts the verdict; all read it."""
    calls = store.add(f"{KEY_PREFIX}/calls/{generation}/{rank}", 1)
    prefix = f"{KEY_PREFIX}/{generation}/{calls}"
    mine = f"{prefix}/fp/{rank}"
    store.set(mine, payload)
    store.add(f"{prefix}/arrived", 1)
    verdict_key = f"{prefix}/verdict"
    if rank != 0:
        try:
            store.wait([verdict_key], timedelta(seconds=2 * timeout))
        except RuntimeError:
            return Exchanged(code=3, line=f"no verdict from rank 0 within {2 * timeout:g} s", severity="error",
                             got_verdict=False)
        raw = json.loads(store.get(verdict_key).decode("utf-8"))
        store.add(f"{prefix}/ack", 1)
        store.delete_key(mine)
        return Exchanged(code=int(raw["c"]), line=str(raw["l"]), severity=str(raw.get("s", "")))
    deadline = time.monotonic() + timeout
    arrived = _poll(lambda: store.add(f"{prefix}/arrived", 0), world_size, deadline)
    keys = [f"{prefix}/fp/{r}" for r in range(world_size)]
    present = list(range(world_size)) if arrived >= world_size else [r for r in range(world_size)
                                                                       if store.check([keys[r]])]
    values = store.multi_get([keys[r] for r in present]) if present else []
    summaries = tuple(decode_summary(bytes(v).rstrip(b" "), r) for r, v in zip(present, values, strict=True))
    decision = decide(summaries, world_size, policy=policy, timeout=timeout)
    severity = "error" if decision.code else decision.homogeneity
    store.set(verdict_key, encode_verdict(decision.code, decision.line, severity))
    others = len(present) - (1 if 0 in present else 0)
    acked = _poll(lambda: store.add(f"{prefix}/ack", 0), others, time.monotonic() + min(timeout, ACK_WAIT))
    store.delete_key(mine)
    if acked >= world_size - 1:  # nobody can still be waiting for it
        store.delete_key(verdict_key)
    return Exchanged(code=decision.code, line=decision.line, severity=severity, summaries=summaries,
                     missing=tuple(r for r in range(world_size) if r not in present), decision=decision)


def launcher_rank() -> tuple[int, int] | None:
    """(rank, world size) from torchrun's environment (RANK, WORLD_SIZE) or Slurm's (SLURM_PROCID, SLURM_NTASKS)."""
    for rank_var, world_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if os.environ.get(rank_var) and os.environ.get(world_var):
            try:
                rank, world = int(os.environ[rank_var]), int(os.environ[world_var])
            except ValueError:
                raise UsageError(f"{rank_var}/{world_var} are not integers") from None
            if not 0 <= rank < world:
                raise UsageError(f"{rank_var}={rank} is not a rank of {world_var}={world}")
            return rank, world
    return None


def _job_group() -> Any:
    """torch.distributed when this process already has a default process group, else None (torch not imported)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def check_launcher() -> None:
    """Raise UsageError unless there is a process group or a launcher environment to join."""
    if _job_group() is not None:
        return
    if launcher_rank() is None or not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise UsageError("--distributed needs a process group or a launcher environment: run it under torchrun, "
                         "or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (see docs/fleet.md)")


@contextmanager
def joined(timeout: float) -> Iterator[tuple[Any, int, int, str]]:
    """(store, rank, world size, generation): the job's store when it has a process group, else one joined from the
    launcher's environment (torchrun's agent store, or a TCPStore rank 0 hosts), closed on exit."""
    dist = _job_group()
    generation = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if dist is not None:
        from torch.distributed import distributed_c10d

        yield distributed_c10d._get_default_store(), dist.get_rank(), dist.get_world_size(), generation
        return
    check_launcher()
    rank, world = launcher_rank() or (0, 1)
    addr, port_text = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"MASTER_PORT={port_text!r} is not a port number") from None
    try:
        import torch.distributed as torch_dist
    except ImportError as exc:
        raise EnvironmentUnavailable(f"--distributed needs torch.distributed: {exc}") from None
    # torchrun's agent already serves a store at MASTER_ADDR:MASTER_PORT; without it rank 0 serves one, and does not
    # wait for the others to connect (a missing rank must not block the report).
    host_it = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    try:
        store = torch_dist.TCPStore(  # type: ignore[attr-defined]
            addr, port, world, is_master=host_it, timeout=timedelta(seconds=timeout),
                                    wait_for_workers=False, multi_tenant=True)
    except RuntimeError as exc:
        raise EnvironmentUnavailable(f"cannot reach the job's store at {addr}:{port}: {_first_line(exc)}") from None
    try:
        yield store, rank, world, generation
    finally:
        del store


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --- the entry points ---------------------------------------------------------------------------------------------


def verify_fleet(path: str | os.PathLike[str] | None = None, options: VerifyOptions = VerifyOptions(), *,
                 timeout: float | None = None, host: str | None = None) -> FleetReport:
    """Verify this rank, exchange fingerprints with every rank, and return the fleet's verdict as this rank sees it.

    An EnvlockError in this rank's own verify is reported to the fleet (its exit code joins the verdict) rather than
    raised; only a failure to reach the other ranks raises.
    """
    bound = resolve_timeout(timeout)
    check_launcher()
    verification: Verification | None = None
    error: EnvlockError | None = None
    try:
        verification = examine(path, options)
    except EnvlockError as exc:
        error = exc
    report = verification.report if verification is not None else None
    with joined(bound) as (store, rank, world, generation):
        summary = summarize(rank, host or socket.gethostname(), verification, error)
        payload = encode_summary(summary)
        try:
            got = exchange(store, rank, world, payload, bound,
                           policy=verification.policy if verification is not None else None, generation=generation)
        except RuntimeError as exc:
            raise EnvironmentUnavailable(f"rank {rank}: the fleet exchange failed: {_first_line(exc)}") from None
    findings = list(report.findings) if report is not None else []
    if got.decision is not None:
        findings.extend(got.decision.findings)
    elif got.severity:
        findings.append(Finding(path="fleet", expected="every rank matches the lock and the others",
                                actual=got.line, severity=got.severity, hint="the fleet report is on rank 0"))
    notes = tuple(report.notes) if report is not None else (f"this rank could not verify: {error}",)
    return FleetReport(
        lock=report.lock if report is not None else str(path or default_lock_path()),
        target=report.target if report is not None else "",
        findings=ordered(findings),
        skipped=report.skipped if report is not None else (), notes=notes,
        rank=rank, world_size=world, exit_code=got.code, verdict=got.line, timeout=bound, me=summary,
        ranks=got.summaries, missing=got.missing, decision=got.decision, got_verdict=got.got_verdict,
    )


def check_fleet(path: str | os.PathLike[str] | None = None, options: VerifyOptions = VerifyOptions(), *,
                timeout: float | None = None, host: str | None = None) -> FleetReport:
    """Like verify_fleet(), but raise EnvMismatchError (exit code = the fleet's) when the fleet is not ok."""
    report = verify_fleet(path, options, timeout=timeout, host=host)
    if not report.ok:
        raise EnvMismatchError(report, report.exit_code)
    return report

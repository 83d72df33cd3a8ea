"""The fleet's verdict from the ranks' summaries: rank ranges, grouping, differences, homogeneity. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from envlock.errors import ExitCode
from envlock.findings import ABSENT, UNSET, Finding, Report, clip
from envlock.fleet.wire import DEFAULT_TIMEOUT, SECTION_DIGEST, SECTION_ORDER, RankSummary, section_of
from envlock.model import Policy
from envlock.policy import explicit_rule

#: The policy key that makes a fleet whose ranks differ among themselves an error (exact/error) instead of a warning.
HOMOGENEOUS_KEY = "fleet.homogeneous"
#: How a fleet names its members when not by rank (a Ray cluster's nodes): rank index -> (node id, IP).
Nodes = Mapping[int, tuple[str, str]]
#: The characters of a node id a label shows.
SHORT_ID = 8


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


def nodes_label(ranks: Sequence[int], nodes: Nodes) -> str:
    """'node 1a2b3c4d at 10.0.0.1', 'nodes 1a2b3c4d at 10.0.0.1, 9f8e7d6c at 10.0.0.2' or '12 nodes (…, …, …, …)'."""
    named = [f"{nodes[r][0][:SHORT_ID]} at {nodes[r][1]}" for r in sorted(set(ranks))]
    if len(named) == 1:
        return f"node {named[0]}"
    if len(named) <= 3:
        return "nodes " + ", ".join(named)
    return f"{len(named)} nodes ({', '.join(named[:3])}, …)"


def members_label(ranks: Sequence[int], hosts: Sequence[str], nodes: Nodes | None = None) -> str:
    """Who a group is: 'rank 3 on host a', 'ranks 0-3 on hosts a, b', or with `nodes` their ids and IPs."""
    return nodes_label(ranks, nodes) if nodes else f"{ranks_label(ranks)} {hosts_label(hosts)}"


def _who(ranks: Sequence[int], nodes: Nodes | None) -> str:
    return nodes_label(ranks, nodes) if nodes else ranks_label(ranks)


def _group_path(ranks: Sequence[int], nodes: Nodes | None) -> str:
    """`fleet.ranks.0-3+5`, or for nodes `fleet.nodes.1a2b3c4d+9f8e7d6c` (the first three, then how many more)."""
    if not nodes:
        return f"fleet.ranks.{rank_ranges(ranks).replace(', ', '+')}"
    ids = [nodes[r][0][:SHORT_ID] for r in sorted(set(ranks))]
    return "fleet.nodes." + "+".join(ids[:3]) + (f"+{len(ids) - 3}-more" if len(ids) > 3 else "")


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


def failing_text(s: RankSummary, limit: int = 3) -> str:
    if s.code not in (ExitCode.OK, ExitCode.MISMATCH):
        return f"error (exit {s.code}): {s.message}"
    shown = "; ".join(f"{p} {e} → {a}" for p, e, a in s.failing[:limit])
    more = s.errors - min(limit, len(s.failing))
    return shown + (f" (+{more} more)" if more > 0 else "") if shown else f"{s.errors} error(s)"


def difference_text(differences: Sequence[Difference], sections: Sequence[str], nodes: Nodes | None = None) -> str:
    parts = []
    for d in differences:
        listed = "; ".join(f"{value} on {_who(ranks, nodes)}" for value, ranks in d.values.items())
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
    #: Set when the members are nodes (a Ray cluster): rank index -> (node id, IP); labels name them by these.
    nodes: Mapping[int, tuple[str, str]] = field(default_factory=dict, compare=False)


def decide(summaries: Sequence[RankSummary], world_size: int, *, policy: Policy | None,
           timeout: float, nodes: Nodes | None = None) -> Decision:
    """The fleet's verdict from the summaries that arrived (ranks absent from them never answered); with `nodes`,
    members are named by node id and IP instead of rank and host."""
    answered = {s.rank for s in summaries}
    missing = [r for r in range(world_size) if r not in answered]
    differences, sections = fleet_differences(summaries)
    heterogeneous = bool(differences or sections) or len({s.digest for s in summaries if s.digest}) > 1
    severity = homogeneity_severity(policy) if heterogeneous else ""
    groups = group_ranks(summaries, by_digest=heterogeneous)
    findings: list[Finding] = []
    for g in groups:
        if g.sample.code != 0:
            findings.append(Finding(path=_group_path(g.ranks, nodes),
                                    expected="matches the lock", actual=failing_text(g.sample),
                                    severity="error", hint=members_label(g.ranks, g.hosts, nodes)))
    member = "node" if nodes else "rank"
    if missing:
        why = ("a node that died or hangs, or whose task could not start there" if nodes
               else "a rank that died, hangs, or never ran envlock")
        findings.append(Finding(path=f"fleet.{member}s", expected=f"all {world_size} {member}s answer",
                                actual=f"{_who(missing, nodes)} never answered within {timeout:g} s",
                                severity="error", hint=why))
    if severity:
        findings.append(Finding(path=HOMOGENEOUS_KEY, expected=f"one fingerprint on every {member}",
                                actual=f"{len({s.digest for s in summaries if s.digest})} fingerprints",
                                severity=severity, hint=difference_text(differences, sections, nodes)))
    code = max([s.code for s in summaries] + [int(ExitCode.UNAVAILABLE if missing else ExitCode.OK),
                                               int(ExitCode.MISMATCH if severity == "error" else ExitCode.OK)])
    failing = [g for g in groups if g.sample.code != 0]
    parts = [f"{members_label(g.ranks, g.hosts, nodes)}: {failing_text(g.sample, 1)}" for g in failing]
    if missing:
        parts.append(f"{_who(missing, nodes)} never answered")
    if severity:
        keys = [d.key for d in differences] + list(sections)
        parts.append("fleet not homogeneous (" + ", ".join(keys) + ")")
    word = "OK" if code == ExitCode.OK else "MISMATCH" if code == ExitCode.MISMATCH else f"ERROR (exit {code})"
    line = clip(word + (": " + "; ".join(parts) if parts else ""), 400)
    return Decision(code=code, line=line, findings=tuple(findings), groups=tuple(groups),
                    differences=tuple(differences), sections=tuple(sections), homogeneity=severity,
                    nodes=dict(nodes or {}))


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
            if self.decision.nodes:
                data["nodes"] = [{"rank": r, "node_id": node_id, "ip": ip}
                                 for r, (node_id, ip) in sorted(self.decision.nodes.items())]
        return data


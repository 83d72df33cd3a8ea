"""Rendering a verify/diff Report for people (a table) and for machines (JSON), and a fleet's report. Pure."""

from __future__ import annotations

import json
import textwrap

from envlock.findings import ABSENT, UNSET, Report
from envlock.findings import clip as _clip
from envlock.fleet.decide import (
    HOMOGENEOUS_KEY,
    FleetReport,
    difference_text,
    failing_text,
    hosts_label,
    ranks_label,
)


def render_text(report: Report, *, title: str = "verify", quiet: bool = False) -> list[str]:
    """The report as lines: a one-line verdict, then a table of findings with their hints."""
    errors, warnings = len(report.errors), len(report.warnings)
    target = f" (target {report.target})" if report.target else ""
    if report.ok:
        verdict = "OK" if not warnings else f"OK with {warnings} warning{'s' if warnings != 1 else ''}"
    else:
        verdict = f"MISMATCH: {errors} error{'s' if errors != 1 else ''}" + (
            f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else "")
    lines = [] if quiet and report.ok and not warnings else [f"envlock {title}: {verdict} — {report.lock}{target}"]
    if quiet and report.ok and not warnings:
        return lines
    for note in report.notes:
        lines.append(f"  note: {note}")
    if report.skipped:
        lines.append(f"  not checked (--fast): {', '.join(report.skipped)}")
    if not report.findings:
        return lines
    width_path = min(48, max(len(f.path) for f in report.findings))
    width_val = 24
    lines.append(f"  {'SEVERITY':<8}  {'PATH':<{width_path}}  {'EXPECTED':<{width_val}}  ACTUAL")
    for f in report.findings:
        lines.append(
            f"  {f.severity:<8}  {_clip(f.path, width_path):<{width_path}}  "
            f"{_clip(f.expected, width_val):<{width_val}}  {_clip(f.actual, 40)}"
        )
        if f.hint:
            for i, chunk in enumerate(textwrap.wrap(f.hint, 100)):
                lines.append(f"  {'':<8}  {'hint: ' if i == 0 else '      '}{chunk}")
    return lines


def render_json(report: Report) -> str:
    """The report as one JSON document."""
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


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
            text = failing_text(s, limit=5)
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
                     f"{difference_text(decision.differences, decision.sections)}{advice}")
    for note in report.notes:
        lines.append(f"  note (rank 0): {note}")
    return lines


def render_rank_line(report: FleetReport) -> str:
    """The one line a rank other than 0 prints (to stderr) when its own verify failed or no verdict came."""
    if not report.got_verdict:
        return f"envlock: rank {report.rank}: error: {report.verdict}"
    me = report.me
    detail = failing_text(me) if me is not None else report.verdict
    host = f" ({me.host})" if me is not None else ""
    return f"envlock: rank {report.rank}{host}: {detail} — the fleet report is on rank 0"

"""Rendering a verify/diff Report for people (a table) and for machines (JSON), and a fleet's report. Pure."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from typing import TYPE_CHECKING, Any

from envlock.errors import printable
from envlock.findings import ABSENT, UNSET, Report
from envlock.findings import clip as _clip

if TYPE_CHECKING:
    from envlock.fleet.decide import FleetReport

#: Findings shown under one cause before "and N more" (--json lists them all).
SHOWN = 8
WRAP = 100


def render_text(report: Report, *, title: str = "verify", quiet: bool = False) -> list[str]:
    """The report as lines: a one-line verdict naming the lock, the policy sources, then one block per root cause
    (its headline, the findings it explains, the hint of its root)."""
    errors, warnings = len(report.errors), len(report.warnings)
    if quiet and report.ok and not warnings:
        return []
    target = f" (target {report.target})" if report.target else ""
    if report.ok:
        verdict = "OK" if not warnings else f"OK with {_count(warnings, 'warning')}"
    else:
        verdict = f"MISMATCH: {_count(errors, 'error')}" + (f", {_count(warnings, 'warning')}" if warnings else "")
    causes = report.causes
    if causes and len(causes) != len(report.findings):
        verdict += f" from {_count(len(causes), 'cause')}"
    lock = f"{printable(report.lock)} → {printable(report.other)}" if report.other else printable(report.lock)
    lines = [f"envlock {title}: {verdict} — {lock}{target}"]
    if len(report.sources) > 1:  # more than the lock's own [policy] applied: say what, in order
        lines.append(f"  policy: {', then '.join(report.sources)}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    if report.skipped:
        lines.append(f"  not checked ({report.skipped_because}): {', '.join(report.skipped)}")
    if not causes:
        return lines
    width = min(58, max(len(f.path) for f in report.findings) + 2)  # consequences sit 2 deeper
    for cause in causes:
        lines.append(f"  {'error' if cause.severity == 'error' else 'warning'}: {cause.headline}")
        for i, f in enumerate(cause.findings[:SHOWN]):
            louder = "" if f.severity == cause.severity else f"  ({'error' if f.severity == 'error' else 'warning'})"
            values = f"{_clip(f.expected, 24)} → {_clip(f.actual, 40)}"
            # What follows from the root is indented under it, its values in the same column.
            indent = 4 if i < cause.roots else 6
            lines.append(f"{'':<{indent}}{_clip(f.path, width + 4 - indent):<{width + 4 - indent}}  {values}{louder}")
        if len(cause.findings) > SHOWN:
            lines.append(f"    … and {len(cause.findings) - SHOWN} more (--json lists them)")
        if cause.fix:
            lines.extend(wrap_hint(cause.fix, "    hint: ", "          "))
    return lines


def render_rich(lines: list[str], *, ok: bool, warnings: bool) -> list[Any]:
    """render_text's lines styled for a terminal (rich Text: the verdict and each cause's severity in colour, the
    paths in cyan, hints dim); the same words and layout. rich is imported only here: a clean job-start verify
    prints one plain line and never loads it."""
    from rich.text import Text

    out = []
    for i, line in enumerate(lines):
        text = Text(line)
        if i == 0:
            text.stylize("bold green" if ok and not warnings else "bold yellow" if ok else "bold red")
        elif line.startswith(("  error: ", "  warning: ")):
            colour = "red" if line.startswith("  error") else "yellow"
            text.stylize(f"bold {colour}", 2, line.index(":") + 1)
        elif line.startswith("    hint: "):
            text.stylize("dim", 4, 9)
        elif line.startswith("    ") and " → " in line:
            start = len(line) - len(line.lstrip())
            text.stylize("cyan", start, line.index(" ", start))
        out.append(text)
    return out


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def wrap_hint(hint: str, first: str, rest: str, width: int = WRAP) -> list[str]:
    """`hint` wrapped at spaces only: a `command in backticks`, a path or a package==version is never split."""
    protected = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", "\0"), hint)
    chunks = textwrap.wrap(protected, width, break_on_hyphens=False, break_long_words=False)
    return [(first if i == 0 else rest) + chunk.replace("\0", " ") for i, chunk in enumerate(chunks)]


def render(report: Report) -> list[str]:
    """Any report as the lines its command prints: a fleet's, a diff's or a verify's."""
    # A FleetReport exists only once envlock.fleet.decide is loaded: a plain verify does not load the fleet.
    decide = sys.modules.get("envlock.fleet.decide")
    if decide is not None and isinstance(report, decide.FleetReport):
        return render_fleet(report)
    return render_text(report, title="diff" if report.other else "verify")


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: Report, *, title: str = "verify") -> list[str]:
    """GitHub Actions workflow commands: one `::error` / `::warning` annotation per cause (on the lock file),
    then the verdict line as plain text."""
    lines = []
    for cause in report.causes:
        level = "error" if cause.severity == "error" else "warning"
        paths = ", ".join(cause.paths[:SHOWN]) + (f" and {len(cause.paths) - SHOWN} more"
                                                   if len(cause.paths) > SHOWN else "")
        message = f"{paths}" + (f" — {cause.fix}" if cause.fix else "")
        where = f"file={_escape_property(report.lock)},title={_escape_property('envlock: ' + cause.headline)}"
        lines.append(f"::{level} {where}::{_escape_data(message)}")
    return lines + render_text(report, title=title)[:1]


#: The test cases of a JUnit report: one per section of the lock, in this order.
JUNIT_SECTIONS = ("targets", "python", "packages", "floats", "platform", "cpu", "blas", "threads", "gpu", "cuda",
                  "numerics")


def render_junit(report: Report, *, title: str = "verify") -> str:
    """JUnit XML: one test suite, one test case per section (failed: an error finding in it; skipped: not checked;
    warnings in the case's system-out), so CI dashboards show what a job was checked against."""
    from xml.etree import ElementTree as ET  # only for --format junit

    by_section: dict[str, list[Any]] = {}
    for f in report.findings:
        by_section.setdefault(f.path.split(".")[0], []).append(f)
    sections = [s for s in JUNIT_SECTIONS if s != "targets" or s in by_section]
    sections += sorted(set(by_section) - set(sections))
    suite = ET.Element("testsuite", name=f"envlock {title}", tests=str(len(sections)))
    failures = skipped = 0
    for section in sections:
        case = ET.SubElement(suite, "testcase", classname=f"envlock.{title}", name=section)
        found = by_section.get(section, [])
        errors = [f for f in found if f.severity == "error"]
        if any(section == s or s.startswith(section + ".") for s in report.skipped) and not found:
            ET.SubElement(case, "skipped", message=f"not checked ({report.skipped_because})")
            skipped += 1
        elif errors:
            failures += 1
            failure = ET.SubElement(case, "failure", message=f"{len(errors)} mismatch(es) in {section}")
            failure.text = "\n".join(f"{f.path}: {f.expected} → {f.actual}" + (f"\n  hint: {f.hint}" if f.hint else "")
                                     for f in errors)
        warned = [f for f in found if f.severity != "error"]
        if warned:
            ET.SubElement(case, "system-out").text = "\n".join(
                f"warning: {f.path}: {f.expected} → {f.actual}" for f in warned)
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("errors", "0")
    ET.SubElement(suite, "system-out").text = "\n".join(render_text(report, title=title))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, *, title: str = "verify") -> str:
    """The report as Markdown for a pull-request comment: the verdict, then one table grouped by cause."""
    lines = [f"**{_cell(render_text(report, title=title)[0])}**", ""]
    if len(report.sources) > 1:
        lines += [f"Policy: {_cell(', then '.join(report.sources))}", ""]
    lines += [f"> note: {_cell(note)}" for note in report.notes]
    if report.skipped:
        lines += [f"Not checked ({report.skipped_because}): {', '.join(report.skipped)}", ""]
    if not report.causes:
        return "\n".join(lines).rstrip() + "\n"
    a, b = ("A", "B") if report.other else ("lock", "now")
    lines += [f"| cause | severity | path | {a} | {b} |", "|---|---|---|---|---|"]
    for cause in report.causes:
        for i, f in enumerate(cause.findings):
            head = f"**{_cell(cause.headline)}**" if i == 0 else ("↳" if i >= cause.roots else "")
            path = f"`{_cell(f.path)}`"
            lines.append(f"| {head} | {f.severity} | {path} | {_cell(f.expected)} | {_cell(f.actual)} |")
    fixes = [(c.headline, c.fix) for c in report.causes if c.fix]
    if fixes:
        lines += ["", "**Fixes**", ""] + [f"- {_cell(h)}: {_cell(fix)}" for h, fix in fixes]
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """The report as one JSON document."""
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def render_fleet(report: FleetReport, *, quiet: bool = False, title: str = "verify --distributed") -> list[str]:
    """Rank 0's report as lines: the verdict, one line per group of ranks (of nodes, for a Ray cluster), then the
    fleet-wide notes."""
    from envlock.fleet.decide import (
        HOMOGENEOUS_KEY,
        difference_text,
        failing_text,
        members_label,
        nodes_label,
        ranks_label,
    )

    decision = report.decision
    if decision is None:
        return [f"envlock {title}: {report.verdict}"]
    if quiet and report.ok and not decision.homogeneity:
        return []
    nodes = decision.nodes
    hosts = {ip for _, ip in nodes.values()} if nodes else {s.host for s in report.ranks}
    target = f" (target {report.target})" if report.target else ""
    member = "node" if nodes else "rank"
    lines = [f"envlock {title}: {decision.line.split(':', 1)[0]} — {report.world_size} {member}"
             f"{'s' if report.world_size != 1 else ''} on {len(hosts)} host{'s' if len(hosts) != 1 else ''} — "
             f"{report.lock}{target}"]
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
        lines.append(f"  {members_label(g.ranks, g.hosts, nodes)}: {text}")
    if report.missing:
        who = nodes_label(report.missing, nodes) if nodes else ranks_label(report.missing)
        lines.append(f"  {who}: never answered within {report.timeout:g} s")
    if decision.homogeneity:
        level = "error" if decision.homogeneity == "error" else "warning"
        # The advice is for a fleet that passes: a failing one has its own errors to fix first.
        advice = "" if level == "error" or not report.ok else (
            f'; to make this an error, add "{HOMOGENEOUS_KEY}" = {{rule = "exact", severity = "error"}} '
            "to [policy.rules]")
        lines.append(f"  {level}: the fleet is not homogeneous: "
                     f"{difference_text(decision.differences, decision.sections, nodes)}{advice}")
    for note in report.notes:
        lines.append(f"  note{'' if nodes else ' (rank 0)'}: {note}")
    return lines


def render_rank_line(report: FleetReport) -> str:
    """The one line a rank other than 0 prints (to stderr) when its own verify failed or no verdict came."""
    from envlock.fleet.decide import failing_text

    if not report.got_verdict:
        return f"envlock: rank {report.rank}: error: {report.verdict}"
    me = report.me
    detail = failing_text(me) if me is not None else report.verdict
    host = f" ({me.host})" if me is not None else ""
    return f"envlock: rank {report.rank}{host}: {detail} — the fleet report is on rank 0"

"""Rendering a verify/diff Report for people (a table) and for machines (JSON). Pure."""

from __future__ import annotations

import json
import textwrap

from envlock.findings import Report
from envlock.findings import clip as _clip


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

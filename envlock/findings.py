"""Findings and reports: what a comparison found, in the one order and the one text form every renderer uses.

This module imports nothing else from envlock: every floor above it may use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: How an environment variable the lock records as unset is shown.
UNSET = "(unset)"
#: How a value one side does not have is shown.
ABSENT = "(absent)"


@dataclass(frozen=True)
class Finding:
    """One mismatch: where, what the lock says, what was found, how loud, and the likely cause."""

    path: str
    expected: str
    actual: str
    severity: str
    hint: str = ""
    #: The path of the finding this one follows from, when the comparison knows it (a probe kernel that moved
    #: because the thread count did names "threads.torch"); envlock.causes groups the report by it.
    cause: str = ""

    def to_dict(self) -> dict[str, str]:
        """Plain data for JSON output."""
        return {"path": self.path, "expected": self.expected, "actual": self.actual,
                "severity": self.severity, "hint": self.hint}


def sort_key(finding: Finding) -> tuple[bool, str]:
    """Errors before warnings, then by dotted path."""
    return (finding.severity != "error", finding.path)


def ordered(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """The findings in report order (see sort_key)."""
    return tuple(sorted(findings, key=sort_key))


def text(value: Any) -> str:
    """A locked or observed value as report text: booleans as true/false, lists space-separated, None as absent."""
    if value is None:
        return ABSENT
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def clip(value: str, width: int) -> str:
    """`value` cut to `width` characters, an ellipsis marking the cut."""
    return value if len(value) <= width else value[: width - 1] + "…"


@dataclass(frozen=True)
class Report:
    """The outcome of a verify or diff: ok unless an error-severity finding was made."""

    lock: str
    target: str
    findings: tuple[Finding, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warn"]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {
            "ok": self.ok,
            "lock": self.lock,
            "target": self.target,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
            "skipped": list(self.skipped),
            "notes": list(self.notes),
        }

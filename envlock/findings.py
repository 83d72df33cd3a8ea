"""Findings, their causes and reports: what a comparison found, grouped by root cause, in the one order and the
one text form every renderer uses.

A finding names the finding it follows from in `Finding.cause` (the comparison sets it where it knows: a thread
count that moved because OMP_NUM_THREADS did, a probe kernel that drifted because the thread count did); `group`
follows each chain to its root. Roots of one family (locked packages that are missing, packages the lock does not
have, packages at other versions) make one cause with one fix. Every finding belongs to exactly one cause; a
finding with no known cause is its own.

This module imports nothing else from envlock at module top: every floor above it may use it (`str(report)` alone
reaches up, to the text renderer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    #: because the thread count did names "threads.torch"); `group` folds the report by it.
    cause: str = ""
    #: (expected, actual) as the lock and the machine hold them (numbers, booleans, None for unset or absent),
    #: for JSON; None when only the text is known.
    values: tuple[Any, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output: values keep their types, null for unset or absent."""
        want, have = self.values if self.values is not None else (typed(self.expected), typed(self.actual))
        return {"path": self.path, "expected": want, "actual": have, "severity": self.severity,
                "hint": self.hint, "cause": self.cause or None}


#: Report texts that stand for "no value".
NO_VALUE = frozenset({UNSET, ABSENT, "not installed", "not loaded"})


def typed(value: str) -> Any:
    """A report text as the JSON value it shows: None for no value, booleans, whole numbers; else the text."""
    if value in NO_VALUE:
        return None
    if value in ("true", "false"):
        return value == "true"
    if value.isascii() and value.isdigit() and len(value) < 19 and (value == "0" or not value.startswith("0")):
        return int(value)
    return value


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


#: The longest value a headline shows (the rows under it show more, --json all).
HEADLINE_VALUE = 48
#: At most this many package names in a family's headline (the fix names them all).
NAMED = 4


@dataclass(frozen=True)
class Cause:
    """One root cause: its headline, how loud it is, the findings it explains (roots first) and the fix."""

    headline: str
    severity: str
    findings: tuple[Finding, ...]
    fix: str
    roots: int = 1

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.findings]

    @property
    def consequences(self) -> tuple[Finding, ...]:
        """The findings that follow from the root(s)."""
        return self.findings[self.roots:]

    def to_dict(self) -> dict[str, object]:
        return {"cause": self.headline, "severity": self.severity, "paths": self.paths, "fix": self.fix}


def root_of(finding: Finding, by_path: dict[str, Finding]) -> Finding:
    """The finding at the end of `finding`'s cause chain: itself when it names none; in a cycle, the member with
    the first path (so every member agrees)."""
    chain = [finding]
    while chain[-1].cause and chain[-1].cause in by_path:
        following = by_path[chain[-1].cause]
        if following in chain:
            return min(chain[chain.index(following):], key=lambda f: f.path)
        chain.append(following)
    return chain[-1]


def group(findings: Iterable[Finding], *, between_locks: bool = False) -> tuple[Cause, ...]:
    """The causes of `findings`: the targets verdict first, then errors before warnings, each in path order."""
    items = list(findings)
    by_path = {f.path: f for f in items}
    under: dict[str, list[Finding]] = {}
    for finding in items:
        root = root_of(finding, by_path)
        if root is not finding:
            under.setdefault(root.path, []).append(finding)
    roots = [f for f in items if root_of(f, by_path) is f]
    families: dict[str, list[Finding]] = {}
    causes: list[Cause] = []
    for root in roots:
        family = _family(root)
        if family and not under.get(root.path):
            families.setdefault(family, []).append(root)
            continue
        explained = (root, *sorted(under.get(root.path, []), key=sort_key))
        causes.append(Cause(headline=headline(root, between_locks=between_locks), severity=_worst(explained),
                            findings=explained, fix=root.hint))
    for family, members in families.items():
        if len(members) == 1:
            root = members[0]
            causes.append(Cause(headline=headline(root, between_locks=between_locks), severity=root.severity,
                                findings=(root,), fix=root.hint))
        else:
            causes.append(_family_cause(family, sorted(members, key=sort_key), between_locks))
    return tuple(sorted(causes, key=_order))


def _order(cause: Cause) -> tuple[bool, bool, str]:
    return (cause.findings[0].path != "targets", cause.severity != "error", cause.findings[0].path)


def _worst(findings: Sequence[Finding]) -> str:
    return "error" if any(f.severity == "error" for f in findings) else "warn"


def _family(finding: Finding) -> str:
    """Which family of package findings a root belongs to ("" when none): missing, extra, version."""
    parts = finding.path.split(".")
    if parts[0] != "packages":
        return ""
    if len(parts) == 2:
        if finding.actual == "not installed":
            return "missing"
        return "extra" if finding.expected == "not installed" else ""
    if len(parts) == 3 and parts[2] == "version":
        return "version"
    return ""


def _names(findings: Sequence[Finding]) -> str:
    names = [f.path.split(".")[1] for f in findings]
    shown = ", ".join(names[:NAMED])
    return shown + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")


def _family_cause(family: str, members: list[Finding], between_locks: bool) -> Cause:
    count = len(members)
    names = _names(members)
    pins = " ".join(f"{f.path.split('.')[1]}=={f.expected}" for f in members)
    bare = " ".join(f.path.split(".")[1] for f in members)
    if family == "missing":
        if between_locks:
            text, fix = f"{count} packages of A are not in B: {names}", ""
        else:
            text, fix = (f"{count} locked packages are not installed: {names}",
                         f"install them: `pip install {pins}`, or re-capture if they were removed on purpose")
    elif family == "extra":
        if between_locks:
            text, fix = f"{count} packages of B are not in A: {names}", ""
        else:
            text, fix = (f"{count} installed packages are not in the lock: {names}",
                         f"uninstall them (`pip uninstall {bare}`), or re-capture to lock them")
    else:
        if between_locks:
            text, fix = f"{count} packages have other versions in B: {names}", ""
        else:
            text, fix = (f"{count} packages have other versions than the lock's: {names}",
                         f"install the locked versions: `pip install {pins}`, or re-capture if the change is "
                         "intended")
    return Cause(headline=text, severity=_worst(members), findings=tuple(members), fix=fix, roots=count)


def _state(value: str) -> str:
    return "unset" if value == UNSET else value


def headline(finding: Finding, *, between_locks: bool = False) -> str:
    """What changed, as one short sentence: "OMP_NUM_THREADS is 1, was unset"."""
    parts = finding.path.split(".")
    new, old = clip(finding.actual, HEADLINE_VALUE), clip(finding.expected, HEADLINE_VALUE)
    if finding.path == "targets":
        return f"this machine matches none of the lock's targets ({finding.expected.removeprefix('one of: ')})"
    if parts[0] == "packages" and len(parts) == 2:
        name = parts[1]
        if between_locks:
            return f"{name} is in A ({old}) but not in B" if new == "not installed" else (
                f"{name} is in B ({new}) but not in A")
        return f"{name} {old} is in the lock but not installed" if new == "not installed" else (
            f"{name} {new} is installed but not in the lock")
    if parts[0] == "packages" and len(parts) == 3 and parts[2] == "files":
        return (f"the installed files of {parts[1]} differ between A and B" if between_locks
                else f"the installed files of {parts[1]} differ from the locked build")
    if parts[0] == "packages" and len(parts) == 3 and parts[2] == "version":
        return f"{parts[1]} is {new} in B, {old} in A" if between_locks else f"{parts[1]} is {new}, locked {old}"
    subject = parts[2] if finding.path.startswith("floats.env.") and len(parts) == 3 else finding.path
    if between_locks:
        return f"{subject} is {_state(new)} in B, {_state(old)} in A"
    return f"{subject} is {_state(new)}, was {_state(old)}"


@dataclass(frozen=True)
class Report:
    """The outcome of a verify or diff: ok unless an error-severity finding was made."""

    lock: str
    target: str
    findings: tuple[Finding, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    #: The policy sources the findings were judged under, in the order they applied.
    sources: tuple[str, ...] = ()
    #: Why the `skipped` sections were not checked.
    skipped_because: str = "--fast"
    #: For a diff, the second lock (`lock` is the first): hints and headlines then speak of A and B.
    other: str = ""

    def __str__(self) -> str:
        """The text report, as `envlock verify` prints it."""
        from envlock.report import render  # the renderers sit a floor above (see the module's docstring)

        return "\n".join(render(self))

    @property
    def causes(self) -> tuple[Cause, ...]:
        """The findings grouped by root cause, the targets verdict first, then errors before warnings."""
        return group(self.findings, between_locks=bool(self.other))

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
            **({"other": self.other} if self.other else {}),
            "target": self.target,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "causes": [c.to_dict() for c in self.causes],
            "findings": [f.to_dict() for f in self.findings],
            "skipped": list(self.skipped),
            "notes": list(self.notes),
            "policy": list(self.sources),
        }

"""`envlock verify`: the facts found now, compared with the lock under its policy, as a Report."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envlock.compare import Comparison, Finding, compare_locks
from envlock.errors import EnvironmentUnavailable, EnvlockError, FactsError, LockError, UsageError
from envlock.model import Lock, ModelError, Policy, Rule, from_dict
from envlock.probes.gpu import nvml_unavailable

#: Sections that need torch or numpy imported; `--fast` does not look at them.
SLOW_SECTIONS = ("floats.torch", "threads", "blas", "cuda", "numerics")


class EnvMismatchError(EnvlockError):
    """Raised by `envlock.check()` when the environment does not match the lock; carries the report."""

    exit_code = 1

    def __init__(self, report: Report) -> None:
        self.report = report
        errors = [f for f in report.findings if f.severity == "error"]
        listed = "; ".join(f"{f.path}: expected {f.expected}, found {f.actual}" for f in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"environment does not match {report.lock}: {listed}{more}")


@dataclass(frozen=True)
class Report:
    """The outcome of a verify: ok unless an error-severity finding was made."""

    lock: str
    target: str
    findings: tuple[Finding, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    #: What was compared (the facts found now, as a lock, and the policy): for fleet fingerprints, not for output.
    current: Lock | None = field(default=None, repr=False, compare=False)
    policy: Policy | None = field(default=None, repr=False, compare=False)

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


def load_pyproject_policy(start: Path) -> dict[str, Any] | None:
    """`[tool.envlock]` from the nearest pyproject.toml at or above `start`, or None."""
    from envlock.lockfile import parse_toml, read_text

    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            text = read_text(candidate)
            if "envlock" not in text:
                return None  # another project's file, perhaps one envlock cannot read: none of envlock's business
            data = parse_toml(text, str(candidate))
            tool = data.get("tool", {})
            section = tool.get("envlock") if isinstance(tool, dict) else None
            if section is None:
                return None
            if not isinstance(section, dict):
                raise LockError(str(candidate), "expected a table", "tool.envlock")
            return {"file": str(candidate), "policy": section}
    return None


def effective_policy(
    lock: Lock, *, lock_path: Path | None, ignore: Iterable[str] = (), warn: Iterable[str] = ()
) -> Policy:
    """The lock's [policy], overridden by [tool.envlock] in pyproject.toml, then by --ignore / --warn."""
    rules = dict(lock.policy.rules)
    missing, extra = lock.policy.missing_packages, lock.policy.extra_packages
    start = (lock_path.resolve().parent if lock_path is not None else Path.cwd())
    found = load_pyproject_policy(start)
    if found is not None:
        try:
            extra_policy = from_dict(Policy, found["policy"], "tool.envlock")
        except ModelError as exc:
            raise LockError(found["file"], exc.message, exc.where) from None
        rules.update(extra_policy.rules)
        if "missing_packages" in found["policy"]:
            missing = extra_policy.missing_packages
        if "extra_packages" in found["policy"]:
            extra = extra_policy.extra_packages
    # Per-run options win over every file: a pattern also overrides the more specific rules it covers.
    from envlock.policy import subsumes

    overrides = [(_check_pattern(p, "--ignore"), "ignore") for p in ignore]
    overrides += [(_check_pattern(p, "--warn"), "warn") for p in warn]
    for pattern, kind in overrides:
        for key in [k for k in rules if subsumes(pattern, k)] + [pattern]:
            base = rules.get(key, Rule(rule="exact"))
            if kind == "ignore":
                rules[key] = Rule(rule="ignore", severity="warn")
            else:
                rules[key] = Rule(rule=base.rule if base.rule != "ignore" else "exact", severity="warn")
    return Policy(missing_packages=missing, extra_packages=extra, rules=rules)


def _check_pattern(pattern: str, option: str) -> str:
    import re

    from envlock.model import POLICY_KEY

    if not re.fullmatch(POLICY_KEY, pattern):
        raise UsageError(f"{option} {pattern!r}: expected a dotted path such as packages.numpy.version or cpu.*")
    return pattern


def deep_findings(facts: dict[str, Any], lock: Lock) -> list[Finding]:
    """Re-hash every installed file of every locked package against its RECORD; one finding per modified package."""
    from envlock.deep import check_record
    from envlock.probes.packages import canonical_name

    findings = []
    for item in facts.get("packages", []):
        name = canonical_name(str(item.get("name", "")))
        if name not in lock.packages or not str(item.get("metadata_dir", "")).endswith(".dist-info"):
            continue
        problems = check_record(str(item["location"]), str(item["metadata_dir"]))
        if problems:
            shown = ", ".join(f"{path} ({what})" for path, what in problems[:5])
            more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
            findings.append(Finding(
                path=f"packages.{name}.files",
                expected="files as installed (RECORD)",
                actual=f"{len(problems)} file(s) changed",
                severity="error",
                hint=f"modified inside {name}: {shown}{more}; "
                     f"pip install --force-reinstall --no-deps {name}=={lock.packages[name].version} restores it",
            ))
    return findings


def verify(
    path: str | os.PathLike[str] | None = None,
    *,
    fast: bool = False,
    deep: bool = False,
    facts: dict[str, Any] | None = None,
    facts_name: str = "",
    ignore: Iterable[str] = (),
    warn: Iterable[str] = (),
    target: str | None = None,
    init_cuda: bool = False,
) -> Report:
    """Compare this process (or recorded facts) with the lock; never exits, never prints.

    `init_cuda` lets the CUDA driver be initialised for SM counts: right for envlock's own process (the CLI),
    wrong inside a job that forks workers later, hence off for the Python API.
    """
    from envlock.capturing import build_lock
    from envlock.lockfile import default_lock_path, load

    lock_path = Path(path) if path is not None else default_lock_path()
    lock, warnings = load(lock_path)
    policy = effective_policy(lock, lock_path=lock_path, ignore=ignore, warn=warn)
    if facts is None:
        from envlock.facts import collect_facts

        current_facts = collect_facts(fast=fast, init_cuda=init_cuda)
        needs_gpu = any(t.gpu.count for t in lock.targets.values())
        broken = nvml_unavailable(current_facts.get("gpu"))
        if needs_gpu and broken:
            raise EnvironmentUnavailable(f"the lock needs a GPU and the GPUs cannot be examined: {broken}")
    else:
        current_facts = facts
    try:
        current = build_lock(current_facts, policy=lock.policy, created=lock.lock.created)
    except ModelError as exc:
        if facts_name:
            raise FactsError(facts_name, exc.message, exc.where) from None
        raise EnvlockError(f"this environment holds a value envlock cannot read: {exc}") from None
    skip: list[str] = []
    if fast and facts is None:
        skip.extend(s for s in SLOW_SECTIONS if not _loaded_for(s, current_facts))
        if "blas" not in skip:
            skip.extend(_unloaded_blas(lock))
    errors: dict[str, str] = {}
    if facts is None and not fast:
        current, errors = _with_probe(lock, current, current_facts, policy, target)
    elif (facts is None or "numerics" not in current_facts) and "numerics" not in skip:
        skip.append("numerics")
    comparison: Comparison = compare_locks(lock, current, policy=policy, skip=skip, target=target,
                                           numerics_errors=errors)
    findings = list(comparison.findings)
    if deep and facts is None:
        already = {f.path for f in findings}
        findings.extend(f for f in deep_findings(current_facts, lock) if f.path not in already)
    findings.sort(key=lambda f: (f.severity != "error", f.path))
    return Report(
        lock=str(lock_path),
        target=comparison.target,
        findings=tuple(findings),
        skipped=tuple(skip),
        notes=tuple(warnings) + comparison.notes,
        current=current,
        policy=policy,
    )


def _with_probe(lock: Lock, current: Lock, facts: dict[str, Any], policy: Policy,
                target: str | None) -> tuple[Lock, dict[str, str]]:
    """The current lock with the probe's results: the kernels the chosen target recorded, replayed here."""
    from envlock.capturing import build_lock
    from envlock.compare import choose_target
    from envlock.numerics import collect_numerics, specs_from_lock

    name, _ = choose_target(lock, current, policy, (), target)
    recorded = lock.targets[name].numerics
    if recorded is None or not recorded.kernels:
        return current, {}
    raw = collect_numerics(specs_from_lock(recorded.kernels))
    errors = {key: str(item["error"]) for key, item in raw["kernels"].items() if "error" in item}
    return build_lock({**facts, "numerics": raw}, policy=lock.policy, created=lock.lock.created), errors


def _unloaded_blas(lock: Lock) -> list[str]:
    """BLAS paths that belong to numpy or torch when the process has not imported it (verify --fast)."""
    import sys

    out = []
    for target in lock.targets.values():
        for library in target.blas.libraries:
            owner = library.id.split("-")[0]
            if owner in ("numpy", "torch") and owner not in sys.modules:
                out.append(f"blas.libraries.{library.id}")
    if "torch" not in sys.modules:
        out += ["blas.torch_blas", "blas.torch_blas_version", "blas.torch_cpu_capability"]
    return sorted(set(out))


def _loaded_for(section: str, facts: dict[str, Any]) -> bool:
    if section == "blas":
        return "blas" in facts
    return "torch" in facts


def check(path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Report:
    """Like verify(), but raise EnvMismatchError when the report is not ok."""
    report = verify(path, **kwargs)
    if not report.ok:
        raise EnvMismatchError(report)
    return report


def diff(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str]) -> Report:
    """Compare two locks with the same engine: A is what is expected, B what is found."""
    from envlock.lockfile import load

    lock_a, warnings_a = load(path_a)
    lock_b, warnings_b = load(path_b)
    findings: list[Finding] = []
    notes = list(warnings_a) + list(warnings_b)
    names = sorted(set(lock_a.targets) & set(lock_b.targets))
    if not names:
        # Different machines: compare the first target of each.
        pairs = [(sorted(lock_a.targets)[0], sorted(lock_b.targets)[0])]
        notes.append(f"no target in common; compared {pairs[0][0]} with {pairs[0][1]}")
    else:
        pairs = [(n, n) for n in names]
    for name in sorted(set(lock_a.targets) ^ set(lock_b.targets)):
        if names:
            side = "A" if name in lock_a.targets else "B"
            findings.append(Finding(path=f"targets.{name}", expected="present" if side == "A" else "absent",
                                    actual="present" if side == "B" else "absent", severity="warn",
                                    hint=f"target {name} is only in lock {side}"))
    seen: set[str] = set()
    for name_a, name_b in pairs:
        b_view = dataclasses.replace(lock_b, targets={name_b: lock_b.targets[name_b]})
        comparison = compare_locks(lock_a, b_view, target=name_a)
        for finding in comparison.findings:
            if finding.path not in seen:
                seen.add(finding.path)
                findings.append(finding)
    findings.sort(key=lambda f: (f.severity != "error", f.path))
    return Report(lock=f"{path_a} → {path_b}", target=", ".join(a for a, _ in pairs),
                  findings=tuple(findings), notes=tuple(notes))


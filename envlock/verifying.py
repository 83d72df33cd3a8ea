"""`envlock verify`: gather() reads the machine and process, evaluate() judges what it saw against the lock.

evaluate() is pure (a lock, what was observed and a policy in, a Report out), so every rule can be tested without
files; examine() is the one path through that loads the lock, merges the policy, gathers and evaluates.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envlock.capturing import build_lock
from envlock.compare import choose_target, compare_locks, flatten_software, flatten_target, modified_findings
from envlock.deep import FileCheck, check_files, record_checks
from envlock.errors import EnvironmentUnavailable, EnvlockError, EnvMismatchError, FactsError, UsageError
from envlock.facts import collect_facts
from envlock.findings import UNSET, Finding, Report, ordered
from envlock.launcher import TORCHRUN_OMP_DEFAULT, detect, torchrun_omp_hint
from envlock.lockfile import default_lock_path, find_project_policy, load
from envlock.model import (
    BlasLibrary,
    CpuSection,
    CudaSection,
    GpuDevice,
    GpuSection,
    Lock,
    MigInstance,
    ModelError,
    Package,
    Policy,
)
from envlock.policy import DEFAULT_RULES, merge_policy, rule_for, unmatched
from envlock.probes.gpu import nvml_unavailable
from envlock.probes.numerics import collect_numerics, specs_from_lock
from envlock.probes.numerics.fingerprint import replay_fingerprints
from envlock.probes.packages import canonical_name
from envlock.probes.shadowing import Shadow, find_shadowed
from envlock.probes.sizes import SizeCheck, by_name, size_jobs
from envlock.progress import bar

#: Sections that need torch or numpy imported; `--fast` does not look at them.
SLOW_SECTIONS = ("floats.torch", "threads", "blas", "cuda", "numerics")


@dataclass(frozen=True)
class VerifyOptions:
    """How to verify: what to look at, which policy overrides apply, and which target to compare with.

    `facts` verifies a recorded machine instead of this one (`facts_name` names its files in errors). `init_cuda`
    lets the CUDA driver be initialised for SM counts: right for envlock's own process (the CLI), wrong inside a
    job that forks workers later, hence off for the Python API.
    """

    fast: bool = False
    deep: bool = False
    facts: Mapping[str, Any] | None = None
    facts_name: str = ""
    ignore: tuple[str, ...] = ()
    warn: tuple[str, ...] = ()
    target: str | None = None
    init_cuda: bool = False
    #: Draw progress on stderr for long work (`--deep`); the CLI sets it for a person at a terminal.
    progress: bool = False
    #: Facts already read from this machine for this verify, with the extra env vars they were read with (the
    #: CLI's verdict memo reads them first, see envlock.verdicts): used instead of reading again when the lock's
    #: `[policy] extra_env` is those (a lock edited in between is read for afresh). Not `facts`, which are a
    #: recorded machine's.
    collected: tuple[tuple[str, ...], Mapping[str, Any]] | None = None
    #: The file-size check already under way for some packages (the verdict memo's, which missed): called with the
    #: packages this verify sizes, it gives their changed files when it was started for exactly those, else None
    #: (and the check is sized here).
    sizing: Callable[[tuple[tuple[str, str, str], ...]], Mapping[str, tuple[tuple[str, str], ...]] | None] | None = None


@dataclass(frozen=True)
class Observed:
    """What gather() saw: the facts as a lock, the sections it did not look at, probe kernels that failed to run
    (kernel id -> why), and for --deep the files changed inside each locked package (name -> (file, what))."""

    current: Lock
    skipped: tuple[str, ...] = ()
    numerics_errors: Mapping[str, str] = field(default_factory=dict)
    modified: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    skipped_because: str = "--fast"
    #: The launcher that started this process ("torchrun", "slurm"; "" for none or recorded facts).
    launcher: str = ""
    #: `modified` comes from re-hashing every file (--deep) rather than from comparing their sizes.
    deep: bool = False
    #: CUDA libraries loaded from outside the nvidia-* wheel installed for them (probes.cuda.find_shadowed).
    shadowed: tuple[Shadow, ...] = ()
    #: The raw facts `current` was made from.
    facts: Mapping[str, Any] = field(default_factory=dict)
    #: The packages the file-size check looked at (see sized_packages); empty for --deep and recorded facts.
    sized: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Verification:
    """One verify in full: the report, what it was made from, and the policy it was judged under (fleet uses all)."""

    report: Report
    observed: Observed
    policy: Policy
    lock: Lock


def gather(lock: Lock, policy: Policy, options: VerifyOptions = VerifyOptions()) -> Observed:
    """Read this machine and process (or take the recorded facts) as the lock needs them; all of verify's I/O."""
    recorded = options.facts is not None
    if options.facts is None:
        if options.collected is not None and tuple(options.collected[0]) == tuple(lock.policy.extra_env):
            facts = dict(options.collected[1])
        else:
            facts = collect_facts(fast=options.fast, init_cuda=options.init_cuda, extra_env=lock.policy.extra_env)
        broken = nvml_unavailable(facts.get("gpu"))
        if broken and any(t.gpu.count for t in lock.targets.values()):
            raise EnvironmentUnavailable(f"the lock needs a GPU and the GPUs cannot be examined: {broken}")
    else:
        facts = dict(options.facts)
    current = _as_lock(facts, lock, options.facts_name)
    skip: list[str] = []
    if options.fast and not recorded:
        skip.extend(s for s in SLOW_SECTIONS if not _loaded_for(s, facts))
        if "blas" not in skip:
            skip.extend(_unloaded_blas(lock))
    sized: tuple[tuple[str, str, str], ...] = ()
    started: Mapping[str, tuple[tuple[str, str], ...]] | None = None
    check: tuple[list[str], SizeCheck] | None = None
    if not recorded and not options.deep:
        # The size check begins before the probe, whose kernels it overlaps (its threads, or its forked child, stat
        # meanwhile); it reads only the packages, which the probe does not change.
        sized = sized_packages(facts, lock, current, policy)
        started = options.sizing(sized) if options.sizing is not None else None
        if started is None:
            names, jobs = size_jobs(sized)
            check = (names, SizeCheck(jobs))
    errors: dict[str, str] = {}
    try:
        if not recorded and not options.fast:
            current, errors = _with_probe(lock, current, facts, policy, options.target)
        elif (not recorded or "numerics" not in facts) and "numerics" not in skip:
            skip.append("numerics")
    except BaseException:
        if check is not None:
            check[1].cancel()
        raise
    if recorded:
        modified: dict[str, tuple[tuple[str, str], ...]] = {}
    elif options.deep:
        modified = modified_files(facts, lock, progress=options.progress)
    elif check is not None:
        modified = by_name(check[0], check[1].result())
    else:
        modified = dict(started or {})
    started_by = detect() if not recorded else None
    return Observed(current=current, skipped=tuple(skip), numerics_errors=errors, modified=modified,
                    skipped_because="not in the recorded facts" if recorded else "--fast",
                    launcher=started_by.name if started_by is not None else "", deep=options.deep and not recorded,
                    shadowed=find_shadowed(facts.get("cuda"), facts.get("packages")), facts=facts, sized=sized)


def evaluate(lock: Lock, observed: Observed, policy: Policy, *, target: str | None = None, name: str = "",
             notes: Iterable[str] = (), sources: Iterable[str] = ()) -> Report:
    """The report on what was observed, judged against the lock under the policy. Pure."""
    comparison = compare_locks(lock, observed.current, policy=policy, skip=observed.skipped, target=target,
                               numerics_errors=dict(observed.numerics_errors), shadowed=observed.shadowed)
    findings = [_for_launcher(f, observed.launcher) for f in comparison.findings]
    already = {f.path for f in findings}
    findings.extend(f for f in modified_findings(observed.modified, lock, policy, deep=observed.deep)
                    if f.path not in already)
    findings.extend(unrecorded_fingerprints(lock, comparison.target, policy))
    return Report(lock=name, target=comparison.target, findings=ordered(findings), skipped=observed.skipped,
                  notes=tuple(notes) + comparison.notes, sources=tuple(sources),
                  skipped_because=observed.skipped_because)


def unrecorded_fingerprints(lock: Lock, target: str, policy: Policy) -> list[Finding]:
    """A warning when the lock's `[policy] fingerprints` names a callable the target has no result of (added by
    hand after the capture): verify replays only what capture recorded, so it would silently not be checked."""
    numerics = lock.targets[target].numerics if target in lock.targets else None
    recorded = {result.source for result in numerics.fingerprints.values()} if numerics is not None else set()
    missing = [source for source in lock.policy.fingerprints if source not in recorded]
    rule = rule_for(policy, "numerics.fingerprints")
    if not missing or rule.rule == "ignore":
        return []
    return [Finding(path="numerics.fingerprints", expected="recorded by `envlock capture`",
                    actual=f"{', '.join(missing)} not recorded", severity="warn",
                    hint=f"[policy] fingerprints names {', '.join(missing)}, which this lock has no result of (added "
                         "after the capture?): verify checks only what capture recorded, so run `envlock capture` "
                         "again to record it")]


def _for_launcher(finding: Finding, launcher: str) -> Finding:
    """The finding with advice that fits the launcher: torchrun's OMP_NUM_THREADS default named as the cause."""
    if (launcher == "torchrun" and finding.path == "floats.env.OMP_NUM_THREADS" and finding.expected == UNSET
            and finding.actual == TORCHRUN_OMP_DEFAULT):
        return dataclasses.replace(finding, hint=torchrun_omp_hint())
    if launcher == "slurm" and not finding.cause and finding.path in SLURM_CPU_PATHS:
        return dataclasses.replace(finding, hint=f"{finding.hint}; {SLURM_CPUS}" if finding.hint else SLURM_CPUS)
    return finding


#: What a Slurm task's CPU set decides, and why it may differ from the capture's.
SLURM_CPU_PATHS = frozenset({"cpu.usable_cores", "threads.torch_intraop", "threads.torch_interop"})
SLURM_CPUS = ("this is a Slurm task: it runs on the CPUs srun gives it (`--cpus-per-task`), so capture under srun "
              "with the job's `--cpus-per-task`, or pin the thread counts with `export OMP_NUM_THREADS=N`")


def examine(path: str | os.PathLike[str] | None = None, options: VerifyOptions = VerifyOptions()) -> Verification:
    """Load the lock, merge its policy with pyproject.toml's and the options', gather and evaluate."""
    lock_path = Path(path) if path is not None else default_lock_path()
    lock, warnings = load(lock_path)
    project = find_project_policy()
    policy = merge_policy(lock.policy, project, ignore=options.ignore, warn=options.warn)
    observed = gather(lock, policy, options)
    check_rules(lock, observed.current, lock_path, project, options)
    report = evaluate(lock, observed, policy, target=options.target, name=str(lock_path), notes=warnings,
                      sources=policy_sources(lock_path, project, options))
    return Verification(report=report, observed=observed, policy=policy, lock=lock)


#: Paths a report can have that no single field of a lock flattens to.
REPORT_ONLY = ("targets", "floats.torch", "gpu.driver_for_cuda", "cuda.kernels.*", "cuda.shadowed.*",
               "numerics.fingerprints",
               "fleet.homogeneous")


def possible_paths(*locks: Lock) -> set[str]:
    """Every dotted path a report on these locks can have: their fields (packages and env vars by name), the
    GPU and BLAS fields of any device or library (`*` for its index or id), and the report's own paths."""
    out: set[str] = set(REPORT_ONLY)
    for lock in locks:
        out.update(flatten_software(lock))
        out.update(f"floats.env.{name}" for name in lock.floats.env)
        for name in lock.packages:
            out.add(f"packages.{name}")
            out.update(f"packages.{name}.{f.name}" for f in dataclasses.fields(Package))
        for target in lock.targets.values():
            out.update(flatten_target(target))
            if target.numerics is not None:
                out.update(f"numerics.{key}" for key in target.numerics.kernels)
                out.update(f"numerics.fingerprints.{name}" for name in target.numerics.fingerprints)
    out.update(f"gpu.{f.name}" for f in dataclasses.fields(GpuSection) if f.name != "devices")
    out.update(f"gpu.devices.*.{f.name}" for f in dataclasses.fields(GpuDevice) if f.name != "mig_instances")
    out.add("gpu.devices.*.mig_instances.*")
    out.update(f"gpu.devices.*.mig_instances.*.{f.name}" for f in dataclasses.fields(MigInstance))
    out.add("blas.libraries.*")
    out.update(f"blas.libraries.*.{f.name}" for f in dataclasses.fields(BlasLibrary) if f.name != "id")
    out.update(f"cuda.{f.name}" for f in dataclasses.fields(CudaSection))
    out.update(f"cpu.{f.name}" for f in dataclasses.fields(CpuSection))
    return out


def check_rules(lock: Lock, current: Lock, lock_path: Path, project: tuple[str, Mapping[str, Any]] | None,
                options: VerifyOptions) -> None:
    """A UsageError for the first pattern the user wrote (--ignore, --warn, a [tool.envlock] or hand-written
    [policy] rule) that matches no path the lock or this report can have: a rule that would do nothing."""
    written: list[tuple[str, str]] = [(p, f"--ignore {p!r}") for p in options.ignore]
    written += [(p, f"--warn {p!r}") for p in options.warn]
    if project is not None:
        rules = project[1].get("rules")
        if isinstance(rules, Mapping):
            written += [(str(k), f"{project[0]}: [tool.envlock.rules] {k!r}") for k in rules]
    written += [(k, f"{lock_path}: [policy.rules] {k!r}") for k in lock.policy.rules if k not in DEFAULT_RULES]
    if not written:
        return
    misses = dict(unmatched([p for p, _ in written], possible_paths(lock, current)))
    for pattern, where in written:
        if pattern in misses:
            near = misses[pattern]
            hint = f"; nearest: {', '.join(near)}" if near else ""
            raise UsageError(f"{where} matches nothing this lock or this machine has{hint} "
                             "(`envlock show` lists the sections)")


def policy_sources(lock_path: Path, project: tuple[str, Mapping[str, Any]] | None,
                   options: VerifyOptions) -> tuple[str, ...]:
    """The policy sources a verify used, in the order they apply: the lock's [policy], a pyproject.toml's
    [tool.envlock], the command line's patterns."""
    out = [f"{lock_path} [policy]"]
    if project is not None:
        out.append(f"{project[0]} [tool.envlock]")
    out.extend(f"--ignore {p}" for p in options.ignore)
    out.extend(f"--warn {p}" for p in options.warn)
    return tuple(out)


def verify(
    path: str | os.PathLike[str] | None = None,
    *,
    fast: bool = False,
    deep: bool = False,
    facts: Mapping[str, Any] | None = None,
    facts_name: str = "",
    ignore: Iterable[str] = (),
    warn: Iterable[str] = (),
    target: str | None = None,
    init_cuda: bool = False,
) -> Report:
    """Compare this process (or recorded facts) with the lock; never exits, never prints (see VerifyOptions)."""
    options = VerifyOptions(fast=fast, deep=deep, facts=facts, facts_name=facts_name, ignore=tuple(ignore),
                            warn=tuple(warn), target=target, init_cuda=init_cuda)
    return examine(path, options).report


def check(path: str | os.PathLike[str] | None = None, **options: Any) -> Report:
    """Like verify(), but raise EnvMismatchError when the report is not ok."""
    report = verify(path, **options)
    if not report.ok:
        raise EnvMismatchError(report)
    return report


def modified_files(facts: Mapping[str, Any], lock: Lock, *,
                   progress: bool = False) -> dict[str, tuple[tuple[str, str], ...]]:
    """Re-hash every installed file of every locked package against its RECORD, on every core: package ->
    (file, what) changed. `progress`: draw a bar on stderr (see envlock.progress)."""
    checks: list[FileCheck] = []
    out: dict[str, list[tuple[str, str]]] = {}
    for item in facts.get("packages", []):
        name = canonical_name(str(item.get("name", "")))
        if name not in lock.packages or not str(item.get("metadata_dir", "")).endswith(".dist-info"):
            continue
        found, problems = record_checks(name, str(item["location"]), str(item["metadata_dir"]))
        checks.extend(found)
        if problems:
            out[name] = problems
    with bar("re-hashing installed files", sum(c.size for c in checks), enabled=progress, unit="B") as advance:
        for name, problems in check_files(checks, on_bytes=advance).items():
            out.setdefault(name, []).extend(problems)
    return {name: tuple(problems) for name, problems in sorted(out.items())}


def sized_packages(facts: Mapping[str, Any], lock: Lock, current: Lock,
                   policy: Policy) -> tuple[tuple[str, str, str], ...]:
    """The (name, location, dist-info folder) of every locked package whose files the size check compares: its
    RECORD is as locked (one whose RECORD itself changed is left to the `packages.<name>.files` finding), it is
    installed as a .dist-info, and the policy does not ignore its files."""
    items = []
    for item in facts.get("packages", []):
        name = canonical_name(str(item.get("name", "")))
        want, have = lock.packages.get(name), current.packages.get(name)
        if (want is None or have is None or not want.files or want.files != have.files
                or not str(item.get("metadata_dir", "")).endswith(".dist-info")
                or rule_for(policy, f"packages.{name}.files").rule == "ignore"):
            continue
        items.append((name, str(item["location"]), str(item["metadata_dir"])))
    return tuple(items)


def _as_lock(facts: dict[str, Any], lock: Lock, facts_name: str) -> Lock:
    try:
        return build_lock(facts, policy=lock.policy, created=lock.lock.created)
    except ModelError as exc:
        if facts_name:
            raise FactsError(facts_name, exc.message, exc.where) from None
        raise EnvlockError(f"this environment holds a value envlock cannot read: {exc}") from None


def _with_probe(lock: Lock, current: Lock, facts: dict[str, Any], policy: Policy,
                target: str | None) -> tuple[Lock, dict[str, str]]:
    """The current lock with the probe's results: the kernels the chosen target recorded, replayed here."""
    name, _ = choose_target(lock, current, policy, (), target)
    recorded = lock.targets[name].numerics
    if recorded is None or not (recorded.kernels or recorded.fingerprints):
        return current, {}
    raw = collect_numerics(specs_from_lock(recorded.kernels))
    if recorded.fingerprints:
        raw["fingerprints"] = replay_fingerprints(recorded.fingerprints)
    errors = {key: str(item["error"]) for key, item in raw["kernels"].items() if "error" in item}
    return build_lock({**facts, "numerics": raw}, policy=lock.policy, created=lock.lock.created), errors


def _unloaded_blas(lock: Lock) -> list[str]:
    """BLAS paths that belong to numpy or torch when the process has not imported it (verify --fast)."""
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


def diff(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str]) -> Report:
    """Compare two locks with the same engine: A is what is expected, B what is found."""
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
        comparison = compare_locks(lock_a, b_view, target=name_a, between_locks=True)
        for finding in comparison.findings:
            if finding.path not in seen:
                seen.add(finding.path)
                findings.append(finding)
    return Report(lock=str(path_a), other=str(path_b), target=", ".join(a for a, _ in pairs),
                  findings=ordered(findings), notes=tuple(notes), sources=(f"{path_a} [policy]",))

"""compare(expected, actual, policy) -> findings. Pure: two locks in, a list of mismatches out.

Both sides are flattened to dotted paths (`packages.numpy.version`, `floats.env.OMP_NUM_THREADS`,
`blas.libraries.numpy-openblas.architecture`); the policy decides, per path, how values are compared and how
loud a difference is; `envlock.compare.hints` explains each difference.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envlock.compare.hints import NO_TORCH, code, hint_for
from envlock.compare.links import link_causes
from envlock.compare.lockdiff import between_hint
from envlock.compare.numerics import compare_numerics
from envlock.errors import UsageError
from envlock.findings import ABSENT, UNSET, Finding, ordered, text
from envlock.model import Lock, Package, Policy, Rule, Target, to_dict
from envlock.policy import explicit_rule, rule_for
from envlock.probes.coretype import coretype_verdict
from envlock.probes.cpu import older_answer
from envlock.probes.cuda import kernels_for
from envlock.probes.shadowing import Shadow

#: Sections a caller may leave out of the comparison (`--fast` leaves out those that need torch or numpy).
SECTIONS = ("python", "packages", "floats.env", "floats.torch", "platform", "cpu", "blas", "threads", "gpu")


@dataclass(frozen=True)
class Comparison:
    """The findings of one comparison, and the sections it did not look at."""
    findings: tuple[Finding, ...]
    skipped: tuple[str, ...] = ()
    target: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == "warn")


def _flatten(prefix: str, data: Any, out: dict[str, Any]) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _flatten(f"{prefix}.{key}" if prefix else key, value, out)
    else:
        out[prefix] = data


def flatten_software(lock: Lock) -> dict[str, Any]:
    """Dotted path -> value for the software sections (python, floats), env vars as value-or-unset."""
    out: dict[str, Any] = {}
    _flatten("python", to_dict(lock.python), out)
    for name, var in lock.floats.env.items():
        out[f"floats.env.{name}"] = var.value if var.set else UNSET
    if lock.floats.torch is not None:
        _flatten("floats.torch", to_dict(lock.floats.torch), out)
    if lock.cuda is not None:
        _flatten("cuda", to_dict(lock.cuda), out)
    return out


def flatten_target(target: Target) -> dict[str, Any]:
    """Dotted path -> value for one hardware target; BLAS libraries keyed by their id."""
    out: dict[str, Any] = {}
    data = to_dict(target)
    blas = data.get("blas", {})
    libraries = blas.pop("libraries", [])
    devices = data.get("gpu", {}).pop("devices", [])
    data.pop("numerics", None)  # compared kernel by kernel, see envlock.compare.numerics
    for section, values in data.items():
        _flatten(section, values, out)
    for lib in libraries:
        lib_id = lib.pop("id")
        out[f"blas.libraries.{lib_id}"] = "loaded"
        for key, value in lib.items():
            out[f"blas.libraries.{lib_id}.{key}"] = value
    for device in devices:
        prefix = f"gpu.devices.{device.pop('index')}"
        for instance in device.pop("mig_instances", []):
            name = f"{prefix}.mig_instances.gi{instance.pop('gpu_instance_id')}-ci{instance.pop('compute_instance_id')}"
            out[name] = "present"
            for key, value in instance.items():
                if key != "uuid":
                    out[f"{name}.{key}"] = value
        for key, value in device.items():
            if key not in AUDIT_ONLY:
                out[f"{prefix}.{key}"] = value
    return out


#: Recorded for the audit trail, never compared.
AUDIT_ONLY = frozenset({"uuid", "serial"})


def _version_key(text: str) -> Any:
    from packaging.version import InvalidVersion, Version

    try:
        return (0, Version(text))
    except InvalidVersion:
        # ASCII digits only (str.isdigit() passes "²" and "٣", which int() refuses or misreads), and few of them;
        # mixed parts compare as text, so (int, str) never meet in one position.
        return (1, tuple((0, int(p), "") if _DIGITS.fullmatch(p) else (1, 0, p) for p in re.split(r"[.+-]", text)))


_DIGITS = re.compile(r"[0-9]{1,18}")


def _major_minor(value: Any) -> list[str]:
    return str(value).split("+")[0].split(".")[:2]


def satisfies(rule: Rule, expected: Any, actual: Any) -> bool:
    """Whether `actual` passes `rule` against `expected`."""
    if rule.rule == "ignore":
        return True
    if rule.rule == "min" and expected is None:
        return True  # the lock asks for nothing here: anything is at least that
    if rule.rule == "exact" or expected is None or actual is None:
        return bool(expected == actual)
    if isinstance(expected, (list, tuple)) or isinstance(actual, (list, tuple)):
        return bool(expected == actual)
    if rule.rule == "min":
        if isinstance(expected, int) and isinstance(actual, int) and not isinstance(expected, bool):
            return actual >= expected
        try:
            return bool(_version_key(str(actual)) >= _version_key(str(expected)))
        except TypeError:
            return False
    if rule.rule == "compatible":
        return _major_minor(expected) == _major_minor(actual) and satisfies(Rule(rule="min"), expected, actual)
    return bool(expected == actual)


def _device_of(path: str) -> str:
    parts = path.split(".")
    return ".".join(parts[:3]) if len(parts) > 3 and parts[:2] == ["gpu", "devices"] else ""


def _skipped(path: str, skip: Iterable[str]) -> bool:
    return any(path == s or path.startswith(s + ".") for s in skip)


#: Fields older locks leave out (NVML captures recorded no virtualization mode before 0.2): not compared then.
NOT_RECORDED_BEFORE = frozenset({"virtualization"})
#: CPU fields envlock 0.1 recorded more coarsely (the bare family as the generic level on Arm and POWER, no
#: vendor name): a lock that says so is not compared with the finer answer (`envlock.probes.cpu.older_answer`).
OLDER_CPU_ANSWERS = frozenset({"cpu.vendor", "cpu.generic", "cpu.microarchitecture"})


def compare_values(
    expected: dict[str, Any], actual: dict[str, Any], policy: Policy, skip: Iterable[str] = ()
) -> list[tuple[str, Any, Any, Rule]]:
    """(path, expected, actual, rule) for every path whose values break its rule."""
    skip = tuple(skip)
    out = []
    devices_want = {_device_of(p) for p in expected} - {""}
    devices_have = {_device_of(p) for p in actual} - {""}
    for path in sorted(set(expected) | set(actual)):
        if _skipped(path, skip):
            continue
        device = _device_of(path)
        if device and (device not in devices_want or device not in devices_have):
            continue
        want, have = expected.get(path), actual.get(path)
        if want in (None, "") and path.rsplit(".", 1)[-1] in NOT_RECORDED_BEFORE:
            continue  # a lock from before envlock recorded the field: nothing to compare with
        if path.startswith("cpu.cache_") and (want is None or have is None):
            continue  # a size one side could not read (no sysfs, no py-cpuinfo) is unknown, not different
        if path in OLDER_CPU_ANSWERS and older_answer(path.split(".")[1], want, have):
            continue  # what an older envlock wrote for this same CPU, only coarser
        rule = rule_for(policy, path)
        if not satisfies(rule, want, have):
            out.append((path, want, have, rule))
    return out


def _presence_rule(level: str) -> Rule:
    """The rule for a package on one side only, from the policy's missing_packages / extra_packages level."""
    return Rule(rule="ignore", severity="warn") if level == "ignore" else Rule(
        rule="exact", severity="error" if level == "error" else "warn")


def compare_packages(expected: Lock, actual: Lock, policy: Policy) -> list[tuple[str, Any, Any, Rule]]:
    """Package mismatches: missing, extra, and field by field for the packages on both sides."""
    out: list[tuple[str, Any, Any, Rule]] = []
    for name in sorted(set(expected.packages) | set(actual.packages)):
        want, have = expected.packages.get(name), actual.packages.get(name)
        # A rule for `packages.<name>` (in [policy], pyproject or --ignore/--warn) governs its presence.
        presence = explicit_rule(policy, f"packages.{name}")
        if want is not None and have is None:
            rule = presence or _presence_rule(policy.missing_packages)
            out.append((f"packages.{name}", want.version, None, rule))
            continue
        if want is None and have is not None:
            rule = presence or _presence_rule(policy.extra_packages)
            out.append((f"packages.{name}", None, have.version, rule))
            continue
        flat_want: dict[str, Any] = {}
        flat_have: dict[str, Any] = {}
        # Where the index offers the files (`artifacts`) is index data, not a fact of the environment.
        _flatten(f"packages.{name}", {k: v for k, v in to_dict(want).items() if k != "artifacts"}, flat_want)
        _flatten(f"packages.{name}", {k: v for k, v in to_dict(have).items() if k != "artifacts"}, flat_have)
        mismatches = compare_values(flat_want, flat_have, policy)
        version_moved = any(path.endswith(".version") for path, *_ in mismatches)
        for path, w, h, rule in mismatches:
            # Another version has other files: say it once, as the version.
            if version_moved and path.endswith(".files"):
                continue
            out.append((path, w, h, rule))
    return out


def compare_locks(
    expected: Lock,
    actual: Lock,
    *,
    policy: Policy | None = None,
    skip: Iterable[str] = (),
    target: str | None = None,
    numerics_errors: dict[str, str] | None = None,
    between_locks: bool = False,
    shadowed: Iterable[Shadow] = (),
) -> Comparison:
    """Every mismatch between the lock and the facts found now (as a lock), under the lock's policy.

    `between_locks`: `actual` is another lock, not this machine (`envlock diff`): the hints speak of A and B.
    `shadowed`: CUDA libraries this process loads from outside their nvidia-* wheel (`probes.cuda.find_shadowed`).
    """
    numerics_errors = numerics_errors or {}
    policy = policy or expected.policy
    skip = tuple(skip)
    raw: list[tuple[str, Any, Any, Rule]] = []
    want_soft, have_soft = flatten_software(expected), flatten_software(actual)
    if "packages" not in skip:
        raw.extend(compare_packages(expected, actual, policy))
    raw.extend(compare_values(want_soft, have_soft, policy, skip))
    if "floats.torch" not in skip and (expected.floats.torch is None) != (actual.floats.torch is None):
        raw = [r for r in raw if not r[0].startswith("floats.torch.")]
        raw.append(("floats.torch", _torch_label(expected), _torch_label(actual), rule_for(policy, "floats.torch")))

    name, notes = choose_target(expected, actual, policy, skip, target)
    want_hw = flatten_target(expected.targets[name])
    have_hw = flatten_target(next(iter(actual.targets.values())))
    hardware = compare_values(want_hw, have_hw, policy, skip)
    raw.extend(hardware)
    if target is None and len(expected.targets) > 1 and any(
        r.severity == "error" and r.rule != "ignore" for *_, r in hardware
    ):
        listed = ", ".join(sorted(expected.targets))
        raw.append(("targets", f"one of: {listed}", f"none (nearest: {name})", Rule(rule="exact", severity="error")))

    raw.extend(cross_checks(expected, actual, expected.targets[name], policy))
    versions = {f"packages.{n}.version": p.version for n, p in expected.packages.items()}
    versions_now = {f"packages.{n}.version": p.version for n, p in actual.packages.items()}
    context = {**want_soft, **want_hw, **versions}, {**have_soft, **have_hw, **versions_now}
    explain = between_hint if between_locks else hint_for
    findings = tuple(
        Finding(path=path, expected=_describe(path, w, True), actual=_describe(path, h, False),
                severity=rule.severity, hint=explain(path, w, h, rule, context), values=(_value(w), _value(h)))
        for path, w, h, rule in raw
        if rule.rule != "ignore"
    )
    want_numerics = expected.targets[name].numerics
    have_numerics = next(iter(actual.targets.values())).numerics
    if want_numerics is not None and have_numerics is not None and "numerics" not in skip:
        findings += tuple(compare_numerics(want_numerics, have_numerics, numerics_errors, policy, context,
                                           between_locks=between_locks))
    shadows = shadow_findings(shadowed, policy, skip)
    if shadows:  # the locked-version finding of a shadowed library follows from the shadowing
        won = {f.path.replace(".shadowed.", "."): f.path for f in shadows}
        findings = tuple(dataclasses.replace(
            f, cause=won[f.path], hint=f"the process loads {f.path.split('.')[1]} {f.actual}, the lock has "
                                       f"{f.expected}, and not from its wheel: see {won[f.path]}")
            if f.path in won and not f.cause else f for f in findings) + tuple(shadows)
    findings = link_causes(findings, *context)
    return Comparison(findings=ordered(findings), skipped=skip, target=name, notes=tuple(notes))


def _restore(name: str, package: Package) -> str:
    """The pip line that puts back the locked files of a package: from where it was installed when that was a URL
    or a local file (the index may hold other files under the same version)."""
    if package.source in ("url", "local") and package.url:
        return f"`pip install --force-reinstall --no-deps '{package.url}'`"
    if package.source == "vcs" and package.url and package.commit:
        url = package.url if "+" in package.url.split("://", 1)[0] else f"git+{package.url}"
        return f"`pip install --force-reinstall --no-deps '{name} @ {url}@{package.commit}'`"
    return f"`pip install --force-reinstall --no-deps {name}=={package.version}`"


def modified_findings(modified: Mapping[str, tuple[tuple[str, str], ...]], lock: Lock,
                      policy: Policy | None = None, *, deep: bool = True) -> list[Finding]:
    """One finding per locked package with files changed since install: name -> (file, what), from re-hashing
    (`verify --deep`) or from comparing sizes with RECORD (every other verify). The rule for
    `packages.<name>.files` applies: `ignore` drops it, `warn` makes it a warning."""
    findings = []
    for name, problems in sorted(modified.items()):
        if name not in lock.packages or not problems:
            continue
        path = f"packages.{name}.files"
        rule = rule_for(policy, path) if policy is not None else None
        if rule is not None and rule.rule == "ignore":
            continue
        shown = ", ".join(f"{file} ({what})" for file, what in problems[:5])
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        how = "" if deep else "; found by size, `envlock verify --deep` re-hashes every file"
        findings.append(Finding(
            path=path,
            expected="as in RECORD",
            actual=f"{len(problems)} file(s) changed",
            severity=rule.severity if rule is not None else "error",
            hint=f"modified inside {name} since it was installed: {shown}{more}; "
                 f"{_restore(name, lock.packages[name])} restores it"
                 f"{how}",
        ))
    return findings


def shadow_findings(shadowed: Iterable[Shadow], policy: Policy, skip: Iterable[str] = ()) -> list[Finding]:
    """One finding per CUDA library loaded from outside the nvidia-* wheel installed for it, at another version
    (`cuda.shadowed.<field>`): the numbers come from the library that won, not the one the packages claim."""
    skip = tuple(skip)
    out = []
    for shadow in shadowed:
        path = f"cuda.shadowed.{shadow.field}"
        rule = rule_for(policy, path)
        if rule.rule == "ignore" or _skipped(path, skip):
            continue
        winner = os.path.dirname(shadow.loaded_path)
        out.append(Finding(
            path=path,
            expected=f"{shadow.field} {shadow.wheel_version} from {shadow.wheel} ({shadow.wheel_dir})",
            actual=f"{shadow.field} {shadow.loaded_version} from {shadow.loaded_path}",
            severity=rule.severity,
            hint=f"the process loaded {shadow.loaded_path} ({shadow.field} {shadow.loaded_version}) over the "
                 f"{shadow.wheel} wheel's {shadow.wheel_version} in {shadow.wheel_dir}: LD_LIBRARY_PATH or "
                 f"LD_PRELOAD puts {winner} first (both are searched before the wheel's RUNPATH), or a module "
                 f"imported earlier loaded it; take {winner} out of LD_LIBRARY_PATH, or "
                 f"{code(f'pip install {shadow.wheel}=={shadow.loaded_version}')} if that one is meant to run",
            values=(shadow.wheel_version, shadow.loaded_version),
        ))
    return out


#: The oldest driver of each CUDA major version (CUDA minor-version compatibility, NVIDIA's compatibility guide).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def cross_checks(expected: Lock, actual: Lock, target: Target, policy: Policy) -> list[tuple[str, Any, Any, Rule]]:
    """Findings no single field shows: a driver too old for the locked CUDA, a GPU torch has no kernels for, an
    OPENBLAS_CORETYPE this CPU cannot execute."""
    out: list[tuple[str, Any, Any, Rule]] = []
    have = next(iter(actual.targets.values())).gpu
    cuda = expected.cuda
    if target.gpu.count and have.driver and cuda is not None:
        major = int(cuda.torch_cuda.split(".")[0])
        needed = MIN_DRIVER.get(major)
        if needed and _version_key(have.driver) < _version_key(needed):
            out.append(("gpu.driver_for_cuda", f">= {needed} (CUDA {major})", have.driver,
                        rule_for(policy, "gpu.driver_for_cuda")))
    coretype = actual.floats.env.get("OPENBLAS_CORETYPE")
    here = next(iter(actual.targets.values())).cpu
    if coretype is not None and coretype.set and coretype_verdict(coretype.value, frozenset(here.flags)):
        out.append(("blas.coretype", "a core type this CPU runs", f"OPENBLAS_CORETYPE={coretype.value}",
                    rule_for(policy, "blas.coretype")))
    arch = actual.cuda.arch_list if actual.cuda is not None else ()
    if arch:
        for device in have.devices:
            if device.compute_capability and not kernels_for(arch, device.compute_capability):
                path = f"cuda.kernels.{device.index}"
                sm = "sm_" + device.compute_capability.replace(".", "")
                out.append((path, f"kernels for {sm}", "none (" + " ".join(arch) + ")", rule_for(policy, path)))
    return out


def _torch_label(lock: Lock) -> str:
    return f"torch {lock.floats.torch.version}" if lock.floats.torch is not None else NO_TORCH


def _value(value: Any) -> Any:
    """A compared value as JSON shows it: None for unset or absent, lists for sequences."""
    if value == UNSET:
        return None
    return list(value) if isinstance(value, tuple) else value


def _describe(path: str, value: Any, expected: bool) -> str:
    if value is None:
        if path.startswith("packages.") and path.count(".") == 1:
            return "not installed"
        if path.startswith("blas.libraries.") and path.count(".") == 2:
            return "not loaded"
        return ABSENT
    return text(value)


def choose_target(
    expected: Lock, actual: Lock, policy: Policy, skip: tuple[str, ...], wanted: str | None
) -> tuple[str, list[str]]:
    """The lock's target this machine should be compared with: the one named, else the closest match."""
    if wanted is not None:
        if wanted not in expected.targets:
            raise UsageError(f"no target {wanted!r} in the lock (it has: {', '.join(sorted(expected.targets))})")
        return wanted, []
    if len(expected.targets) == 1:
        return next(iter(expected.targets)), []
    have = flatten_target(next(iter(actual.targets.values())))
    scored = []
    for name, target in sorted(expected.targets.items()):
        mismatches = compare_values(flatten_target(target), have, policy, skip)
        errors = sum(1 for *_, rule in mismatches if rule.severity == "error" and rule.rule != "ignore")
        scored.append((errors, len(mismatches), name))
    scored.sort()
    best = scored[0]
    if best[0] == 0:
        return best[2], [f"matched target {best[2]} (of {', '.join(sorted(expected.targets))})"]
    return best[2], [f"no target matches this machine; nearest is {best[2]} ({best[0]} errors)"]

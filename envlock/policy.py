"""The default policy written into new locks, how a dotted path finds its rule, and how the policy sources merge."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from envlock.errors import LockError, UsageError
from envlock.model import POLICY_KEY, ModelError, Policy, Rule, from_dict

# Dotted-path pattern -> (rule, severity). `*` stands for exactly one segment, a trailing `**` for any number of
# them (`floats.**`: everything under floats); the most specific pattern wins.
DEFAULT_RULES: dict[str, tuple[str, str]] = {
    "python.*": ("exact", "error"),
    "python.platform_tag": ("exact", "warn"),
    "packages.*.version": ("exact", "error"),
    "packages.*.files": ("exact", "error"),
    "packages.*.source": ("exact", "warn"),
    "packages.*.url": ("exact", "warn"),
    "packages.*.commit": ("exact", "error"),
    "packages.*.hashes": ("ignore", "warn"),
    "floats.env.*": ("exact", "error"),
    "floats.torch.*": ("exact", "error"),
    "platform.system": ("exact", "error"),
    "platform.machine": ("exact", "error"),
    "platform.*": ("exact", "warn"),
    "platform.kernel": ("ignore", "warn"),
    "platform.container_kind": ("ignore", "warn"),
    "cpu.*": ("exact", "warn"),
    "cpu.logical_cores": ("ignore", "warn"),
    "cpu.usable_cores": ("exact", "error"),
    "blas.*": ("exact", "error"),
    "blas.libraries.*.*": ("exact", "error"),
    "threads.*": ("exact", "error"),
    "threads.torch_interop": ("exact", "warn"),
    "gpu.count": ("min", "error"),
    "gpu.driver": ("min", "error"),
    "gpu.driver_for_cuda": ("exact", "error"),
    "gpu.cuda_driver": ("min", "error"),
    "gpu.source": ("ignore", "warn"),
    "gpu.status": ("ignore", "warn"),
    "gpu.devices.*.name": ("exact", "warn"),
    "gpu.devices.*.compute_capability": ("exact", "error"),
    "gpu.devices.*.sm_count": ("exact", "error"),
    "gpu.devices.*.memory_mib": ("ignore", "warn"),
    "gpu.devices.*.mig": ("exact", "error"),
    "gpu.devices.*.ecc": ("exact", "warn"),
    "gpu.devices.*.persistence": ("ignore", "warn"),
    "gpu.devices.*.virtualization": ("exact", "warn"),
    "gpu.devices.*.mig_instances.*": ("exact", "error"),
    "gpu.devices.*.mig_instances.*.*": ("exact", "error"),
    "gpu.devices.*.mig_instances.*.memory_mib": ("exact", "warn"),
    "cuda.*": ("exact", "error"),
    "cuda.arch_list": ("exact", "warn"),
    "cuda.kernels.*": ("exact", "error"),
    "numerics.*": ("exact", "error"),
}


def default_policy() -> Policy:
    """The policy a fresh capture writes out, so users can read and edit it."""
    rules = {path: Rule(rule=rule, severity=severity) for path, (rule, severity) in DEFAULT_RULES.items()}  # type: ignore[arg-type]
    return Policy(missing_packages="error", extra_packages="warn", rules={k: rules[k] for k in sorted(rules)})


def _specificity(pattern: str) -> tuple[int, int, int, int]:
    segments = pattern.split(".")
    return (sum(1 for s in segments if "*" not in s), sum(1 for s in segments if s not in ("*", "**")),
            len(segments), segments[-1] != "**")


def _segment(want: str, have: str) -> bool:
    return want == "*" or want == have or ("*" in want and fnmatchcase(have, want))


def _matches(pattern: str, path: str) -> bool:
    want, have = pattern.split("."), path.split(".")
    if want[-1] == "**":
        want = want[:-1]
        have = have[: len(want)] if len(have) > len(want) else have
    return len(want) == len(have) and all(_segment(w, h) for w, h in zip(want, have, strict=False))


def subsumes(general: str, specific: str) -> bool:
    """Whether every path `specific` matches is also matched by `general` (`platform.*` ⊇ `platform.system`,
    `floats.**` ⊇ `floats.env.*`)."""
    if general == specific:
        return True
    if specific.endswith(".**") and not general.endswith(".**"):
        return False
    return _matches(general, specific.replace("**", "\1").replace("*", "\0"))


def could_match(pattern: str, path: str) -> bool:
    """Whether `pattern` matches `path`, where a `*` segment of `path` stands for any one name (a device index, a
    library id)."""
    want, have = pattern.split("."), path.split(".")
    if want[-1] == "**":
        want = want[:-1]
        if len(have) < len(want):
            return False
        have = have[: len(want)]
    return len(want) == len(have) and all(h == "*" or _segment(w, h) for w, h in zip(want, have, strict=False))


def unmatched(patterns: Iterable[str], paths: Iterable[str]) -> list[tuple[str, list[str]]]:
    """(pattern, the nearest valid patterns) for each pattern that matches none of `paths` (a rule that would
    silently do nothing)."""
    import difflib  # only when a pattern is given

    universe = sorted(set(paths))
    out = []
    for pattern in patterns:
        if any(could_match(pattern, path) for path in universe):
            continue
        prefix = pattern.rstrip("*").rstrip(".") + "."
        if any(path.startswith(prefix) for path in universe):
            out.append((pattern, [prefix + "**"]))
            continue
        parent, _, last = pattern.rpartition(".")
        siblings = {p.rpartition(".")[2].lower(): p for p in universe if p.rpartition(".")[0] == parent}
        if siblings:  # the parent is right: the nearest names under it
            near = difflib.get_close_matches(last.lower().replace("*", ""), list(siblings), n=3, cutoff=0.6)
            out.append((pattern, [siblings[n] for n in near]))
            continue
        lowered = {path.lower(): path for path in universe}
        near = difflib.get_close_matches(pattern.lower(), list(lowered), n=3, cutoff=0.6)
        out.append((pattern, [lowered[n] for n in near]))
    return out


#: A policy's patterns, split once: (segments without a trailing `**`, whether it had one, specificity, order, rule).
_Compiled = tuple[list[str], bool, tuple[int, int, int, int], int, Rule]
#: Per policy: patterns by (first segment, length, last segment) when both ends are literal and there is no
#: trailing `**`; the other patterns by their first segment when it is literal; the rest.
_Index = tuple[dict[tuple[str, int, str], list[_Compiled]], dict[str, list[_Compiled]], list[_Compiled]]
_INDEXES: dict[int, tuple[Policy, _Index]] = {}


def _index(policy: Policy) -> _Index:
    """The policy's patterns indexed by the paths they can match, built once per policy: a verify looks up
    thousands of paths (five per package) against dozens of patterns."""
    known = _INDEXES.get(id(policy))
    if known is not None and known[0] is policy:
        return known[1]
    by_shape: dict[tuple[str, int, str], list[_Compiled]] = {}
    by_first: dict[str, list[_Compiled]] = {}
    anywhere: list[_Compiled] = []
    for order, (pattern, rule) in enumerate(policy.rules.items()):
        want = pattern.split(".")
        deep = want[-1] == "**"
        if deep:
            want = want[:-1]
        item = (want, deep, _specificity(pattern), order, rule)
        if not deep and "*" not in want[0] and "*" not in want[-1]:
            by_shape.setdefault((want[0], len(want), want[-1]), []).append(item)
        elif want and "*" not in want[0]:
            by_first.setdefault(want[0], []).append(item)
        else:
            anywhere.append(item)
    if len(_INDEXES) > 64:
        _INDEXES.clear()
    index = (by_shape, by_first, anywhere)
    _INDEXES[id(policy)] = (policy, index)
    return index


def explicit_rule(policy: Policy, path: str) -> Rule | None:
    """The most specific rule whose pattern matches `path`, or None when no pattern does (of equally specific
    ones, the first written)."""
    by_shape, by_first, anywhere = _index(policy)
    have = path.split(".")
    best: _Compiled | None = None
    for item in (*by_shape.get((have[0], len(have), have[-1]), ()), *by_first.get(have[0], ()), *anywhere):
        want, deep, score, order, _ = item
        if (len(want) <= len(have) if deep else len(want) == len(have)) and all(
                _segment(w, h) for w, h in zip(want, have, strict=False)):
            if best is None or score > best[2] or (score == best[2] and order < best[3]):
                best = item
    return best[4] if best is not None else None


def rule_for(policy: Policy, path: str) -> Rule:
    """The rule that governs `path`: the most specific matching pattern, else exact/error."""
    return explicit_rule(policy, path) or Rule(rule="exact", severity="error")


def merge_policy(
    base: Policy,
    project: tuple[str, Mapping[str, Any]] | None = None,
    *,
    ignore: Iterable[str] = (),
    warn: Iterable[str] = (),
) -> Policy:
    """The lock's [policy], overridden by `project` ((file, its [tool.envlock] table)), then by --ignore / --warn."""
    rules = dict(base.rules)
    missing, extra = base.missing_packages, base.extra_packages
    if project is not None:
        file, section = project
        if "extra_env" in section:
            raise LockError(file, "extra_env belongs in the lock's [policy], where the next capture records those "
                            "variables", "tool.envlock.extra_env")
        if "fingerprints" in section:
            raise LockError(file, "fingerprints belong in the lock's [policy], where the next capture runs and "
                            "records them (see docs/fingerprint.md)", "tool.envlock.fingerprints")
        try:
            extra_policy = from_dict(Policy, dict(section), "tool.envlock")
        except ModelError as exc:
            raise LockError(file, exc.message, exc.where) from None
        rules.update(extra_policy.rules)
        if "missing_packages" in section:
            missing = extra_policy.missing_packages
        if "extra_packages" in section:
            extra = extra_policy.extra_packages
    # Per-run options win over every file: a pattern also overrides the more specific rules it covers.
    overrides = [(check_pattern(p, "--ignore"), "ignore") for p in ignore]
    overrides += [(check_pattern(p, "--warn"), "warn") for p in warn]
    for pattern, kind in overrides:
        for key in [k for k in rules if subsumes(pattern, k)] + [pattern]:
            current = rules.get(key, Rule(rule="exact"))
            if kind == "ignore":
                rules[key] = Rule(rule="ignore", severity="warn")
            else:
                rules[key] = Rule(rule=current.rule if current.rule != "ignore" else "exact", severity="warn")
    return Policy(missing_packages=missing, extra_packages=extra, rules=rules)


def check_pattern(pattern: str, option: str) -> str:
    """`pattern` when it is a dotted-path pattern, else a UsageError naming the option."""
    segments = pattern.split(".")
    if not re.fullmatch(POLICY_KEY, pattern) or "" in segments or any("**" in seg for seg in segments[:-1]) or (
            "**" in segments[-1] and segments[-1] != "**"):
        raise UsageError(f"{option} {pattern!r}: expected a dotted path such as packages.numpy.version, with * in a "
                         "segment (cpu.*, floats.env.OMP_*) or a trailing ** for any depth (floats.**)")
    return pattern

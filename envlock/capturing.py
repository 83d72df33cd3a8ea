"""`envlock capture`: facts in, lock out. Building the lock from facts is pure; writing it is atomic."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from envlock._version import __version__
from envlock.atomic import locked, write_atomic
from envlock.compare import shadow_findings
from envlock.errors import EnvlockError, FactsError, LockError, UsageError
from envlock.facts import collect_facts
from envlock.hashes import index_files
from envlock.lockfile import check_schema_version, dumps, load, parse_toml, read_text, seal
from envlock.model import SCHEMA as SCHEMA_GRAMMAR
from envlock.model import (
    SCHEMA_VERSION,
    Lock,
    LockHeader,
    ModelError,
    Policy,
    Target,
    from_dict,
    to_dict,
)
from envlock.policy import default_policy
from envlock.probes.blas import parse_blas
from envlock.probes.cpu import parse_cpu
from envlock.probes.cuda import parse_cuda
from envlock.probes.floats import parse_floats, parse_threads
from envlock.probes.gpu import parse_gpu
from envlock.probes.numerics import MAX_WORK, KernelSpec, parse_numerics, shape_work
from envlock.probes.numerics.fingerprint import collect_fingerprints
from envlock.probes.numerics.kernels import kernel_cost, over_bound
from envlock.probes.packages import canonical_name, parse_packages
from envlock.probes.platform import parse_platform
from envlock.probes.python import parse_python
from envlock.probes.shadowing import find_shadowed
from envlock.progress import bar

PLACEHOLDER_HASH = "sha256:" + "0" * 64


def created_now() -> str:
    """The creation time: $SOURCE_DATE_EPOCH when set (reproducible builds), else now, in UTC."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    seconds = int(epoch) if epoch.isascii() and epoch.isdigit() else int(time.time())
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        raise UsageError(f"SOURCE_DATE_EPOCH={epoch[:30]}: out of range for a date") from None


def target_name(target: Target) -> str:
    """A readable name for a hardware target, e.g. `zen4`, or `sapphirerapids-h100-80gb-hbm3x8` with GPUs."""
    name = target.cpu.microarchitecture
    if target.gpu.devices:
        gpu = target.gpu.devices[0].name.lower().replace("nvidia ", "").replace("geforce ", "")
        name = f"{name}-{gpu}x{target.gpu.count}"
    return re.sub(r"[^a-z0-9_.+-]+", "-", name.lower()).strip("-") or "default"


def build_lock(facts: dict[str, Any], *, policy: Policy | None = None, created: str = "") -> Lock:
    """The lock the given raw facts imply (pure: the same facts always give the same lock)."""
    if not isinstance(facts, dict):
        raise ModelError("", "expected an object")
    torch = facts.get("torch")
    target = Target(
        platform=parse_platform(facts.get("platform")),
        cpu=parse_cpu(facts.get("cpu")),
        blas=parse_blas(facts.get("blas", {})),
        gpu=parse_gpu(facts.get("gpu", {})),
        threads=parse_threads(torch),
        numerics=parse_numerics(facts.get("numerics")),
    )
    lock = Lock(
        lock=LockHeader(schema=SCHEMA_VERSION, envlock=__version__, created=created or created_now(),
                        content_hash=PLACEHOLDER_HASH),
        python=parse_python(facts.get("python")),
        floats=parse_floats(facts.get("env", {}), torch, policy.extra_env if policy is not None else ()),
        targets={target_name(target): target},
        packages=parse_packages(facts.get("packages")),
        cuda=parse_cuda(facts.get("cuda")),
        policy=policy or default_policy(),
    )
    # Round-trip through the strict loader: every value the facts gave must fit its grammar.
    lock = from_dict(Lock, to_dict(lock))
    return seal(lock, envlock_version=__version__, created=lock.lock.created)


#: What `--add-target` did with this machine's target: "added" it (a new target), or found it already in the
#: lock exactly as captured ("unchanged": nothing is written). "" without `--add-target`.
TargetAction = Literal["", "added", "unchanged"]


@dataclass(frozen=True)
class CaptureResult:
    """What a capture wrote (with `target_action == "unchanged"`: the lock it found, left as it was)."""
    path: Path
    lock: Lock
    kept_policy: bool
    #: The target `--add-target` added; "" when it added none.
    added_target: str = ""
    unhashed: tuple[str, ...] = ()
    target_action: TargetAction = ""
    #: With `--add-target`: this machine's target in the lock, added or found there.
    target_name: str = ""
    #: With `--add-target`: the name this machine's target would have had, when the lock already gives it to
    #: other hardware (so the new target got a numbered name instead); "" otherwise.
    name_taken: str = ""
    #: One line per CUDA library the captured process loads from outside its nvidia-* wheel, at another version
    #: (the lock records the version that loaded; `verify` reports it as `cuda.shadowed.<library>`).
    shadowed: tuple[str, ...] = ()


#: What every refusal to replace an existing file ends with.
FORCE_HINT = "pass --force to overwrite it, or choose another -o"
#: The first line of the comment header `envlock capture` writes (lockfile.HEADER).
HEADER_START = "# envlock lock file"


def _previous(path: Path) -> tuple[str | None, Policy | None]:
    """The old lock's text and its (validated) policy, so a re-capture can keep them. Raises LockError, naming
    --force, for a file that is not recognisably an envlock lock, or one that cannot be read or parsed."""
    if path.is_dir():
        raise LockError(str(path), "is a directory, not a lock file; choose another -o")
    if not os.path.lexists(path):
        return None, None
    try:
        text = read_text(path)
        data = parse_toml(text, str(path))
    except LockError as exc:
        if not os.path.lexists(path):  # removed meanwhile: nothing to keep, nothing to lose
            return None, None
        raise LockError(str(path), f"{exc.message}; refusing to overwrite it: {FORCE_HINT}", exc.where) from None
    if not data and not text.strip():
        return None, None
    if not _looks_like_a_lock(text, data):
        # A TOML file that is not a lock (`-o pyproject.toml`, another tool's `[lock]`) would be silently replaced.
        why = "no [lock] table" if "lock" not in data else "its [lock] table is not an envlock lock header"
        raise LockError(str(path), f"is not an envlock lock ({why}); refusing to overwrite it: {FORCE_HINT}")
    try:
        check_schema_version(data, str(path))
    except LockError as exc:
        raise LockError(str(path), f"{exc.message}; refusing to overwrite it: {FORCE_HINT}", exc.where) from None
    if "policy" not in data:
        return text, None
    try:
        return text, from_dict(Policy, data["policy"], "policy")
    except ModelError as exc:
        raise LockError(str(path), exc.message + " (fix it in the lock's [policy] and capture again; --force "
                        "would replace the whole policy, your rules included, with the defaults)", exc.where) from None


def _looks_like_a_lock(text: str, data: dict[str, Any]) -> bool:
    """Whether a parsed file is recognisably an envlock lock: a `[lock]` header whose `schema` is an envlock
    schema version, and either envlock's header comment or the rest of an envlock header (envlock, content_hash)."""
    header = data.get("lock")
    if not isinstance(header, dict):
        return False
    schema = header.get("schema")
    if not isinstance(schema, str) or re.fullmatch(SCHEMA_GRAMMAR, schema) is None:
        return False
    if text.lstrip("\n").startswith(HEADER_START):
        return True
    digest = header.get("content_hash")
    return isinstance(header.get("envlock"), str) and isinstance(digest, str) and digest.startswith("sha256:")


def capture(
    output: str | os.PathLike[str] = "envlock.lock",
    *,
    facts: dict[str, Any] | None = None,
    facts_name: str = "",
    use_torch: bool = True,
    force: bool = False,
    add_target: bool = False,
    init_cuda: bool = False,
    numerics: bool = True,
    hashes: bool = False,
    progress: bool = False,
) -> CaptureResult:
    """Capture this machine (or the given facts) into a lock at `output`, keeping an old lock's policy and comments.

    With `add_target`, the machine becomes one more hardware target of the existing lock, whose software
    sections it must match. `progress` draws the probe's and `hashes`' progress on stderr (envlock.progress).
    """

    path = Path(output)
    if add_target and force:
        raise UsageError("--add-target adds to an existing lock; it cannot be combined with --force")
    # The whole read-modify-write runs under the lock file's flock: two captures (`--add-target` from two machines
    # at once) take turns, and neither loses what the other wrote.
    with locked(path):
        return _capture_locked(path, facts=facts, facts_name=facts_name, use_torch=use_torch, force=force,
                               add_target=add_target, init_cuda=init_cuda, numerics=numerics, hashes=hashes,
                               progress=progress)


def _capture_locked(path: Path, *, facts: dict[str, Any] | None, facts_name: str, use_torch: bool, force: bool,
                    add_target: bool, init_cuda: bool, numerics: bool, hashes: bool,
                    progress: bool = False) -> CaptureResult:
    """capture(), with the lock at `path` held by this process."""
    previous, policy = (None, None) if force else _previous(path)
    if add_target and previous is None:
        raise LockError(str(path), "no lock to add a target to (capture one first, without --add-target)")
    if facts is None:
        shapes = policy.probe_shapes if policy is not None else ()
        for shape in shapes:
            if shape_work(shape) > MAX_WORK:
                raise LockError(str(path), f"probe shape {shape} is too large (m·n·k over {MAX_WORK})",
                                "policy.probe_shapes")
            spec = KernelSpec("mm", "torch", "cpu", "float32", shape)
            too_big = over_bound(spec, kernel_cost(spec))
            if too_big:  # it would not run, and drop out of the lock without a word
                raise LockError(str(path), f"probe {too_big}", "policy.probe_shapes")
        facts = collect_facts(use_torch=use_torch, init_cuda=init_cuda, numerics=numerics, probe_shapes=shapes,
                              extra_env=policy.extra_env if policy is not None else (), progress=progress)
        if policy is not None and policy.fingerprints and isinstance(facts.get("numerics"), dict):
            facts["numerics"] = {**facts["numerics"], "fingerprints": collect_fingerprints(policy.fingerprints)}
    unhashed: list[str] = []
    if hashes:
        facts, unhashed = with_artifact_hashes(facts, progress=progress)
    try:
        lock = build_lock(facts, policy=policy)
    except ModelError as exc:
        if facts_name:
            raise FactsError(facts_name, exc.message, exc.where) from None
        raise EnvlockError(f"this environment holds a value envlock cannot lock: {exc}") from None
    merged = _with_target(path, lock) if add_target else _Merged(lock=lock)
    kept = policy is not None
    if merged.action != "unchanged":
        write_atomic(path, dumps(merged.lock, name=path.name, previous=previous))
    # "unchanged": the lock already holds this machine exactly; rewriting it would only move its creation time.
    return CaptureResult(path=path, lock=merged.lock, kept_policy=kept,
                         added_target=merged.name if merged.action == "added" else "", unhashed=tuple(unhashed),
                         target_action=merged.action, target_name=merged.name, name_taken=merged.name_taken,
                         shadowed=tuple(f"{f.path}: {f.hint}" for f in shadow_findings(
                             find_shadowed(facts.get("cuda"), facts.get("packages")), merged.lock.policy)))


def with_artifact_hashes(facts: dict[str, Any], *, progress: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The facts with each index package's artifact hashes and files (from the index), and the packages it had
    none for."""
    packages = facts.get("packages")
    if not isinstance(packages, list):
        return facts, []
    named = [p for p in packages if isinstance(p, dict) and "name" in p]
    with bar("asking the index for artifact hashes", len(named), enabled=progress) as advance:
        found = index_files(named, advance=advance)

    def hashed(p: dict[str, Any]) -> dict[str, Any]:
        name = canonical_name(str(p["name"]))
        files = {"artifacts": found.files[name]} if name in found.files else {}
        return {**p, "hashes": found.hashes[name], **files}

    updated = [hashed(p) if isinstance(p, dict) and canonical_name(str(p.get("name", ""))) in found.hashes else p
               for p in packages]
    return {**facts, "packages": updated}, found.missing


SOFTWARE = ("python", "packages", "cuda", "floats")


def _first_difference(a: Any, b: Any, where: str) -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    return None if a == b else (where, a, b)


@dataclass(frozen=True)
class _Merged:
    lock: Lock
    name: str = ""
    action: TargetAction = ""
    name_taken: str = ""


def _with_target(path: Path, new: Lock) -> _Merged:
    """The existing lock at `path` with `new`'s only target added (unless it holds it already); same software."""
    old, _ = load(path)
    old_data, new_data = to_dict(old), to_dict(new)
    for section in SOFTWARE:
        found = _first_difference(old_data.get(section), new_data.get(section), section)
        if found:
            where, want, have = found
            raise LockError(
                str(path),
                f"this machine's software differs from the lock's (lock: {want!r}, here: {have!r}); a target "
                "holds hardware only, so capture targets from the same environment",
                where,
            )
    (name, target), = new.targets.items()
    targets = dict(old.targets)
    same = sorted(key for key, held in targets.items() if held == target)
    if same:
        return _Merged(lock=old, name=name if name in same else same[0], action="unchanged")
    base, n = name, 2
    while name in targets:
        name, n = f"{base}-{n}", n + 1
    targets[name] = target
    merged = dataclasses.replace(old, targets={k: targets[k] for k in sorted(targets)})
    return _Merged(lock=seal(merged, envlock_version=__version__, created=new.lock.created), name=name,
                   action="added", name_taken=base if name != base else "")

"""`envlock capture`: facts in, lock out. Building the lock from facts is pure; writing it is atomic."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envlock._version import __version__
from envlock.errors import EnvlockError, FactsError, LockError
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

PLACEHOLDER_HASH = "sha256:" + "0" * 64


def created_now() -> str:
    """The creation time: $SOURCE_DATE_EPOCH when set (reproducible builds), else now, in UTC."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    seconds = int(epoch) if epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def target_name(target: Target) -> str:
    """A readable name for a hardware target, e.g. `zen4` or `x86_64_v3`."""
    name = target.cpu.microarchitecture
    if target.gpu.count:
        name = f"{name}-gpu{target.gpu.count}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", name) or "default"


def build_lock(facts: dict[str, Any], *, policy: Policy | None = None, created: str = "") -> Lock:
    """The lock the given raw facts imply (pure: the same facts always give the same lock)."""
    from envlock.lockfile import seal
    from envlock.probes.blas import parse_blas
    from envlock.probes.cpu import parse_cpu
    from envlock.probes.floats import parse_floats, parse_threads
    from envlock.probes.gpu import parse_gpu
    from envlock.probes.packages import parse_packages
    from envlock.probes.platform import parse_platform
    from envlock.probes.python import parse_python

    if not isinstance(facts, dict):
        raise ModelError("", "expected an object")
    torch = facts.get("torch")
    target = Target(
        platform=parse_platform(facts.get("platform")),
        cpu=parse_cpu(facts.get("cpu")),
        blas=parse_blas(facts.get("blas", {})),
        gpu=parse_gpu(facts.get("gpu", {})),
        threads=parse_threads(torch),
    )
    lock = Lock(
        lock=LockHeader(schema=SCHEMA_VERSION, envlock=__version__, created=created or created_now(),
                        content_hash=PLACEHOLDER_HASH),
        python=parse_python(facts.get("python")),
        floats=parse_floats(facts.get("env", {}), torch),
        targets={target_name(target): target},
        packages=parse_packages(facts.get("packages")),
        policy=policy or default_policy(),
    )
    # Round-trip through the strict loader: every value the facts gave must fit its grammar.
    lock = from_dict(Lock, to_dict(lock))
    return seal(lock, envlock_version=__version__, created=lock.lock.created)


@dataclass(frozen=True)
class CaptureResult:
    """What a capture wrote."""

    path: Path
    lock: Lock
    kept_policy: bool


def _previous(path: Path) -> tuple[str | None, Policy | None]:
    """The old lock's text and its (validated) policy, so a re-capture can keep them."""
    from envlock.lockfile import parse_toml, read_text

    if not path.exists():
        return None, None
    text = read_text(path)
    data = parse_toml(text, str(path))
    if not data and not text.strip():
        return None, None
    if "lock" not in data:
        # A TOML file that is not a lock (`-o pyproject.toml`) would be silently replaced: refuse.
        raise LockError(str(path), "is not an envlock lock (no [lock] table); refusing to overwrite it "
                        "(choose another -o, or use --force)")
    if "policy" not in data:
        return text, None
    try:
        return text, from_dict(Policy, data["policy"], "policy")
    except ModelError as exc:
        raise LockError(str(path), exc.message + " (fix the policy, or re-capture with --force)", exc.where) from None


def capture(
    output: str | os.PathLike[str] = "envlock.lock",
    *,
    facts: dict[str, Any] | None = None,
    facts_name: str = "",
    use_torch: bool = True,
    force: bool = False,
) -> CaptureResult:
    """Capture this machine (or the given facts) into a lock at `output`, keeping an old lock's policy and comments."""
    from envlock.atomic import write_atomic
    from envlock.facts import collect_facts
    from envlock.lockfile import dumps

    path = Path(output)
    previous, policy = (None, None) if force else _previous(path)
    if facts is None:
        facts = collect_facts(use_torch=use_torch)
    try:
        lock = build_lock(facts, policy=policy)
    except ModelError as exc:
        if facts_name:
            raise FactsError(facts_name, exc.message, exc.where) from None
        raise EnvlockError(f"this environment holds a value envlock cannot lock: {exc}") from None
    text = dumps(lock, name=path.name, previous=previous)
    write_atomic(path, text)
    return CaptureResult(path=path, lock=lock, kept_policy=policy is not None)


def replace_created(lock: Lock, created: str) -> Lock:
    """The same lock with another creation time (for comparisons that ignore it)."""
    return dataclasses.replace(lock, lock=dataclasses.replace(lock.lock, created=created))

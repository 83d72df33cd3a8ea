"""The fleet's wire format: one rank's summary and rank 0's verdict, as JSON padded to a fixed size. Pure.

Every rank writes FINGERPRINT_BYTES and reads VERDICT_BYTES whatever it found, so the store traffic is the same per
rank on a healthy fleet and a broken one; what does not fit is dropped, least telling first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from envlock.compare import _flatten, flatten_software, flatten_target
from envlock.errors import EnvlockError, ExitCode, UsageError
from envlock.findings import UNSET, Finding, Report, clip
from envlock.findings import text as _text
from envlock.model import Lock, Policy, to_dict
from envlock.policy import rule_for
from envlock.verifying import Verification

#: Bytes each rank writes (its fingerprint, padded) and rank 0 writes back (the verdict): constant per rank.
FINGERPRINT_BYTES = 768
VERDICT_BYTES = 512
#: The bound on every wait when neither the option nor $ENVLOCK_FLEET_TIMEOUT gives one.
DEFAULT_TIMEOUT = 60.0
#: Sections digested one by one, so a differing section can be named even when no summary key shows it.
SECTION_ORDER = ("python", "packages", "floats.env", "floats.torch", "cuda", "platform", "cpu", "blas", "threads",
                 "gpu", "numerics")
SECTION_DIGEST = 6
#: The values that usually differ between nodes, carried in the summary so a difference can be named (if present).
KEY_PATHS = ("python.version", "gpu.driver", "gpu.count", "gpu.devices.0.name", "cuda.runtime", "cuda.nccl",
             "cpu.microarchitecture", "threads.torch_intraop", "floats.torch.matmul_allow_tf32")
MAX_VALUE = 40


@dataclass(frozen=True)
class RankSummary:
    """What one rank tells the others: who it is, its own verdict, a digest of its facts and the telling values."""

    rank: int
    host: str
    code: int
    errors: int = 0
    warnings: int = 0
    digest: str = ""
    sections: str = ""
    target: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    failing: tuple[tuple[str, str, str], ...] = ()
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"rank": self.rank, "host": self.host, "exit_code": self.code, "errors": self.errors,
                "warnings": self.warnings, "digest": self.digest, "target": self.target, "keys": dict(self.keys),
                "failing": [{"path": p, "expected": e, "actual": a} for p, e, a in self.failing],
                "message": self.message}


def _clip(text: str, width: int = MAX_VALUE) -> str:
    return clip(text, width)


def section_of(path: str) -> str:
    """The digest section a dotted path belongs to (`floats.env.X` -> `floats.env`, `gpu.devices.0.name` -> `gpu`)."""
    head = path.split(".", 2)
    if head[0] == "floats" and len(head) > 1:
        return f"floats.{head[1]}"
    return head[0]


def comparable_values(current: Lock, policy: Policy, skipped: Iterable[str] = ()) -> dict[str, str]:
    """Dotted path -> text for every value verify compares here (ignored paths and skipped sections left out)."""
    raw = flatten_software(current)
    target = next(iter(current.targets.values()))
    raw.update(flatten_target(target))
    for name, package in current.packages.items():
        _flatten(f"packages.{name}", to_dict(package), raw)
    if target.numerics is not None:
        for kernel_id, kernel in target.numerics.kernels.items():
            _flatten(f"numerics.{kernel_id}", to_dict(kernel), raw)
    skipped = tuple(skipped)
    out = {}
    for path, value in raw.items():
        if any(path == s or path.startswith(s + ".") for s in skipped):
            continue
        if rule_for(policy, path).rule == "ignore":
            continue
        out[path] = _text(value)
    return out


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def summarize(rank: int, host: str, verification: Verification | None = None,
              error: EnvlockError | None = None) -> RankSummary:
    """This rank's summary: from its verification, or from the error that stopped its verify."""
    if verification is None:
        code = error.exit_code if error is not None else int(ExitCode.UNAVAILABLE)
        return RankSummary(rank=rank, host=_clip(host, 64), code=code,
                           message=_clip(str(error) if error is not None else "no report", 200))
    report = verification.report
    values = comparable_values(verification.observed.current, verification.policy, report.skipped)
    per_section: dict[str, dict[str, str]] = {}
    for path, value in values.items():
        per_section.setdefault(section_of(path), {})[path] = value
    sections = "".join(_sha(per_section[s])[:SECTION_DIGEST] if s in per_section else "-" * SECTION_DIGEST
                       for s in SECTION_ORDER)
    keys = {path: _clip(values[path]) for path in KEY_PATHS if path in values}
    keys.update({path: _clip(value) for path, value in values.items()
                 if path.startswith("floats.env.") and value != UNSET})
    return RankSummary(
        rank=rank, host=_clip(host, 64), code=int(ExitCode.OK if report.ok else ExitCode.MISMATCH),
        errors=len(report.errors), warnings=len(report.warnings),
        digest=_sha(values)[:16] if values else "", sections=sections, target=_clip(report.target), keys=keys,
        failing=tuple((_clip(f.path, 80), _clip(f.expected), _clip(f.actual)) for f in causes_first(report)),
    )


def causes_first(report: Report) -> list[Finding]:
    """The error findings with the root of each cause first (the fleet's line shows the first few)."""
    roots = [f for c in report.causes for f in c.findings[:c.roots] if f.severity == "error"]
    seen = {f.path for f in roots}
    return roots + [f for f in report.errors if f.path not in seen]


def _pack(summary: RankSummary) -> dict[str, Any]:
    data: dict[str, Any] = {"r": summary.rank, "h": summary.host, "c": summary.code}
    optional = {"e": summary.errors, "w": summary.warnings, "d": summary.digest, "s": summary.sections,
                "t": summary.target, "k": summary.keys, "f": [list(f) for f in summary.failing],
                "m": summary.message}
    data.update({key: value for key, value in optional.items() if value})
    return data


def encode_summary(summary: RankSummary, size: int = FINGERPRINT_BYTES) -> bytes:
    """The summary as compact JSON padded to exactly `size` bytes; what does not fit is dropped, least telling first."""
    data = _pack(summary)

    def fits() -> bytes | None:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return text.ljust(size, b" ") if len(text) <= size else None

    encoded = fits()
    # Cut the failing findings to three first (the error count `e` still says how many), then the key values (env
    # vars last), then the rest of the findings.
    while encoded is None and (data.get("f") or data.get("k")):
        if len(data.get("f", ())) > 3 or (data.get("f") and not data.get("k")):
            data["f"] = data["f"][:-1]
        else:
            keys = dict(data["k"])
            keys.pop(next((k for k in keys if not k.startswith("floats.env.")), next(iter(keys))))
            data["k"] = keys
        encoded = fits()
    if encoded is None:
        data = {key: data[key] for key in ("r", "c", "e", "w", "d", "s") if key in data}
        data.update({"h": _clip(summary.host, 32), "m": _clip(summary.message, 60)})
        encoded = fits()
    if encoded is None:  # pragma: no cover - the fields left are bounded well below any sane size
        raise UsageError(f"a fleet fingerprint does not fit in {size} bytes")
    return encoded


def decode_summary(data: bytes, rank: int) -> RankSummary:
    """A rank's summary from the bytes it wrote; garbage gives a summary that says so (exit 3), never an exception."""
    try:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        return RankSummary(
            rank=int(raw.get("r", rank)), host=str(raw.get("h", "?")), code=int(raw["c"]),
            errors=int(raw.get("e", 0)), warnings=int(raw.get("w", 0)), digest=str(raw.get("d", "")),
            sections=str(raw.get("s", "")), target=str(raw.get("t", "")),
            keys={str(k): str(v) for k, v in dict(raw.get("k", {})).items()},
            failing=tuple((str(p), str(e), str(a)) for p, e, a in raw.get("f", [])),
            message=str(raw.get("m", "")),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return RankSummary(rank=rank, host="?", code=int(ExitCode.UNAVAILABLE),
                           message="its fingerprint could not be read")


def encode_verdict(code: int, line: str, severity: str, size: int = VERDICT_BYTES) -> bytes:
    """Rank 0's verdict as JSON padded to exactly `size` bytes, the line clipped to fit."""
    while True:
        text = json.dumps({"c": code, "l": line, "s": severity}, ensure_ascii=False).encode()
        if len(text) <= size:
            return text.ljust(size, b" ")
        line = _clip(line, max(1, len(line) - (len(text) - size) - 1))


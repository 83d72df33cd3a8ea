"""The entry points of `envlock verify --distributed`: verify this rank, exchange, return the fleet's verdict.

The exchange goes through torch.distributed's key-value store (see store); no process group is created, so none is
left behind. Rendering the report is `envlock.report.render_fleet` / `render_rank_line`.
"""

from __future__ import annotations

import os

from envlock.errors import EnvironmentUnavailable, EnvlockError, EnvMismatchError
from envlock.findings import Finding, ordered
from envlock.fleet.decide import FleetReport
from envlock.fleet.store import check_launcher, exchange, first_line, joined, resolve_timeout
from envlock.fleet.wire import encode_summary, summarize
from envlock.lockfile import default_lock_path
from envlock.verifying import Verification, VerifyOptions, examine

__all__ = ["FleetReport", "check_fleet", "verify_fleet"]


def verify_fleet(path: str | os.PathLike[str] | None = None, options: VerifyOptions = VerifyOptions(), *,
                 timeout: float | None = None, host: str | None = None) -> FleetReport:
    """Verify this rank, exchange fingerprints with every rank, and return the fleet's verdict as this rank sees it.

    An EnvlockError in this rank's own verify is reported to the fleet (its exit code joins the verdict) rather than
    raised; only a failure to reach the other ranks raises.
    """
    bound = resolve_timeout(timeout)
    check_launcher()
    verification: Verification | None = None
    error: EnvlockError | None = None
    try:
        verification = examine(path, options)
    except EnvlockError as exc:
        error = exc
    report = verification.report if verification is not None else None
    with joined(bound) as (store, rank, world, generation):
        summary = summarize(rank, host or _hostname(), verification, error)
        payload = encode_summary(summary)
        try:
            got = exchange(store, rank, world, payload, bound,
                           policy=verification.policy if verification is not None else None, generation=generation)
        except RuntimeError as exc:
            raise EnvironmentUnavailable(f"rank {rank}: the fleet exchange failed: {first_line(exc)}") from None
    findings = list(report.findings) if report is not None else []
    if got.decision is not None:
        findings.extend(got.decision.findings)
    elif got.severity:
        findings.append(Finding(path="fleet", expected="every rank matches the lock and the others",
                                actual=got.line, severity=got.severity, hint="the fleet report is on rank 0"))
    notes = tuple(report.notes) if report is not None else (f"this rank could not verify: {error}",)
    return FleetReport(
        lock=report.lock if report is not None else str(path or default_lock_path()),
        target=report.target if report is not None else "",
        findings=ordered(findings),
        skipped=report.skipped if report is not None else (), notes=notes,
        rank=rank, world_size=world, exit_code=got.code, verdict=got.line, timeout=bound, me=summary,
        ranks=got.summaries, missing=got.missing, decision=got.decision, got_verdict=got.got_verdict,
    )


def check_fleet(path: str | os.PathLike[str] | None = None, options: VerifyOptions = VerifyOptions(), *,
                timeout: float | None = None, host: str | None = None) -> FleetReport:
    """Like verify_fleet(), but raise EnvMismatchError (exit code = the fleet's) when the fleet is not ok."""
    report = verify_fleet(path, options, timeout=timeout, host=host)
    if not report.ok:
        raise EnvMismatchError(report, report.exit_code)
    return report


def _hostname() -> str:
    import socket  # here, not at the top: `verify --fast` without --distributed never needs it

    return socket.gethostname()

"""The fleet's transport: the fingerprint exchange over torch.distributed's key-value store.

The only module of envlock that touches torch.distributed, and it imports torch only inside the functions that
need it. The exchange goes through the c10d TCPStore that torchrun or `init_process_group` already runs, not through
a collective: each rank writes a fixed-size fingerprint under its own key, rank 0 gathers them against a deadline,
decides, and writes one verdict back that every rank exits with. Every wait is bounded, so a rank that died or hangs
is named instead of hanging the others.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from envlock import slurm
from envlock.errors import EnvironmentUnavailable, ExitCode, UsageError
from envlock.fleet.decide import Decision, decide
from envlock.fleet.wire import DEFAULT_TIMEOUT, RankSummary, decode_summary, encode_verdict
from envlock.model import Policy

TIMEOUT_ENV = "ENVLOCK_FLEET_TIMEOUT"
KEY_PREFIX = "envlock/fleet"
#: How long rank 0 waits for the others to read the verdict before it returns (and may close a store it hosts).
ACK_WAIT = 5.0


class Store(Protocol):
    """The part of torch.distributed.Store the exchange uses."""

    def set(self, key: str, value: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def add(self, key: str, value: int) -> int: ...
    def check(self, keys: list[str]) -> bool: ...
    def wait(self, keys: list[str], timeout: timedelta) -> None: ...
    def multi_get(self, keys: list[str]) -> list[bytes]: ...
    def delete_key(self, key: str) -> bool: ...


def resolve_timeout(value: float | None) -> float:
    """The bound on every wait: the option, else $ENVLOCK_FLEET_TIMEOUT, else 60 s."""
    if value is None:
        text = os.environ.get(TIMEOUT_ENV, "")
        if not text:
            return DEFAULT_TIMEOUT
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds") from None
    if not 0 < value <= 86400:
        raise UsageError(f"--timeout {value:g}: expected seconds between 0 and 86400")
    return float(value)


@dataclass(frozen=True)
class Exchanged:
    """What one rank got back from the exchange."""

    code: int
    line: str
    severity: str
    got_verdict: bool = True
    summaries: tuple[RankSummary, ...] = ()
    missing: tuple[int, ...] = ()
    decision: Decision | None = None


def _poll(read: Callable[[], int], target: int, deadline: float) -> int:
    """Poll a counter until it reaches `target` or the deadline passes; its last value."""
    delay = 0.001
    value = read()
    while value < target and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        value = read()
    return value


def exchange(store: Store, rank: int, world_size: int, payload: bytes, timeout: float, *,
             policy: Policy | None = None, generation: str = "0") -> Exchanged:
    """Post this rank's fingerprint; rank 0 gathers (bounded), decides and posts the verdict; all read it."""
    calls = store.add(f"{KEY_PREFIX}/calls/{generation}/{rank}", 1)
    prefix = f"{KEY_PREFIX}/{generation}/{calls}"
    mine = f"{prefix}/fp/{rank}"
    store.set(mine, payload)
    store.add(f"{prefix}/arrived", 1)
    verdict_key = f"{prefix}/verdict"
    if rank != 0:
        try:
            store.wait([verdict_key], timedelta(seconds=2 * timeout))
        except RuntimeError:
            return Exchanged(code=int(ExitCode.UNAVAILABLE), line=f"no verdict from rank 0 within {2 * timeout:g} s",
                             severity="error", got_verdict=False)
        raw = json.loads(store.get(verdict_key).decode("utf-8"))
        store.delete_key(mine)
        # The ack is this rank's last word to the store: once every rank has acked, rank 0 may return and close a
        # store it hosts, so nothing may come after it.
        store.add(f"{prefix}/ack", 1)
        return Exchanged(code=int(raw["c"]), line=str(raw["l"]), severity=str(raw.get("s", "")))
    deadline = time.monotonic() + timeout
    arrived = _poll(lambda: store.add(f"{prefix}/arrived", 0), world_size, deadline)
    keys = [f"{prefix}/fp/{r}" for r in range(world_size)]
    present = list(range(world_size)) if arrived >= world_size else [r for r in range(world_size)
                                                                       if store.check([keys[r]])]
    values = store.multi_get([keys[r] for r in present]) if present else []
    summaries = tuple(decode_summary(bytes(v).rstrip(b" "), r) for r, v in zip(present, values, strict=True))
    decision = decide(summaries, world_size, policy=policy, timeout=timeout)
    severity = "error" if decision.code else decision.homogeneity
    store.set(verdict_key, encode_verdict(decision.code, decision.line, severity))
    others = len(present) - (1 if 0 in present else 0)
    acked = _poll(lambda: store.add(f"{prefix}/ack", 0), others, time.monotonic() + min(timeout, ACK_WAIT))
    store.delete_key(mine)
    if acked >= world_size - 1:  # nobody can still be waiting for it
        store.delete_key(verdict_key)
    return Exchanged(code=decision.code, line=decision.line, severity=severity, summaries=summaries,
                     missing=tuple(r for r in range(world_size) if r not in present), decision=decision)


def launcher_rank() -> tuple[int, int] | None:
    """(rank, world size) from torchrun's environment (RANK, WORLD_SIZE) or Slurm's (SLURM_PROCID, SLURM_NTASKS)."""
    for rank_var, world_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if os.environ.get(rank_var) and os.environ.get(world_var):
            try:
                rank, world = int(os.environ[rank_var]), int(os.environ[world_var])
            except ValueError:
                raise UsageError(f"{rank_var}/{world_var} are not integers") from None
            if not 0 <= rank < world:
                raise UsageError(f"{rank_var}={rank} is not a rank of {world_var}={world}")
            return rank, world
    return None


def _job_group() -> Any:
    """torch.distributed when this process already has a default process group, else None (torch not imported)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def check_launcher() -> None:
    """Raise UsageError unless there is a process group or a launcher environment to join."""
    if _job_group() is not None:
        return
    if launcher_rank() is None or (not _slurm_step() and (not os.environ.get("MASTER_ADDR")
                                                          or not os.environ.get("MASTER_PORT"))):
        raise UsageError("--distributed needs a process group or a launcher environment: run it under torchrun or "
                         "srun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (see docs/fleet.md)")
    rendezvous()


def _slurm_step() -> bool:
    """Whether the ranks come from Slurm (SLURM_PROCID/SLURM_NTASKS, not RANK/WORLD_SIZE) in an srun step."""
    env = os.environ
    return not (env.get("RANK") and env.get("WORLD_SIZE")) and bool(env.get("SLURM_PROCID")) \
        and bool(env.get("SLURM_NTASKS")) and slurm.in_step(env)


def rendezvous() -> tuple[str, int]:
    """(address, port) of the job's store: MASTER_ADDR and MASTER_PORT, else, for an srun step, the step's first
    host and a port derived from its job and step ids (envlock.slurm)."""
    addr = os.environ.get("MASTER_ADDR", "")
    if not addr and _slurm_step():
        addr = slurm.head_address(os.environ)
    if not os.environ.get("MASTER_PORT") and _slurm_step():
        return addr, slurm.port_of_step(os.environ)
    return addr, master_port()


def master_port() -> int:
    """$MASTER_PORT as a TCP port number (1-65535), or a one-line UsageError naming it."""
    text = os.environ.get("MASTER_PORT", "")
    # ASCII digits only: int() would also take " 29500", "+29500", "2_9500" and other scripts' digits.
    port = int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else -1
    if not 1 <= port <= 65535:
        shown = text if len(text) <= 20 else text[:17] + "..."
        raise UsageError(f"MASTER_PORT={shown!r} is not a TCP port number (expected 1-65535)")
    return port


@contextmanager
def joined(timeout: float) -> Iterator[tuple[Any, int, int, str]]:
    """(store, rank, world size, generation): the job's store when it has a process group, else one joined from the
    launcher's environment (torchrun's agent store, or a TCPStore rank 0 hosts), closed on exit."""
    dist = _job_group()
    generation = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if dist is not None:
        from torch.distributed import distributed_c10d

        yield distributed_c10d._get_default_store(), dist.get_rank(), dist.get_world_size(), generation
        return
    check_launcher()
    rank, world = launcher_rank() or (0, 1)
    addr, port = rendezvous()
    try:
        import torch.distributed as torch_dist
    except ImportError as exc:
        raise EnvironmentUnavailable(f"--distributed needs torch.distributed: {exc}") from None
    # torchrun's agent already serves a store at MASTER_ADDR:MASTER_PORT; without it rank 0 serves one, and does not
    # wait for the others to connect (a missing rank must not block the report).
    host_it = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    # Reach the store first, within the bound: TCPStore's own connect retries for up to twice its timeout and logs
    # every failed attempt from C++, so an unreachable store would take longer than asked and bury the one line.
    _reach(addr, port, timeout, connect=not host_it)
    with _quiet_torch_logs():
        store = _bounded(lambda: torch_dist.TCPStore(  # type: ignore[attr-defined]
            addr, port, world, is_master=host_it, timeout=timedelta(seconds=timeout),
            wait_for_workers=False, multi_tenant=True), timeout, f"{addr}:{port}")
    try:
        yield store, rank, world, generation
    finally:
        del store


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _reach(addr: str, port: int, timeout: float, *, connect: bool) -> None:
    """Return once `addr` resolves (and, with `connect`, something accepts on `addr:port`); retried until `timeout`
    seconds have passed, then EnvironmentUnavailable says what the last attempt met."""
    import socket  # here, not at the top: `verify --fast` without --distributed never needs it

    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            if connect:
                left = max(deadline - time.monotonic(), 0.05)
                with socket.create_connection((addr, port), timeout=min(left, 5.0)):
                    return
            socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
            return
        except socket.gaierror as exc:
            why = f"cannot resolve MASTER_ADDR={addr!r} ({exc.strerror or exc})"
        except OSError as exc:
            why = (exc.strerror or str(exc) or type(exc).__name__).lower()
        if time.monotonic() + delay >= deadline:
            raise EnvironmentUnavailable(f"cannot reach the job's store at {addr}:{port} within {timeout:g} s: {why}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _bounded(connect: Callable[[], Any], timeout: float, where: str) -> Any:
    """What `connect()` returns, run in a daemon thread and given `timeout` seconds: TCPStore's handshake has no
    deadline of its own, so a port where something other than a store listens would hang the rank for good."""
    import threading

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["store"] = connect()
        except BaseException as exc:  # handed to the caller's thread, which raises or maps it
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="envlock-store-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise EnvironmentUnavailable(f"the job's store at {where} did not answer within {timeout:g} s (is something "
                                     "other than the job's store listening there?)")
    error = outcome.get("error")
    if isinstance(error, RuntimeError):
        raise EnvironmentUnavailable(f"cannot reach the job's store at {where}: {first_line(error)}") from None
    if error is not None:
        raise error
    return outcome["store"]


@contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """Send fd 2 to /dev/null while torch's C++ code runs: c10d logs each retry and failure there itself (and
    TORCH_CPP_LOG_LEVEL is read only when torch loads, usually long before), and envlock says it in one line. Left
    alone when the user set TORCH_CPP_LOG_LEVEL: they asked to see those logs."""
    if "TORCH_CPP_LOG_LEVEL" in os.environ:
        yield
        return
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2, or a stderr without one
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)

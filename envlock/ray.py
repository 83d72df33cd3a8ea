"""`envlock verify --ray`: verify every alive node of a Ray cluster and group the answers like the fleet check.

One task is pinned to each alive node (node affinity, not soft), carrying the lock's bytes (and the driver's
pyproject.toml, for its [tool.envlock] policy): a node needs envlock installed, not the lock on its disk. Each task
runs envlock's ordinary verify there and returns its fingerprint summary (envlock.fleet.wire); the driver groups the
summaries with envlock.fleet.decide, naming nodes by id and IP. ray is imported only inside these functions (the
`envlock[ray]` extra).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from envlock.errors import EnvironmentUnavailable, EnvlockError, EnvMismatchError, ExitCode, UsageError
from envlock.findings import clip, ordered
from envlock.fleet.decide import FleetReport, decide
from envlock.fleet.store import first_line, resolve_timeout
from envlock.fleet.wire import RankSummary, decode_summary, encode_summary, summarize
from envlock.lockfile import default_lock_path, find_project_policy, loads, read_text
from envlock.model import Policy
from envlock.policy import merge_policy
from envlock.verifying import Verification, VerifyOptions, examine

__all__ = ["INSTALL_HINT", "check_cluster", "cluster_report", "verify_cluster", "verify_on_node"]

INSTALL_HINT = "envlock[ray] is needed: pip install 'envlock[ray]'"
#: How long connecting to an address given as host:port may take before the cluster is called unreachable (Ray's
#: own connect retries for minutes).
CONNECT_TIMEOUT = 5.0
#: The Ray resource only the head node has.
HEAD_RESOURCE = "node:__internal_head__"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def cluster_address(address: str | None) -> str:
    """The cluster to join: `address`, else $RAY_ADDRESS, else `auto` (the cluster started on this machine); never
    a new local one, which is what ray.init() without an address would start."""
    return (address or os.environ.get("RAY_ADDRESS", "")).strip() or "auto"


def _reachable(address: str) -> None:
    """Raise EnvironmentUnavailable unless something accepts connections at a host:port address (or ray://…)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        if address != "auto":
            raise UsageError(f"Ray address {address!r}: expected host:port, ray://host:port or auto")
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise EnvironmentUnavailable(f"no Ray cluster at {address}: {exc.strerror or exc}") from None


def _options_data(options: VerifyOptions) -> dict[str, Any]:
    return {"fast": options.fast, "deep": options.deep, "ignore": list(options.ignore), "warn": list(options.warn),
            "target": options.target, "init_cuda": options.init_cuda}


def verify_on_node(payload: dict[str, Any]) -> dict[str, Any]:
    """Run on a node, as a Ray task: verify this node against the lock in `payload`; return its summary as the
    fleet's wire bytes, with the node's id and IP as Ray names them."""
    import tempfile

    ray = _import_ray()
    name = str(payload["name"])
    raw = payload["options"]
    options = VerifyOptions(fast=bool(raw["fast"]), deep=bool(raw["deep"]), ignore=tuple(raw["ignore"]),
                            warn=tuple(raw["warn"]), target=raw["target"], init_cuda=bool(raw["init_cuda"]))
    verification: Verification | None = None
    error: EnvlockError | None = None
    with tempfile.TemporaryDirectory(prefix="envlock-ray-") as folder:
        lock_path = Path(folder) / (Path(name).name or "envlock.lock")
        lock_path.write_bytes(payload["lock"])
        if payload.get("pyproject") is not None:
            (Path(folder) / "pyproject.toml").write_text(payload["pyproject"], encoding="utf-8")
        here = os.getcwd()
        os.chdir(folder)  # the driver's [tool.envlock] applies, not whatever pyproject.toml the worker sits in
        try:
            with _without_ray_vendored(ray):
                verification = examine(lock_path, options)
        except EnvlockError as exc:
            error = exc
        finally:
            os.chdir(here)
    context = ray.get_runtime_context()
    ip = ray.util.get_node_ip_address()
    summary = summarize(int(payload["rank"]), ip, verification, error)
    if error is not None:  # name the lock as the driver did, not by the copy in this task's folder
        summary = dataclasses.replace(summary, message=clip(str(error).replace(str(lock_path), name), 200))
    return {"summary": encode_summary(summary), "node_id": context.get_node_id(), "ip": ip}


@contextmanager
def _without_ray_vendored(ray: Any) -> Iterator[None]:
    """sys.path without the folders a Ray worker adds inside ray's own package (ray/thirdparty_files holds Ray's
    private copies of psutil and colorama): they come with ray, whose version the lock already holds, and a lock
    captured outside Ray never sees them, so each would be an extra package on every node."""
    inside = os.path.dirname(os.path.abspath(ray.__file__)) + os.sep
    saved = list(sys.path)
    sys.path[:] = [entry for entry in saved if not os.path.abspath(entry).startswith(inside)]
    try:
        yield
    finally:
        sys.path[:] = saved


def alive_nodes(nodes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(node id, IP) of each alive node, the head first, then by IP and id."""
    alive = [n for n in nodes if n.get("Alive")]
    alive.sort(key=lambda n: (HEAD_RESOURCE not in n.get("Resources", {}), str(n.get("NodeManagerAddress", "")),
                              str(n.get("NodeID", ""))))
    return [(str(n["NodeID"]), str(n.get("NodeManagerAddress", "?"))) for n in alive]


def failed_summary(rank: int, ip: str, exc: BaseException) -> RankSummary:
    """The summary of a node whose task failed (envlock missing there, the worker or node died): exit 3."""
    return RankSummary(rank=rank, host=ip, code=int(ExitCode.UNAVAILABLE),
                       message=f"its verify task failed: {first_line(exc)}"[:200])


def verify_cluster(lock: str | os.PathLike[str] | None = None, options: VerifyOptions = VerifyOptions(), *,
                   address: str | None = None, timeout: float | None = None) -> FleetReport:
    """Verify every alive node of the Ray cluster at `address` (default $RAY_ADDRESS, else `auto`) against the lock
    and return the cluster's verdict; a node whose task does not finish within `timeout` seconds is named missing
    (exit 3). Joins the cluster unless this process already has (then it leaves it as it was)."""
    if options.facts is not None:
        raise UsageError("a recorded machine (facts) is not a node of the cluster: verify it without Ray")
    bound = resolve_timeout(timeout)
    path = Path(lock) if lock is not None else default_lock_path()
    text = read_text(path)
    loaded, warnings = loads(text, str(path))  # a lock that cannot be used is refused here, before any node
    project = find_project_policy()
    policy = merge_policy(loaded.policy, project, ignore=options.ignore, warn=options.warn)
    pyproject = Path(project[0]).read_text(encoding="utf-8") if project is not None else None
    ray = _import_ray()
    where = cluster_address(address)
    joined = not ray.is_initialized()
    if joined:
        _reachable(where)
        try:
            ray.init(address=where, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            if where == "auto":  # Ray's own message names its `--address` flag, not envlock's
                raise EnvironmentUnavailable("no Ray cluster is running on this machine: give its address "
                                             "(--ray-address HOST:PORT) or set RAY_ADDRESS") from None
            raise EnvironmentUnavailable(f"no Ray cluster at {where}: {first_line(exc)}") from None
    try:
        nodes = alive_nodes(ray.nodes())
        if not nodes:
            raise EnvironmentUnavailable(f"the Ray cluster at {where} has no alive node")
        payload = {"lock": text.encode("utf-8"), "name": str(path), "pyproject": pyproject,
                   "options": _options_data(options)}
        summaries = _run_tasks(ray, nodes, payload, bound)
    finally:
        if joined:
            ray.shutdown()
    return cluster_report(str(path), nodes, summaries, policy=policy, timeout=bound, notes=warnings)


def cluster_report(lock: str, nodes: Sequence[tuple[str, str]], summaries: Sequence[RankSummary], *,
                   policy: Policy | None, timeout: float, notes: Sequence[str] = ()) -> FleetReport:
    """The cluster's verdict from the summaries that came back (a node with none never answered): the fleet's
    grouping, its members named by node id and IP. Pure."""
    answered = {s.rank for s in summaries}
    named = dict(enumerate(nodes))
    decision = decide(summaries, len(nodes), policy=policy, timeout=timeout, nodes=named)
    targets = {s.target for s in summaries if s.target}
    return FleetReport(
        lock=lock, target=targets.pop() if len(targets) == 1 else "", findings=ordered(decision.findings),
        notes=tuple(notes), rank=0, world_size=len(nodes), exit_code=decision.code, verdict=decision.line,
        timeout=timeout, ranks=tuple(sorted(summaries, key=lambda s: s.rank)),
        missing=tuple(r for r in range(len(nodes)) if r not in answered), decision=decision,
    )


def _run_tasks(ray: Any, nodes: list[tuple[str, str]], payload: dict[str, Any],
               bound: float) -> list[RankSummary]:
    """One task pinned to each node; the summaries that came back within `bound` seconds (the tasks of the nodes
    that did not answer are cancelled)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # max_calls=1: each verify gets a fresh worker (what a new task sees, not what an earlier task left set) that
    # exits after it, taking any CUDA context it made with it.
    task = ray.remote(max_calls=1)(verify_on_node)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                         num_cpus=0, max_retries=0, name="envlock-verify").remote(
                             {**payload, "rank": rank})
            for rank, (node_id, _) in enumerate(nodes)]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=bound)
    done = set(ready)
    summaries: list[RankSummary] = []
    for rank, ref in enumerate(refs):
        ip = nodes[rank][1]
        if ref not in done:
            try:
                ray.cancel(ref, force=True)
            except (ray.exceptions.RayError, ValueError, TypeError):  # a node that is gone cannot be told to stop
                pass
            continue
        try:
            answer = ray.get(ref, timeout=bound)
            summary = decode_summary(answer["summary"], rank)
        except ray.exceptions.RayError as exc:  # the task's error (envlock missing there), a dead worker or node
            summary = failed_summary(rank, ip, exc)
        summaries.append(dataclasses.replace(summary, rank=rank))
    return summaries


def check_cluster(lock: str | os.PathLike[str] | None = None, options: VerifyOptions = VerifyOptions(), *,
                  address: str | None = None, timeout: float | None = None) -> FleetReport:
    """Like verify_cluster(), but raise EnvMismatchError (exit code = the cluster's) when the cluster is not ok."""
    report = verify_cluster(lock, options, address=address, timeout=timeout)
    if not report.ok:
        raise EnvMismatchError(report, report.exit_code)
    return report

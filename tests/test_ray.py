"""`envlock verify --ray`: the grouping and rendering of node answers (pure, no ray needed), the errors a user can
cause, and a real Ray cluster on this machine (a head and two more nodes, one started with another thread count).

The real-cluster tests skip when ray is not installed, unless ENVLOCK_REQUIRE_RAY=1 (CI), where that fails.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from envlock.errors import LockError, UsageError
from envlock.fleet.decide import nodes_label
from envlock.fleet.wire import RankSummary
from envlock.ray import INSTALL_HINT, alive_nodes, cluster_address, cluster_report, failed_summary, verify_cluster
from envlock.report import render_fleet
from envlock.verifying import VerifyOptions
from tests.helpers import ENVLOCK, clean_env

ROOT = Path(__file__).resolve().parent.parent
H100_LOCK = ROOT / "fixtures" / "hosts" / "linux-nvidia550-cuda12.4-sapphirerapids-h100x8" / "expected.lock"
BIN = Path(sys.executable).parent
REQUIRE = os.environ.get("ENVLOCK_REQUIRE_RAY") == "1"
HAS_RAY = importlib.util.find_spec("ray") is not None and (BIN / "ray").exists()

A = "a1b2c3d4" + "0" * 48
B = "b5e6f7a8" + "1" * 48
C = "c9d0e1f2" + "2" * 48


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"ENVLOCK_REQUIRE_RAY=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _need_ray() -> None:
    if not HAS_RAY:
        _unavailable("ray is not installed (pip install 'envlock[ray]')")


# --- pure: the cluster's verdict from node answers ----------------------------------------------------------------


def ok(rank: int, ip: str, digest: str = "aaaa", **keys: str) -> RankSummary:
    return RankSummary(rank=rank, host=ip, code=0, digest=digest, sections="x" * 66, target="t", keys=dict(keys))


def odd(rank: int, ip: str) -> RankSummary:
    return RankSummary(rank=rank, host=ip, code=1, errors=1, digest="bbbb", sections="y" * 66, target="t",
                       failing=(("floats.env.OMP_NUM_THREADS", "1", "3"),), keys={"floats.env.OMP_NUM_THREADS": "3"})


NODES = [(A, "10.0.0.1"), (B, "10.0.0.2"), (C, "10.0.0.2")]


def test_a_node_that_differs_is_named_by_id_and_ip_and_the_cluster_exits_1() -> None:
    summaries = [ok(0, "10.0.0.1", **{"floats.env.OMP_NUM_THREADS": "1"}),
                 ok(1, "10.0.0.2", **{"floats.env.OMP_NUM_THREADS": "1"}), odd(2, "10.0.0.2")]
    report = cluster_report("envlock.lock", NODES, summaries, policy=None, timeout=10)
    lines = render_fleet(report, title="verify --ray")
    assert report.exit_code == 1 and not report.ok
    assert lines[0] == "envlock verify --ray: MISMATCH — 3 nodes on 2 hosts — envlock.lock (target t)"
    assert lines[1].startswith("  nodes a1b2c3d4 at 10.0.0.1, b5e6f7a8 at 10.0.0.2: OK [fingerprint aaaa")
    assert lines[2] == "  node c9d0e1f2 at 10.0.0.2: floats.env.OMP_NUM_THREADS 1 → 3"
    assert lines[3].startswith("  warning: the fleet is not homogeneous: floats.env.OMP_NUM_THREADS (1 on nodes "
                               "a1b2c3d4 at 10.0.0.1, b5e6f7a8 at 10.0.0.2; 3 on node c9d0e1f2 at 10.0.0.2)")
    errors = [f for f in report.findings if f.severity == "error"]
    assert [(f.path, f.hint) for f in errors] == [("fleet.nodes.c9d0e1f2", "node c9d0e1f2 at 10.0.0.2")]
    assert report.verdict.startswith("MISMATCH: node c9d0e1f2 at 10.0.0.2: floats.env.OMP_NUM_THREADS 1 → 3")


def test_a_node_that_never_answers_is_named_and_the_cluster_exits_3() -> None:
    report = cluster_report("envlock.lock", NODES[:2], [ok(0, "10.0.0.1")], policy=None, timeout=4)
    lines = render_fleet(report, title="verify --ray")
    assert report.exit_code == 3 and report.missing == (1,)
    assert lines[0].startswith("envlock verify --ray: ERROR (exit 3) — 2 nodes on 2 hosts")
    assert lines[-1] == "  node b5e6f7a8 at 10.0.0.2: never answered within 4 s"
    [missing] = [f for f in report.findings if f.path == "fleet.nodes"]
    assert (missing.expected, missing.actual) == ("all 2 nodes answer",
                                                  "node b5e6f7a8 at 10.0.0.2 never answered within 4 s")


def test_a_clean_cluster_passes_and_quiet_prints_nothing() -> None:
    summaries = [ok(r, ip) for r, (_, ip) in enumerate(NODES)]
    report = cluster_report("envlock.lock", NODES, summaries, policy=None, timeout=10, notes=("a newer minor",))
    assert report.exit_code == 0 and report.ok and report.findings == ()
    assert render_fleet(report, title="verify --ray") == [
        "envlock verify --ray: OK — 3 nodes on 2 hosts — envlock.lock (target t)",
        "  nodes a1b2c3d4 at 10.0.0.1, b5e6f7a8 at 10.0.0.2, c9d0e1f2 at 10.0.0.2: OK",
        "  note: a newer minor",
    ]
    assert render_fleet(report, quiet=True, title="verify --ray") == []


def test_a_node_whose_task_failed_is_exit_3_with_the_reason() -> None:
    failed = failed_summary(1, "10.0.0.2", RuntimeError("No module named 'envlock'\nTraceback ..."))
    report = cluster_report("envlock.lock", NODES[:2], [ok(0, "10.0.0.1"), failed], policy=None, timeout=10)
    assert report.exit_code == 3
    assert ("  node b5e6f7a8 at 10.0.0.2: error (exit 3): its verify task failed: No module named 'envlock'"
            in render_fleet(report, title="verify --ray"))


def test_summaries_keep_their_node_order() -> None:
    shuffled = [odd(2, "10.0.0.2"), ok(0, "10.0.0.1"), ok(1, "10.0.0.2")]
    report = cluster_report("envlock.lock", NODES, shuffled, policy=None, timeout=10)
    assert [s.rank for s in report.ranks] == [0, 1, 2]
    assert dataclasses.replace(report.ranks[2], rank=2) == odd(2, "10.0.0.2")


def test_json_names_every_node_by_its_full_id() -> None:
    report = cluster_report("envlock.lock", NODES, [ok(0, "10.0.0.1"), ok(1, "10.0.0.2"), odd(2, "10.0.0.2")],
                            policy=None, timeout=10)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["exit_code"] == 1 and data["world_size"] == 3 and data["missing"] == []
    assert data["nodes"] == [{"rank": 0, "node_id": A, "ip": "10.0.0.1"}, {"rank": 1, "node_id": B, "ip": "10.0.0.2"},
                             {"rank": 2, "node_id": C, "ip": "10.0.0.2"}]
    assert data["ranks"][2]["keys"] == {"floats.env.OMP_NUM_THREADS": "3"}


def test_many_nodes_are_counted_not_listed() -> None:
    nodes = {r: (f"{r:08x}" + "f" * 48, f"10.0.1.{r}") for r in range(12)}
    assert nodes_label(list(range(12)), nodes) == ("12 nodes (00000000 at 10.0.1.0, 00000001 at 10.0.1.1, "
                                                   "00000002 at 10.0.1.2, …)")


def test_alive_nodes_put_the_head_first_and_leave_dead_ones_out() -> None:
    raw = [{"NodeID": B, "Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 1.0}},
           {"NodeID": C, "Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {}},
           {"NodeID": A, "Alive": True, "NodeManagerAddress": "10.0.0.9",
            "Resources": {"CPU": 1.0, "node:__internal_head__": 1.0}}]
    assert alive_nodes(raw) == [(A, "10.0.0.9"), (B, "10.0.0.2")]


def test_the_cluster_is_the_option_then_ray_address_then_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address(None) == "10.0.0.1:6379"
    assert cluster_address("10.0.0.2:6379") == "10.0.0.2:6379"


# --- errors a user can cause: one line ----------------------------------------------------------------------------


def test_without_ray_installed_the_error_names_the_extra(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = cli("verify", "--ray", "--fast", str(H100_LOCK))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"envlock: error: {INSTALL_HINT}\n"
    assert INSTALL_HINT == "envlock[ray] is needed: pip install 'envlock[ray]'"


def test_no_cluster_at_the_address_is_one_line_and_exit_3(cli: Any) -> None:
    _need_ray()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli("verify", "--ray", "--ray-address", f"127.0.0.1:{port}", "--fast", str(H100_LOCK))
    assert (result.exit_code, result.stdout) == (3, "")
    assert result.stderr == f"envlock: error: no Ray cluster at 127.0.0.1:{port}: Connection refused\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--ray-address", "127.0.0.1:1"], "--ray-address does nothing without --ray"),
    (["--timeout", "3"], "--timeout does nothing without --distributed or --ray"),
    (["--ray", "--distributed"], "--ray and --distributed cannot be used together: --ray runs one verify per node "
                                 "itself, --distributed runs in a job's ranks"),
    (["--ray", "--format", "junit"], "--ray prints the cluster's report as text or JSON on stdout: drop --format "
                                     "junit"),
])
def test_options_that_do_nothing_with_ray_are_refused(cli: Any, args: list[str], message: str) -> None:
    result = cli("verify", *args, str(H100_LOCK))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"envlock: error: {message} (see envlock verify --help)\n"


def test_a_missing_lock_or_recorded_facts_are_refused_before_any_cluster_is_joined(tmp_path: Path) -> None:
    with pytest.raises(LockError, match="no such lock file"):
        verify_cluster(tmp_path / "absent.lock", address="127.0.0.1:1")
    with pytest.raises(UsageError, match="is not a node of the cluster"):
        verify_cluster(H100_LOCK, VerifyOptions(facts={}), address="127.0.0.1:1")


# --- a real cluster on this machine --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


WAIT_FOR_NODES = """
import json, logging, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR)
deadline = time.monotonic() + float(sys.argv[3])
while True:
    alive = [(n["NodeID"], n["NodeManagerAddress"]) for n in ray.nodes() if n["Alive"]]
    if len(alive) >= int(sys.argv[2]) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps(alive))
"""


@dataclass
class Cluster:
    """A head and the nodes added to it, each a `ray start --block` in its own process group (stopped by pgid)."""

    address: str
    folder: Path
    temp: str
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ids: dict[int, str] = field(default_factory=dict)  # pid of its `ray start` -> node id
    ips: dict[str, str] = field(default_factory=dict)  # node id -> IP as Ray reports it

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        argv = [str(BIN / "ray"), "start", "--block", "--num-cpus=1", "--object-store-memory=100000000",
                "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args]
        environment = clean_env(**{"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", **env})
        with open(Path(self.temp) / f"node{len(self.nodes)}.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.temp, env=environment)
        self.nodes.append(proc)
        return proc

    def wait_for(self, count: int, timeout: float = 60) -> list[tuple[str, str]]:
        host, port = self.address.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:  # ray.init() retries for minutes against a port that is not open yet: wait for it first
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.nodes):
                    raise AssertionError(f"the Ray head did not start: {self.log()}") from None
                time.sleep(0.2)
        done = subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, self.address, str(count), str(timeout)],
                              capture_output=True, text=True, timeout=timeout + 30, env=clean_env(), check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        alive = [(str(i), str(ip)) for i, ip in json.loads(done.stdout)]
        assert len(alive) == count, f"{len(alive)} of {count} nodes came up: {self.log()}"
        self.ips.update(alive)
        return alive

    def add(self, **env: str) -> str:
        """Start one more node (its start command's environment updated by `env`); its node id."""
        before = set(self.ips)
        proc = self.start(f"--address={self.address}", **env)
        [new] = [i for i, _ in self.wait_for(len(before) + 1) if i not in before]
        self.ids[proc.pid] = new
        return new

    def log(self) -> str:
        return " | ".join(p.read_text(errors="replace")[-600:] for p in sorted(Path(self.temp).glob("node*.log")))

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                proc.terminate()  # `ray start --block` stops what it started, then exits
        for proc in reversed(self.nodes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything of that node still in its process group
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    _need_ray()
    temp = tempfile.mkdtemp(prefix="elray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    folder = Path(temp) / "job"
    folder.mkdir()
    made = Cluster(address=f"127.0.0.1:{port}", folder=folder, temp=temp)
    try:
        head = made.start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}/ray")
        [(head_id, _)] = made.wait_for(1)
        made.ids[head.pid] = head_id
        made.add()  # a second node with the head's environment
        # The lock, captured where the job runs, with the environment the nodes were started with.
        done = subprocess.run([str(ENVLOCK), "capture", "--no-numerics", "-o", "envlock.lock"], cwd=folder,
                              env=clean_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=180,
                              check=False)
        assert done.returncode == 0, done.stderr
        yield made
    finally:
        made.stop()
        shutil.rmtree(temp, ignore_errors=True)


def verify_ray(cluster: Cluster, *args: str, timeout: float = 60,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENVLOCK), "verify", "--ray", "--ray-address", cluster.address, "--fast", *args,
                           "envlock.lock"], cwd=cwd or cluster.folder, env=clean_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=timeout + 60, check=False)


def label(cluster: Cluster, node_id: str) -> str:
    return f"node {node_id[:8]} at {cluster.ips[node_id]}"


@pytest.mark.slow
def test_a_clean_cluster_passes_on_every_node(cluster: Cluster) -> None:
    done = verify_ray(cluster, "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("envlock verify --ray: OK — 2 nodes on 1 host — envlock.lock (target ")
    ids = list(cluster.ips)
    assert lines[1] == f"  nodes {ids[0][:8]} at {cluster.ips[ids[0]]}, {ids[1][:8]} at {cluster.ips[ids[1]]}: OK"
    # A pattern that matches nothing is refused on every node, in one line for both.
    done = verify_ray(cluster, "--timeout", "60", "--ignore", "nosuch.field")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("envlock verify --ray: ERROR (exit 2) — 2 nodes on 1 host"), lines
    assert lines[1].startswith(f"  nodes {ids[0][:8]} at {cluster.ips[ids[0]]}, {ids[1][:8]} at "
                               f"{cluster.ips[ids[1]]}: error (exit 2): ") and "nosuch.field" in lines[1], lines
    assert "envlock-ray-" not in done.stdout  # the lock is named as the driver named it, not by the task's copy
    # The Python API gives the same verdict.
    code = ("import envlock.ray, sys; r = envlock.ray.verify_cluster('envlock.lock', address=sys.argv[1], "
            "timeout=60); print(r.exit_code, r.world_size, sorted(n for n, _ in r.decision.nodes.values()))")
    api = subprocess.run([sys.executable, "-c", code, cluster.address], cwd=cluster.folder, capture_output=True,
                         text=True, timeout=120, env=clean_env(OMP_NUM_THREADS="1"), check=False)
    assert api.returncode == 0, api.stderr[-2000:]
    assert api.stdout.strip() == f"0 2 {sorted(ids)}"


@pytest.fixture(scope="module")
def odd_node(cluster: Cluster) -> str:
    """A third node whose `ray start` ran with OMP_NUM_THREADS=3 (the lock has 1)."""
    return cluster.add(OMP_NUM_THREADS="3")


@pytest.mark.slow
def test_a_node_started_with_another_thread_count_is_named_exit_1(cluster: Cluster, odd_node: str) -> None:
    done = verify_ray(cluster, "--timeout", "60")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("envlock verify --ray: MISMATCH — 3 nodes on 1 host — envlock.lock")
    mine = [line for line in lines if line.startswith(f"  {label(cluster, odd_node)}: ")]
    assert len(mine) == 1 and "floats.env.OMP_NUM_THREADS 1 → 3" in mine[0], lines
    others = [i for i in cluster.ips if i != odd_node]
    assert any(line.startswith(f"  nodes {others[0][:8]}") and "OK" in line for line in lines), lines
    # The task saw the variable the node was started with: its summary carries the value.
    data = json.loads(verify_ray(cluster, "--timeout", "60", "--json").stdout)
    node_of = {n["rank"]: n["node_id"] for n in data["nodes"]}
    seen = {node_of[r["rank"]]: r["keys"].get("floats.env.OMP_NUM_THREADS") for r in data["ranks"]}
    assert seen == {**{i: "1" for i in others}, odd_node: "3"}
    assert data["exit_code"] == 1 and [f["path"] for f in data["findings"] if f["severity"] == "error"] == [
        f"fleet.nodes.{odd_node[:8]}"]
    # The driver's [tool.envlock] travels with the task, and --warn applies on the node: only warnings are left.
    project = cluster.folder / "project"
    project.mkdir(exist_ok=True)
    shutil.copy(cluster.folder / "envlock.lock", project / "envlock.lock")
    (project / "pyproject.toml").write_text(
        '[tool.envlock.rules]\n"floats.env.OMP_NUM_THREADS" = {rule = "exact", severity = "warn"}\n',
        encoding="utf-8")
    done = verify_ray(cluster, "--timeout", "60", "--warn", "blas.**", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(line.startswith(f"  {label(cluster, odd_node)}: OK (") for line in done.stdout.splitlines()), \
        done.stdout


@pytest.mark.slow
def test_a_node_that_hangs_is_named_within_the_timeout_exit_3(cluster: Cluster, odd_node: str) -> None:
    pid = next(pid for pid, node in cluster.ids.items() if node == odd_node)
    os.killpg(pid, signal.SIGSTOP)  # the node's raylet and workers freeze: its task never starts
    try:
        started = time.monotonic()
        done = verify_ray(cluster, "--timeout", "3")
        took = time.monotonic() - started
    finally:
        os.killpg(pid, signal.SIGCONT)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"  {label(cluster, odd_node)}: never answered within 3 s" in done.stdout.splitlines()
    assert took < 40, took

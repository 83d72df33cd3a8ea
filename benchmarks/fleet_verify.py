"""Time `envlock verify --distributed --fast` under torchrun with 16 ranks against 1 rank, the store exchange alone,
and `envlock verify --ray --fast` on a Ray cluster of N nodes started on this machine.

Usage: python benchmarks/fleet_verify.py [--ranks 16] [--runs 3] [--exchange 16,256,1000] [--ray-nodes 2]
                                         [--no-torchrun]
Prints the wall time of the whole job (torchrun start to exit) for 1 and N ranks and for a plain `verify --fast`,
then the exchange alone (ranks as threads on one TCPStore, fingerprints already made) for the sizes asked, and the
bytes each rank moves. On a machine with fewer cores than ranks the N-rank job time is mostly N interpreters and
N torch imports competing for the cores, not the exchange; the exchange figures separate the two.

The Ray case (skipped when ray is not installed, or with --ray-nodes 0) starts a head and N-1 more nodes
(`ray start --num-cpus=1`, a small object store) and times `envlock verify --ray --fast` (driver start to exit:
joining the cluster, one fresh worker per node, the verify there, the grouping) against the plain `verify --fast`
of the same run, as a ratio and as the seconds beyond it. The cluster is stopped by the process groups it started.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import time_command

from envlock.fleet.store import exchange
from envlock.fleet.wire import FINGERPRINT_BYTES, VERDICT_BYTES, RankSummary, encode_summary


def job_times(argv: list[str], runs: int, env: dict[str, str], cwd: str) -> list[float]:
    time_command(argv, env=env, cwd=cwd)  # warm the page cache
    return [time_command(argv, env=env, cwd=cwd) for _ in range(runs)]


def exchange_time(ranks: int) -> tuple[float, float]:
    """(seconds until every rank has the verdict, seconds rank 0 spent gathering and deciding) for `ranks` threads."""
    import torch.distributed as dist

    server = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=60), wait_for_workers=False)
    # Connected in parallel, as real ranks do: one client connects in ~0.2 s here, mostly the client's handshake.
    with ThreadPoolExecutor(max_workers=64) as pool:
        clients = list(pool.map(lambda _: dist.TCPStore("127.0.0.1", server.port, None, False,
                                                        timedelta(seconds=60)), range(ranks)))
    summary = RankSummary(rank=0, host="node-0000.cluster.example.org", code=0, digest="0123456789abcdef",
                          sections="ab12cd" * 11, target="sapphirerapids-h100-80gb-hbm3x8",
                          keys={"python.version": "3.11.9", "gpu.driver": "550.54.15", "gpu.count": "8",
                                "gpu.devices.0.name": "NVIDIA H100 80GB HBM3", "floats.env.OMP_NUM_THREADS": "8"})
    payloads = [encode_summary(RankSummary(**{**summary.__dict__, "rank": r})) for r in range(ranks)]
    rank0 = [0.0]

    def run(r: int) -> None:
        start = time.perf_counter()
        exchange(clients[r], r, ranks, payloads[r], 60.0)
        if r == 0:
            rank0[0] = time.perf_counter() - start

    threads = [threading.Thread(target=run, args=(r,)) for r in range(ranks)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, rank0[0]


_WAIT_FOR_NODES = """
import json, logging, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR)
deadline = time.monotonic() + 60
while len([n for n in ray.nodes() if n["Alive"]]) < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.2)
print(json.dumps(len([n for n in ray.nodes() if n["Alive"]])))
"""


def ray_times(nodes: int, runs: int, env: dict[str, str], cwd: str, lock: str) -> list[float]:
    """Wall times of `envlock verify --ray --fast` on a cluster of `nodes` nodes started here (and stopped after)."""
    bindir = os.path.dirname(sys.executable)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats",
              "--node-ip-address=127.0.0.1"]
    ray_env = {**env, "RAY_USAGE_STATS_ENABLED": "0"}
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="elray-", dir="/tmp") as temp:
        try:
            started.append(subprocess.Popen(
                [os.path.join(bindir, "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false",
                 f"--temp-dir={temp}/ray", *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, env=ray_env))
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the Ray head did not start") from None
                    time.sleep(0.2)
            for _ in range(nodes - 1):
                started.append(subprocess.Popen([os.path.join(bindir, "ray"), "start", f"--address={address}",
                                                 *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                start_new_session=True, env=ray_env))
            up = subprocess.run([sys.executable, "-c", _WAIT_FOR_NODES, address, str(nodes)], capture_output=True,
                                text=True, timeout=120, env=env, check=True)
            if json.loads(up.stdout) != nodes:
                raise RuntimeError(f"{up.stdout.strip()} of {nodes} Ray nodes came up")
            argv = [os.path.join(bindir, "envlock"), "verify", "--ray", "--ray-address", address, "--fast", lock]
            if subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=300).returncode != 0:
                raise RuntimeError("envlock verify --ray did not pass on a cluster started with the lock's env")
            return job_times(argv, runs, env, cwd)
        finally:
            for proc in reversed(started):
                proc.terminate()
            for proc in reversed(started):
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--exchange", default="16,256,1000", help="comma-separated rank counts for the exchange alone")
    parser.add_argument("--ray-nodes", type=int, default=2, help="nodes of the Ray cluster (0: no Ray case)")
    parser.add_argument("--no-torchrun", action="store_true", help="skip the torchrun jobs and the exchange")
    args = parser.parse_args()
    bindir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # what torchrun sets for its workers; the lock is captured the same way
    print(f"machine: {os.cpu_count()} CPUs; fingerprint {FINGERPRINT_BYTES} B up, verdict {VERDICT_BYTES} B down "
          "per rank (+ 3 counter updates of a few bytes)")
    with tempfile.TemporaryDirectory() as tmp:
        lock = os.path.join(tmp, "envlock.lock")
        subprocess.run([os.path.join(bindir, "envlock"), "capture", "--no-numerics", "-o", lock], check=True,
                       stdout=subprocess.DEVNULL, env=env, cwd=tmp)
        torchrun = os.path.join(bindir, "torchrun")
        plain = job_times([os.path.join(bindir, "envlock"), "verify", "--fast", lock], args.runs, env, tmp)
        results = {"verify --fast (no fleet)": plain}
        for n in (1, args.ranks) if not args.no_torchrun else ():
            argv = [torchrun, "--nproc-per-node", str(n), "--standalone", "-m", "envlock", "verify",
                    "--distributed", "--fast", lock]
            results[f"torchrun {n:>2} rank{'s' if n > 1 else ''} --distributed"] = job_times(argv, args.runs, env, tmp)
        ray_note = ""
        if args.ray_nodes > 0 and importlib.util.find_spec("ray") is not None:
            results[f"verify --ray, {args.ray_nodes} nodes"] = ray = ray_times(args.ray_nodes, args.runs, env, tmp,
                                                                              lock)
            base, median = statistics.median(plain), statistics.median(ray)
            ray_note = (f"verify --ray on {args.ray_nodes} nodes: {median / base:.1f}x one node's own verify --fast, "
                        f"{median - base:+.2f} s beyond it (same run)")
        elif args.ray_nodes > 0:
            ray_note = "verify --ray: skipped (ray is not installed: pip install 'envlock[ray]')"
    for name, times in results.items():
        print(f"{name:<34} median {statistics.median(times):6.2f} s  (min {min(times):.2f}, max {max(times):.2f})")
    if ray_note:
        print(ray_note)
    for n in (int(x) for x in args.exchange.split(",") if x and not args.no_torchrun):
        total, rank0 = exchange_time(n)
        print(f"exchange alone, {n:>5} ranks: all ranks have the verdict after {total * 1000:7.1f} ms "
              f"(rank 0: {rank0 * 1000:7.1f} ms); rank 0 reads {n * FINGERPRINT_BYTES / 1024:7.1f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

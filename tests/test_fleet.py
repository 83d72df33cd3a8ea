"""Fleet verification (`envlock verify --distributed`): the pure grouping and rendering, the store exchange, and real
`torchrun --nproc-per-node 4` jobs on this CPU machine (gloo-free: the exchange runs over torchrun's own store)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from envlock.errors import UsageError
from envlock.fleet.decide import FleetReport, decide, rank_ranges, ranks_label
from envlock.fleet.store import exchange, resolve_timeout
from envlock.fleet.wire import (
    FINGERPRINT_BYTES,
    VERDICT_BYTES,
    RankSummary,
    decode_summary,
    encode_summary,
    encode_verdict,
    summarize,
)
from envlock.model import Policy, Rule
from envlock.report import render_fleet

ROOT = Path(__file__).resolve().parent.parent
H100 = ROOT / "fixtures" / "hosts" / "linux-nvidia550-cuda12.4-sapphirerapids-h100x8"
BIN = Path(sys.executable).parent
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
               "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT", "ENVLOCK_FLEET_TIMEOUT")


# --- pure: ranges, groups, verdicts, rendering --------------------------------------------------------------------


def ok(rank: int, host: str, digest: str = "aaaa", **keys: str) -> RankSummary:
    return RankSummary(rank=rank, host=host, code=0, digest=digest, sections="x" * 66, target="t",
                       keys=dict(keys))


def report_for(summaries: list[RankSummary], world: int, policy: Policy | None = None) -> FleetReport:
    decision = decide(summaries, world, policy=policy, timeout=10)
    answered = {s.rank for s in summaries}
    return FleetReport(lock="envlock.lock", target="t", findings=decision.findings, world_size=world,
                       exit_code=decision.code, verdict=decision.line, timeout=10, ranks=tuple(summaries),
                       missing=tuple(r for r in range(world) if r not in answered), decision=decision)


def test_rank_runs_are_compressed() -> None:
    assert rank_ranges([7, 0, 1, 2, 3, 5, 8]) == "0–3, 5, 7–8"
    assert rank_ranges([4]) == "4"
    assert rank_ranges([]) == ""
    assert ranks_label([2]) == "rank 2"
    assert ranks_label([4, 5, 6, 7]) == "ranks 4–7"


def test_report_groups_ranks_by_host_and_names_the_odd_ones() -> None:
    bad = RankSummary(rank=0, host="b", code=1, errors=1, digest="bbbb", sections="y" * 66, target="t",
                      failing=(("floats.env.OMP_NUM_THREADS", "(unset)", "1"),),
                      keys={"floats.env.OMP_NUM_THREADS": "1"})
    summaries = [ok(r, "a") for r in range(4)] + [dataclasses.replace(bad, rank=r) for r in range(4, 8)]
    report = report_for(summaries, 8)
    lines = render_fleet(report)
    assert report.exit_code == 1 and not report.ok
    assert lines[0].startswith("envlock verify --distributed: MISMATCH — 8 ranks on 2 hosts")
    assert any(line.startswith("  ranks 0–3 on host a: OK") for line in lines)
    assert "  ranks 4–7 on host b: floats.env.OMP_NUM_THREADS (unset) → 1" in lines
    assert [f.path for f in report.findings if f.severity == "error"] == ["fleet.ranks.4–7"]


def test_same_outcome_on_many_hosts_is_one_line() -> None:
    lines = render_fleet(report_for([ok(r, f"node{r // 8:02d}") for r in range(64)], 64))
    assert lines[1:] == ["  ranks 0–63 on 8 hosts (node00, node01, node02, …): OK"]


def test_loose_policy_but_different_ranks_warn_and_name_the_key() -> None:
    summaries = [ok(r, "a", "d1", **{"gpu.driver": "550.54.15"}) for r in range(4)]
    summaries += [ok(r, "b", "d2", **{"gpu.driver": "560.35.03"}) for r in range(4, 8)]
    report = report_for(summaries, 8)
    text = "\n".join(render_fleet(report))
    assert report.exit_code == 0
    assert "ranks 0–3 on host a: OK [fingerprint d1: gpu.driver 550.54.15]" in text
    assert "ranks 4–7 on host b: OK [fingerprint d2: gpu.driver 560.35.03]" in text
    assert ("warning: the fleet is not homogeneous: gpu.driver (550.54.15 on ranks 0–3; 560.35.03 on ranks 4–7)"
            in text)
    assert [f.severity for f in report.findings if f.path == "fleet.homogeneous"] == ["warn"]


def test_policy_can_ask_for_a_homogeneous_fleet() -> None:
    summaries = [ok(0, "a", "d1", **{"gpu.driver": "550"}), ok(1, "b", "d2", **{"gpu.driver": "560"})]
    strict = Policy(rules={"fleet.homogeneous": Rule(rule="exact", severity="error")})
    report = report_for(summaries, 2, strict)
    assert report.exit_code == 1
    assert any(line.startswith("  error: the fleet is not homogeneous: gpu.driver") for line in render_fleet(report))
    relaxed = Policy(rules={"fleet.homogeneous": Rule(rule="ignore", severity="warn")})
    assert not any("homogeneous" in line for line in render_fleet(report_for(summaries, 2, relaxed)))


def test_ranks_that_never_answered_are_named_and_exit_3() -> None:
    report = report_for([ok(r, "a") for r in range(6)], 8)
    assert report.exit_code == 3
    assert "  ranks 6–7: never answered within 10 s" in render_fleet(report)
    assert "ranks 6–7 never answered" in report.verdict


def test_the_worst_exit_code_wins() -> None:
    broken = RankSummary(rank=1, host="a", code=2, message="envlock.lock: not found")
    report = report_for([ok(0, "a"), broken, RankSummary(rank=2, host="a", code=1, errors=1, digest="b")], 3)
    assert report.exit_code == 2
    assert "  rank 1 on host a: error (exit 2): envlock.lock: not found" in render_fleet(report)


def test_quiet_prints_nothing_for_a_healthy_fleet() -> None:
    assert render_fleet(report_for([ok(0, "a"), ok(1, "a")], 2), quiet=True) == []


def test_a_gpu_host_fingerprint_fits_and_round_trips() -> None:
    from envlock.facts import load_facts
    from envlock.verifying import VerifyOptions, examine

    verification = examine(H100 / "expected.lock", VerifyOptions(facts=load_facts(H100 / "facts.json")))
    summary = summarize(5, "node-h100-0017.cluster.example.org", verification)
    encoded = encode_summary(summary)
    assert len(encoded) == FINGERPRINT_BYTES
    assert decode_summary(encoded, 5) == summary
    assert summary.keys["gpu.driver"] == "550.54.15" and summary.keys["gpu.count"] == "8"


def test_an_oversized_summary_is_cut_to_size_keeping_the_counts() -> None:
    failing = tuple((f"packages.pkg{i}.version", "1.0", "2.0") for i in range(60))
    summary = RankSummary(rank=3, host="h" * 64, code=1, errors=60, digest="d" * 16, sections="s" * 66,
                          keys={f"floats.env.V{i}": "x" * 40 for i in range(20)}, failing=failing)
    encoded = encode_summary(summary)
    decoded = decode_summary(encoded, 3)
    assert len(encoded) == FINGERPRINT_BYTES
    assert decoded.errors == 60 and decoded.code == 1 and 0 < len(decoded.failing) < 60


def test_garbage_from_a_rank_is_reported_not_raised() -> None:
    assert decode_summary(b"\xff{not json", 4).code == 3
    assert decode_summary(b"[1, 2]", 4).message == "its fingerprint could not be read"


def test_the_verdict_has_a_fixed_size() -> None:
    encoded = encode_verdict(1, "MISMATCH: " + "rank 2 – " * 200, "error")
    assert len(encoded) == VERDICT_BYTES
    assert json.loads(encoded)["c"] == 1


def test_timeout_comes_from_the_option_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVLOCK_FLEET_TIMEOUT", raising=False)
    assert resolve_timeout(None) == 60
    monkeypatch.setenv("ENVLOCK_FLEET_TIMEOUT", "7.5")
    assert resolve_timeout(None) == 7.5
    assert resolve_timeout(3) == 3
    monkeypatch.setenv("ENVLOCK_FLEET_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="ENVLOCK_FLEET_TIMEOUT"):
        resolve_timeout(None)
    with pytest.raises(UsageError, match="--timeout"):
        resolve_timeout(0)


def test_distributed_without_a_launcher_is_bad_input(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    result = cli("verify", "--distributed", str(H100 / "expected.lock"))
    assert result.exit_code == 2
    assert "--distributed needs a process group or a launcher environment" in result.output


def test_the_fleet_module_does_not_import_torch() -> None:
    code = "import sys, envlock.fleet.run, envlock.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- the exchange over a real c10d store, ranks as threads -------------------------------------------------------


@pytest.mark.torch
def test_exchange_names_a_silent_rank_and_every_answering_rank_gets_the_verdict() -> None:
    import torch.distributed as dist

    server = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=5), wait_for_workers=False)
    results: dict[int, Any] = {}

    def rank(r: int) -> None:
        client = dist.TCPStore("127.0.0.1", server.port, None, False, timedelta(seconds=5))
        results[r] = exchange(client, r, 4, encode_summary(ok(r, "a")), 1.0)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1, 2)]  # rank 3 never comes
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert time.monotonic() - start < 5
    assert results[0].missing == (3,) and results[0].code == 3
    assert [results[r].code for r in (1, 2)] == [3, 3]
    assert "rank 3 never answered" in results[1].line
    # A second call on the same store starts a new round: no stale keys are read.
    again: dict[int, Any] = {}
    pair = [threading.Thread(target=lambda r=r: again.__setitem__(r, exchange(
        dist.TCPStore("127.0.0.1", server.port, None, False, timedelta(seconds=5)), r, 2,
        encode_summary(ok(r, "a")), 1.0))) for r in (0, 1)]
    for t in pair:
        t.start()
    for t in pair:
        t.join(10)
    assert again[0].code == 0 and again[1].code == 0 and again[0].missing == ()


# --- real processes: torchrun, and the plain env:// launch srun users write ---------------------------------------

WRAPPER = '''
import os, sys
from pathlib import Path
out, mode = Path(os.environ["FLEET_OUT"]), os.environ.get("FLEET_MODE", "")
rank = os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))
if mode == "omp" and rank == "2":
    os.environ["OMP_NUM_THREADS"] = "2"
if (mode == "gone" and rank == "3") or (mode == "gone0" and rank == "0"):
    # Exit 0: a failing worker makes torchrun kill the others at once, which is not the case under test.
    (out / f"rank{rank}.code").write_text("gone")
    sys.exit(0)
if mode == "api":
    import torch, torch.distributed as dist
    import envlock
    first = envlock.verify(sys.argv[-1], distributed=True, fast=True, timeout=20)
    assert not dist.is_initialized(), "envlock left a process group behind"
    dist.init_process_group("gloo")
    second = envlock.check(sys.argv[-1], distributed=True, fast=True, timeout=20)
    total = torch.ones(1)
    dist.all_reduce(total)
    assert dist.is_initialized() and total.item() == dist.get_world_size(), "the job's group was disturbed"
    dist.destroy_process_group()
    (out / f"rank{rank}.code").write_text(f"{first.exit_code} {second.exit_code} {len(second.ranks)}")
    sys.exit(0)
from envlock.cli import main
try:
    main(["verify", *sys.argv[1:]])
except SystemExit as exc:
    (out / f"rank{rank}.code").write_text(str(exc.code))
    if mode == "gone0":
        # The others all fail at the bound, each at its own moment: the first to exit non-zero would make torchrun
        # kill the ones a loaded machine started later, before they could say what they saw.
        sys.exit(0)
    raise
'''


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A lock captured here (OMP_NUM_THREADS=1, as torchrun sets it for its workers), a wrapper, a clean env."""
    folder = tmp_path_factory.mktemp("fleet")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and k != "ENVLOCK_LOCK"}
    env["OMP_NUM_THREADS"] = "1"
    lock = folder / "envlock.lock"
    subprocess.run([str(BIN / "envlock"), "capture", "--no-numerics", "-o", str(lock)], check=True, env=env,
                   cwd=folder, stdout=subprocess.DEVNULL)
    wrapper = folder / "wrapper.py"
    wrapper.write_text(WRAPPER)
    return {"folder": folder, "lock": lock, "wrapper": wrapper, "env": env}


def torchrun(job: dict[str, Any], tmp_path: Path, *args: str, mode: str = "", wrapped: bool = True,
             timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], dict[int, str]]:
    tmp_path.mkdir(exist_ok=True)
    env = {**job["env"], "FLEET_OUT": str(tmp_path), "FLEET_MODE": mode}
    target = [str(job["wrapper"])] if wrapped else ["-m", "envlock", "verify"]
    argv = [str(BIN / "torchrun"), "--nproc-per-node", "4", "--standalone", *target, *args]
    done = subprocess.run(argv, env=env, cwd=job["folder"], capture_output=True, text=True, timeout=timeout,
                          check=False)
    codes = {int(p.stem[4:]): p.read_text() for p in tmp_path.glob("rank*.code")}
    return done, codes


def headers(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("envlock verify --distributed:")]


@pytest.mark.slow
@pytest.mark.torch
def test_all_ranks_equal_exit_0_and_rank_0_prints_one_report(job: dict[str, Any], tmp_path: Path) -> None:
    done, _ = torchrun(job, tmp_path, "--distributed", str(job["lock"]), wrapped=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(headers(done.stdout)) == 1 and headers(done.stdout)[0].startswith(
        "envlock verify --distributed: OK — 4 ranks on 1 host")
    assert f"  ranks 0–3 on host {socket.gethostname()}: OK" in done.stdout


@pytest.mark.slow
@pytest.mark.torch
def test_one_rank_with_another_omp_num_threads_fails_every_rank(job: dict[str, Any], tmp_path: Path) -> None:
    done, codes = torchrun(job, tmp_path, "--distributed", str(job["lock"]), mode="omp")
    assert done.returncode == 1
    assert codes == {0: "1", 1: "1", 2: "1", 3: "1"}
    assert len(headers(done.stdout)) == 1 and "MISMATCH" in headers(done.stdout)[0]
    odd = [line for line in done.stdout.splitlines() if line.startswith("  rank 2 on host")]
    assert len(odd) == 1 and "floats.env.OMP_NUM_THREADS 1 → 2" in odd[0]
    assert "  ranks 0–1, 3 on host" in done.stdout
    assert "envlock: rank 2 (" in done.stderr  # the odd rank's own line, in its own log


@pytest.mark.slow
@pytest.mark.torch
def test_a_rank_that_never_answers_is_named_within_the_bound(job: dict[str, Any], tmp_path: Path) -> None:
    start = time.monotonic()
    done, codes = torchrun(job, tmp_path, "--distributed", "--fast", "--timeout", "10", str(job["lock"]),
                           mode="gone")
    elapsed = time.monotonic() - start
    assert codes == {0: "3", 1: "3", 2: "3", 3: "gone"}
    assert done.returncode != 0
    assert "  rank 3: never answered within 10 s" in done.stdout
    assert "  ranks 0–2 on host" in done.stdout
    assert elapsed < 10 + 25, elapsed  # the bound plus start-up of four interpreters on a 2-core machine


@pytest.mark.slow
@pytest.mark.torch
def test_without_rank_0_the_others_stop_at_the_bound(job: dict[str, Any], tmp_path: Path) -> None:
    done, codes = torchrun(job, tmp_path, "--distributed", "--fast", "--timeout", "3", str(job["lock"]),
                           mode="gone0")
    assert codes == {0: "gone", 1: "3", 2: "3", 3: "3"}
    assert done.stderr.count("error: no verdict from rank 0 within 6 s") == 3
    assert headers(done.stdout) == []


@pytest.mark.slow
@pytest.mark.torch
def test_a_loose_policy_warns_about_a_mixed_fleet_unless_it_asks_for_homogeneity(
    job: dict[str, Any], tmp_path: Path
) -> None:
    loose = ("--distributed", "--fast", "--warn", "floats.env.OMP_NUM_THREADS")
    done, codes = torchrun(job, tmp_path / "warn", *loose, str(job["lock"]), mode="omp")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  warning: the fleet is not homogeneous: floats.env.OMP_NUM_THREADS (1 on ranks 0–1, 3; 2 on rank 2)" \
        in done.stdout
    strict = job["folder"] / "strict.lock"
    text = job["lock"].read_text()
    strict.write_text(text.replace("[policy.rules]\n",
                                   '[policy.rules]\n"fleet.homogeneous" = {rule = "exact", severity = "error"}\n'))
    done, codes = torchrun(job, tmp_path / "error", *loose, str(strict), mode="omp")
    assert done.returncode == 1
    assert codes == {0: "1", 1: "1", 2: "1", 3: "1"}
    assert "  error: the fleet is not homogeneous: floats.env.OMP_NUM_THREADS" in done.stdout


@pytest.mark.slow
@pytest.mark.torch
def test_the_python_api_joins_or_reuses_the_jobs_group_and_leaves_it_as_found(
    job: dict[str, Any], tmp_path: Path
) -> None:
    done, codes = torchrun(job, tmp_path, str(job["lock"]), mode="api")
    assert done.returncode == 0, done.stdout + done.stderr
    assert codes == {0: "0 0 4", 1: "0 0 0", 2: "0 0 0", 3: "0 0 0"}
    assert done.stdout == ""  # the API prints nothing


@pytest.mark.slow
@pytest.mark.torch
def test_plain_env_launch_without_torchrun_rank_0_hosts_the_store(job: dict[str, Any], tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**job["env"], "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "envlock", "verify", "--distributed", "--fast",
                                       "--timeout", "20", str(job["lock"])], env=env, cwd=job["folder"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "  ranks 0–1 on host" in outputs[0][0] and outputs[1][0] == ""


# --- a launcher environment envlock cannot use --------------------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-1", "abc", "0", "٢٩٥٠٠", " 29500"])
def test_a_master_port_that_is_no_port_is_one_line_and_exit_2(cli: Any, monkeypatch: pytest.MonkeyPatch,
                                                              port: str) -> None:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port)):
        monkeypatch.setenv(var, value)
    result = cli("verify", "--distributed", "--timeout", "1", str(H100 / "expected.lock"))
    assert result.exit_code == 2
    assert result.stderr == f"envlock: error: MASTER_PORT={port!r} is not a TCP port number (expected 1-65535)\n"
    assert result.stdout == ""


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize(
    ("rank", "addr", "extra", "why"),
    [
        ("1", "127.0.0.1", {}, "connection refused"),
        ("0", "127.0.0.1", {"TORCHELASTIC_USE_AGENT_STORE": "True"}, "connection refused"),
        ("1", "no-such-host.invalid", {}, "cannot resolve MASTER_ADDR='no-such-host.invalid'"),
        ("0", "no-such-host.invalid", {}, "cannot resolve MASTER_ADDR='no-such-host.invalid'"),
    ],
    ids=["dead-port", "dead-agent-store", "unresolvable-worker", "unresolvable-rank-0"],
)
def test_an_unreachable_store_is_one_line_and_exit_3_within_the_bound(
    job: dict[str, Any], rank: str, addr: str, extra: dict[str, str], why: str
) -> None:
    port = _dead_port()
    env = {**job["env"], "RANK": rank, "WORLD_SIZE": "2", "MASTER_ADDR": addr, "MASTER_PORT": str(port), **extra}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "envlock", "verify", "--distributed", "--fast", "--timeout", "2",
                           str(job["lock"])], env=env, cwd=job["folder"], capture_output=True, text=True,
                          timeout=60, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    # torch's own C++ logging ("[W socket.cpp...]", each retry) adds nothing: one line says it all.
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"envlock: error: cannot reach the job's store at {addr}:{port} within 2 s: {why}")
    assert done.stdout == ""
    assert elapsed < 2 + 20, elapsed  # the bound plus an interpreter's start on a 2-core machine


@pytest.mark.slow
@pytest.mark.torch
def test_a_port_where_no_store_answers_is_one_line_and_exit_3_within_the_bound(job: dict[str, Any]) -> None:
    with socket.socket() as listener:  # accepts connections, never speaks the store's protocol
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env = {**job["env"], "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "envlock", "verify", "--distributed", "--fast", "--timeout",
                               "2", str(job["lock"])], env=env, cwd=job["folder"], capture_output=True, text=True,
                              timeout=60, check=False)
        elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert done.stderr == (f"envlock: error: the job's store at 127.0.0.1:{port} did not answer within 2 s (is "
                           "something other than the job's store listening there?)\n")
    assert elapsed < 2 + 20, elapsed

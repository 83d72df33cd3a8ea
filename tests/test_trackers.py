"""Experiment trackers, for real: a `mlflow server` (sqlite backend, local artifacts) started here on a free
loopback port, and W&B in offline mode read back from its run directory. Skipped where the extra is missing."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from envlock.lockfile import load
from tests.helpers import clean_env, write_lock


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _needs(module: str, flag: str) -> pytest.MarkDecorator:
    """Skip when the tracker is not installed, unless ENVLOCK_REQUIRE_<FLAG>=1 (CI), where that fails."""
    if not _installed(module) and os.environ.get(f"ENVLOCK_REQUIRE_{flag}") == "1":
        raise RuntimeError(f"ENVLOCK_REQUIRE_{flag}=1 but {module} is not installed (pip install 'envlock[{module}]')")
    return pytest.mark.skipif(not _installed(module), reason=f"{module} is not installed (envlock[{module}]; "
                              f"ENVLOCK_REQUIRE_{flag}=1 makes this a failure)")


needs_mlflow = _needs("mlflow", "MLFLOW")
needs_wandb = _needs("wandb", "WANDB")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on 127.0.0.1, stopped (its whole process group) when the module is done."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", (root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=clean_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def lock(machine_facts: dict[str, Any], tmp_path: Path) -> Path:
    return write_lock(machine_facts, tmp_path / "envlock.lock")


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean_env(**env), capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.slow
@needs_mlflow
def test_mlflow_run_gets_the_lock_the_report_and_the_tags(mlflow_server: str, lock: Path, tmp_path: Path) -> None:
    code = (
        "import sys, mlflow, envlock\n"
        f"mlflow.set_tracking_uri({mlflow_server!r})\n"
        "mlflow.set_experiment('envlock-test')\n"
        "with mlflow.start_run() as run:\n"
        f"    report = envlock.mlflow.log({str(lock)!r})\n"
        "print(run.info.run_id)\n"
    )
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.strip().splitlines()[-1]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    tags = client.get_run(run_id).data.tags
    loaded, _ = load(lock)
    assert tags["envlock.lock_sha256"] == loaded.lock.content_hash
    assert tags["envlock.target"] == next(iter(loaded.targets))
    assert tags["envlock.ok"] in ("true", "false") and tags["envlock.verdict"].startswith("envlock verify: ")
    local = Path(client.download_artifacts(run_id, "envlock", str(tmp_path / "down")))
    assert (local / "envlock.lock").read_bytes() == lock.read_bytes()
    report = json.loads((local / "verify.json").read_text())
    assert report["lock"] == str(lock) and (report["ok"] is True) == (tags["envlock.ok"] == "true")


@pytest.mark.slow
@needs_mlflow
def test_mlflow_without_an_active_run_starts_none_and_says_so(lock: Path, tmp_path: Path) -> None:
    code = (
        "import mlflow, envlock\n"
        f"mlflow.set_tracking_uri({(tmp_path / 'mlruns').as_uri()!r})\n"
        "try:\n"
        f"    envlock.mlflow.log({str(lock)!r})\n"
        "except envlock.UsageError as exc:\n"
        "    print('refused:', exc)\n"
        "print('active after:', mlflow.active_run())\n"
    )
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: no active MLflow run: call envlock.mlflow.log() inside `with mlflow.start_run():`" in done.stdout
    assert "active after: None" in done.stdout


def _wandb_records(path: str) -> list[Any]:
    """The records of a W&B run file: a ':W&B' header, then 32 KiB blocks of (crc, length, type) + data."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


@pytest.mark.slow
@needs_wandb
def test_wandb_offline_run_gets_the_config_and_the_lock_artifact(lock: Path, tmp_path: Path) -> None:
    code = (
        "import wandb, envlock\n"
        "run = wandb.init(project='envlock-test')\n"
        f"envlock.wandb.log({str(lock)!r})\n"
        "run.finish()\n"
    )
    done = _python(code, tmp_path, WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true",
                   WANDB_DATA_DIR=str(tmp_path / "data"), WANDB_CACHE_DIR=str(tmp_path / "cache"),
                   WANDB_CONFIG_DIR=str(tmp_path / "config"))
    assert done.returncode == 0, done.stderr[-3000:]
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "*.wandb"))
    records = _wandb_records(run_file)
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    loaded, _ = load(lock)
    assert config["envlock"]["lock_sha256"] == loaded.lock.content_hash
    assert config["envlock"]["verdict"].startswith("envlock verify: ")
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "envlock-lock"
    files = {entry.path: entry.local_path for entry in artifact.manifest.contents}
    assert set(files) == {"envlock.lock", "verify.json"}
    assert Path(files["envlock.lock"]).read_bytes() == lock.read_bytes()


@needs_wandb
def test_wandb_without_a_run_says_so(lock: Path) -> None:
    import envlock.wandb

    with pytest.raises(envlock.UsageError, match=r"^no active W&B run: call envlock.wandb.log\(\) after wandb.init"):
        envlock.wandb.log(lock, verify=False)

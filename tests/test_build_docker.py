"""`envlock build` against a real Docker Engine: capture a lock inside the base, build it, verify inside the image.

Skipped when no engine answers or the base image is absent, unless ENVLOCK_REQUIRE_DOCKER=1 (CI), where that fails.
Every image these tests make descends from a per-session base (the test base plus a unique label), so cleanup removes
exactly those images by ID and never touches anyone else's build cache.
"""

from __future__ import annotations

import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from envlock._version import __version__
from envlock.build.engine import connect
from envlock.build.render import LOCK_PATH
from envlock.errors import EnvironmentUnavailable
from envlock.lockfile import content_hash, load

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
BASE = os.environ.get("ENVLOCK_TEST_BASE", "envlock-test-base:bookworm")
REQUIRE = os.environ.get("ENVLOCK_REQUIRE_DOCKER") == "1"
# docker-py leaks the socket of a failed unix connect (docker/transport/unixconn.py); not envlock's to close.
SOCKET_LEAK = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)
SESSION = uuid.uuid4().hex[:12]
PLATFORMS = ["manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"ENVLOCK_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# --- engine and cleanup -------------------------------------------------------------------------------


@dataclass
class Engine:
    client: Any
    base_id: str  # the per-session base: every image the tests build descends from it
    extra: list[str]  # images made outside that line (imports), removed by ID too


def _descendants(client: Any, root: str) -> list[str]:
    """IDs of the images whose parent chain reaches `root`, children before parents."""
    parents = {image["Id"]: image.get("ParentId", "") for image in client.api.images(all=True)}
    depth: dict[str, int] = {}
    for image in parents:
        chain, node = 0, image
        while node and node != root:
            node = parents.get(node, "")
            chain += 1
        if node == root and image != root:
            depth[image] = chain
    return sorted(depth, key=lambda i: -depth[i])


def _remove_images(client: Any, ids: list[str]) -> None:
    from docker.errors import APIError, NotFound

    doomed = set(ids)
    for container in client.api.containers(all=True, quiet=False):
        if container.get("ImageID") in doomed:
            try:
                client.api.remove_container(container["Id"], force=True)
            except NotFound:
                pass
    for image in ids:
        try:
            client.api.remove_image(image, force=True, noprune=True)
        except (NotFound, APIError):
            pass


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    try:
        from docker.errors import ImageNotFound
    except ImportError:
        _unavailable("the docker SDK is not installed")
        raise
    try:
        # envlock's own connect: it collects the socket docker-py leaves open when no daemon answers,
        # so a machine without Docker skips these tests without an unraisable ResourceWarning at exit.
        client = connect(timeout=300)
    except EnvironmentUnavailable as exc:
        _unavailable(str(exc))
        raise
    try:
        client.api.inspect_image(BASE)
    except ImageNotFound:
        client.close()
        _unavailable(f"base image {BASE} is absent (make it with scripts/docker-test-base.sh)")
        raise
    dockerfile = f"FROM {BASE}\nLABEL dev.envlock.test.session={SESSION}\n".encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), rm=True, forcerm=True, pull=False)
    state = Engine(client=client, base_id=image.id, extra=[])
    try:
        yield state
    finally:
        _remove_images(client, [*_descendants(client, state.base_id), state.base_id, *state.extra])
        client.close()


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run_container(engine: Engine, image: str, command: list[str] | None, *, entrypoint: list[str] | None = None,
                  put: dict[str, bytes] | None = None, fetch: str | None = None) -> tuple[int, str, bytes]:
    """(exit code, output, fetched tar bytes) of a throwaway container, no network; removed afterwards."""
    api = engine.client.api
    kwargs: dict[str, Any] = {"network_disabled": True}
    if entrypoint is not None:
        kwargs["entrypoint"] = entrypoint
    container = api.create_container(image, command=command, **kwargs)["Id"]
    try:
        for folder, data in (put or {}).items():
            api.put_archive(container, folder, data)
        api.start(container)
        status = api.wait(container, timeout=600)
        output = api.logs(container, stdout=True, stderr=True).decode("utf-8", "replace")
        fetched = b""
        if fetch is not None:
            stream, _ = api.get_archive(container, fetch)
            fetched = b"".join(stream)
        return int(status["StatusCode"]), output, fetched
    finally:
        api.remove_container(container, force=True)


# --- wheelhouse and locks captured inside the base ------------------------------------------------------


@dataclass
class Locks:
    wheelhouse: Path
    six16: Path
    six15: Path


@pytest.fixture(scope="session")
def locks(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Locks:
    work = tmp_path_factory.mktemp("docker-e2e")
    source, wheelhouse = work / "src", work / "wheels"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "envlock", source / "envlock", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", str(source), "-w", str(wheelhouse)], check=True)
    (own,) = wheelhouse.glob("envlock-*.whl")
    download = [*pip, "download", "-q", "-d", str(wheelhouse), "--only-binary", ":all:", "--python-version", "3.11",
                "--implementation", "cp", "--abi", "cp311"]
    for platform in PLATFORMS:
        download += ["--platform", platform]
    # envlock's own wheel carries its C extension, built here: its platform is this machine's plain linux tag.
    subprocess.run([*download, "--platform", own.name.rsplit("-", 1)[1].removesuffix(".whl"), str(own),
                    "six==1.16.0"], check=True)
    subprocess.run([*download, "--no-deps", "six==1.15.0"], check=True)

    wheels = {f"wheels/{p.name}": p.read_bytes() for p in sorted(wheelhouse.iterdir())}
    script = (
        "set -e; mkdir -p /out; python3 -m venv /installer; "
        "for v in 1.16.0 1.15.0; do "
        "python3 -m venv --without-pip /venv$v; "
        "/installer/bin/python -m pip -q --python /venv$v/bin/python install --no-index --find-links /wheels "
        "envlock six==$v; "
        "(cd /tmp && /venv$v/bin/envlock capture --no-numerics -o /out/six-$v.lock); done"
    )
    code, output, fetched = run_container(engine, engine.base_id, ["sh", "-c", script], put={"/": _tar(wheels)},
                                          fetch="/out")
    assert code == 0, output
    with tarfile.open(fileobj=io.BytesIO(fetched)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                (work / Path(member.name).name).write_bytes(extracted.read())
    return Locks(wheelhouse=wheelhouse, six16=work / "six-1.16.0.lock", six15=work / "six-1.15.0.lock")


def lock_sha(path: Path) -> str:
    return load(path)[0].lock.content_hash.removeprefix("sha256:")


def cache_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fresh wheel cache (nothing downloaded outside the test's folders), plus `extra`."""
    return {"XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}


def build(cli: Any, engine: Engine, lock: Path, tag: str, wheelhouse: Path, tmp_path: Path,
          base: str | None = None, **env: str) -> Any:
    return cli("build", str(lock), "--tag", tag, "--base", base or engine.base_id, "--wheelhouse", str(wheelhouse),
               env=cache_env(tmp_path, **env))


def one_error_line(result: Any) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("envlock: error: "), lines[0]
    return str(lines[0])


@dataclass
class Built:
    tag: str
    image_id: str
    stdout: str


@pytest.fixture(scope="session")
def built16(engine: Engine, locks: Locks, tmp_path_factory: pytest.TempPathFactory) -> Built:
    from typer.testing import CliRunner

    from envlock.cli import app

    tag = f"envlock-e2e-{SESSION}:1"
    tmp = tmp_path_factory.mktemp("built16")
    result = CliRunner().invoke(
        app, ["build", str(locks.six16), "--tag", tag, "--base", engine.base_id, "--wheelhouse", str(locks.wheelhouse)],
        env=cache_env(tmp), catch_exceptions=False,
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return Built(tag=tag, image_id=engine.client.api.inspect_image(tag)["Id"], stdout=result.stdout)


# --- end to end --------------------------------------------------------------------------------------


def test_build_verifies_labels_env_and_entrypoint(engine: Engine, locks: Locks, built16: Built) -> None:
    out = built16.stdout
    assert "Step 1/" in out
    assert "envlock verify: OK" in out
    assert f"tagged {built16.tag}" in out
    config = engine.client.api.inspect_image(built16.tag)["Config"]
    labels = config["Labels"]
    assert labels["dev.envlock.lock.sha256"] == lock_sha(locks.six16)
    assert labels["dev.envlock.version"] == __version__
    assert f"ENVLOCK_LOCK={LOCK_PATH}" in config["Env"]
    assert f"ENVLOCK_LOCK_SHA256={lock_sha(locks.six16)}" in config["Env"]
    # The default entrypoint (`envlock run --`) verifies, then hands over to the job and its exit code.
    code, output, _ = run_container(engine, built16.tag, ["/bin/sh", "-c", "echo hi"])
    assert (code, output.strip().splitlines()[-1:]) == (0, ["hi"]), output
    code, output, _ = run_container(engine, built16.tag, ["/bin/sh", "-c", "echo bye; exit 7"])
    assert code == 7, output
    assert "bye" in output
    # The wheelhouse stays in the first stage.
    code, output, _ = run_container(engine, built16.tag, ["/bin/sh", "-c", "test ! -e /opt/envlock-build"])
    assert code == 0, output


def test_image_with_another_version_fails_verify_naming_the_package(
    cli: Any, engine: Engine, locks: Locks, tmp_path: Path
) -> None:
    tag = f"envlock-e2e-{SESSION}:six15"
    result = build(cli, engine, locks.six15, tag, locks.wheelhouse, tmp_path)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "envlock verify: OK" in result.stdout
    code, output, _ = run_container(
        engine, tag, ["/opt/venv/bin/envlock", "verify", "/mnt/lock/envlock.lock"], entrypoint=[],
        put={"/mnt": _tar({"lock/envlock.lock": locks.six16.read_bytes()})},
    )
    assert code == 1, output
    assert "packages.six.version" in output


def test_same_lock_twice_same_context_and_verified(
    cli: Any, engine: Engine, locks: Locks, built16: Built, tmp_path: Path
) -> None:
    tag = f"envlock-e2e-{SESSION}:again"
    again = build(cli, engine, locks.six16, tag, locks.wheelhouse, tmp_path)
    assert again.exit_code == 0, (again.stdout, again.stderr)
    assert "envlock verify: OK" in again.stdout

    def printed(stdout: str) -> str:
        (line,) = [line for line in stdout.splitlines() if line.startswith("built ")]
        return line.split("context sha256:")[1]

    assert printed(again.stdout) == printed(built16.stdout)
    first = engine.client.api.inspect_image(built16.image_id)["Config"]["Labels"]["dev.envlock.context.sha256"]
    second = engine.client.api.inspect_image(tag)["Config"]["Labels"]["dev.envlock.context.sha256"]
    assert first == second

    trees, shas = [], []
    for name in ("ctx1", "ctx2"):
        folder = tmp_path / name
        result = cli("build", str(locks.six16), "--context", str(folder), "--base", engine.base_id,
                     "--wheelhouse", str(locks.wheelhouse), env=cache_env(tmp_path))
        assert result.exit_code == 0, (result.stdout, result.stderr)
        shas.append(result.stdout.strip().rsplit("context sha256:", 1)[1])
        trees.append({str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()})
    assert trees[0] == trees[1]
    assert shas[0] == shas[1] == first  # the written context is the very context that was built
    assert "Dockerfile" in trees[0] and "requirements.txt" in trees[0]


# --- failures --------------------------------------------------------------------------------------------


def test_failing_step_is_exit_4_naming_the_step_and_keeps_the_old_tag(
    cli: Any, engine: Engine, locks: Locks, built16: Built, tmp_path: Path
) -> None:
    dockerfile = f'FROM {engine.base_id}\nRUN ["rm", "-rf", "/usr/lib/python3.11/venv"]\n'.encode()
    broken, _ = engine.client.images.build(fileobj=io.BytesIO(dockerfile), rm=True, forcerm=True, pull=False)
    result = build(cli, engine, locks.six16, built16.tag, locks.wheelhouse, tmp_path, base=broken.id)
    assert result.exit_code == 4, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert "step 5/21 (RUN" in line, line
    assert "tagged" not in result.stdout
    assert engine.client.api.inspect_image(built16.tag)["Id"] == built16.image_id


def test_base_without_python_is_exit_2_one_line(cli: Any, engine: Engine, locks: Locks, tmp_path: Path) -> None:
    rootfs = _tar({"README": f"envlock test {SESSION}\n".encode()})
    imported = engine.client.api.import_image_from_data(rootfs, repository=f"envlock-test-empty-{SESSION}", tag="1")
    image = engine.client.api.inspect_image(f"envlock-test-empty-{SESSION}:1")["Id"]
    engine.extra.append(image)
    assert imported
    result = build(cli, engine, locks.six16, f"envlock-e2e-{SESSION}:nopython", locks.wheelhouse, tmp_path,
                   base=image)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "python3" in one_error_line(result)


def test_python_version_mismatch_is_exit_2_before_building(
    cli: Any, engine: Engine, locks: Locks, tmp_path: Path
) -> None:
    data = tomllib.loads(locks.six16.read_text())
    data["python"]["version"] = "3.11.9"
    data["lock"]["content_hash"] = content_hash(data)
    lock = tmp_path / "py3119.lock"
    lock.write_text(tomlkit.dumps(data))
    result = build(cli, engine, lock, f"envlock-e2e-{SESSION}:py3119", locks.wheelhouse, tmp_path)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert "3.11.2" in line and "3.11.9" in line, line
    assert "Step " not in result.stdout


@SOCKET_LEAK
def test_unreachable_daemon_is_exit_3_naming_docker_host(
    cli: Any, engine: Engine, locks: Locks, tmp_path: Path
) -> None:
    result = build(cli, engine, locks.six16, f"envlock-e2e-{SESSION}:nodaemon", locks.wheelhouse, tmp_path,
                   DOCKER_HOST="unix:///nonexistent.sock")
    gc.collect()
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "DOCKER_HOST" in one_error_line(result)


# --- a lock captured in a venv of the distribution's own python3-venv ----------------------------------------


def test_debian_venv_lock_with_a_local_wheel_builds_and_verifies_clean(
    cli: Any, engine: Engine, locks: Locks, tmp_path: Path
) -> None:
    # Debian's `python3 -m venv` seeds its own patched pip and setuptools (/usr/share/python-wheels), whose files
    # differ from the index's wheels of the same versions; envlock is installed from a wheel file (source local).
    wheels = {f"wheels/{p.name}": p.read_bytes() for p in sorted(locks.wheelhouse.iterdir())}
    script = (
        "set -e; mkdir -p /out; python3 -m venv /deb; "
        "/deb/bin/python -m pip -q install --no-index --find-links /wheels /wheels/envlock-*.whl; "
        "(cd /tmp && /deb/bin/envlock capture --no-torch --no-numerics -o /out/deb.lock)"
    )
    code, output, fetched = run_container(engine, engine.base_id, ["sh", "-c", script], put={"/": _tar(wheels)},
                                          fetch="/out/deb.lock")
    assert code == 0, output
    with tarfile.open(fileobj=io.BytesIO(fetched)) as tar:
        extracted = tar.extractfile("deb.lock")
        assert extracted is not None
        lock = tmp_path / "deb.lock"
        lock.write_bytes(extracted.read())
    packages = tomllib.loads(lock.read_text())["packages"]
    assert {"pip", "setuptools"} <= set(packages) and packages["envlock"]["source"] == "local", packages

    tag = f"envlock-e2e-{SESSION}:debian"
    result = build(cli, engine, lock, tag, locks.wheelhouse, tmp_path)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "envlock verify: OK" in result.stdout and f"tagged {tag}" in result.stdout
    # Every start of the image matches its own lock with no finding at all, warnings included.
    code, output, _ = run_container(engine, tag, ["/opt/venv/bin/envlock", "verify", "--json"], entrypoint=[])
    assert code == 0, output
    report = json.loads(output[output.index("{"):])
    assert report["ok"] and report["findings"] == [], report["findings"]
    code, output, _ = run_container(engine, tag, ["/bin/sh", "-c", "echo hi"])
    assert (code, output.strip().splitlines()) == (0, ["hi"]), output


def test_base_that_seeds_another_pip_is_exit_4_naming_both_origins(
    cli: Any, engine: Engine, locks: Locks, tmp_path: Path
) -> None:
    data = tomllib.loads(locks.six16.read_text())
    data["packages"]["pip"] = {"version": "23.0.1", "source": "index", "files": "sha256:" + "e" * 64}
    data["lock"]["content_hash"] = content_hash(data)
    lock = tmp_path / "otherpip.lock"
    lock.write_text(tomlkit.dumps(data))
    result = build(cli, engine, lock, f"envlock-e2e-{SESSION}:otherpip", locks.wheelhouse, tmp_path)
    assert result.exit_code == 4, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert "packages.pip: the lock has pip 23.0.1 from an index (files sha256:eeee" in line, line
    assert "`python3 -m venv` seeds pip 23.0.1 (files sha256:" in line and "pip-23.0.1-py3-none-any.whl" in line, line

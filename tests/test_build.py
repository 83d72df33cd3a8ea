"""`envlock build` without a Docker Engine: rendering, validation, wheels, the context, and build streams."""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from envlock.build.context import pack_context, write_context
from envlock.build.engine import build_image, clean, connect, follow
from envlock.build.refs import check_base, check_tag
from envlock.build.render import Requirement, lock_env, render_dockerfile, render_requirements
from envlock.build.wheels import check_wheel, compatible, find_wheel, gather, wheel_files_digest
from envlock.capturing import build_lock
from envlock.errors import BuildError, EnvironmentUnavailable, LockError, UsageError
from envlock.lockfile import content_hash, dumps, load
from envlock.model import Package, PythonSection

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STREAMS = Path(__file__).parent / "fixtures_build"
BASE = "registry.example/team/base:1@sha256:" + "c" * 64
LOCK_SHA = "d" * 64
NOWHERE = "unix:///nonexistent.sock"
PY = PythonSection(implementation="cpython", version="3.11.2", abi="cp311", platform="linux-x86_64",
                   platform_tag="manylinux_2_36_x86_64")

# --- Dockerfile and requirements ------------------------------------------------------------------------

GOLDEN = f"""\
FROM {BASE} AS install
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
COPY wheels/ /opt/envlock-build/wheels/
COPY requirements.txt /opt/envlock-build/requirements.txt
RUN ["python3", "-m", "venv", "/opt/envlock-installer"]
RUN ["python3", "-m", "venv", "--without-pip", "/opt/venv"]
RUN ["/opt/envlock-installer/bin/python", "-m", "pip", "--python", "/opt/venv/bin/python", "install", \
"--no-index", "--find-links", "/opt/envlock-build/wheels", "--require-hashes", "--no-deps", "--only-binary", ":all:", \
"-r", "/opt/envlock-build/requirements.txt"]
RUN ["/opt/envlock-installer/bin/python", "-m", "pip", "--python", "/opt/venv/bin/python", "check"]

FROM {BASE}
COPY --from=install /opt/venv /opt/venv
COPY envlock.lock /etc/envlock/envlock.lock
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV ENVLOCK_LOCK=/etc/envlock/envlock.lock ENVLOCK_LOCK_SHA256={LOCK_SHA}
ENV CUBLAS_WORKSPACE_CONFIG=:4096:8
ENV PYTHONHASHSEED=0
ENTRYPOINT ["/opt/venv/bin/envlock", "run", "--"]
CMD ["/bin/sh"]
"""
ALLOWED = ("FROM ", "ENV ", "COPY ", "RUN [", "ENTRYPOINT [", "CMD [")
# docker-py leaks the socket of a failed unix connect (docker/transport/unixconn.py); not envlock's to close.
SOCKET_LEAK = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)
REQ_LINE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*==\S+ --hash=sha256:[0-9a-f]{64}")


def test_dockerfile_golden() -> None:
    env = lock_env({"PYTHONHASHSEED": (True, "0"), "CUBLAS_WORKSPACE_CONFIG": (True, ":4096:8"),
                    "OMP_NUM_THREADS": (False, "")}, "x.lock")
    assert render_dockerfile(BASE, env, lock_sha256=LOCK_SHA) == GOLDEN


@pytest.mark.parametrize("value", ["", "0", "1,2", "a/b:c=d+e-f.g_h", "x" * 64])
def test_dockerfile_lines_are_allowed_instructions_and_only_checked_values(value: str) -> None:
    env = lock_env({name: (True, value) for name in ("MKL_CBWR", "OMP_NUM_THREADS")}, "x.lock")
    text = render_dockerfile(BASE, env, lock_sha256=LOCK_SHA)
    lines = text.splitlines()
    assert len(lines) == GOLDEN.count("\n") - 2 + len(env)
    for line in lines:
        assert line == "" or line.startswith(ALLOWED), line
        assert not line.endswith("\\")
    # Everything but the base, the fixed env values and the lock hash is constant template text.
    template = render_dockerfile("BASE", [(n, "VALUE") for n, _ in env], lock_sha256="LOCKSHA")
    assert text == template.replace("BASE", BASE).replace("VALUE", value).replace("LOCKSHA", LOCK_SHA)


def test_requirements_lines_fullmatch_and_are_sorted() -> None:
    reqs = [Requirement("zeta-pkg", "2.0+cpu", "z.whl", "1" * 64), Requirement("alpha", "1.0.post1", "a.whl", "2" * 64)]
    text = render_requirements(reqs)
    assert text.endswith("\n")
    lines = text.splitlines()
    assert [line.split("==")[0] for line in lines] == ["alpha", "zeta-pkg"]
    assert all(REQ_LINE.fullmatch(line) for line in lines), lines


@pytest.mark.parametrize(
    ("name", "version", "sha"),
    [("Torch", "1.0", "1" * 64), ("torch\n", "1.0", "1" * 64), ("--index-url=x", "1.0", "1" * 64),
     ("torch", "1.0 --hash=sha256:" + "1" * 64, "1" * 64), ("torch", "1.0\nRUN id", "1" * 64),
     ("torch", "-r", "1" * 64), ("torch", "1.0", "1" * 63), ("torch", "1.0", "A" * 64)],
)
def test_requirements_refuse_out_of_grammar_values(name: str, version: str, sha: str) -> None:
    with pytest.raises(LockError) as info:
        render_requirements([Requirement(name, version, "x.whl", sha)])
    assert info.value.exit_code == 2


@pytest.mark.parametrize("value", ["$HOME", "${HOME:-x}", 'a"b', "a\\", "0\nRUN id", "a b", "x" * 65])
def test_lock_env_refuses_values_outside_the_grammar(value: str) -> None:
    with pytest.raises(LockError) as info:
        lock_env({"PYTHONHASHSEED": (True, value)}, "x.lock")
    assert info.value.exit_code == 2
    assert info.value.where == "floats.env.PYTHONHASHSEED"


def test_lock_env_only_sets_known_variables() -> None:
    assert lock_env({"LD_PRELOAD": (True, "/x.so"), "PATH": (True, "/evil"), "OMP_NUM_THREADS": (False, "")},
                    "x.lock") == []


# --- image references --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["a/b:c\n", "UPPER:case", "a/b:c\nRUN id", "", ":x", "a b:c", "-a:b", "a:" + "x" * 129,
                                 "a/b@sha256:" + "1" * 64])
def test_hostile_tags_are_refused(tag: str) -> None:
    with pytest.raises(UsageError):
        check_tag(tag)


def test_tag_without_tag_part_is_latest() -> None:
    assert check_tag("team/train") == ("team/train", "latest")
    assert check_tag("localhost:5000/team/train:2024-06") == ("localhost:5000/team/train", "2024-06")


@pytest.mark.parametrize(
    "base",
    ["debian@sha256:" + "a" * 64 + "\n", "debian\nRUN id@sha256:" + "a" * 64, "debian@sha256:" + "a" * 63,
     "debian@sha256:" + "a" * 65, "debian@sha256:" + "A" * 64, "debian@md5:" + "a" * 32, "sha256:" + "a" * 63,
     "nvidia/cuda:12.4.1-base-ubuntu22.04", "debian", "debian:bookworm", "Debian@sha256:" + "a" * 64],
)
def test_hostile_or_unpinned_bases_are_refused(base: str) -> None:
    with pytest.raises(UsageError):
        check_base(base)


def test_bases_that_are_accepted() -> None:
    image_id = "sha256:" + "f" * 64
    assert check_base(image_id) == image_id
    pinned = "nvidia/cuda:12.4.1-base-ubuntu22.04@sha256:" + "a" * 64
    assert check_base(pinned) == pinned
    assert check_base("debian:bookworm", allow_unpinned=True) == "debian:bookworm"
    with pytest.raises(UsageError):
        check_base("debian:bookworm\n", allow_unpinned=True)


# --- a tiny wheel and a lock of it -------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, name: str = "tinypkg", version: str = "1.0", tag: str = "py3-none-any",
               body: bytes = b"VALUE = 1\n") -> Path:
    """A valid wheel with a package, a .data/purelib module and a .data/scripts script."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": body,
        f"{dist}.data/purelib/{name}_extra.py": b"EXTRA = 2\n",
        f"{dist}.data/scripts/{name}-hello": b"#!python\nprint('hello')\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n".encode(),
        f"{dist}.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in [*files.items(), (f"{dist}.dist-info/RECORD", record.encode())]:
            archive.writestr(zipfile.ZipInfo(member, (2020, 1, 1, 0, 0, 0)), data)
    return path


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    folder = tmp_path / "wheelhouse"
    make_wheel(folder)
    return folder


@pytest.fixture
def lock_data(machine_facts: dict[str, Any], wheelhouse: Path) -> dict[str, Any]:
    """A valid lock whose one package is the tiny wheel (hash and files digest right); free to mutate."""
    data: dict[str, Any] = tomllib.loads(dumps(build_lock(machine_facts, created="2026-01-01T00:00:00Z")))
    wheel = next(wheelhouse.glob("*.whl"))
    data["python"].update(implementation="cpython", version="3.11.2", abi="cp311", platform_tag="manylinux_2_36_x86_64")
    data["packages"] = {"tinypkg": {
        "version": "1.0", "source": "index", "files": wheel_files_digest(wheel),
        "hashes": ["sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()],
    }}
    data["floats"]["env"] = {name: {"set": False} for name in data["floats"]["env"]}
    return data


def sealed(tmp_path: Path, data: dict[str, Any], name: str = "envlock.lock") -> Path:
    data["lock"]["content_hash"] = content_hash(data)
    path = tmp_path / name
    path.write_text(tomlkit.dumps(data), encoding="utf-8")
    return path


def build_args(lock: Path, tmp_path: Path, wheelhouse: Path, *extra: str, tag: str = "team/train:1",
               base: str = "debian@sha256:" + "a" * 64) -> list[str]:
    return ["build", str(lock), "--tag", tag, "--base", base, "--wheelhouse", str(wheelhouse), *extra]


def env(tmp_path: Path) -> dict[str, str]:
    return {"DOCKER_HOST": NOWHERE, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def one_line(result: Any, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return str(lines[0])


# --- the command line: good input reaches the daemon, hostile input is refused first ------------------------


@SOCKET_LEAK
def test_good_lock_writes_a_context_and_without_it_needs_the_daemon(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any]
) -> None:
    lock = sealed(tmp_path, lock_data)
    ctx = tmp_path / "ctx"
    result = cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert sorted(str(p.relative_to(ctx)) for p in ctx.rglob("*") if p.is_file()) == [
        "Dockerfile", "envlock.lock", "requirements.txt", "wheels/tinypkg-1.0-py3-none-any.whl"]
    assert (ctx / "envlock.lock").read_bytes() == lock.read_bytes()
    assert REQ_LINE.fullmatch((ctx / "requirements.txt").read_text().strip())
    line = one_line(cli(*build_args(lock, tmp_path, wheelhouse), env=env(tmp_path)), 3)
    assert "DOCKER_HOST" in line
    gc.collect()


HOSTILE_PACKAGES: list[Any] = [
    pytest.param("torch\nRUN id", {}, id="name-newline"),
    pytest.param("$(id)", {}, id="name-shell"),
    pytest.param("--index-url=http://evil", {}, id="name-option"),
    pytest.param("torch @ https://evil/x.whl", {}, id="name-url"),
    pytest.param("tinypkg", {"version": "1.0\nRUN id"}, id="version-newline"),
    pytest.param("tinypkg", {"version": "$(id)"}, id="version-shell"),
    pytest.param("tinypkg", {"version": "--index-url=http://evil"}, id="version-option"),
    pytest.param("tinypkg", {"version": "1.0 --hash=sha256:" + "a" * 64}, id="version-hash"),
    pytest.param("tinypkg", {"version": "1.0 @ https://evil/x.whl"}, id="version-url"),
    pytest.param("tinypkg", {"hashes": ["sha256:" + "A" * 64]}, id="hash-upper"),
    pytest.param("tinypkg", {"hashes": ["sha256:" + "a" * 63]}, id="hash-63"),
    pytest.param("tinypkg", {"hashes": ["md5:" + "a" * 32]}, id="hash-md5"),
    pytest.param("tinypkg", {"hashes": ["sha256:" + "a" * 64 + "\n"]}, id="hash-newline"),
    pytest.param("tinypkg", {"source": "url", "url": "https://evil/tinypkg-1.0-py3-none-any.whl"}, id="url-req"),
]


@pytest.mark.parametrize(("name", "change"), HOSTILE_PACKAGES)
def test_hostile_lock_is_exit_2_and_writes_nothing(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any], name: str, change: dict[str, Any]
) -> None:
    package = dict(lock_data["packages"].pop("tinypkg"))
    package.update(change)
    lock_data["packages"][name] = package
    if change.get("source") == "url":
        (next(wheelhouse.glob("*.whl"))).unlink()  # an URL requirement needs a wheel the user supplies
    lock = sealed(tmp_path, lock_data)
    ctx = tmp_path / "ctx"
    line = one_line(cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path)), 2)
    assert not ctx.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.whl"))
    if change.get("source") == "url":
        assert "tinypkg" in line and "url" in line
    else:
        assert line.startswith(f"envlock: error: {lock}: packages."), line


@pytest.mark.parametrize("value", ["$HOME", "a\\b", 'a"b'])
def test_hostile_env_value_is_exit_2_naming_it(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any], value: str
) -> None:
    lock_data["floats"]["env"]["PYTHONHASHSEED"] = {"set": True, "value": value}
    lock = sealed(tmp_path, lock_data)
    ctx = tmp_path / "ctx"
    line = one_line(cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path)), 2)
    assert "floats.env.PYTHONHASHSEED" in line
    assert not ctx.exists()


@pytest.mark.parametrize(
    ("tag", "base", "needle"),
    [("a/b:c\n", None, "--tag"), ("UPPER:case", None, "--tag"),
     (None, "nvidia/cuda:12.4.1-base-ubuntu22.04", "digest"), (None, "debian@sha256:" + "a" * 63, "--base"),
     (None, "debian\nRUN id@sha256:" + "a" * 64, "--base")],
)
def test_hostile_tag_or_base_is_exit_2_one_line(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any], tag: str | None, base: str | None,
    needle: str,
) -> None:
    lock = sealed(tmp_path, lock_data)
    kwargs = {k: v for k, v in (("tag", tag), ("base", base)) if v is not None}
    ctx = tmp_path / "ctx"
    line = one_line(cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx), **kwargs), env=env(tmp_path)), 2)
    assert needle in line
    assert not ctx.exists()


def test_non_empty_context_folder_is_refused_and_untouched(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any]
) -> None:
    lock = sealed(tmp_path, lock_data)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "mine.txt").write_text("keep")
    line = one_line(cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path)), 2)
    assert "--context" in line
    assert [p.name for p in ctx.iterdir()] == ["mine.txt"]


# --- wheels ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_files_digest_matches_the_installed_digest(tmp_path: Path) -> None:
    from envlock.probes.packages import collect_packages

    wheel = make_wheel(tmp_path / "wh")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "-q", "--python", str(venv / "bin" / "python"), "install",
                    "--no-index", "--no-deps", str(wheel)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    assert (site / "tinypkg_extra.py").is_file() and (venv / "bin" / "tinypkg-hello").is_file()
    (fact,) = [p for p in collect_packages([str(site)]) if p["name"] == "tinypkg"]
    assert fact["files"] == wheel_files_digest(wheel)


def test_check_wheel_refuses_other_files_or_hash(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wh")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    digest = wheel_files_digest(wheel)
    assert check_wheel("tinypkg", Package(version="1.0", files=digest, hashes=(f"sha256:{sha}",)), wheel).sha256 == sha
    other = make_wheel(tmp_path / "other", body=b"VALUE = 2\n")
    with pytest.raises(BuildError) as info:
        check_wheel("tinypkg", Package(version="1.0", files=digest), other)
    assert info.value.exit_code == 4 and "files differ" in str(info.value)
    with pytest.raises(BuildError) as info:
        check_wheel("tinypkg", Package(version="1.0", hashes=("sha256:" + "1" * 64,)), wheel)
    assert info.value.exit_code == 4 and "not one of the lock's hashes" in str(info.value)


@pytest.mark.parametrize(
    ("filename", "ok"),
    [("x-1.0-py3-none-any.whl", True), ("x-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
     ("x-1.0-cp311-abi3-manylinux_2_28_x86_64.whl", True), ("x-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", False),
     ("x-1.0-cp311-cp311-manylinux_2_38_x86_64.whl", False), ("x-1.0-cp311-cp311-win_amd64.whl", False),
     ("x-1.0-cp311-cp311-manylinux_2_17_aarch64.whl", False), ("x-1.0-cp311-cp311-musllinux_1_2_x86_64.whl", False),
     # Built on a machine like the locked one (pip wheel of an sdist with a C extension): pip installs it there.
     ("x-1.0-cp311-cp311-linux_x86_64.whl", True), ("x-1.0-cp311-cp311-linux_aarch64.whl", False),
     ("x-1.0-cp312-cp312-linux_x86_64.whl", False)],
)
def test_compatible(filename: str, ok: bool) -> None:
    assert compatible(filename, PY) is ok


def test_find_wheel_ignores_symlinks_and_other_platforms(tmp_path: Path) -> None:
    real = make_wheel(tmp_path / "elsewhere")
    folder = tmp_path / "wh"
    folder.mkdir()
    (folder / real.name).symlink_to(real)
    make_wheel(folder, tag="cp311-cp311-win_amd64")
    make_wheel(folder, tag="cp312-cp312-manylinux_2_17_x86_64")
    assert find_wheel("tinypkg", "1.0", [folder], PY) is None
    good = make_wheel(tmp_path / "wh2")
    assert find_wheel("tinypkg", "1.0", [folder, good.parent], PY) == good
    assert find_wheel("tinypkg", "1.1", [good.parent], PY) is None


@pytest.mark.parametrize("source", ["editable", "local"])
def test_gather_names_packages_that_cannot_come_from_an_index(
    tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any], source: str
) -> None:
    lock_data["packages"]["mything"] = {"version": "0.1", "source": source, "url": "file:///src/mything"}
    lock, _ = load(sealed(tmp_path, lock_data))
    with pytest.raises(UsageError) as info:
        gather(lock, [wheelhouse], tmp_path / "cache", allow_download=False)
    assert f"mything ({source})" in str(info.value)


# --- the context -----------------------------------------------------------------------------------------


def _pack_in_conditions(tmp_path: Path, umask: int, tz: str, mtime: int) -> tuple[bytes, str]:
    wheel = make_wheel(tmp_path / f"wh-{umask}-{mtime}")
    os.utime(wheel, (mtime, mtime))
    files = {"Dockerfile": b"FROM x\n", "requirements.txt": b"a==1\n", "envlock.lock": b"x = 1\n"}
    old_umask, old_tz = os.umask(umask), os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        handle, sha = pack_context(files, {f"wheels/{wheel.name}": wheel})
        with handle:
            data = handle.read()
    finally:
        os.umask(old_umask)
        if old_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
    return data, sha


def test_pack_context_is_byte_deterministic(tmp_path: Path) -> None:
    first = _pack_in_conditions(tmp_path, 0o022, "UTC", 1_000_000_000)
    second = _pack_in_conditions(tmp_path, 0o077, "Asia/Kolkata", 1_700_000_000)
    assert first == second
    assert first[1] == hashlib.sha256(first[0]).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(first[0])) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    folders = [m.name for m in members if m.isdir()]
    assert folders == ["wheels"] and names == folders + sorted(n for n in names if n not in folders)
    for member in members:
        assert member.isreg() or member.isdir()
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
        assert member.mode == (0o755 if member.isdir() else 0o644)


def test_written_context_repacks_to_the_same_hash(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wh")
    files = {"Dockerfile": b"FROM x\n", "requirements.txt": b"a==1\n", "envlock.lock": b"x = 1\n"}
    handle, sha = pack_context(files, {f"wheels/{wheel.name}": wheel})
    handle.close()
    folder = tmp_path / "ctx"
    write_context(folder, files, {f"wheels/{wheel.name}": wheel})
    again = {name: (folder / name).read_bytes() for name in files}
    handle, sha_again = pack_context(again, {f"wheels/{wheel.name}": folder / "wheels" / wheel.name})
    handle.close()
    assert sha_again == sha


# --- build streams -------------------------------------------------------------------------------------------


def recorded(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (STREAMS / f"{name}.jsonl").read_text().splitlines() if line]


def _follow(chunks: Any, deadline: float | None = None) -> tuple[Any, list[str]]:
    echoed: list[str] = []
    result = follow(chunks, echoed.append, deadline=time.monotonic() + 60 if deadline is None else deadline)
    return result, echoed


def test_recorded_success_gives_the_aux_id_and_clean_output() -> None:
    result, echoed = _follow(recorded("success"))
    assert result.image_id == "sha256:2a901097b66b9b67e2e14d06f3bf538762172d06f89dc44add843dc10fd09c02"
    assert echoed[0].startswith("Step 1/3 : FROM sha256:")
    assert "hello redback" not in echoed  # the \r splits the line; no escape survives
    assert "hello red" in echoed and "back" in echoed
    assert not any("\x1b" in line or "\r" in line for line in echoed)
    assert not any(line.lstrip().startswith(("--->", "Removing intermediate")) for line in echoed)


def test_successfully_built_without_aux() -> None:
    chunks = [c for c in recorded("success") if "aux" not in c]
    assert _follow(chunks)[0].image_id == "2a901097b66b"


def test_recorded_failing_run_names_the_step() -> None:
    with pytest.raises(BuildError) as info:
        _follow(recorded("failing-run"))
    message = str(info.value)
    assert info.value.exit_code == 4
    assert message.startswith("the build failed at step 3/5 (RUN [")
    assert "returned a non-zero code: 3" in message and "\n" not in message


def test_recorded_missing_base_is_a_build_error() -> None:
    with pytest.raises(BuildError, match=r"step 1/3 \(FROM sha256:abab.*no such host"):
        _follow(recorded("missing-base"))


def test_error_after_many_lines_names_the_failing_step() -> None:
    chunks: list[dict[str, Any]] = []
    for step in range(1, 8):
        chunks.append({"stream": f"Step {step}/21 : RUN [\"step{step}\"]\n"})
        chunks += [{"stream": f"line {i}\r\n"} for i in range(2000)]
    chunks.append({"errorDetail": {"code": 1, "message": "first\nreturned a non-zero code: 1"}, "error": "x"})
    with pytest.raises(BuildError) as info:
        _follow(chunks)
    assert str(info.value) == 'the build failed at step 7/21 (RUN ["step7"]): returned a non-zero code: 1'


def test_message_only_chunk_is_a_build_error() -> None:
    with pytest.raises(BuildError, match="the build failed: boom"):
        _follow([{"stream": "Step 1/2 : FROM x\n"}, {"message": "boom\x1b[0m"}])


def test_stream_without_id_or_error_is_a_build_error() -> None:
    with pytest.raises(BuildError, match=r"without an image ID \(last step: step 2/2"):
        _follow([{"stream": "Step 1/2 : FROM x\n"}, {"stream": "Step 2/2 : ENV A=1\n"}, {"status": "pulling"}])


def test_deadline() -> None:
    with pytest.raises(BuildError, match="deadline"):
        _follow(recorded("success"), deadline=time.monotonic() - 1)


def test_clean_removes_escapes_and_carriage_returns() -> None:
    assert clean("a\x1b[31mb\x1b[0m\r\nc\rd\x07\x9b") == "ab\nc\nd"


class _FakeApi:
    def __init__(self, exc: Exception, lazy: bool) -> None:
        self.exc, self.lazy = exc, lazy

    def build(self, **kwargs: Any) -> Any:
        assert kwargs["use_config_proxy"] is False and kwargs["pull"] is False and kwargs["decode"] is True
        if not self.lazy:
            raise self.exc

        def chunks() -> Any:
            raise self.exc
            yield {}

        return chunks()


class _FakeClient:
    def __init__(self, exc: Exception, lazy: bool) -> None:
        self.api = _FakeApi(exc, lazy)


@pytest.mark.parametrize("lazy", [False, True], ids=["on-call", "on-first-chunk"])
def test_api_error_is_build_error_exit_4(lazy: bool) -> None:
    from docker.errors import APIError

    exc = APIError("400 Client Error", explanation="dockerfile parse error line 2: unknown instruction: FOO")
    with pytest.raises(BuildError) as info:
        build_image(_FakeClient(exc, lazy), io.BytesIO(b""), {}, print)
    assert info.value.exit_code == 4
    assert "unknown instruction: FOO" in str(info.value)


@SOCKET_LEAK
def test_connect_to_nowhere_is_exit_3_naming_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    with pytest.raises(EnvironmentUnavailable) as info:
        connect()
    gc.collect()
    assert info.value.exit_code == 3
    assert "DOCKER_HOST" in str(info.value)


@SOCKET_LEAK
def test_context_file_is_closed_when_the_daemon_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any]
) -> None:
    import envlock.build.context as context_module
    from envlock.build import build

    handles: list[Any] = []
    real = context_module.pack_context

    def spy(*args: Any, **kwargs: Any) -> Any:
        handle, sha = real(*args, **kwargs)
        handles.append(handle)
        return handle, sha

    monkeypatch.setattr("envlock.build.pack_context", spy)
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lock = sealed(tmp_path, lock_data)
    try:
        with pytest.raises(EnvironmentUnavailable):
            build(lock, tag="team/train:1", base="debian@sha256:" + "a" * 64, wheelhouses=(wheelhouse,))
        gc.collect()
        # The context is packed only once the engine answered; whatever was packed is closed.
        assert all(handle.closed for handle in handles), "the packed context is left open when connect() fails"
    finally:
        for handle in handles:
            handle.close()


# --- hardening: the context is written whole or not at all ---------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_context_onto_a_non_folder_is_exit_2_one_line(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any]
) -> None:
    lock = sealed(tmp_path, lock_data)
    plain = tmp_path / "plain"
    plain.write_text("mine")
    for ctx in (plain, plain / "ctx", tmp_path / "missing" / "ctx"):
        line = one_line(cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path)), 2)
        assert line.startswith(f"envlock: error: --context {ctx}: "), line
    assert plain.read_text() == "mine"
    assert not (tmp_path / "missing").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["mkdir", "copy"], ids=["read-only", "disk-full"])
def test_context_write_failure_is_exit_2_and_leaves_nothing(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    import errno
    import shutil

    lock = sealed(tmp_path, lock_data)
    parent = tmp_path / "out"
    parent.mkdir()
    ctx = parent / "ctx"
    ctx.mkdir()  # an existing empty folder: untouched when the write fails
    real_mkdir = os.mkdir

    def read_only(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).startswith(str(parent)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_mkdir(path, *args, **kwargs)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "mkdir":
        monkeypatch.setattr(os, "mkdir", read_only)
    else:
        monkeypatch.setattr(shutil, "copyfileobj", disk_full)
    line = one_line(cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path)), 2)
    assert f"--context {ctx}" in line and ("Read-only" in line or "No space" in line), line
    assert [p.name for p in parent.iterdir()] == ["ctx"] and not any(ctx.iterdir())


def test_context_into_an_empty_folder_replaces_it_whole(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any]
) -> None:
    lock = sealed(tmp_path, lock_data)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    result = cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert (ctx / "Dockerfile").is_file() and _leftovers(tmp_path) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert ctx.stat().st_mode & 0o777 == 0o777 & ~umask  # the umask's, not mkdtemp's 0700


# --- hardening: every broken wheel is one line, exit 2, naming the file ----------------------------------------


def _rezip(path: Path, change: Any) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members = change(members)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)


RECORD = "tinypkg-1.0.dist-info/RECORD"


def _add_record_row(row: str) -> Any:
    return lambda m: {**m, RECORD: m[RECORD] + row.encode()}


BROKEN_WHEELS: list[Any] = [
    pytest.param(lambda p: p.write_bytes(b"not a zip at all"), "not a readable wheel", id="not-zip"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable wheel",
                 id="truncated"),
    pytest.param(lambda p: _rezip(p, lambda m: {k: v for k, v in m.items() if k != RECORD}), "no single",
                 id="no-record"),
    pytest.param(lambda p: _rezip(p, _add_record_row("../../etc/evil,sha256=x,1\n")), "outside", id="record-dotdot"),
    pytest.param(lambda p: _rezip(p, _add_record_row("/etc/evil,sha256=x,1\n")), "outside", id="record-absolute"),
    pytest.param(lambda p: _rezip(p, lambda m: {**m, "../evil.py": b"x"}), "outside", id="member-dotdot"),
    pytest.param(lambda p: _rezip(p, lambda m: {**m, "tinypkg/extra.py": b"x"}), "does not list", id="unlisted"),
    pytest.param(lambda p: _rezip(p, lambda m: {**m, "tinypkg/__init__.py": b"EVIL = 1\n"}), "modified",
                 id="modified-member"),
    pytest.param(lambda p: _rezip(p, lambda m: {k.replace("tinypkg-1.0.dist-info", "other-1.0.dist-info"): v
                                                for k, v in m.items()}), "not a distribution of", id="other-dist"),
]


@pytest.mark.parametrize(("damage", "needle"), BROKEN_WHEELS)
def test_broken_wheel_is_exit_2_one_line_naming_it(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any], damage: Any, needle: str
) -> None:
    lock_data["packages"]["tinypkg"].pop("hashes")  # the archive changes: reach the checks past its hash
    lock = sealed(tmp_path, lock_data)
    wheel = next(wheelhouse.glob("*.whl"))
    damage(wheel)
    ctx = tmp_path / "ctx"
    line = one_line(cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path)), 2)
    assert str(wheel) in line and needle in line, line
    assert not ctx.exists() and _leftovers(tmp_path) == []


def test_misnamed_wheel_in_a_wheelhouse_is_exit_2_naming_it(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any]
) -> None:
    lock = sealed(tmp_path, lock_data)
    odd = wheelhouse / "tinypkg-1.0.whl"
    odd.write_bytes(b"")
    line = one_line(cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(tmp_path / "c")),
                        env=env(tmp_path)), 2)
    assert str(odd) in line and "not a wheel file name" in line, line


# --- hardening: the image records the origins its lock has, and seeds pip from the base --------------------------


def test_local_wheel_origin_is_written_into_the_image_venv(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any]
) -> None:
    url = "file:///home/me/wheels/tinypkg-1.0-py3-none-any.whl"
    lock_data["packages"]["tinypkg"].update(source="local", url=url)
    lock = sealed(tmp_path, lock_data)
    ctx = tmp_path / "ctx"
    result = cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    plan = json.loads((ctx / "plan.json").read_text())
    assert plan == {"origins": {"tinypkg": {"archive_info": {}, "url": url}}, "seeds": {}}
    dockerfile = (ctx / "Dockerfile").read_text()
    assert "COPY steps.py plan.json /opt/envlock-build/\n" in dockerfile
    install = dockerfile.index('"install", "--no-index"')
    assert dockerfile.index('"/opt/envlock-build/steps.py", "origins"]') > install
    assert "steps.py\", \"seeds\"" not in dockerfile and '"--without-pip"' in dockerfile
    assert (ctx / "steps.py").read_bytes() == (Path(__file__).parent.parent / "envlock/build/steps.py").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["local", "url", "vcs", "editable"])
def test_steps_origins_make_the_installed_package_read_back_as_locked(tmp_path: Path, source: str) -> None:
    from envlock.build import steps
    from envlock.build.render import direct_url
    from envlock.probes.packages import collect_packages, parse_packages

    wheel = make_wheel(tmp_path / "wh")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "-q", "--python", str(venv / "bin" / "python"), "install",
                    "--no-index", "--no-deps", "--find-links", str(wheel.parent), "tinypkg==1.0"], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    before = parse_packages(collect_packages([str(site)]))["tinypkg"]
    assert before.source == "index"
    url = {"vcs": "https://example.org/t.git", "url": "https://example.org/tinypkg-1.0-py3-none-any.whl"}.get(
        source, "file:///src/tinypkg-1.0-py3-none-any.whl" if source == "local" else "file:///src/tinypkg")
    locked = Package(version="1.0", source=source, url=url, commit="a" * 40 if source == "vcs" else "",  # type: ignore[arg-type]
                     files=before.files)
    assert steps.origins({"origins": {"tinypkg": direct_url(locked)}}, str(site)) == 0
    after = parse_packages(collect_packages([str(site)]))["tinypkg"]
    assert after == locked


def test_steps_digest_is_the_probe_digest() -> None:
    from envlock.build import steps
    from envlock.probes.packages import record_digest

    for folder in {Path(p) for p in sys.path if p.endswith("site-packages")}:
        for record in sorted(folder.glob("*.dist-info/RECORD"))[:40]:
            text = record.read_text(encoding="utf-8", errors="replace")
            assert steps.files_digest(text, record.parent.name) == record_digest(text, record.parent.name), record


def test_a_distribution_seeded_pip_is_taken_from_the_base_and_checked(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any]
) -> None:
    # The wheelhouse's pip is another build of the locked version (the index's, while the lock has Debian's).
    index_pip = make_wheel(wheelhouse, name="pip", version="23.0.1")
    lock_data["packages"]["pip"] = {"version": "23.0.1", "source": "index", "files": "sha256:" + "e" * 64}
    # A seed the host finds no wheel of (not from an index: nothing is downloaded) is taken from the base too.
    lock_data["packages"]["wheel"] = {"version": "0.40.0", "source": "local", "files": "sha256:" + "f" * 64,
                                      "url": "file:///x/wheel-0.40.0-py3-none-any.whl"}
    lock = sealed(tmp_path, lock_data)
    ctx = tmp_path / "ctx"
    result = cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    plan = json.loads((ctx / "plan.json").read_text())
    assert sorted(plan["seeds"]) == ["pip", "wheel"]
    assert plan["seeds"]["pip"]["files"] == "sha256:" + "e" * 64
    assert index_pip.name in plan["seeds"]["pip"]["index"] and plan["seeds"]["wheel"]["index"] == ""
    assert plan["seeds"]["wheel"]["origin"] == "local file:///x/wheel-0.40.0-py3-none-any.whl"
    assert "pip" not in (ctx / "requirements.txt").read_text()
    assert sorted(p.name for p in (ctx / "wheels").iterdir()) == ["tinypkg-1.0-py3-none-any.whl"]
    dockerfile = (ctx / "Dockerfile").read_text()
    seeds_step = dockerfile.index('"/opt/envlock-build/steps.py", "seeds"]')
    assert dockerfile.index('RUN ["python3", "-m", "venv", "/opt/venv"]\n') < seeds_step
    assert seeds_step < dockerfile.index('"install", "--no-index"')


def test_a_seed_whose_wheel_matches_is_installed_from_it(
    cli: Any, tmp_path: Path, wheelhouse: Path, lock_data: dict[str, Any]
) -> None:
    pip = make_wheel(wheelhouse, name="pip", version="24.0")
    lock_data["packages"]["pip"] = {"version": "24.0", "source": "index", "files": wheel_files_digest(pip)}
    lock = sealed(tmp_path, lock_data)
    ctx = tmp_path / "ctx"
    result = cli(*build_args(lock, tmp_path, wheelhouse, "--context", str(ctx)), env=env(tmp_path))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "pip==24.0 --hash=sha256:" in (ctx / "requirements.txt").read_text()
    assert not (ctx / "plan.json").exists() and '"--without-pip"' in (ctx / "Dockerfile").read_text()


def test_steps_seeds_names_the_package_and_both_origins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from envlock.build import steps

    site = tmp_path / "site"
    dist = site / "pip-23.0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pip\nVersion: 23.0.1\n\n")
    (dist / "RECORD").write_text("pip/__init__.py,sha256=abc,3\npip-23.0.1.dist-info/RECORD,,\n")
    digest = steps.files_digest((dist / "RECORD").read_text(), dist.name)
    good = {"seeds": {"pip": {"version": "23.0.1", "files": digest, "origin": "an index", "index": ""}}}
    assert steps.seeds(good, str(site)) == 0
    bad = {"seeds": {"pip": {"version": "23.0.1", "files": "sha256:" + "e" * 64, "origin": "an index",
                             "index": "pip-23.0.1-py3-none-any.whl: its files differ"}}}
    assert steps.seeds(bad, str(site)) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(steps.PREFIX + "packages.pip: the lock has pip 23.0.1 from an index (files sha256:eeee")
    assert f"seeds pip 23.0.1 (files {digest[:19]}" in line and "pip-23.0.1-py3-none-any.whl" in line


def test_a_failing_envlock_step_gives_its_own_line() -> None:
    chunks = [{"stream": "Step 7/9 : RUN [\"/opt/envlock-installer/bin/python\", \"steps.py\", \"seeds\"]\n"},
              {"stream": "envlock-build: packages.pip: the lock has pip 23.0.1 from an index\n"},
              {"error": "The command returned a non-zero code: 1",
               "errorDetail": {"message": "The command returned a non-zero code: 1"}}]
    with pytest.raises(BuildError) as info:
        _follow(chunks)
    assert str(info.value).startswith("the build failed at step 7/9 (RUN")
    assert str(info.value).endswith(": packages.pip: the lock has pip 23.0.1 from an index")


def test_the_image_never_sets_a_locks_own_extra_env() -> None:
    env = lock_env({"MY_SEED": (True, "7"), "OMP_NUM_THREADS": (True, "4"), "LD_PRELOAD": (True, "/x.so")}, "x.lock")
    assert env == [("OMP_NUM_THREADS", "4")]

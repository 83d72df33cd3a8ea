"""Faults a write can meet, and what the user is left with: one line and exit 2, the old file byte for byte, no
temporary file. Real faults where the machine allows them (a read-only mount, a folder this user cannot write, a file
in the way, concurrent writers, SIGKILL), a seam where it does not (a full disk)."""

from __future__ import annotations

import copy
import errno
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from envlock.facts import dumps_facts, load_facts
from envlock.lockfile import load

HOSTS = Path(__file__).resolve().parents[1] / "fixtures" / "hosts"
H100_FACTS = HOSTS / "linux-nvidia550-cuda12.4-sapphirerapids-h100x8" / "facts.json"
NOBODY = 65534


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("envlock: error: "), stderr
    return lines[0]


def envlock(*args: str, cwd: Path | None = None, prefix: tuple[str, ...] = (),
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ENVLOCK_LOCK", "SOURCE_DATE_EPOCH")}
    return subprocess.run([*prefix, sys.executable, "-m", "envlock", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def unprivileged(to: str) -> tuple[str, ...]:
    """The command prefix that runs envlock as a user whom permission bits stop: none for an ordinary user; for
    root (who reads and writes anywhere), `setpriv` to nobody, once nobody can run this checkout's envlock."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip(f"running as root without setpriv: cannot {to}")
    prefix = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    probe = subprocess.run([*prefix, sys.executable, "-c", "import envlock"], capture_output=True, text=True,
                           timeout=60, check=False)
    if probe.returncode != 0:  # e.g. a checkout inside `mktemp -d`'s folder, which only root may enter
        pytest.skip(f"user nobody cannot run this checkout's envlock ({probe.stderr.strip().splitlines()[-1]}): "
                    "clone it into a folder others may read to run this test (CI does)")
    return prefix


def machines(folder: Path, count: int) -> list[Path]:
    """Facts files of `count` machines with the H100 host's software and each its own hardware."""
    base = load_facts(H100_FACTS)
    paths = []
    for n in range(count):
        facts = copy.deepcopy(base)
        devices = facts["gpu"]["devices"]
        facts["gpu"]["devices"] = devices[: 1 + n % len(devices)]
        facts["gpu"]["driver"] = f"550.{54 + n // len(devices)}.15"
        path = folder / f"machine{n}.json"
        path.write_text(dumps_facts(facts), encoding="utf-8")
        paths.append(path)
    return paths


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder other users can reach (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="envlock-faults-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in (folder, *folder.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def _base_lock(folder: Path) -> tuple[Path, bytes]:
    lock = folder / "envlock.lock"
    done = envlock("capture", "--facts", str(H100_FACTS), "-o", str(lock))
    assert done.returncode == 0, done.stderr
    lock.chmod(0o644)
    return lock, lock.read_bytes()


# --- a folder that cannot be written --------------------------------------------------------------------------


def test_a_folder_this_user_cannot_write_is_one_line_and_the_lock_stays(shared_dir: Path) -> None:
    folder = shared_dir / "locks"
    folder.mkdir()
    folder.chmod(0o755)
    lock, before = _base_lock(folder)
    other = machines(shared_dir, 2)[1]
    other.chmod(0o644)
    folder.chmod(0o555)
    prefix = unprivileged("make a folder unwritable")

    for args in (("--add-target",), ()):
        done = envlock("capture", *args, "--facts", str(other), "-o", str(lock), prefix=prefix, cwd=shared_dir)
        assert done.returncode == 2, done.stderr
        assert one_error_line(done.stderr) == f"envlock: error: {lock}: cannot write: Permission denied"
        assert done.stdout == ""
        assert lock.read_bytes() == before
        assert temp_files(folder) == []


def test_an_unreadable_lock_is_not_overwritten_without_force(shared_dir: Path) -> None:
    lock, before = _base_lock(shared_dir)
    lock.chmod(0)
    prefix = unprivileged("make a file unreadable")
    shared_dir.chmod(0o777)  # the folder is writable: only the lock's own mode protects it
    try:
        done = envlock("capture", "--facts", str(H100_FACTS), "-o", str(lock), prefix=prefix, cwd=shared_dir)
    finally:
        shared_dir.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr) == (f"envlock: error: {lock}: cannot read: Permission denied; refusing to "
                                           "overwrite it: pass --force to overwrite it, or choose another -o")
    lock.chmod(0o644)
    assert lock.read_bytes() == before
    assert temp_files(shared_dir) == []


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def test_a_read_only_filesystem_is_one_line_and_the_lock_stays(shared_dir: Path) -> None:
    if not _can_mount_read_only():
        pytest.skip("needs `unshare -m` and bind mounts")
    lock, before = _base_lock(shared_dir)
    other = machines(shared_dir, 2)[1]
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ("unshare", "-m", "sh", "-c", script, str(shared_dir))
    for args in (("--add-target",), ()):
        done = envlock("capture", *args, "--facts", str(other), "-o", str(lock), prefix=prefix)
        assert done.returncode == 2, done.stderr
        assert one_error_line(done.stderr) == f"envlock: error: {lock}: cannot write: Read-only file system"
        assert lock.read_bytes() == before
        assert temp_files(shared_dir) == []


# --- something in the way ------------------------------------------------------------------------------------


def test_a_target_whose_folder_is_a_file_is_one_line(tmp_path: Path, cli: Any) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    path = tmp_path / "notes.txt" / "envlock.lock"
    result = cli("capture", "--facts", str(H100_FACTS), "-o", str(path))
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == f"envlock: error: {path}: {path.parent} is not a folder"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    deeper = tmp_path / "notes.txt" / "sub" / "envlock.lock"
    result = cli("capture", "--facts", str(H100_FACTS), "-o", str(deeper))
    assert result.exit_code == 2
    assert "is not a folder" in one_error_line(result.stderr)


def test_a_target_that_is_a_folder_is_one_line_with_or_without_force(tmp_path: Path, cli: Any) -> None:
    folder = tmp_path / "envlock.lock"
    folder.mkdir()
    (folder / "keep").write_text("mine\n")
    result = cli("capture", "--facts", str(H100_FACTS), "-o", str(folder))
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == f"envlock: error: {folder}: is a directory, not a lock file; choose " \
                                            "another -o"
    forced = cli("capture", "--facts", str(H100_FACTS), "-o", str(folder), "--force")
    assert forced.exit_code == 2
    assert one_error_line(forced.stderr) == f"envlock: error: {folder}: is a directory, not a file"
    assert (folder / "keep").read_text() == "mine\n"
    assert temp_files(tmp_path) == []


def test_facts_output_into_a_folder_or_under_a_file_is_one_line(tmp_path: Path, cli: Any) -> None:
    (tmp_path / "f").write_text("mine\n")
    for output, expected in ((tmp_path, "is a directory, not a file"), (tmp_path / "f" / "x.json", "is not a folder")):
        result = cli("facts", "--no-torch", "--no-numerics", "-o", str(output))
        assert result.exit_code == 2
        assert expected in one_error_line(result.stderr)
    assert (tmp_path / "f").read_text() == "mine\n"
    assert temp_files(tmp_path) == []


# --- a full disk (a seam: no real filesystem here can be filled safely) ------------------------------------------


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write writes part of what it is given to a temporary file, then the disk is full."""
    real = os.write

    def write(fd: int, data: Any) -> int:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).endswith(".tmp"):
            if len(data) > 100:
                return real(fd, bytes(data[:100]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    monkeypatch.setattr("envlock.atomic.os.write", write)


@pytest.mark.usefixtures("disk_full")
def test_a_full_disk_leaves_the_file_and_no_temp_file(tmp_path: Path, cli: Any) -> None:
    lock = tmp_path / "envlock.lock"
    lock.write_bytes(b"")  # an empty file is captured over without --force
    result = cli("capture", "--facts", str(H100_FACTS), "-o", str(lock))
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == f"envlock: error: {lock}: cannot write: {os.strerror(errno.ENOSPC)}"
    assert lock.read_bytes() == b""
    assert temp_files(tmp_path) == []


def test_a_full_disk_during_add_target_leaves_the_lock(tmp_path: Path, cli: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "envlock.lock"
    assert cli("capture", "--facts", str(H100_FACTS), "-o", str(lock)).exit_code == 0
    before = lock.read_bytes()
    other = machines(tmp_path, 2)[1]
    real = os.write

    def write(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr("envlock.atomic.os.write", write)
    result = cli("capture", "--add-target", "--facts", str(other), "-o", str(lock))
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == f"envlock: error: {lock}: cannot write: {os.strerror(errno.ENOSPC)}"
    assert lock.read_bytes() == before
    assert temp_files(tmp_path) == []
    facts_out = tmp_path / "facts.json"
    facts_out.write_text("{}\n")
    result = cli("facts", "--no-torch", "--no-numerics", "-o", str(facts_out))
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == f"envlock: error: {facts_out}: cannot write: " \
                                            f"{os.strerror(errno.ENOSPC)}"
    assert facts_out.read_text() == "{}\n"
    assert temp_files(tmp_path) == []


# --- concurrent writers ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_add_targets_lose_no_target(tmp_path: Path) -> None:
    lock, _ = _base_lock(tmp_path)
    others = machines(tmp_path, 7)[1:]  # machine 0 is the base lock's own hardware
    argv = [sys.executable, "-m", "envlock", "capture", "--add-target", "-o", str(lock), "--facts"]

    def all_at_once() -> list[str]:
        procs = [subprocess.Popen([*argv, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for path in others]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * len(procs), outputs
        return [out for out, _ in outputs]

    said = all_at_once()
    assert all(line.startswith(f"wrote {lock}: ") and "added target" in line for line in said), said
    loaded, _ = load(lock)
    assert len(loaded.targets) == 1 + len(others), (sorted(loaded.targets), said)
    assert temp_files(tmp_path) == []
    # Once more, all at once: every machine is found in the lock, and nothing is written.
    before = lock.read_bytes()
    said = all_at_once()
    assert all("already in the lock: unchanged" in line for line in said), said
    assert lock.read_bytes() == before


def test_a_lock_held_too_long_is_one_line_and_nothing_changes(tmp_path: Path, cli: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fcntl = pytest.importorskip("fcntl")
    lock = tmp_path / "envlock.lock"
    assert cli("capture", "--facts", str(H100_FACTS), "-o", str(lock)).exit_code == 0
    before = lock.read_bytes()
    other = machines(tmp_path, 2)[1]
    monkeypatch.setattr("envlock.atomic.LOCK_WAIT", 0.3)
    with open(lock, "rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        started = time.monotonic()
        result = cli("capture", "--add-target", "--facts", str(other), "-o", str(lock))
        waited = time.monotonic() - started
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == (f"envlock: error: {lock}: another envlock is updating this lock and "
                                             "has held it for 0.3 s; try again when it has finished")
    assert 0.3 <= waited < 10
    assert lock.read_bytes() == before
    # Released, the same capture goes through.
    assert cli("capture", "--add-target", "--facts", str(other), "-o", str(lock)).exit_code == 0
    assert len(load(lock)[0].targets) == 2


def test_a_symlinked_lock_is_written_through_and_stays_a_link(tmp_path: Path, cli: Any) -> None:
    real = tmp_path / "real.lock"
    assert cli("capture", "--facts", str(H100_FACTS), "-o", str(real)).exit_code == 0
    link = tmp_path / "envlock.lock"
    link.symlink_to(real.name)
    other = machines(tmp_path, 2)[1]
    assert cli("capture", "--add-target", "--facts", str(other), "-o", str(link)).exit_code == 0
    assert link.is_symlink()
    assert len(load(real)[0].targets) == 2


# --- SIGKILL at random moments --------------------------------------------------------------------------------


@pytest.mark.slow
def test_add_target_killed_at_random_moments_leaves_the_old_lock_or_the_whole_new_one(tmp_path: Path) -> None:
    lock, old = _base_lock(tmp_path)
    others = machines(tmp_path, 9)[1:]
    rng = random.Random(20240611)
    argv = [sys.executable, "-m", "envlock", "capture", "--add-target", "-o", str(lock), "--facts"]
    expected = 1
    deadline = time.monotonic() + 90
    for path in others:
        if time.monotonic() > deadline:
            break
        process = subprocess.Popen([*argv, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.8))
        process.kill()
        process.wait(timeout=60)
        now = lock.read_bytes()
        if now == old:
            continue
        loaded, _ = load(lock)  # a whole, valid lock, or this raises
        assert len(loaded.targets) == expected + 1
        expected += 1
        old = now
    # Whatever SIGKILL left behind (a temporary file) never takes the lock's place, and the next capture works.
    done = envlock("capture", "--add-target", "--facts", str(others[0]), "-o", str(lock))
    assert done.returncode == 0, done.stderr
    assert all(name.startswith(".envlock.lock.") for name in temp_files(tmp_path))
    assert len(load(lock)[0].targets) == expected + (done.stdout.find("added target") >= 0)


# --- an engine that stops in the middle of a build -------------------------------------------------------------


class _StoppingApi:
    """A docker API whose build stream gives two steps, then loses the engine (or just ends)."""

    def __init__(self, failure: BaseException | None) -> None:
        self.failure = failure

    def build(self, **_: Any) -> Any:
        def stream() -> Any:
            yield {"stream": "Step 1/9 : FROM base\n"}
            yield {"stream": "Step 2/9 : COPY wheels/ /opt/envlock-build/wheels/\n"}
            if self.failure is not None:
                raise self.failure

        return stream()


class _StoppingClient:
    def __init__(self, failure: BaseException | None) -> None:
        self.api = _StoppingApi(failure)


@pytest.mark.parametrize(("failure", "code", "words"), [
    (ConnectionResetError(104, "Connection reset by peer"), 3, "lost the Docker Engine during the build"),
    (None, 4, "the build stream ended without an image ID (last step: step 2/9 (COPY wheels/"),
])
def test_an_engine_that_stops_mid_build_is_one_line(failure: BaseException | None, code: int, words: str) -> None:
    import io as io_module

    pytest.importorskip("docker")
    from envlock.build.engine import build_image
    from envlock.errors import exit_for

    shown: list[str] = []
    with pytest.raises(Exception) as info:
        build_image(_StoppingClient(failure), io_module.BytesIO(b""), {}, shown.append)
    exit_code, message = exit_for(info.value)
    assert exit_code == code and words in message and "\n" not in message
    assert any("Step 2/9" in line for line in shown)  # the progress so far was shown

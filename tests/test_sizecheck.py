"""The size check in C (envlock/_sizecheck.c) gives the Python check's answer (envlock.probes.sizes.changed_sizes)
for every kind of path a RECORD can hold, on any number of threads, and leaves to Python what it cannot say.

Skipped where the optional extension was not built (no C compiler), unless ENVLOCK_REQUIRE_NATIVE=1 (CI), where
that fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envlock.probes.sizes as sizes
from envlock.probes.sizes import SizeCheck, changed_sizes

Job = tuple[str, str, tuple[int, ...]]


@pytest.fixture(scope="module")
def native() -> Any:
    try:
        from envlock import _sizecheck
    except ImportError as missing:
        if os.environ.get("ENVLOCK_REQUIRE_NATIVE") == "1":
            pytest.fail(f"ENVLOCK_REQUIRE_NATIVE=1 but envlock._sizecheck was not built: {missing}", pytrace=False)
        pytest.skip("envlock._sizecheck was not built (no C compiler at install; ENVLOCK_REQUIRE_NATIVE=1 fails)")
    return _sizecheck


def python_answer(jobs: list[Job]) -> list[list[tuple[str, str]]]:
    return [changed_sizes(location, joined.split("\n") if joined else [], sizes) for location, joined, sizes in jobs]


def _tree(root: Path) -> tuple[str, list[tuple[str, int]]]:
    """A site folder with every kind of file a size check meets, and (path, size in RECORD) naming them."""
    site = root / "site"
    pkg = site / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "big").mkdir()
    for name in ("same.py", "sub/deep.py"):
        (pkg / name).write_text("x = 1\n")
    (pkg / "grown.py").write_text("x = 1  # edited\n")
    for i in range(40):  # a folder of its own for a run of files
        (pkg / "big" / f"f{i}.py").write_text("y" * i)
    (pkg / "café.py").write_text("é\n")  # not ASCII: its file-system encoding
    (pkg / "link.py").symlink_to("same.py")  # followed, as os.stat follows it
    (pkg / "dangling.py").symlink_to("nowhere.py")
    (pkg / "loop.py").symlink_to("loop.py")
    (site / "alias").symlink_to("pkg")  # a folder reached through a link
    raw = os.fsdecode(b"pkg/raw-\xff.py")  # a byte that is not UTF-8: surrogateescape both ways
    (site / raw).write_bytes(b"zz")
    rows = [
        ("pkg/same.py", 6), ("pkg/grown.py", 6), ("pkg/gone.py", 3), ("pkg/sub/deep.py", 6), ("pkg/sub/", 0),
        ("pkg/same.py/inside", 1),  # ENOTDIR: unreadable
        ("pkg/nofolder/x.py", 1), ("pkg/café.py", 3), ("pkg/link.py", 6), ("pkg/dangling.py", 1),
        ("pkg/loop.py", 1), ("alias/same.py", 6), ("alias/grown.py", 6), ("pkg/../pkg/same.py", 6),
        ("pkg//same.py", 6), ("pkg/nul\0.py", 1), ("pkg/" + "l" * 5000, 1), (raw, 2),
        *((f"pkg/big/f{i}.py", i + (i % 7 == 0)) for i in range(40)),
        *((f"pkg/big/gone{i}.py", 1) for i in range(6)),  # a run of missing files in an open folder
        *((f"pkg/nofolder/g{i}.py", 1) for i in range(6)),  # a run in a folder that cannot be opened
        ("pkg/big/f3.py", 4), ("pkg/sub/deep.py", 5),
        # Inside a run of one folder's files: the folder itself ("a/"), and a file named as a folder.
        *((f"pkg/big/f{i}.py", i) for i in range(4)), ("pkg/big/", 1), ("pkg/big/f4.py/", 4), ("pkg/big/f5.py", 5),
    ]
    return str(site), rows


def _jobs(site: str, rows: list[tuple[str, int]], cut: int) -> list[Job]:
    """The rows as jobs of `cut` files each, all under `site`."""
    chunks = [rows[i:i + cut] for i in range(0, len(rows), cut)]
    return [(site, "\n".join(p for p, _ in chunk), tuple(s for _, s in chunk)) for chunk in chunks]


@pytest.mark.parametrize("threads", [0, 1, 2, 8])
@pytest.mark.parametrize("cut", [1, 5, 1000])
def test_the_c_check_gives_the_python_answer_for_every_kind_of_path(
        native: Any, tmp_path: Path, threads: int, cut: int) -> None:
    site, rows = _tree(tmp_path)
    jobs = _jobs(site, rows, cut)
    expected = python_answer(jobs)
    flat = dict(p for found in expected for p in found)
    # The Python answer is what a user reads: the cases above are the cases meant.
    assert flat["pkg/grown.py"] == "6 bytes in RECORD, 16 on disk" and flat["pkg/gone.py"] == "missing"
    assert flat["pkg/same.py/inside"] == flat["pkg/loop.py"] == flat["pkg/nul\0.py"] == "unreadable"
    assert flat["pkg/dangling.py"] == flat["pkg/nofolder/x.py"] == "missing"
    assert "pkg/link.py" not in flat and "alias/same.py" not in flat and "pkg/café.py" not in flat
    assert flat["pkg/big/f7.py"] == "8 bytes in RECORD, 7 on disk" and flat["pkg/big/gone0.py"] == "missing"
    assert flat["pkg/big/f4.py/"] == "unreadable" and flat["pkg/big/"].endswith(" on disk")
    answer = native.start(jobs, threads).result()
    assert answer == expected


def test_a_path_too_long_for_one_lookup_fails_as_in_python_though_its_folder_opens(native: Any, tmp_path: Path) -> None:
    # 20 folders of 200 characters (4,019 bytes, which open one by one) and files of 101: each path is longer than
    # the kernel takes in one lookup, so Python's stat fails (ENAMETOOLONG); the C check must not stat it in two.
    folder = os.open(tmp_path, os.O_RDONLY)
    for _ in range(20):  # made one folder at a time: the whole path is too long for the kernel to take
        os.mkdir("d" * 200, dir_fd=folder)
        inner = os.open("d" * 200, os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = inner
    leaves = [f"{'l' * 100}{i}" for i in range(6)]
    for leaf in leaves:
        with open(os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder), "w") as handle:
            handle.write("x")
    os.close(folder)
    inside = "/".join(["d" * 200] * 20)
    jobs = [(str(tmp_path), "\n".join(f"{inside}/{leaf}" for leaf in leaves), (1,) * 6)]
    expected = python_answer(jobs)
    assert [what for _, what in expected[0]] == ["unreadable"] * 6
    assert native.start(jobs, 1).result() == expected


def test_jobs_under_locations_that_alternate_open_each_location_once(native: Any, tmp_path: Path) -> None:
    site, _ = _tree(tmp_path)
    other = tmp_path / "other"
    (other / "pkg").mkdir(parents=True)
    (other / "pkg" / "same.py").write_text("x\n")
    jobs = [(site if i % 2 else str(other), "pkg/same.py\npkg/grown.py", (6, 6)) for i in range(400)]
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    check = native.start(jobs, 0)  # no threads: the descriptors it holds until answered are all there is
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) - before == 2
    assert check.result() == python_answer(jobs)


def test_two_threads_asking_one_check_get_one_answer_and_no_crash(native: Any, tmp_path: Path) -> None:
    import threading

    site, rows = _tree(tmp_path)
    jobs = _jobs(site, rows * 400, 500)
    expected = python_answer(jobs)
    for second in ("result", "cancel"):
        check = native.start(jobs, 1)
        got: list[object] = []

        def ask(how: str, check: Any = check, got: list[object] = got) -> None:
            try:
                got.append(getattr(check, how)())
            except RuntimeError as refused:
                got.append(refused)

        threads = [threading.Thread(target=ask, args=("result",)), threading.Thread(target=ask, args=(second,))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        answers = [g for g in got if isinstance(g, list)]
        # One thread answers whole; the other is refused, answers nothing (after the first), or cancels.
        assert expected in answers or (second == "cancel" and answers == [[None] * len(jobs)])
        assert all(g is None or isinstance(g, RuntimeError) or g in (expected, [None] * len(jobs)) for g in got)


def test_jobs_it_cannot_say_are_left_to_python_and_size_check_does_them(native: Any, tmp_path: Path) -> None:
    site, rows = _tree(tmp_path)
    good = _jobs(site, rows[:3], 10)[0]
    jobs: list[Any] = [
        good,
        (str(tmp_path / "no-such-site"), "pkg/a.py", (1,)),  # the location cannot be opened
        (str(tmp_path / "site" / "pkg" / "same.py"), "x", (1,)),  # the location is a file
        (site, "pkg/\ud800.py\npkg/same.py", (1, 6)),  # a lone surrogate: no file-system bytes
        (site, "pkg/caf\udcc3\udca9.py", (1,)),  # bytes that decode to another text ("café"): named as given
        (site, "pkg/same.py", (6, 6)),  # as many sizes as paths, or it is not a job
        (site, "pkg/same.py", [6]),  # sizes that are not a tuple
        (site + "\0", "pkg/same.py", (6,)),
        (site, "", ()),
        (site, "pkg/same.py\n\npkg/grown.py", (6, 0, 6)),  # an empty path between two: it names no file
        good,
    ]
    answer = native.start(jobs, 2).result()
    assert answer[0] == answer[-1] == python_answer([good])[0]
    assert answer[1:8] == [None] * 7 and answer[8] == []
    grown = ("pkg/grown.py", "6 bytes in RECORD, 16 on disk")
    assert answer[9] == python_answer([jobs[9]])[0] == [("", "missing"), grown]
    # SizeCheck checks in Python what the C check left: a user sees one answer.
    checked = SizeCheck([good, jobs[1], jobs[3], jobs[4], jobs[8]]).result()
    assert checked == [python_answer([good])[0], [("pkg/a.py", "missing")], [("pkg/\ud800.py", "unreadable")],
                       [("pkg/caf\udcc3\udca9.py", "1 bytes in RECORD, 3 on disk")], []]


def test_cancel_stops_the_threads_and_answers_nothing(native: Any, tmp_path: Path) -> None:
    site, rows = _tree(tmp_path)
    jobs = _jobs(site, rows * 50, 100)
    check = native.start(jobs, 2)
    check.cancel()
    assert check.result() == [None] * len(jobs)
    again = native.start(jobs, 2)
    assert again.result() == python_answer(jobs)
    assert again.result() == [None] * len(jobs)  # answered once: a second ask gets nothing stale
    del again
    dropped = native.start(jobs, 2)
    del dropped  # freed while its threads may still run: they are stopped and joined first
    expected = python_answer(jobs)
    changing = list(jobs)
    check = native.start(changing, 2)
    changing.clear()  # the threads read the strings of the jobs as they were given, whatever the list holds now
    assert check.result() == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_copy_of_a_check_answers_nothing_and_the_parent_answers_whole(native: Any, tmp_path: Path) -> None:
    site, rows = _tree(tmp_path)
    jobs = _jobs(site, rows * 50, 100)
    check = native.start(jobs, 2)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the threads are the parent's: the child's copy must not wait for them nor trust their half
        try:
            ok = check.result() == [None] * len(jobs)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    said = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert said == b"1"
    assert check.result() == python_answer(jobs)


def test_size_check_uses_the_c_check_unless_it_is_turned_off(
        native: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site, rows = _tree(tmp_path)
    jobs = _jobs(site, rows, 7)
    forks: list[int] = []
    monkeypatch.setattr(sizes, "_may_fork", lambda: True)
    monkeypatch.setattr(sizes, "_start_child", lambda work: forks.append(1))  # type: ignore[func-returns-value]
    check = SizeCheck(jobs, parallel_from=0)
    assert check._native is not None and forks == []
    assert check.result() == python_answer(jobs)
    monkeypatch.setenv("ENVLOCK_SIZECHECK", "python")
    assert sizes._native() is None
    check = SizeCheck(jobs, parallel_from=0)
    assert check._native is None and forks == [1]


def test_the_threads_asked_for_grow_with_the_files_up_to_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2}, raising=False)
    assert [sizes._threads(n) for n in (1, 4096, 4097, 9000, 10**6)] == [1, 1, 2, 3, 3]
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)), raising=False)
    assert sizes._threads(10**6) == sizes.MAX_THREADS


_NAMES = st.sampled_from(["pkg", "sub", "same.py", "big", "f3.py", "alias", "..", ".", "", "x", "link.py", "é"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.lists(_NAMES, min_size=1, max_size=4).map("/".join).filter(bool), min_size=1, max_size=30),
       size=st.integers(0, 20), threads=st.integers(0, 3))
def test_any_path_gets_the_python_answer(native: Any, tmp_path_factory: pytest.TempPathFactory,
                                         paths: list[str], size: int, threads: int) -> None:
    site = _SITE.get("site")
    if site is None:
        site = _SITE["site"] = _tree(tmp_path_factory.mktemp("any"))[0]
    jobs = [(site, "\n".join(paths), (size,) * len(paths))]
    assert native.start(jobs, threads).result() == python_answer(jobs)


_SITE: dict[str, str] = {}



@pytest.mark.slow
def test_without_a_c_compiler_envlock_still_builds_and_checks_sizes_in_python(tmp_path: Path) -> None:
    # The extension is optional: a machine without a compiler gets a wheel without it, and the Python check.
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(sizes.__file__).parents[2]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(root / name, source / name)
    shutil.copytree(root / "envlock", source / "envlock", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = {**os.environ, "CC": "false"}  # every compile fails, as where no compiler is
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "wheels"), str(source)], capture_output=True, text=True, env=env,
                           timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "wheels").glob("envlock-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "envlock/probes/sizes.py" in names and not [n for n in names if n.endswith((".so", ".pyd", ".c"))]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import envlock.probes.sizes as s, sys; from pathlib import Path; p = Path(sys.argv[1]); "
            "p.mkdir(); (p / 'a.py').write_text('x'); "
            "print(s._native(), s.SizeCheck([(str(p), 'a.py\\nb.py', (2, 1))]).result())")
    # -S: no site, so this venv's own (editable) envlock is not found first; the size check needs nothing else.
    ran = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "pkg")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "None [[('a.py', '2 bytes in RECORD, 1 on disk'), ('b.py', 'missing')]]"


@pytest.mark.slow
@pytest.mark.parametrize("value", ["pyhton", "yes", "C++"])
def test_an_envlock_sizecheck_that_is_not_a_choice_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    # Not a silent choice: a typo of `python` would otherwise keep the C check and say nothing. At job start too,
    # where the verdict memo answers before anything else is loaded.
    from tests.helpers import clean_env, console

    lock = Path(sizes.__file__).parents[2] / "fixtures/hosts/linux-nogpu-nocuda-x86_64_v4-devbox/expected.lock"
    env = clean_env(ENVLOCK_CACHE_DIR=str(tmp_path / "cache"))
    for _ in range(2):  # the second run asks the memo the first one wrote
        assert console("verify", "--fast", lock, cwd=tmp_path, env=env).returncode == 1  # not this machine's lock
    done = console("verify", "--fast", lock, cwd=tmp_path, env={**env, "ENVLOCK_SIZECHECK": value})
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"envlock: error: ENVLOCK_SIZECHECK={value!r}: expected one of auto, c, python (auto when unset)"], done.stderr
    for fine in ("python", "AUTO", " c "):
        assert console("verify", "--fast", lock, cwd=tmp_path, env={**env, "ENVLOCK_SIZECHECK": fine}).returncode == 1


def test_envlock_sizecheck_c_where_it_was_not_built_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from envlock.errors import UsageError

    monkeypatch.setitem(sys.modules, "envlock._sizecheck", None)  # as where the extension was not built
    monkeypatch.setenv("ENVLOCK_SIZECHECK", "c")
    with pytest.raises(UsageError, match="ENVLOCK_SIZECHECK=c, but envlock's C size check cannot be loaded"):
        sizes._native()
    monkeypatch.setenv("ENVLOCK_SIZECHECK", "auto")
    assert sizes._native() is None  # auto: Python's check, with the same answer

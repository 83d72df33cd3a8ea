"""The report a user reads: one headline per root cause, what applied, patterns that cannot silently do nothing,
machine output that keeps its types, and advice that fits the launcher."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import envlock
from envlock.capturing import build_lock
from envlock.cli import main as cli_main
from envlock.errors import UsageError
from envlock.facts import load_facts
from envlock.findings import Finding, Report, group
from envlock.launcher import detect
from envlock.model import Policy
from envlock.policy import check_pattern, merge_policy, rule_for, subsumes
from envlock.report import render_fleet, render_json, render_text, wrap_hint
from envlock.verifying import Observed, evaluate
from tests.helpers import ENVLOCK, at_a_terminal, clean_env, write_facts, write_lock

HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
DEVBOX = HOSTS / "linux-nogpu-nocuda-x86_64_v4-devbox" / "facts.json"
CREATED = "2026-01-01T00:00:00Z"


def finding(path: str, expected: str = "1", actual: str = "2", severity: str = "error", cause: str = "",
            hint: str = "") -> Finding:
    return Finding(path=path, expected=expected, actual=actual, severity=severity, hint=hint, cause=cause)


@pytest.fixture
def devbox() -> dict[str, Any]:
    return load_facts(DEVBOX)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`envlock ...` through the job-start parser, in-process."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli_main([str(a) for a in argv])
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def with_env(facts: dict[str, Any], **values: str | None) -> dict[str, Any]:
    out = copy.deepcopy(facts)
    for name, value in values.items():
        if value is None:
            out["env"].pop(name, None)
        else:
            out["env"][name] = value
    return out


# --- causes: pure grouping ----------------------------------------------------------------------------------------


def test_a_chain_of_causes_is_one_headline_with_its_consequences_under_it() -> None:
    findings = [
        finding("blas.libraries.torch-openmp.num_threads", "4", "1", cause="floats.env.OMP_NUM_THREADS"),
        finding("floats.env.OMP_NUM_THREADS", "(unset)", "1", hint="OMP_NUM_THREADS was unset at capture"),
        finding("numerics.torch-sum-cpu-float32", "aa", "bb", cause="threads.torch_intraop"),
        finding("threads.torch_intraop", "4", "1", cause="floats.env.OMP_NUM_THREADS"),
    ]
    (cause,) = group(findings)
    assert cause.headline == "OMP_NUM_THREADS is 1, was unset"
    assert cause.paths[0] == "floats.env.OMP_NUM_THREADS"
    assert sorted(cause.paths) == sorted(f.path for f in findings)
    assert cause.fix == "OMP_NUM_THREADS was unset at capture"


def test_the_targets_verdict_comes_first_then_errors_before_warnings() -> None:
    findings = [finding("cpu.model", severity="warn"), finding("python.version"),
                finding("targets", "one of: a100, h100", "none (nearest: a100)")]
    causes = group(findings)
    assert [c.paths[0] for c in causes] == ["targets", "python.version", "cpu.model"]
    assert causes[0].headline == "this machine matches none of the lock's targets (a100, h100)"


def test_every_finding_belongs_to_exactly_one_cause_even_with_a_cycle() -> None:
    findings = [finding("a.x", cause="b.x"), finding("b.x", cause="a.x"), finding("c.x", cause="nowhere")]
    causes = group(findings)
    paths = [p for c in causes for p in c.paths]
    assert sorted(paths) == ["a.x", "b.x", "c.x"]


def test_missing_packages_make_one_cause_with_one_install_command() -> None:
    findings = [finding(f"packages.{name}", version, "not installed") for name, version in
                (("numpy", "2.1.0"), ("six", "1.16.0"), ("sympy", "1.13.1"))]
    (cause,) = group(findings)
    assert cause.headline == "3 locked packages are not installed: numpy, six, sympy"
    assert "`pip install numpy==2.1.0 six==1.16.0 sympy==1.13.1`" in cause.fix


def test_a_changed_build_reads_as_words_not_hashes() -> None:
    (cause,) = group([finding("packages.numpy.files", "sha256:" + "a" * 64, "sha256:" + "b" * 64)])
    assert cause.headline == "the installed files of numpy differ from the locked build"


def test_between_two_locks_the_headline_speaks_of_a_and_b() -> None:
    (cause,) = group([finding("floats.env.OMP_NUM_THREADS", "4", "(unset)")], between_locks=True)
    assert cause.headline == "OMP_NUM_THREADS is unset in B, 4 in A"
    (gone,) = group([finding("packages.six", "1.16.0", "not installed")], between_locks=True)
    assert gone.headline == "six is in A (1.16.0) but not in B"


# --- the text report ----------------------------------------------------------------------------------------------


def test_the_text_report_leads_with_the_cause(devbox: dict[str, Any]) -> None:
    lock = build_lock(devbox, created=CREATED)
    now = build_lock(with_env(devbox, OMP_NUM_THREADS="1"), policy=lock.policy, created=CREATED)
    report = evaluate(lock, Observed(current=now, skipped=("numerics",)), lock.policy, name="envlock.lock")
    lines = render_text(report)
    assert lines[0].startswith("envlock verify: MISMATCH: 1 error — envlock.lock")
    assert "  error: OMP_NUM_THREADS is 1, was unset" in lines


def test_a_command_in_a_hint_is_never_broken_across_lines() -> None:
    hint = ("the installed files differ from the locked build: " * 2 +
            "`pip install --force-reinstall --no-deps nvidia-cublas-cu12==12.4.2.65` restores it")
    lines = wrap_hint(hint, "    hint: ", "          ", width=60)
    assert any("`pip install --force-reinstall --no-deps nvidia-cublas-cu12==12.4.2.65`" in line for line in lines)
    assert not any(line.rstrip().endswith("-") for line in lines)


def test_str_of_a_report_is_the_text_report() -> None:
    report = Report(lock="envlock.lock", target="t", findings=(finding("python.version", "3.11.9", "3.12.1"),))
    assert str(report) == "\n".join(render_text(report))
    assert str(report).startswith("envlock verify: MISMATCH: 1 error — envlock.lock (target t)")


def test_the_policy_sources_are_named_when_more_than_the_lock_applied() -> None:
    report = Report(lock="envlock.lock", target="t", findings=(),
                    sources=("envlock.lock [policy]", "/job/pyproject.toml [tool.envlock]", "--ignore cpu.*"))
    assert render_text(report)[1] == (
        "  policy: envlock.lock [policy], then /job/pyproject.toml [tool.envlock], then --ignore cpu.*")
    assert report.to_dict()["policy"] == list(report.sources)


# --- JSON ---------------------------------------------------------------------------------------------------------


def test_json_values_keep_their_types_and_the_causes_sit_next_to_the_findings() -> None:
    report = Report(lock="envlock.lock", target="t", findings=(
        finding("floats.env.OMP_NUM_THREADS", "(unset)", "1", hint="unset it"),
        finding("threads.torch_intraop", "2", "1", cause="floats.env.OMP_NUM_THREADS"),
        finding("floats.torch.matmul_allow_tf32", "false", "true"),
    ))
    data = json.loads(render_json(report))
    values = {f["path"]: (f["expected"], f["actual"]) for f in data["findings"]}
    assert values["floats.env.OMP_NUM_THREADS"] == (None, 1)
    assert values["threads.torch_intraop"] == (2, 1)
    assert values["floats.torch.matmul_allow_tf32"] == (False, True)
    assert data["causes"][0] == {"cause": "OMP_NUM_THREADS is 1, was unset", "severity": "error",
                                 "paths": ["floats.env.OMP_NUM_THREADS", "threads.torch_intraop"],
                                 "fix": "unset it"}


# --- patterns that would do nothing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "suggested"), [
    ("floats", "floats.**"),
    ("floats.env.omp_num_threads", "floats.env.OMP_NUM_THREADS"),
    ("packages.nump", "packages.numpy"),
    ("packages.nosuchpkg", None),
])
def test_a_pattern_that_matches_nothing_is_exit_2_with_the_nearest_paths(
        devbox: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str,
        suggested: str | None) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    facts = write_facts(devbox, tmp_path / "now.json")
    code, out, err = run(["verify", str(lock), "--facts", str(facts), "--ignore", pattern], capsys)
    assert (code, out) == (2, "")
    (line,) = err.strip().splitlines()
    assert f"--ignore {pattern!r} matches nothing this lock or this machine has" in line
    if suggested:
        assert f"nearest: {suggested}" in line
    else:
        assert "nearest" not in line


def test_globs_and_a_trailing_double_star_match(devbox: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    facts = write_facts(with_env(devbox, OMP_NUM_THREADS="1"), tmp_path / "now.json")
    assert run(["verify", str(lock), "--facts", str(facts)], capsys)[0] == 1
    for pattern in ("floats.env.OMP_*", "floats.**", "floats.env.*"):
        code, out, _ = run(["verify", str(lock), "--facts", str(facts), "--ignore", pattern], capsys)
        assert code == 0, (pattern, out)


def test_double_star_rules_order_and_subsume() -> None:
    assert subsumes("floats.**", "floats.env.*") and not subsumes("floats.env.*", "floats.**")
    assert subsumes("floats.env.OMP_*", "floats.env.OMP_NUM_THREADS")
    lock = build_lock(load_facts(DEVBOX), created=CREATED)
    policy = merge_policy(lock.policy, ignore=["cpu.**"])
    assert rule_for(policy, "cpu.model").rule == "ignore"
    with pytest.raises(UsageError, match="trailing"):
        check_pattern("floats.**.x", "--ignore")


def test_a_pyproject_rule_that_matches_nothing_names_the_file(devbox: dict[str, Any], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    (tmp_path / "pyproject.toml").write_text('[tool.envlock.rules]\n"cpu.modle" = {rule = "ignore"}\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["verify", str(lock), "--facts", str(write_facts(devbox, tmp_path / "now.json"))], capsys)
    assert code == 2
    assert "pyproject.toml: [tool.envlock.rules] 'cpu.modle' matches nothing" in err
    assert "nearest: cpu.model" in err


# --- where the policy and the lock come from ----------------------------------------------------------------------


def test_tool_envlock_is_found_from_the_working_directory_up_past_a_pyproject_without_it(
        devbox: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    lock = write_lock(devbox, tmp_path / "locks" / "envlock.lock")
    facts = write_facts(with_env(devbox, OMP_NUM_THREADS="1"), tmp_path / "now.json")
    (tmp_path / "pyproject.toml").write_text('[tool.envlock.rules]\n"floats.env.OMP_NUM_THREADS" = '
                                             '{rule = "exact", severity = "warn"}\n')
    job = tmp_path / "job"
    job.mkdir()
    (job / "pyproject.toml").write_text('[project]\nname = "job"\n')
    monkeypatch.chdir(job)
    code, out, _ = run(["verify", str(lock), "--facts", str(facts)], capsys)
    assert code == 0, out
    assert f"then {tmp_path / 'pyproject.toml'} [tool.envlock]" in out
    assert "warning: OMP_NUM_THREADS is 1, was unset" in out


def test_envlock_lock_wins_over_a_lock_in_the_working_directory(
        devbox: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    write_lock(devbox, tmp_path / "envlock.lock")
    chosen = write_lock(devbox, tmp_path / "image" / "chosen.lock")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENVLOCK_LOCK", str(chosen))
    code, out, _ = run(["verify", "--facts", str(write_facts(devbox, tmp_path / "now.json"))], capsys)
    assert code == 0
    assert out.startswith(f"envlock verify: OK — {chosen}")


def test_recorded_facts_without_numerics_say_why_numerics_were_not_checked(
        devbox: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    no_probe = copy.deepcopy(devbox)
    no_probe.pop("numerics", None)
    assert "numerics" in devbox  # the lock has probe results the facts lack
    _, out, _ = run(["verify", str(lock), "--facts", str(write_facts(no_probe, tmp_path / "n.json"))], capsys)
    assert "(--fast)" not in out
    assert "not checked (not in the recorded facts): numerics" in out


# --- --strict -----------------------------------------------------------------------------------------------------


def test_strict_turns_warnings_into_exit_1(devbox: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    other = copy.deepcopy(devbox)
    other["cpu"]["cpuinfo"]["model name"] = "Another CPU"
    facts = write_facts(other, tmp_path / "now.json")
    code, out, _ = run(["verify", str(lock), "--facts", str(facts)], capsys)
    assert code == 0 and "OK with 1 warning" in out
    assert run(["verify", str(lock), "--facts", str(facts), "--strict"], capsys)[0] == 1


# --- launchers ----------------------------------------------------------------------------------------------------


def test_launchers_are_recognised_from_their_environment() -> None:
    torchrun = detect({"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "8", "SLURM_PROCID": "0"})
    assert torchrun is not None and (torchrun.name, torchrun.rank, torchrun.world_size) == ("torchrun", 3, 8)
    slurm = detect({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"})
    assert slurm is not None and (slurm.name, slurm.rank) == ("slurm", 2)
    assert detect({"SLURM_JOB_ID": "7"}) is None and detect({}) is None


def test_under_torchrun_the_omp_hint_names_torchruns_default_and_both_fixes(
        devbox: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    lock = build_lock(devbox, created=CREATED)
    now = build_lock(with_env(devbox, OMP_NUM_THREADS="1"), policy=lock.policy, created=CREATED)
    observed = Observed(current=now, skipped=("numerics",), launcher="torchrun")
    (cause,) = evaluate(lock, observed, lock.policy).causes
    assert cause.fix.startswith("torchrun sets OMP_NUM_THREADS=1 for its workers when it is unset")
    assert "`torchrun --standalone --nproc-per-node N -m envlock capture`" in cause.fix
    assert "`export OMP_NUM_THREADS=N`" in cause.fix


def test_in_a_slurm_task_a_changed_core_count_names_cpus_per_task(devbox: dict[str, Any]) -> None:
    lock = build_lock(devbox, created=CREATED)
    fewer = copy.deepcopy(devbox)
    fewer["cpu"]["usable_cores"] = 1
    now = build_lock(fewer, policy=lock.policy, created=CREATED)
    report = evaluate(lock, Observed(current=now, skipped=("numerics",), launcher="slurm"), lock.policy)
    (finding,) = [f for f in report.findings if f.path == "cpu.usable_cores"]
    assert "this is a Slurm task" in finding.hint and "`--cpus-per-task`" in finding.hint
    plain = evaluate(lock, Observed(current=now, skipped=("numerics",)), lock.policy)
    assert "this is a Slurm task" not in next(f.hint for f in plain.findings if f.path == "cpu.usable_cores")


def test_capture_under_torchrun_writes_on_rank_0_only(tmp_path: Path) -> None:
    env = clean_env(TORCHELASTIC_RUN_ID="job", RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    done = subprocess.run([str(ENVLOCK), "capture", "--no-numerics", "--no-torch", "-o", "x.lock"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "x.lock").exists()
    assert "rank 1 of torchrun: rank 0 writes the lock" in done.stderr


# --- envlock run says what it changed -----------------------------------------------------------------------------


def test_run_names_the_env_vars_it_set_or_unset(devbox: dict[str, Any], tmp_path: Path) -> None:
    facts = with_env(devbox, CUBLAS_WORKSPACE_CONFIG=":4096:8", OMP_NUM_THREADS=None)
    lock = write_lock(facts, tmp_path / "envlock.lock")
    job = [sys.executable, "-c", "pass"]
    env = clean_env(OMP_NUM_THREADS="3", ENVLOCK_VERIFY="off")
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)
    done = subprocess.run([str(ENVLOCK), "run", "--lock", str(lock), "--", *job], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("envlock run:")]
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in line and "unset OMP_NUM_THREADS (was 3)" in line
    quiet = subprocess.run([str(ENVLOCK), "run", "-q", "--lock", str(lock), "--", *job], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=False)
    assert quiet.returncode == 0 and "envlock run:" not in quiet.stderr


# --- the fleet ----------------------------------------------------------------------------------------------------


def test_a_failing_fleet_does_not_advise_making_its_differences_an_error() -> None:
    from envlock.fleet.decide import FleetReport, RankSummary, decide

    def summary(rank: int, code: int, driver: str) -> RankSummary:
        return RankSummary(rank=rank, host="a", code=code, errors=code, digest=f"d{rank}", sections="x" * 66,
                           target="t", keys={"gpu.driver": driver},
                           failing=(("python.version", "3.11", "3.12"),) if code else ())

    summaries = [summary(0, 0, "550"), summary(1, 0, "560"), summary(2, 1, "560")]
    decision = decide(summaries, 3, policy=Policy(), timeout=10)
    report = FleetReport(lock="envlock.lock", target="t", findings=decision.findings, world_size=3,
                         exit_code=decision.code, verdict=decision.line, timeout=10, ranks=tuple(summaries),
                         missing=(), decision=decision)
    text = "\n".join(render_fleet(report))
    assert not report.ok and "the fleet is not homogeneous" in text
    assert "to make this an error" not in text
    passing = decide(summaries[:2], 2, policy=Policy(), timeout=10)
    report = FleetReport(lock="envlock.lock", target="t", findings=passing.findings, world_size=2,
                         exit_code=passing.code, verdict=passing.line, timeout=10, ranks=tuple(summaries[:2]),
                         missing=(), decision=passing)
    assert report.ok and "to make this an error" in "\n".join(render_fleet(report))
    assert str(report).startswith("envlock verify --distributed: OK")


def test_print_of_the_api_report_is_the_text_report(machine_facts: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lock = write_lock(machine_facts, tmp_path / "envlock.lock")
    report = envlock.verify(lock, fast=True)
    print(report)
    out = capsys.readouterr().out
    assert out.startswith("envlock verify: ") and f" — {lock}" in out.splitlines()[0]
    assert "Report(" not in out


# --- a terminal gets styles, a pipe plain text; a clean verify never loads rich --------------------------------


@pytest.mark.slow
def test_a_terminal_gets_the_report_in_colour_and_a_pipe_gets_plain_text(devbox: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    facts = write_facts(with_env(devbox, OMP_NUM_THREADS="1"), tmp_path / "now.json")
    argv = [str(ENVLOCK), "verify", str(lock), "--facts", str(facts)]
    code, shown, _ = at_a_terminal(argv, tmp_path)
    assert code == 1
    assert "\x1b[" in shown and "OMP_NUM_THREADS is 1, was unset" in shown
    piped = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=clean_env(), check=False)
    assert piped.returncode == 1 and "\x1b[" not in piped.stdout
    assert "  error: OMP_NUM_THREADS is 1, was unset" in piped.stdout.splitlines()
    _, plain, _ = at_a_terminal(argv, tmp_path, NO_COLOR="1")
    assert "\x1b[" not in plain


@pytest.mark.slow
def test_a_clean_fast_verify_at_a_terminal_does_not_import_rich(console_lock: Path, tmp_path: Path) -> None:
    code, shown, err = at_a_terminal([str(ENVLOCK), "verify", "--fast", str(console_lock)], tmp_path,
                                      PYTHONPROFILEIMPORTTIME="1")
    assert code == 0, shown + err
    assert shown.startswith("envlock verify: OK")
    imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert "typer" not in imported and "envlock.verifying" in imported
    assert not {name for name in imported if name.split(".")[0] == "rich"}


def test_the_fleet_line_of_a_rank_shows_the_cause_before_what_follows_from_it() -> None:
    from envlock.fleet.decide import failing_text
    from envlock.fleet.wire import RankSummary, causes_first

    report = Report(lock="envlock.lock", target="t", findings=(
        finding("blas.libraries.torch-openmp.num_threads", "2", "1", cause="floats.env.OMP_NUM_THREADS"),
        finding("floats.env.OMP_NUM_THREADS", "(unset)", "1"),
        finding("threads.torch_intraop", "2", "1", cause="floats.env.OMP_NUM_THREADS"),
    ))
    ordered = causes_first(report)
    assert ordered[0].path == "floats.env.OMP_NUM_THREADS"
    summary = RankSummary(rank=0, host="a", code=1, errors=3, digest="d", sections="x" * 66, target="t",
                          failing=tuple((f.path, f.expected, f.actual) for f in ordered))
    assert failing_text(summary, limit=1) == "floats.env.OMP_NUM_THREADS (unset) → 1 (+2 more)"


def test_extra_and_missing_packages_can_be_ignored_from_pyproject(devbox: dict[str, Any], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    more = copy.deepcopy(devbox)
    extra = copy.deepcopy(more["packages"][0])
    extra["name"] = "late-plugin"
    more["packages"].append(extra)
    facts = write_facts(more, tmp_path / "now.json")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["verify", str(lock), "--facts", str(facts)], capsys)
    assert code == 0 and "late-plugin" in out  # an extra package warns by default
    (tmp_path / "pyproject.toml").write_text('[tool.envlock]\nextra_packages = "ignore"\n')
    code, out, _ = run(["verify", str(lock), "--facts", str(facts)], capsys)
    assert code == 0 and "late-plugin" not in out and out.startswith("envlock verify: OK —")


@pytest.mark.parametrize("digits", ["1.٣", "1.²", "1." + "9" * 40])
def test_versions_with_non_ascii_or_huge_digits_compare_without_crashing(digits: str) -> None:
    from envlock.compare import satisfies
    from envlock.model import Rule

    for rule in ("min", "compatible"):
        assert satisfies(Rule(rule=rule), digits, digits) is True  # type: ignore[arg-type]
        assert isinstance(satisfies(Rule(rule=rule), "1.2", digits), bool)  # type: ignore[arg-type]


# --- CI formats ---------------------------------------------------------------------------------------------------


def test_github_format_is_one_annotation_per_cause(devbox: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    now = with_env(devbox, OMP_NUM_THREADS="1")
    now["cpu"]["cpuinfo"]["model name"] = "Another, CPU: x"
    facts = write_facts(now, tmp_path / "now.json")
    code, out, _ = run(["verify", str(lock), "--facts", str(facts), "--format", "github"], capsys)
    assert code == 1
    lines = out.splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    assert len(annotations) == len(envlock.verifying.verify(lock, facts=now).causes)
    assert annotations[0].startswith(f"::error file={lock},title=envlock%3A OMP_NUM_THREADS is 1%2C was unset::")
    assert any(a.startswith("::warning ") and "Another%2C CPU%3A x" in a for a in annotations)
    assert lines[-1].startswith("envlock verify: MISMATCH")


def test_junit_format_has_a_test_case_per_section(devbox: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from xml.etree import ElementTree as ET

    lock = write_lock(devbox, tmp_path / "envlock.lock")
    facts = write_facts(with_env(devbox, OMP_NUM_THREADS="1"), tmp_path / "now.json")
    out_file = tmp_path / "ci" / "envlock.xml"
    out_file.parent.mkdir()
    code, out, err = run(["verify", str(lock), "--facts", str(facts), "--format", "junit", "-o", str(out_file)],
                         capsys)
    assert code == 1 and out == ""
    assert err.startswith("envlock verify: MISMATCH")
    suite = ET.parse(out_file).getroot()
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert {"python", "packages", "floats", "platform", "cpu", "blas", "threads", "gpu", "numerics"} <= set(cases)
    failure = cases["floats"].find("failure")
    assert failure is not None and "floats.env.OMP_NUM_THREADS: (unset) → 1" in (failure.text or "")
    assert cases["python"].find("failure") is None
    assert suite.get("failures") == str(sum(1 for c in cases.values() if c.find("failure") is not None))
    assert list(tmp_path.glob("ci/.*")) == []  # written whole: no temporary left


def test_format_json_is_json_and_bad_formats_are_refused(devbox: dict[str, Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    facts = write_facts(devbox, tmp_path / "now.json")
    _, as_format, _ = run(["verify", str(lock), "--facts", str(facts), "--format", "json"], capsys)
    _, as_flag, _ = run(["verify", str(lock), "--facts", str(facts), "--json"], capsys)
    assert json.loads(as_format) == json.loads(as_flag)
    code, _, err = run(["verify", str(lock), "--format", "yaml"], capsys)
    assert code == 2 and err.strip() == ("envlock: error: --format 'yaml': expected one of text, json, github, "
                                         "junit, markdown, html (see envlock verify --help)")
    code, _, err = run(["verify", str(lock), "--distributed", "--format", "junit"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_markdown_diff_is_a_table_grouped_by_cause(devbox: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    a = write_lock(devbox, tmp_path / "a" / "envlock.lock")
    b = write_lock(with_env(devbox, OMP_NUM_THREADS="4", MKL_NUM_THREADS="a|b"), tmp_path / "b" / "envlock.lock")
    code, out, _ = run(["diff", str(a), str(b), "--format", "markdown"], capsys)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("**envlock diff: MISMATCH") and "| cause | severity | path | A | B |" in lines
    assert "| **OMP_NUM_THREADS is 4 in B, unset in A** | error | `floats.env.OMP_NUM_THREADS` | (unset) | 4 |" in lines
    assert any("a\\|b" in line for line in lines)  # a pipe in a value does not break the table


# --- extra_env: the user's own variables ----------------------------------------------------------------------


def test_extra_env_in_the_policy_is_recorded_by_the_next_capture_and_checked_by_fast(tmp_path: Path) -> None:
    env = clean_env()
    env.pop("MY_SEED", None)

    def envlock_cmd(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ENVLOCK), *args], cwd=tmp_path, env={**env, **extra}, capture_output=True,
                              text=True, check=False)

    assert envlock_cmd("capture", "--no-numerics", "--no-torch").returncode == 0
    lock = tmp_path / "envlock.lock"
    lock.write_text(lock.read_text().replace("[policy]\n", '[policy]\nextra_env = ["MY_SEED"]\n', 1))
    before = envlock_cmd("verify", "--fast", MY_SEED="7")
    assert before.returncode == 1 and "error: MY_SEED is 7, was (absent)" in before.stdout
    assert "a new `extra_env` in [policy]" in " ".join(before.stdout.split())
    assert envlock_cmd("capture", "--no-numerics", "--no-torch", MY_SEED="7").returncode == 0
    assert 'MY_SEED = {set = true, value = "7"}' in lock.read_text()
    assert envlock_cmd("verify", "--fast", MY_SEED="7").returncode == 0
    moved = envlock_cmd("verify", "--fast", MY_SEED="8")
    assert moved.returncode == 1 and "error: MY_SEED is 8, was 7" in moved.stdout


def test_extra_env_belongs_in_the_lock_not_in_pyproject(devbox: dict[str, Any], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    lock = write_lock(devbox, tmp_path / "envlock.lock")
    (tmp_path / "pyproject.toml").write_text('[tool.envlock]\nextra_env = ["MY_SEED"]\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["verify", str(lock), "--facts", str(write_facts(devbox, tmp_path / "now.json"))], capsys)
    assert code == 2 and "extra_env belongs in the lock's [policy]" in err

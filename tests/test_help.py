"""What a person reads when they ask for help or get the command line wrong: help with examples and exit codes in
plain words, one line and exit 2 for every usage error (the same whichever parser met it), options that would do
nothing refused, and with --json one JSON object on stdout for every failure."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from envlock.cli import main
from envlock.cli.commands import BODIES
from envlock.cli.options import BY_NAME, COMMANDS, FAST, ROOT_EXIT_CODES, settle
from envlock.errors import EnvironmentUnavailable, ExitCode
from tests.conftest import ROOT, Cli
from tests.helpers import console

DEVBOX = ROOT / "fixtures/hosts/linux-nogpu-nocuda-x86_64_v4-devbox"
LOCK, FACTS = str(DEVBOX / "expected.lock"), str(DEVBOX / "facts.json")
#: What a type name or a generated metavar looks like when it leaks into help.
LEAKS = re.compile(r"<\w+(\[\w+\])?>|list\[|\{\w+\}|\b(PATH|TEXT|FLOAT|INTEGER|BOOLEAN)\b")


def both(cli: Cli, capsys: pytest.CaptureFixture[str], *args: str) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) through the console script's main() (the job-start parser for verify and
    capture) and through the typer app, as the test suite's `cli` runs it."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    result = cli(*args)
    return [(int(info.value.code or 0), out, err), (result.exit_code, result.stdout, result.stderr)]


def one_usage_line(cli: Cli, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one stderr line both front ends print for a usage error, with exit 2 and nothing on stdout."""
    seen = both(cli, capsys, *args)
    for code, out, err in seen:
        assert code == ExitCode.BAD_INPUT, (args, out, err)
        assert out == ""
        assert len(err.splitlines()) == 1 and err.startswith("envlock: error: "), err
    assert seen[0][2] == seen[1][2], "the two parsers word it differently"
    return seen[0][2].strip()


# --- help ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [c.name for c in COMMANDS] + [""])
def test_help_has_a_summary_plain_options_two_examples_and_the_exit_codes(cli: Cli, command: str) -> None:
    result = cli(*([command] if command else []), "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert not LEAKS.search(text), LEAKS.search(text)
    assert max(len(line) for line in text.splitlines()) <= 80
    summary = text.split("\n\n")[1].strip()
    if command:
        declared = BY_NAME[command]
        assert summary == declared.summary and "\n" not in summary
        for param in declared.params:
            assert (param.metavar or "") in text and all(f in text for f in param.flags), param.name
        codes = [code for code, _ in declared.exit_codes]
    else:
        assert summary.startswith("Lock a job's whole environment")
        codes = [code for code, _ in ROOT_EXIT_CODES]
    examples = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    lines = re.findall(r"^  (\S.*)$", examples, flags=re.M)
    assert len(lines) == 2 and all("envlock" in line for line in lines), examples
    listed = text.split("Exit codes:\n", 1)[1]
    assert [int(n) for n in re.findall(r"^  (\d+) ", listed, flags=re.M)] == codes
    assert "Options:" in text


def test_every_command_declares_two_examples_and_only_exit_codes_envlock_has() -> None:
    for command in COMMANDS:
        assert len(command.examples) == 2, command.name
        assert all(f"envlock {command.name}" in line for line, _ in command.examples), command.name
        codes = [code for code, _ in command.exit_codes]
        assert set(codes) <= set(ExitCode) and ExitCode.BAD_INPUT in codes and ExitCode.INTERRUPTED in codes


def test_the_exceptions_carry_the_codes_of_the_one_table() -> None:
    # envlock.errors keeps the codes as plain ints (ExitCode's enum loads only when asked for): they are ExitCode's.
    import envlock.errors as errors
    from envlock.exitcodes import ExitCode as table

    assert errors.ExitCode is table
    assert [errors.EnvlockError.exit_code, errors.UsageError.exit_code, errors.LockError.exit_code,
            errors.EnvironmentUnavailable.exit_code, errors.BuildError.exit_code] == [
        table.BAD_INPUT, table.BAD_INPUT, table.BAD_INPUT, table.UNAVAILABLE, table.BUILD]
    assert errors.EnvMismatchError.__init__.__defaults__ == (table.MISMATCH,)
    assert errors.exit_for(KeyboardInterrupt())[0] == table.INTERRUPTED
    assert errors.exit_for(OSError(5, "I/O"))[0] == table.BAD_INPUT
    with pytest.raises(AttributeError, match="no attribute 'ExitCodes'"):
        errors.ExitCodes  # noqa: B018


def test_the_overview_lists_every_command_with_its_whole_summary(cli: Cli) -> None:
    text = cli("--help").stdout
    for command in COMMANDS:
        assert re.search(rf"^  {command.name} +{re.escape(command.summary)}$", text, flags=re.M), command.name


@pytest.mark.slow
def test_the_console_script_gives_the_help_and_the_one_usage_line(tmp_path: Path) -> None:
    done = console("verify", "--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("Usage: envlock verify [OPTIONS] [LOCK]\n")
    assert "Examples:" in done.stdout and "Exit codes:" in done.stdout
    done = console("verify", "--fsat", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "envlock: error: no such option: --fsat; did you mean --fast? (see envlock verify --help)\n"


# --- usage errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "line"), [
    (["verify", "--fsat"], "no such option: --fsat; did you mean --fast? (see envlock verify --help)"),
    (["capture", "--no-numeric"], "no such option: --no-numeric; did you mean --no-numerics? "
     "(see envlock capture --help)"),
    (["show", "--fsat", LOCK], "no such option: --fsat (see envlock show --help)"),
    (["verify", "--timeout"], "--timeout needs a value: --timeout SECONDS (see envlock verify --help)"),
    (["run", "--lock"], "--lock needs a value: --lock LOCK (see envlock run --help)"),
    (["verify", "--distributed", "--timeout", "abc"], "--timeout 'abc': not a number (see envlock verify --help)"),
    (["verify", "--fast=yes"], "--fast takes no value (see envlock verify --help)"),
    (["verify", LOCK, "other.lock"], "unexpected argument 'other.lock' (see envlock verify --help)"),
    (["diff", LOCK], "missing LOCK_B: the lock compared with it (see envlock diff --help)"),
    (["run", "--fast"], "missing CMD...: the job to start, after `--` (see envlock run --help)"),
    (["verfy", "--fast"], "no such command: verfy; did you mean verify? (see envlock --help)"),
    (["--verbose"], "no such option: --verbose; did you mean --version? (see envlock --help)"),
])
def test_a_usage_error_is_one_line_and_exit_2_on_both_paths(cli: Cli, capsys: pytest.CaptureFixture[str],
                                                              args: list[str], line: str) -> None:
    assert one_usage_line(cli, capsys, *args) == f"envlock: error: {line}"


def test_asking_for_help_as_well_does_not_change_the_line(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli("verify", "--fsat", "--help")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == one_usage_line(cli, capsys, "verify", "--fsat") + "\n"


def test_the_job_start_parsers_still_read_what_they_read(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    for code, out, err in both(cli, capsys, "verify", LOCK, "--facts", FACTS, "--ignore", "cpu.*", "-q"):
        assert code == 0 and out == "" and err == "", (out, err)


# --- options that would do nothing --------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "line"), [
    (["verify", LOCK, "--timeout", "5"], "--timeout does nothing without --distributed"),
    (["verify", LOCK, "--strict", "--distributed"], "--strict and --distributed cannot be used together"),
    (["verify", LOCK, "--deep", "--facts", FACTS], "--deep and --facts cannot be used together"),
    (["capture", "--add-target", "--force", "-o", "WORK"], "--add-target and --force cannot be used together"),
    (["build", LOCK, "--context", "WORK", "--no-cache"], "--no-cache and --context cannot be used together"),
])
def test_an_option_that_would_do_nothing_is_refused(cli: Cli, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    args: list[str], line: str) -> None:
    args = [str(tmp_path / "out") if a == "WORK" else a for a in args]
    said = one_usage_line(cli, capsys, *args)
    assert said.startswith(f"envlock: error: {line}") and said.endswith(f"(see envlock {args[0]} --help)")
    assert not (tmp_path / "out").exists()


def test_timeout_is_taken_with_distributed_and_converted_once() -> None:
    values = {p.name: p.default for p in BY_NAME["verify"].params} | {"distributed": True, "timeout": "2.5"}
    assert settle("verify", values)["timeout"] == 2.5
    assert settle("verify", settle("verify", values))["timeout"] == 2.5


def test_every_refusal_names_a_declared_option() -> None:
    for command in COMMANDS:
        names = {p.name for p in command.params}
        for param in command.params:
            assert set(param.requires.split("|")) - {""} <= names and {n for n, _ in param.excludes} <= names, \
                param.name
            assert param.kind in ("flag", "one", "repeatable") or not (param.requires or param.excludes)


# --- --json failures ----------------------------------------------------------------------------------------------


def _json_failure(seen: list[tuple[int, str, str]], code: int, kind: str) -> str:
    for exit_code, out, err in seen:
        assert exit_code == code, (out, err)
        assert len(err.splitlines()) == 1 and err.startswith("envlock: error: ")
        message = err.strip().removeprefix("envlock: error: ")
        assert json.loads(out) == {"ok": False, "error": {"code": code, "kind": kind, "message": message}}
    return seen[0][2]


@pytest.mark.parametrize(("args", "kind", "says"), [
    (["verify", "--json", "--fsat"], "usage", "--fsat"),
    (["verify", "--json", LOCK, "-q"], "usage", "--quiet and --json"),
    (["verify", "--json", LOCK, "--facts", FACTS, "--ignore", "no such"], "usage", "--ignore 'no such'"),
    (["verify", "--json", "WORK/none.lock", "--facts", FACTS], "lock", "none.lock"),
    (["verify", "--json", LOCK, "--facts", "WORK/bad.json"], "facts", "bad.json"),
    # --format json asks for machine output as --json does, whichever check refused the line.
    (["verify", "--format", "json", "--fsat"], "usage", "--fsat"),
    (["verify", "--format", "json", LOCK, "--timeout", "abc"], "usage", "--timeout"),
    (["verify", "--format=json", "WORK/none.lock", "--facts", FACTS], "lock", "none.lock"),
    (["diff", LOCK, "WORK/none.lock", "--json"], "lock", "none.lock"),
    (["diff", LOCK, "--json"], "usage", "missing LOCK_B"),
])
def test_a_json_failure_prints_one_json_object(cli: Cli, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               args: list[str], kind: str, says: str) -> None:
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    args = [a.replace("WORK", str(tmp_path)) for a in args]
    assert says in _json_failure(both(cli, capsys, *args), ExitCode.BAD_INPUT, kind)


@pytest.mark.parametrize(("raised", "code", "kind"), [
    (EnvironmentUnavailable("the GPUs cannot be examined"), ExitCode.UNAVAILABLE, "unavailable"),
    (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted"),
])
def test_a_json_failure_inside_the_body_carries_its_code_and_kind(
        cli: Cli, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, raised: BaseException,
        code: int, kind: str) -> None:
    def body(**_: Any) -> int:
        raise raised

    monkeypatch.setitem(BODIES, "verify", body)
    _json_failure(both(cli, capsys, "verify", "--json", LOCK), code, kind)


def test_without_json_a_failure_leaves_stdout_empty(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    for code, out, err in both(cli, capsys, "verify", str(ROOT / "none.lock"), "--facts", FACTS):
        assert code == 2 and out == "" and len(err.splitlines()) == 1


def test_only_the_commands_with_json_output_print_it() -> None:
    assert {c.name for c in COMMANDS if any(p.name == "as_json" for p in c.params)} == {"verify", "diff"}
    assert set(FAST) <= set(BY_NAME)

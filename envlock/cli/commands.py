"""One body per command: parsed options in, one core call, lines out, an exit code.

Both parsers (the job-start argparse path and the typer app) call these; the keywords are the names declared in
envlock.cli.options. A body raises what the core raises; envlock.cli maps it to one line and its code.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from envlock import slurm
from envlock.atomic import write_atomic
from envlock.capturing import capture as capture_lock
from envlock.cli.options import error_line
from envlock.errors import ExitCode, UsageError
from envlock.export import export_pylock, export_requirements
from envlock.facts import collect_facts, dumps_facts, load_facts, load_facts_files
from envlock.findings import Report
from envlock.launcher import detect
from envlock.lockfile import default_lock_path, load
from envlock.progress import wanted as progress_wanted
from envlock.report import (
    render_fleet,
    render_github,
    render_json,
    render_junit,
    render_markdown,
    render_rank_line,
    render_rich,
    render_text,
)
from envlock.show import render_summary
from envlock.verdicts import Memo
from envlock.verifying import VerifyOptions, examine
from envlock.verifying import diff as diff_locks

PathArg = str | Path


def say(line: str, *, err: bool = False) -> None:
    """Print one line (flushed, so progress shows while a build runs)."""
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def _report(report: Report, *, as_json: bool, quiet: bool, title: str, format: str = "text",
            output: PathArg | None = None, sides: Sequence[tuple[str, Sequence[str]]] = ()) -> None:
    """The report on stdout (or into `output`, whole or not at all) in the format asked for."""
    if as_json:
        format = "json"
    if output is not None or format not in ("text", "json"):
        if format == "json":
            text = render_json(report) + "\n"
        elif format == "junit":
            text = render_junit(report, title=title)
        elif format == "markdown":
            text = render_markdown(report, title=title)
        elif format == "html":
            from envlock.report_html import render_html  # the page's template: only when asked for

            text = render_html(report, title=title, sides=sides)
        else:
            lines = render_github(report, title=title) if format == "github" else render_text(report, title=title)
            text = "\n".join(lines) + "\n"
        if output is None:
            sys.stdout.write(text)
        else:
            write_atomic(output, text)
            say(render_text(report, title=title)[0], err=True)
        return
    if format == "json":
        say(render_json(report))
        return
    lines = render_text(report, title=title, quiet=quiet)
    if report.findings and _terminal():
        from rich.console import Console  # for a person at a terminal only: a clean verify never loads rich

        console = Console(highlight=False, soft_wrap=True)
        for text in render_rich(lines, ok=report.ok, warnings=bool(report.warnings)):
            console.print(text)
        return
    for line in lines:
        say(line)


def _terminal() -> bool:
    """Whether stdout is a terminal that wants styles (NO_COLOR and TERM=dumb say no)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def capture(*, output: PathArg, facts: Sequence[PathArg], no_torch: bool, force: bool, add_target: bool,
            no_numerics: bool, hashes: bool, quiet: bool = False) -> ExitCode:
    """`envlock capture`: write the lock; one line says what was written. Under a launcher (torchrun, srun) the
    lock records what its workers see, and only rank 0 writes it."""
    started_by = detect()
    if started_by is not None and started_by.rank > 0:
        say(f"envlock capture: rank {started_by.rank} of {started_by.label}: rank 0 writes the lock", err=True)
        return ExitCode.OK
    paths = [str(p) for p in facts]
    raw = load_facts_files(paths, use_torch=not no_torch) if paths else None
    result = capture_lock(output, facts=raw, facts_name=", ".join(paths), use_torch=not no_torch, force=force,
                          add_target=add_target, init_cuda=True, numerics=not no_numerics, hashes=hashes,
                          progress=progress_wanted(quiet=quiet))
    for warning in result.shadowed:
        say(f"envlock: warning: {warning}", err=True)
    lock = result.lock
    kept = "; kept the existing policy and comments" if result.kept_policy else ""
    targets = ", ".join(lock.targets)
    if result.target_action == "unchanged":
        say(f"{result.path}: target {result.target_name} already in the lock: unchanged, nothing written "
            f"(targets: {targets})")
        return ExitCode.OK
    if result.target_action == "added":
        taken = f"; {result.name_taken} is already in the lock with other hardware" if result.name_taken else ""
        what = f"added target {result.target_name}{taken} (targets: {targets})"
    else:
        what = f"target {targets}"
    line = f"wrote {result.path}: {len(lock.packages)} packages, {what}, {lock.lock.content_hash[:19]}{kept}"
    if started_by is not None and not paths:
        line += f"\nas {started_by.workers} see it"
    if hashes:
        hashed = sum(1 for p in lock.packages.values() if p.hashes)
        line += f"\nartifact hashes from the index for {hashed} packages"
        if result.unhashed:
            line += f"; none for {', '.join(result.unhashed)} (not on the index)"
    say(line)
    return ExitCode.OK


def facts(*, output: PathArg | None, no_torch: bool, nvidia_smi: PathArg | None, no_numerics: bool) -> ExitCode:
    """`envlock facts`: the raw facts as JSON, on stdout or into a file."""
    gathered = collect_facts(use_torch=not no_torch, init_cuda=True, numerics=not no_numerics)
    if nvidia_smi is not None:
        gathered["gpu"] = load_facts(nvidia_smi).get("gpu", gathered["gpu"])
    text = dumps_facts(gathered)
    if output is None:
        sys.stdout.write(text)
    else:
        write_atomic(output, text)
        say(f"wrote {output}")
    return ExitCode.OK


def show(*, lock: PathArg | None) -> ExitCode:
    """`envlock show`: the lock's warnings on stderr, its summary on stdout."""
    path = lock or default_lock_path()
    loaded, warnings = load(path)
    for warning in warnings:
        say(f"envlock: warning: {warning}", err=True)
    for line in render_summary(loaded, str(path)):
        say(line)
    return ExitCode.OK


def verify(*, lock: PathArg | None, fast: bool, deep: bool, as_json: bool, facts: Sequence[PathArg],
           ignore: Sequence[str], warn: Sequence[str], target: str | None, format: str = "text",
           output: PathArg | None = None, quiet: bool, strict: bool, distributed: bool, ray: bool = False,
           ray_address: str | None = None, timeout: float | None, memo: Memo | None = None) -> int:
    """`envlock verify`: the report; MISMATCH on an error-severity mismatch (with --distributed or --ray, the
    fleet's or the cluster's code). `memo`: the job-start path's verdict memo (envlock.verdicts), which a
    verify it missed on writes again, and whose facts it uses."""
    paths = [str(p) for p in facts]
    options = VerifyOptions(fast=fast, deep=deep, facts=load_facts_files(paths) if paths else None,
                            facts_name=", ".join(paths), ignore=tuple(ignore), warn=tuple(warn), target=target,
                            init_cuda=True, progress=deep and progress_wanted(quiet=quiet or as_json),
                            collected=(memo.extra_env, memo.facts) if memo is not None and memo.facts is not None
                            else None, sizing=memo.sizing if memo is not None else None)
    if distributed:
        if format not in ("text", "json") or output is not None:
            raise UsageError("--distributed prints rank 0's report as text or JSON on stdout: drop --format "
                             f"{format}{' and -o' if output is not None else ''} (see envlock verify --help)")
        return _verify_fleet(lock, options, timeout=timeout, as_json=as_json or format == "json", quiet=quiet)
    if ray:
        if format not in ("text", "json") or output is not None:
            raise UsageError("--ray prints the cluster's report as text or JSON on stdout: drop --format "
                             f"{format}{' and -o' if output is not None else ''} (see envlock verify --help)")
        return _verify_ray(lock, options, address=ray_address, timeout=timeout,
                           as_json=as_json or format == "json", quiet=quiet)
    try:
        verification = examine(lock, options)
    finally:
        if memo is not None:
            memo.release()  # its size check, when this verify did not take it over
    report = verification.report
    code = _code(report, strict=strict)
    if memo is None:
        _report(report, as_json=as_json, quiet=quiet, title="verify", format=format, output=output)
        return code
    observed = verification.observed
    memo.keep(extra_env=verification.lock.policy.extra_env, facts=observed.facts, launcher=observed.launcher,
              sized=observed.sized, modified=observed.modified, code=code,
              render=lambda: _report(report, as_json=as_json, quiet=quiet, title="verify", format=format))
    return code


def _code(report: Report, *, strict: bool) -> ExitCode:
    """MISMATCH on an error-severity finding; with --strict, on any finding."""
    return ExitCode.OK if report.ok and not (strict and report.findings) else ExitCode.MISMATCH


def _verify_fleet(lock: PathArg | None, options: VerifyOptions, *, timeout: float | None, as_json: bool,
                  quiet: bool) -> int:
    """Rank 0 prints the fleet's report; another rank one line on stderr, only when its own verify failed or no
    verdict came; every rank returns the fleet's exit code."""
    from envlock.fleet.run import verify_fleet  # the transport loads for --distributed only

    report = verify_fleet(lock, options, timeout=timeout)
    if report.rank == 0:
        if as_json:
            say(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        else:
            for line in render_fleet(report, quiet=quiet):
                say(line)
    elif not report.got_verdict or (report.me is not None and report.me.code != ExitCode.OK):
        say(render_rank_line(report), err=True)
    return int(report.exit_code)


def _verify_ray(lock: PathArg | None, options: VerifyOptions, *, address: str | None, timeout: float | None,
                as_json: bool, quiet: bool) -> int:
    """The Ray cluster's report, grouped by node like the fleet's; the cluster's exit code."""
    from envlock.ray import verify_cluster  # ray loads for --ray only

    report = verify_cluster(lock, options, address=address, timeout=timeout)
    if as_json:
        say(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for line in render_fleet(report, quiet=quiet, title="verify --ray"):
            say(line)
    return int(report.exit_code)


def diff(*, lock_a: PathArg, lock_b: PathArg, as_json: bool, format: str = "text", output: PathArg | None = None,
         strict: bool) -> ExitCode:
    """`envlock diff`: the report; MISMATCH when the locks differ in an error-severity field."""
    report = diff_locks(lock_a, lock_b)
    sides = [(str(p), render_summary(load(p)[0], str(p))) for p in (lock_a, lock_b)] if format == "html" else []
    _report(report, as_json=as_json, quiet=False, title="diff", format=format, output=output, sides=sides)
    return _code(report, strict=strict)


def export(*, lock: PathArg | None, format: str, output: PathArg | None) -> ExitCode:
    """`envlock export`: the lock's packages for an installer, on stdout or into a file; warnings on stderr."""
    path = lock or default_lock_path()
    loaded, _ = load(path)
    result = export_pylock(loaded, str(path)) if format == "pylock" else export_requirements(loaded, str(path))
    if output is None:
        sys.stdout.write(result.text)
    else:
        write_atomic(output, result.text)  # first: an output that cannot be written is the one line said
    for warning in result.warnings:
        say(f"envlock: warning: {warning}", err=True)
    if output is not None:
        count = (result.text.count("[[packages]]") if format == "pylock"
                 else sum(1 for line in result.text.splitlines() if line and line[0].isalnum()))
        say(f"wrote {output}: {count} packages", err=True)
    return ExitCode.OK


def run(*, command: list[str], lock: PathArg | None, fast: bool, quiet: bool) -> ExitCode:
    """`envlock run`: apply the lock's env vars, verify, then become the job (MISMATCH when it is not started)."""
    from envlock.runner import exec_job, find_program, prepare_job  # off `verify --fast`'s path (shutil)

    find_program(command)  # a command that cannot start is refused before the lock is verified
    job = prepare_job(Path(lock) if lock is not None else None, fast=fast)
    if job.changes and not quiet:
        say(f"envlock run: as the lock records: {', '.join(str(c) for c in job.changes)}", err=True)
    if job.report is not None and (not job.report.ok or job.report.warnings):
        for line in render_text(job.report, title="run"):
            say(line, err=True)
    if not job.start:
        say(error_line("the job was not started (set ENVLOCK_VERIFY=warn to start it anyway)"), err=True)
        return ExitCode.MISMATCH
    exec_job(command)
    return ExitCode.OK  # not reached: exec_job replaces this process or raises


def build(*, lock: PathArg | None, tag: str | None, base: str | None, context: PathArg | None,
          wheelhouse: Sequence[PathArg], allow_unpinned_base: bool, no_cache: bool, quiet: bool = False) -> ExitCode:
    """`envlock build`: build and verify the image, then tag it (MISMATCH when it does not verify)."""
    from envlock.build import build as build_image  # not on the job-start path (tarfile, zipfile, docker)

    result = build_image(
        Path(lock or default_lock_path()), tag=tag, base=base, context_dir=Path(context) if context else None,
        wheelhouses=tuple(Path(w) for w in wheelhouse), allow_unpinned_base=allow_unpinned_base, no_cache=no_cache,
        echo=lambda line: say(f"  {line}"), progress=progress_wanted(quiet=quiet),
    )
    if result.context_dir:
        say(f"wrote the build context to {result.context_dir}: {result.requirements} wheels, "
            f"context sha256:{result.context_sha256}")
        return ExitCode.OK
    say(f"built {result.image_id[:19]} (context sha256:{result.context_sha256[:16]}…)")
    say(result.verify_output.rstrip())
    if result.verify_exit != ExitCode.OK:
        say(error_line(f"envlock verify failed inside the new image (exit {result.verify_exit}); "
                       f"it was left untagged as {result.image_id[:19]}"), err=True)
        return ExitCode.MISMATCH
    say(f"tagged {result.tag}")
    return ExitCode.OK


def slurm_prolog(*, dry_run: bool) -> int:
    """`envlock slurm-prolog`: nothing when the job names no lock or the node matches; else drain the node (or
    cancel the job for a lock it cannot use) and say so on stderr, which slurmd logs."""
    outcome = slurm.decide_prolog(os.environ)
    if dry_run:
        say(slurm.describe(outcome, os.environ))
        return outcome.code
    code, lines = slurm.carry_out(outcome, os.environ)
    for line in lines:
        say(line, err=True)
    return code


#: The body of each command declared in envlock.cli.options, by name.
BODIES: dict[str, Callable[..., int]] = {
    "capture": capture, "facts": facts, "show": show, "verify": verify, "diff": diff, "export": export, "run": run,
    "build": build, "slurm-prolog": slurm_prolog,
}

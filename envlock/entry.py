"""The console entry point. `envlock verify` runs at the start of every job on every rank and `envlock capture`
competes with torch's collect_env, so both are parsed here with argparse and never pay for importing typer (and
the pydantic it brings, about 90 ms); every other command, and `--help`, goes to the typer app in cli.py."""

from __future__ import annotations

import argparse
import errno
import io
import os
import sys
from typing import Any


def verify_parser() -> argparse.ArgumentParser:
    """The argument parser of `envlock verify` (kept in step with cli.verify by a test)."""
    parser = argparse.ArgumentParser(prog="envlock verify", description="Check this machine against the lock.")
    parser.add_argument("lock", nargs="?", default=None)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--deep", action="store_true")
    parser.add_argument("--json", dest="as_json", action="store_true")
    parser.add_argument("--facts", action="append", default=[])
    parser.add_argument("--ignore", action="append", default=[])
    parser.add_argument("--warn", action="append", default=[])
    parser.add_argument("--target", default=None)
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    return parser


def capture_parser() -> argparse.ArgumentParser:
    """The argument parser of `envlock capture` (kept in step with cli.capture by a test)."""
    parser = argparse.ArgumentParser(prog="envlock capture", description="Capture this machine into a lock.")
    parser.add_argument("-o", "--output", default="envlock.lock")
    parser.add_argument("--facts", action="append", default=[])
    parser.add_argument("--no-torch", dest="no_torch", action="store_true")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--add-target", dest="add_target", action="store_true")
    parser.add_argument("--no-numerics", dest="no_numerics", action="store_true")
    parser.add_argument("--hashes", action="store_true")
    return parser


def run_capture(options: argparse.Namespace | Any) -> str:
    """Run capture with parsed options; the line that says what was written."""
    from envlock.capturing import capture
    from envlock.facts import load_facts_files

    paths = [str(p) for p in options.facts or []]
    raw = load_facts_files(paths, use_torch=not options.no_torch) if paths else None
    result = capture(options.output, facts=raw, facts_name=", ".join(paths), use_torch=not options.no_torch,
                     force=options.force, add_target=options.add_target, init_cuda=True,
                     numerics=not options.no_numerics, hashes=options.hashes)
    lock = result.lock
    kept = "; kept the existing policy and comments" if result.kept_policy else ""
    targets = ", ".join(lock.targets)
    what = f"added target {result.added_target} (targets: {targets})" if result.added_target else f"target {targets}"
    line = f"wrote {result.path}: {len(lock.packages)} packages, {what}, {lock.lock.content_hash[:19]}{kept}"
    if options.hashes:
        hashed = sum(1 for p in lock.packages.values() if p.hashes)
        line += f"\nartifact hashes from the index for {hashed} packages"
        if result.unhashed:
            line += f"; none for {', '.join(result.unhashed)} (not on the index)"
    return line


def emit_report(report: Any, *, as_json: bool, quiet: bool, title: str = "verify") -> None:
    """Print a report the way verify does: JSON alone on stdout, or the table."""
    from envlock.report import render_json, render_text

    if as_json:
        print(render_json(report))
    else:
        for line in render_text(report, title=title, quiet=quiet):
            print(line)


def run_verify(options: argparse.Namespace | Any) -> int:
    """Run verify with parsed options; the exit code: 0 match, 1 mismatch (errors raise)."""
    from envlock.facts import load_facts_files
    from envlock.verifying import verify

    paths = [str(p) for p in options.facts or []]
    facts = load_facts_files(paths) if paths else None
    if getattr(options, "distributed", False):
        return run_fleet_verify(options, facts, paths)
    report = verify(options.lock, fast=options.fast, deep=options.deep, facts=facts, facts_name=", ".join(paths),
                    ignore=options.ignore, warn=options.warn, target=options.target, init_cuda=True)
    emit_report(report, as_json=options.as_json, quiet=options.quiet)
    return 0 if report.ok else 1


def run_fleet_verify(options: argparse.Namespace | Any, facts: Any, paths: list[str]) -> int:
    """`verify --distributed`: rank 0 prints the fleet's report; another rank prints one line to stderr, only when
    its own verify failed or no verdict came; every rank returns the fleet's exit code."""
    from envlock.fleet import verify_fleet
    from envlock.report import render_fleet, render_rank_line
    from envlock.verifying import VerifyOptions

    report = verify_fleet(options.lock, VerifyOptions(
        fast=options.fast, deep=options.deep, facts=facts, facts_name=", ".join(paths), ignore=tuple(options.ignore),
        warn=tuple(options.warn), target=options.target, init_cuda=True), timeout=options.timeout)
    if report.rank == 0:
        if options.as_json:
            import json

            print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        else:
            for line in render_fleet(report, quiet=options.quiet):
                print(line)
    elif not report.got_verdict or (report.me is not None and report.me.code != 0):
        print(render_rank_line(report), file=sys.stderr)
    return report.exit_code


def _fast(command: str, rest: list[str]) -> int:
    from envlock.errors import EnvlockError

    try:
        if command == "verify":
            return run_verify(verify_parser().parse_args(rest))
        print(run_capture(capture_parser().parse_args(rest)))
        return 0
    except EnvlockError as exc:
        print(f"envlock: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("envlock: error: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> None:
    """`envlock ...`: the fast paths for verify and capture, typer for the rest (and for --help)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["verify"], ["capture"]) and not {"-h", "--help"} & set(args):
        sys.exit(_fast(args[0], args[1:]))
    from envlock.cli import app

    app(args=args, prog_name="envlock")


def console() -> None:
    """The `envlock` console script: main(), with output that cannot fail a verdict, and a quick exit.

    A terminal that cannot show "→" gets a replacement character rather than a traceback; a closed or full stdout
    is one line on stderr and exit 2. Tearing down an interpreter that imported torch takes about 0.4 s; when a
    command has finished, everything it wrote is flushed and closed, so the process leaves at once (embedders
    calling main() still get SystemExit).
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
    try:
        main()
        code: int = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else _say(str(exc.code), 1))
    except OSError as exc:
        if not isinstance(exc, BrokenPipeError) and exc.errno not in (errno.ENOSPC, errno.EIO, errno.EBADF):
            raise
        code = _say(f"envlock: error: cannot write the output: {exc.strerror or exc}", 2)
    _leave(code)


def _say(message: str, code: int) -> int:
    if sys.stderr is not None:
        try:
            print(message, file=sys.stderr)
        except OSError:
            pass
    return code


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    if "torch" in sys.modules or sys.stdout is None or sys.stdout.closed:
        os._exit(code)
    try:
        sys.exit(code)
    finally:
        # A stdout that failed must not fail again at interpreter shutdown.
        if isinstance(sys.stdout, io.TextIOBase) and not sys.stdout.closed:
            try:
                sys.stdout.flush()
            except OSError:
                sys.stdout = None

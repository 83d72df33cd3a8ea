"""The console entry point. `envlock verify` runs at the start of every job on every rank, so it is parsed
here with argparse and never pays for importing typer; every other command goes to the typer app in cli.py."""

from __future__ import annotations

import argparse
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
    from envlock.fleet import render_fleet, render_rank_line, verify_fleet

    report = verify_fleet(options.lock, timeout=options.timeout, fast=options.fast, deep=options.deep, facts=facts,
                          facts_name=", ".join(paths), ignore=options.ignore, warn=options.warn,
                          target=options.target, init_cuda=True)
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


def main(argv: list[str] | None = None) -> None:
    """`envlock ...`: the fast path for verify, typer for the rest."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["verify"] and not {"-h", "--help"} & set(args):
        from envlock.errors import EnvlockError

        options = verify_parser().parse_args(args[1:])
        try:
            code = run_verify(options)
        except EnvlockError as exc:
            print(f"envlock: error: {exc}", file=sys.stderr)
            code = exc.exit_code
        except KeyboardInterrupt:
            print("envlock: error: interrupted", file=sys.stderr)
            code = 130
        sys.exit(code)
    from envlock.cli import app

    app(args=args, prog_name="envlock")

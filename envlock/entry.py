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
    report = verify(options.lock, fast=options.fast, deep=options.deep, facts=facts, facts_name=", ".join(paths),
                    ignore=options.ignore, warn=options.warn, target=options.target, init_cuda=True)
    emit_report(report, as_json=options.as_json, quiet=options.quiet)
    return 0 if report.ok else 1


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

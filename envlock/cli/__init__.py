"""The command line: the `envlock` console script, and the one place exceptions become a line and an exit code.

`envlock verify` runs at the start of every job on every rank and `envlock capture` competes with torch's
collect_env, so both are parsed with argparse and never pay for importing typer (and the click and rich it brings);
every other command, and `--help`, goes to the typer app. Both parsers are generated from envlock.cli.options and
call the same bodies in envlock.cli.commands; whichever met a usage error, it is the same one line and exit 2.
With `--json` (verify, diff) or `--format json` (verify), a failure also prints one JSON object on stdout:
`{"ok": false, "error": {"code": 2, "kind": "usage", "message": "envlock: error: ..."}}`.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from envlock.cli.options import FAST, error_line, parse_fast, settle, wants_json
from envlock.errors import (
    BuildError,
    EnvironmentUnavailable,
    EnvlockError,
    EnvMismatchError,
    ExitCode,
    FactsError,
    LockError,
    UsageError,
    exit_for,
)
from envlock.verdicts import Memo

if TYPE_CHECKING:
    import typer

__all__ = ["app", "console", "get_app", "invoke", "main"]

_app: typer.Typer | None = None


#: The `kind` of a failure in --json output, by the exception that ended the command (the first that matches).
KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (UsageError, "usage"), (FactsError, "facts"), (LockError, "lock"), (EnvironmentUnavailable, "unavailable"),
    (BuildError, "build"), (EnvMismatchError, "mismatch"), (EnvlockError, "input"),
    (KeyboardInterrupt, "interrupted"), (OSError, "output"),
)


def invoke(name: str, values: dict[str, Any], **extra: Any) -> int:
    """Run the body of command `name` (with `extra` keywords that are no option); its exit code, or the one line
    and code of what it raised."""
    try:
        from envlock.cli.commands import BODIES  # the bodies' imports: not for a verify its memo answers

        return int(BODIES[name](**settle(name, values), **extra))
    except (EnvlockError, KeyboardInterrupt) as exc:
        return _fail(exc, as_json=bool(values.get("as_json")) or values.get("format") == "json")


def _fail(exc: BaseException, as_json: bool = False) -> int:
    """Say on stderr why the command ended (exit_for re-raises what it does not know), and with --json on stdout
    too; the exit code."""
    code, message = exit_for(exc)
    line = error_line(message)
    if as_json:
        kind = next(kind for cls, kind in KINDS if isinstance(exc, cls))
        error = {"ok": False, "error": {"code": int(code), "kind": kind, "message": message}}
        print(json.dumps(error, indent=2, ensure_ascii=False), flush=True)
    return _say(line, code)


def get_app() -> typer.Typer:
    """The typer app (built on first use: importing typer is what the job-start path avoids)."""
    global _app
    if _app is None:
        from envlock.cli.typer_app import build_app

        _app = build_app(invoke, lambda exc, as_json: _fail(exc, as_json))
    return _app


def __getattr__(name: str) -> Any:
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None, *, early: Memo | None = None) -> None:
    """`envlock ...`: the fast paths for verify and capture, typer for the rest (and for --help); exits. `early`:
    the verdict memo the console script already asked (envlock.entry)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] and args[0] in FAST and not {"-h", "--help"} & set(args):
        sys.exit(_fast(args[0], args[1:], early))
    get_app()(args=args, prog_name="envlock")


def _fast(name: str, rest: list[str], early: Memo | None = None) -> int:
    """The job-start commands: a verify --fast that sees what the last one saw answers from its memo (see
    envlock.verdicts) without loading the lock or the comparison. A memo the console script asked already (and
    that missed) is not asked again: its facts, key and size check serve the verify."""
    memo: Memo | None = None
    try:
        values = parse_fast(name, rest)
        if name == "verify":
            try:
                memo = Memo.open(settle(name, values), rest)
            except EnvlockError:
                memo = None  # options that do not settle: the body says so, as for any command
            if memo is not None and early is not None and early.replayed and (early.path, early.lock) == (
                    memo.path, memo.lock):
                memo = early
            elif early is not None:
                early.release()
            found = memo.replay() if memo is not None and memo is not early else None
            if found is not None:
                sys.stdout.write(found[0])
                sys.stdout.flush()
                return found[1]
    except (EnvlockError, KeyboardInterrupt) as exc:
        for started in (early, memo):
            if started is not None:
                started.release()  # a size check a miss left for the verify (release is idempotent)
        return _fail(exc, as_json=wants_json([name, *rest]))
    if memo is None:
        return invoke(name, values)
    try:
        return invoke(name, values, memo=memo)
    finally:
        memo.release()  # a size check the verify did not take over (after one it took, this does nothing)


def console(*, early: Memo | None = None, failed: BaseException | None = None) -> None:
    """The `envlock` console script's command line (see envlock.entry): main(), with output that cannot fail a
    verdict, and a quick exit. `early`: the verdict memo the script asked already; `failed`: what ended the script
    before it came here (a stdout that could not take the report, Ctrl-C), said as if it had happened in main().

    A terminal that cannot show "→" gets a replacement character rather than a traceback; a closed or full stdout
    is one line on stderr and exit 2. Tearing down an interpreter that imported torch takes about 0.4 s; when a
    command has finished, everything it wrote is flushed and closed, so the process leaves at once (embedders
    calling main() still get SystemExit).
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
    if isinstance(failed, KeyboardInterrupt):
        _leave(_fail(failed, as_json=wants_json(sys.argv[1:])))
    try:
        if failed is not None:
            raise failed
        main(early=early)
        code: int = ExitCode.OK
    except SystemExit as exc:
        # sys.exit("message") means status 1, as Python itself exits for it.
        code = exc.code if isinstance(exc.code, int) else (
            ExitCode.OK if exc.code is None else _say(str(exc.code), ExitCode.MISMATCH))
    except OSError as exc:
        if not isinstance(exc, BrokenPipeError) and exc.errno not in (errno.ENOSPC, errno.EIO, errno.EBADF):
            raise
        code = _fail(exc)
    _leave(code)


def _say(message: str, code: int) -> int:
    if sys.stderr is not None:
        try:
            print(message, file=sys.stderr)
        except OSError:
            pass
    return code


def _leave(code: int) -> None:
    """Flush what the command wrote and leave at once: interpreter teardown (module finalizers, torch's above all)
    is time every rank pays at job start and nothing in it is the user's. A stdout that cannot take the last of
    the output is one line on stderr and exit 2."""
    try:
        if sys.stdout is not None and not sys.stdout.closed:
            sys.stdout.flush()
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError):
            code = _fail(exc)
    try:
        if sys.stderr is not None and not sys.stderr.closed:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)

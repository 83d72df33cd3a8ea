"""The `envlock` console script (and `python -m envlock`): `envlock verify` asks its verdict memo before anything
else is imported.

A job start's `envlock verify --fast` that sees what the last one saw is answered from the memo (envlock.verdicts)
opened by the command line alone: its size check's child starts once the interpreter is up, and neither the
command line's parser nor the lock model is imported. Anything else, a miss included, goes on to envlock.cli,
which is handed the memo (its facts and key) so that nothing is read twice.
"""

from __future__ import annotations

import os
import sys

from envlock.verdicts import Memo


def console() -> None:
    """`envlock ...`: see the module's doc; exits."""
    early: Memo | None = None
    args = sys.argv[1:]
    if args[:1] == ["verify"] and not {"-h", "--help"} & set(args):
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors="replace")  # as envlock.cli.console: a report never fails on its own bytes
        try:
            early = Memo.early(args[1:])
            found = early.replay() if early is not None else None
            if found is not None:
                sys.stdout.write(found[0])
                sys.stdout.flush()
                _leave(found[1])
        except (OSError, KeyboardInterrupt) as exc:  # said as the command line says it
            _fail(exc, early)
    try:
        from envlock.cli import console as full
    except KeyboardInterrupt as exc:
        _fail(exc, early)
    full(early=early)


def _fail(exc: BaseException, early: Memo | None) -> None:
    """Stop the memo's size check and end as envlock.cli ends for `exc`."""
    if early is not None:
        early.release()
    from envlock.cli import console as full

    full(failed=exc)


def _leave(code: int) -> None:
    """Leave at once, as envlock.cli does after a command (the report is flushed)."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)

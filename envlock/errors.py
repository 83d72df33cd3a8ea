"""Every exception envlock raises, and the exit codes they map to (`ExitCode`, the one table of them).

The core raises; it never prints and never exits. `envlock.cli` has the one handler that turns an exception into
one line on stderr and its code (`exit_for`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing and re are not imported here: the collectors of a job start load this module
if TYPE_CHECKING:
    import re

    from envlock.exitcodes import ExitCode as ExitCode
    from envlock.findings import Report

#: The codes the exceptions here carry, as plain ints: ExitCode's (tests/test_help.py checks they are the same).
#: ExitCode itself is an IntEnum in envlock.exitcodes, loaded when first asked for (`from envlock.errors import
#: ExitCode`): enum and what it imports would be a tenth of a job start's `verify --fast`.
_MISMATCH, _BAD_INPUT, _UNAVAILABLE, _BUILD, _INTERRUPTED = 1, 2, 3, 4, 130


def __getattr__(name: str) -> object:
    """`ExitCode`, imported on first use (see above)."""
    if name == "ExitCode":
        from envlock.exitcodes import ExitCode

        return ExitCode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: What must never reach a terminal raw from a user's path or value: C0/C1 controls (a newline splits the one
#: error line, an escape sequence restyles the terminal), line and paragraph separators, bidirectional overrides,
#: and lone surrogates (undecodable bytes of a path or variable; no stream can encode them).
UNPRINTABLE = r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
_UNPRINTABLE: re.Pattern[str] | None = None


def printable(text: str) -> str:
    """`text` on one line: each control character, separator, bidi override and lone surrogate as its Python
    escape (`\\n`, `\\x1b`, `\\u202e`, `\\udcff`)."""
    global _UNPRINTABLE
    if _UNPRINTABLE is None:
        import re

        _UNPRINTABLE = re.compile(UNPRINTABLE)
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


class ModelError(ValueError):
    """Plain data that does not fit the model (envlock.dataform, the collectors' parse_* functions); `where` is the
    dotted place."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class EnvlockError(Exception):
    """Base class: a problem envlock can explain in one line."""

    exit_code: int = _BAD_INPUT


class UsageError(EnvlockError):
    """The user asked for something that cannot be done as asked."""


class LockError(EnvlockError):
    """A lock file is missing, unreadable or invalid; `where` is a dotted place inside it."""

    def __init__(self, file: str, message: str, where: str = "") -> None:
        self.file = file
        self.where = where
        self.message = message
        place = f"{printable(file)}: {printable(where)}: " if where else f"{printable(file)}: "
        super().__init__(place + message)


class FactsError(LockError):
    """A facts dump (`envlock facts` output) is unreadable or malformed."""


class EnvironmentUnavailable(EnvlockError):
    """The environment cannot be examined (a driver that will not load, a daemon that is down)."""

    exit_code = _UNAVAILABLE


class BuildError(EnvlockError):
    """A step of the image build failed (a wheel that cannot be found or checked, the engine's build)."""

    exit_code = _BUILD


class EnvMismatchError(EnvlockError):
    """Raised by `envlock.check()` when the environment does not match the lock; carries the report.

    `exit_code` is the mismatch code, or the fleet's verdict for a distributed check (a rank that could not be
    examined makes the whole fleet exit 3).
    """

    def __init__(self, report: Report, exit_code: int = _MISMATCH) -> None:
        self.report = report
        self.exit_code = exit_code
        errors = report.errors
        listed = "; ".join(f"{f.path}: expected {f.expected}, found {f.actual}" for f in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"environment does not match {report.lock}: {listed}{more}")


def exit_for(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an exception that ends a command (whatever paths or values the
    message names, it is one printable line: see `printable`)."""
    if isinstance(exc, KeyboardInterrupt):
        return _INTERRUPTED, "interrupted"
    if isinstance(exc, EnvlockError):
        return int(exc.exit_code), printable(str(exc))
    if isinstance(exc, OSError):  # only output that cannot be written reaches here (see envlock.cli.console)
        return _BAD_INPUT, printable(f"cannot write the output: {exc.strerror or exc}")
    raise exc

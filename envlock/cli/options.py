"""Every command's arguments, options, examples and exit codes, declared once; the job-start argparse parsers are
generated here, the typer app (and its help) from the same declaration in envlock.cli.typer_app.

Usage errors are decided here too, whichever parser met them: `check_usage` reads a command line with the parser
generated from the declaration, `settle` converts values and refuses options that do nothing together, and every
message is one line naming the fix. Pure data and stdlib: importing it is cheap.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from envlock.errors import ExitCode, UsageError

#: flag: --x (bool); one: --x VALUE; repeatable: --x VALUE, any number of times (a list);
#: positional: one optional (or required) argument; variadic: the rest of the command line (a list).
Kind = Literal["flag", "one", "repeatable", "positional", "variadic"]

REQUIRED: Any = ...
LOCK_HELP = "The lock to read (default $ENVLOCK_LOCK when set, else ./envlock.lock)."
HELP_FLAGS = ("-h", "--help")
#: The report formats of verify and diff.
FORMATS = ("text", "json", "github", "junit", "markdown", "html")
FORMAT_HELP = ("How to print the report: text, json (the same as --json), github (workflow annotations, one per "
               "cause), junit (JUnit XML, one test case per section), markdown (a table by cause, for a pull "
               "request) or html (one self-contained page).")
ROOT_FLAGS = ("--version", *HELP_FLAGS)


@dataclass(frozen=True)
class Param:
    """One argument or option: `name` is the body's keyword, `flags` what a user types (none for positionals).

    `requires` names the option without which this one does nothing (refused alone; `a|b`: without either of
    them); `excludes` pairs another option's name with why the two cannot be given together.
    """

    name: str
    kind: Kind
    help: str
    flags: tuple[str, ...] = ()
    type: type = str
    default: Any = None
    metavar: str | None = None
    requires: str = ""
    excludes: tuple[tuple[str, str], ...] = ()
    choices: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        """How a message names it: its long flag, or its metavar for an argument."""
        if self.flags:
            return max(self.flags, key=len)
        return self.metavar or self.name.upper()


@dataclass(frozen=True)
class Command:
    """One command: its name, its help (a one-line summary first), its parameters in the order help lists them,
    two examples (command line, what it does) and the exit codes it can give (code, what it means)."""

    name: str
    help: str
    params: tuple[Param, ...]
    examples: tuple[tuple[str, str], ...] = ()
    exit_codes: tuple[tuple[int, str], ...] = ()
    interspersed: bool = True  # False: options after the first positional belong to it (`run -- CMD --x`)

    @property
    def summary(self) -> str:
        """The one-line summary (the help's first line)."""
        return self.help.split("\n", 1)[0]

    def param(self, name: str) -> Param:
        """The parameter whose body keyword is `name`."""
        return next(p for p in self.params if p.name == name)

    def flagged(self, text: str) -> Param | None:
        """The option a user typed as `text` (`--timeout`), if the command has it."""
        return next((p for p in self.params if text in p.flags), None)


def flag(name: str, *flags: str, help: str, requires: str = "", excludes: dict[str, str] | None = None) -> Param:
    """A --flag that is False unless given."""
    return Param(name, "flag", help, flags, bool, False, requires=requires, excludes=tuple((excludes or {}).items()))


def option(name: str, *flags: str, help: str, metavar: str, type: type = str, default: Any = None,
           requires: str = "", excludes: dict[str, str] | None = None, choices: tuple[str, ...] = ()) -> Param:
    """An option that takes one value (one of `choices`, when given)."""
    return Param(name, "one", help, flags, type, default, metavar, requires, tuple((excludes or {}).items()),
                 choices)


def repeatable(name: str, *flags: str, help: str, metavar: str, type: type = str) -> Param:
    """An option that may be given many times; the values in order."""
    return Param(name, "repeatable", help, flags, type, [], metavar)


def positional(name: str, *, help: str, metavar: str, type: type = str, default: Any = None) -> Param:
    """A positional argument (optional unless its default is REQUIRED)."""
    return Param(name, "positional", help, (), type, default, metavar)


def variadic(name: str, *, help: str, metavar: str) -> Param:
    """The rest of the command line."""
    return Param(name, "variadic", help, (), str, REQUIRED, metavar)


#: What each exit code means, unless a command says it more exactly (README.md lists them per command).
MEANING: dict[int, str] = {
    ExitCode.OK: "success",
    ExitCode.MISMATCH: "a mismatch of error severity",
    ExitCode.BAD_INPUT: "bad input: a usage error, or a missing, unreadable or invalid file",
    ExitCode.UNAVAILABLE: "the environment cannot be examined or used",
    ExitCode.BUILD: "an image build step failed",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exits(*codes: int, meaning: dict[int, str] | None = None) -> tuple[tuple[int, str], ...]:
    """The exit codes a command can give, each with what it means there."""
    return tuple((code, (meaning or {}).get(code, MEANING[code])) for code in codes)


CAPTURE = Command("capture", "Capture this machine and Python environment into a lock.", (
    option("output", "-o", "--output", type=Path, default="envlock.lock", metavar="FILE",
           help="Where to write the lock (default envlock.lock)."),
    repeatable("facts", "--facts", type=Path, metavar="FILE",
               help="Lock a recorded machine instead of this one: an `envlock facts` dump, or an `nvidia-smi -q -x` "
               "report for the GPU part. Give it again for more files."),
    flag("no_torch", "--no-torch", help="Do not import torch (its settings are not locked)."),
    flag("force", "--force", help="Overwrite an existing lock even if it cannot be read."),
    flag("add_target", "--add-target", help="Add this machine as another hardware target of the existing lock.",
         excludes={"force": "--add-target adds to the existing lock, --force replaces it"}),
    flag("no_numerics", "--no-numerics", help="Do not run the numerics probe."),
    flag("hashes", "--hashes", help="Record each package's artifact hashes and files from the package index "
         "(network)."),
    flag("quiet", "-q", "--quiet", help="Draw no progress bar (drawn only when stderr is a terminal)."),
), examples=(
    ("envlock capture", "lock this machine into ./envlock.lock"),
    ("envlock capture --add-target --facts h100.json", "add a recorded machine as one more target"),
), exit_codes=exits(0, 2, 130, meaning={0: "the lock was written"}))

FACTS = Command("facts", "Print the raw facts the collectors see, as JSON.\n\n"
                "For test fixtures, or to lock a machine you are not on (`envlock capture --facts FILE`).", (
    option("output", "-o", "--output", type=Path, metavar="FILE", help="Write to FILE instead of stdout."),
    flag("no_torch", "--no-torch", help="Do not import torch."),
    option("nvidia_smi", "--nvidia-smi", type=Path, metavar="REPORT",
           help="Take the GPU part from this `nvidia-smi -q -x` report instead of this machine."),
    flag("no_numerics", "--no-numerics", help="Do not run the numerics probe."),
), examples=(
    ("envlock facts -o node7.json", "record this machine, to lock it elsewhere"),
    ("envlock facts --nvidia-smi gpu.xml", "take the GPUs from a saved nvidia-smi report"),
), exit_codes=exits(0, 2, 130, meaning={0: "the facts were printed or written"}))

SHOW = Command("show", "Check a lock and print a readable summary of it.", (
    positional("lock", type=Path, metavar="LOCK", help=LOCK_HELP),
), examples=(
    ("envlock show", "summarise ./envlock.lock"),
    ("envlock show old/envlock.lock", "summarise another lock"),
), exit_codes=exits(0, 2, 130, meaning={0: "the lock is valid", 2: "a usage error, or a missing or invalid lock"}))

VERIFY = Command("verify", "Check this machine and process against the lock.", (
    positional("lock", type=Path, metavar="LOCK", help=LOCK_HELP),
    flag("fast", "--fast", help="Skip what needs torch or numpy imported (job-start mode)."),
    flag("deep", "--deep", help="Re-hash every installed file and name the modified ones.",
         excludes={"facts": "a recorded machine has no installed files to re-hash"}),
    flag("as_json", "--json", help="Print the report as JSON and nothing else on stdout."),
    repeatable("facts", "--facts", type=Path, metavar="FILE",
               help="Verify a recorded machine instead of this one: an `envlock facts` dump, or an nvidia-smi "
               "report. Give it again for more files."),
    repeatable("ignore", "--ignore", metavar="PATTERN",
               help="Ignore the fields matching this dotted path: * stands for one segment or part of one "
               "('cpu.*', 'floats.env.OMP_*'), a trailing ** for any depth ('gpu.**'). Give it again for more."),
    repeatable("warn", "--warn", metavar="PATTERN",
               help="Only warn for the fields matching this dotted path. Give it again for more."),
    option("target", "--target", metavar="NAME", help="Compare with this target of the lock."),
    option("format", "--format", metavar="FORMAT", default="text", help=FORMAT_HELP, choices=FORMATS,
           excludes={"as_json": "--json is --format json"}),
    option("output", "-o", "--output", type=Path, metavar="FILE",
           help="Write the report to FILE instead of stdout (written whole, or not at all)."),
    flag("quiet", "-q", "--quiet", help="Print nothing when everything matches.",
         excludes={"as_json": "--json prints the report and nothing else"}),
    flag("strict", "--strict", help="Treat warnings as errors: exit 1 when there is any finding.",
         excludes={"distributed": "the fleet's verdict follows the lock's severities",
                   "ray": "the cluster's verdict follows the lock's severities"}),
    flag("distributed", "--distributed", help="Run on every rank (torchrun, srun): the ranks compare fingerprints "
         "and rank 0 prints one report; every rank exits with the fleet's code (docs/fleet.md)."),
    flag("ray", "--ray", help="Verify every alive node of a Ray cluster (RAY_ADDRESS, else the one on this machine): "
         "one task pinned to each node, the lock sent with it; one report (docs/fleet.md).",
         excludes={"distributed": "--ray runs one verify per node itself, --distributed runs in a job's ranks",
                   "facts": "a recorded machine is not a node of the cluster"}),
    option("ray_address", "--ray-address", metavar="ADDRESS", requires="ray",
           help="The Ray cluster to verify (host:port of its head, or ray://host:port) instead of RAY_ADDRESS."),
    option("timeout", "--timeout", type=float, metavar="SECONDS", requires="distributed|ray",
           help="How long to wait for the other ranks or nodes (default $ENVLOCK_FLEET_TIMEOUT, else 60)."),
), examples=(
    ("envlock verify --fast", "check at job start, without importing torch"),
    ("torchrun --nproc-per-node 8 -m envlock verify --distributed", "check every rank of a job"),
), exit_codes=exits(0, 1, 2, 3, 130, meaning={
    0: "the machine matches the lock (warnings allowed)",
    1: "a mismatch of error severity (with --strict, any finding)",
    3: "the machine cannot be examined (NVML broken where the lock needs a GPU, no rank store, no Ray "
       "cluster, a rank or node that never answered)",
}))

DIFF = Command("diff", "Compare two locks under the first one's policy.", (
    positional("lock_a", type=Path, default=REQUIRED, metavar="LOCK_A", help="The lock taken as expected."),
    positional("lock_b", type=Path, default=REQUIRED, metavar="LOCK_B", help="The lock compared with it."),
    flag("as_json", "--json", help="Print the report as JSON and nothing else on stdout."),
    option("format", "--format", metavar="FORMAT", default="text", help=FORMAT_HELP, choices=FORMATS,
           excludes={"as_json": "--json is --format json"}),
    option("output", "-o", "--output", type=Path, metavar="FILE",
           help="Write the report to FILE instead of stdout (written whole, or not at all)."),
    flag("strict", "--strict", help="Treat warnings as errors: exit 1 when the locks differ at all."),
), examples=(
    ("envlock diff old.lock envlock.lock", "what changed since the old lock"),
    ("envlock diff a100.lock h100.lock --json", "the differences as JSON"),
), exit_codes=exits(0, 1, 2, 130, meaning={
    0: "the locks agree (warnings allowed)",
    1: "they differ in a field of error severity (with --strict, at all)",
}))

EXPORT = Command("export", "Write the lock's packages for pip or uv, with their hashes.", (
    positional("lock", type=Path, metavar="LOCK", help=LOCK_HELP),
    option("format", "--format", metavar="FORMAT", default="requirements", choices=("requirements", "pylock"),
           help="What to write: requirements (name==version lines with every artifact hash the lock holds and "
           "the markers of its Python) or pylock (a PEP 751 pylock.toml: the wheels `capture --hashes` "
           "recorded, the lock's hardware under [tool.envlock])."),
    option("output", "-o", "--output", type=Path, metavar="FILE",
           help="Write to FILE instead of stdout (written whole, or not at all)."),
), examples=(
    ("envlock export -o requirements.txt", "the locked packages for pip"),
    ("envlock export --format pylock -o pylock.toml", "a PEP 751 lock for `uv pip install -r pylock.toml`"),
), exit_codes=exits(0, 2, 130, meaning={0: "written (warnings on stderr name what was left out)"}))

RUN = Command("run", "Apply the lock's env vars, verify, then become the job.\n\n"
              "The job takes over envlock's process: its PID, signals and exit code are the job's. On a mismatch "
              "the job is not started, unless ENVLOCK_VERIFY=warn (report, then start) or off (no check).", (
    variadic("command", metavar="CMD...", help="The job to start, after `--`."),
    option("lock", "--lock", type=Path, metavar="LOCK", help=LOCK_HELP),
    flag("fast", "--fast", help="Verify without importing torch or numpy."),
    flag("quiet", "-q", "--quiet", help="Do not print the line naming the env vars set or unset for the job."),
), examples=(
    ("envlock run -- python train.py", "verify, then start the training job"),
    ("ENVLOCK_VERIFY=warn envlock run --fast -- python train.py", "report a mismatch but start the job anyway"),
), exit_codes=exits(0, 1, 2, 3, 130, meaning={
    0: "the job ran and exited 0 (any other code of the started job passes through)",
    1: "the lock does not match: the job was not started",
    3: "the machine cannot be examined: the job was not started",
}))

BUILD = Command("build", "Build and verify an image with exactly the locked packages.\n\n"
                "The image is tagged only when `envlock verify` passes inside it.", (
    positional("lock", type=Path, metavar="LOCK", help=LOCK_HELP),
    option("tag", "--tag", metavar="TAG", help="The image tag to set when the image verifies."),
    option("base", "--base", metavar="IMAGE", help="The base image: NAME@sha256:DIGEST or a local image ID."),
    option("context", "--context", type=Path, metavar="DIR", help="Write the build context to DIR; build nothing."),
    repeatable("wheelhouse", "--wheelhouse", type=Path, metavar="DIR",
               help="A folder of wheels to take first. Give it again for more folders."),
    flag("allow_unpinned_base", "--allow-unpinned-base",
         help="Accept a base given by tag alone (it can move under the lock)."),
    flag("no_cache", "--no-cache", help="Do not reuse the engine's build cache.",
         excludes={"context": "--context builds nothing"}),
    flag("quiet", "-q", "--quiet", help="Draw no progress bar (drawn only when stderr is a terminal)."),
), examples=(
    ("envlock build --base python:3.11-slim@sha256:DIGEST --tag team/train:1", "build, verify and tag the image"),
    ("envlock build --base IMAGE_ID --context ctx/", "only write the build context, to build it elsewhere"),
), exit_codes=exits(0, 1, 2, 3, 4, 130, meaning={
    0: "the image verified and was tagged (with --context, the context was written)",
    1: "the image does not verify against the lock (it is left untagged)",
    3: "the Docker Engine cannot be reached (see DOCKER_HOST)",
}))

SLURM_PROLOG = Command("slurm-prolog", "Check this node against a Slurm job's lock (as a Prolog).\n\n"
                       "Run as slurm.conf's Prolog, through a script that execs it. A job names its lock in its "
                       "comment (sbatch --comment envlock:/path/envlock.lock); without one it passes quietly. A "
                       "mismatch drains the node with the cause as the reason; a lock that cannot be used cancels "
                       "the job and leaves the node in service (docs/fleet.md).", (
    flag("dry_run", "--dry-run", help="Say what it would do (pass, drain, cancel) and do none of it."),
), examples=(
    ("envlock slurm-prolog", "as the Prolog: check the node for $SLURM_JOB_ID"),
    ("SLURM_JOB_ID=7 SLURM_JOB_COMMENT=envlock:a.lock envlock slurm-prolog --dry-run", "what it would do"),
), exit_codes=exits(0, 1, 2, 3, 130, meaning={
    0: "the node matches, the job names no lock, or the job was cancelled for its lock",
    1: "the node does not match the lock: it was drained",
    2: "not run as a Prolog (SLURM_JOB_ID is not set), or the job could not be cancelled",
    3: "the node or the job cannot be examined: it was drained",
}))

#: In the order `envlock --help` lists them.
COMMANDS: tuple[Command, ...] = (CAPTURE, FACTS, SHOW, VERIFY, DIFF, EXPORT, RUN, BUILD, SLURM_PROLOG)
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}

#: `envlock --help`: what the whole tool does, two examples, every exit code.
ROOT_HELP = ("Lock a job's whole environment (packages, CUDA, GPU, CPU, BLAS, float settings) and check it at job "
             "start.")
ROOT_EXAMPLES = (
    ("envlock capture", "write ./envlock.lock for this machine"),
    ("envlock verify --fast", "check at job start that nothing moved"),
)
ROOT_EXIT_CODES = exits(0, 1, 2, 3, 4, 130)

#: The commands parsed at job start without typer (`--help` still goes to typer).
FAST = ("verify", "capture")


# --- usage errors: one line, the same whichever parser met them ---------------------------------------------------


def error_line(message: str) -> str:
    """The one line a command prints on stderr when it fails."""
    return f"envlock: error: {message}"


def see(command: Command | None) -> str:
    """Where the user can read how to say it."""
    return f"(see envlock {command.name} --help)" if command is not None else "(see envlock --help)"


def _closest(word: str, choices: list[str]) -> str:
    import difflib  # only a mistyped command line pays for it

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def unknown_option(command: Command | None, token: str) -> UsageError:
    """`--fsat`: the error, with the closest option of the command."""
    name = token.split("=", 1)[0]
    flags = [f for p in command.params for f in p.flags] + list(HELP_FLAGS) if command else list(ROOT_FLAGS)
    return UsageError(f"no such option: {name}{_closest(name, flags)} {see(command)}")


def unknown_command(token: str) -> UsageError:
    """`envlock verfy`: the error, with the closest command."""
    return UsageError(f"no such command: {token}{_closest(token, list(BY_NAME))} {see(None)}")


def missing_argument(command: Command, param: Param) -> UsageError:
    """A required argument that was not given."""
    what = param.help.rstrip(".")
    return UsageError(f"missing {param.shown}: {what[:1].lower()}{what[1:]} {see(command)}")


def missing_value(command: Command, param: Param) -> UsageError:
    """An option given without its value."""
    return UsageError(f"{param.shown} needs a value: {param.shown} {param.metavar} {see(command)}")


def takes_no_value(command: Command, param: Param) -> UsageError:
    """A flag given a value (`--fast=1`)."""
    return UsageError(f"{param.shown} takes no value {see(command)}")


def unexpected_argument(command: Command, token: str) -> UsageError:
    """An argument the command has no place for."""
    return UsageError(f"unexpected argument {token!r} {see(command)}")


def bad_value(command: Command, param: Param, text: str) -> UsageError:
    """A value of the wrong kind (`--timeout abc`)."""
    what = "a whole number" if param.type is int else "a number"
    return UsageError(f"{param.shown} {text!r}: not {what} {see(command)}")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing a usage block and exiting."""

    def error(self, message: str) -> Any:  # only what parse_known_args reports without an ArgumentError
        raise UsageError(f"{message} (see {self.prog} --help)")


def argparse_parser(command: Command) -> argparse.ArgumentParser:
    """The job-start parser of `command`.

    Values stay strings (the core takes a path as either; `settle` converts the rest), positionals are optional
    here (`read_command_line` names a missing one) and there is no help: help is typer's.
    """
    parser = _Parser(prog=f"envlock {command.name}", add_help=False, allow_abbrev=False, exit_on_error=False)
    for param in command.params:
        if param.kind == "flag":
            parser.add_argument(*param.flags, dest=param.name, action="store_true")
        elif param.kind == "one":
            parser.add_argument(*param.flags, dest=param.name, default=param.default, metavar=param.metavar)
        elif param.kind == "repeatable":
            parser.add_argument(*param.flags, dest=param.name, action="append", default=[], metavar=param.metavar)
        elif param.kind == "positional":
            parser.add_argument(param.name, nargs="?", default=None if param.default is REQUIRED else param.default,
                                metavar=param.metavar)
        else:
            parser.add_argument(param.name, nargs=argparse.REMAINDER, metavar=param.metavar)
    return parser


def read_command_line(command: Command, argv: list[str]) -> dict[str, Any]:
    """The values of `command`'s parameters by body keyword, as strings; a UsageError for a line that does not
    parse (an unknown option first, then a missing value, an extra or a missing argument)."""
    try:
        namespace, extra = argparse_parser(command).parse_known_args(argv)
    except argparse.ArgumentError as exc:
        param = command.flagged(exc.argument_name or "")
        if param is None:
            raise UsageError(f"{exc.argument_name}: {exc.message} {see(command)}") from None
        if exc.message.startswith("expected"):
            raise missing_value(command, param) from None
        if exc.message.startswith("ignored explicit argument"):
            raise takes_no_value(command, param) from None
        raise UsageError(f"{param.shown}: {exc.message} {see(command)}") from None
    for token in extra:
        if token.startswith("-") and token != "-":
            raise unknown_option(command, token)
    if extra:
        raise unexpected_argument(command, extra[0])
    values = vars(namespace)
    for param in command.params:
        if param.kind == "variadic" and values[param.name][:1] == ["--"]:
            values[param.name] = values[param.name][1:]
        if param.default is REQUIRED and values[param.name] in (None, []):
            raise missing_argument(command, param)
    return values


def check_usage(argv: list[str]) -> None:
    """Raise the UsageError of a whole `envlock ...` line that does not parse (help asked for is always fine)."""
    if set(HELP_FLAGS) & set(argv):
        return
    for at, token in enumerate(argv):
        if token.startswith("-"):
            if token not in ROOT_FLAGS:
                raise unknown_option(None, token)
            continue
        if token not in BY_NAME:
            raise unknown_command(token)
        read_command_line(BY_NAME[token], argv[at + 1:])
        return


def _given(param: Param, value: Any) -> bool:
    return value not in (None, False, [], ()) and value != param.default


def settle(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The values a body takes: typed as declared, with options that do nothing together refused (UsageError)."""
    command = BY_NAME[name]
    settled = dict(values)
    for param in command.params:
        value = settled.get(param.name)
        if param.type not in (str, Path) and isinstance(value, str):
            try:
                settled[param.name] = param.type(value)
            except ValueError:
                raise bad_value(command, param, value) from None
    for param in command.params:
        if param.choices and settled.get(param.name) not in (*param.choices, None):
            raise UsageError(f"{param.shown} {settled[param.name]!r}: expected one of {', '.join(param.choices)} "
                             f"{see(command)}")
        if not _given(param, settled.get(param.name)):
            continue
        needed = [command.param(n) for n in param.requires.split("|") if n]  # `a|b`: either one will do
        if needed and not any(_given(other, settled.get(other.name)) for other in needed):
            raise UsageError(f"{param.shown} does nothing without {' or '.join(o.shown for o in needed)} "
                             f"{see(command)}")
        for name_, why in param.excludes:
            other = command.param(name_)
            if _given(other, settled.get(name_)):
                raise UsageError(f"{param.shown} and {other.shown} cannot be used together: {why} {see(command)}")
    return settled


def parse_fast(name: str, argv: list[str]) -> dict[str, Any]:
    """The options of a job-start command, by body keyword (a UsageError for a line that does not parse)."""
    return read_command_line(BY_NAME[name], argv)


def wants_json(argv: list[str]) -> bool:
    """Whether an `envlock ...` line asks for machine output (--json of a command that has it, before any `--`)."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    command = next((BY_NAME.get(w) for w in words if not w.startswith("-")), None)
    if command is None or not any(p.name == "as_json" for p in command.params):
        return False
    pairs = zip(words, [*words[1:], ""], strict=True)
    return "--json" in words or "--format=json" in words or any(a == "--format" and b == "json" for a, b in pairs)

"""Every command's arguments and options, declared once; the job-start argparse parsers are generated here, the
typer app from the same declaration in envlock.cli.typer_app. Pure data and stdlib: importing it is cheap."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

#: flag: --x (bool); one: --x VALUE; repeatable: --x VALUE, any number of times (a list);
#: positional: one optional (or required) argument; variadic: the rest of the command line (a list).
Kind = Literal["flag", "one", "repeatable", "positional", "variadic"]

REQUIRED: Any = ...
LOCK_HELP = "The lock (default ./envlock.lock, then $ENVLOCK_LOCK)."


@dataclass(frozen=True)
class Param:
    """One argument or option: `name` is the body's keyword, `flags` what a user types (none for positionals)."""

    name: str
    kind: Kind
    help: str
    flags: tuple[str, ...] = ()
    type: type = str
    default: Any = None
    metavar: str | None = None


@dataclass(frozen=True)
class Command:
    """One command: its name, its help (typer's), its parameters in the order help lists them."""

    name: str
    help: str
    params: tuple[Param, ...]
    description: str = ""  # the job-start parser's one line
    interspersed: bool = True  # False: options after the first positional belong to it (`run -- CMD --x`)


def flag(name: str, *flags: str, help: str) -> Param:
    """A --flag that is False unless given."""
    return Param(name, "flag", help, flags, bool, False)


def option(name: str, *flags: str, help: str, type: type = str, default: Any = None,
           metavar: str | None = None) -> Param:
    """An option that takes one value."""
    return Param(name, "one", help, flags, type, default, metavar)


def repeatable(name: str, *flags: str, help: str, type: type = str) -> Param:
    """An option that may be given many times; the values in order."""
    return Param(name, "repeatable", help, flags, type, [])


def positional(name: str, *, help: str, type: type = str, default: Any = None) -> Param:
    """A positional argument (optional unless its default is REQUIRED)."""
    return Param(name, "positional", help, (), type, default)


def variadic(name: str, *, help: str) -> Param:
    """The rest of the command line."""
    return Param(name, "variadic", help, (), str, REQUIRED)


CAPTURE = Command("capture", "Capture this machine and Python environment into a lock file.", (
    option("output", "-o", "--output", type=Path, default="envlock.lock", help="Where to write the lock."),
    repeatable("facts", "--facts", type=Path, help="Build the lock from an `envlock facts` dump (or an "
               "`nvidia-smi -q -x` report for the GPU part) instead of this machine; repeatable."),
    flag("no_torch", "--no-torch", help="Do not import torch (its settings are not locked)."),
    flag("force", "--force", help="Overwrite an existing lock even if it cannot be read."),
    flag("add_target", "--add-target", help="Add this machine as another hardware target of the existing lock."),
    flag("no_numerics", "--no-numerics", help="Do not run the numerics probe."),
    flag("hashes", "--hashes", help="Record each package's artifact hashes from the index (pip-tools; network)."),
), description="Capture this machine into a lock.")

FACTS = Command("facts", "Print the raw facts the collectors see, as JSON (for fixtures, or to lock a machine you "
                "are not on).", (
    option("output", "-o", "--output", type=Path, help="Write to FILE instead of stdout."),
    flag("no_torch", "--no-torch", help="Do not import torch."),
    option("nvidia_smi", "--nvidia-smi", type=Path,
           help="Take the GPU part from this `nvidia-smi -q -x` report instead of this machine."),
    flag("no_numerics", "--no-numerics", help="Do not run the numerics probe."),
))

SHOW = Command("show", "Check a lock and print a readable summary of it.", (
    positional("lock", type=Path, help=LOCK_HELP),
))

VERIFY = Command("verify", "Check this machine and process against the lock; exit 1 on an error-severity mismatch.", (
    positional("lock", type=Path, help=LOCK_HELP),
    flag("fast", "--fast", help="Skip what needs torch or numpy imported (job-start mode)."),
    flag("deep", "--deep", help="Re-hash every installed file and name the modified ones."),
    flag("as_json", "--json", help="Print the report as JSON and nothing else on stdout."),
    repeatable("facts", "--facts", type=Path,
               help="Verify a recorded machine (`envlock facts` dump, or an nvidia-smi report); repeatable."),
    repeatable("ignore", "--ignore", help="Ignore this dotted path (pattern); repeatable."),
    repeatable("warn", "--warn", help="Only warn for this dotted path (pattern); repeatable."),
    option("target", "--target", help="Compare with this target of the lock."),
    flag("quiet", "-q", "--quiet", help="Print nothing when everything matches."),
    flag("strict", "--strict", help="Treat warnings as errors: exit 1 when there is any finding."),
    flag("distributed", "--distributed", help="Run on every rank (torchrun, srun): the ranks compare fingerprints "
         "and rank 0 prints one report; every rank exits with the fleet's code (docs/fleet.md)."),
    option("timeout", "--timeout", type=float, metavar="SECONDS", help="With --distributed: the bound on waiting "
           "for the other ranks (default $ENVLOCK_FLEET_TIMEOUT, else 60)."),
), description="Check this machine against the lock.")

DIFF = Command("diff", "Compare two locks; exit 1 when they differ in an error-severity field under A's policy.", (
    positional("lock_a", type=Path, default=REQUIRED, help="The lock taken as expected."),
    positional("lock_b", type=Path, default=REQUIRED, help="The lock compared with it."),
    flag("as_json", "--json", help="Print the report as JSON."),
    flag("strict", "--strict", help="Treat warnings as errors: exit 1 when the locks differ at all."),
))

RUN = Command("run", "Apply the lock's numerics env vars, verify, then replace this process with the job.\n\n"
              "On a mismatch the job is not started, unless ENVLOCK_VERIFY=warn (report, then start) or off (no "
              "check).", (
    variadic("command", help="The job to start, after `--`."),
    option("lock", "--lock", type=Path, help=LOCK_HELP),
    flag("fast", "--fast", help="Verify without importing torch or numpy."),
    flag("quiet", "-q", "--quiet", help="Do not print the line naming the env vars set or unset for the job."),
), interspersed=False)

BUILD = Command("build", "Build a container image with exactly the locked packages, then verify the image against "
                "the lock.", (
    positional("lock", type=Path, help=LOCK_HELP),
    option("tag", "--tag", help="The image tag to set when the image verifies."),
    option("base", "--base", help="Base image: name@sha256:DIGEST or a local image ID."),
    option("context", "--context", type=Path, help="Write the build context to DIR; build nothing."),
    repeatable("wheelhouse", "--wheelhouse", type=Path, help="A folder of wheels to take first; repeatable."),
    flag("allow_unpinned_base", "--allow-unpinned-base",
         help="Accept a base given by tag alone (it can move under the lock)."),
    flag("no_cache", "--no-cache", help="Do not reuse the engine's build cache."),
))

#: In the order `envlock --help` lists them.
COMMANDS: tuple[Command, ...] = (CAPTURE, FACTS, SHOW, VERIFY, DIFF, RUN, BUILD)
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}

#: The commands parsed at job start without typer (`--help` still goes to typer).
FAST = ("verify", "capture")


def argparse_parser(command: Command) -> argparse.ArgumentParser:
    """The job-start parser of `command`.

    Paths stay strings (the core takes either) and options carry no help text: help is typer's.
    """
    parser = argparse.ArgumentParser(prog=f"envlock {command.name}", description=command.description or None)
    for param in command.params:
        convert: Callable[[str], Any] = str if param.type in (str, Path) else param.type
        if param.kind == "flag":
            parser.add_argument(*param.flags, dest=param.name, action="store_true")
        elif param.kind == "one":
            parser.add_argument(*param.flags, dest=param.name, type=convert, default=param.default,
                                metavar=param.metavar)
        elif param.kind == "repeatable":
            parser.add_argument(*param.flags, dest=param.name, type=convert, action="append", default=[],
                                metavar=param.metavar)
        elif param.kind == "positional":
            required = param.default is REQUIRED
            parser.add_argument(param.name, type=convert, nargs=None if required else "?",
                                default=None if required else param.default)
        else:
            parser.add_argument(param.name, nargs=argparse.REMAINDER)
    return parser


def parse_fast(name: str, argv: list[str]) -> dict[str, Any]:
    """The options of a job-start command, by body keyword (argparse exits 2 on a usage error)."""
    return vars(argparse_parser(BY_NAME[name]).parse_args(argv))

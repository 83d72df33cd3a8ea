"""The command line: options in, one core call, output rendered. The one place exit codes are decided."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from envlock._version import __version__
from envlock.errors import EnvlockError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="envlock",
    help="Lock a job's whole environment (packages, CUDA, GPU, CPU, BLAS, float settings) and check it at job start.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _err(message: str) -> None:
    typer.echo(f"envlock: error: {message}", err=True)


def handled(func: F) -> F:
    """Map envlock's exceptions to one line on stderr and their exit code (2 bad input, 3 environment)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EnvlockError as exc:
            _err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"envlock {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """envlock: environment and hardware lockfiles for ML jobs."""


@app.command()
@handled
def capture(
    output: Path = typer.Option(Path("envlock.lock"), "-o", "--output", help="Where to write the lock."),
    facts: Path | None = typer.Option(
        None, "--facts", help="Build the lock from an `envlock facts` dump instead of this machine."
    ),
    no_torch: bool = typer.Option(False, "--no-torch", help="Do not import torch (its settings are not locked)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing lock even if it cannot be read."),
) -> None:
    """Capture this machine and Python environment into a lock file."""
    from envlock.capture import capture as run_capture
    from envlock.facts import load_facts

    raw = load_facts(facts) if facts is not None else None
    result = run_capture(output, facts=raw, facts_name=str(facts or ""), use_torch=not no_torch, force=force)
    lock = result.lock
    kept = "; kept the existing policy and comments" if result.kept_policy else ""
    typer.echo(
        f"wrote {result.path}: {len(lock.packages)} packages, target {', '.join(lock.targets)}, "
        f"{lock.lock.content_hash[:19]}{kept}"
    )


@app.command()
@handled
def facts(
    output: Path | None = typer.Option(None, "-o", "--output", help="Write to FILE instead of stdout."),
    no_torch: bool = typer.Option(False, "--no-torch", help="Do not import torch."),
) -> None:
    """Print the raw facts the collectors see, as JSON (for fixtures, or to lock a machine you are not on)."""
    from envlock.atomic import write_atomic
    from envlock.facts import collect_facts, dumps_facts

    text = dumps_facts(collect_facts(use_torch=not no_torch))
    if output is None:
        sys.stdout.write(text)
    else:
        write_atomic(output, text)
        typer.echo(f"wrote {output}")


@app.command()
@handled
def show(
    lock: Path | None = typer.Argument(None, help="The lock (default ./envlock.lock, then $ENVLOCK_LOCK)."),
) -> None:
    """Check a lock and print a readable summary of it."""
    from envlock.lockfile import default_lock_path, load
    from envlock.show import render_summary

    path = lock or default_lock_path()
    loaded, warnings = load(path)
    for warning in warnings:
        typer.echo(f"envlock: warning: {warning}", err=True)
    for line in render_summary(loaded, str(path)):
        typer.echo(line)


def main() -> None:
    """Console entry point."""
    app(prog_name="envlock")

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
    facts: list[Path] = typer.Option(
        [], "--facts", help="Build the lock from an `envlock facts` dump (or an `nvidia-smi -q -x` report for the "
        "GPU part) instead of this machine; repeatable."
    ),
    no_torch: bool = typer.Option(False, "--no-torch", help="Do not import torch (its settings are not locked)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing lock even if it cannot be read."),
    add_target: bool = typer.Option(
        False, "--add-target", help="Add this machine as another hardware target of the existing lock."
    ),
    no_numerics: bool = typer.Option(False, "--no-numerics", help="Do not run the numerics probe."),
    hashes: bool = typer.Option(
        False, "--hashes", help="Record each package's artifact hashes from the index (pip-tools; network)."
    ),
) -> None:
    """Capture this machine and Python environment into a lock file."""
    import argparse

    from envlock.entry import run_capture

    typer.echo(run_capture(argparse.Namespace(output=output, facts=facts, no_torch=no_torch, force=force,
                                              add_target=add_target, no_numerics=no_numerics,
                                              hashes=hashes)))


@app.command()
@handled
def facts(
    output: Path | None = typer.Option(None, "-o", "--output", help="Write to FILE instead of stdout."),
    no_torch: bool = typer.Option(False, "--no-torch", help="Do not import torch."),
    nvidia_smi: Path | None = typer.Option(
        None, "--nvidia-smi", help="Take the GPU part from this `nvidia-smi -q -x` report instead of this machine."
    ),
    no_numerics: bool = typer.Option(False, "--no-numerics", help="Do not run the numerics probe."),
) -> None:
    """Print the raw facts the collectors see, as JSON (for fixtures, or to lock a machine you are not on)."""
    from envlock.atomic import write_atomic
    from envlock.facts import collect_facts, dumps_facts, load_facts

    gathered = collect_facts(use_torch=not no_torch, init_cuda=True, numerics=not no_numerics)
    if nvidia_smi is not None:
        gathered["gpu"] = load_facts(nvidia_smi).get("gpu", gathered["gpu"])
    text = dumps_facts(gathered)
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


@app.command()
@handled
def verify(
    lock: Path | None = typer.Argument(None, help="The lock (default ./envlock.lock, then $ENVLOCK_LOCK)."),
    fast: bool = typer.Option(False, "--fast", help="Skip what needs torch or numpy imported (job-start mode)."),
    deep: bool = typer.Option(False, "--deep", help="Re-hash every installed file and name the modified ones."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON and nothing else on stdout."),
    facts: list[Path] = typer.Option(
        [], "--facts", help="Verify a recorded machine (`envlock facts` dump, or an nvidia-smi report); repeatable."
    ),
    ignore: list[str] = typer.Option([], "--ignore", help="Ignore this dotted path (pattern); repeatable."),
    warn: list[str] = typer.Option([], "--warn", help="Only warn for this dotted path (pattern); repeatable."),
    target: str | None = typer.Option(None, "--target", help="Compare with this target of the lock."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing when everything matches."),
    distributed: bool = typer.Option(
        False, "--distributed", help="Run on every rank (torchrun, srun): the ranks compare fingerprints and rank 0 "
        "prints one report; every rank exits with the fleet's code (docs/fleet.md)."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", metavar="SECONDS", help="With --distributed: the bound on waiting for the other ranks "
        "(default $ENVLOCK_FLEET_TIMEOUT, else 60)."
    ),
) -> None:
    """Check this machine and process against the lock; exit 1 on an error-severity mismatch."""
    import argparse

    from envlock.entry import run_verify

    options = argparse.Namespace(lock=lock, fast=fast, deep=deep, as_json=as_json, facts=facts, ignore=ignore,
                                 warn=warn, target=target, quiet=quiet, distributed=distributed, timeout=timeout)
    raise typer.Exit(run_verify(options))


@app.command()
@handled
def diff(
    lock_a: Path = typer.Argument(..., help="The lock taken as expected."),
    lock_b: Path = typer.Argument(..., help="The lock compared with it."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Compare two locks; exit 1 when they differ in an error-severity field under A's policy."""
    from envlock.entry import emit_report
    from envlock.verifying import diff as run_diff

    report = run_diff(lock_a, lock_b)
    emit_report(report, as_json=as_json, quiet=False, title="diff")
    raise typer.Exit(0 if report.ok else 1)


@app.command(context_settings={"allow_interspersed_args": False})
@handled
def run(
    command: list[str] = typer.Argument(..., help="The job to start, after `--`."),
    lock: Path | None = typer.Option(None, "--lock", help="The lock (default ./envlock.lock, then $ENVLOCK_LOCK)."),
    fast: bool = typer.Option(False, "--fast", help="Verify without importing torch or numpy."),
) -> None:
    """Apply the lock's numerics env vars, verify, then replace this process with the job.

    On a mismatch the job is not started, unless ENVLOCK_VERIFY=warn (report, then start) or off (no check).
    """
    from envlock.report import render_text
    from envlock.runner import apply_lock_env, exec_job, verify_mode
    from envlock.verifying import verify as run_verify

    mode = verify_mode()
    path = apply_lock_env(lock)
    if mode != "off":
        report = run_verify(path, fast=fast, init_cuda=True)
        if not report.ok or report.warnings:
            for line in render_text(report, title="run"):
                typer.echo(line, err=True)
        if not report.ok and mode == "strict":
            _err("the job was not started (set ENVLOCK_VERIFY=warn to start it anyway)")
            raise typer.Exit(1)
    exec_job(command)


@app.command()
@handled
def build(
    lock: Path | None = typer.Argument(None, help="The lock (default ./envlock.lock, then $ENVLOCK_LOCK)."),
    tag: str | None = typer.Option(None, "--tag", help="The image tag to set when the image verifies."),
    base: str | None = typer.Option(None, "--base", help="Base image: name@sha256:DIGEST or a local image ID."),
    context: Path | None = typer.Option(None, "--context", help="Write the build context to DIR; build nothing."),
    wheelhouse: list[Path] = typer.Option([], "--wheelhouse", help="A folder of wheels to take first; repeatable."),
    allow_unpinned_base: bool = typer.Option(
        False, "--allow-unpinned-base", help="Accept a base given by tag alone (it can move under the lock)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not reuse the engine's build cache."),
) -> None:
    """Build a container image with exactly the locked packages, then verify the image against the lock."""
    from envlock.build import build as run_build
    from envlock.lockfile import default_lock_path

    result = run_build(
        lock or default_lock_path(), tag=tag, base=base, context_dir=context, wheelhouses=tuple(wheelhouse),
        allow_unpinned_base=allow_unpinned_base, no_cache=no_cache, echo=lambda line: typer.echo(f"  {line}"),
    )
    if result.context_dir:
        typer.echo(f"wrote the build context to {result.context_dir}: {result.requirements} wheels, "
                   f"context sha256:{result.context_sha256}")
        return
    typer.echo(f"built {result.image_id[:19]} (context sha256:{result.context_sha256[:16]}…)")
    typer.echo(result.verify_output.rstrip())
    if result.verify_exit != 0:
        _err(f"envlock verify failed inside the new image (exit {result.verify_exit}); "
             f"it was left untagged as {result.image_id[:19]}")
        raise typer.Exit(1)
    typer.echo(f"tagged {result.tag}")


def main() -> None:
    """Console entry point (see envlock.entry, which keeps `verify` and `capture` off typer)."""
    from envlock.entry import console

    console()

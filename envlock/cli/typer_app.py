"""The typer app (help, and every command that is not parsed at job start), generated from envlock.cli.options.

Imported only when typer is needed: typer and the click and rich it brings cost about 90 ms.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import typer

from envlock._version import __version__
from envlock.cli.options import COMMANDS, Command, Param
from envlock.errors import ExitCode

#: Runs the body of the named command with its options and returns its exit code (envlock.cli.invoke).
Invoke = Callable[[str, dict[str, Any]], int]


def _annotation(param: Param) -> Any:
    if param.kind == "flag":
        return bool
    if param.kind in ("repeatable", "variadic"):
        return list[param.type]  # type: ignore[name-defined]
    return param.type | None if param.default is None else param.type


def _parameter(param: Param) -> inspect.Parameter:
    if param.kind in ("positional", "variadic"):
        default = typer.Argument(param.default, help=param.help, metavar=param.metavar)
    else:
        default = typer.Option(param.default, *param.flags, help=param.help, metavar=param.metavar)
    return inspect.Parameter(param.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=_annotation(param))


def _callback(command: Command, invoke: Invoke) -> Callable[..., None]:
    """A function typer reads like a hand-written command: its signature is the declaration."""

    def callback(**values: Any) -> None:
        raise typer.Exit(invoke(command.name, values))

    parameters = [_parameter(p) for p in command.params]
    callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    callback.__annotations__ = {p.name: p.annotation for p in parameters}
    callback.__name__ = callback.__qualname__ = command.name
    callback.__doc__ = command.help
    return callback


def _version(value: bool) -> None:
    if value:
        typer.echo(f"envlock {__version__}")
        raise typer.Exit(ExitCode.OK)


def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """envlock: environment and hardware lockfiles for ML jobs."""


def build_app(invoke: Invoke) -> typer.Typer:
    """The `envlock` typer app, each command calling `invoke`."""
    app = typer.Typer(
        name="envlock",
        help="Lock a job's whole environment (packages, CUDA, GPU, CPU, BLAS, float settings) and check it at job "
        "start.",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    for command in COMMANDS:
        settings = None if command.interspersed else {"allow_interspersed_args": False}
        app.command(command.name, context_settings=settings)(_callback(command, invoke))
    return app

"""The typer app (help, and every command that is not parsed at job start), generated from envlock.cli.options.

Imported only when typer is needed: typer and the click it brings cost about 90 ms. Help is click's plain layout
(80 columns at most) with each command's examples and exit codes from the declaration; a command line that does
not parse is read by the declaration's own parser first, so its one-line error is the job-start path's, word for
word (click's errors, met only when help was asked for too, are put in the same words).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from envlock._version import __version__
from envlock.cli.options import (
    BY_NAME,
    COMMANDS,
    REQUIRED,
    ROOT_EXAMPLES,
    ROOT_EXIT_CODES,
    ROOT_HELP,
    Command,
    Param,
    check_usage,
    missing_argument,
    missing_value,
    see,
    takes_no_value,
    unknown_option,
    wants_json,
)
from envlock.errors import ExitCode, UsageError

#: Click's usage error and error base classes: typer re-exports only BadParameter, and newer typer has its own click.
_CLICK_ERRORS = {c.__name__: c for c in typer.BadParameter.__mro__}
ClickUsageError: type[Exception] = _CLICK_ERRORS["UsageError"]
ClickException: type[Exception] = _CLICK_ERRORS["ClickException"]

#: Runs the body of the named command with its options and returns its exit code (envlock.cli.invoke).
Invoke = Callable[[str, dict[str, Any]], int]
#: Says why a command line ended (one line on stderr; with --json, the JSON object too) and returns its exit code.
Fail = Callable[[BaseException, bool], int]


def _annotation(param: Param) -> Any:
    if param.kind == "flag":
        return bool
    if param.kind in ("repeatable", "variadic"):
        return list[param.type]  # type: ignore[name-defined]
    kind = param.type if param.type in (str, Path) else str  # envlock.cli.options.settle converts the rest
    return kind | None if param.default is None else kind


def _parameter(param: Param) -> inspect.Parameter:
    if param.kind in ("positional", "variadic"):
        default = typer.Argument(param.default, help=param.help, metavar=param.metavar, show_default=False)
    else:
        default = typer.Option(param.default, *param.flags, help=param.help, metavar=param.metavar,
                               show_default=False)
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


def _write_epilog(formatter: Any, examples: Sequence[tuple[str, str]],
                  exit_codes: Sequence[tuple[int, str]]) -> None:
    """Examples (the command line, then what it does) and exit codes, as sections after the options."""
    with formatter.section("Examples"):
        for line, what in examples:
            formatter.write(f"{'':>{formatter.current_indent}}{line}\n")
            with formatter.indentation(), formatter.indentation():
                formatter.write_text(f"{what[:1].upper()}{what[1:]}.")
    with formatter.section("Exit codes"):
        formatter.write_dl([(str(code), meaning) for code, meaning in exit_codes])


class _Command(TyperCommand):
    """A command whose help ends with its declared examples and exit codes."""

    declared: Command

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = ["[OPTIONS]"]
        for param in self.declared.params:
            if param.kind == "variadic":
                pieces += ["--", str(param.metavar)]
            elif param.kind == "positional":
                pieces.append(str(param.metavar) if param.default is REQUIRED else f"[{param.metavar}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments = [(str(p.metavar), p.help) for p in self.declared.params if p.kind in ("positional", "variadic")]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        options = [record for param in self.get_params(ctx) if param.param_type_name == "option"
                   if (record := param.get_help_record(ctx)) is not None]
        with formatter.section("Options"):
            formatter.write_dl(options)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        _write_epilog(formatter, self.declared.examples, self.declared.exit_codes)


def _command_class(command: Command) -> type[_Command]:
    return type(f"{command.name.title()}Command", (_Command,), {"declared": command})


def _translated(exc: Exception) -> UsageError:
    """Click's usage error in envlock's words (the declaration's parser says the same for the same line)."""
    ctx = getattr(exc, "ctx", None)
    command = BY_NAME.get(ctx.info_name or "") if ctx is not None and ctx.parent is not None else None
    kind = type(exc).__name__
    if kind == "NoSuchOption":
        return unknown_option(command, getattr(exc, "option_name", ""))
    if command is not None and kind == "MissingParameter":
        name = getattr(getattr(exc, "param", None), "name", None)
        param = next((p for p in command.params if p.name == name), None)
        if param is not None and param.kind in ("positional", "variadic"):
            return missing_argument(command, param)
    if command is not None and kind == "BadOptionUsage":
        param = command.flagged(getattr(exc, "option_name", ""))
        if param is not None:
            return takes_no_value(command, param) if param.kind == "flag" else missing_value(command, param)
    message = str(getattr(exc, "format_message", exc.__str__)()).rstrip(".")
    return UsageError(f"{message[:1].lower()}{message[1:]} {see(command)}")


class _Group(TyperGroup):
    """`envlock`: its help ends with examples and exit codes; every usage error is one line and exit 2."""

    fail: Fail

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        _write_epilog(formatter, ROOT_EXAMPLES, ROOT_EXIT_CODES)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        code: Any
        try:
            check_usage(argv)
            code = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        except UsageError as exc:
            code = self.fail(exc, wants_json(argv))
        except ClickUsageError as exc:
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # bare `envlock` (click >= 8.2)
                typer.echo(ctx.get_help())
                code = ExitCode.BAD_INPUT
            else:
                code = self.fail(_translated(exc), wants_json(argv))
        except typer.Abort:
            code = self.fail(KeyboardInterrupt(), wants_json(argv))
        except ClickException as exc:
            code = self.fail(UsageError(str(getattr(exc, "format_message", exc.__str__)())), wants_json(argv))
        code = int(code) if isinstance(code, int) else ExitCode.OK
        if standalone_mode:
            sys.exit(code)
        return code


def _version(value: bool) -> None:
    if value:
        typer.echo(f"envlock {__version__}")
        raise typer.Exit(ExitCode.OK)


def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def build_app(invoke: Invoke, fail: Fail) -> typer.Typer:
    """The `envlock` typer app, each command calling `invoke`, each usage error ending in `fail`."""
    group = type("EnvlockGroup", (_Group,), {"fail": staticmethod(fail)})
    app = typer.Typer(
        name="envlock",
        cls=group,
        help=ROOT_HELP,
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
    )
    app.callback()(_root)
    for command in COMMANDS:
        settings = None if command.interspersed else {"allow_interspersed_args": False}
        app.command(command.name, cls=_command_class(command), context_settings=settings)(_callback(command, invoke))
    return app

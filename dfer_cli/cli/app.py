"""The `dfer` app: its conventions, the `fail` helper and the small commands (`env`); the
other commands live in cli_predict / cli_train / cli_models, which import this module, and
dfer_cli/cli/main.py puts them together. Parses flags and formats output; the work is done by
the library.

torch / torchvision take seconds to import, so every command imports them lazily and
`dfer --help` stays instant.

Conventions every command follows (DferGroup / DferCommand below):

- `--help` shows no type tags: a flag shows nothing, an option taking a value shows a
  word for it (its metavar, or TEXT / INTEGER / NUMBER / PATH), and every default is
  written `[default: X]`.
- A command that prints data takes `--format/-f` (`table` or `json`, and for predict
  `jsonl` and `csv` too); `--json` is kept as an alias of `--format json` where it existed.
- A usage error (unknown option, bad value, missing argument) is one line on stderr plus a
  hint, e.g. `dfer predict: no such option --foo (try: dfer predict --help)`, exit 2, when
  stderr is not a terminal; on a terminal it keeps rich's framed message.
- Other errors are one line `dfer: <what>: <why>; <fix>` (see `fail`): exit 2 for a usage
  error found after parsing, 1 for a missing or unusable file and any other failure.
"""
from __future__ import annotations

import inspect
import json
import re
import sys
import time
from typing import Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from dfer_cli import __version__

PROG = "dfer"

# Exit codes of every dfer command.
EXIT_FAILED = 1            # a video, checkpoint or output failed
EXIT_USAGE = 2             # bad flags or inputs, found before any work
EXIT_INTERRUPTED = 130     # 128 + SIGINT
EXIT_STDOUT_CLOSED = 141   # 128 + SIGPIPE: the reader of stdout went away
EXIT_TERMINATED = 143      # 128 + SIGTERM
STARTED = time.monotonic()  # the command's start (this module is among the first imported)
STDOUT_CLOSED = False       # set by cli.main when the command started with stdout closed (>&-)
STANDALONE = False          # set by entry.main: this process is the `dfer` command (not a library caller)

# click's exception classes, wherever this typer takes them from (recent typer carries its
# own copy of click): the module that defines typer.BadParameter.
_errors = sys.modules[typer.BadParameter.__module__]
ClickException, NoSuchOption = _errors.ClickException, _errors.NoSuchOption
NoArgsIsHelpError = getattr(_errors, "NoArgsIsHelpError", ())  # older click: help without an error

# Words shown in --help for an option's value when it names none, by annotation.
_VALUE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH"}


def _default_text(param, base, *, ctx, show_default_is_str, default_value) -> str:
    """`[default: X]` also for a default given as text (`show_default="X"`), without the
    parentheses typer puts around it; other defaults as `base` (typer's class) shows them."""
    if show_default_is_str:
        return str(param.show_default)
    return base._get_default_string(param, ctx=ctx, show_default_is_str=False, default_value=default_value)


class DferOption(TyperOption):
    """An option as --help shows it: no `<type>` tag (a flag shows nothing, an option with a
    value its metavar or TEXT / INTEGER / NUMBER / PATH), defaults as `[default: X]`."""

    def display_type_rich(self, ctx) -> Optional[str]:
        if self.is_flag or self.count:
            return None
        if self.metavar is not None:
            return self.metavar
        name = re.sub(r"^list\[(.*)\]$", r"\1", self.bare_type())
        return _VALUE_WORDS.get(name, name.upper())

    def _get_default_string(self, **kw) -> str:
        return _default_text(self, TyperOption, **kw)


class DferArgument(TyperArgument):
    """An argument as --help and usage show it: its name in capitals (SRC, DST), no type."""

    @property
    def display_name_raw(self) -> str:
        return self.metavar if self.metavar is not None else (self.name or "").upper()

    def display_type_rich(self, ctx) -> Optional[str]:
        return None

    def _get_default_string(self, **kw) -> str:
        return _default_text(self, TyperArgument, **kw)

    def _rich_display_name(self) -> str:
        name = self.display_name_raw
        return name if name.endswith("...") or self.nargs == 1 else name + "..."

    def _usage_display_name(self) -> str:
        name = self._rich_display_name()
        return name if self.required else f"[{name}]"


def _dfer_params(params: list) -> list:
    """The parameters with typer's classes swapped for dfer's (same fields, other display)."""
    for p in params:
        if type(p) is TyperOption:
            p.__class__ = DferOption
        elif type(p) is TyperArgument:
            p.__class__ = DferArgument
    return params


def one_paragraph(text: str | None) -> str | None:
    """The first paragraph of a docstring as one line: the summary shown in a command list.
    (Typer's rich help keeps the docstring's line breaks there, and then wraps the lines
    again, which leaves ragged half-empty lines.)"""
    if not text:
        return None
    first = inspect.cleandoc(text).split("\n\n")[0]
    return " ".join(line.strip() for line in first.splitlines() if line.strip()) or None


class DferCommand(TyperCommand):
    """Every `dfer` command: typer's command with dfer's help display (see DferOption)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.short_help is None:
            self.short_help = one_paragraph(self.help)

    def get_params(self, ctx) -> list:
        return _dfer_params(super().get_params(ctx))


class DferGroup(TyperGroup):
    """`dfer` and `dfer weights`: dfer's help display, and usage errors as one line when
    stderr is not a terminal (see usage_error_line)."""

    def get_params(self, ctx) -> list:
        return _dfer_params(super().get_params(ctx))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode or _is_terminal(sys.stderr):
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError as e:  # the help was printed already
            sys.exit(e.exit_code)
        except ClickException as e:
            typer.echo(usage_error_line(e), err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo(f"{PROG}: aborted", err=True)
            sys.exit(1)
        # without standalone mode, typer returns an Exit's code, and the command's value otherwise
        sys.exit(rv if isinstance(rv, int) else 0)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def usage_error_line(e) -> str:
    """A click error as one line: `dfer predict: no such option --foo (try: dfer predict --help)`."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else PROG
    if isinstance(e, NoSuchOption):
        text = f"no such option {e.option_name}"
        if e.possibilities:
            text += f"; did you mean {' or '.join(sorted(e.possibilities))}?"
    else:
        text = " ".join(line.strip() for line in e.format_message().splitlines() if line.strip())
        text = re.sub(r"'(--?[\w-]+)'", r"\1", text)           # 'Invalid value for '--window'' -> --window
        text = re.sub(r"(?<=[a-z0-9'])\. ([A-Z])", lambda m: "; " + m.group(1).lower(), text)
        text = re.sub(r": ([A-Z])(?=[a-z])", lambda m: ": " + m.group(1).lower(), text).rstrip(".")
        text = text[:1].lower() + text[1:]
    hint = f" (try: {where} --help)" if ctx is not None else ""
    return f"{where}: {text}{hint}"


app = typer.Typer(
    name=PROG,
    cls=DferGroup,
    help="Dynamic facial expression recognition in video (LOGO-Former, STT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> None:
    """Print `dfer: message` on stderr and exit with `code`. A usage error (code 2) inside a
    command has the form of click's own: `dfer predict: message (try: dfer predict --help)`."""
    import importlib

    click_globals = importlib.import_module(typer.BadParameter.__module__.rsplit(".", 1)[0] + ".globals")
    ctx = click_globals.get_current_context(silent=True) if code == 2 else None
    if ctx is not None and ctx.command_path:
        typer.echo(f"{ctx.command_path}: {message} (try: {ctx.command_path} --help)", err=True)
    else:
        typer.echo(f"{PROG}: {message}", err=True)
    raise typer.Exit(code)


def require_finite(options: dict) -> None:
    """A usage error (exit 2) for a number option given as inf or nan: ``{"--stride": value}``
    (None: not given). Typer's min/max checks let both through."""
    import math

    for name, value in options.items():
        if value is not None and not math.isfinite(value):
            fail(f"{name} {value}: expected a finite number", 2)


# --format for commands that print data; --json, where a command had it, is its alias.
FORMAT_HELP = "Output format: table (for people) or json (for programs)."
JSON_ALIAS_HELP = "Same as --format json."


def output_format(fmt: Optional[str], as_json: bool, choices=("table", "json")) -> str:
    """The format asked for with --format and/or --json (default table); a usage error
    (exit 2) for an unknown format, or for --json with another --format."""
    chosen = (fmt or ("json" if as_json else "table")).strip().lower()
    if chosen not in choices:
        fail(f"--format {fmt}: expected one of {', '.join(choices)}", 2)
    if as_json and chosen != "json":
        fail(f"--json is --format json; it cannot go with --format {fmt}", 2)
    return chosen


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Dynamic facial expression recognition in video."""


@app.command("env", cls=DferCommand)
def env_cmd(
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="table|json", help=FORMAT_HELP,
                                      show_default="table"),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALIAS_HELP),
) -> None:
    """Versions of dfer and its libraries, the device `--device auto` picks, and where
    weights are looked for."""
    from dfer_cli.envinfo import collect_env

    fmt = output_format(fmt, as_json)
    info = collect_env()
    if fmt == "json":
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="dfer environment", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in info["versions"].items():
        table.add_row(key, str(value))
    table.add_row("device (auto)", info["device"])
    table.add_row("torch threads", str(info["threads"]))
    for d in info["weights_dirs"]:
        table.add_row("weights dir", f"{d['path']}" + ("" if d["exists"] else "  (absent)"))
    for w in info["weights"]:
        table.add_row("weights", f"{w['name']}  {w['path']}")
    if not info["weights"]:
        table.add_row("weights", "none found")
    console.print(table)

"""The `dfer` command. Parses flags and formats output; the work is done by the library.

torch / torchvision take seconds to import, so every command imports them lazily and
`dfer --help` stays instant.
"""
from __future__ import annotations

import json
from typing import Optional

import typer

from dfer_cli import __version__

app = typer.Typer(
    name="dfer",
    help="Dynamic facial expression recognition in video (LOGO-Former, STT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> None:
    """Print `dfer: message` on stderr and exit with `code`."""
    typer.echo(f"dfer: {message}", err=True)
    raise typer.Exit(code)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dfer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Dynamic facial expression recognition in video."""


@app.command("env")
def env_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Versions of dfer and its libraries, the device `--device auto` picks, and where
    weights are looked for."""
    from dfer_cli.envinfo import collect_env

    info = collect_env()
    if as_json:
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


# Commands live in their own modules; importing them registers them on `app`.
from dfer_cli import cli_models, cli_predict, cli_train  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

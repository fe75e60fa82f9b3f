"""The `dfer` command: the app of dfer_cli/cli_app.py with every command registered.

The command modules import cli_app (the app, `fail`, the --help conventions) and register
their commands on it when imported here; none of them imports this module, so the imports
form no cycle.
"""
from __future__ import annotations

from dfer_cli import cli_models, cli_predict, cli_train  # noqa: F401  (importing registers the commands)
from dfer_cli.cli_app import PROG, app, fail  # noqa: F401  (the app, as `dfer_cli.cli.app` for callers)


def main() -> None:
    """Console-script entry point (also `python -m dfer_cli`): messages and usage name the
    command `dfer` however it was started."""
    app(prog_name=PROG)


if __name__ == "__main__":  # pragma: no cover
    main()

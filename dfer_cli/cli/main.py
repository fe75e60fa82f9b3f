"""The `dfer` command: the app of dfer_cli/cli/app.py with every command registered.

The command modules import cli_app (the app, `fail`, the --help conventions) and register
their commands on it when imported here; none of them imports this module, so the imports
form no cycle.
"""
from __future__ import annotations

# Importing a command module registers its commands, in this order in --help.
# isort: off
from dfer_cli.cli import models, predict, train, evaluate, prepare, weights  # noqa: F401
# isort: on
from dfer_cli.cli.app import PROG, app, fail  # noqa: F401  (the app, as `dfer_cli.cli.main.app` for callers)


def main() -> None:
    """Console-script entry point (also `python -m dfer_cli`): messages and usage name the
    command `dfer` however it was started. A closed stderr (`2>&-`) becomes /dev/null, so
    the records still reach stdout; a closed stdout (`>&-`) too, and `dfer predict` then
    refuses to run unless its records go to a file (`-o`, `--output-dir`)."""
    import os
    import sys

    from dfer_cli.cli import app as cli_app

    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
        cli_app.STDOUT_CLOSED = True
    app(prog_name=PROG)


if __name__ == "__main__":  # pragma: no cover
    main()

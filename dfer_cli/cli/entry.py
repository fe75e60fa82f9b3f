"""The `dfer` command's first module: it imports nothing heavy itself, so that Ctrl-C during
start-up (the imports of the CLI, torch, the model) ends with one line and exit 130 rather
than a KeyboardInterrupt traceback."""


def main() -> None:
    try:
        from dfer_cli.cli import app as cli_app
        from dfer_cli.cli.main import main as run

        cli_app.STANDALONE = True
        run()
    except KeyboardInterrupt:
        try:
            import os

            os.write(2, b"dfer: interrupted\n")
        except OSError:  # stderr closed
            pass
        raise SystemExit(130) from None

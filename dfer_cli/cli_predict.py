"""`dfer` commands: predict (registered on the app from dfer_cli.cli)."""
from __future__ import annotations

from dfer_cli.cli import app, fail  # noqa: F401

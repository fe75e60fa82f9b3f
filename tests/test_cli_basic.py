"""The CLI's outer shell: --version, fast --help (no torch import), python -m, env --json."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dfer_cli import __version__
from dfer_cli.cli.main import app

HEAVY = ("torch", "torchvision", "av", "cv2", "matplotlib", "facenet_pytorch")

PROBE = """
import sys
sys.argv = ["dfer"] + sys.argv[1:]
from dfer_cli.cli.main import main
try:
    main()
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["predict", "--help"], ["weights", "--help"]])
def test_help_and_version_do_not_import_torch(args):
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "HEAVY=", r.stdout


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"dfer {__version__}"


def test_help_lists_commands():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("predict", "weights", "env"):
        assert cmd in r.stdout


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "dfer_cli", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"dfer {__version__}"


def test_unknown_command_is_usage_error():
    r = CliRunner().invoke(app, ["frobnicate"])
    assert r.exit_code == 2


def test_env_json(monkeypatch, tmp_path):
    from dfer_cli.weights import search_dirs

    monkeypatch.setenv("DFER_WEIGHTS_DIR", str(tmp_path))
    r = CliRunner().invoke(app, ["env", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["versions"]["dfer"] == __version__
    assert info["device"] in ("cpu", "cuda", "mps")
    assert [d["path"] for d in info["weights_dirs"]] == [str(d) for d in search_dirs()]
    assert info["weights_dirs"][0] == {"path": str(tmp_path), "exists": True}

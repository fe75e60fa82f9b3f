"""A wheel built from this tree carries the bundled default weights: installed (not editable)
and run from another directory, `dfer predict` finds them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("dfer-*.whl")
    return whl


def test_wheel_holds_the_weights_and_model_card(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "dfer_weights/logo_former_fer2013.safetensors" in names
    assert "dfer_weights/README.md" in names
    assert "dfer_cli/cli.py" in names and not any(n.startswith("tests/") for n in names)


def test_wheel_declares_the_licence_and_ships_its_text(wheel):
    z = zipfile.ZipFile(wheel)
    (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
    headers = z.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    (text,) = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert z.read(text).decode() == (ROOT / "LICENSE").read_text()


@pytest.mark.slow
def test_installed_wheel_predicts_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    video = tmp_path / "clip.mp4"
    video.write_bytes((ROOT / "examples" / "single_face_smile.mp4").read_bytes())
    work = tmp_path / "elsewhere"
    work.mkdir()
    # the wheel's copy first on the path: neither the clone nor its weights/ folder is used
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("DFER_WEIGHTS_DIR", None)
    run = subprocess.run([sys.executable, "-m", "dfer_cli", "predict", str(video), "--threads", "1",
                          "--window", "1", "--stride", "1", "-f", "jsonl"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert records[-1]["type"] == "video" and records[-1]["status"] == "ok"
    assert any(r["type"] == "clip" and r["label"] for r in records)
    where = subprocess.run([sys.executable, "-c", "import dfer_cli, dfer_cli.weights as w; "
                            "print(dfer_cli.__file__); print(w.bundled_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    module, weights = where.stdout.split()
    assert module.startswith(str(site)) and weights == str(site / "dfer_weights")

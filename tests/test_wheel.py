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
    import shutil

    out = tmp_path_factory.mktemp("wheel")
    # built from a copy of the sources alone: a build/ folder left in the clone by an earlier
    # build would otherwise put modules into the wheel that the package list lacks
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("dfer_cli", "weights"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("dfer-*.whl")
    return whl


def test_wheel_holds_the_weights_and_model_card(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "dfer_weights/logo_former_fer2013.safetensors" in names
    assert "dfer_weights/README.md" in names
    assert "dfer_cli/cli/main.py" in names and not any(n.startswith("tests/") for n in names)


def test_wheel_declares_the_licence_and_ships_its_text(wheel):
    z = zipfile.ZipFile(wheel)
    (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
    headers = z.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    (text,) = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert z.read(text).decode() == (ROOT / "LICENSE").read_text()


def test_wheel_holds_every_module_of_the_source_tree(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dfer_cli").rglob("*.py")}
    assert source and source - names == set()


def clean_venv(tmp_path: Path, wheel: Path) -> tuple[Path, Path]:
    """A new venv that cannot see the checkout: the wheel installed into its site-packages,
    and the test environment's site-packages (torch and the other dependencies) reached
    through a path line in a .pth file. A path line adds that folder without running the
    .pth files inside it, so the editable install's finder there, which would serve
    dfer_cli from the clone, stays off. Returns (its python, its site-packages)."""
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return py, site


@pytest.mark.slow
def test_installed_wheel_predicts_from_another_directory(wheel, tmp_path):
    py, site = clean_venv(tmp_path, wheel)
    video = tmp_path / "clip.mp4"
    video.write_bytes((ROOT / "examples" / "single_face_smile.mp4").read_bytes())
    work = tmp_path / "elsewhere"
    work.mkdir()
    # neither the clone nor its weights/ folder is on the venv's path
    env = dict(os.environ, OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    for var in ("DFER_WEIGHTS_DIR", "PYTHONPATH"):
        env.pop(var, None)
    run = subprocess.run([str(py), "-m", "dfer_cli", "predict", str(video), "--threads", "1",
                          "--window", "1", "--stride", "1", "-f", "jsonl"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert records[-1]["type"] == "video" and records[-1]["status"] == "ok"
    assert any(r["type"] == "clip" and r["label"] for r in records)
    where = subprocess.run([str(py), "-c", "import dfer_cli, dfer_cli.weights as w; "
                            "print(dfer_cli.__file__); print(w.bundled_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    module, weights = where.stdout.split()
    assert module.startswith(str(site)) and weights == str(site / "dfer_weights")

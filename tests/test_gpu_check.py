"""benchmarks/gpu.py, the GPU check, run end to end in its tiny CPU mode: every part runs and
writes its section with figures; a device that does not reproduce the CPU fails the check."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfer_cli.device import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def run_check(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_tiny_cpu_run_writes_every_section_with_figures(tmp_path):
    r = run_check(tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "gpu-check.md").read_text()
    res = json.loads((tmp_path / "gpu-check.json").read_text())
    for section in ("## CUDA tests", "## CPU and device agree", "## Corpus throughput", "## Training throughput",
                    "## Result"):
        assert section in md
    assert "python benchmarks/gpu.py --device cpu --tiny" in md and res["machine"]["cpu_count"] >= 1
    parts = res["parts"]
    assert all(p["ok"] for p in parts.values()), parts

    tests = parts["tests"]  # no CUDA here: the gpu-marked tests are collected and skipped
    assert tests["counts"].get("skipped", 0) + tests["counts"].get("passed", 0) >= 3
    agree = parts["agreement"]
    assert agree["clips"] > 0 and agree["same_clips"] and agree["labels_equal"] == agree["clips"]
    assert 0 <= agree["max_abs_dp"] <= agree["tolerance"] == 0.02
    corpus = parts["corpus"]
    assert corpus["videos"] == 3 and corpus["video_seconds"] > 0
    for how in ("in_flight", "processes"):
        assert corpus[how]["wall_s"] > 0 and corpus[how]["x_real_time"] > 0
    assert corpus["in_flight"]["done"] == 3 and corpus["in_flight"]["failed"] == 0
    train = parts["training"]
    assert train["steps"]["clips_per_s"] > 0 and train["steps"]["steps"] >= 2
    assert train["loader"]["clips_per_s"] > 0 and train["loader"]["clip_shape"] == [4, 3, 32, 32]
    assert train["dfer_train"]["wall_s"] > 0 and isinstance(train["fed"], bool)
    assert "all parts ran" in md


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="needs a CPU whose default precision differs from fp32")
def test_a_device_outside_the_tolerance_fails_the_check(tmp_path):
    # on this CPU the default is bf16: with a tolerance of 0 its probabilities are out of bounds
    r = run_check(tmp_path, "--parts", "agreement", "--tolerance", "0")
    assert r.returncode == 1
    md = (tmp_path / "gpu-check.md").read_text()
    assert "FAILED" in md and "does not reproduce the CPU" in md
    assert "gpu check FAILED: agreement" in r.stderr

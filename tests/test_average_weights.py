"""scripts/average_weights.py: the mean of checkpoints of one model, refused across models."""
import subprocess
import sys
from pathlib import Path

import torch
from synth import tiny_model

from dfer_cli.checkpoint import read_checkpoint, save_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "average_weights.py"


def _save(path, model, **provenance):
    return save_checkpoint(path, model, classes=model.classes, preprocessing=model.preprocessing,
                           provenance=provenance)


def test_average_is_the_tensor_mean_and_records_its_inputs(tmp_path):
    paths = [_save(tmp_path / f"s{i}.safetensors", tiny_model(num_frames=1, seed=i), stage=i) for i in range(3)]
    out = tmp_path / "avg.safetensors"
    r = subprocess.run([sys.executable, str(SCRIPT), str(out), *map(str, paths)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got, meta = read_checkpoint(out)
    states = [read_checkpoint(p)[0] for p in paths]
    for k, v in got.items():
        if v.is_floating_point():
            assert torch.allclose(v, (states[0][k] + states[1][k] + states[2][k]) / 3, atol=1e-6), k
    assert not torch.equal(got["head.weight"], states[0]["head.weight"])
    assert meta["provenance"]["stage"] == 0    # the first checkpoint's provenance, plus its inputs
    assert meta["provenance"]["averaged_from"] == [str(p) for p in paths]


def test_checkpoints_of_different_models_are_refused(tmp_path):
    a = _save(tmp_path / "a.safetensors", tiny_model(num_frames=1))
    b = _save(tmp_path / "b.safetensors", tiny_model(num_frames=4))
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "o.safetensors"), str(a), str(b)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and not (tmp_path / "o.safetensors").exists()
    assert f"{b}: not the same model, config and classes as {a}" in r.stderr

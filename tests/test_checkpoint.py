"""Checkpoint round trip, metadata, and refusal of unusable files."""
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dfer_cli import __version__
from dfer_cli.checkpoint import (
    CheckpointError, load_model, load_state_partial, read_checkpoint, save_checkpoint,
)
from dfer_cli.labels import CLASSES
from dfer_cli.models import create_model
from dfer_cli.preprocess import Preprocessing

TINY = dict(input_size=32, num_frames=4, dim=16, heads=2, depth=1)


def _model(name="logo_former", **kw):
    torch.manual_seed(0)
    return create_model(name, **{**TINY, **kw}).eval()


def _save(path, model, **kw):
    pre = Preprocessing(input_size=32, num_frames=4, grayscale=True)
    prov = {"dataset": "dfew", "fold": 2, "epochs": 3, "metrics": {"uar": 0.41, "war": 0.55}}
    return save_checkpoint(path, model, classes=CLASSES, preprocessing=pre, provenance=prov, **kw)


@pytest.mark.parametrize("name", ["logo_former", "stt", "joint", "space_only"])
def test_round_trip_identical_outputs(tmp_path, name):
    model = _model(name)
    path = _save(tmp_path / "m.safetensors", model)
    loaded = load_model(path)
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training and loaded.model_name == name
    assert loaded.config == model.config
    assert loaded.classes == list(CLASSES)
    assert loaded.preprocessing == Preprocessing(input_size=32, num_frames=4, grayscale=True)
    assert loaded.provenance["metrics"]["uar"] == 0.41
    assert loaded.checkpoint_path == str(path)


def test_saved_file_is_readable_by_others_like_any_new_file(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = _save(tmp_path / "m.safetensors", _model())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # was 0600 (tempfile.mkstemp)
    assert os.listdir(tmp_path) == ["m.safetensors"]  # the temporary file was renamed, none left


def test_header_metadata_is_json_with_everything(tmp_path):
    path = _save(tmp_path / "m.safetensors", _model())
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["dfer"])
    assert meta["model"] == "logo_former" and meta["dfer_version"] == __version__
    assert meta["config"]["dim"] == 16 and meta["config"]["window"] == [2, 7, 7]
    assert meta["classes"] == list(CLASSES)
    assert meta["preprocessing"]["grayscale"] is True and meta["preprocessing"]["num_frames"] == 4
    assert meta["provenance"]["fold"] == 2
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


def test_half_stores_fp16_and_loads_fp32(tmp_path):
    model = _model()
    full = _save(tmp_path / "full.safetensors", model)
    half = _save(tmp_path / "half.safetensors", model, half=True)
    state, meta = read_checkpoint(half)
    assert meta["dtype"] == "float16" and state["head.weight"].dtype == torch.float32
    with safe_open(str(half), framework="pt") as f:
        assert f.get_tensor("head.weight").dtype == torch.float16
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=5e-2, rtol=5e-2)


def test_load_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("DFER_WEIGHTS_DIR", str(tmp_path))
    _save(tmp_path / "my_model.safetensors", _model())
    assert load_model("my_model").checkpoint_path == str(tmp_path / "my_model.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint named 'other'"):
        load_model("other")


def _one_line_error(path):
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_truncated_file(tmp_path):
    path = _save(tmp_path / "cut.safetensors", _model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _one_line_error(path)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path), metadata={"format": "pt"})
    assert "not a dfer checkpoint" in _one_line_error(path)


def test_pickle_renamed_safetensors(tmp_path, monkeypatch):
    path = tmp_path / "pickled.safetensors"
    torch.save(_model().state_dict(), path)        # a zip of pickles
    assert "not a readable safetensors file" in _one_line_error(path)
    # a plain pickle whose unpickling would run code must never be executed
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Boom()))
    _one_line_error(evil)
    assert not (tmp_path / "pwned").exists()


class _Boom:
    def __reduce__(self):
        import os
        return (os.mkdir, ("pwned",))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "absent.safetensors")


def test_partial_load_resizes_time_embedding_and_skips_mismatches():
    stage1 = _model(num_frames=1, num_classes=3)      # trained on stills
    stage2 = _model(num_frames=4)                      # 16-frame-style model, 7 classes
    loaded, skipped = load_state_partial(stage2, stage1.state_dict())
    assert "pos_time" in loaded and "backbone.conv1.weight" in loaded
    for t in range(4):
        assert torch.equal(stage2.pos_time[0, t], stage1.pos_time[0, 0])
    # the 1-frame window pool is spread over the 2-frame window: same summary for a static clip
    w1 = stage1.blocks[0].steps[1].pool.weight
    w2 = stage2.blocks[0].steps[1].pool.weight
    torch.testing.assert_close(w2.sum(2, keepdim=True), w1)
    assert any(s.startswith("head.weight: shape (3, 16) != (7, 16)") for s in skipped)
    assert "head.weight" not in loaded

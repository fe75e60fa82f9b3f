"""Checkpoint round trip, metadata, and refusal of unusable files."""
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dfer_cli import __version__
from dfer_cli.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from dfer_cli.labels import CLASSES
from dfer_cli.models import create_model
from dfer_cli.models.transfer import load_state_partial
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
    assert meta["config"]["dim"] == 16 and meta["config"]["window"] == [2, 4, 4]
    assert meta["classes"] == list(CLASSES)
    assert meta["preprocessing"]["grayscale"] is True and meta["preprocessing"]["num_frames"] == 4
    assert meta["provenance"]["fold"] == 2
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


def test_a_saved_window_is_kept_not_replaced_by_the_new_default(tmp_path):
    # models made when the default was 2x7x7 (two whole frames) load with 2x7x7, not 2x4x4
    model = _model(input_size=112, num_frames=2, window=(2, 7, 7))
    path = save_checkpoint(tmp_path / "old.safetensors", model, classes=CLASSES,
                           preprocessing=Preprocessing(input_size=112, num_frames=2), provenance={})
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["dfer"])["config"]["window"] == [2, 7, 7]
    loaded = load_model(path)
    assert loaded.config.window == (2, 7, 7) and loaded.window == (2, 7, 7)
    assert loaded.blocks[0].steps[0].window == loaded.blocks[0].steps[1].window == (2, 7, 7)
    assert tuple(loaded.blocks[0].steps[1].pool.weight.shape[2:]) == (2, 7, 7)
    f = torch.randn(1, 2, 256, 7, 7)          # trunk maps: the blocks run, the trunk need not
    with torch.no_grad():
        assert torch.equal(model.forward_tokens(f), loaded.forward_tokens(f))


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


def test_partial_load_turns_a_video_model_back_into_a_still_model():
    """Fine-tuning a video model on stills (``--frames 1 --init logo_former_fer2013``): the
    window pool kernel is summed over its frames, so a 1-frame window summarises a still
    exactly as the video model's window summarises that still repeated."""
    video = _model(num_frames=4, window=(2, 2, 2))
    still = _model(num_frames=1, window=(2, 2, 2))
    loaded, skipped = load_state_partial(still, video.state_dict())
    assert not skipped and "blocks.0.steps.1.pool.weight" in loaded
    frame = torch.randn(2, 1, 2, 2, 16)                                       # (B, 1, H, W, D)
    clip = frame.expand(2, 4, 2, 2, 16)                                       # the still, 4 times
    with torch.no_grad():
        s1 = still.blocks[0].steps[1].summaries(frame.reshape(2, 4, 16), (1, 2, 2))   # (B, 1, D)
        s4 = video.blocks[0].steps[1].summaries(clip.reshape(2, 16, 16), (4, 2, 2))   # (B, 2, D)
    torch.testing.assert_close(s4, s1.expand(2, 2, 16))


# --- hostile and broken headers: refused before anything is built -----------------

@pytest.fixture(scope="module")
def tiny_state():
    """The tensors and header metadata that save_checkpoint writes for a tiny model."""
    model = _model()
    meta = {"format": "dfer-checkpoint", "format_version": 1, "dfer_version": __version__,
            "model": "logo_former", "config": {**model.config.to_dict(), "backbone_weights": None},
            "classes": list(CLASSES), "preprocessing": Preprocessing(input_size=32, num_frames=4).to_dict(),
            "provenance": {"epochs": 1}, "dtype": "float32"}
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, meta


def _forge(tmp_path, tiny_state, edit=None, *, raw=None, tensors=None, name="forged"):
    """A checkpoint with a tampered header: ``edit(meta)`` changes a copy of the metadata
    save_checkpoint writes (or ``raw`` replaces it); ``tensors(state)`` changes the tensors."""
    state, meta = tiny_state
    meta = json.loads(json.dumps(meta))
    if edit is not None:
        edit(meta)
    state = dict(state)
    if tensors is not None:
        tensors(state)
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path), metadata={"dfer": raw if raw is not None else json.dumps(meta)})
    return path


def test_forged_baseline_loads_and_old_checkpoints_without_stem_still_load(tmp_path, tiny_state):
    assert load_model(_forge(tmp_path, tiny_state)).config.dim == 16
    old = load_model(_forge(tmp_path, tiny_state, lambda m: m["config"].pop("stem"), name="old"))
    assert old.config.stem == "standard"
    s1 = load_model(_save(tmp_path / "s1.safetensors", _model(stem="s1")))
    assert s1.config.stem == "s1" and s1.pos_space.shape[2] == 16  # 32 px, stride 8: 4x4 grid


def _set(*keys, value):
    def edit(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


BAD_HEADERS = {
    # edit -> the key the one-line error must name
    "config not a dict": (_set("config", value=[16, 2]), "'config'"),
    "classes not a list": (_set("classes", value=7), "'classes'"),
    "classes a string": (_set("classes", value="happysad"), "'classes'"),
    "classes not strings": (_set("classes", value=[1, 2, 3, 4, 5, 6, 7]), "'classes'"),
    "2 names for a 7-way head": (_set("classes", value=["happy", "sad"]), "'classes' names 2 classes"),
    "duplicate class names": (_set("classes", value=["happy"] * 7), "'classes'"),
    "heads 0": (_set("config", "heads", value=0), "'config.heads'"),
    "heads not dividing dim": (_set("config", "heads", value=3), "'config.heads'"),
    "dim a string": (_set("config", "dim", value="16"), "'config.dim'"),
    "dim a bool": (_set("config", "dim", value=True), "'config.dim'"),
    "depth negative": (_set("config", "depth", value=-1), "'config.depth'"),
    "num_frames a float": (_set("config", "num_frames", value=4.5), "'config.num_frames'"),
    "input_size huge": (_set("config", "input_size", value=10**9), "'config.input_size'"),
    "mlp_ratio NaN": (_set("config", "mlp_ratio", value=float("nan")), "'config.mlp_ratio'"),
    "dropout above 1": (_set("config", "dropout", value=3.0), "'config.dropout'"),
    "window of 2": (_set("config", "window", value=[2, 7]), "'config.window'"),
    "unknown stem": (_set("config", "stem", value="s9"), "'config.stem'"),
    "unknown block": (_set("config", "block", value="evil"), "'config.block'"),
    "unknown config field": (_set("config", "evil", value=1), "'evil'"),
    "model not a string": (_set("model", value=["logo_former"]), "'model'"),
    "format_version a list": (_set("format_version", value=[]), "'format_version'"),
    "provenance a list": (_set("provenance", value=[1]), "'provenance'"),
    "preprocessing a list": (_set("preprocessing", value=[]), "'preprocessing'"),
    "grayscale a string": (_set("preprocessing", "grayscale", value="no"), "'preprocessing.grayscale'"),
    "mean of 1": (_set("preprocessing", "mean", value=[0.5]), "'preprocessing.mean'"),
    "std zero": (_set("preprocessing", "std", value=[0, 1, 1]), "'preprocessing.std'"),
    "template of 3": (_set("preprocessing", "template", value=[[0.3, 0.4]] * 3), "'preprocessing.template'"),
    "input_size other than the model's": (_set("preprocessing", "input_size", value=64),
                                         "'preprocessing.input_size'"),
    "more frames than the model takes": (_set("preprocessing", "num_frames", value=8),
                                         "'preprocessing.num_frames'"),
    "detail_size a string": (_set("preprocessing", "detail_size", value="48"), "'preprocessing.detail_size'"),
    "detail_size above the input": (_set("preprocessing", "detail_size", value=10**6),
                                    "'preprocessing.detail_size'"),
    "detail_size tiny": (_set("preprocessing", "detail_size", value=2), "'preprocessing.detail_size'"),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_hostile_header_is_refused_naming_the_key(tmp_path, tiny_state, monkeypatch, case):
    _no_real_model(monkeypatch)
    edit, key = BAD_HEADERS[case]
    path = _forge(tmp_path, tiny_state, edit)
    assert key in _one_line_error(path)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        read_checkpoint(path)  # also what `dfer train --init` reads


@pytest.mark.parametrize("raw", [
    "[" * 100_000 + "]" * 100_000,                                            # the whole header
    '{"format": "dfer-checkpoint", "provenance": ' + "[" * 100_000 + "]" * 100_000 + "}",
    json.dumps({"format": "dfer-checkpoint", "model": "logo_former", "config": {}, "classes": [],
                "preprocessing": {}, "provenance": json.loads("[" * 200 + "]" * 200)}),  # parses, too deep
], ids=["top", "provenance", "parsable"])
def test_deeply_nested_header_is_refused(tmp_path, tiny_state, monkeypatch, raw):
    _no_real_model(monkeypatch)
    assert "metadata is nested" in _one_line_error(_forge(tmp_path, tiny_state, raw=raw))


def _no_real_model(monkeypatch):
    """Make building a model anywhere but on the "meta" device fail the test (instead of
    asking the allocator for what a hostile header declares)."""
    import dfer_cli.models

    real = dfer_cli.models.create_model

    def guarded(name, **kw):
        assert torch.empty(0).device.type == "meta", f"a real model was built from a hostile header ({kw})"
        return real(name, **kw)
    monkeypatch.setattr(dfer_cli.models, "create_model", guarded)


def test_huge_declared_model_in_a_small_file_is_refused_without_allocating(tmp_path, tiny_state, monkeypatch):
    _no_real_model(monkeypatch)

    def huge(meta):
        meta["config"].update(dim=16384, depth=64)
    msg = _one_line_error(_forge(tmp_path, tiny_state, huge))
    assert "'config.dim' is 16384" in msg
    # within the bounds but still far more than the file holds: the tensor shapes give it away
    # (the declared model is only built on the "meta" device)

    def big(meta):
        meta["config"].update(dim=4096, depth=64, heads=8)
    msg = _one_line_error(_forge(tmp_path, tiny_state, big, name="big"))
    assert "tensor 'pos_space' has shape (1, 1, 4, 16)" in msg and "dim=4096, depth=64" in msg


def test_a_clip_shape_asking_for_gigabytes_is_refused_before_anything_is_built(tmp_path, tiny_state, monkeypatch):
    from dfer_cli.checkpoint import MAX_CLIP_BYTES, clip_memory_bytes

    _no_real_model(monkeypatch)

    def huge_clip(meta):     # a few hundred KB of file, 12.8 GiB per clip: 64 frames of 1024 px
        meta["config"].update(input_size=1024, num_frames=64)
        meta["preprocessing"].update(input_size=1024, num_frames=64)
    msg = _one_line_error(_forge(tmp_path, tiny_state, huge_clip, name="clip"))
    assert "asks for about 12.8 GiB per clip (input_size 1024, num_frames 64)" in msg
    # the estimate, written out: float32 frames plus three maps of the first stage at half the side
    assert clip_memory_bytes({"num_frames": 64, "input_size": 1024, "stem": "standard", "trunk_width": 64}) == \
        4 * 64 * (3 * 1024 * 1024 + 3 * 64 * 512 * 512)
    # the models dfer trains stay far below the bound (the papers' 112 px, 16 frames: 39 MiB)
    assert clip_memory_bytes({"num_frames": 16, "input_size": 112, "stem": "standard", "trunk_width": 64}) < \
        MAX_CLIP_BYTES / 50


@pytest.mark.parametrize("change, key", [
    (lambda s: s.pop("head.bias"), "'head.bias'"),                               # missing
    (lambda s: s.update({"evil.weight": torch.zeros(2)}), "'evil.weight'"),      # unexpected
    (lambda s: s.update({"head.weight": torch.zeros(7, 8)}), "'head.weight' has shape (7, 8)"),
    (lambda s: s.update({"head.weight": torch.zeros(7, 16, dtype=torch.int32)}), "'head.weight' is stored as I32"),
], ids=["missing", "unexpected", "shape", "dtype"])
def test_tensors_not_matching_the_header_are_refused_before_reading(tmp_path, tiny_state, monkeypatch, change, key):
    _no_real_model(monkeypatch)
    assert key in _one_line_error(_forge(tmp_path, tiny_state, tensors=change))


class _FixedFace:
    """A detector that finds the same face in every frame (no MTCNN)."""

    def detect(self, frames):
        import numpy as np

        from dfer_cli.faces.detect import Detection
        from dfer_cli.preprocess import DEFAULT_TEMPLATE

        lm = np.array(DEFAULT_TEMPLATE) * 64 + 16
        return [[Detection(np.array([16.0, 16.0, 80.0, 80.0]), 0.99, lm.copy())] for _ in frames]


def test_non_finite_probabilities_fail_the_video_naming_the_checkpoint(tmp_path):
    from synth import make_video

    import dfer_cli

    video = make_video(tmp_path / "v.mp4", frames=16, fps=8, size=(96, 96))
    good = load_model(_save(tmp_path / "good.safetensors", _model()))
    res = dfer_cli.predict_video(good, video, detector=_FixedFace())
    assert res.clips and all(c.status == "ok" for c in res.clips)  # the same clips classify when healthy

    broken = _model()
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")  # a corrupted weight
    path = _save(tmp_path / "nan.safetensors", broken)
    emitted = []
    with pytest.raises(ValueError, match="non-finite probabilities") as e:
        dfer_cli.predict_video(load_model(path), video, detector=_FixedFace(), on_clip=emitted.append)
    assert "\n" not in str(e.value) and str(path) in str(e.value) and "checkpoint" in str(e.value)
    assert emitted == []  # no record with a NaN confidence and status ok


def test_partial_load_resamples_space_embedding_for_a_larger_input():
    # a 32 px model (2x2 grid) initialising a 48 px one (3x3): fine-tuning at a higher resolution
    small = _model(input_size=32)
    large = _model(input_size=48)
    assert small.pos_space.shape[2] == 4 and large.pos_space.shape[2] == 9
    with torch.no_grad():   # row-major cells a b / c d, distinct per channel
        small.pos_space.copy_(torch.tensor([1.0, 2.0, 5.0, 11.0])[None, None, :, None]
                              * torch.arange(1, small.config.dim + 1.0))
    loaded, skipped = load_state_partial(large, small.state_dict())
    assert "pos_space" in loaded and not any(s.startswith("pos_space") for s in skipped)
    a, b, c, d = small.pos_space[0, 0]
    new = large.pos_space[0, 0].reshape(3, 3, -1)
    # bicubic, corners aligned: corners kept; a midpoint between two cells is their mean
    # (cubic kernel weights 0.59375 and -0.09375 with the border replicated); centre = mean of 4
    expected = torch.stack([torch.stack([a, (a + b) / 2, b]),
                            torch.stack([(a + c) / 2, (a + b + c + d) / 4, (b + d) / 2]),
                            torch.stack([c, (c + d) / 2, d])])
    torch.testing.assert_close(new, expected)


def test_shape_check_leaves_torch_init_intact(tmp_path):
    # check_tensors builds the model on the meta device with torch's initialisers switched
    # off (they would import torch._dynamo); they must be back afterwards, also after an error
    import torch

    from dfer_cli.checkpoint import check_tensors, read_metadata
    from dfer_cli.weights import find_weights

    before = {n: getattr(torch.nn.init, n) for n in ("normal_", "kaiming_normal_", "trunc_normal_")}
    path = find_weights("logo_former_fer2013")
    check_tensors(path, read_metadata(path))
    bad = read_metadata(path)
    config = bad["config"]["members"][0]["config"] if "members" in bad["config"] else bad["config"]
    config["dim"] = 8  # the bundled default is an ensemble: its first member's width
    with pytest.raises(Exception):
        check_tensors(path, bad)
    assert {n: getattr(torch.nn.init, n) for n in before} == before
    w = torch.empty(64, 64)
    torch.nn.init.kaiming_normal_(w)
    assert float(w.std()) > 0.05

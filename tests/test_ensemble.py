"""Ensemble checkpoints: the mean of the members' probabilities, each member given the crop
it would have seen alone, saved, loaded, exported and run by `dfer predict` like any model."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from synth import face_image, make_video
from test_train import TINY
from typer.testing import CliRunner

from dfer_cli.checkpoint import CheckpointError, load_model, read_metadata, save_checkpoint
from dfer_cli.cli.main import app
from dfer_cli.labels import CLASSES
from dfer_cli.models import create_model
from dfer_cli.models.ensemble import Ensemble, combine, resampling_matrix
from dfer_cli.models.transfer import with_num_frames
from dfer_cli.preprocess import Preprocessing
from dfer_cli.train.losses import shift_prior


def _member(path, size, frames=1, seed=0, classes=CLASSES, grayscale=True, detail=None, provenance=None):
    torch.manual_seed(seed)
    model = create_model("logo_former", num_frames=frames, input_size=size, num_classes=len(classes), **TINY)
    with torch.no_grad():  # a head far from zero: members that disagree, confident outputs
        model.head.weight.normal_(0, 1.0)
        model.head.bias.normal_(0, 1.0)
    pre = Preprocessing(input_size=size, num_frames=frames, grayscale=grayscale, detail_size=detail)
    return save_checkpoint(path, model, classes=list(classes), preprocessing=pre, provenance=provenance or {})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("members")
    counts = {c: n for c, n in zip(CLASSES, (80, 40, 60, 30, 20, 5, 10))}
    prov = {"data": {"train_class_counts": counts}}
    return (_member(d / "big.safetensors", 48, seed=1, provenance=prov),
            _member(d / "small.safetensors", 32, seed=2, provenance={"data": {"train_class_counts": counts}}))


def _area(x: torch.Tensor, size: int) -> torch.Tensor:
    """Reference: OpenCV's area resize of every channel of every frame (B, T, 3, S, S)."""
    a = x.numpy()
    out = np.empty((*a.shape[:3], size, size), np.float32)
    for idx in np.ndindex(*a.shape[:3]):
        out[idx] = cv2.resize(a[idx], (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(out)


def test_the_output_is_the_log_of_the_members_mean_probability(pair):
    big, small = load_model(pair[0]), load_model(pair[1])
    ens = combine([big, small])
    x = torch.randn(3, 1, 3, 48, 48)
    with torch.no_grad():
        p_big = big(x).softmax(-1)
        p_small = small(_area(x, 32)).softmax(-1)
        out = ens(x)
    want = (p_big + p_small) / 2
    assert torch.allclose(out.exp(), want, atol=1e-5)          # log of the mean: no renormalising needed
    assert torch.allclose(out.softmax(-1), want, atol=1e-5)
    assert not torch.allclose(want, (big(x) + small(_area(x, 32))).div(2).softmax(-1), atol=1e-3)  # not the logit mean
    assert ens.preprocessing.input_size == 48 and ens.config.input_size == 48 and ens.config.num_classes == 7
    assert [m["file"] for m in ens.provenance["members"]] == ["big.safetensors", "small.safetensors"]
    assert len(ens.provenance["members"][1]["sha256"]) == 64


def test_a_cnn_member_with_layer4_joins_a_transformer(tmp_path):
    # members with different trunk widths (256-channel layer3 maps, 512-channel layer4 maps):
    # the ensemble splits the concatenated per-frame maps by each member's own width
    torch.manual_seed(3)
    cnn = create_model("trunk_pool", num_frames=2, input_size=32, num_classes=7, dim=16, stem="s1", trunk_layers=4)
    with torch.no_grad():
        cnn.head.weight.normal_(0, 1.0)
    pre = Preprocessing(input_size=32, num_frames=2, grayscale=True)
    cnn_path = save_checkpoint(tmp_path / "cnn.safetensors", cnn, classes=list(CLASSES), preprocessing=pre, provenance={})
    tf_path = _member(tmp_path / "tf.safetensors", 48, frames=2, seed=4)
    tf, cnn = load_model(tf_path), load_model(cnn_path)
    ens = combine([tf, cnn])
    x = torch.randn(2, 2, 3, 48, 48)
    with torch.no_grad():
        want = (tf(x).softmax(-1) + cnn(_area(x, 32)).softmax(-1)) / 2
        out = ens(x)
        maps = ens.frame_features(x.flatten(0, 1))
        split = ens.forward_head(ens.forward_tokens(maps.reshape(2, 2, -1)))
    assert maps.shape[1] == 256 * 3 * 3 + 512 * 2 * 2      # 48 px to layer3; 32 px, stem s1, to layer4
    assert torch.allclose(out.exp(), want, atol=1e-5) and torch.allclose(split, out, atol=1e-5)
    path = save_checkpoint(tmp_path / "ens.safetensors", ens, classes=list(CLASSES),
                           preprocessing=ens.preprocessing, provenance=ens.provenance)
    with torch.no_grad():
        assert torch.allclose(load_model(path)(x), out, atol=1e-5)
    # `dfer models` describes each member: the transformer's window on its grid, the CNN's
    # layer4 grid (32 px, stem s1: 2x2) and that it has no attention at all
    r = CliRunner().invoke(app, ["models", str(path), "--json"])
    assert r.exit_code == 0, r.output
    (ck,) = json.loads(r.stdout)["checkpoints"]
    assert [(m["block"], m["window"], m["grid"]) for m in ck["members"]] == [
        ("logo", [2, 3, 3], [2, 3, 3]), ("pool", None, [2, 2, 2])]
    table = CliRunner().invoke(app, ["models", str(path)])
    assert table.exit_code == 0 and "none (maps averaged)" in table.output, table.output


def test_the_per_frame_split_gives_the_same_output(pair):
    """`predict` runs each face's trunk once, then the clip head: the same numbers."""
    from dfer_cli.pipeline.classify import ClipClassifier
    from dfer_cli.pipeline.window import ClipJob

    ens = combine([load_model(p) for p in pair])
    x = torch.randn(2, 1, 3, 48, 48)
    with torch.no_grad():
        maps = ens.frame_features(x.flatten(0, 1))               # (B*T, K)
        split = ens.forward_head(ens.forward_tokens(maps.reshape(2, 1, -1)))
        assert torch.allclose(split, ens(x), atol=1e-5)
    crops = np.random.default_rng(0).integers(0, 255, (3, 1, 48, 48, 3), dtype=np.uint8)
    clf = ClipClassifier(ens, torch.device("cpu"))
    assert clf.split
    whole = clf.probabilities(crops)
    jobs = [ClipJob(clip=None, first=i, crops=c, keys=[(0, i)]) for i, c in enumerate(crops)]
    shared = clf.shared_probabilities(jobs)
    assert np.allclose(whole, shared, atol=1e-5) and np.allclose(whole.sum(1), 1, atol=1e-5)


def test_a_member_gets_the_crop_it_would_have_seen_alone():
    """Faces reduced to `detail` px are upsampled as `dfer eval` upsamples a still; from a
    crop made for the largest member, a smaller member must get its own crop back."""
    from dfer_cli.data.transforms import crop_matrix, warp

    rng = np.random.default_rng(3)
    low = rng.uniform(0, 255, (16, 16)).astype(np.float32)     # the face at its native 16 px
    at48 = warp(low, crop_matrix(0, 0, 16, 16, 48), 48)
    at32 = warp(low, crop_matrix(0, 0, 16, 16, 32), 32)
    A = resampling_matrix(48, 32, detail=16)
    assert A.shape == (32, 48)
    assert np.abs(A @ at48 @ A.T - at32).max() < 1e-2
    assert np.allclose(A.sum(1), 1, atol=1e-5)                 # constant images stay constant: commutes with normalising
    # without detail: the area resize of the crop
    B = resampling_matrix(48, 32)
    assert np.allclose(B @ at48 @ B.T, cv2.resize(at48, (32, 32), interpolation=cv2.INTER_AREA), atol=1e-4)


def test_the_ensemble_uses_its_detail_size_to_resample(tmp_path, pair):
    from dfer_cli.data.transforms import crop_matrix, warp

    big, small = load_model(pair[0]), load_model(pair[1])
    ens = combine([big, small])
    ens.preprocessing.detail_size = 16
    low = np.random.default_rng(4).uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    x48 = torch.from_numpy(np.stack([warp(c, crop_matrix(0, 0, 16, 16, 48), 48) for c in low]))[None, None]
    x32 = torch.from_numpy(np.stack([warp(c, crop_matrix(0, 0, 16, 16, 32), 32) for c in low]))[None, None]
    with torch.no_grad():
        want = (big(x48).softmax(-1) + small(x32).softmax(-1)) / 2
        assert torch.allclose(ens(x48).exp(), want, atol=1e-3)
        ens.preprocessing.detail_size = None                       # an area resize would give other numbers
        assert not torch.allclose(ens(x48).exp(), want, atol=1e-3)


def test_a_prior_shift_moves_the_mean_probability(pair):
    ens = combine([load_model(p) for p in pair])
    x = torch.randn(4, 1, 3, 48, 48)
    with torch.no_grad():
        before = ens(x).softmax(-1)
        counts = [80, 40, 60, 30, 20, 5, 10]
        shift_prior(ens, counts, 0.5)
        after = ens(x).softmax(-1)
    prior = torch.tensor(counts, dtype=torch.float32) / sum(counts)
    want = before * prior ** 0.5
    assert torch.allclose(after, want / want.sum(1, keepdim=True), atol=1e-5)
    assert all(torch.equal(m.head.bias, load_model(p).head.bias) for m, p in zip(ens.members, pair))


def test_saved_loaded_and_made_a_video_model(tmp_path, pair):
    ens = combine([load_model(p) for p in pair])
    shift_prior(ens, [80, 40, 60, 30, 20, 5, 10], 0.3)
    path = save_checkpoint(tmp_path / "ens.safetensors", ens, classes=ens.classes, preprocessing=ens.preprocessing,
                           provenance=ens.provenance)
    meta = read_metadata(path)
    assert meta["model"] == "ensemble" and [m["config"]["input_size"] for m in meta["config"]["members"]] == [48, 32]
    loaded = load_model(path)
    assert isinstance(loaded, Ensemble) and loaded.classes == list(CLASSES)
    x = torch.randn(2, 1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ens(x), atol=1e-5)
        video = with_num_frames(loaded, 4)
        assert isinstance(video, Ensemble) and video.config.num_frames == 4 and video.preprocessing.num_frames == 4
        assert torch.equal(video.logit_bias, loaded.logit_bias)
        # each member is made a 4-frame model, as `dfer weights export --frames 4` makes one alone
        clip = torch.randn(2, 4, 3, 48, 48)
        alone = [with_num_frames(load_model(p), 4) for p in pair]
        want = (alone[0](clip).softmax(-1) + alone[1](_area(clip, 32)).softmax(-1)) / 2
        want = want * torch.exp(loaded.logit_bias)
        assert torch.allclose(video(clip).softmax(-1), want / want.sum(1, keepdim=True), atol=1e-5)


def test_members_that_see_other_clips_are_refused_in_one_line(tmp_path, pair):
    base = load_model(pair[0])
    for name, kw, needle in (
            ("order", {"classes": list(reversed(CLASSES))}, "order.safetensors: its classes"),
            ("clip", {"frames": 4}, "clip.safetensors: takes clips of 4 frames"),
            ("colour", {"grayscale": False}, "colour.safetensors: its preprocessing grayscale")):
        other = load_model(_member(tmp_path / f"{name}.safetensors", 32, **kw))
        with pytest.raises(ValueError) as e:
            combine([base, other])
        assert needle in str(e.value) and "\n" not in str(e.value)
    nested = combine([base, load_model(pair[1])])
    with pytest.raises(ValueError, match="is an ensemble already; name its members"):
        combine([nested, base], names=["nested.safetensors", "base.safetensors"])
    with pytest.raises(ValueError, match="at least 2"):
        combine([base])


def _rewrite_header(src, dst, edit):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["dfer"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta, tensors)
    save_file(tensors, str(dst), metadata={"dfer": json.dumps(meta)})
    return dst


def test_a_damaged_ensemble_header_is_one_line(tmp_path, pair):
    ens = combine([load_model(p) for p in pair])
    good = save_checkpoint(tmp_path / "good.safetensors", ens, classes=ens.classes, preprocessing=ens.preprocessing)

    def classes(meta, _):
        meta["config"]["members"][1]["config"]["num_classes"] = 6

    def one(meta, _):
        meta["config"]["members"] = meta["config"]["members"][:1]

    def unknown(meta, _):
        meta["config"]["members"][0]["model"] = "resnet_lstm"

    def missing(_, tensors):
        del tensors["members.1.head.bias"]

    def heads(meta, _):
        meta["config"]["members"][0]["config"]["heads"] = 5

    for edit, needle in ((classes, "config.members[1].config.num_classes' is 6, expected member 0's (7)"),
                         (one, "'members', a list of 2 to 16 models"),
                         (unknown, "member 0 is a model 'resnet_lstm', unknown to this dfer"),
                         (missing, "tensor 'members.1.head.bias' of a ensemble"),
                         (heads, "'config.members[0].heads' is 5, expected a divisor")):
        bad = _rewrite_header(good, tmp_path / f"{edit.__name__}.safetensors", edit)
        with pytest.raises(CheckpointError) as e:
            load_model(bad)
        msg = str(e.value)
        assert needle in msg and msg.startswith(str(bad)) and "\n" not in msg, msg


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("video")
    small = np.asarray(Image.fromarray(face_image()).resize((240, 136)))
    return make_video(d / "face.mp4", [np.roll(small, i, axis=1) for i in range(16)], fps=8)


def test_cli_builds_an_ensemble_that_predicts_and_is_described(tmp_path, face_video):
    a = _member(tmp_path / "a.safetensors", 48, frames=8, seed=1, detail=16)
    b = _member(tmp_path / "b.safetensors", 32, frames=8, seed=2)
    out = tmp_path / "ens.safetensors"
    runner = CliRunner()
    r = runner.invoke(app, ["weights", "ensemble", str(a), str(b), "-o", str(out), "--float32"])
    assert r.exit_code == 0, r.output
    assert "2 members (48 px + 32 px)" in r.stdout and "sha256" in r.stdout
    assert load_model(out).preprocessing.detail_size == 16     # the largest member's preprocessing

    r = runner.invoke(app, ["models", str(out), "--json"])
    assert r.exit_code == 0, r.output
    (ck,) = json.loads(r.stdout)["checkpoints"]
    assert ck["model"] == "ensemble" and [m["input_size"] for m in ck["members"]] == [48, 32]
    assert ck["frames"] == 8 and ck["input_size"] == 48

    r = runner.invoke(app, ["predict", str(face_video), "-w", str(out), "--window", "1.0", "--stride", "0.5",
                            "--threads", "1"])
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    ok = [c for c in recs if c["type"] == "clip" and c["status"] == "ok"]
    assert ok and recs[-1]["model"] == "ens"
    for c in ok:
        assert list(c["probabilities"]) == list(CLASSES)
        assert math.isclose(sum(c["probabilities"].values()), 1.0, abs_tol=1e-3)


def test_cli_refuses_a_lone_member_or_a_bad_name(tmp_path):
    a = _member(tmp_path / "a.safetensors", 32)
    runner = CliRunner()
    r = runner.invoke(app, ["weights", "ensemble", str(a), "-o", str(tmp_path / "e.safetensors")])
    assert r.exit_code == 2 and "at least 2 checkpoints" in r.stderr
    r = runner.invoke(app, ["weights", "ensemble", str(a), str(a), "-o", str(tmp_path / "e.pt")])
    assert r.exit_code == 2 and "must end in .safetensors" in r.stderr
    r = runner.invoke(app, ["weights", "ensemble", str(a), str(tmp_path / "nope.safetensors"),
                            "-o", str(tmp_path / "e.safetensors")])
    assert r.exit_code == 1 and "nope.safetensors" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e.safetensors").exists()


def test_a_member_is_exported_alone_with_the_ensembles_shift(tmp_path, pair):
    counts = [80, 40, 60, 30, 20, 5, 10]
    ens = combine([load_model(p) for p in pair])
    shift_prior(ens, counts, 0.5)
    path = save_checkpoint(tmp_path / "ens.safetensors", ens, classes=ens.classes, preprocessing=ens.preprocessing,
                           provenance=ens.provenance, half=False)
    runner = CliRunner()
    out = tmp_path / "m2.safetensors"
    r = runner.invoke(app, ["weights", "export", str(path), str(out), "--member", "2", "--float32"])
    assert r.exit_code == 0, r.output
    m2 = load_model(out)
    assert m2.model_name == "logo_former" and m2.preprocessing.input_size == 32 and m2.config.input_size == 32
    assert read_metadata(out)["provenance"]["exported_from"]["member"] == 2
    x = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        raw = load_model(pair[1])(x)
        prior = torch.tensor(counts, dtype=torch.float32) / sum(counts)
        assert torch.allclose(m2(x), raw + 0.5 * prior.log(), atol=1e-5)  # the ensemble's shift, in its bias
    # the documented way back to a raw member for fine-tuning: take the shift out again
    raw_file = tmp_path / "raw.safetensors"
    r = runner.invoke(app, ["weights", "export", str(path), str(raw_file), "--member", "1", "--prior-shift", "-0.5",
                            "--float32"])
    assert r.exit_code == 0, r.output
    x48 = torch.randn(2, 1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(load_model(raw_file)(x48), load_model(pair[0])(x48), atol=1e-4)

    r = runner.invoke(app, ["weights", "export", str(path), str(tmp_path / "x.safetensors"), "--member", "3"])
    assert r.exit_code == 2 and "the ensemble has 2 members; pick 1 to 2" in r.stderr
    r = runner.invoke(app, ["weights", "export", str(pair[0]), str(tmp_path / "y.safetensors"), "--member", "1"])
    assert r.exit_code == 2 and "is a single logo_former; leave --member out" in r.stderr


def test_training_from_an_ensemble_names_the_member_export(tmp_path, pair):
    from test_train import make_dataset

    ens = combine([load_model(p) for p in pair])
    path = save_checkpoint(tmp_path / "ens.safetensors", ens, classes=ens.classes, preprocessing=ens.preprocessing,
                           provenance=ens.provenance)
    root = make_dataset(tmp_path / "data", per_class=2, val_per_class=1)
    r = CliRunner().invoke(app, ["train", "--data-root", str(root), "--frames", "1", "--input-size", "48",
                                 "--init", str(path), "--epochs", "1", "--output", str(tmp_path / "run")])
    assert r.exit_code == 1
    assert "an ensemble of 2 models" in r.stderr and "--member 1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_ensemble_teaches_as_the_mean_of_its_members(tmp_path, pair):
    from dfer_cli.train.distill import Teachers

    ens = combine([load_model(p) for p in pair])
    path = save_checkpoint(tmp_path / "ens.safetensors", ens, classes=ens.classes, preprocessing=ens.preprocessing,
                           provenance=ens.provenance, half=False)
    teachers = Teachers([path], list(CLASSES), Preprocessing(input_size=48, num_frames=1, grayscale=True),
                        num_frames=1)
    x = torch.randn(2, 1, 3, 48, 48)
    with torch.no_grad():
        want = (load_model(pair[0])(x).softmax(-1) + load_model(pair[1])(_area(x, 32)).softmax(-1)) / 2
    torch.testing.assert_close(teachers.probabilities(x, 1.0), want, atol=1e-5, rtol=1e-4)

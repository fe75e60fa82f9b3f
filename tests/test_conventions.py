"""Conventions that no single stage's test sees: the channel order from decoding to the
model's input, what kind of transform alignment is and where its template lands, the
checkpoint format version, how corpus shards name an input, and the order clips are handed
out in when they finish classification out of order.

Each test here fails when the convention it names is broken in the library (a channel swap
anywhere between decoding and the model, a full affine fit, a template scaled by size - 1,
a newer checkpoint format accepted, a shard keyed by the path as typed, a clip handed out
before an earlier one that is still waiting for its batch).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from synth import make_video
from typer.testing import CliRunner

# Library internals, in one place (module paths may change when the package is reorganised).
import dfer_cli
from dfer_cli.checkpoint import META_KEY, CheckpointError, save_checkpoint
from dfer_cli.cli.main import app
from dfer_cli.corpus.plan import input_key, plan_corpus, result_name, shard_of
from dfer_cli.faces.align import align_face, alignment_matrix
from dfer_cli.faces.detect import Detection
from dfer_cli.labels import CLASSES
from dfer_cli.models import create_model
from dfer_cli.pipeline import ClipClassifier, ClipEmitter, ClipJob
from dfer_cli.preprocess import DEFAULT_TEMPLATE, FER2013_TEMPLATE, Preprocessing
from dfer_cli.results import ClipPrediction

# --------------------------------------------------------------------------- RGB end to end

# A face-coloured region whose three channels all differ, so that any reordering of them
# (RGB read as BGR, or a rotation of the channels) changes what the model sees.
SKIN = (200, 120, 30)
FRAME_W, FRAME_H = 128, 96
FACE_SCALE, FACE_AT = 40.0, np.array([44.0, 28.0])   # landmarks: template x 40 px, shifted


def _face_landmarks() -> np.ndarray:
    return np.asarray(DEFAULT_TEMPLATE, dtype=np.float64) * FACE_SCALE + FACE_AT


def _draw_coloured_face(img, i, t):
    """A filled ellipse of SKIN (covering the whole aligned crop) on the grey background."""
    yy, xx = np.ogrid[:FRAME_H, :FRAME_W]
    img[((xx - 64) / 40.0) ** 2 + ((yy - 48) / 42.0) ** 2 <= 1.0] = SKIN


class FixedFaceDetector:
    """One face per frame at the painted landmarks; notes the pixel at the face's centre of
    every frame it is handed (what a real detector would see)."""

    def __init__(self):
        self.centre_pixels = []

    def detect(self, frames):
        lm = _face_landmarks()
        box = np.array([FACE_AT[0], FACE_AT[1], FACE_AT[0] + FACE_SCALE, FACE_AT[1] + FACE_SCALE])
        self.centre_pixels += [f[48, 64].astype(int).tolist() for f in frames]
        return [[Detection(box.copy(), 0.99, lm.copy())] for _ in frames]


class ChannelProbe(torch.nn.Module):
    """A classifier whose answer is the colour of its input: logits (R - B, B - R) of the
    mean normalised channels; keeps every input it is given."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))   # so that predict_video can find its device
        self.preprocessing = Preprocessing(input_size=32, num_frames=4)
        self.classes = ["reddish", "bluish"]
        self.inputs = []

    def forward(self, x):   # x (B, T, 3, S, S), normalised
        self.inputs.append(x.detach().clone())
        r, b = x[:, :, 0].mean(dim=(1, 2, 3)), x[:, :, 2].mean(dim=(1, 2, 3))
        return torch.stack([r - b, b - r], dim=1)


def test_colour_reaches_the_model_in_rgb_order_from_decode_through_align_and_normalise(tmp_path):
    """A video with a strongly coloured face, written from RGB arrays, through predict_video:
    the detector is handed RGB frames, and the model's input, with the checkpoint's
    normalisation undone, is the face's RGB colour channel by channel."""
    path = make_video(tmp_path / "coloured.mp4", frames=20, fps=10, size=(FRAME_W, FRAME_H),
                      draw=_draw_coloured_face)
    detector, model = FixedFaceDetector(), ChannelProbe().eval()
    result = dfer_cli.predict_video(model, path, window=1.0, stride=1.0, detector=detector, device="cpu")

    assert detector.centre_pixels, "the detector was never called"
    for px in detector.centre_pixels:
        assert np.abs(np.array(px) - SKIN).max() <= 8, f"detector got {px} at the face centre, painted {SKIN} (RGB)"
    assert len(result.clips) == 2 and model.inputs
    x = torch.cat(model.inputs)                                           # (clips, T, 3, S, S)
    pre = model.preprocessing
    mean, std = torch.tensor(pre.mean).view(1, 1, 3, 1, 1), torch.tensor(pre.std).view(1, 1, 3, 1, 1)
    pixels = (x * std + mean) * 255.0                                     # back to 0..255, as the crop was
    seen = pixels.mean(dim=(0, 1, 3, 4)).tolist()                         # per channel, all clips and frames
    assert np.abs(np.array(seen) - SKIN).max() <= 8, \
        f"the model saw the face as {np.round(seen, 1)}, painted {SKIN} (RGB)"
    assert [c.label for c in result.clips] == ["reddish", "reddish"]


# --------------------------------------------------------------------------- alignment transform

def _least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 [[a, -b, tx], [b, a, ty]] minimising sum |M src_i - dst_i|^2, by linear least
    squares over (a, b, tx, ty): x' = a x - b y + tx, y' = b x + a y + ty."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        rhs += [u, v]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def _least_squares_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    A = np.c_[src, np.ones(len(src))]
    m, *_ = np.linalg.lstsq(A, dst, rcond=None)
    return m.T


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, FER2013_TEMPLATE], ids=["default", "fer2013"])
def test_alignment_is_the_least_squares_similarity_not_an_affine_fit(template):
    """Landmarks that are a stretched and sheared copy of the template: no similarity fits
    them exactly, so a full affine fit (which would) and the least-squares similarity differ,
    and the alignment must be the latter: rotation, one scale and a translation."""
    size = 112
    shear = np.array([[1.3, 0.45], [0.1, 0.75]])              # anisotropic scale and shear
    lms = (np.asarray(template) * 150.0) @ shear.T + np.array([60.0, 35.0])
    dst = np.asarray(template) * size
    m = alignment_matrix(lms, size, template)
    assert m.shape == (2, 3)
    assert m[0, 0] == pytest.approx(m[1, 1], abs=1e-9) and m[0, 1] == pytest.approx(-m[1, 0], abs=1e-9), \
        f"not a similarity [[a, -b, tx], [b, a, ty]]: {m.tolist()}"
    want = _least_squares_similarity(lms, dst)
    assert np.abs(m[:, :2] - want[:, :2]).max() < 1e-4 and np.abs(m[:, 2] - want[:, 2]).max() < 1e-2, \
        f"not the least-squares similarity over all 5 points: {m.tolist()} != {want.tolist()}"
    # the landmarks do tell the two kinds of fit apart
    assert np.abs(_least_squares_affine(lms, dst) - want).max() > 0.05


# --------------------------------------------------------------------------- template scale

def _bilinear(img: np.ndarray, x: float, y: float) -> np.ndarray:
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    return ((1 - fx) * (1 - fy) * img[y0, x0] + fx * (1 - fy) * img[y0, x0 + 1]
            + (1 - fx) * fy * img[y0 + 1, x0] + fx * fy * img[y0 + 1, x0 + 1])


@pytest.mark.parametrize("size", [32, 48, 112])
def test_template_points_land_at_template_times_size_in_crop_pixels(size):
    """The documented convention (faces.align_face, Preprocessing.template): a unit template
    point p lands at p x size in the size x size crop, whose pixel (i, j) is sampled at crop
    coordinates (i, j) (OpenCV's; not size - 1, not pixel centres at i + 0.5).

    Landmarks that are an exact similarity image of the template are mapped there by the
    matrix; and on the pixels: warping an image whose pixels hold their own (x, y)
    coordinates, the crop read at p x size (bilinearly: exact for a linear image) holds the
    source landmark's coordinates."""
    angle, scale = np.deg2rad(12.0), 150.0
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    lms = np.asarray(DEFAULT_TEMPLATE) @ rot.T + np.array([70.0, 40.0])
    expected = np.asarray(DEFAULT_TEMPLATE, dtype=np.float64) * size     # the convention, written out
    m = alignment_matrix(lms, size, DEFAULT_TEMPLATE)
    mapped = np.c_[lms, np.ones(5)] @ m.T
    assert np.abs(mapped - expected).max() < 1e-3, \
        f"template points land at {mapped.round(3).tolist()}, not template x {size} = {expected.round(3).tolist()}"

    h, w = 300, 300
    coords = np.zeros((h, w, 3), np.float32)
    coords[..., 0], coords[..., 1] = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    crop = align_face(coords, lms, size, DEFAULT_TEMPLATE)
    for (px, py), (lx, ly) in zip(expected, lms):
        got = _bilinear(crop, px, py)[:2]
        # one crop pixel is 150 / size source pixels; OpenCV's warp is exact to 1/32 of a pixel
        assert np.abs(got - (lx, ly)).max() < 0.1, \
            f"crop pixel ({px:.2f}, {py:.2f}) shows source ({got[0]:.2f}, {got[1]:.2f}), " \
            f"landmark at ({lx:.2f}, {ly:.2f})"


# --------------------------------------------------------------------------- checkpoint format

def test_a_checkpoint_of_a_newer_format_is_refused_naming_the_file_and_the_fix(tmp_path):
    """Saved by this dfer, then its header's format_version raised by one: load_model (and
    `dfer predict -w`) refuse it in one line naming the file and saying to upgrade dfer,
    while the unchanged file loads."""
    from dfer_cli.checkpoint import FORMAT_VERSION

    torch.manual_seed(0)
    model = create_model("logo_former", dim=16, depth=1, heads=2, input_size=32, num_frames=4)
    good = save_checkpoint(tmp_path / "current.safetensors", model, classes=CLASSES,
                           preprocessing=Preprocessing(input_size=32, num_frames=4))
    assert dfer_cli.load_model(good).classes == list(CLASSES)

    with safe_open(str(good), framework="pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format_version"] == FORMAT_VERSION
    meta["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "from_the_future.safetensors"
    save_file(tensors, str(newer), metadata={META_KEY: json.dumps(meta)})

    with pytest.raises(CheckpointError) as e:
        dfer_cli.load_model(str(newer))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{newer}: "), msg
    assert f"newer dfer (format {FORMAT_VERSION + 1})" in msg and "upgrade dfer" in msg, msg

    video = make_video(tmp_path / "v.mp4", frames=5, fps=10)
    r = CliRunner().invoke(app, ["predict", str(video), "-w", str(newer), "--device", "cpu"])
    (line,) = r.stderr.splitlines()
    assert r.exit_code == 1 and str(newer) in line and "upgrade dfer" in line, (r.exit_code, r.stderr)


# --------------------------------------------------------------------------- corpus shards

def test_one_file_named_three_ways_is_one_input_in_one_shard(tmp_path, monkeypatch):
    """The same video given as a relative path, an absolute path and through a symlinked
    folder: one key (its resolved path), one result name, counted once, and in exactly one
    of the shards whichever name each shard's run was given."""
    real = tmp_path / "videos"
    real.mkdir()
    video = real / "clip.mp4"
    video.write_bytes(b"not decoded here")
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    names = [os.path.join("videos", "clip.mp4"), str(video), str(tmp_path / "linked" / "clip.mp4"),
             os.path.join(".", "linked", "..", "linked", "clip.mp4")]
    assert not os.path.isabs(names[0]) and Path(names[2]).parent.is_symlink()

    keys = {input_key(n) for n in names}
    assert keys == {os.path.realpath(video)}, f"one file, {len(keys)} keys: {sorted(keys)}"
    assert len({result_name(k, "jsonl") for k in keys}) == 1

    whole = plan_corpus([(n, None) for n in names], tmp_path / "out", "jsonl", "sha", {})
    assert len(whole.todo) == 1 and len(whole.keys) == 1

    for n in (2, 3, 5, 8):
        for name in names:
            owners = [k for k in range(1, n + 1)
                      if plan_corpus([(name, None)], tmp_path / "out", "jsonl", "sha", {}, shard=(k, n)).todo]
            assert owners == [shard_of(os.path.realpath(video), n)], \
                f"{name!r} is in shards {owners} of {n}; " \
                f"as its resolved path it is in {shard_of(os.path.realpath(video), n)}"


# --------------------------------------------------------------------------- emit order

def _clip(track: int, start: float) -> ClipPrediction:
    return ClipPrediction("v.mp4", track, start, start + 2.0, [0, 0, 1, 1], None, None, None)


class Brightness(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.preprocessing = Preprocessing(input_size=4, num_frames=2)
        self.classes = ["bright", "dark"]

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3, 4))
        return torch.stack([m, -m], dim=1)


def test_clips_come_out_in_start_track_order_when_a_later_clip_is_classified_first():
    """Clips of windows at slots 7 and 8 are made and classified first; the clip of slot 5
    (a track's end-aligned window, laid later) waits for its batch while the window stage's
    bound has passed slot 8. Nothing may be handed out while it waits: the emitted order is
    by (start, track), through the classify stage's bound."""
    crops = np.full((2, 4, 4, 3), 200, np.uint8)
    late_first = [ClipJob(7, _clip(1, 3.5), crops), ClipJob(8, _clip(0, 4.0), crops)]
    early = ClipJob(5, _clip(2, 2.5), crops)
    steps = [SimpleNamespace(jobs=late_first, bound=5, final=False),     # batch of 2: classified now
             SimpleNamespace(jobs=[early], bound=10, final=False),       # waits: 1 of a batch of 2
             SimpleNamespace(jobs=[], bound=10**12, final=True)]         # the end: flushed
    classifier = ClipClassifier(Brightness().eval(), torch.device("cpu"), batch_size=2)
    handed = []
    emitter = ClipEmitter(lambda c: handed.append((c.start, c.track)))
    for step, (done, bound) in zip(steps, classifier.run(steps)):
        emitter.push(done, bound)
        if step.jobs == [early]:
            assert [f for f, _ in done] == [] and handed == [], \
                f"handed out {handed} while the clip at slot 5 still waits for its batch"
    assert handed == [(2.5, 2), (3.5, 1), (4.0, 0)]
    assert [c.label for c in emitter.clips] == ["bright"] * 3

"""Records that say where they came from, checked against docs/schema/records.schema.json on
real `dfer predict` output; and the detector knobs (--min-face, --min-score) and
`dfer prepare --template` reaching the code that uses them.

The schema is validated with the `jsonschema` package (a `test` extra).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synth import face_image, make_video
from typer.testing import CliRunner

from dfer_cli.cli.main import app
from dfer_cli.labels import CLASSES

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "schema" / "records.schema.json").read_text())
OPTS = ["--window", "1.0", "--stride", "0.5", "--threads", "1", "--device", "cpu", "-q"]


def validator():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA)


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    from PIL import Image

    small = np.asarray(Image.fromarray(face_image()).resize((240, 136)))
    d = tmp_path_factory.mktemp("media")
    return make_video(d / "face.mp4", [np.roll(small, i, axis=1) for i in range(20)], fps=10)


def invoke(args):
    r = CliRunner().invoke(app, ["predict", *args])
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def test_jsonl_and_json_output_follow_the_schema_and_name_their_origin(ckpt, face_video, tmp_path):
    import dfer_cli
    from dfer_cli.weights import file_sha256

    out = tmp_path / "out.jsonl"
    r = invoke([str(face_video), "-w", str(ckpt), *OPTS, "-f", "jsonl", "-o", str(out)])
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    v = validator()
    for rec in records:
        errors = [e.message for e in v.iter_errors(rec)]
        assert not errors, (rec, errors)
    clips = [x for x in records if x["type"] == "clip"]
    (video,) = [x for x in records if x["type"] == "video"]
    assert clips and all(c["status"] == "ok" for c in clips)
    # where it came from: a name, never the machine's path; the file's hash; versions; settings
    assert video["model"] == "tiny_face_model" and "/" not in video["model"]
    assert video["weights_sha256"] == file_sha256(ckpt)
    assert video["dfer_version"] == dfer_cli.__version__ and video["schema_version"] == "1.0"
    assert (video["window"], video["stride"], video["fps"]) == (1.0, 0.5, 10.0)
    # frames: the first and last video frames sampled inside each clip's time span (10 fps)
    for c in clips:
        first, last = c["frames"]
        assert c["start"] <= first / 10 + 1e-6 and last / 10 <= c["end"] + 1e-6 and first < last
    # 8 samples per 1 s window: the first at 0.0625 s is nearest frame 1 (0.1 s), the last
    # at 1.9375 s is frame 19
    assert clips[0]["frames"][0] == 1 and clips[-1]["frames"][1] == 19

    doc = tmp_path / "out.json"
    r = invoke([str(face_video), "-w", str(ckpt), *OPTS, "-f", "json", "-o", str(doc)])
    assert r.exit_code == 0, r.output
    (whole,) = json.loads(doc.read_text())
    assert not list(v.iter_errors(whole))
    assert whole["clips"] == clips and {k: x for k, x in whole.items() if k != "clips"} == video


def test_the_schema_refuses_what_the_records_must_not_be(ckpt, face_video, tmp_path):
    """The schema is not vacuous: a path as model, a clip without frames, an unknown field
    and a misspelt type are all refused."""
    from dfer_cli.results import ClipPrediction, TrackSummary, VideoResult

    p = {c: 1 / 7 for c in CLASSES}
    clip = ClipPrediction("a.mp4", 0, 0.0, 1.0, [1, 2, 3, 4], p, "happy", 0.2, frames=(0, 9)).to_record()
    video = VideoResult("a.mp4", 1.0, "tiny", list(CLASSES), [], [TrackSummary(0, 0.0, 1.0, 1, "happy", p)],
                        weights_sha256="ab" * 32, fps=10.0, window=1.0, stride=0.5).to_record()
    v = validator()
    assert v.is_valid(clip) and v.is_valid(video)
    assert v.is_valid({"type": "error", "video": "x.mp4", "error": "no such file"})
    bad = [dict(video, model="/home/me/runs/best.safetensors"), dict(video, weights_sha256="xyz"),
           {k: x for k, x in clip.items() if k != "frames"}, dict(clip, frames=[3]), dict(clip, extra=1),
           dict(clip, type="clips"), {k: x for k, x in video.items() if k != "schema_version"}]
    for rec in bad:
        assert not v.is_valid(rec), rec


def test_min_face_and_min_score_reach_the_detector(ckpt, face_video, monkeypatch):
    import dfer_cli.predict
    from dfer_cli.results import VideoResult

    seen = {}

    def fake(model, path, **kw):
        seen.update(kw)
        return VideoResult(str(path), 2.0, "tiny", list(CLASSES), window=1.0, stride=0.5)

    monkeypatch.setattr(dfer_cli.predict, "predict_video", fake)
    r = invoke([str(face_video), "-w", str(ckpt), *OPTS, "--min-face", "40", "--min-score", "0.75"])
    assert r.exit_code == 0, r.output
    assert seen["min_face"] == 40 and seen["min_score"] == 0.75
    seen.clear()
    r = invoke([str(face_video), "-w", str(ckpt), *OPTS])
    assert r.exit_code == 0 and "min_score" not in seen and "min_face" not in seen  # the library's defaults
    r = invoke([str(face_video), "-w", str(ckpt), *OPTS, "--min-score", "1.5"])
    assert r.exit_code == 2


def test_detector_keeps_no_face_smaller_than_min_face():
    from dfer_cli.faces.detect import FaceDetector

    img = face_image()  # the face's box is about 150 x 210 px (tests/test_faces.py)
    (d,) = FaceDetector(min_face=100).detect([img])[0]
    side = min(d.box[2] - d.box[0], d.box[3] - d.box[1])
    assert 120 < side < 180
    # a face whose box side is under --min-face is not kept, one just over it is
    assert FaceDetector(min_face=side + 5).detect([img]) == [[]]
    (kept,) = FaceDetector(min_face=side - 5).detect([img])[0]
    assert kept.score > 0.9
    # --min-score: the same face, dropped once the threshold is above its confidence
    assert FaceDetector(min_face=100, min_score=0.5).detect([img])[0]
    if d.score < 1.0:
        assert FaceDetector(min_face=100, min_score=float(np.nextafter(d.score, 2.0))).detect([img]) == [[]]


def test_prepare_takes_template_min_face_and_min_score(tmp_path, monkeypatch):
    import dfer_cli.data.prepare
    from dfer_cli.preprocess import FER2013_TEMPLATE, zoom_template

    seen = {}

    def fake(src, dst, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(dfer_cli.data.prepare, "prepare", fake)
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", str(tmp_path), str(tmp_path / "out"), "--template", "fer2013",
                            "--template-scale", "0.9", "--min-face", "48", "--min-score", "0.8", "-q"])
    assert r.exit_code == 0, r.output
    assert np.allclose(seen["template"], zoom_template(FER2013_TEMPLATE, 0.9))
    assert seen["detector_options"]["min_face"] == 48 and seen["detector_options"]["min_score"] == 0.8
    ten = ",".join(str(c) for p in FER2013_TEMPLATE for c in p)
    r = runner.invoke(app, ["prepare", str(tmp_path), str(tmp_path / "out"), "--template", ten, "-q"])
    assert r.exit_code == 0 and np.allclose(seen["template"], FER2013_TEMPLATE)
    r = runner.invoke(app, ["prepare", str(tmp_path), str(tmp_path / "out"), "--template", "1,2,3", "-q"])
    assert r.exit_code == 2 and "--template needs" in r.output

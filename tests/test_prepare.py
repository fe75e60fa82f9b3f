"""dfer prepare: aligned frame folders mirroring the source tree, manifest, resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
from synth import make_video

from dfer_cli.data import scan
from dfer_cli.data.prepare import prepare, read_manifest
from dfer_cli.faces.detect import Detection


class BlobDetector:
    """Stands in for MTCNN: one 'face' at a fixed place in every frame whose centre pixel
    is bright, none otherwise. Counts calls so the test can see skipped videos."""

    def __init__(self):
        self.frames_seen = 0

    def detect(self, frames):
        self.frames_seen += len(frames)
        out = []
        for f in frames:
            h, w = f.shape[:2]
            if f[h // 2, w // 2].mean() > 128:
                lm = np.array([[0.4 * w, 0.4 * h], [0.6 * w, 0.4 * h], [0.5 * w, 0.5 * h],
                               [0.42 * w, 0.62 * h], [0.58 * w, 0.62 * h]])
                out.append([Detection(np.array([0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h]), 0.99, lm)])
            else:
                out.append([])
        return out


def _bright(img, i, t):
    img[:] = 200


@pytest.fixture()
def afew_raw(tmp_path):
    src = tmp_path / "AFEW"
    for split, emo, name, draw in (("Train", "Happy", "001", _bright), ("Train", "Sad", "002", _bright),
                                   ("Val", "Angry", "003", None)):
        (src / split / emo).mkdir(parents=True, exist_ok=True)
        make_video(src / split / emo / f"{name}.avi", frames=6, fps=10, codec="mpeg4", size=(64, 48), draw=draw)
    (src / "Val" / "Angry" / "004.avi").write_bytes(b"garbage, not a video")
    return src


def test_prepare_afew_tree_manifest_and_resume(afew_raw, tmp_path):
    dst = tmp_path / "prepared"
    det = BlobDetector()
    results = prepare(str(afew_raw), str(dst), size=24, detector=det)
    status = {r.video: r.status for r in results}
    assert status == {"Train/Happy/001.avi": "ok", "Train/Sad/002.avi": "ok",
                      "Val/Angry/003.avi": "no_face", "Val/Angry/004.avi": "failed"}
    frames = sorted((dst / "Train" / "Happy" / "001").iterdir())
    assert [p.name for p in frames] == [f"{i:05d}.jpg" for i in range(1, 7)]
    import cv2
    assert cv2.imread(str(frames[0])).shape == (24, 24, 3)
    failed = next(r for r in results if r.status == "failed")
    assert "004.avi" in failed.error
    manifest = read_manifest(str(dst))
    assert manifest["Train/Happy/001.avi"]["faces"] == 6
    assert not list(dst.rglob("*.partial"))
    # the prepared tree is what the AFEW adapter reads
    train, _ = scan("afew", dst, "train")
    assert len(train) == 2
    # resume: finished and no-face videos are skipped, the failed one is retried
    seen = det.frames_seen
    again = prepare(str(afew_raw), str(dst), size=24, detector=det)
    assert {r.video: r.status for r in again}["Train/Happy/001.avi"] == "skipped"
    assert {r.video: r.status for r in again}["Val/Angry/003.avi"] == "skipped"
    assert {r.video: r.status for r in again}["Val/Angry/004.avi"] == "failed"
    assert det.frames_seen == seen  # no video decoded and detected twice
    lines = (dst / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["status"] == "failed"


def test_prepare_redoes_a_clip_whose_folder_is_missing(afew_raw, tmp_path):
    dst = tmp_path / "prepared"
    prepare(str(afew_raw), str(dst), size=16, detector=BlobDetector())
    import shutil
    shutil.rmtree(dst / "Train" / "Sad" / "002")
    again = prepare(str(afew_raw), str(dst), size=16, detector=BlobDetector())
    assert {r.video: r.status for r in again}["Train/Sad/002.avi"] == "ok"
    assert len(list((dst / "Train" / "Sad" / "002").iterdir())) == 6


def test_prepare_fps_sampling(afew_raw, tmp_path):
    results = prepare(str(afew_raw / "Train"), str(tmp_path / "p"), size=16, fps=5, detector=BlobDetector())
    ok = next(r for r in results if r.status == "ok")
    assert ok.frames == 3 and ok.faces == 3  # 6 frames at 10 fps sampled at 5 fps


def test_prepare_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        prepare(str(tmp_path / "nope"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        prepare(str(tmp_path / "empty"), str(tmp_path / "out"))


@pytest.mark.slow
def test_prepare_real_face_with_mtcnn(tmp_path):
    from synth import face_image

    face = face_image()
    src = tmp_path / "src" / "happy"
    src.mkdir(parents=True)
    h, w = face.shape[:2]
    make_video(src / "f.mp4", frames=[face] * 3, fps=5, size=(w - w % 2, h - h % 2))
    results = prepare(str(tmp_path / "src"), str(tmp_path / "dst"), size=48)
    assert results[0].status == "ok" and results[0].faces == 3


def test_prepare_names_a_file_given_as_src(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_text("not a video")
    with pytest.raises(ValueError, match=r"clip\.mp4 is a file: SRC is the folder holding the videos"):
        prepare(str(video), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="does not exist: pass the folder holding the videos"):
        prepare(str(tmp_path / "nope"), str(tmp_path / "out"))

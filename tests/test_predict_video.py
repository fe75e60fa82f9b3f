import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from synth import DATA_DIR, face_image, make_video, moving_blobs, paste, tiny_model

import dfer_cli
from dfer_cli.labels import CLASSES
from dfer_cli.video.sampling import WindowPlan


@pytest.fixture(scope="module")
def model():
    return tiny_model(16)


@pytest.fixture(scope="module")
def face_crop():
    face = face_image()[60:310, 170:410]  # the real face with some margin
    return cv2.resize(face, (96, 100), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("fps", [10, 4])  # 4 fps: slower than the 8 Hz sampling grid, frames repeat
def test_two_faces_moving_apart_keep_two_tracks(tmp_path, model, face_crop, fps):
    def draw(img, i, t):  # two real faces drifting apart, 10 px per second each
        paste(img, face_crop, int(70 - 10 * t), 30)
        paste(img, face_crop, int(170 + 10 * t), 40)
    path = make_video(tmp_path / "two.mp4", frames=3 * fps, fps=fps, size=(336, 180), draw=draw)
    streamed = []
    res = dfer_cli.predict_video(model, path, all_faces=True, on_clip=streamed.append)
    assert streamed == res.clips
    assert [(c.start, c.end) for c in res.clips] == [(0.0, 2.0), (0.0, 2.0), (1.0, 3.0), (1.0, 3.0)]
    assert sorted({c.track for c in res.clips}) == [0, 1]
    left_track = min(res.clips[:2], key=lambda c: c.box[0]).track
    for c in res.clips:
        left = c.track == left_track
        assert (c.box[2] < 168) if left else (c.box[0] > 168)  # a track never jumps sides
        assert c.status == "ok" and c.label in CLASSES
        assert sum(c.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert c.confidence == max(c.probabilities.values())
    assert [t.track for t in res.tracks] == [0, 1] and all(t.clips == 2 for t in res.tracks)
    mean0 = np.mean([[c.probabilities[k] for k in CLASSES] for c in res.clips if c.track == 0], axis=0)
    assert [res.tracks[0].probabilities[k] for k in CLASSES] == pytest.approx(mean0, abs=1e-3)
    # default: one face per window, the same (most persistent / largest) one throughout
    single = dfer_cli.predict_video(model, path)
    assert len(single.clips) == 2 and len({c.track for c in single.clips}) == 1


def face_throughout_windows(duration, window, stride, num_frames=16):
    """(start, end) of the clips of a face seen on every grid slot of a video: windows laid
    on its span, the whole grid (clips.track_windows)."""
    from dfer_cli.video.sampling import track_windows

    plan = WindowPlan(duration, window, stride, num_frames)
    end = max(duration, plan.window)
    return [(f * plan.step, min((f + num_frames) * plan.step, end))
            for f in track_windows(0, plan.num_grid - 1, num_frames, plan.stride_slots)]


def rolling_face(n):
    """n frames of the real face (240x136), shifted 1 px right per frame."""
    small = cv2.resize(face_image(), (240, 136), interpolation=cv2.INTER_AREA)
    return [np.roll(small, i, axis=1) for i in range(n)]


class RecordingDetector:
    """The real detector, noting a fingerprint of every frame it is asked about."""

    def __init__(self):
        from dfer_cli.predict import get_detector

        self.detector, self.frames = get_detector(), []

    def detect(self, frames):
        self.frames += [hashlib.sha1(f.tobytes()).hexdigest() for f in frames]
        return self.detector.detect(frames)


# A 16-frame model samples every window / 16 s: 1/16 s for a 1 s window, 1/8 s for 2 s. A video
# slower than that fills several grid slots with one frame (2 or 4 here; none at 8 fps, 2 s).
# 2 s of video, and one frame more (its last frame is then a scheduled detection that repeats).
@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("fps, window", [(8, 1.0), (8, 2.0), (4, 1.0), (4, 2.0)])
def test_slow_video_frames_repeating_on_the_grid_are_classified(tmp_path, model, fps, window, extra):
    n = 2 * fps + extra
    path = make_video(tmp_path / "slow.mp4", rolling_face(n), fps=fps)
    det = RecordingDetector()
    res = dfer_cli.predict_video(model, path, window=window, stride=window / 2, detector=det)
    assert [(c.start, c.end) for c in res.clips] == face_throughout_windows(n / fps, window, window / 2)
    assert all(c.status == "ok" and c.label in CLASSES for c in res.clips)
    assert {c.track for c in res.clips} == {0} and [t.track for t in res.tracks] == [0]
    # each distinct frame is detected once at most (the tracker never gets the same time twice):
    # every second frame, plus the last one when the schedule misses it
    assert len(det.frames) == len(set(det.frames))
    assert (n + 1) // 2 <= len(det.frames) <= (n + 1) // 2 + 1


def test_sparse_detection_keeps_a_slow_face_in_one_track(tmp_path, model):
    # 2 fps and detecting every 3rd frame would put detections 1.5 s apart, more than the
    # tracker's max_gap (1 s), splitting the face in two tracks; the frame before is detected too
    path = make_video(tmp_path / "slow.mp4", rolling_face(6), fps=2)
    res = dfer_cli.predict_video(model, path, window=1.0, stride=0.5, detect_every=3)
    assert [(c.start, c.end) for c in res.clips] == face_throughout_windows(3.0, 1.0, 0.5)
    assert all(c.status == "ok" for c in res.clips) and {c.track for c in res.clips} == {0}


def test_cut_to_no_face_gives_no_clips_there(model):
    path = DATA_DIR / "face_then_no_face_hevc.mov"  # real HEVC: a face, a cut at ~2.4 s, a title card
    res = dfer_cli.predict_video(model, path, all_faces=True)
    assert res.duration == pytest.approx(6.42, abs=0.05)
    # windows are laid on the face's own span: none straddles the cut (the video-wide 2-4 s
    # window used to, unclassified, "face missing in 13/16 frames"), and the last one ends
    # where the face does
    assert res.clips and all(c.status == "ok" for c in res.clips)
    assert all(c.end <= 2.4 + 0.125 for c in res.clips)
    assert res.clips[-1].end > 2.2
    assert [c.start for c in res.clips] == sorted(c.start for c in res.clips)
    assert len(res.tracks) == 1 and res.tracks[0].clips == len(res.clips)
    # where the face was, for --annotate: only before the cut
    (seen,) = res.faces.values()
    assert seen and max(t for t, _ in seen) < 2.4 and min(t for t, _ in seen) < 0.2


def test_video_without_faces_is_not_an_error(tmp_path, model):
    path = make_video(tmp_path / "blobs.mp4", frames=25, fps=10, size=(160, 120), draw=moving_blobs())
    progress = []
    res = dfer_cli.predict_video(model, path, progress=lambda t, d: progress.append((t, d)))
    assert res.clips == [] and res.tracks == []
    assert res.duration == pytest.approx(2.5, abs=0.01)
    assert res.to_record()["tracks"] == []
    assert progress and progress[-1][1] == pytest.approx(2.5, abs=0.01)


def test_bad_file_raises_video_error(tmp_path, model):
    from dfer_cli.video.decode import VideoError

    bad = Path(tmp_path / "x.mp4")
    bad.write_text("not a video")
    with pytest.raises(VideoError, match="x.mp4"):
        dfer_cli.predict_video(model, bad)


def test_track_summary_span_covers_unclassified_clips_as_documented():
    """start/end of a track summary span all its clips, including those not classified
    (face missing); clips/label/probabilities cover the classified ones. docs/predict.md
    says so (it used to say only 'seconds during which the track has clips')."""
    from dfer_cli.predict import summarize
    from dfer_cli.results import ClipPrediction

    def p(top):
        return {c: (0.7 if c == top else 0.05) for c in CLASSES}

    box = [0.0, 0.0, 10.0, 10.0]
    clips = [ClipPrediction("v.mp4", 0, 0.0, 2.0, box, None, None, None, "face missing in 12/16 frames"),
             ClipPrediction("v.mp4", 0, 1.0, 3.0, box, p("sad"), "sad", 0.7),
             ClipPrediction("v.mp4", 0, 2.0, 4.0, box, p("sad"), "sad", 0.7),
             ClipPrediction("v.mp4", 0, 3.0, 5.0, box, None, None, None, "face missing in 9/16 frames"),
             ClipPrediction("v.mp4", 1, 0.0, 2.0, box, None, None, None, "face missing in 16/16 frames")]
    t0, t1 = summarize(clips, list(CLASSES))
    assert (t0.start, t0.end, t0.clips, t0.label) == (0.0, 5.0, 2, "sad")
    assert t0.probabilities["sad"] == pytest.approx(0.7)
    assert (t1.start, t1.end, t1.clips, t1.label, t1.probabilities) == (0.0, 2.0, 0, None, None)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "predict.md").read_text()
    row = next(line for line in doc.split("Track summary", 1)[1].splitlines() if line.startswith("| `start`"))
    assert "classified or not" in row and "face missing" in row


def face_from(n, appear, fps=10):
    """n frames of a grey 240x136 background; the real face (shifted 1 px per frame) from
    frame `appear` on."""
    faces = rolling_face(n)
    return [f if i >= appear else np.full_like(f, 90) for i, f in enumerate(faces)]


def test_face_seen_only_at_the_end_gets_a_classified_clip(tmp_path, model):
    # 4.4 s (44 frames at 10 fps); the face is there for the last 1.2 s (from 3.2 s). The
    # video-wide windows (2 s, stride 1 s) end at 4.0 s (the 0.4 s tail is less than half a
    # stride), and the best of them, 2-4 s, sees the face in 7 of its 16 frames: "face
    # missing in 9/16", no label at all for that face.
    path = make_video(tmp_path / "late.mp4", face_from(44, 32), fps=10)
    plan = WindowPlan(4.4, 2.0, 1.0, 16)
    assert plan.windows[-1].end == 4.0
    assert max(sum(plan.time(k) > 3.15 for k in plan.slots(w)) for w in plan.windows) == 7  # nearest frame >= 3.2 s
    for all_faces in (False, True):
        res = dfer_cli.predict_video(model, path, all_faces=all_faces)
        (clip,) = res.clips
        assert clip.status == "ok" and clip.label in CLASSES
        assert clip.end == pytest.approx(4.375) and clip.start == pytest.approx(2.375)  # aligned to the face's end
        assert clip.frames == (24, 43)
        assert res.tracks[0].clips == 1
    (seen,) = res.faces.values()
    assert min(t for t, _ in seen) >= 3.2 - 1e-6

    # --annotate: no box before the face appears, though the clip starts at 2.375 s
    from dfer_cli.render import annotate_video

    out = annotate_video(path, tmp_path / "late.annotated.mp4", res)
    src, ann = decode_frames(path), decode_frames(out)
    assert len(src) == len(ann) == 44
    diff = [np.abs(a.astype(int) - b.astype(int)).max(axis=2) for a, b in zip(src, ann)]
    assert all((d > 80).sum() == 0 for d in diff[:32]), [int((d > 80).sum()) for d in diff[:32]]
    assert all((d > 80).sum() > 50 for d in diff[33:44])


def decode_frames(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_windows_with_gaps_between_them_stay_on_the_video_grid(tmp_path, model):
    # stride 2 s > window 1 s: only the windows' own frames are decoded and detected, so the
    # clips are the video-wide windows (0-1 s, 2-3 s), not windows laid on the face's span
    # (the face appears at 0.5 s: laid on its span, the first window would be 0.5-1.5 s)
    path = make_video(tmp_path / "spaced.mp4", face_from(24, 4), fps=8)
    det = RecordingDetector()
    res = dfer_cli.predict_video(model, path, window=1.0, stride=2.0, detector=det)
    assert WindowPlan(3.0, 1.0, 2.0, 16).spaced
    assert [(c.start, c.end) for c in res.clips] == [(0.0, 1.0), (2.0, 3.0)]
    assert res.clips[1].status == "ok"
    assert len(det.frames) < 12  # about half the 18 distinct frames of the two windows, not of all 24


def test_shared_trunk_maps_give_the_whole_models_probabilities(tmp_path, model):
    """predict_video reuses the trunk maps of faces shared by overlapping clips; a wrapper
    that only offers forward() makes it run the whole model on every clip. Both must agree,
    on a face that moves (every crop differs) and is missing for a while (crops reused)."""
    import torch

    class WholeModel(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.preprocessing, self.classes = inner, inner.preprocessing, inner.classes

        def forward(self, x):
            return self.inner(x)

    frames = rolling_face(40)
    for i in range(22, 26):   # 0.5 s blurred past recognition: no face found, but no cut either
        frames[i] = cv2.GaussianBlur(frames[i], (0, 0), 12)
    path = make_video(tmp_path / "gap.mp4", frames, fps=8)
    shared = dfer_cli.predict_video(model, path, window=2.0, stride=0.5)
    whole = dfer_cli.predict_video(WholeModel(model).eval(), path, window=2.0, stride=0.5)
    assert len(shared.clips) >= 6 and {c.track for c in shared.clips} == {0}
    assert not any(2.8 < t < 3.2 for t, _ in shared.faces[0])   # the blurred frames had no face
    assert [(c.start, c.track, c.status) for c in shared.clips] == [(c.start, c.track, c.status) for c in whole.clips]
    for a, b in zip(shared.clips, whole.clips):
        if a.probabilities is not None:
            assert [a.probabilities[k] for k in CLASSES] == pytest.approx([b.probabilities[k] for k in CLASSES],
                                                                         abs=2e-4)

"""Key-frame detection (dfer_cli.faces.keyframe) against the full MTCNN detector, on synthetic
frames: the real face of tests/data/face_smile.png (credited there) cut out and pasted on a
plain background, moved from frame to frame with numpy."""
import cv2
import numpy as np
import pytest
from PIL import Image
from synth import face_image, paste

from dfer_cli.faces.detect import Detection, FaceDetector
from dfer_cli.faces.keyframe import KeyframeDetector, keyframe_detector
from dfer_cli.faces.track import iou

W, H = 640, 360


@pytest.fixture(scope="module")
def full():
    return FaceDetector()


@pytest.fixture(scope="module")
def patch():
    """The man's face with some margin: (h, w, 3) uint8, about 300 x 240 px (face ~150 x 210)."""
    img = face_image()
    return np.ascontiguousarray(img[40:340, 180:420])


def background(shade=(70, 90, 110)) -> np.ndarray:
    """(H, W, 3) uint8: a smooth vertical gradient of `shade` (no face-like texture)."""
    ramp = np.linspace(0.8, 1.2, H)[:, None, None]
    return np.clip(ramp * np.array(shade, dtype=np.float64)[None, None, :], 0, 255).astype(np.uint8) \
        * np.ones((1, W, 1), np.uint8)


def scene(patch, faces, shade=(70, 90, 110)) -> np.ndarray:
    """A frame with the face patch pasted at each (x, y, zoom) of `faces`: (H, W, 3) uint8."""
    img = background(shade)
    for x, y, zoom in faces:
        p = patch if zoom == 1.0 else cv2.resize(patch, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_AREA)
        paste(img, p, int(round(x)), int(round(y)))
    return img


class Spy:
    """Wraps a FaceDetector's detect and records every frame it is given."""

    def __init__(self, detector: FaceDetector):
        self.detector, self.frames = detector, []

    def detect(self, frames):
        self.frames += list(frames)
        return self.detector.detect(frames)

    def __getattr__(self, name):
        return getattr(self.detector, name)


def run(det, frames, batch=8):
    out = []
    for i in range(0, len(frames), batch):
        out += det.detect(frames[i:i + batch])
    return out


# MTCNN's own repeatability bounds how closely any other method can match a full scan: the
# full scan of a face moved by 1-7 px, shift compensated, gives IoUs down to 0.86 against
# the unmoved one (measured on these frames). So every frame must match within 0.85 and the
# median within 0.9.
MIN_IOU, MEDIAN_IOU = 0.85, 0.9


def assert_same_faces(full_dets, key_dets):
    """Same face count frame by frame; every box within IoU MIN_IOU of the full detector's
    (median >= MEDIAN_IOU) and landmarks within 8 % of the face's width of its."""
    ious = []
    for i, (a, b) in enumerate(zip(full_dets, key_dets)):
        assert len(a) == len(b), f"frame {i}: full found {len(a)} faces, key-frame {len(b)}"
        for d in a:
            e = max(b, key=lambda e: iou(d.box, e.box))
            ious.append(iou(d.box, e.box))
            assert ious[-1] >= MIN_IOU, f"frame {i}: IoU {ious[-1]:.3f}"
            side = d.box[2] - d.box[0]
            assert np.abs(d.landmarks - e.landmarks).max() < 0.08 * side, f"frame {i}: landmarks"
    if ious:
        assert np.median(ious) >= MEDIAN_IOU, f"median IoU {np.median(ious):.3f}"


def test_boxes_match_the_full_detector_while_refining(full, patch):
    # one face walking right and down and growing, another walking left: 12 frames, a key
    # frame every 6, so 10 frames are refined from the previous frame's boxes
    frames = [scene(patch, [(20 + 14 * i, 10 + 3 * i, 0.9 + 0.012 * i), (430 - 8 * i, 150 - 2 * i, 0.8)])
              for i in range(12)]
    ref = full.detect(frames)
    assert all(len(d) == 2 for d in ref)  # the fixture is what it claims
    kd = KeyframeDetector(full, key_every=6)
    got = run(kd, frames)
    assert kd.stats["refined"] == 10 and kd.scans == 2, dict(kd.stats)
    assert_same_faces(ref, got)
    # the follower really followed: the boxes moved far from the key frame's over the run
    assert iou(got[0][0].box, got[5][0].box) < 0.6


def test_full_scan_at_the_interval_and_after_a_cut(full, patch):
    spy = Spy(full)
    kd = KeyframeDetector(spy, key_every=4)
    shot1 = [scene(patch, [(100 + 5 * i, 30, 1.0)]) for i in range(10)]
    shot2 = [scene(patch, [(380 - 5 * i, 60, 0.8)], shade=(200, 150, 60)) for i in range(3)]
    frames = shot1 + shot2
    got = run(kd, frames, batch=5)
    scanned = [next(i for i, f in enumerate(frames) if f is g) for g in spy.frames]
    # key frames at 0, 4, 8 (every 4th); the cut at 10 restarts the schedule
    assert scanned == [0, 4, 8, 10]
    assert kd.stats["key"] == 3 and kd.stats["cut"] == 1 and kd.stats["lost"] == 0
    # no face lost after the cut: the new shot's face is found on its first frame and followed
    ref = full.detect(frames)
    assert all(len(d) == 1 for d in got)
    assert_same_faces(ref, got)
    # with frame times the interval is in seconds: scans at 0.0, 1.0, 2.0 of 12 frames 0.25 s apart
    spy.frames.clear()
    kd.reset()
    still = [scene(patch, [(200, 30, 1.0)])] * 12
    kd.detect(still, times=[0.25 * i for i in range(12)])
    assert len(spy.frames) == 3 and kd.last_kinds[::4] == ["key"] * 3


@pytest.mark.parametrize("jump", ["across", "out_of_frame"])
def test_a_face_that_jumps_away_triggers_a_full_scan(full, patch, jump):
    spy = Spy(full)
    kd = KeyframeDetector(spy, key_every=100)
    if jump == "across":  # same picture, the face elsewhere: no cut, the follower loses it
        faces = [(60, 30, 1.0), (66, 30, 1.0), (380, 40, 1.0), (386, 40, 1.0)]
    else:  # walks out on the right: its box leaves the frame
        faces = [(360, 30, 1.0), (430, 30, 1.0), (520, 30, 1.0), (600, 30, 1.0)]
    frames = [scene(patch, [f]) for f in faces]
    got = kd.detect(frames)
    ref = full.detect(frames)
    if jump == "across":
        assert kd.last_kinds == ["key", "refined", "lost", "refined"]
        assert_same_faces(ref, got)
        assert got[2][0].box[0] > 350  # found where it went
    else:
        assert kd.last_kinds[:2] == ["key", "refined"] and "lost" in kd.last_kinds[2:]
        for a, b in zip(ref, got):  # what it reports matches the full scan
            assert len(a) == len(b)
            assert all(iou(d.box, e.box) >= MIN_IOU for d, e in zip(a, b))
    # full scans: the first frame, each loss, and (the face gone) each frame after an empty one
    assert len(spy.frames) == 1 + kd.stats["lost"] + kd.stats["empty"] == kd.scans


def test_output_format_equals_face_detector(full, patch):
    frames = [scene(patch, [(100, 20, 1.0)]), scene(patch, [(108, 22, 1.0)]), background()]
    ref = full.detect(frames)
    kd = KeyframeDetector(full, key_every=10, scan_when_empty=True)
    got = kd.detect(frames)
    assert kd.last_kinds == ["key", "refined", "lost"]  # the face vanished: checked by a scan
    assert isinstance(got, list) and len(got) == 3 and got[2] == [] and ref[2] == []
    assert_same_faces(ref, got)
    for a, b in zip(ref[:2], got[:2]):
        assert isinstance(b, list) and len(b) == len(a) == 1
        d, e = a[0], b[0]
        assert isinstance(e, Detection) and type(e.score) is type(d.score) is float
        for x, y in ((d.box, e.box), (d.landmarks, e.landmarks)):
            assert isinstance(y, np.ndarray) and y.shape == x.shape and y.dtype == x.dtype
        assert 0 <= e.box[0] < e.box[2] <= W and 0 <= e.box[1] < e.box[3] <= H
        assert kd.min_score <= e.score <= 1.0
    assert kd.detect([]) == [] and full.detect([]) == []
    # a new frame size starts afresh with a full scan (a new video)
    big = cv2.resize(frames[1], (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
    (e2,) = kd.detect([big])[0]
    assert kd.last_kinds == ["key"]
    assert iou(e2.box, 2 * got[1][0].box) > MIN_IOU


def test_refined_boxes_are_mapped_back_from_the_detection_copy(full, patch):
    # 1280 x 720 frames are detected on a 640 x 360 copy: refined boxes must come back in
    # full-resolution pixels like the full detector's
    frames = [cv2.resize(scene(patch, [(150 + 10 * i, 30, 1.0)]), (2 * W, 2 * H)) for i in range(4)]
    kd = keyframe_detector(window=2.0, num_frames=16, detect_every=2, key_interval=1.0, detector=full)
    assert kd.key_every == 4
    got = kd.detect(frames)
    assert kd.last_kinds == ["key", "refined", "refined", "refined"]
    assert_same_faces(full.detect(frames), got)


# --- predict_video(detection="keyframe") and dfer predict --detector ----------------------------

def test_predict_video_with_keyframe_detection_keeps_the_clips(tmp_path, full):
    """The same clips as with full scans, each clip's mean face box within a few pixels."""
    from synth import make_video, tiny_model

    from dfer_cli.predict import predict_video

    frames = [np.roll(np.asarray(Image.fromarray(face_image()).resize((240, 136))), 2 * i, axis=1)
              for i in range(32)]
    path = make_video(tmp_path / "pan.mp4", frames, fps=8)
    class Counted:
        """The full detector, counting the frames it scans."""

        def __init__(self):
            self.frames = 0
            self.min_face, self.min_score, self.detect_size, self.mtcnn = (full.min_face, full.min_score,
                                                                           full.detect_size, full.mtcnn)

        def detect(self, frames):
            self.frames += len(frames)
            return full.detect(frames)

        def __getattr__(self, name):
            return getattr(full, name)

    model = tiny_model(num_frames=8)
    scans_full, scans_key = Counted(), Counted()
    ref = predict_video(model, path, window=1.0, stride=0.5, detector=scans_full)
    got = predict_video(model, path, window=1.0, stride=0.5, detector=scans_key, detection="keyframe")
    # 4 s of video: full scans on every detected frame (16), key frames about once a second
    assert scans_full.frames >= 15 and scans_key.frames <= 6, (scans_full.frames, scans_key.frames)
    assert [(c.start, c.end, c.track) for c in got.clips] == [(c.start, c.end, c.track) for c in ref.clips]
    assert len(ref.clips) >= 5
    for a, b in zip(ref.clips, got.clips):
        assert np.abs(np.subtract(a.box, b.box)).max() < 4.0, (a.box, b.box)
    with pytest.raises(ValueError, match="detection 'fast': choose one of auto, full, keyframe"):
        predict_video(model, path, detection="fast")


def test_key_frames_are_the_default_for_dfers_mtcnn_only(tmp_path):
    """detection="auto" (the default) follows faces between key frames with dfer's MTCNN
    detector, and leaves any other detector to scan every scheduled frame."""
    from synth import make_video, tiny_model

    from dfer_cli.faces.detect import FaceDetector
    from dfer_cli.predict import predict_video

    class CountedMTCNN(FaceDetector):
        frames = 0

        def detect(self, frames):
            self.frames += len(frames)
            return super().detect(frames)

    class Other:
        """Not dfer's detector: MTCNN's answers through an object of another type."""

        def __init__(self):
            self.inner, self.frames = FaceDetector(), 0

        def detect(self, frames):
            self.frames += len(frames)
            return self.inner.detect(frames)

    frames = [np.roll(np.asarray(Image.fromarray(face_image()).resize((240, 136))), 2 * i, axis=1)
              for i in range(32)]
    path = make_video(tmp_path / "pan.mp4", frames, fps=8)
    model = tiny_model(num_frames=8)
    default, full_scans, other = CountedMTCNN(), CountedMTCNN(), Other()
    predict_video(model, path, window=1.0, stride=0.5, detector=default)
    predict_video(model, path, window=1.0, stride=0.5, detector=full_scans, detection="full")
    predict_video(model, path, window=1.0, stride=0.5, detector=other)
    assert full_scans.frames >= 15 and other.frames == full_scans.frames
    assert default.frames <= 6


def test_cli_rejects_an_unknown_detector_in_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "dfer_cli", "predict", str(tmp_path / "x.mp4"), "--detector", "fast"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[0] == ("dfer predict: --detector fast: expected full or keyframe "
                                                "(try: dfer predict --help)")


def test_a_face_that_appears_in_an_empty_shot_is_found_at_once(full, patch):
    # no cut (same background), no key frame due: by default the frame after an empty one is
    # scanned; without scan_when_empty the face waits for the next key frame
    frames = [background()] * 3 + [scene(patch, [(200, 30, 1.0)])] * 2
    ref = full.detect(frames[3:4])[0]
    assert len(ref) == 1
    kd = KeyframeDetector(full, key_every=100, cut_threshold=None)
    got = kd.detect(frames)
    assert kd.last_kinds == ["key", "empty", "empty", "empty", "refined"]
    assert len(got[3]) == 1 and iou(got[3][0].box, ref[0].box) > 0.99
    lazy = KeyframeDetector(full, key_every=100, cut_threshold=None, scan_when_empty=False)
    got = lazy.detect(frames)
    assert lazy.last_kinds == ["key", "none", "none", "none", "none"] and got[3] == []

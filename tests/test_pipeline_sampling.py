"""predict_video honours the frame sampling a model was trained with, and takes any detector
with FaceDetector's interface (the detect stage's contract)."""
import numpy as np
import pytest
from synth import make_video, tiny_model

import dfer_cli
from dfer_cli.faces.detect import Detection
from dfer_cli.video.sampling import WindowPlan


class StillFaceDetector:
    """A stand-in detector: one face, always at the same place; counts the frames it sees."""

    def __init__(self):
        self.frames = 0

    def detect(self, frames):
        self.frames += len(frames)
        h, w = frames[0].shape[:2]
        box = np.array([w * 0.3, h * 0.2, w * 0.7, h * 0.8])
        lm = np.array([[0.4 * w, 0.4 * h], [0.6 * w, 0.4 * h], [0.5 * w, 0.5 * h],
                       [0.42 * w, 0.65 * h], [0.58 * w, 0.65 * h]])
        return [[Detection(box.copy(), 0.99, lm.copy())] for _ in frames]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    # 4 s at 25 fps; every frame's grey level encodes its index, so crops differ frame to frame
    def draw(img, i, t):
        img[:] = (40 + 2 * i) % 256
    return make_video(tmp_path_factory.mktemp("v") / "grey.mp4", frames=100, fps=25, size=(96, 64), draw=draw)


def test_segments8x2_model_clips_take_pairs_of_consecutive_frames(video):
    model = tiny_model(16)
    model.sampling = "segments8x2"
    det = StillFaceDetector()
    res = dfer_cli.predict_video(model, video, detector=det, cut_threshold=None)  # grey steps are no cuts
    # a 2 s window is 50 frames; 8 segments of the 49 possible pair starts, centred: frames
    # first + 3, 4, 9, 10, ..., 45, 46, so a clip's first and last frames are first + 3 and first + 46
    assert [c.frames for c in res.clips] == [(3, 46), (28, 71), (53, 96)]
    assert [t for c in res.clips for t in (c.start, c.end)] == pytest.approx([0.0, 2.0, 1.0, 3.0, 2.0, 4.0])
    assert all(c.status == "ok" and c.label is not None for c in res.clips)
    assert res.window == pytest.approx(2.0) and res.stride == pytest.approx(1.0)
    # detection runs about as often per second as with the uniform grid (not on every frame)
    uniform_det = StillFaceDetector()
    model.sampling = "uniform"
    uniform = dfer_cli.predict_video(model, video, detector=uniform_det, cut_threshold=None)
    assert det.frames <= 1.3 * uniform_det.frames and det.frames < 100 / 3
    # uniform: 16 frames spread over the window, from its first grid slot's frame to its last
    plan = WindowPlan(4.0, 2.0, 1.0, 16)
    assert [c.frames for c in uniform.clips] == [(round(plan.time(f) * 25), round(plan.time(f + 15) * 25))
                                                 for f in (0, 8, 16)]


def test_segments8x2_probabilities_come_from_the_paired_frames(video):
    """The classifier sees the crops of frames first + offsets: a model whose output is the
    clip's mean grey level tells which frames those were."""
    import torch

    from dfer_cli.preprocess import Preprocessing

    class MeanLevel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.preprocessing = Preprocessing(input_size=16, num_frames=16, mean=(0, 0, 0), std=(1, 1, 1))
            self.classes = ["happy", "sad"]
            self.sampling = "segments8x2"
            self.levels = []

        def forward(self, x):   # x: (B, 16, 3, 16, 16) in [0, 1]
            self.levels += [[round(float(v) * 255) for v in clip.mean(dim=(1, 2, 3))] for clip in x]
            return torch.zeros(x.shape[0], 2)

    model = MeanLevel().eval()
    dfer_cli.predict_video(model, video, detector=StillFaceDetector(), cut_threshold=None)
    offsets = WindowPlan(4.0, 2.0, 1.0, 16, sampling="segments8x2", fps=25).offsets
    for first, levels in zip((0, 25, 50), model.levels):
        expected = [(40 + 2 * (first + o)) % 256 for o in offsets]
        assert np.abs(np.array(levels) - expected).max() <= 3   # H.264 rounding of flat grey

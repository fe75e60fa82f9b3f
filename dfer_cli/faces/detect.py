"""Face detection (MTCNN with facenet-pytorch's shipped weights, offline; `dfer_cli.faces.mtcnn`)
and alignment.

Speed policy: MTCNN's cost grows with image area and with how small a face it must find
(its image pyramid starts at scale 12 / min_face_size). On 2 CPU cores a 640x480 frame costs
~150-180 ms with min_face_size=20 but ~25-35 ms with 80, and 1280x720 at full resolution
costs seconds. So `FaceDetector` detects on a copy downscaled to `detect_size` pixels on the
longest side, with a minimum face size given as a fraction of the frame's shorter side, and
maps boxes and landmarks back to full-resolution pixels. Selection (which face is whose)
is ours: MTCNN is always run with all faces kept.

Alignment: a similarity transform (rotation, uniform scale, translation) from the 5 MTCNN
landmarks to a canonical template, the way DFEW/FERV39K crops were made; the same function
prepares training data and prediction input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Defaults, documented in the CLI help and README.
DETECT_SIZE = 640       # detect on a copy whose longest side is at most this many pixels
MIN_FACE = 0.1          # smallest face to find, as a fraction of the frame's shorter side
MIN_SCORE = 0.9         # MTCNN final-stage probability below which a detection is dropped
THRESHOLDS = (0.6, 0.7, 0.7)  # MTCNN per-stage thresholds (P-Net, R-Net, O-Net)


@dataclass
class Detection:
    box: np.ndarray        # (4,) float x1, y1, x2, y2 in source pixels
    score: float           # MTCNN probability
    landmarks: np.ndarray  # (5, 2) float: left eye, right eye, nose, left and right mouth corner

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


class FaceDetector:
    """MTCNN face detector with the speed policy above.

    detect_size: longest side (pixels) of the copy detection runs on (None: full size).
    min_face: smallest face kept, as a fraction of the frame's shorter side (<= 1), or in
    source pixels (> 1): MTCNN does not look for smaller faces, and a detection whose box has
    a side shorter than that is dropped. min_score: drop detections whose MTCNN probability
    is below this (0..1). device: torch
    device for MTCNN (default CPU). Thread count follows torch's setting.
    """

    def __init__(self, detect_size: int | None = DETECT_SIZE, min_face: float = MIN_FACE,
                 min_score: float = MIN_SCORE, thresholds: Sequence[float] = THRESHOLDS,
                 factor: float = 0.709, device=None):
        import torch

        from dfer_cli.faces.mtcnn import MTCNN

        self.detect_size, self.min_face, self.min_score = detect_size, float(min_face), float(min_score)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.mtcnn = MTCNN(thresholds=list(thresholds), factor=factor, device=self.device)

    def _scale_for(self, h: int, w: int) -> float:
        if self.detect_size and max(h, w) > self.detect_size:
            return self.detect_size / max(h, w)
        return 1.0

    def min_face_side(self, h: int, w: int) -> float:
        """The shortest box side kept, in source pixels, for an h x w frame."""
        return self.min_face * min(h, w) if self.min_face <= 1 else self.min_face

    def min_face_pixels(self, h: int, w: int) -> int:
        """MTCNN min_face_size, in pixels of the downscaled detection copy, for an h x w frame."""
        s = self._scale_for(h, w)
        px = self.min_face * min(h, w) if self.min_face <= 1 else self.min_face
        return max(12, int(round(px * s)))

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces in each of a batch of same-sized RGB uint8 frames, best score first.

        Returns one list per frame (empty when no face), boxes and landmarks in the frames'
        own pixel coordinates."""
        import cv2

        if len(frames) == 0:
            return []
        h, w = frames[0].shape[:2]
        s = self._scale_for(h, w)
        if s < 1.0:
            size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
            small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
        else:
            small = np.stack(frames)
        sy, sx = h / small.shape[1], w / small.shape[2]
        min_side = self.min_face_side(h, w)
        self.mtcnn.min_face_size = self.min_face_pixels(h, w)
        out: list[list[Detection]] = []
        for b, p, lm in self.mtcnn.detect(small):
            dets = []
            for bi, pi, li in zip(b, p, lm):
                if pi < self.min_score:
                    continue
                box = bi * np.array([sx, sy, sx, sy])
                box = np.clip(box, 0, [w, h, w, h])
                if min(box[2] - box[0], box[3] - box[1]) < min_side:
                    continue  # smaller than --min-face
                dets.append(Detection(box, float(pi), li * np.array([sx, sy])))
            dets.sort(key=lambda d: -d.score)
            out.append(dets)
        return out



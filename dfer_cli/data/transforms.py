"""Clip transforms: one geometric warp per frame, then normalisation.

Every geometric augmentation (random resized crop, horizontal flip, synthetic motion) is a
2x3 affine matrix, so a frame is resampled exactly once with ``cv2.warpAffine`` straight to
the model's input size. The crop and flip are drawn once per clip and shared by all its
frames; synthetic motion (for still images turned into clips) adds a small affine drift that
changes smoothly from the first frame to the last.

Inputs are already-aligned face crops (a frame folder's images, a still image, a prepared
video): the transforms never detect or align faces. Normalisation is the checkpoint's
:class:`~dfer_cli.preprocess.Preprocessing` (grayscale, mean, std) through
:func:`~dfer_cli.preprocess.frames_to_tensor`, the function prediction uses too.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from dfer_cli.preprocess import Preprocessing, frames_to_tensor


@dataclass
class Augment:
    """Training-time augmentation settings (all geometric, drawn per clip)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)   # area fraction kept by random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop box
    flip: float = 0.5                 # probability of a horizontal flip
    motion: bool = True               # synthetic motion on still images (clips of 1 frame)
    motion_shift: float = 0.04        # max translation, fraction of the output side
    motion_rotate: float = 6.0        # max rotation, degrees
    motion_scale: float = 0.05        # max relative zoom

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _h(m23: np.ndarray) -> np.ndarray:
    """2x3 affine to 3x3 homogeneous."""
    return np.vstack([m23, [0.0, 0.0, 1.0]])


def crop_matrix(x0: float, y0: float, w: float, h: float, size: int, flip: bool = False) -> np.ndarray:
    """3x3 matrix mapping the source box (x0, y0, w, h) (continuous edge coordinates)
    onto the output square [0, size]^2, mirrored left-right when `flip`."""
    sx, sy = size / w, size / h
    m = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy], [0.0, 0.0, 1.0]])
    if flip:
        m = np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    return m


def random_crop_box(rng: np.random.Generator, h: int, w: int, scale, ratio) -> tuple[float, float, float, float]:
    """A random box (x0, y0, bw, bh) of area fraction in `scale` and aspect in `ratio`
    inside an h x w image (falls back to the whole image after 10 tries)."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(*log_r))
        bw, bh = math.sqrt(target * r), math.sqrt(target / r)
        if bw <= w and bh <= h:
            return float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh
    return 0.0, 0.0, float(w), float(h)


def motion_matrices(rng: np.random.Generator, num_frames: int, size: int, aug: Augment) -> list[np.ndarray]:
    """Per-frame 3x3 drift matrices about the output centre: translation, rotation and
    zoom move from a random start pose to a random end pose along a smooth (cosine-eased)
    path, so consecutive frames differ by a small, consistent motion."""
    def pose():
        return np.array([
            rng.uniform(-1, 1) * aug.motion_shift * size,
            rng.uniform(-1, 1) * aug.motion_shift * size,
            math.radians(rng.uniform(-1, 1) * aug.motion_rotate),
            1.0 + rng.uniform(-1, 1) * aug.motion_scale,
        ])

    p0, p1 = pose(), pose()
    c = size / 2.0
    mats = []
    for t in range(num_frames):
        a = 0.0 if num_frames == 1 else t / (num_frames - 1)
        a = 0.5 - 0.5 * math.cos(math.pi * a)  # ease in/out: smooth start and stop
        dx, dy, th, s = p0 + (p1 - p0) * a
        cos, sin = s * math.cos(th), s * math.sin(th)
        mats.append(np.array([
            [cos, -sin, c - cos * c + sin * c + dx],
            [sin, cos, c - sin * c - cos * c + dy],
            [0.0, 0.0, 1.0],
        ]))
    return mats


def warp(frame: np.ndarray, m33: np.ndarray, size: int) -> np.ndarray:
    """Resample `frame` through the edge-coordinate matrix `m33` into a size x size image.

    cv2 works in pixel-centre coordinates (pixel i sits at i); edge coordinates put it at
    i + 0.5, so the matrix is conjugated by that half-pixel shift.
    """
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unshift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    m = (unshift @ m33 @ shift)[:2]
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) gray, or (H, W, 3) RGB uint8 -> (H, W, 3) uint8."""
    if frame.ndim == 2:
        return np.repeat(frame[:, :, None], 3, axis=2)
    if frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    return frame


class ClipTransform:
    """Turns a list of aligned uint8 frames into a model input tensor (T, 3, S, S).

    ``train=False`` resizes each whole frame to the input size (no randomness). With
    ``train=True`` it draws a random resized crop and flip per clip and, when the clip was
    a single still image repeated `num_frames` times, the synthetic motion of `Augment`.
    A clip given fewer frames than `pre.num_frames` (e.g. one still image) is repeated in
    time to `num_frames` frames.
    """

    def __init__(self, pre: Preprocessing, train: bool, augment: Augment | None = None):
        self.pre = pre
        self.train = train
        self.augment = augment or Augment()

    def frames(self, frames: list[np.ndarray], rng: np.random.Generator | None, still: bool = False) -> np.ndarray:
        """The warped uint8 frames (T, S, S, 3) before normalisation."""
        size, t = self.pre.input_size, self.pre.num_frames
        if len(frames) < t:  # repeat in time: a still, or a clip shorter than num_frames
            idx = np.floor(np.arange(t) * len(frames) / t).astype(int)
            frames = [frames[i] for i in idx]
        h, w = frames[0].shape[:2]
        if self.train and rng is not None:
            a = self.augment
            box = random_crop_box(rng, h, w, a.crop_scale, a.crop_ratio)
            base = crop_matrix(*box, size, flip=bool(rng.random() < a.flip))
            if still and a.motion:
                mats = [d @ base for d in motion_matrices(rng, len(frames), size, a)]
            else:
                mats = [base] * len(frames)
        else:
            mats = [crop_matrix(0.0, 0.0, float(w), float(h), size)] * len(frames)
        if h == size and w == size and not self.train:
            out = [f for f in frames]  # identity: skip resampling
        else:
            out = [warp(f, m, size) for f, m in zip(frames, mats)]
        return np.stack([to_rgb(f) for f in out])

    def __call__(self, frames: list[np.ndarray], rng: np.random.Generator | None = None, still: bool = False):
        return frames_to_tensor(self.frames(frames, rng, still), self.pre)

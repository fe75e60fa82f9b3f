"""How a face crop becomes model input; every checkpoint carries one `Preprocessing`.

The same object drives training data and prediction, so a model trained on 48 px grayscale
faces aligned with a wide margin is fed exactly that at prediction time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# Canonical 5-point face template (left eye, right eye, nose tip, left and right mouth
# corner, as seen in the image) in unit coordinates of a square crop. These are the widely
# used 112x112 face-recognition reference points divided by 112.
DEFAULT_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.3419, 0.4616),
    (0.6565, 0.4598),
    (0.5002, 0.6405),
    (0.3710, 0.8247),
    (0.6315, 0.8232),
)


# Where FER2013's loosely centred 48x48 faces have their landmarks: the median of MTCNN's
# 5 points over 420 training images (60 per class, upscaled to 192 px), made left/right
# symmetric. Aligning video faces to this template frames them like FER2013's training faces.
# Reproduce with `python scripts/fer2013_template.py`.
FER2013_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.3080, 0.3944),
    (0.6920, 0.3944),
    (0.5000, 0.6146),
    (0.3417, 0.8122),
    (0.6583, 0.8122),
)

TEMPLATES = {"default": DEFAULT_TEMPLATE, "fer2013": FER2013_TEMPLATE}


def zoom_template(template, scale: float) -> tuple[tuple[float, float], ...]:
    """Shrink (scale < 1: more margin around the face) or enlarge a unit template about
    the crop centre."""
    return tuple((0.5 + (x - 0.5) * scale, 0.5 + (y - 0.5) * scale) for x, y in template)


@dataclass
class Preprocessing:
    input_size: int = 112          # square side of the model's input frames, pixels
    num_frames: int = 16           # frames per clip
    grayscale: bool = False        # convert to gray (replicated to 3 channels) before normalising
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per-channel, on [0, 1] pixels
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    template: tuple[tuple[float, float], ...] = field(default_factory=lambda: DEFAULT_TEMPLATE)
    # 5 landmark targets in unit crop coordinates (align_face scales them by input_size)
    detail_size: int | None = None  # side at which a video face is sampled before it is resized
    # to input_size: the training images' native resolution (48 for FER2013), so a sharp video
    # face carries no finer detail than the upscaled training faces did. None: sampled at input_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["template"] = [list(p) for p in self.template]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        if "template" in known:
            known["template"] = tuple((float(x), float(y)) for x, y in known["template"])
        return cls(**known)


def frames_to_tensor(frames, pre: Preprocessing):
    """Stack aligned RGB uint8 frames (T, H, W, 3) -- already input_size square -- into a
    normalised float tensor (T, 3, H, W) as the model expects."""
    import torch

    arr = np.asarray(frames, dtype=np.float32) / 255.0  # (T, H, W, 3)
    if pre.grayscale:
        gray = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (T, H, W)
        arr = np.repeat(gray[..., None], 3, axis=-1)
    arr = (arr - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))

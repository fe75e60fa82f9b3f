"""MTCNN face detection (Zhang et al. 2016) with facenet-pytorch's trained networks.

The three networks and their weights are facenet-pytorch's (`facenet_pytorch/data/
{pnet,rnet,onet}.pt`, read with ``torch.load(weights_only=True)``); the cascade that drives
them is run here. facenet-pytorch's own driver imports torchvision (for its NMS), and
importing torchvision imports torch._dynamo: on these 2-core CPUs that was the largest single
cost of starting `dfer predict` (docs/predict.md has the figures). The package is located
without being imported.

The cascade computes what facenet-pytorch's `MTCNN.detect` computes (tests/test_mtcnn.py
compares the two on real and synthetic frames):

1. P-Net slides over an image pyramid (scales 12/min_face_size * factor^k while the shorter
   side stays >= 12 px) and proposes 12x12 windows with a face probability >= threshold[0];
   they are suppressed at IoU 0.5 within each scale, then at 0.7 across scales, moved by
   P-Net's regression and made square.
2. R-Net scores a 24x24 crop of each proposal (>= threshold[1] kept), suppression at IoU 0.7,
   regression, squares.
3. O-Net scores a 48x48 crop (>= threshold[2] kept), places the 5 landmarks, regresses the
   box; a last suppression at 0.7 of intersection over the smaller box removes nested boxes.

Boxes are x1, y1, x2, y2 in the pixels of the image given, landmarks (5, 2) x, y in the order
left eye, right eye, nose, left and right mouth corner.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "facenet_pytorch"
NMS_MATRIX_MAX = 1024    # up to this many boxes, NMS computes the whole (N, N) overlap matrix


def weights_dir() -> Path:
    """Folder of facenet-pytorch's MTCNN weights, found without importing the package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("facenet-pytorch is not installed; MTCNN's weights come with it: "
                           "pip install facenet-pytorch==2.5.3")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


# -- the networks (layer names are facenet-pytorch's, so its state dicts load) ---------------

class PNet(nn.Module):
    """Proposal net, fully convolutional: (N, 3, H, W) in [-1, 1) -> box offsets
    (N, 4, H', W') and face probabilities (N, 2, H', W'), one per 12x12 window at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)   # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)   # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


def _flatten_hwc(x: torch.Tensor) -> torch.Tensor:
    # the dense layers' weights were trained on (W, H, C)-ordered features (the original
    # Caffe/TensorFlow layout), so the map is flattened in that order
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) -> box offsets (N, 4), face probabilities (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))            # (N, 28, 11, 11)
        x = self.pool2(self.prelu2(self.conv2(x)))            # (N, 48, 4, 4)
        x = self.prelu3(self.conv3(x))                        # (N, 64, 3, 3)
        x = self.prelu4(self.dense4(_flatten_hwc(x)))         # (N, 128)
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) -> box offsets (N, 4), landmarks (N, 10: five x in units of
    the window's width, then five y), face probabilities (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))            # (N, 32, 23, 23)
        x = self.pool2(self.prelu2(self.conv2(x)))            # (N, 64, 10, 10)
        x = self.pool3(self.prelu3(self.conv3(x)))            # (N, 64, 4, 4)
        x = self.prelu4(self.conv4(x))                        # (N, 128, 3, 3)
        x = self.prelu5(self.dense5(_flatten_hwc(x)))         # (N, 256)
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


def _load(net: nn.Module, name: str) -> nn.Module:
    state = torch.load(weights_dir() / f"{name}.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


# -- box arithmetic (MTCNN's conventions) ------------------------------------------------------

def square(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) boxes -> (N, 4) squares with the same centres, side = the longer side."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + 0.5 * w - 0.5 * side
    y1 = boxes[:, 1] + 0.5 * h - 0.5 * side
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def regress(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Move (N, 4) boxes by (N, 4) offsets given in units of the box's width / height. MTCNN
    measures sizes as x2 - x1 + 1 (inclusive pixels) in R-Net and O-Net, as x2 - x1 after
    P-Net (`inclusive=False`)."""
    extra = 1.0 if inclusive else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    return boxes + offsets * np.stack([w, h, w, h], axis=1)


def place_landmarks(windows: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """O-Net's (N, 10) landmarks (five x in units of the window's width, then five y), given
    for the (N, 4) windows it looked at, as (N, 5, 2) x, y image pixels. The window's origin
    is pixel 1 and its size x2 - x1 + 1 (MTCNN's 1-based, inclusive convention)."""
    w = windows[:, 2] - windows[:, 0] + 1
    h = windows[:, 3] - windows[:, 1] + 1
    return np.stack([w[:, None] * landmarks[:, :5] + windows[:, :1] - 1,
                     h[:, None] * landmarks[:, 5:] + windows[:, 1:2] - 1], axis=2)


def overlap_matrix(a: np.ndarray, b: np.ndarray, over_min: bool = False,
                   inclusive: bool = False) -> np.ndarray:
    """(N, M) overlap of (N, 4) and (M, 4) boxes: IoU, or intersection over the smaller area
    (`over_min`); `inclusive` counts sizes as x2 - x1 + 1."""
    e = 1.0 if inclusive else 0.0
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + e, 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + e, 0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0] + e, 0, None) * np.clip(a[:, 3] - a[:, 1] + e, 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0] + e, 0, None) * np.clip(b[:, 3] - b[:, 1] + e, 0, None)
    if over_min:
        denom = np.minimum(area_a[:, None], area_b[None, :])
    else:
        denom = area_a[:, None] + area_b[None, :] - inter
    return np.where(denom > 0, inter / np.maximum(denom, 1e-9), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None = None,
        over_min: bool = False, inclusive: bool = False, order: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression of (N, 4) boxes: going through them best score first
    (or in the given `order`), a box is kept unless it overlaps an already kept box of the
    same group (e.g. image) by more than `threshold`. Returns the kept indices in that order."""
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if order is None:
        order = np.argsort(-scores, kind="stable")
    groups = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    alive = np.ones(n, dtype=bool)
    keep = []
    if n <= NMS_MATRIX_MAX:  # all overlaps at once: one numpy pass instead of one per kept box
        beaten = (overlap_matrix(boxes, boxes, over_min, inclusive) > threshold) & (groups[:, None] == groups[None, :])
        for i in order:
            if alive[i]:
                keep.append(i)
                alive &= ~beaten[i]
        return np.asarray(keep, dtype=np.int64)
    for i in order:
        if not alive[i]:
            continue
        keep.append(i)
        ov = overlap_matrix(boxes[i:i + 1], boxes, over_min, inclusive)[0]
        alive &= ~((ov > threshold) & (groups == groups[i]))
    return np.asarray(keep, dtype=np.int64)


def crops(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """`crop_array` as network input: ((N, 3, size, size) float32 tensor, (N,) bool)."""
    out, ok = crop_array(image, boxes, size)
    # (N, size, size, 3) viewed as (N, 3, size, size) is a channels_last tensor: no copy, and
    # the networks' convolutions take that layout directly
    return torch.from_numpy(out).permute(0, 3, 1, 2), ok


def crop_array(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the (N, 4) boxes out of an (H, W, 3) uint8 image with MTCNN's pixel convention
    (truncated to integers, 1-based, clipped at the image border, not padded), area-resize
    each to size x size and normalise to [-1, 1). Returns ((N, size, size, 3) float32
    array, (N,) bool: whether the box had any pixel in the image).

    The resize is an adaptive average pool (output cell i averages input rows
    floor(i * n / size) .. ceil((i + 1) * n / size) - 1, the same for columns), which is
    what torch's "area" interpolation computes; all crops are read at once from one
    integral image of the region they cover."""
    n = len(boxes)
    hs, ws = image.shape[:2]
    ib = np.trunc(boxes).astype(np.int64)
    x0 = np.maximum(ib[:, 0], 1) - 1
    y0 = np.maximum(ib[:, 1], 1) - 1
    x1 = np.minimum(ib[:, 2], ws)
    y1 = np.minimum(ib[:, 3], hs)
    ok = (x1 > x0) & (y1 > y0)
    out = np.zeros((n, size, size, 3), dtype=np.float32)
    if ok.any():
        rx0, ry0 = int(x0[ok].min()), int(y0[ok].min())
        rx1, ry1 = int(x1[ok].max()), int(y1[ok].max())
        integral = np.zeros((ry1 - ry0 + 1, rx1 - rx0 + 1, 3), dtype=np.int64)
        integral[1:, 1:] = image[ry0:ry1, rx0:rx1].cumsum(0, dtype=np.int64).cumsum(1)
        flat = integral.reshape(-1, 3)
        row = integral.shape[1]
        cells = np.arange(size)
        ch = np.where(ok, y1 - y0, 1)[:, None]                      # (N, 1) crop heights
        cw = np.where(ok, x1 - x0, 1)[:, None]
        ys = (cells * ch) // size + (y0 - ry0)[:, None]              # (N, size) first row
        ye = ((cells + 1) * ch + size - 1) // size + (y0 - ry0)[:, None]  # one past the last
        xs = (cells * cw) // size + (x0 - rx0)[:, None]
        xe = ((cells + 1) * cw + size - 1) // size + (x0 - rx0)[:, None]
        ys, ye = np.clip(ys, 0, integral.shape[0] - 1), np.clip(ye, 0, integral.shape[0] - 1)
        xs, xe = np.clip(xs, 0, row - 1), np.clip(xe, 0, row - 1)
        # box sums from the integral image, gathered through flat indices (N, size, size)
        ys_, ye_ = (ys * row)[:, :, None], (ye * row)[:, :, None]
        xs_, xe_ = xs[:, None, :], xe[:, None, :]
        sums = flat[ye_ + xe_] - flat[ys_ + xe_] - flat[ye_ + xs_] + flat[ys_ + xs_]  # (N, s, s, 3)
        area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).astype(np.float32)
        out[ok] = (sums[ok] / np.maximum(area[ok], 1.0)[..., None]).astype(np.float32)
    out -= 127.5
    out *= 0.0078125
    return out, ok


# -- the cascade -----------------------------------------------------------------------------

class MTCNN:
    """The three-stage detector. `detect(images)` takes (N, H, W, 3) RGB uint8 frames of one
    size and returns, per frame, boxes (K, 4), scores (K,) and landmarks (K, 5, 2) as float
    arrays (K = 0 when no face), in the frame's pixels.

    min_face_size: smallest face looked for, pixels (sets the first pyramid scale);
    thresholds: face probability each stage requires; factor: pyramid scale step.
    """

    def __init__(self, min_face_size: float = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, device=None) -> None:
        self.min_face_size = min_face_size
        self.thresholds = [float(t) for t in thresholds]
        self.factor = float(factor)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.pnet = _load(PNet(), "pnet").to(self.device)
        self.rnet = _load(RNet(), "rnet").to(self.device)
        self.onet = _load(ONet(), "onet").to(self.device)

    def rnet_scores(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """R-Net on the (N, 4) windows `boxes` of one (h, w, 3) uint8 image: (box regressions
        (N, 4), face probabilities (N,), 0 for a window that has no pixel in the image)."""
        with torch.inference_mode():
            x, ok = crops(image, boxes, 24)                                   # (N, 3, 24, 24)
            reg, prob = self.rnet(x)
        return reg.numpy().astype(np.float64), np.where(ok, prob[:, 1].numpy(), 0.0)

    def onet_outputs(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """O-Net on the (N, 4) square windows `boxes` of one (h, w, 3) uint8 image: (box
        regressions (N, 4), landmarks (N, 10) as 5 x then 5 y in window units, face
        probabilities (N,), 0 for a window with no pixel in the image)."""
        with torch.inference_mode():
            x, ok = crops(image, boxes, 48)                                   # (N, 3, 48, 48)
            reg, lms, prob = self.onet(x)
        return (reg.numpy().astype(np.float64), lms.numpy().astype(np.float64),
                np.where(ok, prob[:, 1].numpy(), 0.0))

    def scales(self, h: int, w: int) -> list[float]:
        """The pyramid: image scales at which P-Net's 12 px window meets faces of
        min_face_size, min_face_size / factor, ... up to the shorter side."""
        m = 12.0 / self.min_face_size
        side, scale, out = min(h, w) * m, m, []
        while side >= 12:
            out.append(scale)
            scale *= self.factor
            side *= self.factor
        return out

    @torch.inference_mode()
    def detect(self, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Faces in each of (N, H, W, 3) uint8 RGB frames: [(boxes (K, 4), scores (K,),
        landmarks (K, 5, 2)), ...], one tuple per frame, best score first."""
        images = np.ascontiguousarray(np.asarray(images, dtype=np.uint8))
        if images.ndim == 3:
            images = images[None]
        boxes, owner = self._propose(images)                               # (P, 5), (P,)
        boxes, owner = self._refine(images, boxes, owner)
        boxes, owner, points = self._output(images, boxes, owner)
        out = []
        for i in range(len(images)):
            sel = np.flatnonzero(owner == i)
            out.append((boxes[sel, :4].astype(np.float64), boxes[sel, 4].astype(np.float64),
                        points[sel].astype(np.float64)))
        return out

    def _propose(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1, P-Net over the pyramid: (P, 5) square proposals (x1, y1, x2, y2, score)
        and the (P,) frame each belongs to."""
        n, h, w = images.shape[:3]
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
        found, owners = [], []
        for scale in self.scales(h, w):
            small = F.interpolate(x, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            reg, prob = self.pnet((small - 127.5) * 0.0078125)     # (N, 4, h', w'), (N, 2, h', w')
            face = prob[:, 1] >= self.thresholds[0]                 # (N, h', w')
            idx = face.nonzero().cpu().numpy()                      # (K, 3): frame, row, column
            if len(idx) == 0:
                continue
            score = prob[:, 1][face].cpu().numpy()
            offs = reg.permute(0, 2, 3, 1)[face].cpu().numpy()      # (K, 4)
            cell = idx[:, [2, 1]].astype(np.float32)                # (K, 2) x, y of the window
            # window corners in the frame: P-Net's stride is 2, its window 12 (1-based pixels)
            q1 = np.floor((2 * cell + 1) / np.float32(scale))
            q2 = np.floor((2 * cell + 12) / np.float32(scale))
            cand = np.concatenate([q1, q2, score[:, None], offs], axis=1).astype(np.float32)
            keep = nms(cand[:, :4], cand[:, 4], 0.5, groups=idx[:, 0])
            found.append(cand[keep])
            owners.append(idx[keep, 0])
        if not found:
            return np.zeros((0, 5), np.float32), np.zeros(0, np.int64)
        cand, owner = np.concatenate(found), np.concatenate(owners)
        keep = nms(cand[:, :4], cand[:, 4], 0.7, groups=owner)
        cand, owner = cand[keep], owner[keep]
        moved = regress(cand[:, :4], cand[:, 5:9], inclusive=False)
        return np.concatenate([square(moved), cand[:, 4:5]], axis=1).astype(np.float32), owner

    def _refine(self, images: np.ndarray, boxes: np.ndarray, owner: np.ndarray):
        """Stage 2, R-Net on 24x24 crops of the proposals: the survivors, regressed and squared."""
        if len(boxes) == 0:
            return boxes, owner
        x, ok = self._crops(images, boxes, owner, 24)
        reg, prob = self._batched(self.rnet, x)
        score = np.where(ok, prob[:, 1], 0.0).astype(np.float32)
        good = np.flatnonzero(score > self.thresholds[1])
        boxes, owner, reg = np.concatenate([boxes[good, :4], score[good, None]], axis=1), owner[good], reg[good]
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7, groups=owner)
        boxes, owner, reg = boxes[keep], owner[keep], reg[keep]
        moved = square(regress(boxes[:, :4], reg))
        return np.concatenate([moved, boxes[:, 4:5]], axis=1).astype(np.float32), owner

    def _output(self, images: np.ndarray, boxes: np.ndarray, owner: np.ndarray):
        """Stage 3, O-Net on 48x48 crops: scored, regressed boxes with landmarks, nested
        boxes removed."""
        if len(boxes) == 0:
            return boxes, owner, np.zeros((0, 5, 2), np.float32)
        x, ok = self._crops(images, boxes, owner, 48)
        reg, lms, prob = self._batched(self.onet, x)
        score = np.where(ok, prob[:, 1], 0.0).astype(np.float32)
        good = np.flatnonzero(score > self.thresholds[2])
        boxes, owner, reg, lms = boxes[good, :4], owner[good], reg[good], lms[good]
        points = place_landmarks(boxes, lms)                                  # (K, 5, 2)
        boxes = np.concatenate([regress(boxes, reg), score[good, None]], axis=1).astype(np.float32)
        # nested-box suppression visits boxes in ascending-argsort order from the top, as the
        # reference does, so that equal scores resolve the same way
        order = np.argsort(boxes[:, 4])[::-1]
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7, groups=owner, over_min=True, inclusive=True, order=order)
        return boxes[keep], owner[keep], points[keep]

    def _crops(self, images, boxes, owner, size):
        """`crops` of each box from the frame it belongs to: ((N, 3, size, size), (N,) ok)."""
        parts, oks, order = [], [], []
        for i in np.unique(owner):
            sel = np.flatnonzero(owner == i)
            x, ok = crop_array(images[i], boxes[sel, :4], size)
            parts.append(x)
            oks.append(ok)
            order.append(sel)
        back = np.argsort(np.concatenate(order))       # frame-grouped rows back to box order
        x = torch.from_numpy(np.concatenate(parts)[back]).permute(0, 3, 1, 2)   # channels_last
        return x.to(self.device), np.concatenate(oks)[back]

    @staticmethod
    def _batched(net: nn.Module, x: torch.Tensor, batch: int = 512) -> tuple[np.ndarray, ...]:
        outs = [net(x[i:i + batch]) for i in range(0, len(x), batch)]
        return tuple(torch.cat(parts).cpu().numpy() for parts in zip(*outs))

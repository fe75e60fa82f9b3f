"""Face tracks: stable ids for the people in a video.

`IoUTracker` links each frame's detections to the tracks of earlier frames by box overlap
(IoU), greedily, best overlap first. A track survives `max_gap` seconds without a detection
(a missed or occluded face keeps its id); after that, or after a scene cut (`cut()`, e.g.
when `is_cut` says two consecutive frames look unrelated), a face gets a new id, so a hard
cut that changes the person never continues the previous person's track.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

IOU_THRESHOLD = 0.3   # minimum box overlap to continue a track
MAX_GAP = 1.0         # seconds a track may go undetected and keep its id
CUT_THRESHOLD = 0.5   # colour-histogram distance (0..1) between consecutive frames that counts as a cut


def iou(a, b) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    id: int
    first_time: float
    last_time: float
    last_box: np.ndarray
    hits: int = 1              # frames with a detection
    area_sum: float = 0.0      # sum of detected box areas (size x persistence, for ranking)
    alive: bool = True


@dataclass
class IoUTracker:
    """Online IoU tracker. `update(time, boxes)` returns a track id per box."""

    iou_threshold: float = IOU_THRESHOLD
    max_gap: float = MAX_GAP
    tracks: list[Track] = field(default_factory=list)

    def cut(self) -> None:
        """End every open track (scene cut): later faces start new tracks."""
        for t in self.tracks:
            t.alive = False

    def active(self, time: float) -> list[Track]:
        return [t for t in self.tracks if t.alive and time - t.last_time <= self.max_gap + 1e-9]

    def update(self, time: float, boxes: Sequence) -> list[int]:
        """Assign track ids to the boxes ([x1, y1, x2, y2]) detected at `time` seconds."""
        for t in self.tracks:
            if t.alive and time - t.last_time > self.max_gap + 1e-9:
                t.alive = False
        cands = self.active(time)
        ids: list[int | None] = [None] * len(boxes)
        pairs = sorted(((iou(tr.last_box, b), ti, bi) for ti, tr in enumerate(cands)
                        for bi, b in enumerate(boxes)), reverse=True)
        used_t, used_b = set(), set()
        for ov, ti, bi in pairs:
            if ov < self.iou_threshold:
                break
            if ti in used_t or bi in used_b:
                continue
            used_t.add(ti)
            used_b.add(bi)
            tr = cands[ti]
            tr.last_time, tr.last_box = time, np.asarray(boxes[bi], dtype=float)
            tr.hits += 1
            tr.area_sum += _area(boxes[bi])
            ids[bi] = tr.id
        for bi, b in enumerate(boxes):
            if ids[bi] is None:
                tr = Track(len(self.tracks), time, time, np.asarray(b, dtype=float), 1, _area(b))
                self.tracks.append(tr)
                ids[bi] = tr.id
        return [int(i) for i in ids]


def _area(b) -> float:
    return float(max(b[2] - b[0], 0) * max(b[3] - b[1], 0))


def frame_signature(rgb: np.ndarray, bins: int = 16) -> np.ndarray:
    """A normalised per-channel colour histogram (3 * bins,) used to spot scene cuts."""
    small = rgb[::4, ::4].reshape(-1, 3)
    hist = np.concatenate([np.bincount(small[:, c] // (256 // bins), minlength=bins) for c in range(3)])
    return hist.astype(np.float64) / max(1, small.shape[0])


def is_cut(sig_a: np.ndarray | None, sig_b: np.ndarray, threshold: float = CUT_THRESHOLD) -> bool:
    """Whether two frame signatures differ enough to be a hard cut (distance in 0..1)."""
    if sig_a is None or threshold is None:
        return False
    return float(np.abs(sig_a - sig_b).sum() / 6.0) > threshold  # 3 channels, L1 of each <= 2


def main_track(tracks: Sequence[Track]) -> int | None:
    """Id of the largest / most persistent track: the greatest sum of detected face areas
    (a face seen twice as long, or twice as large, counts twice as much)."""
    if not tracks:
        return None
    return max(tracks, key=lambda t: (t.area_sum, t.hits, -t.id)).id

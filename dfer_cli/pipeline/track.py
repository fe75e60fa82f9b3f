"""Track stage: face track ids, landmarks between detections, scene cuts.

`TrackStage` links each detected frame's faces to tracks (`faces.track.IoUTracker`: IoU
matching, a track survives `max_gap` seconds unseen, a cut ends every track), then gives
every frame of the batch its located faces: the detections themselves on detected
frames, and on the frames between two detections the landmarks and box of each track
found on both sides, interpolated linearly in time (never across a cut, and never before
the first detection).

`CutDetector` is the cut test (colour-histogram distance between consecutive distinct
frames). Cuts end tracks, but the detect stage asks it as frames arrive, because a frame
at a cut must also be detected.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from dfer_cli.faces import track as tracking
from dfer_cli.pipeline.frames import FrameBatch, GridFrame


class CutDetector:
    """`cut(rgb) -> bool`: whether the frame `rgb` ((H, W, 3) uint8) differs from the
    previous frame it was called with by more than `threshold` (colour-histogram distance,
    0..1; see `faces.track.is_cut`). The first frame is never a cut."""

    def __init__(self, threshold: float = tracking.CUT_THRESHOLD):
        self.threshold = threshold
        self.previous: np.ndarray | None = None   # signature of the previous frame

    def __call__(self, rgb: np.ndarray) -> bool:
        sig = tracking.frame_signature(rgb)
        cut = tracking.is_cut(self.previous, sig, self.threshold)
        self.previous = sig
        return cut


def interpolate_faces(left: GridFrame, right: GridFrame, t: float) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """[(track id, landmarks (5, 2), box (4,))] at time `t` between two tracked frames:
    every track detected in both, its landmarks and box linearly interpolated in time,
    in the order of `right`'s detections."""
    lmap = {tid: d for tid, d in left.tracked}
    a = (t - left.frame.time) / max(right.frame.time - left.frame.time, 1e-9)
    out = []
    for tid, d in right.tracked:
        if tid in lmap:
            l0 = lmap[tid]
            out.append((tid, (1 - a) * l0.landmarks + a * d.landmarks, (1 - a) * l0.box + a * d.box))
    return out


class TrackStage:
    """Assigns track ids and locates the faces of every frame; see the module docstring.

    tracker: the `faces.track.IoUTracker` whose state later stages read (which tracks are
    alive, their accumulated face area).
    """

    def __init__(self, tracker: tracking.IoUTracker):
        self.tracker = tracker
        self.anchor: GridFrame | None = None   # the last detected frame of the previous batch

    def run(self, batches: Iterable[FrameBatch]) -> Iterator[FrameBatch]:
        """The same batches, with `tracked` set on detected frames and `located` on all."""
        for batch in batches:
            if batch.frames:
                self.track(batch.frames)
            yield batch

    def track(self, frames: list[GridFrame]) -> None:
        """Update the tracker with the detected frames (in time order), then locate faces
        on every frame. `frames` ends on a detected frame."""
        detected = [gf for gf in frames if gf.detect]
        for gf in detected:
            if gf.cut:
                self.tracker.cut()
            ids = self.tracker.update(gf.frame.time, [d.box for d in gf.detections])
            gf.tracked = list(zip(ids, gf.detections))
        left = self.anchor
        for i, gf in enumerate(frames):
            if gf.detect:
                gf.located = [(tid, d.landmarks, d.box) for tid, d in gf.tracked]
                left = gf
                continue
            right = next(g for g in frames[i + 1:] if g.detect)
            if left is not None and not right.cut:  # else: no face known on both sides
                gf.located = interpolate_faces(left, right, gf.frame.time)
        self.anchor = detected[-1]

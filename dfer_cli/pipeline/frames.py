"""What flows between the stages, from decode to window: grid frames and batches of them.

A `GridFrame` is one distinct decoded frame that some grid slot samples. The stages fill
it in as it passes: the detect stage marks it (`cut`, `detect`) and sets `detections`,
the track stage sets `tracked` and `located`, the align stage sets `faces`. Frames travel
in `FrameBatch`es because the detector runs on batches, and the stages after it keep that
granularity: tracks are updated for a whole batch before its frames are placed on the
grid, so the window stage always sees every frame of a batch at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AlignedFace:
    """One track's face in one frame: `crop` (S, S, 3) uint8 aligned to the model's
    template, `box` (4,) float [x1, y1, x2, y2] in source pixels."""

    crop: np.ndarray
    box: np.ndarray


@dataclass(eq=False)
class GridFrame:
    """One distinct decoded frame on the sampling grid.

    frame: the `video.decode.Frame` (index, time, rgb (H, W, 3) uint8). slots: the grid indices it
    serves, several when the video is slower than the grid. The rest is filled in by the
    stages: cut (a scene cut happens just before it), detect (the detector runs on it),
    detections ([faces.Detection] when detected), tracked ([(track id, Detection)]),
    located ([(track id, landmarks (5, 2), box (4,))], detected or interpolated), faces
    ({track id: AlignedFace}, None until aligned).
    """

    frame: object
    slots: list[int]
    cut: bool = False
    detect: bool = False
    detections: list = field(default_factory=list)
    tracked: list = field(default_factory=list)
    located: list = field(default_factory=list)
    faces: dict | None = None


@dataclass
class FrameBatch:
    """Frames that move on together: `frames`, new distinct frames in time order (the last
    one detected), or, when `frames` is empty, `repeat` = (grid slot, an earlier GridFrame)
    for a slot that samples a frame already sent on (a video slower than the grid)."""

    frames: list[GridFrame]
    repeat: tuple[int, GridFrame] | None = None

    def placed(self) -> list[tuple[int, GridFrame]]:
        """(grid slot, frame) for every slot this batch fills, in slot order."""
        if self.repeat is not None:
            return [self.repeat]
        return [(k, gf) for gf in self.frames for k in gf.slots]

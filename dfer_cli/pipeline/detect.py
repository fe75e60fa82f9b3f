"""Detect stage: which grid frames the face detector runs on, and the batched calls to it.

`DetectStage` takes `(grid slot, Frame)` pairs (the decode stage), gathers each distinct
frame into a `GridFrame` (a slot that repeats the previous frame joins it), marks scene
cuts (`cuts`, a callable such as `track.CutDetector`) and decides the schedule:

- every `detect_every`-th distinct frame is detected;
- a frame at a cut, and the frame just before it, are detected (landmarks are never
  interpolated across a cut);
- detections stay at most `max_gap` seconds apart, so the tracker keeps a face's id: a
  frame further than that from the last detection is detected, and so is the one before it.

Once `detect_batch` frames are marked, the pending frames are sent on as one `FrameBatch`
ending on a detected frame, after running the detector on the marked ones (grouped by
frame size, as MTCNN batches need equal sizes). At the end of the input the last frame is
detected so that every frame has a detection on both sides.

The detector is any object with `detect(frames) -> list[list[Detection]]`: a list of
(H, W, 3) uint8 RGB frames of one size in, per frame the faces found (objects with `.box`
(4,) and `.landmarks` (5, 2) in source pixels) out, like `faces.detect.FaceDetector`.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from dfer_cli.pipeline.frames import FrameBatch, GridFrame


class DetectStage:
    """Schedules and runs face detection on grid frames; see the module docstring.

    detector: as above. detect_every: detect every n-th distinct frame (>= 1). max_gap:
    seconds between detections at most. detect_batch: detected frames per batch.
    cuts: `cuts(rgb) -> bool`, whether a frame starts a new shot (None: no cut detection).
    `timings["detect"]` accumulates the seconds spent in the detector.
    """

    def __init__(self, detector, detect_every: int = 2, max_gap: float = 1.0, detect_batch: int = 8,
                 cuts: Callable | None = None, timings: dict | None = None):
        self.detector, self.cuts = detector, cuts
        self.detect_every, self.max_gap = max(1, int(detect_every)), max_gap
        self.detect_batch = max(1, int(detect_batch))
        self.timings = timings if timings is not None else {}
        self.timings.setdefault("detect", 0.0)
        self.pending: list[GridFrame] = []   # distinct frames not sent on yet, in time order
        self.last_detect_time: float | None = None   # time of the latest frame marked for detection
        self.since_detect = 0                 # distinct frames since then

    def run(self, samples: Iterable[tuple[int, object]]) -> Iterator[FrameBatch]:
        """FrameBatches of the grid samples `(k, frame)`, with detections on the marked frames."""
        last: GridFrame | None = None
        for k, frame in samples:
            if last is not None and frame is last.frame:
                if self.pending and self.pending[-1] is last:
                    last.slots.append(k)   # still pending: detected, tracked and aligned once
                else:
                    yield FrameBatch([], repeat=(k, last))
                continue
            last = self._schedule(GridFrame(frame, [k]))
            self.pending.append(last)
            if last.detect and sum(g.detect for g in self.pending) >= self.detect_batch:
                yield self._flush()
        if self.pending:
            self.pending[-1].detect = True
            yield self._flush()

    def _schedule(self, gf: GridFrame) -> GridFrame:
        """Mark `gf` as a cut and/or for detection (and the pending frame before it, at a cut
        or after a long stretch without detection)."""
        t = gf.frame.time
        gf.cut = bool(self.cuts(gf.frame.rgb)) if self.cuts is not None else False
        far = self.last_detect_time is not None and t - self.last_detect_time > self.max_gap
        if (gf.cut or far) and self.pending and not self.pending[-1].detect:
            self.pending[-1].detect = True
            self.last_detect_time, self.since_detect = self.pending[-1].frame.time, 0
        self.since_detect += 1
        gf.detect = (gf.cut or self.last_detect_time is None or self.since_detect >= self.detect_every
                     or t - self.last_detect_time > self.max_gap)
        if gf.detect:
            self.last_detect_time, self.since_detect = t, 0
        return gf

    def _flush(self) -> FrameBatch:
        """Detect the marked pending frames and send all pending frames on (the last is marked)."""
        batch, self.pending = self.pending, []
        groups: dict[tuple, list[GridFrame]] = {}
        for gf in batch:
            if gf.detect:
                groups.setdefault(gf.frame.rgb.shape, []).append(gf)
        t0 = time.perf_counter()
        for group in groups.values():
            for gf, dets in zip(group, self.detector.detect([gf.frame.rgb for gf in group])):
                gf.detections = list(dets)
        self.timings["detect"] += time.perf_counter() - t0
        return FrameBatch(batch)

"""The face stages chained: decode -> detect -> track -> align, as `predict_video` runs them and
`dfer prepare` reuses them (the same decoding, detection schedule, tracking, gap filling and
alignment), so training data and inference input come from one code path."""
from __future__ import annotations

from typing import Iterable, Iterator

from dfer_cli.pipeline.align import AlignStage
from dfer_cli.pipeline.decode import GridDecoder
from dfer_cli.pipeline.detect import DetectStage
from dfer_cli.pipeline.frames import FrameBatch
from dfer_cli.pipeline.track import CutDetector, TrackStage
from dfer_cli.video.sampling import WindowPlan


def aligned_batches(plan: WindowPlan, frames: Iterable, detector, tracker, *, size: int, template,
                    detail: int | None = None, detect_every: int = 2, max_gap: float = 1.0, detect_batch: int = 8,
                    cut_threshold: float | None = 0.5, max_tail: float | None = None,
                    timings: dict | None = None) -> tuple[GridDecoder, Iterator[FrameBatch]]:
    """(the decoder, FrameBatches with every located face aligned) for the decoded `frames`
    on `plan`'s grid: `detector` runs on every `detect_every`-th distinct frame (in grid
    slots: a finer grid detects as often per second), `tracker` (an `IoUTracker`) links the
    detections, landmarks are interpolated in between, and each face is warped onto
    `template` at `size` px (reduced to `detail` px first when given)."""
    decoded = GridDecoder(plan, frames, max_tail, timings)
    cuts = CutDetector(cut_threshold) if cut_threshold is not None else None
    batches = DetectStage(detector, max(1, int(detect_every)) * plan.slots_per_frame, max_gap, detect_batch, cuts,
                          timings).run(decoded)
    return decoded, AlignStage(size, template, timings, detail).run(TrackStage(tracker).run(batches))

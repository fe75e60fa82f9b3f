"""Decode stage: a video's frames on the sampling grid, streamed.

`GridDecoder` decodes the video once, in order (`video.decode.iter_frames`, PTS times), pairs
each grid time of a `video.sampling.WindowPlan` with its nearest frame (`video.sampling.sample_on_grid`) and
yields `(grid slot, Frame)` for the slots some window can use, converting those frames
to RGB. Only the previous frame is held.
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator

from dfer_cli.video.sampling import WindowPlan, sample_on_grid


class GridDecoder:
    """Iterable of `(k, frame)`: grid slot k and the `video.decode.Frame` sampled there (its
    `.rgb`, (H, W, 3) uint8, already converted), in order of k.

    frames: the decoded frames (default: `video.iter_frames(path)`); plan: the sampling
    grid; max_tail: seconds past the last frame that grid times may still reuse it (the
    end of a truncated video). With a spaced plan (gaps between windows) slots no window
    uses are skipped. After iterating, `last_time` is the time of the last frame paired
    with any grid slot (None when none was), `final_time` that of the last frame decoded
    and `sampled` how many slots were yielded.
    `timings["decode"]` accumulates the seconds spent decoding and converting.
    """

    def __init__(self, plan: WindowPlan, frames: Iterable, max_tail: float | None = None,
                 timings: dict | None = None):
        self.plan, self.frames, self.max_tail = plan, frames, max_tail
        self.timings = timings if timings is not None else {}
        self.timings.setdefault("decode", 0.0)
        self.last_time: float | None = None
        self.final_time: float | None = None
        self.sampled = 0

    @classmethod
    def open(cls, path, plan: WindowPlan, max_tail: float | None = None,
             timings: dict | None = None) -> "GridDecoder":
        """A GridDecoder over the video file at `path` (raises `video.decode.VideoError` when it
        cannot be opened)."""
        from dfer_cli.video import decode as video

        return cls(plan, video.iter_frames(path), max_tail, timings)

    def __iter__(self) -> Iterator[tuple[int, object]]:
        pairs = sample_on_grid(self._noted(self.frames), self.plan.grid_times(), max_distance=self.max_tail)
        while True:
            t0 = time.perf_counter()
            try:
                k, frame = next(pairs)
            except StopIteration:
                self.timings["decode"] += time.perf_counter() - t0
                return
            self.last_time = frame.time
            if self.plan.spaced and not self.plan.needed(k):
                self.timings["decode"] += time.perf_counter() - t0
                continue  # between spaced-out windows (otherwise every slot may be in a track's window)
            _ = frame.rgb  # convert now, so that the conversion counts as decoding time
            self.sampled += 1
            self.timings["decode"] += time.perf_counter() - t0
            yield k, frame

    def _noted(self, frames: Iterable) -> Iterator:
        """The frames, noting the time of each as `final_time`."""
        for frame in frames:
            self.final_time = frame.time
            yield frame

"""Emit stage: finished clips handed out in time order.

Clips finish out of order (a track's end-aligned window is laid when the track ends;
clips wait for a full model batch), so `ClipEmitter` holds them until no earlier clip can
still come (the bound from the classify stage) and then hands them to `on_clip` and the
result list in (window start, track) order.
"""
from __future__ import annotations

from typing import Callable, Iterable

from dfer_cli.results import ClipPrediction


class ClipEmitter:
    """on_clip: called with each ClipPrediction as it is handed out (None: no callback).
    `clips` collects them in the order handed out."""

    def __init__(self, on_clip: Callable[[ClipPrediction], None] | None = None):
        self.on_clip = on_clip
        self.clips: list[ClipPrediction] = []
        self.ready: list[tuple[tuple[int, int], ClipPrediction]] = []   # ((first slot, track), clip)

    def push(self, finished: list[tuple[int, ClipPrediction]], bound: int) -> None:
        """Take `finished` clips ((first grid slot, clip)) and hand out, in order, every
        held clip whose window starts before grid slot `bound`."""
        self.ready += [((first, clip.track), clip) for first, clip in finished]
        self.ready.sort(key=lambda r: r[0])
        n = 0
        while n < len(self.ready) and self.ready[n][0][0] < bound:
            n += 1
        out, self.ready = self.ready[:n], self.ready[n:]
        for _, clip in out:
            self.clips.append(clip)
            if self.on_clip is not None:
                self.on_clip(clip)

    def run(self, classified: Iterable[tuple[list[tuple[int, ClipPrediction]], int]]) -> list[ClipPrediction]:
        """Push every (finished clips, bound) of the classify stage; returns all clips."""
        for finished, bound in classified:
            self.push(finished, bound)
        return self.clips

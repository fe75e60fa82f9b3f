"""Align stage: each located face warped onto the model's template.

`AlignStage` crops every (track, landmarks, box) a frame has into an `AlignedFace`: a
similarity transform of the 5 landmarks onto the template, at the model's input size
(`faces.align.align_face`). Frames are aligned once, however many grid slots they serve.
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator

from dfer_cli.faces.align import align_face
from dfer_cli.pipeline.frames import AlignedFace, FrameBatch


class AlignStage:
    """size: crop side S in pixels (the model's input size); template: the 5 landmark
    positions in unit coordinates (`Preprocessing.template`); detail: the side the face is
    reduced to before it is resized to S (`Preprocessing.detail_size`, None: none).
    `timings["align"]` accumulates the seconds spent warping."""

    def __init__(self, size: int, template, timings: dict | None = None, detail: int | None = None):
        self.size, self.template, self.detail = int(size), template, detail
        self.timings = timings if timings is not None else {}
        self.timings.setdefault("align", 0.0)

    def run(self, batches: Iterable[FrameBatch]) -> Iterator[FrameBatch]:
        """The same batches, with `faces` ({track id: AlignedFace with crop (S, S, 3) uint8})
        set on every new frame."""
        for batch in batches:
            t0 = time.perf_counter()
            for gf in batch.frames:
                gf.faces = {tid: AlignedFace(align_face(gf.frame.rgb, lm, self.size, self.template, self.detail), box)
                            for tid, lm, box in gf.located}
            self.timings["align"] += time.perf_counter() - t0
            yield batch

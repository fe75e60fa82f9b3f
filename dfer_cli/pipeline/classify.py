"""Classify stage: clips through the model in batches.

`ClipClassifier` collects the `ClipJob`s of the window stage and, once at least
`batch_size` of them have crops (or the video is done), runs them through the model in one
forward pass: crops (T, S, S, 3) uint8 are normalised as the checkpoint says
(`preprocess.frames_to_tensor`), stacked to (B, T, 3, S, S) and turned into softmax
probabilities (B, C) (`models.inference.clip_probs`, with optional flip test-time augmentation;
under autocast in `autocast_dtype`, which `predict_video` chooses from its precision
(`device.autocast_dtype`: by default float16 on CUDA, bfloat16 on a CPU that computes in it
natively)). Each clip gets its probabilities rounded to 4
places, its label (argmax) and confidence. Jobs without crops pass through unclassified.

Overlapping windows share frames (at the default 2 s window and 1 s stride every aligned
face is in two clips). For a model that splits into a per-frame trunk and a clip head
(`frame_features` + `forward_tokens` + `forward_head`, as dfer's Former models do), the
trunk runs once per aligned face: its maps are kept by the face's (track, grid slot) key
until the window stage's bound has passed that slot, and each clip's head reads them from
there. In eval mode the trunk treats frames independently, so the probabilities are those
of the whole model on the clip (to float rounding). `predict_video` hands this stage a model
folded for inference (`models.folding.fold_for_inference`: the trunk's BatchNorm merged
into its convolutions, the same maps to float rounding, about 1.7x faster on CPU).
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator

import numpy as np

from dfer_cli.pipeline.window import ClipJob, WindowStep
from dfer_cli.results import ClipPrediction


class ClipClassifier:
    """model: a classifier with `.preprocessing` and `.classes` (as from `load_model`), in
    eval mode on `device` (a torch.device). batch_size: clips per forward pass. tta:
    "none" or "flip". name: how to name the checkpoint in the error about non-finite
    probabilities. `timings["model"]` accumulates the seconds spent in the model. autocast_dtype:
    the dtype the forward passes run in under autocast (None: float32; default: float16 on
    CUDA, float32 elsewhere; `device.autocast_dtype` chooses by precision and CPU)."""

    def __init__(self, model, device, batch_size: int = 8, tta: str = "none", name: str | None = None,
                 timings: dict | None = None, autocast_dtype="default"):
        import torch

        self.model, self.device, self.batch_size, self.tta = model, device, max(1, int(batch_size)), tta
        if autocast_dtype == "default":
            autocast_dtype = torch.float16 if device.type == "cuda" else None
        self.autocast_dtype = autocast_dtype
        self.classes = list(model.classes)
        self.name = getattr(model, "checkpoint_path", None) or name
        self.timings = timings if timings is not None else {}
        self.timings.setdefault("model", 0.0)
        self.queue: list[ClipJob] = []   # waiting for a full batch, in the order made
        # trunk maps of aligned faces, {(track, slot, flipped): (256, g, g) tensor}
        self.cache: dict = {}
        self.split = all(callable(getattr(model, a, None)) for a in ("frame_features", "forward_tokens", "forward_head"))

    def run(self, steps: Iterable[WindowStep]) -> Iterator[tuple[list[tuple[int, ClipPrediction]], int]]:
        """Per window step: the clips finished now, as (first grid slot, clip), and the
        bound before which no clip can come any more (the step's, lowered to the first
        slot of any clip still waiting for its batch)."""
        for step in steps:
            self.queue.extend(step.jobs)
            with_crops = sum(job.crops is not None for job in self.queue)
            done = self.flush() if self.queue and (step.final or with_crops >= self.batch_size) else []
            bound = min([step.bound] + [job.first for job in self.queue])
            # no clip from now on starts before `bound`, nor takes a face from before its start
            self.cache = {k: v for k, v in self.cache.items() if k[1] >= bound}
            yield done, bound

    def flush(self) -> list[tuple[int, ClipPrediction]]:
        """Classify every queued job that has crops, in one forward pass; empty the queue."""
        jobs, self.queue = self.queue, []
        t0 = time.perf_counter()
        todo = [job for job in jobs if job.crops is not None]
        if todo and self.split and all(job.keys is not None for job in todo):
            probs = self.shared_probabilities(todo)
        elif todo:
            probs = self.probabilities(np.stack([job.crops for job in todo]))
        for job, p in zip(todo, probs if todo else []):
            top = int(p.argmax())
            job.clip.probabilities = {c: round(float(v), 4) for c, v in zip(self.classes, p)}
            job.clip.label, job.clip.confidence = self.classes[top], round(float(p[top]), 4)
        self.timings["model"] += time.perf_counter() - t0
        return [(job.first, job.clip) for job in jobs]

    def autocast(self):
        """The autocast context of the forward passes (off for float32)."""
        import torch

        on = self.autocast_dtype is not None and self.device.type in ("cuda", "cpu")
        return torch.autocast(self.device.type if on else "cpu", dtype=self.autocast_dtype, enabled=on)

    def shared_probabilities(self, jobs: list[ClipJob]) -> np.ndarray:
        """As `probabilities`, for jobs with `keys`: the trunk runs only on faces not in the
        cache, the head on every clip."""
        import torch

        from dfer_cli.calibration import probabilities as calibrated
        from dfer_cli.preprocess import frames_to_tensor

        flips = (False, True) if self.tta == "flip" else (False,)
        new: dict = {}
        for job in jobs:
            for key, crop in zip(job.keys, job.crops):
                if (*key, False) not in self.cache:
                    new.setdefault(tuple(key), crop)
        with torch.inference_mode():
            with self.autocast():
                if new:
                    frames = frames_to_tensor(np.stack(list(new.values())), self.model.preprocessing)
                    frames = frames.to(self.device)                               # (N, 3, S, S)
                    for flipped in flips:
                        maps = self.model.frame_features(frames.flip(-1) if flipped else frames)  # (N, 256, g, g)
                        for key, m in zip(new, maps):
                            self.cache[(*key, flipped)] = m
                probs = 0
                for flipped in flips:
                    maps = torch.stack([torch.stack([self.cache[(*key, flipped)] for key in job.keys])
                                        for job in jobs])                          # (B, T, 256, g, g)
                    logits = self.model.forward_head(self.model.forward_tokens(maps))
                    probs = probs + calibrated(self.model, logits)
                probs = (probs / len(flips)).cpu().numpy()                         # (B, C)
        if not np.isfinite(probs).all():
            raise ValueError(f"the model gave non-finite probabilities (NaN/Inf); its checkpoint "
                             f"{self.name} is likely damaged -- re-download it or re-save it")
        return probs

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, C) float32 of clips of aligned crops (B, T, S, S, 3) uint8.
        Raises ValueError when they are not finite (a damaged checkpoint)."""
        import torch

        from dfer_cli.models.inference import clip_probs
        from dfer_cli.preprocess import frames_to_tensor

        pre = self.model.preprocessing
        batch = torch.stack([frames_to_tensor(c, pre) for c in crops]).to(self.device)  # (B, T, 3, S, S)
        with torch.inference_mode():
            with self.autocast():
                probs = clip_probs(self.model, batch, self.tta).cpu().numpy()  # (B, C)
        if not np.isfinite(probs).all():
            raise ValueError(f"the model gave non-finite probabilities (NaN/Inf); its checkpoint "
                             f"{self.name} is likely damaged -- re-download it or re-save it")
        return probs

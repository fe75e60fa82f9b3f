"""One classifier shared by the videos a corpus run works on at once: batches of clips from
several videos are merged into one forward pass (on a GPU under autocast).
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Optional

SHARE_WAIT = 0.05  # seconds a batch of clips may wait for other videos' before it is classified alone


class _Request:
    __slots__ = ("x", "since", "out", "error", "done")

    def __init__(self, x):
        self.x, self.since, self.out, self.error, self.done = x, time.monotonic(), None, None, False


class SharedClassifier:
    """One model fed by several threads, each predicting its own video: the clip batches they
    hand in are classified together, in one forward pass of up to `max_batch` clips.

    A thread's call (`view()` stands in for the model in `predict_video`) waits until its
    batch is classified. A forward pass runs, in whichever waiting thread gets there first, as
    soon as the batches waiting hold `max_batch` clips, or every thread that is `member` is
    waiting (none can add more), or the oldest batch has waited `max_wait` seconds (so a
    thread that is busy decoding does not hold the others up for long; default `SHARE_WAIT`). The batches are
    concatenated in arrival order and the output is split back.

    `dtype`: autocast dtype for the forward (torch.float16 or torch.bfloat16 on CUDA; None: the
    model's own precision). Counters: `forwards`, `clips`, `largest` (clips in the largest pass).
    """

    def __init__(self, model, max_batch: int, *, dtype=None, max_wait: Optional[float] = None):
        self.model, self.max_batch, self.dtype = model, max(1, int(max_batch)), dtype
        self.max_wait = SHARE_WAIT if max_wait is None else max_wait
        self.device = next(model.parameters()).device
        self.cond = threading.Condition()
        self.waiting: list[_Request] = []
        self.members = 0
        self.busy = False
        self.forwards = self.clips = self.largest = 0

    @contextlib.contextmanager
    def member(self):
        """The calling thread takes part for the duration of the block (see the class doc)."""
        with self.cond:
            self.members += 1
        try:
            yield
        finally:
            with self.cond:
                self.members -= 1
                self.cond.notify_all()

    def view(self) -> "_ModelView":
        return _ModelView(self)

    def _ready(self) -> bool:
        if not self.waiting or self.busy:
            return False
        return (sum(int(r.x.shape[0]) for r in self.waiting) >= self.max_batch
                or len(self.waiting) >= self.members
                or time.monotonic() - self.waiting[0].since >= self.max_wait)

    def __call__(self, x):
        req = _Request(x)
        with self.cond:
            self.waiting.append(req)
            self.cond.notify_all()
            while not req.done:
                if self._ready():
                    batch, n = [], 0
                    while self.waiting and (not batch or n + int(self.waiting[0].x.shape[0]) <= self.max_batch):
                        batch.append(self.waiting.pop(0))
                        n += int(batch[-1].x.shape[0])
                    self.busy = True
                    self.cond.release()
                    try:
                        self._forward(batch)
                    finally:
                        self.cond.acquire()
                        self.busy = False
                        self.cond.notify_all()
                    continue
                wait = self.max_wait
                if self.waiting and not self.busy:
                    wait = max(1e-3, self.max_wait - (time.monotonic() - self.waiting[0].since))
                self.cond.wait(wait)
        if req.error is not None:
            raise req.error
        return req.out

    def _forward(self, batch: list[_Request]) -> None:
        import torch

        sizes = [int(r.x.shape[0]) for r in batch]
        try:
            x = torch.cat([r.x.to(self.device) for r in batch]) if len(batch) > 1 else batch[0].x.to(self.device)
            # set here, whatever the calling thread has set: autocast state is per thread
            cast = (torch.autocast("cuda", dtype=self.dtype or torch.float16, enabled=self.dtype is not None)
                    if self.device.type == "cuda" else contextlib.nullcontext())
            with torch.inference_mode(), cast:
                y = self.model(x)
            outs = y.split(sizes) if len(batch) > 1 else [y]
            for r, o in zip(batch, outs):
                r.out = o
        except Exception as e:  # each caller sees the error, as if it had run the model itself
            for r in batch:
                r.error = e
        finally:
            for r in batch:
                r.done = True
        with self.cond:
            self.forwards += 1
            self.clips += sum(sizes)
            self.largest = max(self.largest, sum(sizes))


class _ModelView:
    """What `predict_video` is given instead of the model when videos share a classifier:
    everything is the model's, except that calling it goes through the `SharedClassifier`
    (and `.to()` / `.eval()` leave the shared model where it is)."""

    # Whole clips go through the shared forward pass, so the classify stage must not split
    # the model into its trunk and head (pipeline/classify.py) behind the classifier's back.
    frame_features = forward_tokens = None

    def __init__(self, shared: SharedClassifier):
        self._shared = shared

    def __call__(self, x):
        return self._shared(x)

    def __getattr__(self, name):
        return getattr(self._shared.model, name)

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self


AUTOCAST = {"fp16": "float16", "bf16": "bfloat16", "fp32": None}

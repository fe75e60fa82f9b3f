"""Which frames make a clip: every frame-index and window scheme, for training and prediction.

A clip's frames (`frame_indices`, the ``--sampling`` schemes; `run_indices` does the work):

- ``uniform`` (dfer's default): the clip is cut into ``num_frames`` equal segments and one
  frame is taken from each -- a random one in training, the one at ``shift`` (0.5: the
  centre) at test time -- repeating frames when fewer are available (as in the DFEW/FERV39K
  papers).
- ``segments8x2`` (Former-DFER's scheme, which STT and LOGO-Former train and test with): the
  clip is cut into 8 equal segments and a run of 2 *consecutive* frames is taken from each,
  8 x 2 = 16 frames, the run's start random within its segment in training and at the
  segment centre at test time. Taking pairs keeps a little frame-to-frame motion in every
  segment, which one frame per segment loses.

Both are one rule with continuous segment boundaries, so every frame can be drawn and the
result only depends on the clip length: for a run of ``L`` frames (1 for uniform) there are
``n - L + 1`` possible starts, split into ``S`` segments of length ``seg = (n - L + 1) / S``;
segment ``k`` starts its run at ``floor(k * seg + u * seg)`` with ``u`` uniform in [0, 1)
(training) or ``u = shift`` (test). A clip of one frame gives that frame 16 times.

Prediction (videos): `WindowPlan` lays sliding windows over time (seconds). All sample
times lie on one grid, so overlapping windows share frames: a video is decoded once, in
order, and only grid frames are converted, detected and aligned. How a window samples the
grid follows the frame sampling the model was trained with: ``uniform`` takes `num_frames`
uniformly spaced times (the grid step is `window / num_frames` and a window is exactly
`num_frames` grid slots); ``segments8x2`` runs the grid at the video's frame rate, so a
window spans about `window * fps` slots, and takes the test-time `frame_indices` of that
span, i.e. pairs of consecutive video frames as in training.
`sample_on_grid` maps the grid onto a stream of timestamped frames (nearest frame by PTS).
`track_windows` lays windows on one face track's own span of grid slots (what
`predict_video` uses, so that a face that is in view for half a window gets a clip even
when the video-wide windows would cut its time in two).
"""
from __future__ import annotations

import math
from collections import abc
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

SAMPLINGS = ("uniform", "segments8x2")
DEFAULT_SAMPLING = "uniform"
RUN_LENGTH = 2  # consecutive frames per segment in segments8x2


def check_sampling(sampling: str, num_frames: int | None = None) -> None:
    """Raise ValueError (one line, naming the fix) for an unknown scheme, or a clip length
    that ``segments8x2`` cannot make (it needs an even number of frames; 16 = 8 x 2)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"--sampling {sampling!r}: choose one of {', '.join(SAMPLINGS)}")
    if sampling == "segments8x2" and num_frames is not None and num_frames % RUN_LENGTH:
        raise ValueError(f"--sampling segments8x2 takes pairs of consecutive frames, so the clip length must be "
                         f"even (16 = 8 segments x 2); got {num_frames} frames: use --frames 16 or --sampling uniform")


def run_indices(num_available: int, segments: int, run: int, rng: np.random.Generator | None = None,
                shift: float = 0.5) -> np.ndarray:
    """Indices of ``segments * run`` frames: ``run`` consecutive frames from each of
    ``segments`` equal segments of the possible run starts (see the module docstring).
    ``rng`` given: a random start per segment (training); otherwise the start at ``shift``
    (0 <= shift < 1) of each segment."""
    if num_available < 1:
        raise ValueError("a clip needs at least one frame")
    if segments < 1 or run < 1:
        raise ValueError("segments and run must be >= 1")
    starts_available = max(1, num_available - run + 1)
    seg = starts_available / segments
    u = rng.random(segments) if rng is not None else np.full(segments, float(shift))
    starts = np.floor(np.arange(segments) * seg + u * seg).astype(int)
    starts = np.minimum(starts, starts_available - 1)
    idx = starts[:, None] + np.arange(run)[None, :]
    return np.minimum(idx, num_available - 1).reshape(-1)


def frame_indices(num_available: int, num_frames: int, sampling: str = DEFAULT_SAMPLING,
                  rng: np.random.Generator | None = None, shift: float = 0.5) -> np.ndarray:
    """Indices (into ``0 .. num_available - 1``) of the ``num_frames`` frames a clip uses
    under ``sampling``: random within each segment when ``rng`` is given (training), at
    ``shift`` of each segment otherwise (test; 0.5 = centre, other values for
    ``--test-clips`` > 1). ``segments8x2`` at other even lengths uses ``num_frames / 2``
    segments of 2 frames."""
    check_sampling(sampling, num_frames)
    if sampling == "segments8x2":
        return run_indices(num_available, num_frames // RUN_LENGTH, RUN_LENGTH, rng, shift)
    return run_indices(num_available, num_frames, 1, rng, shift)


@dataclass(frozen=True)
class Window:
    index: int       # window number, in time order
    start: float     # seconds
    end: float       # seconds
    first: int       # first grid slot; the window spans slots first .. first + WindowPlan.span - 1


class WindowPlan:
    """Sliding windows over a video of `duration` seconds.

    window: window length in seconds (default 2.0); stride: seconds between window starts
    (default 1.0); num_frames: frames per clip (the model's clip length); sampling: the
    model's frame sampling, ``uniform`` (default) or ``segments8x2``; fps: the video's frame
    rate (only ``segments8x2`` uses it).

    Uniform: sample times are the grid `(k + 0.5) * step` with `step = window / num_frames`,
    and a window is `num_frames` consecutive grid slots. Segments8x2 with at least
    `num_frames` video frames per window: the grid is `k * step` with `step = 1 / fps` (grid
    slots fall on the video's frames, so consecutive slots are consecutive frames), a window
    is `span = round(window * fps)` slots, and a clip takes the slots `first + offsets`
    (8 segments x 2 consecutive slots, centred in each segment). With fewer frames per
    window it falls back to the uniform grid, where 8 x 2 consecutive slots are all 16.

    Window starts are snapped to the grid. A video shorter than one window gets one window
    covering all of it. When the last full window ends more than half a stride before the
    video does, one more window is added that ends at the end, so the tail is covered.

    duration None: a live stream whose end is not known (`open_ended`). The grid and the
    video-wide windows then go on without end (`grid_times()` and `windows` are lazy
    sequences, `num_grid` is `OPEN_END`); every window is a full one, starting every stride.
    """

    def __init__(self, duration: float, window: float = 2.0, stride: float = 1.0, num_frames: int = 16,
                 sampling: str = "uniform", fps: float | None = None):
        if window <= 0 or stride <= 0:
            raise ValueError("window and stride must be positive seconds")
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        check_sampling(sampling, num_frames)
        self.open_ended = duration is None
        duration = math.inf if self.open_ended else max(float(duration or 0.0), 0.0)
        self.duration, self.num_frames, self.sampling = duration, num_frames, sampling
        self.window = min(window, duration) if duration > 0 else window
        if sampling == "segments8x2" and fps and self.window * fps >= num_frames:
            self.span, self.step, self.phase = int(round(self.window * fps)), 1.0 / fps, 0.0
            self.window = self.span * self.step
        else:
            self.span, self.step, self.phase = num_frames, self.window / num_frames, 0.5
        # which of a window's `span` slots its clip takes, (num_frames,) ints, non-decreasing
        self.offsets = tuple(int(i) for i in frame_indices(self.span, num_frames, sampling))
        stride_k = max(1, int(round(stride / self.step)))
        self.stride_slots = stride_k  # the stride in grid slots (stride snapped to the grid)
        if self.open_ended:
            self._offset_set = frozenset(self.offsets)
            self.windows = _OpenWindows(self)
            self._used = None
            return
        eps = 1e-6 * max(1.0, duration)
        n_grid_total = max(self.span, int(math.floor(duration / self.step + eps)))
        firsts = list(range(0, n_grid_total - self.span + 1, stride_k))
        last = n_grid_total - self.span
        if last - firsts[-1] >= stride_k / 2:
            firsts.append(last)
        self.windows = [Window(i, f * self.step, self.end_time(f), f) for i, f in enumerate(firsts)]
        used = np.zeros(n_grid_total, dtype=bool)
        for w in self.windows:
            used[list(self.slots(w))] = True
        self._used = used

    @property
    def stride(self) -> float:
        """The stride in seconds, as snapped to the grid."""
        return self.stride_slots * self.step

    @property
    def spaced(self) -> bool:
        """Whether the windows leave gaps (stride longer than the window): grid slots between
        them are not needed by any window."""
        return self.stride_slots > self.span

    @property
    def num_grid(self) -> int:
        """Number of grid slots over the video (`OPEN_END` for a live stream)."""
        return OPEN_END if self.open_ended else len(self._used)

    @property
    def slots_per_frame(self) -> int:
        """Grid slots per clip frame, rounded (1 for uniform; about window * fps / num_frames
        for segments8x2): how much finer the grid is than one sample per clip frame."""
        return max(1, int(round(self.span / self.num_frames)))

    def time(self, k: int) -> float:
        """Sample time (seconds) of grid index k."""
        return (k + self.phase) * self.step

    def grid_times(self) -> Sequence[float]:
        """Sample times (seconds) of every grid slot, (num_grid,) float (a lazy sequence of
        `OPEN_END` times for a live stream)."""
        if self.open_ended:
            return _GridTimes(self)
        return (np.arange(self.num_grid) + self.phase) * self.step

    def end_time(self, first: int) -> float:
        """End (seconds) of the window whose first grid slot is `first`, clamped to the video."""
        return min((first + self.span) * self.step, max(self.duration, self.window))

    def needed(self, k: int) -> bool:
        """Whether any window samples grid index k (frames between spaced-out windows are skipped)."""
        if self.open_ended:  # some window start first = m * stride has k - first among the offsets
            return k >= 0 and any(k - o >= 0 and (k - o) % self.stride_slots == 0 for o in self._offset_set)
        return 0 <= k < len(self._used) and bool(self._used[k])

    def clip_slots(self, first: int) -> list[int]:
        """The grid slots (num_frames of them, non-decreasing) a clip of the window starting
        at grid slot `first` is made of."""
        return [first + o for o in self.offsets]

    def slots(self, w: Window) -> list[int]:
        """The grid slots window `w`'s clip is made of (see `clip_slots`)."""
        return self.clip_slots(w.first)


OPEN_END = 2**62   # grid slots of a live stream's plan: more than any stream will reach


class _GridTimes(abc.Sequence):
    """The grid times of an open-ended plan, computed on demand: `OPEN_END` of them."""

    def __init__(self, plan: "WindowPlan"):
        self.plan = plan

    def __len__(self) -> int:
        return OPEN_END

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(min(len(self), 2**31)))]
        return self.plan.time(int(k))


class _OpenWindows(abc.Sequence):
    """The video-wide windows of an open-ended plan, one every stride, made on demand."""

    def __init__(self, plan: "WindowPlan"):
        self.plan = plan

    def __len__(self) -> int:
        return OPEN_END // self.plan.stride_slots

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(min(len(self), 2**31)))]
        first = int(i) * self.plan.stride_slots
        return Window(int(i), first * self.plan.step, self.plan.end_time(first), first)


def track_windows(first: int, last: int, num_frames: int, stride: int, ended: bool = True) -> list[int]:
    """First grid slots of the windows laid on one face track, seen in grid slots first..last.

    Windows start at the track's first slot and every `stride` slots after it while they fit
    inside the track's span; the last one is aligned to the track's end, so a window ends on
    the track's last slot whenever the regular ones stop short of it. A track shorter than a
    window gets one window ending on its last slot (starting at slot 0 if that would be
    earlier), so a face seen for at least half a window fills at least half of that window.
    With `ended` False (the track may go on), only the regular windows are known yet: the
    list only grows as `last` does, and the end-aligned window is added once the track ends.
    """
    if last < first:
        return []
    out = list(range(first, last - num_frames + 2, max(1, int(stride))))
    if ended:
        if not out:
            out = [max(0, last - num_frames + 1)]
        elif out[-1] + num_frames - 1 < last:
            out.append(last - num_frames + 1)
    return out


def sample_on_grid(frames: Iterable, times: Sequence[float],
                   max_distance: float | None = None) -> Iterator[tuple[int, object]]:
    """Pair each grid time with the frame nearest to it, streaming.

    frames: objects with a `.time` attribute (seconds), in increasing time order (e.g.
    `video.decode.iter_frames`). times: increasing grid times. Yields `(k, frame)` in order of k;
    a frame can serve several grid times (video slower than the grid). Grid times after the
    last frame by more than `max_distance` seconds (e.g. past the end of a truncated video)
    are not yielded. Only the previous frame is held, so memory does not grow.
    """
    n = len(times)
    k, prev = 0, None
    for f in frames:
        while k < n and times[k] <= f.time:
            g = times[k]
            yield k, (prev if (prev is not None and g - prev.time < f.time - g) else f)
            k += 1
        if k >= n:
            return
        prev = f
    while k < n and prev is not None:
        if max_distance is not None and times[k] - prev.time > max_distance:
            return
        yield k, prev
        k += 1

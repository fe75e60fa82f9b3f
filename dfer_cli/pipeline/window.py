"""Window stage: per-track clip assembly on the sampling grid.

`WindowStage` places each aligned frame's faces on the grid slots it serves and, after
every batch, lays the windows that are now decided and turns them into `ClipJob`s:

- Windows are laid on each face track's own span of grid slots (`video.sampling.track_windows`:
  from the track's first slot every stride, the last one aligned to its end once the track
  has ended, i.e. it was cut, or not seen for `max_gap` seconds, or the video ended). With
  a stride longer than the window (gaps between windows) the video-wide windows of the plan
  are used instead, one clip per track seen in each.
- A window's clip takes the grid slots `plan.clip_slots(first)` (16 uniform slots, or
  8 x 2 consecutive ones for a segments8x2 model). A slot where the track was not found
  reuses its nearest found slot in the clip; a clip found in fewer than `min_coverage` of
  its slots is not classified (its job has no crops, its clip a status saying why).
- Without `all_faces`, a track's clip is made only if it is the main face of that window:
  the greatest accumulated face area (`Track.area_sum`) among tracks found in at least
  `min_coverage` of its slots.

Each step also gives a bound: no clip made later can start before that grid slot, which is
what lets clips be handed out in time order while the video is still being read. Slots
before the bound are dropped, so memory holds about one window of aligned crops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from dfer_cli.pipeline.frames import AlignedFace, FrameBatch, GridFrame
from dfer_cli.results import ClipPrediction
from dfer_cli.video.sampling import WindowPlan, track_windows

NO_BOUND = 10**12   # the bound once the video is done: every clip may go


@dataclass
class ClipJob:
    """A clip waiting for the classifier: `first` (its window's first grid slot), `clip`
    (a ClipPrediction without probabilities yet) and `crops`, the clip's aligned faces
    (T, S, S, 3) uint8, or None when it is not to be classified. `keys`: per frame, which
    aligned face it is, (track id, grid slot) (overlapping clips share faces; None: unknown)."""

    first: int
    clip: ClipPrediction
    crops: np.ndarray | None
    keys: list | None = None


@dataclass
class WindowStep:
    """The clips decided after one batch (`jobs`, in (first, track) order), the `bound`
    (grid slot before which no later clip starts) and whether the video is done (`final`)."""

    jobs: list[ClipJob]
    bound: int
    final: bool = False


class WindowStage:
    """Assembles per-track clips; see the module docstring.

    plan: the sampling grid and windows. tracker: the `faces.track.IoUTracker` the track stage
    updates (read for which tracks have ended and their face area). video: the path as
    given (for the clips). duration: seconds. all_faces, min_coverage: as in
    `predict_video`. faces_seen: a dict that receives, per track, (time, [x1, y1, x2, y2])
    for every sampled frame that had its face (`VideoResult.faces`).
    """

    def __init__(self, plan: WindowPlan, tracker, video: str, duration: float, *, all_faces: bool = False,
                 min_coverage: float = 0.5, faces_seen: dict | None = None):
        self.plan, self.tracker, self.video, self.duration = plan, tracker, video, duration
        self.all_faces, self.min_coverage = all_faces, min_coverage
        self.faces_seen = faces_seen if faces_seen is not None else {}
        self.slots: dict[int, dict[int, AlignedFace]] = {}   # grid slot -> {track id: face}
        self.slot_frame: dict[int, int] = {}   # grid slot -> index of the video frame sampled there
        self.span: dict[int, list[int]] = {}   # track id -> [first, last] grid slot with its face
        self.laid: dict[int, int] = {}         # track id -> windows laid so far
        self.open_tracks: set[int] = set()     # tracks that may still go on
        self.next_window = 0                   # spaced plans: the next video-wide window
        self.done_slot, self.done_time = -1, -1.0   # the latest grid slot placed, and its frame's time
        self.last_slot = -1                    # once the input is done: the last grid slot placed

    def run(self, batches: Iterable[FrameBatch],
            progress: Callable[[float], None] | None = None) -> Iterator[WindowStep]:
        """A WindowStep per batch, and a final one when the batches end.
        progress(t) is called with the time of each batch's last new frame."""
        for batch in batches:
            placed = batch.placed()
            for k, gf in placed:
                self.place(k, gf)
            self.done_slot = placed[-1][0]
            if batch.frames:
                self.done_time = batch.frames[-1].frame.time
                if progress is not None:
                    progress(self.done_time)
            yield self.close(final=False)
        self.last_slot = self.done_slot
        self.done_slot = self.plan.num_grid
        yield self.close(final=True)

    def place(self, k: int, gf: GridFrame) -> None:
        """Put the aligned faces of `gf` on grid slot k."""
        self.slots[k] = gf.faces
        self.slot_frame[k] = gf.frame.index
        for tid, face in gf.faces.items():
            if tid not in self.span:
                self.span[tid] = [k, k]
                self.open_tracks.add(tid)
            self.span[tid][1] = k
            seen_at = self.faces_seen.setdefault(tid, [])
            if not seen_at or seen_at[-1][0] != gf.frame.time:
                seen_at.append((gf.frame.time, [round(float(v), 1) for v in face.box]))

    def close(self, final: bool) -> WindowStep:
        """The clips of every window decided by now; drops the slots no later window needs."""
        if self.plan.spaced:
            made, bound = self._video_windows(final)
        else:
            made, bound = self._track_windows(final)
        jobs = [job for first, tid in made if (job := self.make_clip(first, tid)) is not None]
        for k in [k for k in self.slots if k < bound]:
            del self.slots[k]
            self.slot_frame.pop(k, None)
        return WindowStep(jobs, bound, final)

    def _track_windows(self, final: bool) -> tuple[list[tuple[int, int]], int]:
        """(first slot, track) of the newly decided windows laid on track spans, and the bound."""
        made = []
        for tid in sorted(self.open_tracks):
            tr = self.tracker.tracks[tid]
            ended = final or not tr.alive or self.done_time - tr.last_time > self.tracker.max_gap + 1e-9
            firsts = track_windows(self.span[tid][0], self.span[tid][1], self.plan.span,
                                   self.plan.stride_slots, ended=ended)
            made += [(f, tid) for f in firsts[self.laid.get(tid, 0):]]
            self.laid[tid] = len(firsts)
            if ended:
                self.open_tracks.discard(tid)
        # a later window starts no earlier than the end-aligned window of a track that goes
        # on, or that of a track that appears after the slots done so far
        n = self.plan.span
        bound = min([self.done_slot + 2 - n] + [self.span[t][1] - n + 1 for t in self.open_tracks])
        return sorted(made), (NO_BOUND if final else bound)

    def _video_windows(self, final: bool) -> tuple[list[tuple[int, int]], int]:
        """(first slot, track) for the video-wide windows now complete, and the bound."""
        made, windows = [], self.plan.windows
        while self.next_window < len(windows):
            w = windows[self.next_window]
            # a live stream's windows go on without end: once it is done, only full ones count
            if (not final and self.done_slot < self.plan.slots(w)[-1]) or (
                    final and self.plan.open_ended and self.last_slot < self.plan.slots(w)[-1]):
                break
            self.next_window += 1
            made += [(w.first, tid) for tid in sorted({t for k in self.plan.slots(w) for t in self.slots.get(k, {})})]
        bound = windows[self.next_window].first if self.next_window < len(windows) else NO_BOUND
        return made, bound

    def make_clip(self, first: int, tid: int) -> ClipJob | None:
        """The job for track `tid`'s clip of the window starting at grid slot `first`, or None
        when the track is not in it (or, by default, is not the window's main face)."""
        ks = self.plan.clip_slots(first)
        present: dict[int, list[int]] = {}
        for k in ks:
            for t in self.slots.get(k, {}):
                present.setdefault(t, []).append(k)
        if tid not in present or (not self.all_faces and self.main_face(present) != tid):
            return None
        have = present[tid]
        box = np.mean([self.slots[k][tid].box for k in have], axis=0).tolist()
        sampled = [self.slot_frame[k] for k in ks if k in self.slot_frame]
        clip = ClipPrediction(video=self.video, track=tid, start=first * self.plan.step,
                              end=self.plan.end_time(first), box=box, probabilities=None, label=None,
                              confidence=None, frames=(min(sampled), max(sampled)))
        T = len(ks)
        if len(have) < self.min_coverage * T:
            clip.status = f"face missing in {T - len(have)}/{T} frames"
            return ClipJob(first, clip, None)
        src = [min(have, key=lambda h: (abs(h - k), h)) for k in ks]   # the slot each frame is taken from
        return ClipJob(first, clip, np.stack([self.slots[h][tid].crop for h in src]), [(tid, h) for h in src])

    def main_face(self, present: dict[int, list[int]]) -> int:
        """The main track among `present` ({track: its slots in the window}): the greatest
        accumulated face area among those found in at least `min_coverage` of the slots."""
        need = self.min_coverage * self.plan.num_frames
        return max(sorted(present), key=lambda t: (len(present[t]) >= need, self.tracker.tracks[t].area_sum))

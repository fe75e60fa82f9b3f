"""`predict_video`: a video file in, expression predictions per face track and time window out.

    import dfer_cli
    model = dfer_cli.load_model("logo_former_dfew")
    result = dfer_cli.predict_video(model, "talk.mp4")
    for clip in result.clips:
        print(clip.start, clip.end, clip.track, clip.label, clip.confidence)

How it runs (one decode, in order, memory bounded by one window):
1. `clips.WindowPlan` lays a time grid of `num_frames` samples per window (default 2 s);
   only grid frames are converted to RGB.
2. Each distinct grid frame is handled once: batched through `faces.FaceDetector` (every
   `detect_every`-th frame; landmarks in between are interpolated along each track), linked
   into tracks (`tracking.IoUTracker`, scene cuts end tracks) and aligned to the model's
   input size. A video slower than the grid puts one frame in several grid slots; they
   share its faces.
3. Windows are laid on each face track's own span of grid slots (`clips.track_windows`:
   from the track's first slot every stride, the last one aligned to the track's end), so
   a face in view for at least half a window gets a clip. When a window's frames are in it
   becomes a clip; clips are classified in batches and handed to `on_clip` in time order
   (start, then track) as soon as no earlier clip can still come. With a stride longer than
   the window (gaps between windows) the video-wide windows of the plan are used instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dfer_cli import faces as _faces
from dfer_cli import tracking as _tracking
from dfer_cli.clips import WindowPlan, sample_on_grid, track_windows
from dfer_cli.results import ClipPrediction, TrackSummary, VideoResult

MIN_COVERAGE = 0.5   # a clip is classified only if its face was found in at least this share of frames
DETECT_EVERY = 2     # run the detector on every n-th grid frame; interpolate landmarks between

_DETECTORS: dict = {}


def get_detector(detect_size=_faces.DETECT_SIZE, min_face=_faces.MIN_FACE,
                 min_score=_faces.MIN_SCORE, device=None) -> _faces.FaceDetector:
    """A cached FaceDetector (loading MTCNN once per process and setting)."""
    key = (detect_size, float(min_face), float(min_score), str(device or "cpu"))
    if key not in _DETECTORS:
        _DETECTORS[key] = _faces.FaceDetector(detect_size=detect_size, min_face=min_face,
                                              min_score=min_score, device=device)
    return _DETECTORS[key]


def model_identity(model) -> tuple[str, str | None]:
    """(name, sha256) recorded for `model` in the `video` records.

    For a model from `load_model`: the checkpoint file's name without `.safetensors` (for a
    named checkpoint that is its registry name; never a path, which would only say where it
    was on one machine) and the sha256 of that file, computed once per model object and kept
    on it. For a model not loaded from a file: its registered architecture name and None.
    """
    path = getattr(model, "checkpoint_path", None)
    cached = getattr(model, "_dfer_identity", None)
    if cached is not None and cached[0] == path:
        return cached[1]
    if path:
        from pathlib import Path

        from dfer_cli.weights import SUFFIX, file_sha256

        name = Path(path).name
        identity = (name[: -len(SUFFIX)] if name.endswith(SUFFIX) else Path(path).stem, file_sha256(path))
    else:
        identity = (str(getattr(model, "model_name", None) or type(model).__name__), None)
    try:
        model._dfer_identity = (path, identity)
    except AttributeError:  # an object that takes no attributes: computed again next time
        pass
    return identity


@dataclass
class _Face:
    crop: np.ndarray          # aligned (S, S, 3) uint8
    box: np.ndarray           # (4,) source pixels


@dataclass
class _Pending:
    frame: object             # video.Frame, one distinct decoded frame
    ks: list[int]             # grid indices it serves (several when the video is slower than the grid)
    detect: bool
    cut: bool = False         # a scene cut happens just before this frame
    dets: list = field(default_factory=list)   # [(track id, Detection)] once detected
    faces: dict | None = None  # {track id: _Face} once processed, shared by every slot in ks


def predict_video(
    model,
    path,
    *,
    window: float = 2.0,
    stride: float = 1.0,
    all_faces: bool = False,
    batch_size: int = 8,
    device=None,
    on_clip: Callable[[ClipPrediction], None] | None = None,
    progress: Callable[[float, float], None] | None = None,
    detect_size: int | None = _faces.DETECT_SIZE,
    min_face: float = _faces.MIN_FACE,
    min_score: float = _faces.MIN_SCORE,
    detect_every: int = DETECT_EVERY,
    detect_batch: int = 8,
    min_coverage: float = MIN_COVERAGE,
    iou_threshold: float = _tracking.IOU_THRESHOLD,
    max_gap: float = _tracking.MAX_GAP,
    cut_threshold: float | None = _tracking.CUT_THRESHOLD,
    detector: _faces.FaceDetector | None = None,
    timings: dict | None = None,
    tta: str = "none",
) -> VideoResult:
    """Predict facial expressions over time for the faces in one video.

    model: a classifier as returned by `dfer_cli.load_model` (has `.preprocessing` and
    `.classes`). window / stride: clip length and hop in seconds; each clip holds
    `preprocessing.num_frames` frames spaced uniformly in its window. Windows start where
    each face track starts and end-align to where it ends (see the module docstring).
    all_faces: report every face track; by default only the main face of each window is
    reported, the largest / most persistent track in view (greatest accumulated face area)
    among those that fill at least `min_coverage` of it. batch_size: clips per model forward.
    device: torch device for the model and detector (default: where the model already is).
    on_clip(ClipPrediction): called as each clip is done, in time order (start, then track).
    progress(t, duration): called as decoding advances (seconds).

    Detector options: detect_size (longest side of the copy MTCNN runs on, pixels; None = full
    size), min_face (smallest face, fraction of the shorter side, or pixels if > 1),
    min_score (MTCNN probability), detect_every (detect on every n-th distinct frame, and at
    least every max_gap seconds so tracks hold), detect_batch
    (frames per MTCNN call). Tracking: iou_threshold, max_gap (seconds a face may be missed
    and keep its id), cut_threshold (colour-histogram distance counted as a scene cut; None
    disables). min_coverage: share of a clip's frames that must show the face for it to be
    classified; otherwise the clip is reported with label None and a status.
    timings: optional dict that receives seconds spent per stage (decode, detect, align, model).
    tta: "flip" averages each clip's probabilities with its mirror image's (twice the model
    cost; see evaluate.clip_probs).

    The result also says where it came from: the model's name and weights' sha256
    (`model_identity`), the window and stride as used, and the video's frame rate; each clip
    carries the indices of the first and last video frames it was sampled from, and
    `result.faces` where each track's face was seen (for `render.annotate_video`).

    A video without faces gives a VideoResult with no clips and no tracks. Raises
    `video.VideoError` when the file cannot be read, and ValueError when the model's
    probabilities are not finite (a damaged checkpoint).
    """
    import time

    import torch

    from dfer_cli import video as _video
    from dfer_cli.evaluate import TTA_MODES, clip_probs
    from dfer_cli.preprocess import frames_to_tensor

    if tta not in TTA_MODES:
        raise ValueError(f"tta {tta!r}: choose one of {', '.join(TTA_MODES)}")

    pre = model.preprocessing
    classes = list(model.classes)
    T, S = int(pre.num_frames), int(pre.input_size)
    if device is not None:
        from dfer_cli.device import resolve_device
        dev = resolve_device(str(device)) if isinstance(device, str) else torch.device(device)
        model = model.to(dev)
    else:
        dev = next(model.parameters()).device
    model.eval()
    if detector is None:
        detector = get_detector(detect_size, min_face, min_score,
                                dev if dev.type == "cuda" else None)
    detect_every = max(1, int(detect_every))
    tm = timings if timings is not None else {}
    for key in ("decode", "detect", "align", "model"):
        tm.setdefault(key, 0.0)

    info = _video.probe(path)
    duration = info.duration if info.duration > 0 else _video.scan_duration(path)
    plan = WindowPlan(duration, window, stride, T)
    max_tail = max(plan.step, 1.5 / info.fps if info.fps > 0 else 0.1)
    tracker = _tracking.IoUTracker(iou_threshold, max_gap)
    name, sha256 = model_identity(model)
    result = VideoResult(video=str(path), duration=duration, model=name, classes=classes,
                         weights_sha256=sha256, fps=info.fps if info.fps > 0 else None,
                         window=plan.window, stride=plan.stride)

    slots: dict[int, dict[int, _Face]] = {}   # grid index -> {track id: aligned face}
    slot_frame: dict[int, int] = {}           # grid index -> index of the video frame sampled there
    seen: set[int] = set()                    # grid indices that had a frame
    span: dict[int, list[int]] = {}           # track id -> [first, last] grid index with its face
    laid: dict[int, int] = {}                 # track id -> windows laid so far (see clips.track_windows)
    open_tracks: set[int] = set()             # tracks that may still go on
    queue: list[tuple[int, ClipPrediction, object]] = []  # (window's first grid index, clip, input or None)
                                              # waiting for the model, in the order made
    ready: list[tuple[tuple[int, int], ClipPrediction]] = []  # classified, waiting for earlier clips
    state = {"next_window": 0, "done_k": -1, "done_time": -1.0}

    def put_slot(k: int, faces: dict, frame) -> None:
        slots[k] = faces
        slot_frame[k] = frame.index
        for tid, face in faces.items():
            if tid not in span:
                span[tid] = [k, k]
                open_tracks.add(tid)
            span[tid][1] = k
            seen_at = result.faces.setdefault(tid, [])
            if not seen_at or seen_at[-1][0] != frame.time:
                seen_at.append((frame.time, [round(float(v), 1) for v in face.box]))

    def emit_ready(bound: float) -> None:
        """Hand out the classified clips whose window starts before grid index `bound`, in
        (start, track) order: no clip made later can start earlier than that."""
        if queue:
            bound = min(bound, min(first for first, _, _ in queue))
        ready.sort(key=lambda r: r[0])
        while ready and ready[0][0][0] < bound:
            clip = ready.pop(0)[1]
            result.clips.append(clip)
            if on_clip is not None:
                on_clip(clip)

    def run_model(force: bool = False):
        n_tensors = sum(1 for _, _, x in queue if x is not None)
        if not queue or (n_tensors < batch_size and not force):
            return
        t0 = time.perf_counter()
        xs = [x for _, _, x in queue if x is not None]
        if xs:
            batch = torch.stack(xs).to(dev)  # (B, T, 3, S, S)
            with torch.inference_mode():
                with torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
                    probs = clip_probs(model, batch, tta).cpu().numpy()  # (B, C)
            if not np.isfinite(probs).all():
                where = getattr(model, "checkpoint_path", None) or result.model
                raise ValueError(f"the model gave non-finite probabilities (NaN/Inf); its checkpoint "
                                 f"{where} is likely damaged -- re-download it or re-save it")
        tm["model"] += time.perf_counter() - t0
        i = 0
        for first, clip, x in queue:
            if x is not None:
                p = probs[i]
                i += 1
                top = int(p.argmax())
                clip.probabilities = {c: round(float(v), 4) for c, v in zip(classes, p)}
                clip.label, clip.confidence = classes[top], round(float(p[top]), 4)
            ready.append(((first, clip.track), clip))
        queue.clear()

    def make_clip(first: int, tid: int) -> None:
        """The clip of track `tid` over the window starting at grid index `first` (in the
        default mode only if `tid` is the main face of that window)."""
        ks = range(first, first + T)
        present: dict[int, list[int]] = {}
        for k in ks:
            for t in slots.get(k, {}):
                present.setdefault(t, []).append(k)
        if tid not in present:
            return
        if not all_faces:
            need = min_coverage * T
            main = max(sorted(present), key=lambda t: (len(present[t]) >= need, tracker.tracks[t].area_sum))
            if main != tid:
                return  # another face is the main one in this window; it reports it
        have = present[tid]
        box = np.mean([slots[k][tid].box for k in have], axis=0).tolist()
        sampled = [slot_frame[k] for k in ks if k in slot_frame]
        start, end = first * plan.step, min((first + T) * plan.step, max(duration, plan.window))
        clip = ClipPrediction(video=str(path), track=tid, start=start, end=end, box=box,
                              probabilities=None, label=None, confidence=None,
                              frames=(min(sampled), max(sampled)))
        if len(have) < min_coverage * T:
            clip.status = f"face missing in {T - len(have)}/{T} frames"
            queue.append((first, clip, None))
            return
        t0 = time.perf_counter()
        crops = [slots[min(have, key=lambda h: (abs(h - k), h))][tid].crop for k in ks]
        x = frames_to_tensor(np.stack(crops), pre)  # (T, 3, S, S)
        tm["align"] += time.perf_counter() - t0
        queue.append((first, clip, x))

    def close_windows(final: bool):
        """Make the clips of every window that is now decided, classify them in batches and
        hand them out in time order."""
        if plan.spaced:
            # Windows with gaps between them: only their grid slots are decoded, so the clips
            # are those of the video-wide windows, one per track seen in each.
            while state["next_window"] < len(plan.windows):
                w = plan.windows[state["next_window"]]
                if not final and state["done_k"] < w.first + T - 1:
                    break
                state["next_window"] += 1
                for tid in sorted({t for k in plan.slots(w) for t in slots.get(k, {})}):
                    make_clip(w.first, tid)
            bound = plan.windows[state["next_window"]].first if state["next_window"] < len(plan.windows) else 10**12
        else:
            # Windows laid on each track's own span (clips.track_windows): a face in view for
            # half a window gets a clip however the video-wide grid would cut its time.
            made = []
            for tid in sorted(open_tracks):
                tr = tracker.tracks[tid]
                ended = final or not tr.alive or state["done_time"] - tr.last_time > tracker.max_gap + 1e-9
                firsts = track_windows(span[tid][0], span[tid][1], T, plan.stride_slots, ended=ended)
                made += [(f, tid) for f in firsts[laid.get(tid, 0):]]
                laid[tid] = len(firsts)
                if ended:
                    open_tracks.discard(tid)
            for f, tid in sorted(made):
                make_clip(f, tid)
            # a later window can start no earlier than: the end-aligned window of a track that
            # goes on, or that of a track that appears after the slots done so far
            bound = min([state["done_k"] + 2 - T] + [span[t][1] - T + 1 for t in open_tracks])
            if final:
                bound = 10**12
        run_model(force=final)
        emit_ready(bound)
        # slots no later window needs are dropped (memory stays at about one window)
        for k in [k for k in slots if k < bound]:
            del slots[k]
            slot_frame.pop(k, None)

    pending: list[_Pending] = []   # distinct frames waiting for detection, in time order
    anchor: _Pending | None = None  # the last detected entry of the previous batch (left neighbour)

    def process(final: bool):
        """Detect the pending frames marked for detection, track, interpolate, align."""
        nonlocal pending, anchor
        if final and pending and not pending[-1].detect:
            pending[-1].detect = True
        upto = max((i for i, p in enumerate(pending) if p.detect), default=-1)
        if upto < 0:
            return
        todo, pending = pending[:upto + 1], pending[upto + 1:]
        det_entries = [p for p in todo if p.detect]
        t0 = time.perf_counter()
        groups: dict[tuple, list[_Pending]] = {}
        for p in det_entries:  # MTCNN batches need equal sizes
            groups.setdefault(p.frame.rgb.shape, []).append(p)
        tm["decode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for group in groups.values():
            for p, dets in zip(group, detector.detect([p.frame.rgb for p in group])):
                p.dets = dets
        tm["detect"] += time.perf_counter() - t0
        for p in det_entries:  # each distinct frame once, in time order
            if p.cut:
                tracker.cut()
            ids = tracker.update(p.frame.time, [d.box for d in p.dets])
            p.dets = list(zip(ids, p.dets))
        left = anchor
        for i, p in enumerate(todo):
            if p.detect:
                faces_ = [(tid, d.landmarks, d.box) for tid, d in p.dets]
                left = p
            else:
                right = next(q for q in todo[i + 1:] if q.detect)
                faces_ = []
                if left is not None and not right.cut:  # else: no face known on both sides
                    lmap = {tid: d for tid, d in left.dets}
                    a = (p.frame.time - left.frame.time) / max(right.frame.time - left.frame.time, 1e-9)
                    for tid, d in right.dets:
                        if tid in lmap:  # interpolate along the track between the two detections
                            l0 = lmap[tid]
                            faces_.append((tid, (1 - a) * l0.landmarks + a * d.landmarks,
                                           (1 - a) * l0.box + a * d.box))
            t0 = time.perf_counter()
            p.faces = {tid: _Face(_faces.align_face(p.frame.rgb, lm, S, pre.template), box)
                       for tid, lm, box in faces_}
            tm["align"] += time.perf_counter() - t0
            for k in p.ks:
                put_slot(k, p.faces, p.frame)
        anchor = det_entries[-1]
        state["done_k"] = todo[-1].ks[-1]
        state["done_time"] = todo[-1].frame.time
        if progress is not None:
            progress(todo[-1].frame.time, duration)
        close_windows(final=False)

    last: _Pending | None = None   # the entry of the latest distinct frame
    last_det_time, since_det = None, 0   # time of the latest frame marked for detection; distinct frames since
    prev_sig = None
    t0 = time.perf_counter()
    frames = sample_on_grid(_video.iter_frames(path), plan.grid_times(), max_distance=max_tail)
    for k, frame in frames:
        last_time = frame.time
        if plan.spaced and not plan.needed(k):
            continue  # between spaced-out windows (otherwise every slot may be in a track's window)
        seen.add(k)
        if last is not None and frame is last.frame:
            # a video slower than the grid: this slot repeats the latest frame and shares its
            # faces (the frame is detected, tracked and aligned once)
            last.ks.append(k)
            if last.faces is not None:
                put_slot(k, last.faces, last.frame)
                state["done_k"] = k
                close_windows(final=False)
            continue
        rgb = frame.rgb
        sig = _tracking.frame_signature(rgb)
        cut = _tracking.is_cut(prev_sig, sig, cut_threshold) if cut_threshold is not None else False
        prev_sig = sig
        # Detect every n-th distinct frame. Landmarks are never interpolated across a cut, and
        # detections stay within max_gap of each other so the tracker keeps a face's id: when
        # this frame is a cut or too far from the last detection, the frame before it (still
        # pending, since a batch always ends on a detected frame) is detected too.
        far = last_det_time is not None and frame.time - last_det_time > max_gap
        if (cut or far) and pending and not pending[-1].detect:
            pending[-1].detect = True
            last_det_time, since_det = pending[-1].frame.time, 0
        since_det += 1
        detect = (cut or last_det_time is None or since_det >= detect_every
                  or frame.time - last_det_time > max_gap)
        if detect:
            last_det_time, since_det = frame.time, 0
        last = _Pending(frame, [k], detect=detect, cut=cut)
        pending.append(last)
        tm["decode"] += time.perf_counter() - t0
        if sum(q.detect for q in pending) >= detect_batch and pending[-1].detect:
            process(final=False)
        t0 = time.perf_counter()
    tm["decode"] += time.perf_counter() - t0
    process(final=True)
    state["done_k"] = plan.num_grid
    close_windows(final=True)
    if seen:
        result.duration = max(duration, last_time)
    result.tracks = summarize(result.clips, classes)
    return result


def summarize(clips: list[ClipPrediction], classes: list[str]) -> list[TrackSummary]:
    """Per-track summary: time span, classified clip count, mean probabilities, dominant label.

    The span (start, end) covers all the track's clips, classified or not; the count, mean
    probabilities and label cover the classified clips only (None when there are none).
    """
    out = []
    for tid in sorted({c.track for c in clips}):
        cs = [c for c in clips if c.track == tid]
        ok = [c for c in cs if c.probabilities is not None]
        probs = label = None
        if ok:
            mean = np.mean([[c.probabilities[k] for k in classes] for c in ok], axis=0)
            probs = {k: round(float(v), 4) for k, v in zip(classes, mean)}
            label = classes[int(mean.argmax())]
        out.append(TrackSummary(track=tid, start=min(c.start for c in cs), end=max(c.end for c in cs),
                                clips=len(ok), label=label, probabilities=probs))
    return out

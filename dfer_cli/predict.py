"""`predict_video`: a video file in, expression predictions per face track and time window out.

    import dfer_cli
    model = dfer_cli.load_model("logo_former_dfew")
    result = dfer_cli.predict_video(model, "talk.mp4")
    for clip in result.clips:
        print(clip.start, clip.end, clip.track, clip.label, clip.confidence)

How it runs (one decode, in order, memory bounded by one window):
1. `clips.WindowPlan` lays windows (default 2 s, stride 1 s) with `num_frames` sample times
   each on a shared time grid; only grid frames are converted to RGB.
2. Each distinct grid frame is handled once: batched through `faces.FaceDetector` (every
   `detect_every`-th frame; landmarks in between are interpolated along each track), linked
   into tracks (`tracking.IoUTracker`, scene cuts end tracks) and aligned to the model's
   input size. A video slower than the grid puts one frame in several grid slots; they
   share its faces.
3. When a window's frames are in, each face track seen in it becomes a clip; clips are
   classified in batches and handed to `on_clip` as soon as they are done.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dfer_cli import faces as _faces
from dfer_cli import tracking as _tracking
from dfer_cli.clips import WindowPlan, sample_on_grid
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
    `preprocessing.num_frames` frames spaced uniformly in its window. all_faces: report every
    face track; by default each window reports one face, the largest / most persistent track
    in view (greatest accumulated face area). batch_size: clips per model forward. device:
    torch device for the model and detector (default: where the model already is).
    on_clip(ClipPrediction): called as each clip is done, in time order. progress(t, duration):
    called as decoding advances (seconds).

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
    result = VideoResult(video=str(path), duration=duration,
                         model=str(getattr(model, "checkpoint_path", None) or getattr(model, "model_name", type(model).__name__)),
                         classes=classes)

    slots: dict[int, dict[int, _Face]] = {}   # grid index -> {track id: aligned face}
    seen: set[int] = set()                    # grid indices that had a frame
    queue: list[tuple[ClipPrediction, object]] = []  # clips waiting for the model, in time order
    state = {"next_window": 0, "done_k": -1}

    def emit(clip: ClipPrediction):
        result.clips.append(clip)
        if on_clip is not None:
            on_clip(clip)

    def run_model(force: bool = False):
        n_tensors = sum(1 for _, x in queue if x is not None)
        if not queue or (n_tensors < batch_size and not force):
            return
        t0 = time.perf_counter()
        xs = [x for _, x in queue if x is not None]
        if xs:
            batch = torch.stack(xs).to(dev)  # (B, T, 3, S, S)
            with torch.inference_mode():
                with torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
                    probs = clip_probs(model, batch, tta).cpu().numpy()  # (B, C)
            if not np.isfinite(probs).all():
                raise ValueError(f"the model gave non-finite probabilities (NaN/Inf); its checkpoint "
                                 f"{result.model} is likely damaged -- re-download it or re-save it")
        tm["model"] += time.perf_counter() - t0
        i = 0
        for clip, x in queue:
            if x is not None:
                p = probs[i]
                i += 1
                top = int(p.argmax())
                clip.probabilities = {c: round(float(v), 4) for c, v in zip(classes, p)}
                clip.label, clip.confidence = classes[top], round(float(p[top]), 4)
            emit(clip)
        queue.clear()

    def close_windows(final: bool):
        """Turn every window whose frames are all in into clips."""
        while state["next_window"] < len(plan.windows):
            w = plan.windows[state["next_window"]]
            last = w.first + T - 1
            if not final and state["done_k"] < last:
                break
            state["next_window"] += 1
            ks = list(plan.slots(w))
            if not any(k in seen for k in ks):
                continue  # past the end of a truncated video
            present: dict[int, list[int]] = {}
            for k in ks:
                for tid in slots.get(k, {}):
                    present.setdefault(tid, []).append(k)
            if not present:
                continue  # no face in this window
            tids = sorted(present)
            if not all_faces:
                need = min_coverage * T
                tids = [max(tids, key=lambda t: (len(present[t]) >= need, tracker.tracks[t].area_sum))]
            for tid in tids:
                have = present[tid]
                box = np.mean([slots[k][tid].box for k in have], axis=0).tolist()
                clip = ClipPrediction(video=str(path), track=tid, start=w.start, end=w.end, box=box,
                                      probabilities=None, label=None, confidence=None)
                if len(have) < min_coverage * T:
                    clip.status = f"face missing in {T - len(have)}/{T} frames"
                    queue.append((clip, None))
                    continue
                t0 = time.perf_counter()
                crops = [slots[min(have, key=lambda h: (abs(h - k), h))][tid].crop for k in ks]
                x = frames_to_tensor(np.stack(crops), pre)  # (T, 3, S, S)
                tm["align"] += time.perf_counter() - t0
                queue.append((clip, x))
            run_model()
        # slots no later window needs are dropped (memory stays at about one window)
        keep_from = plan.windows[state["next_window"]].first if state["next_window"] < len(plan.windows) else 10**12
        for k in [k for k in slots if k < keep_from]:
            del slots[k]

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
                slots[k] = p.faces
        anchor = det_entries[-1]
        state["done_k"] = todo[-1].ks[-1]
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
        if not plan.needed(k):
            continue
        seen.add(k)
        if last is not None and frame is last.frame:
            # a video slower than the grid: this slot repeats the latest frame and shares its
            # faces (the frame is detected, tracked and aligned once)
            last.ks.append(k)
            if last.faces is not None:
                slots[k] = last.faces
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
    run_model(force=True)
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

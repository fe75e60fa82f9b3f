"""`predict_video`: a video file in, expression predictions per face track and time window out.

    import dfer_cli
    model = dfer_cli.load_model("logo_former_dfew", for_inference=True)
    result = dfer_cli.predict_video(model, "talk.mp4")
    for clip in result.clips:
        print(clip.start, clip.end, clip.track, clip.label, clip.confidence)

How it runs: one decode, in order, through a chain of streaming stages (dfer_cli/pipeline/,
each pulling from the one before), memory bounded by one window:

    GridDecoder (decode) -> DetectStage (detect) -> TrackStage (track) -> AlignStage (align)
      -> WindowStage (window) -> ClipClassifier (classify) -> ClipEmitter (emit: on_clip)

`video.sampling.WindowPlan` lays the sampling grid (16 samples per window, or 8 x 2 consecutive
video frames for a segments8x2 model); only grid frames are converted, detected (every
`detect_every`-th, landmarks interpolated between), tracked and aligned. Windows are laid
on each face track's own span (`video.sampling.track_windows`), classified in batches and handed to
`on_clip` in time order (start, then track) as soon as no earlier clip can still come.
docs/architecture.md describes each stage.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dfer_cli.faces import detect as _faces
from dfer_cli.faces import track as _tracking
from dfer_cli.pipeline import (
    ClipClassifier,
    ClipEmitter,
    WindowStage,
)
from dfer_cli.pipeline.chain import aligned_batches
from dfer_cli.results import ClipPrediction, TrackSummary, VideoResult
from dfer_cli.video.sampling import WindowPlan

MIN_COVERAGE = 0.5   # a clip is classified only if its face was found in at least this share of frames
DETECT_EVERY = 2     # run the detector on every n-th grid frame; interpolate landmarks between

# A live input's records should follow its frames closely: detect and classify in small
# batches (a detection batch of 2 frames is a quarter of a second at the default grid).
LIVE_DETECT_BATCH = 2
LIVE_BATCH_SIZE = 1

# how faces are found on the scheduled frames (predict_video): "auto" is "keyframe" for dfer's
# MTCNN detector (the same labels as "full" on the examples, detection about 1.5x faster) and
# "full" for any other detector
DETECTIONS = ("auto", "full", "keyframe")

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
    detector=None,
    timings: dict | None = None,
    tta: str = "none",
    stdin=None,
    detection: str = "auto",
    stall_timeout: float | None = None,
    precision: str = "auto",
) -> VideoResult:
    """Predict facial expressions over time for the faces in one video.

    model: a classifier as returned by `dfer_cli.load_model` (has `.preprocessing` and
    `.classes`; its `.sampling`, "uniform" when absent; loaded with ``for_inference=True`` it
    is used as it is, otherwise each call folds a copy for inference, about 0.1 s). window / stride: clip length and hop
    in seconds; each clip holds `preprocessing.num_frames` frames, spaced uniformly in its
    window or, for a model trained with sampling "segments8x2", 8 pairs of consecutive video
    frames from the centres of 8 equal segments (`video.sampling.WindowPlan`). Windows start where
    each face track starts and end-align to where it ends (see the module docstring).
    all_faces: report every face track; by default only the main face of each window is
    reported, the largest / most persistent track in view (greatest accumulated face area)
    among those that fill at least `min_coverage` of it. batch_size: clips per model forward.
    device: torch device for the model and detector (default: where the model already is).
    on_clip(ClipPrediction): called as each clip is done, in time order (start, then track).
    progress(t, duration): called as decoding advances (seconds).

    Detector options: detect_size (longest side of the copy MTCNN runs on, pixels; None = full
    size), min_face (smallest face, fraction of the shorter side, or pixels if > 1),
    min_score (MTCNN probability), detect_every (detect on every n-th distinct grid frame, and
    at least every max_gap seconds so tracks hold; a segments8x2 model's finer grid counts in
    steps of `WindowPlan.slots_per_frame` frames, so detection runs as often per second as for
    a uniform one), detect_batch (frames per MTCNN call). Tracking: iou_threshold, max_gap (seconds a face may be missed
    and keep its id), cut_threshold (colour-histogram distance counted as a scene cut; None
    disables). min_coverage: share of a clip's frames that must show the face for it to be
    classified; otherwise the clip is reported with label None and a status.
    detector: any object with `detect(frames) -> list[list[Detection]]` like
    `faces.detect.FaceDetector` (default: a cached FaceDetector with the options above).
    detection: "full" runs that detector (MTCNN's whole pyramid) on every scheduled frame;
    "keyframe" runs it on key frames only (about one a second, and after cuts) and follows
    the faces in between with MTCNN's last two networks on crops around their last boxes
    (`faces.keyframe.KeyframeDetector`: cheaper, boxes within a few % of full scans);
    "auto" (default): "keyframe" with dfer's MTCNN (`faces.detect.FaceDetector`, the default
    detector), "full" with any other detector.
    timings: optional dict that receives seconds spent per stage (decode, detect, align, model).
    tta: "flip" averages each clip's probabilities with its mirror image's (twice the model
    cost; see models.inference.clip_probs). precision: what the model computes in, "auto" (float16
    autocast on CUDA; bfloat16 autocast on a CPU with native bfloat16, AVX512-BF16 or AMX,
    probabilities within 0.02 of float32; float32 elsewhere), "fp32", "bf16" or "fp16" (CUDA).

    The result also says where it came from: the model's name and weights' sha256
    (`model_identity`), the window and stride as used, and the video's frame rate; each clip
    carries the indices of the first and last video frames it was sampled from, and
    `result.faces` where each track's face was seen (for `render.annotate_video`).

    Live input: `path` "-" (standard input, or the binary file `stdin`), a URL FFmpeg opens,
    a named pipe or a device (`video.live.is_stream`) is decoded once as it arrives, with no
    duration known: windows go on until it ends, each clip reaches `on_clip` about as soon as
    its window has been read (detection and the model run in small batches,
    `LIVE_DETECT_BATCH` / `LIVE_BATCH_SIZE`), and `progress(t, None)` has no total. A live
    input that sends no frame for `stall_timeout` seconds (default `video.live.STALL_TIMEOUT`; 0:
    wait for ever) is taken as ended there, with a TruncatedVideoWarning.

    A video without faces gives a VideoResult with no clips and no tracks. Raises
    `video.decode.VideoError` when the file cannot be read, and ValueError when the model's
    probabilities are not finite (a damaged checkpoint).
    """
    from dfer_cli.models.inference import TTA_MODES
    from dfer_cli.video.live import STALL_TIMEOUT, open_video

    if tta not in TTA_MODES:
        raise ValueError(f"tta {tta!r}: choose one of {', '.join(TTA_MODES)}")
    if detection not in DETECTIONS:
        raise ValueError(f"detection {detection!r}: choose one of {', '.join(DETECTIONS)}")
    if detection == "auto":
        detection = "keyframe" if detector is None or isinstance(detector, _faces.FaceDetector) else "full"
    from dfer_cli.device import autocast_dtype

    model, dev = _place_model(model, device)
    cast = autocast_dtype(dev, precision)
    tm = timings if timings is not None else {}
    pre = model.preprocessing
    duration, fps, frames = open_video(path, stdin,
                                         STALL_TIMEOUT if stall_timeout is None else stall_timeout)
    live = duration is None
    if live:
        detect_batch, batch_size = min(detect_batch, LIVE_DETECT_BATCH), min(batch_size, LIVE_BATCH_SIZE)
    plan = WindowPlan(duration, window, stride, int(pre.num_frames),
                      sampling=getattr(model, "sampling", None) or "uniform", fps=fps)
    detector = _video_detector(detector, detection, plan, detect_every,
                               lambda: get_detector(detect_size, min_face, min_score,
                                                    dev if dev.type == "cuda" else None))
    name, sha256 = model_identity(model)
    result = VideoResult(video=str(path), duration=duration or 0.0, model=name, classes=list(model.classes),
                         weights_sha256=sha256, fps=fps if fps > 0 else None,
                         window=plan.window, stride=plan.stride)
    tracker = _tracking.IoUTracker(iou_threshold, max_gap)

    if live and fps > 0:
        # a file's grid ends with the last slot that ends by its duration (last frame + one
        # frame); a stream's end is only known when it comes, so stop the grid the same way
        max_tail = max(0.0, 1.0 / fps - plan.step * plan.phase)
    else:
        max_tail = max(plan.step, 1.5 / fps if fps > 0 else 0.1)
    decoded, batches = aligned_batches(plan, frames, detector, tracker, size=int(pre.input_size),
                                       template=pre.template, detail=pre.detail_size, detect_every=detect_every,
                                       max_gap=max_gap, detect_batch=detect_batch, cut_threshold=cut_threshold,
                                       max_tail=max_tail, timings=tm)
    steps = WindowStage(plan, tracker, str(path), duration, all_faces=all_faces, min_coverage=min_coverage,
                        faces_seen=result.faces).run(
        batches, progress=(lambda t: progress(t, duration)) if progress is not None else None)
    classified = ClipClassifier(model, dev, batch_size, tta, name, tm, autocast_dtype=cast).run(steps)
    result.clips = ClipEmitter(on_clip).run(classified)
    if live and decoded.final_time is not None:  # its end: the last frame's, one frame long
        result.duration = decoded.final_time + (1.0 / fps if fps > 0 else 0.0)
    elif decoded.sampled:
        result.duration = max(result.duration, decoded.last_time)
    result.tracks = summarize(result.clips, result.classes)
    return result


def _video_detector(detector, detection: str, plan: WindowPlan, detect_every: int, default):
    """The detector for one video: `detector` (else `default()`), wrapped for key-frame
    detection when asked; a stateful one (with `reset`) starts the video afresh."""
    if detector is None:
        detector = default()
    if detection == "keyframe" and not hasattr(detector, "reset"):
        from dfer_cli.faces.keyframe import keyframe_detector

        # key frames come every KEY_INTERVAL seconds of the frames DetectStage detects
        detector = keyframe_detector(window=plan.window, num_frames=plan.num_frames,
                                     detect_every=max(1, int(detect_every)), detector=detector)
    if hasattr(detector, "reset"):
        detector.reset()
    return detector


def _place_model(model, device):
    """(model folded for inference (`inference_copy`: the caller's model when it already is,
    else a folded copy) on `device`, that torch.device); device None: where it already is."""
    import torch

    from dfer_cli.models.folding import inference_copy

    model = inference_copy(model)

    if device is not None:
        from dfer_cli.device import resolve_device

        dev = resolve_device(str(device)) if isinstance(device, str) else torch.device(device)
        model = model.to(dev)
    else:
        dev = next(model.parameters()).device
    model.eval()
    return model, dev


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

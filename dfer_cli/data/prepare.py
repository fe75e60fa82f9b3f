"""Raw videos -> aligned face frame folders, once, for training (``dfer prepare SRC DST``).

Every video under SRC (any depth) becomes one folder of aligned face crops in DST at the
same relative place, without the extension: ``SRC/Train/Angry/001.avi`` ->
``DST/Train/Angry/001/00001.jpg ...``. So an AFEW tree prepares into the tree the ``afew``
adapter reads, and ``<split>/<class>/<video>`` into the ``folder`` layout.

Per video: decode (optionally at ``fps`` frames per second), detect faces with the
pipeline's MTCNN (:class:`dfer_cli.faces.detect.FaceDetector`), link them over time with the IoU
tracker (cuts end tracks), keep the main track (largest face area summed over time), align
each of its faces with the 5 landmarks onto the template (:func:`dfer_cli.faces.align.align_face`).

Resumable: a clip is written to ``<name>.partial/`` and renamed when complete, and
``DST/manifest.jsonl`` gets one record per video (``ok`` / ``no_face`` / ``failed`` with the
error). A second run skips clips that are done or recorded as having no face, and retries
failures.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

import cv2

from dfer_cli.data.base import VIDEO_EXTS, natural_key
from dfer_cli.preprocess import DEFAULT_TEMPLATE

DETECT_EVERY = 2  # as predict: the detector on every 2nd frame, landmarks interpolated between

MANIFEST = "manifest.jsonl"


@dataclass
class PrepareResult:
    video: str
    output: str
    status: str           # ok | no_face | failed | skipped
    frames: int = 0       # decoded frames considered (after fps sampling)
    faces: int = 0        # aligned frames written (main track)
    error: str | None = None

    def to_record(self) -> dict:
        d = {"video": self.video, "output": self.output, "status": self.status, "frames": self.frames,
             "faces": self.faces}
        if self.error:
            d["error"] = self.error
        return d


def find_videos(src: str) -> list[str]:
    """Video files under `src` (recursively), in natural order, as paths relative to it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort(key=natural_key)
        for name in sorted(filenames, key=natural_key):
            if os.path.splitext(name)[1].lower() in VIDEO_EXTS:
                out.append(os.path.relpath(os.path.join(dirpath, name), src))
    return out


def read_manifest(dst: str) -> dict[str, dict]:
    """Latest manifest record per video (relative path)."""
    path = os.path.join(dst, MANIFEST)
    records: dict[str, dict] = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill: ignore it
                        continue
                    records[rec["video"]] = rec
    return records


def prepare_video(path: str, out_dir: str, detector, *, size: int = 112, template=DEFAULT_TEMPLATE,
                  fps: float | None = None, batch: int = 8, quality: int = 95,
                  detect_every: int = DETECT_EVERY) -> tuple[int, int]:
    """Align the main face track of one video into `out_dir` (written via a ``.partial``
    folder and renamed). Returns (frames considered, faces written); 0 faces writes nothing.

    The frames go through predict's face stages (`pipeline.chain.aligned_batches`) on a grid
    at `fps` (default: the video's own rate): detection on every `detect_every`-th frame,
    IoU tracking with cuts, landmarks interpolated in between, alignment. Every track's crops
    go to disk as they are made (``.partial/<track>/``), so memory does not grow with the
    video; at the end the main track's folder (largest face area summed over time) is kept."""
    from dfer_cli.faces.track import IoUTracker, main_track
    from dfer_cli.pipeline.chain import aligned_batches
    from dfer_cli.video.live import open_video
    from dfer_cli.video.sampling import WindowPlan

    duration, video_fps, frames = open_video(path)
    rate = fps or video_fps or 25.0
    # a grid at `rate` whose slots fall on frame times (k / rate), every slot used: windows of
    # two slots (one slot per clip frame, so detect_every counts frames) one slot apart
    plan = WindowPlan(duration, window=2.0 / rate, stride=1.0 / rate, num_frames=2, sampling="segments8x2", fps=rate)
    tracker = IoUTracker()
    partial = out_dir + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    written: dict[int, int] = {}
    considered = 0
    _, batches = aligned_batches(plan, frames, detector, tracker, size=size, template=template,
                                 detect_every=detect_every, detect_batch=batch, max_tail=1.0 / rate)
    for b in batches:
        for gf in b.frames:
            considered += 1
            for tid, face in gf.faces.items():
                written[tid] = written.get(tid, 0) + 1
                folder = os.path.join(partial, str(tid))
                if written[tid] == 1:
                    os.makedirs(folder)
                cv2.imwrite(os.path.join(folder, f"{written[tid]:05d}.jpg"), cv2.cvtColor(face.crop, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    main = main_track(tracker.tracks)
    if main is None or not written.get(main):
        shutil.rmtree(partial, ignore_errors=True)
        return considered, 0
    kept = partial + ".main"
    os.replace(os.path.join(partial, str(main)), kept)
    shutil.rmtree(partial)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.replace(kept, out_dir)
    return considered, written[main]


def prepare(src: str, dst: str, *, size: int = 112, template=DEFAULT_TEMPLATE, fps: float | None = None,
            detector=None, detector_options: dict | None = None, retry_failed: bool = True,
            on_video=None) -> list[PrepareResult]:
    """Prepare every video under `src` into `dst` (see the module docstring). `detector`
    is any object with ``detect(frames) -> list[list[Detection]]`` (default: a
    FaceDetector built with `detector_options`). ``on_video(result, done, total)`` is called
    after each video. Returns one result per video, skipped ones included."""
    if os.path.isfile(src):
        raise ValueError(f"{src} is a file: SRC is the folder holding the videos (put the video in a folder "
                         "and pass that folder)")
    if not os.path.isdir(src):
        raise ValueError(f"source folder {src} does not exist: pass the folder holding the videos")
    videos = find_videos(src)
    if not videos:
        raise ValueError(f"no video files under {src} (looked for {', '.join(sorted(VIDEO_EXTS))})")
    os.makedirs(dst, exist_ok=True)
    done = read_manifest(dst)
    results: list[PrepareResult] = []
    manifest = open(os.path.join(dst, MANIFEST), "a")
    try:
        for k, rel in enumerate(videos, 1):
            out_rel = os.path.splitext(rel)[0]
            out_dir = os.path.join(dst, out_rel)
            prev = done.get(rel)
            finished = os.path.isdir(out_dir) and prev is not None and prev.get("status") == "ok"
            if finished or (prev is not None and prev.get("status") == "no_face") or \
                    (prev is not None and prev.get("status") == "failed" and not retry_failed):
                res = PrepareResult(rel, out_rel, "skipped", prev.get("frames", 0), prev.get("faces", 0))
            else:
                if detector is None:
                    from dfer_cli.faces.detect import FaceDetector
                    detector = FaceDetector(**(detector_options or {}))
                os.makedirs(os.path.dirname(out_dir) or dst, exist_ok=True)
                t0 = time.time()
                try:
                    n, faces = prepare_video(os.path.join(src, rel), out_dir, detector, size=size,
                                             template=template, fps=fps)
                    res = PrepareResult(rel, out_rel, "ok" if faces else "no_face", n, faces)
                except Exception as exc:  # noqa: BLE001 -- one bad video must not stop the batch
                    shutil.rmtree(out_dir + ".partial", ignore_errors=True)
                    shutil.rmtree(out_dir + ".partial.main", ignore_errors=True)
                    res = PrepareResult(rel, out_rel, "failed", error=str(exc).splitlines()[0] if str(exc) else
                                        type(exc).__name__)
                rec = res.to_record()
                rec["seconds"] = round(time.time() - t0, 2)
                manifest.write(json.dumps(rec) + "\n")
                manifest.flush()
            results.append(res)
            if on_video is not None:
                on_video(res, k, len(videos))
    finally:
        manifest.close()
    return results

"""Key-frame face detection: MTCNN's full pyramid on key frames, R-Net/O-Net refinement between.

MTCNN spends most of its time in P-Net, which slides over every level of an image pyramid to
propose face windows; R-Net and O-Net then only look at small 24x24 and 48x48 crops of those
windows. Between two frames a tracked face moves little, so its last box is a far better
proposal than a whole-frame scan. `KeyframeDetector` therefore

* runs the full detector (`faces.detect.FaceDetector`, the reference) on *key frames*: the first
  frame, every `key_every`-th frame it is given (or every `key_interval` seconds when frame
  times are passed), and every frame that follows a shot cut (`faces.track.is_cut` on colour
  histograms of consecutive frames);
* on every other frame *refines* each face of the previous frame: a small grid of square
  windows around its last box (shifted and scaled, like the overlapping proposals P-Net
  makes) goes through R-Net, the survivors are non-maximum suppressed and regressed, and
  O-Net scores, regresses and places landmarks on them, exactly as the last two MTCNN stages
  do after P-Net;
* falls back to a full scan of that frame when any tracked face is lost: O-Net's best score
  falls below `min_score`, the box shrinks below `min_face`, or it leaves the frame (less
  than `min_inside` of its area in view).

A frame that follows a frame without faces is scanned too (`scan_when_empty`, on by
default), so a face that appears in an empty shot is found at once: on the film clip of
scripts/bench_detect.py, leaving such frames to the next key frame missed the face in 4 of 40
frames. Faceless video therefore costs as much as full scans. A new face that appears beside
a followed one without a cut is found at the next key frame (within `key_every` frames).

Boxes, landmarks and scores come out as `faces.detect.Detection`s in source-frame pixels, clipped and
filtered by `min_score` and `min_face` as `FaceDetector.detect` does, best score first: the
class is a drop-in `detector=` for `predict.predict_video`. It is stateful (it remembers the
faces of the last frame it saw): call `reset()` before each new video (a change of frame
size resets it by itself).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dfer_cli.faces import detect as _faces
from dfer_cli.faces import mtcnn as _mtcnn
from dfer_cli.faces import track as _tracking

KEY_EVERY = 4            # frames between scheduled full scans: 1 s at predict's default detection
                         # rate (an 8 slot/s grid, every 2nd slot detected)
KEY_INTERVAL = 1.0       # seconds between scheduled full scans when frame times are given
# proposal windows around a face's last box, as (dx, dy, size): centre offsets in units of the
# box's side, size relative to it (the last box itself, 4 shifts, a smaller and a larger one)
PROPOSALS = ((0.0, 0.0, 1.0), (-0.15, 0.0, 1.0), (0.15, 0.0, 1.0), (0.0, -0.15, 1.0),
             (0.0, 0.15, 1.0), (0.0, 0.0, 0.85), (0.0, 0.0, 1.18))
MAX_ONET = 2             # O-Net candidates kept per face after R-Net and NMS
MIN_INSIDE = 0.5         # share of a refined box's area that must lie in the frame
RNET_NMS = 0.7           # IoU above which R-Net candidates of one face are merged (as MTCNN)
DUPLICATE_IOU = 0.5      # two refined faces overlapping more than this (IoU over the smaller) are one


@dataclass
class _Face:
    """A face carried from one frame to the next, in detection-copy pixels."""
    box: np.ndarray        # (4,) float x1, y1, x2, y2 (MTCNN's box, not clipped)


@dataclass
class _Refined:
    box: np.ndarray        # (4,) float O-Net-regressed box, detection-copy pixels
    landmarks: np.ndarray  # (5, 2) float, detection-copy pixels
    score: float           # O-Net face probability


def _inside_fraction(box: np.ndarray, w: int, h: int) -> float:
    """Share of the area of a (4,) box that lies inside a w x h image."""
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    if area <= 0:
        return 0.0
    ix = max(min(box[2], w) - max(box[0], 0.0), 0.0)
    iy = max(min(box[3], h) - max(box[1], 0.0), 0.0)
    return float(ix * iy / area)


class KeyframeDetector:
    """Face detector with `FaceDetector.detect`'s interface that scans the whole pyramid only on
    key frames and follows faces in between with R-Net and O-Net (see the module docstring).

    detector: the full detector used on key frames and for fallbacks (default: a new
    `FaceDetector(detect_size, min_face, min_score, thresholds, device=device)`); its MTCNN
    networks are reused for refinement and its detect_size / min_face / min_score apply to
    every frame. key_every: frames between scheduled full scans when `detect` is not given
    frame times; key_interval: seconds between scheduled full scans when it is.
    cut_threshold: colour-histogram distance between consecutive frames that counts as a shot
    cut and forces a full scan (None: no cut detection). proposals: (K, 3) windows tried
    around each face's last box, (dx, dy, size) in units of its side; max_onet: how many of
    them (after R-Net and NMS) O-Net sees per face. fast_first: try O-Net alone on the last
    box first and use R-Net's proposals only for faces it rejects (False: always R-Net).
    min_inside: a refined face with less of its box than this in the frame is lost.
    scan_when_empty: also scan frames that follow a frame without faces (default; False
    leaves them to the next key frame: faster on faceless video, but a face that appears
    between key frames without a cut is missed until then).

    `stats` counts frames, full scans by cause ("key", "cut", "lost", "empty") and refined
    frames; `scans` is the number of frames that went through the full detector;
    `last_kinds` says, per frame of the latest `detect` call, how it was handled: one of
    "key", "cut", "lost", "empty" (full scans), "refined", or "none" (no face to follow).
    """

    def __init__(self, detector: _faces.FaceDetector | None = None, *,
                 detect_size: int | None = _faces.DETECT_SIZE, min_face: float = _faces.MIN_FACE,
                 min_score: float = _faces.MIN_SCORE, thresholds: Sequence[float] = _faces.THRESHOLDS,
                 device=None, key_every: int = KEY_EVERY, key_interval: float = KEY_INTERVAL,
                 cut_threshold: float | None = _tracking.CUT_THRESHOLD,
                 proposals: Sequence[Sequence[float]] = PROPOSALS, max_onet: int = MAX_ONET,
                 fast_first: bool = False, min_inside: float = MIN_INSIDE, scan_when_empty: bool = True):
        if detector is None:
            detector = _faces.FaceDetector(detect_size=detect_size, min_face=min_face,
                                           min_score=min_score, thresholds=thresholds, device=device)
        self.full = detector
        self.key_every = max(1, int(key_every))
        self.key_interval = float(key_interval)
        self.cut_threshold = cut_threshold
        self.min_inside = float(min_inside)
        self.scan_when_empty = bool(scan_when_empty)
        self._grid = np.asarray(proposals, dtype=np.float64).reshape(-1, 3)   # (K, 3)
        self.max_onet = max(1, int(max_onet))
        self.fast_first = bool(fast_first)
        self.stats: Counter = Counter()
        self.reset()

    # settings of the full detector, read by predict and the CLI like FaceDetector's
    @property
    def detect_size(self):
        return self.full.detect_size

    @property
    def min_face(self) -> float:
        return self.full.min_face

    @property
    def min_score(self) -> float:
        return self.full.min_score

    @property
    def mtcnn(self):
        return self.full.mtcnn

    @property
    def scans(self) -> int:
        """Frames that went through the full detector so far."""
        return sum(self.stats[k] for k in ("key", "cut", "lost", "empty"))

    def min_face_side(self, h: int, w: int) -> float:
        return self.full.min_face_side(h, w)

    def reset(self) -> None:
        """Forget the faces and the key-frame schedule (call before each new video)."""
        self._shape: tuple | None = None
        self._faces: list[_Face] = []
        self._since_key = 0
        self._last_key_time: float | None = None
        self._prev_sig = None
        self.last_kinds: list[str] = []

    # -- the public call ---------------------------------------------------------------------

    def detect(self, frames: Sequence[np.ndarray], times: Sequence[float] | None = None
               ) -> list[list[_faces.Detection]]:
        """Faces in each of a batch of same-sized (H, W, 3) RGB uint8 frames, given in video
        order (successive calls continue the same video), best score first.

        times: optional (N,) frame times in seconds; then key frames are `key_interval` seconds
        apart, else `key_every` frames apart. Returns one list of `faces.detect.Detection` per frame
        (empty when no face): box (4,) x1, y1, x2, y2 and landmarks (5, 2) in the frames' own
        pixels, score the O-Net probability, as `FaceDetector.detect` returns them.
        """
        import cv2

        if len(frames) == 0:
            return []
        h, w = frames[0].shape[:2]
        if self._shape != (h, w):
            self.reset()
            self._shape = (h, w)
        s = self.full._scale_for(h, w)
        if s < 1.0:
            size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
            smalls = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        else:
            smalls = [np.ascontiguousarray(f) for f in frames]
        # source pixels per detection-copy pixel, as FaceDetector maps them
        scale = np.array([w / smalls[0].shape[1], h / smalls[0].shape[0]])

        # the scheduled key frames (first frame, interval, cuts) are known up front: scan them
        # in one batch (MTCNN is cheaper per frame in batches)
        causes: list[str | None] = []
        for i, small in enumerate(smalls):
            sig = _tracking.frame_signature(small) if self.cut_threshold is not None else None
            cut = self.cut_threshold is not None and _tracking.is_cut(self._prev_sig, sig, self.cut_threshold)
            self._prev_sig = sig
            if times is not None:
                due = self._last_key_time is None or times[i] - self._last_key_time >= self.key_interval - 1e-6
            else:
                due = self._last_key_time is None or self._since_key >= self.key_every
            cause = "cut" if cut else ("key" if due else None)
            if cause is not None:
                self._since_key = 0
                self._last_key_time = float(times[i]) if times is not None else 0.0
            self._since_key += 1
            causes.append(cause)
        keyed = [i for i, c in enumerate(causes) if c is not None]
        scanned = dict(zip(keyed, self._scan([frames[i] for i in keyed]))) if keyed else {}

        out: list[list[_faces.Detection]] = []
        self.last_kinds = []
        for i, small in enumerate(smalls):
            if causes[i] is not None:
                kind, dets = causes[i], scanned[i]
            elif not self._faces:
                kind = "empty" if self.scan_when_empty else "none"
                dets = self._scan([frames[i]])[0] if self.scan_when_empty else []
            else:
                kind, dets = "refined", self._refine(small, scale, h, w)
                if dets is None:  # a face was lost: this frame gets the full detector
                    kind, dets = "lost", self._scan([frames[i]])[0]
            self.stats["frames"] += 1
            self.stats[kind] += 1
            self.last_kinds.append(kind)
            out.append(dets)
            if kind == "refined":
                continue  # _refine has updated the faces it follows
            self._faces = [_Face(d.box / np.tile(scale, 2)) for d in dets]
        return out

    # -- internals ---------------------------------------------------------------------------

    def _scan(self, frames: Sequence[np.ndarray]) -> list[list[_faces.Detection]]:
        """The full detector on (N,) frames: the reference MTCNN pyramid."""
        return self.full.detect(frames)

    def _refine(self, small: np.ndarray, scale: np.ndarray, h: int, w: int
                ) -> list[_faces.Detection] | None:
        """Follow every face of the previous frame into `small`, the (hs, ws, 3) detection copy
        of an (h, w) frame; `scale` (2,) maps copy pixels to frame pixels. Returns the faces as
        Detections in frame pixels, or None when any face is lost (the caller scans)."""
        found = self._follow(small, [f.box for f in self._faces])
        if found is None:
            return None
        hs, ws = small.shape[:2]
        min_side = self.full.min_face_side(h, w)
        dets: list[_faces.Detection] = []
        kept: list[_Face] = []
        for r in found:
            if r.score < self.full.min_score or _inside_fraction(r.box, ws, hs) < self.min_inside:
                return None
            box = np.clip(r.box * np.tile(scale, 2), 0, [w, h, w, h])
            if min(box[2] - box[0], box[3] - box[1]) < min_side:
                return None
            dets.append(_faces.Detection(box, float(r.score), r.landmarks * scale))
            kept.append(_Face(r.box.copy()))
        # two faces that converged on the same person are one (MTCNN's final "Min" NMS)
        if len(dets) > 1:
            keep = _mtcnn.nms(np.stack([f.box for f in kept]), np.array([d.score for d in dets]),
                              DUPLICATE_IOU, over_min=True)
            dets, kept = [dets[k] for k in keep], [kept[k] for k in keep]
        order = sorted(range(len(dets)), key=lambda k: -dets[k].score)
        self._faces = [kept[k] for k in order]
        return [dets[k] for k in order]

    def _follow(self, small: np.ndarray, boxes: list[np.ndarray]) -> list[_Refined] | None:
        """Find each face of the (4,) `boxes` (detection-copy pixels) again in the (hs, ws, 3)
        uint8 image `small`. First O-Net alone on the square around each last box (one 48x48
        crop per face: enough while a face moves a little); for a face O-Net then rejects,
        R-Net on `proposals` around its last box, and O-Net on R-Net's best. Returns the best
        O-Net result per face, or None when some face has no proposal R-Net accepts."""
        first = self._onet(small, _mtcnn.square(np.stack(boxes).astype(np.float64)), np.arange(len(boxes)))
        out: list[_Refined] = list(first)
        retry = [f for f, r in enumerate(first) if r.score < self.full.min_score]
        if self.fast_first and not retry:
            return out
        retry = retry if self.fast_first else list(range(len(boxes)))
        cand, owner = self._rnet(small, [boxes[f] for f in retry])
        if cand is None:
            return None
        for r, f in zip(self._onet(small, cand, owner), retry):
            if r.score > out[f].score or not self.fast_first:
                out[f] = r
        return out

    def _rnet(self, small: np.ndarray, boxes: list[np.ndarray]):
        """R-Net on the proposal windows around each of the F (4,) boxes. Returns ((C, 4) square
        O-Net candidates, (C,) index of the box each belongs to), at most `max_onet` per box,
        or (None, None) when R-Net accepts no proposal of some box."""
        thresholds = self.full.mtcnn.thresholds
        sq = _mtcnn.square(np.stack(boxes).astype(np.float64))              # (F, 4)
        side = (sq[:, 2] - sq[:, 0])[:, None]                                 # (F, 1)
        cx = (0.5 * (sq[:, 0] + sq[:, 2]))[:, None] + self._grid[None, :, 0] * side
        cy = (0.5 * (sq[:, 1] + sq[:, 3]))[:, None] + self._grid[None, :, 1] * side
        half = 0.5 * side * self._grid[None, :, 2]                           # (F, K)
        props = np.stack([cx - half, cy - half, cx + half, cy + half], axis=-1)  # (F, K, 4)
        n_faces, k = props.shape[:2]
        reg, score = self.full.mtcnn.rnet_scores(small, props.reshape(-1, 4))
        reg, score = reg.reshape(n_faces, k, 4), score.reshape(n_faces, k)
        cands, owner = [], []
        for f in range(n_faces):  # R-Net's accepted proposals, suppressed, regressed, squared
            good = np.flatnonzero(score[f] > thresholds[1])
            if good.size == 0:
                return None, None
            keep = good[_mtcnn.nms(props[f, good], score[f, good], RNET_NMS)][:self.max_onet]
            cands.append(_mtcnn.square(_mtcnn.regress(props[f, keep], reg[f, keep])))
            owner += [f] * len(keep)
        return np.concatenate(cands), np.array(owner)

    def _onet(self, small: np.ndarray, cand: np.ndarray, owner: np.ndarray) -> list[_Refined]:
        """O-Net on the (C, 4) square candidates of the faces `owner` (C,) names: per face (in
        order of first appearance), the best-scoring candidate's regressed box, its landmarks
        and score."""
        reg, lms, oscore = self.full.mtcnn.onet_outputs(small, cand)        # (C, 4), (C, 10), (C,)
        out: list[_Refined] = []
        for f in dict.fromkeys(owner.tolist()):
            idx = np.flatnonzero(owner == f)
            best = int(idx[np.argmax(oscore[idx])])
            b = cand[best:best + 1]
            pts = _mtcnn.place_landmarks(b, lms[best:best + 1])[0]
            out.append(_Refined(_mtcnn.regress(b, reg[best:best + 1])[0], pts, float(oscore[best])))
        return out


def keyframe_detector(*, window: float = 2.0, num_frames: int = 16, detect_every: int = 2,
                      key_interval: float = KEY_INTERVAL, detect_size: int | None = _faces.DETECT_SIZE,
                      min_face: float = _faces.MIN_FACE, min_score: float = _faces.MIN_SCORE,
                      device=None, detector: _faces.FaceDetector | None = None,
                      **options) -> KeyframeDetector:
    """A KeyframeDetector for `predict.predict_video`, whose detector sees every
    `detect_every`-th slot of a grid of `num_frames` slots per `window` seconds: key frames
    come about every `key_interval` seconds of video. detector: an existing FaceDetector to
    share (e.g. `predict.get_detector(...)`, its MTCNN is then loaded once), else one is made
    from detect_size / min_face / min_score / device. `options` go to KeyframeDetector."""
    per_second = num_frames / window / max(1, int(detect_every))   # detected frames per second
    key_every = max(1, int(round(key_interval * per_second)))
    return KeyframeDetector(detector, detect_size=detect_size, min_face=min_face, min_score=min_score,
                            device=device, key_every=key_every, key_interval=key_interval, **options)

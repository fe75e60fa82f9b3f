"""Result records of `predict_video`: what the library returns and the writers print."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field


def finite_or_null(value):
    """`value` with every non-finite float (NaN, inf, -inf) replaced by None, recursively
    through dicts, lists and tuples (tuples become lists); other values are kept as they are."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def strict_json(value, **kwargs) -> str:
    """json.dumps of `value` as strict JSON: non-finite floats become null (never the NaN /
    Infinity tokens that strict parsers reject). `kwargs` go to json.dumps."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)


# Version of the record layout (docs/schema/records.schema.json). The major number changes
# when a field is removed or changes meaning, the minor number when fields are added.
SCHEMA_VERSION = "1.0"


@dataclass
class ClipPrediction:
    video: str                      # path as given
    track: int                      # face track id within the video (0, 1, ...)
    start: float                    # seconds, from frame timestamps
    end: float                      # seconds
    box: list[float]                # [x1, y1, x2, y2] in source pixels (mean face box over the clip)
    probabilities: dict[str, float] | None  # class -> p (sums to 1), None when not classified
    label: str | None               # top class, None when not classified
    confidence: float | None        # probability of the top class
    status: str = "ok"              # "ok" or why it was not classified, e.g. "face missing in 12/16 frames"
    frames: tuple[int, int] | None = None  # indices (0-based, decoding order) of the first and last
                                    # video frames sampled for the clip

    def to_record(self) -> dict:
        return {
            "type": "clip", "video": self.video, "track": self.track,
            "start": round(self.start, 3), "end": round(self.end, 3),
            "frames": [int(v) for v in self.frames] if self.frames is not None else None,
            "box": [round(float(v), 1) for v in self.box],
            "label": self.label, "confidence": self.confidence,
            "probabilities": self.probabilities, "status": self.status,
        }


@dataclass
class TrackSummary:
    track: int
    start: float
    end: float
    clips: int                      # classified clips in this track
    label: str | None               # dominant label: argmax of the mean clip probabilities
    probabilities: dict[str, float] | None  # mean of clip probabilities

    def to_record(self) -> dict:
        return {
            "track": self.track, "start": round(self.start, 3), "end": round(self.end, 3),
            "clips": self.clips, "label": self.label, "probabilities": self.probabilities,
        }


@dataclass
class VideoResult:
    video: str
    duration: float                 # seconds
    model: str                      # the model's name: its checkpoint's file stem (a registry name for a
                                    # named checkpoint), never a path
    classes: list[str]
    clips: list[ClipPrediction] = field(default_factory=list)
    tracks: list[TrackSummary] = field(default_factory=list)
    truncated: bool = False         # the file ended early (cut or damaged); duration is the decoded part
    weights_sha256: str | None = None  # sha256 of the checkpoint file (None: not loaded from a file)
    fps: float | None = None        # the video's average frame rate (None when the file does not say)
    window: float | None = None     # clip length in seconds, as used (a video shorter than --window: its duration)
    stride: float | None = None     # seconds between clip starts, as used (snapped to the sampling grid)
    # Not in the records: where each track's face was seen, {track: [(time, [x1, y1, x2, y2]), ...]}
    # (frame times in seconds, one entry per sampled frame that had the face, detected or
    # interpolated), for drawing boxes only where there is a face (render.annotate_video).
    faces: dict[int, list[tuple[float, list[float]]]] = field(default_factory=dict)

    def to_record(self) -> dict:
        return {
            "type": "video", "video": self.video, "duration": round(self.duration, 3),
            "fps": round(self.fps, 3) if self.fps else None,
            "window": round(self.window, 4) if self.window is not None else None,
            "stride": round(self.stride, 4) if self.stride is not None else None,
            "model": self.model, "weights_sha256": self.weights_sha256,
            "dfer_version": _dfer_version(), "schema_version": SCHEMA_VERSION,
            "tracks": [t.to_record() for t in self.tracks],
            "status": self.status,
        }

    @property
    def status(self) -> str:
        """'truncated' when the file ended early, else 'ok' when at least one face was
        tracked, else 'no face'."""
        if self.truncated:
            return "truncated"
        return "ok" if self.tracks else "no face"


def _dfer_version() -> str:
    from dfer_cli import __version__

    return __version__

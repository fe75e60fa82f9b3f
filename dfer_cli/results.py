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

    def to_record(self) -> dict:
        return {
            "type": "clip", "video": self.video, "track": self.track,
            "start": round(self.start, 3), "end": round(self.end, 3),
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
    model: str                      # checkpoint name or path
    classes: list[str]
    clips: list[ClipPrediction] = field(default_factory=list)
    tracks: list[TrackSummary] = field(default_factory=list)

    def to_record(self) -> dict:
        return {
            "type": "video", "video": self.video, "duration": round(self.duration, 3),
            "model": self.model, "tracks": [t.to_record() for t in self.tracks],
            "status": self.status,
        }

    @property
    def status(self) -> str:
        """'ok' when at least one face was tracked, else 'no face'."""
        return "ok" if self.tracks else "no face"

"""Pictures of a prediction: the annotated video (`--annotate`) and the timeline (`--plot`).

Both take a `VideoResult` from `predict_video`; neither needs torch.

- `annotate_video` re-decodes the input and writes every frame (same count, same
  timestamps) with each tracked face boxed and labelled with its current top expression.
  The face box at time t is interpolated between the centres of the clips of its track, and
  the label is that of the classified clip whose centre is nearest to t among those that
  cover t. Audio is not copied.
- `plot_timeline` draws each class's probability over time (clip centres), one panel per
  face track, with matplotlib's Agg canvas (no display needed).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from dfer_cli.fsutil import atomic_path
from dfer_cli.results import ClipPrediction, VideoResult

# Containers `annotate_video` writes (suffix -> FFmpeg muxer), all checked to take both
# H.264 and MPEG-4 Part 2 video; others (.webm, .gif, .flv with MPEG-4...) refuse one or both.
VIDEO_CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".m4v": "ipod", ".avi": "avi"}


def _or_list(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def video_container(dst: str | Path) -> str:
    """The FFmpeg muxer `annotate_video` uses for `dst`, from its suffix (case-insensitive).

    Raises ValueError (one line, naming the suffixes to use) for a suffix it cannot write,
    so callers can refuse the path before any video is decoded.
    """
    import av

    usable = {k: v for k, v in VIDEO_CONTAINERS.items() if v in av.formats_available}
    fmt = usable.get(Path(dst).suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown video container; use {_or_list(list(usable))}")
    return fmt


def plot_suffixes() -> list[str]:
    """The file suffixes `plot_timeline` can write (those of matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return sorted("." + k for k in FigureCanvasAgg.get_supported_filetypes())


def plot_format(dst: str | Path) -> str:
    """The image format `plot_timeline` writes for `dst`, from its suffix (case-insensitive).

    Raises ValueError (one line, naming the supported suffixes) when matplotlib cannot
    write that suffix, or there is none.
    """
    suffix = Path(dst).suffix.lower()
    supported = plot_suffixes()
    if suffix not in supported:
        what = f"unsupported image suffix {suffix}" if suffix else "no image suffix"
        raise ValueError(f"{what}; use one of {', '.join(supported)}")
    return suffix[1:]


# Track colours (RGB), chosen to stay readable on skin and dark backgrounds.
PALETTE = ((255, 196, 0), (0, 200, 255), (255, 64, 160), (120, 255, 80), (255, 120, 40), (170, 120, 255))


class _TrackTimeline:
    """The classified clips of one track, ordered by centre time."""

    def __init__(self, track: int, clips: list[ClipPrediction]):
        self.track = track
        self.clips = sorted(clips, key=lambda c: (c.start + c.end) / 2)
        self.mids = np.array([(c.start + c.end) / 2 for c in self.clips])
        self.boxes = np.array([c.box for c in self.clips], dtype=float)  # (N, 4)
        self.first = min(c.start for c in self.clips)
        self.last = max(c.end for c in self.clips)

    def at(self, t: float) -> tuple[np.ndarray, ClipPrediction] | None:
        """(box, clip) to show at time t, or None when no classified clip covers t."""
        if not (self.first <= t <= self.last):
            return None
        covering = [i for i, c in enumerate(self.clips) if c.start <= t <= c.end]
        if not covering:
            return None
        i = min(covering, key=lambda k: abs(self.mids[k] - t))
        box = np.array([np.interp(t, self.mids, self.boxes[:, k]) for k in range(4)])
        return box, self.clips[i]


def track_timelines(result: VideoResult) -> list[_TrackTimeline]:
    """One timeline per track that has at least one classified clip."""
    by_track: dict[int, list[ClipPrediction]] = {}
    for c in result.clips:
        if c.probabilities and c.label is not None:
            by_track.setdefault(c.track, []).append(c)
    return [_TrackTimeline(k, v) for k, v in sorted(by_track.items())]


def draw_annotations(img: np.ndarray, t: float, timelines: list[_TrackTimeline]) -> np.ndarray:
    """Draw the boxes and labels of time t onto an RGB uint8 frame (in place); returns it."""
    import cv2

    h, w = img.shape[:2]
    thick = max(1, round(min(h, w) / 240))
    scale = max(0.35, min(h, w) / 700)
    for tl in timelines:
        found = tl.at(t)
        if found is None:
            continue
        box, clip = found
        color = PALETTE[tl.track % len(PALETTE)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        text = f"{tl.track}: {clip.label} {clip.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        # Label above the box, or inside it when the box touches the top edge.
        ty = y1 - base - 2 if y1 - th - base - 4 >= 0 else y1 + th + 2
        tx = min(max(x1, 0), max(w - tw - 2, 0))
        cv2.rectangle(img, (tx, ty - th - 2), (tx + tw + 2, ty + base), color, -1)
        cv2.putText(img, text, (tx + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return img


def annotate_video(src: str | Path, dst: str | Path, result: VideoResult, *, codec: str | None = None) -> Path:
    """Write `dst`: every frame of `src` with the faces of `result` boxed and labelled.

    Frames come from `dfer_cli.video.iter_frames`, the decoder the pipeline uses, so times
    and rotation match the result's. The output has the same frames at the same times; its
    container follows dst's suffix (one of `VIDEO_CONTAINERS`; another raises ValueError
    before any frame is decoded) and the codec is H.264 when the FFmpeg build has libx264,
    else MPEG-4 Part 2. It is written to a temporary file first, so a failure never leaves a
    half-written dst.
    """
    import av

    from dfer_cli.video import iter_frames, probe

    src, dst = Path(src), Path(dst)
    container = video_container(dst)  # before decoding anything
    timelines = track_timelines(result)
    if codec is None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = Fraction(probe(src).fps or 25.0).limit_denominator(1001)
    tb = Fraction(1, 90000)  # fine enough for any frame time; pts are taken from frame times
    with atomic_path(dst) as tmp, av.open(str(tmp), "w", format=container) as out:
        ostream = None
        last_pts = -1
        for frame in iter_frames(src):
            img = frame.rgb
            if ostream is None:
                h, w = img.shape[:2]
                ostream = out.add_stream(codec, rate=rate)
                # yuv420p needs even sides: an odd last row/column is dropped.
                ostream.width, ostream.height = max(2, w - w % 2), max(2, h - h % 2)
                ostream.pix_fmt = "yuv420p"
                ostream.codec_context.time_base = tb
                ostream.time_base = tb
            img = draw_annotations(img[: ostream.height, : ostream.width].copy(), frame.time, timelines)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts = max(int(round(frame.time / tb)), last_pts + 1)
            vf.time_base = tb
            last_pts = vf.pts
            for packet in ostream.encode(vf):
                out.mux(packet)
        for packet in ostream.encode():
            out.mux(packet)
    return dst


def plot_timeline(result: VideoResult, dst: str | Path, *, dpi: int = 110) -> Path:
    """Write an image with each class's probability over time, one panel per face track.

    The format follows dst's suffix: any that matplotlib writes (.png, .jpg, .pdf, .svg...,
    see `plot_suffixes`); another suffix raises ValueError before anything is drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dst = Path(dst)
    fmt = plot_format(dst)
    timelines = track_timelines(result)
    n = max(1, len(timelines))
    fig = Figure(figsize=(9, 1.2 + 2.2 * n), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    xmax = max(result.duration, max((c.end for c in result.clips), default=0.0), 1e-3)
    classes = list(result.classes)
    cmap = __import__("matplotlib").colormaps["tab10"]
    if not timelines:
        why = "no face found" if not result.tracks else "no clip could be classified"
        axes[0].text(0.5, 0.5, why, ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_yticks([])
    for ax, tl in zip(axes, timelines):
        for k, name in enumerate(classes):
            p = [c.probabilities.get(name, 0.0) for c in tl.clips]
            ax.plot(tl.mids, p, marker="o", markersize=3, lw=1.6, color=cmap(k % 10), label=name)
        summary = next((s for s in result.tracks if s.track == tl.track), None)
        title = f"track {tl.track}"
        if summary is not None and summary.label is not None and summary.probabilities:
            title += f": mostly {summary.label} ({summary.probabilities[summary.label]:.2f})"
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.set_xlim(0, xmax)
    axes[-1].set_xlabel("time (s, clip centre)")
    if timelines:
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(Path(result.video).name, fontsize=11)
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        fig.savefig(str(tmp), format=fmt)
    return dst

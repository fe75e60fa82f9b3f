"""Pictures of a prediction: the annotated video (`--annotate`) and the timeline (`--plot`).

Both take a `VideoResult` from `predict_video`; neither needs torch.

- `annotate_video` re-decodes the input and writes every frame (same count, same
  timestamps) with each tracked face boxed and labelled with its current top expression,
  and the input's first audio stream (copied as it is when the container takes its codec,
  else re-encoded to AAC). A track is drawn at time t only where its face is: at a
  sampled frame where it was detected (or interpolated between two detections), or between
  two such frames less than a short gap apart (`DRAW_GAP`); never before the face appears,
  after it leaves, across a scene cut (a cut starts a new track) or over a longer stretch
  without it (e.g. black frames). Its box there is interpolated between those frames' boxes;
  its label is that of the classified clip whose centre is nearest to t among those that
  cover t (no covering classified clip: nothing drawn).
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


# Seconds between two sampled frames with a track's face across which its box is still
# drawn (a missed detection or two); at least 4.5 sampling steps, for coarse sampling grids.
DRAW_GAP = 0.5


class _TrackTimeline:
    """The classified clips of one track, ordered by centre time, and where its face was.

    seen: [(time, box), ...] of the sampled frames that had the face (`VideoResult.faces`);
    None for a result without that record (one made by hand): then the box is interpolated
    between clip centres and drawn wherever a classified clip covers t.
    """

    def __init__(self, track: int, clips: list[ClipPrediction], seen=None):
        self.track = track
        self.clips = sorted(clips, key=lambda c: (c.start + c.end) / 2)
        self.mids = np.array([(c.start + c.end) / 2 for c in self.clips])
        self.boxes = np.array([c.box for c in self.clips], dtype=float)  # (N, 4)
        self.first = min(c.start for c in self.clips)
        self.last = max(c.end for c in self.clips)
        self.seen_times = self.seen_boxes = None
        self.gap = DRAW_GAP
        if seen:
            seen = sorted(seen, key=lambda s: s[0])
            self.seen_times = np.array([s[0] for s in seen], dtype=float)
            self.seen_boxes = np.array([s[1] for s in seen], dtype=float).reshape(-1, 4)
            steps = np.diff(self.seen_times)
            steps = steps[steps > 0]
            if len(steps):
                self.gap = max(DRAW_GAP, 4.5 * float(steps.min()))

    def face_at(self, t: float, tol: float = 1e-6) -> np.ndarray | None:
        """The face box at time t when the face is there (see the module docstring), else None."""
        ts = self.seen_times
        i = int(np.searchsorted(ts, t - tol))  # first sampled frame at or after t
        if i < len(ts) and abs(ts[i] - t) <= tol:
            return self.seen_boxes[i]
        if i == 0 or i == len(ts) or ts[i] - ts[i - 1] > self.gap:
            return None  # before the face appears, after it left, or a long gap
        a = (t - ts[i - 1]) / (ts[i] - ts[i - 1])
        return (1 - a) * self.seen_boxes[i - 1] + a * self.seen_boxes[i]

    def at(self, t: float) -> tuple[np.ndarray, ClipPrediction] | None:
        """(box, clip) to show at time t, or None when the face is not there or no
        classified clip covers t."""
        if not (self.first <= t <= self.last):
            return None
        covering = [i for i, c in enumerate(self.clips) if c.start <= t <= c.end]
        if not covering:
            return None
        i = min(covering, key=lambda k: abs(self.mids[k] - t))
        if self.seen_times is not None:
            box = self.face_at(t)
            return None if box is None else (box, self.clips[i])
        box = np.array([np.interp(t, self.mids, self.boxes[:, k]) for k in range(4)])
        return box, self.clips[i]


def track_timelines(result: VideoResult) -> list[_TrackTimeline]:
    """One timeline per track that has at least one classified clip."""
    by_track: dict[int, list[ClipPrediction]] = {}
    for c in result.clips:
        if c.probabilities and c.label is not None:
            by_track.setdefault(c.track, []).append(c)
    faces = getattr(result, "faces", None) or {}
    return [_TrackTimeline(k, v, faces.get(k)) for k, v in sorted(by_track.items())]


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


# Audio codecs each container takes as they are (stream copy); any other is re-encoded to
# AAC, which all of them take. Matroska takes every codec FFmpeg knows.
AUDIO_COPY = {
    "mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
    "ipod": {"aac", "alac", "ac3", "eac3"},
    "mov": {"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"},
    "avi": {"mp3", "ac3", "aac", "pcm_s16le", "pcm_u8"},
}


# Containers that keep audio starting before the video (e.g. AAC's priming packet at a
# negative time) without shifting the video; elsewhere that audio is left out.
NEGATIVE_TS = {"mp4", "ipod", "mov"}


class _Audio:
    """The first audio stream of `src`, muxed into `out` alongside the annotated frames.

    Packets are read from a second demuxer on the same file, one at a time, and written
    before the first video frame that follows them, so the output is interleaved and
    memory does not grow. Times are shifted like the video's (`video.decode.iter_frames` counts
    from the video stream's start); audio before that start is left out.
    """

    def __init__(self, src: Path, out, container: str):
        import av

        self.inp = av.open(str(src), metadata_errors="ignore")
        self.stream = self.inp.streams.audio[0] if self.inp.streams.audio else None
        self.out_stream = None
        if self.stream is None:
            self.inp.close()
            return
        video = self.inp.streams.video[0]
        v0 = float((video.start_time or 0) * video.time_base) if video.time_base else 0.0
        self.tb = self.stream.time_base
        self.offset = int(round(v0 / self.tb)) if self.tb else 0
        self.negative_ok = container in NEGATIVE_TS
        allowed = AUDIO_COPY.get(container)
        # the codec's canonical name (mp3), not its decoder's (mp3float)
        codec = getattr(self.stream.codec_context.codec, "canonical_name", None) or self.stream.codec_context.name
        self.copy = allowed is None or codec in allowed
        if self.copy:
            self.out_stream = out.add_stream_from_template(self.stream)
        else:
            rate = self.stream.codec_context.sample_rate or 48000
            channels = self.stream.codec_context.channels or 2
            # by channel count: a source may name its layout only as "N channels", which AAC refuses
            layout = {1: "mono", 2: "stereo"}.get(channels, self.stream.codec_context.layout.name)
            self.out_stream = out.add_stream("aac", rate=rate, layout=layout)
        self.out = out
        self.packets = self.inp.demux(self.stream)
        self.held = None   # the next packet, read but not yet written

    def _next(self):
        for packet in self.packets:
            if packet.dts is None and packet.pts is None:
                continue  # the demuxer's flush packet
            return packet
        return None

    def _time(self, packet) -> float:
        pts = packet.pts if packet.pts is not None else packet.dts
        return float((pts - self.offset) * self.tb)

    def _write(self, packet) -> None:
        if self._time(packet) < 0 and not self.negative_ok:
            return
        if self.copy:
            for attr in ("pts", "dts"):
                if getattr(packet, attr) is not None:
                    setattr(packet, attr, getattr(packet, attr) - self.offset)
            packet.stream = self.out_stream
            self.out.mux(packet)
        else:
            for frame in packet.decode():
                frame.pts = None  # the encoder counts samples from the first one kept
                for p in self.out_stream.encode(frame):
                    self.out.mux(p)

    def until(self, t: float | None) -> None:
        """Write every audio packet that starts before `t` seconds (None: all that are left)."""
        if self.out_stream is None:
            return
        while True:
            if self.held is None:
                self.held = self._next()
                if self.held is None:
                    break
            if t is not None and self._time(self.held) >= t:
                return
            packet, self.held = self.held, None
            self._write(packet)
        if not self.copy:
            for p in self.out_stream.encode():
                self.out.mux(p)
        self.out_stream = None
        self.close()

    def close(self) -> None:
        if self.stream is not None:
            self.stream = None
            self.inp.close()


def annotate_video(src: str | Path, dst: str | Path, result: VideoResult, *, codec: str | None = None,
                   audio: bool = True) -> Path:
    """Write `dst`: every frame of `src` with the faces of `result` boxed and labelled.

    Frames come from `dfer_cli.video.decode.iter_frames`, the decoder the pipeline uses, so times
    and rotation match the result's. The output has the same frames at the same times; its
    container follows dst's suffix (one of `VIDEO_CONTAINERS`; another raises ValueError
    before any frame is decoded) and the codec is H.264 when the FFmpeg build has libx264,
    else MPEG-4 Part 2. With `audio`, the first audio stream of `src` goes along (copied
    when the container takes its codec, see `AUDIO_COPY`, else re-encoded to AAC). It is
    written to a temporary file first, so a failure never leaves a half-written dst.
    """
    import av

    from dfer_cli.video.decode import iter_frames, probe

    src, dst = Path(src), Path(dst)
    container = video_container(dst)  # before decoding anything
    timelines = track_timelines(result)
    if codec is None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = Fraction(probe(src).fps or 25.0).limit_denominator(1001)
    tb = Fraction(1, 90000)  # fine enough for any frame time; pts are taken from frame times
    sound = None
    try:
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
                    if audio:  # streams are all added before the first packet is written
                        sound = _Audio(src, out, container)
                img = draw_annotations(img[: ostream.height, : ostream.width].copy(), frame.time, timelines)
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                vf.pts = max(int(round(frame.time / tb)), last_pts + 1)
                vf.time_base = tb
                last_pts = vf.pts
                if sound is not None:
                    sound.until(frame.time)
                for packet in ostream.encode(vf):
                    out.mux(packet)
            for packet in ostream.encode():
                out.mux(packet)
            if sound is not None:
                sound.until(None)
    finally:
        if sound is not None:
            sound.close()
    return dst


def timeline_figure(result: VideoResult, *, dpi: int = 110):
    """The timeline as a matplotlib Figure: one panel per face track (every track of the
    result, in order), each class's probability at the clip centres; a track without a
    classified clip gets a panel that says why (its clips' status, e.g. the face missing in
    most of a window's frames); a video without faces one panel saying so."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    timelines = {tl.track: tl for tl in track_timelines(result)}
    tracks = sorted({t.track for t in result.tracks} | set(timelines))
    n = max(1, len(tracks))
    fig = Figure(figsize=(9, 1.2 + 2.2 * n), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    xmax = max(result.duration, max((c.end for c in result.clips), default=0.0), 1e-3)
    classes = list(result.classes)
    cmap = __import__("matplotlib").colormaps["tab10"]
    if not tracks:
        axes[0].text(0.5, 0.5, "no face found", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_yticks([])
    for ax, k in zip(axes, tracks):
        summary = next((s for s in result.tracks if s.track == k), None)
        tl = timelines.get(k)
        title = f"track {k}"
        if summary is not None:
            title += f" ({summary.start:.2f}–{summary.end:.2f} s)"
        if tl is None:
            reasons = sorted({str(c.status) for c in result.clips if c.track == k and c.label is None})
            why = "; ".join(reasons) if reasons else "no clip"
            ax.text(0.5, 0.5, f"not classified: {why}", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
            ax.set_title(title, fontsize=10, loc="left")
            continue
        for j, name in enumerate(classes):
            p = [c.probabilities.get(name, 0.0) for c in tl.clips]
            ax.plot(tl.mids, p, marker="o", markersize=3, lw=1.6, color=cmap(j % 10), label=name)
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
        first = axes[tracks.index(min(timelines))]
        first.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(Path(result.video).name, fontsize=11)
    fig.tight_layout()
    return fig


def plot_timeline(result: VideoResult, dst: str | Path, *, dpi: int = 110) -> Path:
    """Write :func:`timeline_figure` as an image.

    The format follows dst's suffix: any that matplotlib writes (.png, .jpg, .pdf, .svg...,
    see `plot_suffixes`); another suffix raises ValueError before anything is drawn.
    """
    dst = Path(dst)
    fmt = plot_format(dst)
    fig = timeline_figure(result, dpi=dpi)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        fig.savefig(str(tmp), format=fmt)
    return dst

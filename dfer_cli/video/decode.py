"""Video decoding with PyAV: open with clear errors, probe, and stream frames with true times.

Frames are decoded one at a time and dropped as they go (memory does not grow with video
length). Each frame carries its presentation time in seconds, taken from its PTS (not from
index / fps), so variable frame rate and odd time bases give true timestamps. Times are
relative to the stream's start time, so the first frame is at (about) 0. Rotation side data
(phone videos) is honoured: `Frame.rgb` is the image as a player would show it.
"""
from __future__ import annotations

import math
import os
import stat
import struct
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from dfer_cli.fsutil import path_problem


class VideoError(ValueError):
    """A video that cannot be opened or decoded; the message names the file and the fix."""


class TruncatedVideoWarning(RuntimeWarning):
    """Decoding ended before the end of the video: the file was cut (an interrupted copy or
    download) or its data is damaged part-way. The frames decoded so far were yielded.

    Attributes: `path`; `frames`, the number of frames decoded; `decoded`, the end of the
    decoded part in seconds (last frame's time plus one frame); `expected`, the duration the
    header states (0.0 when it states none). The message is one line naming the file and
    the fix.
    """

    def __init__(self, message: str, path: str, frames: int, decoded: float, expected: float):
        super().__init__(message)
        self.path, self.frames, self.decoded, self.expected = path, frames, decoded, expected


@dataclass
class VideoInfo:
    path: str
    duration: float        # seconds (container or stream duration; 0.0 when unknown)
    fps: float             # average frame rate (0.0 when unknown)
    width: int             # display width, after rotation
    height: int            # display height, after rotation
    rotation: int          # counter-clockwise degrees the stored frames are turned for display
    frame_count: int       # from the header when present, else duration * fps (an estimate)
    codec: str


class Frame:
    """One decoded frame: `index` (decode order), `time` (seconds from PTS) and `rgb`, an
    (H, W, 3) uint8 array converted lazily (only frames that are used pay for conversion)."""

    __slots__ = ("index", "time", "_av", "_rgb", "_rotation")

    def __init__(self, index: int, time: float, av_frame, rotation: int):
        self.index, self.time = index, time
        self._av, self._rgb, self._rotation = av_frame, None, rotation

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            img = self._av.to_ndarray(format="rgb24")
            k = (self._rotation // 90) % 4
            if k:
                img = np.ascontiguousarray(np.rot90(img, k))  # rot90 turns counter-clockwise
            self._rgb, self._av = img, None
        return self._rgb

    def __repr__(self) -> str:
        return f"Frame(index={self.index}, time={self.time:.3f})"


def _check_path(path) -> Path:
    """The path, after checking it names a readable, non-empty regular file (a FIFO or a
    device would make the demuxer block or read forever); else VideoError with the reason."""
    problem = path_problem(path)
    if problem is not None:
        raise VideoError(f"{path}: {problem}")
    return Path(path)


def _open(path):
    """Open a container and its first video stream, mapping every failure to a VideoError."""
    import av

    p = _check_path(path)
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot be read as a video ({_reason(e)}); it is not a video "
                         "or it is truncated/corrupt: re-export or re-copy it") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream (audio or data only); pass a file with video")
    return container, container.streams.video[0]


# How much of a live input FFmpeg reads before the first frame is decoded: its defaults
# (5 MB, 5 s) would hold a slow stream's first records back by seconds.
LIVE_PROBE = {"probesize": "262144", "analyzeduration": "1000000"}

# Inputs that are streams rather than files: read once, in order, with no size or duration known.
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")


def is_stream(spec) -> bool:
    """Whether an input names a live stream rather than a video file: ``-`` (standard
    input), a URL FFmpeg opens (``rtsp://``, ``http://``, ``udp://`` ...), a named pipe
    (FIFO) or a character device such as a webcam (``/dev/video0``).

    A stream is decoded once, as it arrives: it is never probed ahead, and its duration is
    unknown until it ends.
    """
    if isinstance(spec, str):
        if spec == "-":
            return True
        scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
        if scheme in STREAM_SCHEMES:
            return True
    try:
        mode = os.stat(spec).st_mode
    except (OSError, ValueError, TypeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def open_stream(spec, stdin=None):
    """Open a live input (see :func:`is_stream`): (container, video stream).

    ``-`` reads the binary standard input (``stdin``: a binary file object, default
    ``sys.stdin.buffer``); it must be a streamable container (MPEG-TS, Matroska/WebM, FLV,
    NUT, fragmented MP4 ...: a plain MP4 keeps its index at the end, which a pipe cannot
    seek to). A character device is opened with FFmpeg's video4linux2 input. Raises
    VideoError naming the input and the fix.
    """
    import av

    name = "standard input" if spec == "-" else str(spec)
    try:
        if spec == "-":
            source = stdin if stdin is not None else sys.stdin.buffer
            container = av.open(source, mode="r", metadata_errors="ignore", options=LIVE_PROBE)
        else:
            device = os.path.exists(spec) and stat.S_ISCHR(os.stat(spec).st_mode)
            container = av.open(str(spec), mode="r", format="v4l2" if device else None,
                                metadata_errors="ignore", options=LIVE_PROBE)
    except av.error.FFmpegError as e:
        hint = ("pipe a streamable container (e.g. ffmpeg ... -f mpegts -), not a plain MP4"
                if spec == "-" else "check that the address or device is right and reachable")
        raise VideoError(f"{name}: cannot be opened as a video stream ({_reason(e)}); {hint}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{name}: has no video stream (audio or data only); send video")
    return container, container.streams.video[0]


def iter_stream_frames(spec, stdin=None) -> Iterator[Frame]:
    """Decode a live input (see :func:`is_stream`) as it arrives, yielding `Frame`s with PTS
    times in seconds from the stream's first frame. Memory holds one frame at a time.

    Raises VideoError when it cannot be opened or yields no frame. Data that stops
    decoding part-way ends the stream with one TruncatedVideoWarning, as for files.
    """
    return open_live(spec, stdin)[1]


STALL_TIMEOUT = 30.0  # seconds without a frame after which a live input is taken as ended


def open_live(spec, stdin=None, stall_timeout: float | None = STALL_TIMEOUT) -> tuple[float, Iterator[Frame]]:
    """Open a live input (see :func:`is_stream`): (the frame rate the stream states, 0.0 when
    it states none; its frames as :func:`iter_stream_frames` yields them).

    FFmpeg opens and reads the input in a thread of its own, handing frames over through a
    short queue: a read that blocks (a pipe whose writer stalls, a server that keeps the
    connection open and sends nothing) blocks that thread only, so Ctrl-C and SIGTERM reach
    the caller within a fraction of a second. When no frame arrives for `stall_timeout`
    seconds (None or 0: wait for ever) the stream is taken as ended there, with one
    TruncatedVideoWarning saying so."""
    name = "standard input" if spec == "-" else str(spec)
    feed = _LiveFeed(lambda: open_stream(spec, stdin), name)
    kind, value = feed.get(stall_timeout)
    if kind == "stalled":
        feed.stop.set()
        raise VideoError(f"{name}: no video arrived for {value:g} s, so there is nothing to decode; "
                         "check the source, or wait longer with --stall-timeout")
    return value, feed.frames(stall_timeout)


class _LiveFeed:
    """A daemon thread that opens a live input and decodes it, and the short queue its results
    come through to the reading thread: ("open", fps), ("frame", Frame), ("warning",
    TruncatedVideoWarning), ("error", exception), ("end", None)."""

    def __init__(self, opener, name: str):
        import queue
        import threading

        self.name, self.q = name, queue.Queue(maxsize=4)
        self.stop = threading.Event()
        self.n, self.last_time = 0, None
        threading.Thread(target=self._run, args=(opener,), name=f"dfer-live {name}", daemon=True).start()

    def _put(self, item) -> bool:
        import queue

        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, opener) -> None:
        try:
            container, stream = opener()
            if not self._put(("open", float(stream.average_rate or stream.guessed_rate or 0.0))):
                container.close()
                return
            for frame in _decode(self.name, container, stream, emit=lambda w: self._put(("warning", w))):
                if not self._put(("frame", frame)):
                    return
            self._put(("end", None))
        except BaseException as e:  # noqa: BLE001 -- raised again in the reading thread
            self._put(("error", e))

    def get(self, stall_timeout):
        """The next (kind, value), waiting in slices so that signals reach the reading thread;
        ("stalled", seconds) when nothing came for `stall_timeout` seconds. Raises what the
        feed raised; re-issues its warnings here."""
        import queue
        import time

        limit = stall_timeout if stall_timeout and stall_timeout > 0 else None
        start = time.monotonic()
        while True:
            try:
                kind, value = self.q.get(timeout=0.25)
            except queue.Empty:
                if limit is not None and time.monotonic() - start > limit:
                    return "stalled", limit
                continue
            if kind == "error":
                self.stop.set()
                raise value
            if kind == "warning":
                warnings.warn(value, stacklevel=3)
                continue
            return kind, value

    def frames(self, stall_timeout) -> Iterator[Frame]:
        try:
            while True:
                kind, value = self.get(stall_timeout)
                if kind == "stalled":
                    decoded = self.last_time or 0.0
                    warnings.warn(TruncatedVideoWarning(
                        f"{self.name}: no data for {value:g} s, so the stream is taken as ended there "
                        f"(--stall-timeout); {self.n} frame(s) decoded, {decoded:.2f} s",
                        self.name, self.n, decoded, 0.0), stacklevel=2)
                    return
                if kind == "end":
                    return
                self.n += 1
                self.last_time = value.time
                yield value
        finally:
            self.stop.set()


def _reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return msg.split(":")[-1].strip() if msg else type(e).__name__


def _display_rotation(frame) -> int:
    """Counter-clockwise display rotation of a decoded frame, snapped to a multiple of 90."""
    rot = getattr(frame, "rotation", None)  # PyAV >= 14
    if rot is None:
        rot = 0.0
        try:  # older PyAV: parse the 3x3 16.16 fixed-point display matrix ourselves
            for sd in frame.side_data:
                if "DISPLAYMATRIX" in str(getattr(sd, "type", "")).upper():
                    m = struct.unpack("<9i", bytes(sd)[:36])
                    sx, sy = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
                    if sx and sy:
                        rot = -math.degrees(math.atan2(m[1] / sy, m[0] / sx))
        except Exception:
            rot = 0.0
    return int(round(float(rot) / 90.0)) * 90 % 360


def probe(path) -> VideoInfo:
    """Read a video's header (and its first frame, for rotation) without decoding the rest.

    Raises VideoError naming the file and the reason when it cannot be opened."""
    import av

    container, stream = _open(path)
    try:
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        rotation = 0
        w, h = stream.codec_context.width, stream.codec_context.height
        try:
            for frame in container.decode(stream):
                rotation = _display_rotation(frame)
                w, h = frame.width, frame.height
                break
        except av.error.FFmpegError:
            pass
        if rotation in (90, 270):
            w, h = h, w
        count = int(stream.frames or 0) or int(round(duration * fps))
        return VideoInfo(str(path), duration, fps, int(w), int(h), rotation, count,
                         stream.codec_context.name)
    finally:
        container.close()


info = probe  # alias


def iter_frames(path) -> Iterator[Frame]:
    """Decode a video in order, yielding `Frame`s with PTS times in seconds.

    Raises VideoError before yielding anything when the file cannot be opened or no frame
    can be decoded. If decoding fails part-way (corrupt or truncated data), or the frames
    end well before the duration the header states (a file cut short), the frames decoded
    so far are kept and one TruncatedVideoWarning (a RuntimeWarning) names the file, the
    decoded duration and the fix.
    """
    container, stream = _open(path)
    return _decode(path, container, stream)


def _decode(path, container, stream, emit=None) -> Iterator[Frame]:
    """`container`'s frames of `stream` (see :func:`iter_frames`); a TruncatedVideoWarning
    goes to `emit` when given (another thread re-issues it), else to ``warnings.warn``."""
    import av

    tb = stream.time_base
    start_pts = stream.start_time or 0
    fps = float(stream.average_rate or stream.guessed_rate or 0.0) or 25.0
    n, last_time, warned = 0, None, False
    header_duration = (float(stream.duration * tb) if (stream.duration and tb)
                       else (container.duration or 0) / 1_000_000)

    def truncated(message: str, stacklevel: int) -> None:
        decoded = (last_time or 0.0) + 1.0 / fps
        report = TruncatedVideoWarning(
            f"{path}: {message}; {n} frame(s) decoded, {decoded:.2f} s"
            + (f" of {header_duration:.2f} s" if header_duration > 0 else "")
            + ": the file was cut short or is damaged, re-copy or re-export it for the rest",
            str(path), n, decoded, header_duration)
        if emit is not None:
            emit(report)
        else:
            warnings.warn(report, stacklevel=stacklevel)

    def warn(err):
        nonlocal warned
        if not warned:
            warned = True
            at = f"{last_time:.2f} s" if last_time is not None else "the start"
            truncated(f"truncated or corrupt video data after {at} ({_reason(err)})", 4)

    def frames_of(packet):
        try:
            return stream.decode(packet) if packet is not None else stream.decode()
        except av.error.EOFError:
            return []  # decoder already flushed
        except av.error.FFmpegError as e:
            if n == 0:
                raise
            warn(e)
            return []

    try:
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                packet = None
            except av.error.FFmpegError as e:  # demuxer hit damaged/truncated data
                if n == 0:
                    raise
                warn(e)
                packet = None
            for af in frames_of(packet):
                if af.pts is not None and tb is not None:
                    t = float((af.pts - start_pts) * tb)
                else:  # no timestamp from the container: step from the previous frame
                    t = 0.0 if last_time is None else last_time + 1.0 / fps
                if last_time is not None and t <= last_time:
                    continue  # duplicate or out-of-order timestamp: keep times strictly increasing
                frame = Frame(n, t, af, _display_rotation(af))
                n, last_time = n + 1, t
                yield frame
            if packet is None:
                break
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: video data cannot be decoded ({_reason(e)}); "
                         "the file is corrupt or uses an unsupported codec") from None
    finally:
        container.close()
    if n == 0:
        raise VideoError(f"{path}: no frame could be decoded; the file is corrupt, truncated "
                         "or uses an unsupported codec")
    if not warned and header_duration > 0 and last_time is not None \
            and last_time + 3.0 / fps < header_duration - 0.5:
        truncated(f"truncated: frames end at {last_time:.2f} s", 3)


def read_frames(path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole (short) video into memory: (times (N,), frames (N, H, W, 3) uint8).
    For long videos use `iter_frames`, which streams."""
    times, frames = [], []
    for f in iter_frames(path):
        times.append(f.time)
        frames.append(f.rgb)
    return np.asarray(times, dtype=np.float64), np.stack(frames)


def scan_duration(path) -> float:
    """Duration in seconds from the packets' timestamps (demux only, no decoding), for
    files whose header does not state it. 0.0 when nothing can be read."""
    import av

    container, stream = _open(path)
    tb, start = stream.time_base, stream.start_time or 0
    end = 0.0
    try:
        for packet in container.demux(stream):
            if packet.pts is not None and tb is not None:
                end = max(end, float((packet.pts + (packet.duration or 0) - start) * tb))
    except av.error.FFmpegError:
        pass
    finally:
        container.close()
    return end

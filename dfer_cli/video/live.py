"""Live inputs: a URL, a named pipe, a device or a video on standard input, decoded in a
thread so that a stalled source ends the stream after a time-out instead of hanging.
"""
from __future__ import annotations

import os
import stat
import sys
import warnings
from typing import Iterator

from dfer_cli.video.decode import (
    Frame,
    TruncatedVideoWarning,
    VideoError,
    decode_frames,
    error_reason,
    iter_frames,
    probe,
    scan_duration,
)

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
        raise VideoError(f"{name}: cannot be opened as a video stream ({error_reason(e)}); {hint}") from None
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
            for frame in decode_frames(self.name, container, stream, emit=lambda w: self._put(("warning", w))):
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


def open_video(path, stdin=None, stall_timeout: float | None = STALL_TIMEOUT):
    """(duration in seconds, or None for a live input; frame rate, 0.0 when unknown; the
    decoded frames, an iterator of `Frame`) for a video file or a live input (`is_stream`)."""
    if is_stream(path):
        fps, frames = open_live(path, stdin, stall_timeout)
        return None, fps, frames
    info = probe(path)
    duration = info.duration if info.duration > 0 else scan_duration(path)
    return duration, info.fps, iter_frames(path)

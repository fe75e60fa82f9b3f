"""Video decoding with PyAV: open with clear errors, probe, and stream frames with true times.

Frames are decoded one at a time and dropped as they go (memory does not grow with video
length). Each frame carries its presentation time in seconds, taken from its PTS (not from
index / fps), so variable frame rate and odd time bases give true timestamps. Times are
relative to the stream's start time, so the first frame is at (about) 0. Rotation side data
(phone videos) is honoured: `Frame.rgb` is the image as a player would show it.
"""
from __future__ import annotations

import math
import struct
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
        raise VideoError(f"{path}: cannot be read as a video ({error_reason(e)}); it is not a video "
                         "or it is truncated/corrupt: re-export or re-copy it") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream (audio or data only); pass a file with video")
    return container, container.streams.video[0]


def error_reason(e: Exception) -> str:
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
    return decode_frames(path, container, stream)


def decode_frames(path, container, stream, emit=None) -> Iterator[Frame]:
    """`container`'s frames of `stream` (see :func:`iter_frames`); a TruncatedVideoWarning
    goes to `emit` when given (another thread re-issues it), else to ``warnings.warn``."""
    import av

    run = _Decoding(path, container, stream, emit)
    try:
        for packet in run.packets():
            for af in run.frames_of(packet):
                frame = run.timed(af)
                if frame is not None:
                    yield frame
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: video data cannot be decoded ({error_reason(e)}); "
                         "the file is corrupt or uses an unsupported codec") from None
    finally:
        container.close()
    run.finish()


class _Decoding:
    """The state of one pass over a stream: frames decoded, the last time, and whether damage
    was reported (once). Damaged data after the first frame ends the video with a warning;
    before it, it is an error."""

    def __init__(self, path, container, stream, emit):
        self.path, self.stream, self.emit = path, stream, emit
        self.tb = stream.time_base
        self.start_pts = stream.start_time or 0
        self.fps = float(stream.average_rate or stream.guessed_rate or 0.0) or 25.0
        self.n, self.last_time, self.warned = 0, None, False
        self.header_duration = (float(stream.duration * self.tb) if (stream.duration and self.tb)
                                else (container.duration or 0) / 1_000_000)
        self.container = container

    def packets(self):
        """The stream's packets, then None (flush the decoder)."""
        import av

        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                packet = None
            except av.error.FFmpegError as e:  # demuxer hit damaged/truncated data
                if self.n == 0:
                    raise
                self.warn(e)
                packet = None
            yield packet
            if packet is None:
                return

    def frames_of(self, packet):
        import av

        try:
            return self.stream.decode(packet) if packet is not None else self.stream.decode()
        except av.error.EOFError:
            return []  # decoder already flushed
        except av.error.FFmpegError as e:
            if self.n == 0:
                raise
            self.warn(e)
            return []

    def timed(self, af) -> Frame | None:
        """The decoded frame with its time in seconds, or None for a duplicate or
        out-of-order timestamp (times stay strictly increasing)."""
        if af.pts is not None and self.tb is not None:
            t = float((af.pts - self.start_pts) * self.tb)
        else:  # no timestamp from the container: step from the previous frame
            t = 0.0 if self.last_time is None else self.last_time + 1.0 / self.fps
        if self.last_time is not None and t <= self.last_time:
            return None
        frame = Frame(self.n, t, af, _display_rotation(af))
        self.n, self.last_time = self.n + 1, t
        return frame

    def finish(self) -> None:
        if self.n == 0:
            raise VideoError(f"{self.path}: no frame could be decoded; the file is corrupt, truncated "
                             "or uses an unsupported codec")
        if not self.warned and self.header_duration > 0 and self.last_time is not None \
                and self.last_time + 3.0 / self.fps < self.header_duration - 0.5:
            self.truncated(f"truncated: frames end at {self.last_time:.2f} s", 4)

    def warn(self, err) -> None:
        if not self.warned:
            self.warned = True
            at = f"{self.last_time:.2f} s" if self.last_time is not None else "the start"
            self.truncated(f"truncated or corrupt video data after {at} ({error_reason(err)})", 5)

    def truncated(self, message: str, stacklevel: int) -> None:
        decoded = (self.last_time or 0.0) + 1.0 / self.fps
        report = TruncatedVideoWarning(
            f"{self.path}: {message}; {self.n} frame(s) decoded, {decoded:.2f} s"
            + (f" of {self.header_duration:.2f} s" if self.header_duration > 0 else "")
            + ": the file was cut short or is damaged, re-copy or re-export it for the rest",
            str(self.path), self.n, decoded, self.header_duration)
        if self.emit is not None:
            self.emit(report)
        else:
            warnings.warn(report, stacklevel=stacklevel)


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

"""Live inputs: standard input, named pipes, devices and URLs are decoded as
streams, as the bytes arrive, never probed ahead."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from synth import make_video, slow_fifo_writer

from dfer_cli.video.decode import VideoError
from dfer_cli.video.live import is_stream, iter_stream_frames


def _ts(tmp_path, frames=20, fps=10.0, name="clip.ts"):
    """An MPEG-TS file (a streamable container) whose frame i has brightness 10 * i % 250."""
    return make_video(tmp_path / name, frames=[np.full((48, 64, 3), 10 * i % 250, np.uint8) for i in range(frames)],
                      fps=fps, codec="mpeg2video")


def _pipe_feeder(data: bytes, chunk: int = 4096):
    """A readable binary pipe end fed with ``data`` by a thread (non-seekable, like a shell pipe)."""
    r, w = os.pipe()

    def feed():
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(data), chunk):
                f.write(data[i:i + chunk])

    threading.Thread(target=feed, daemon=True).start()
    return os.fdopen(r, "rb")


def test_is_stream_tells_streams_from_files(tmp_path):
    video = _ts(tmp_path)
    fifo = tmp_path / "live.fifo"
    os.mkfifo(fifo)
    assert is_stream("-")
    assert is_stream("rtsp://camera.local/stream") and is_stream("HTTP://host/live.ts")
    assert is_stream("udp://239.0.0.1:1234") and is_stream(str(fifo))
    assert is_stream("/dev/null")                       # a character device, like /dev/video0
    assert not is_stream(str(video)) and not is_stream(str(tmp_path / "absent.mp4"))
    assert not is_stream("ftp-notes.mp4") and not is_stream("file.mp4")


def test_standard_input_pipe_decodes_every_frame_with_times(tmp_path):
    data = _ts(tmp_path).read_bytes()
    frames = list(iter_stream_frames("-", stdin=_pipe_feeder(data)))
    assert len(frames) == 20
    np.testing.assert_allclose([f.time for f in frames], np.arange(20) / 10.0, atol=1e-3)
    # frame 7 is the one painted 70: decoded in order, not reordered or skipped
    assert abs(float(frames[7].rgb.mean()) - 70) < 4


def test_fifo_frames_arrive_before_the_writer_finishes(tmp_path):
    """A slow writer: the second half of the stream is only written once the reader has
    decoded a frame, so a reader that waited for the end would never see one."""
    data = _ts(tmp_path, frames=60).read_bytes()
    fifo = tmp_path / "live.fifo"
    os.mkfifo(fifo)
    first_frame = threading.Event()
    waited = slow_fifo_writer(fifo, data, first_frame, timeout=60)
    count = 0
    for frame in iter_stream_frames(str(fifo)):
        count += 1
        first_frame.set()
    assert waited.get("in_time") is True, "no frame was decoded before the writer finished"
    assert count == 60


def test_not_a_video_on_standard_input_is_one_line_with_the_fix():
    with pytest.raises(VideoError) as e:
        list(iter_stream_frames("-", stdin=_pipe_feeder(b"clip1.mp4\nclip2.mp4\n" * 200)))
    msg = str(e.value)
    assert msg.startswith("standard input: ") and "\n" not in msg
    assert "mpegts" in msg


def test_unreachable_url_names_it(tmp_path):
    with pytest.raises(VideoError, match=r"^tcp://127\.0\.0\.1:9/x: cannot be opened as a video stream"):
        list(iter_stream_frames("tcp://127.0.0.1:9/x"))

"""Small synthetic videos for tests, built with PyAV (no files shipped, nothing downloaded).

    from synth import make_video, moving_blobs
    make_video(tmp_path / "a.mp4", frames=30, fps=10, size=(96, 64), draw=moving_blobs())

`make_video` writes frame i at time `pts[i]` (seconds) when `pts` is given (variable frame
rate), else at i / fps. `draw(img, i, t)` paints frame i (an (h, w, 3) uint8 RGB array,
pre-filled with `background`) in place or returns a replacement array.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DrawFn = Callable[[np.ndarray, int, float], "np.ndarray | None"]


def make_video(
    path,
    frames: int | Sequence[np.ndarray] = 20,
    fps: float = 10.0,
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
    pts: Sequence[float] | None = None,
    rotation: int | None = None,
    draw: DrawFn | None = None,
    background: tuple[int, int, int] = (40, 40, 40),
    pix_fmt: str | None = None,
) -> Path:
    """Encode a small video and return its path.

    frames: a frame count (painted by `draw`) or a sequence of (h, w, 3) uint8 RGB arrays
    (then `size` is taken from the first array). fps: nominal rate; also the time grid when
    `pts` is None. codec: any PyAV encoder ('libx264', 'mpeg4', 'libvpx-vp9', 'mjpeg', ...).
    pts: per-frame presentation times in seconds, strictly increasing (VFR); written with a
    1/1000 s time base. rotation: display rotation in degrees counter-clockwise (the value
    decoders report as `VideoFrame.rotation`); a phone portrait video is typically -90.
    pix_fmt: encoder pixel format; default yuv420p, or yuv444p for odd sizes with libx264.
    """
    import av

    path = Path(path)
    arrays = None
    if not isinstance(frames, int):
        arrays = [np.asarray(a, dtype=np.uint8) for a in frames]
        n = len(arrays)
        size = (arrays[0].shape[1], arrays[0].shape[0])
    else:
        n = frames
    w, h = size
    if pts is not None and len(pts) != n:
        raise ValueError(f"pts has {len(pts)} entries for {n} frames")
    if pix_fmt is None:
        odd = w % 2 or h % 2
        pix_fmt = "yuv444p" if (odd and codec == "libx264") else ("yuvj420p" if codec == "mjpeg" else "yuv420p")

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        # x264's bitstream depends on its thread count, which defaults to the machine's core
        # count: one thread makes every fixture the same bytes on every machine.
        stream.codec_context.thread_count = 1
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(n):
            t = float(pts[i]) if pts is not None else i / float(fps)
            if arrays is not None:
                img = arrays[i]
            else:
                img = np.empty((h, w, 3), np.uint8)
                img[:] = background
                if draw is not None:
                    res = draw(img, i, t)
                    if res is not None:
                        img = np.asarray(res, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = int(round(t * 1000)) if pts is not None else i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def draw_blob(img: np.ndarray, cx: float, cy: float, r: float, color=(230, 60, 60)) -> None:
    """Paint a filled disc of radius r centred at (cx, cy) into img (in place)."""
    h, w = img.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = color


def moving_blobs(
    starts: Sequence[tuple[float, float]] = ((0.25, 0.5),),
    velocities: Sequence[tuple[float, float]] = ((0.02, 0.0),),
    radius: float = 0.12,
    colors: Sequence[tuple[int, int, int]] = ((230, 60, 60), (60, 200, 60), (60, 90, 230)),
) -> DrawFn:
    """A `draw` callable for make_video: discs that move linearly per frame.

    starts / velocities are in units of the frame width and height (per frame); radius is a
    fraction of the shorter side. Frame i shows disc k at start_k + i * velocity_k.
    """
    def draw(img, i, t):
        h, w = img.shape[:2]
        for k, ((x0, y0), (vx, vy)) in enumerate(zip(starts, velocities)):
            draw_blob(img, (x0 + i * vx) * w, (y0 + i * vy) * h, radius * min(w, h), colors[k % len(colors)])
    return draw


def frame_index_pattern() -> DrawFn:
    """A `draw` callable that encodes the frame index as a grey level (16 * i mod 256) over
    the whole frame, so a decoded frame can be matched to its source index."""
    def draw(img, i, t):
        img[:] = (16 * i) % 256
    return draw


def paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    """Copy patch into canvas with its top-left corner at (x, y), clipped to the canvas."""
    H, W = canvas.shape[:2]
    h, w = patch.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = patch[y0 - y:y1 - y, x0 - x:x1 - x]


def truncate(path, keep_fraction: float = 0.5) -> Path:
    """Cut a file to its first `keep_fraction` of bytes (a download that stopped early)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep_fraction))])
    return path


DATA_DIR = Path(__file__).parent / "data"


def face_image() -> np.ndarray:
    """The credited real face frame shipped in tests/data (RGB uint8), see tests/data/README.md."""
    from PIL import Image

    return np.asarray(Image.open(DATA_DIR / "face_smile.png").convert("RGB"))


def tiny_model(num_frames: int = 16, seed: int = 0):
    """A tiny, randomly initialised logo_former at 32 px that carries `.preprocessing` and
    `.classes` like a model from `load_model`, in eval mode."""
    import torch

    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    torch.manual_seed(seed)
    m = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=num_frames)
    m.preprocessing = Preprocessing(input_size=32, num_frames=num_frames)
    m.classes = list(CLASSES)
    return m.eval()


def slow_fifo_writer(fifo, data: bytes, resume, timeout: float = 300) -> dict:
    """Start a thread that writes the first half of `data` into the named pipe `fifo`, waits
    until the `resume` event is set (what the reader does once it has output something), then
    writes the rest. Returns a dict whose "in_time" becomes True when the event came before
    `timeout` seconds: a reader that waited for the end of the stream would never set it."""
    import threading

    waited: dict = {}

    def writer():
        with open(fifo, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            waited["in_time"] = resume.wait(timeout=timeout)
            f.write(data[len(data) // 2:])

    threading.Thread(target=writer, daemon=True).start()
    return waited


def interrupt_when(proc, ready: Callable[[], bool], what: str, timeout: float = 600, settle: float = 0.0,
                   sig: int | None = None):
    """Send SIGINT (what Ctrl-C sends; or `sig`) to the Popen `proc` once `ready()` holds
    (checked every 50 ms; `settle` seconds later), and return its (stdout, stderr); fails if
    `proc` ends or `timeout` passes first (`what` names the awaited state), and kills it on
    any failure."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{what} not in time"
            time.sleep(0.05)
        time.sleep(settle)
        proc.send_signal(signal.SIGINT if sig is None else sig)
        return proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()

import warnings

import numpy as np
import pytest
from synth import frame_index_pattern, make_video, moving_blobs, truncate

from dfer_cli.video import decode as video
from dfer_cli.video.decode import VideoError


@pytest.mark.parametrize("codec,ext,size", [
    ("libx264", "mp4", (64, 48)),
    ("libx264", "mp4", (67, 45)),     # odd size
    ("mpeg4", "avi", (66, 50)),
    ("libvpx-vp9", "webm", (64, 48)),
])
def test_decode_codecs_sizes_and_times(tmp_path, codec, ext, size):
    p = make_video(tmp_path / f"v.{ext}", frames=12, fps=8, codec=codec, size=size,
                   draw=frame_index_pattern())
    info = video.probe(p)
    assert (info.width, info.height) == size
    assert info.fps == pytest.approx(8)
    assert info.frame_count == pytest.approx(12, abs=1)
    frames = list(video.iter_frames(p))
    assert len(frames) == 12
    assert [f.time for f in frames] == pytest.approx([i / 8 for i in range(12)], abs=1e-3)
    for i, f in enumerate(frames):
        assert f.rgb.shape == (size[1], size[0], 3) and f.rgb.dtype == np.uint8
        assert abs(int(f.rgb[size[1] // 2, size[0] // 2, 0]) - (16 * i) % 256) <= 6  # grey level = index


def test_vfr_timestamps_come_from_pts(tmp_path):
    pts = [0.0, 0.04, 0.5, 0.52, 1.7, 3.0]
    p = make_video(tmp_path / "vfr.mp4", frames=len(pts), pts=pts, draw=frame_index_pattern())
    frames = list(video.iter_frames(p))
    assert [f.time for f in frames] == pytest.approx(pts, abs=1e-3)
    # index/fps would say frame 4 is at 0.4 s at its average rate; the PTS says 1.7 s
    assert abs(int(frames[4].rgb[10, 10, 0]) - 64) <= 6


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotation_side_data_is_applied(tmp_path, rotation):
    def draw(img, i, t):  # a bright block in the stored frame's top-left corner
        img[:10, :20] = 255
    p = make_video(tmp_path / "rot.mp4", frames=3, size=(64, 48), rotation=rotation, draw=draw)
    info = video.probe(p)
    f = next(iter(video.iter_frames(p)))
    ys, xs = np.nonzero(f.rgb[..., 0] > 200)
    h, w = f.rgb.shape[:2]
    if rotation in (90, -90):
        assert (info.width, info.height) == (48, 64) and (w, h) == (48, 64)
    if rotation == -90:   # shown turned clockwise: the block moves to the top-right
        assert xs.min() >= w - 12 and ys.max() <= 21
    elif rotation == 90:  # counter-clockwise: bottom-left
        assert xs.max() <= 11 and ys.min() >= h - 22
    else:                 # upside down: bottom-right
        assert xs.min() >= w - 22 and ys.min() >= h - 12


def test_one_frame_video(tmp_path):
    p = make_video(tmp_path / "one.mp4", frames=1, size=(32, 32))
    frames = list(video.iter_frames(p))
    assert len(frames) == 1 and frames[0].time == 0.0
    assert frames[0].rgb.shape == (32, 32, 3)


def test_truncated_stream_keeps_decoded_frames_and_warns_once(tmp_path):
    p = make_video(tmp_path / "t.mkv", frames=60, fps=10, size=(64, 48), draw=moving_blobs())
    truncate(p, 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = list(video.iter_frames(p))
    assert 0 < len(frames) < 60
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "t.mkv" in msgs[0] and f"{frames[-1].time:.2f} s" in msgs[0]
    (w,) = [w.message for w in caught if isinstance(w.message, video.TruncatedVideoWarning)]
    assert w.path == str(p) and w.frames == len(frames)
    assert w.decoded == pytest.approx(frames[-1].time + 0.1)  # the last frame lasts 1/fps
    assert w.expected == pytest.approx(6.0, abs=0.01)  # what the header still says
    assert "\n" not in str(w) and "re-copy" in str(w)


def test_file_cut_short_without_a_decode_error_is_reported(tmp_path):
    """A cut whose last packets still decode: the frames end long before the header says."""
    p = make_video(tmp_path / "cut.mkv", frames=64, fps=8, size=(64, 48), draw=moving_blobs())
    full = p.read_bytes()
    ok = None
    for keep in (0.8, 0.7, 0.6, 0.9):  # a cut point between packets that ends decoding cleanly
        p.write_bytes(full[: int(len(full) * keep)])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frames = list(video.iter_frames(p))
        got = [w.message for w in caught if isinstance(w.message, video.TruncatedVideoWarning)]
        if got and "frames end at" in str(got[0]):
            ok = (frames, got)
            break
    assert ok is not None, "no cut point gave a clean early end"
    frames, (w,) = ok
    assert w.decoded == pytest.approx(frames[-1].time + 1 / 8) and w.decoded < w.expected
    assert w.expected == pytest.approx(8.0, abs=0.01) and w.frames == len(frames) < 64


def test_streaming_does_not_keep_frames(tmp_path):
    p = make_video(tmp_path / "s.mp4", frames=40, size=(64, 48))
    it = video.iter_frames(p)
    first = next(it)
    ref = first._av
    assert ref is not None  # kept lazily until converted ...
    first.rgb
    assert first._av is None  # ... and released after


def test_open_errors_name_file_and_reason(tmp_path):
    cases = {}
    cases["missing"] = (tmp_path / "nope.mp4", "no such file")
    cases["dir"] = (tmp_path, "is a directory")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases["empty"] = (empty, "empty")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    cases["text"] = (text, "cannot be read as a video")
    import av
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=16000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), format="fltp", layout="mono")
        fr.sample_rate = 16000
        for pk in s.encode(fr):
            c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    cases["audio"] = (audio, "no video stream")
    for name, (path, reason) in cases.items():
        for fn in (video.probe, video.iter_frames):
            with pytest.raises(VideoError) as e:
                fn(path)
            assert str(path) in str(e.value) and reason in str(e.value), name


def test_undecodable_data_is_an_error(tmp_path):
    p = make_video(tmp_path / "g.mkv", frames=20, size=(64, 48), draw=moving_blobs())
    data = bytearray(p.read_bytes())
    rng = np.random.default_rng(0)
    body = slice(600, len(data) - 50)   # keep the container header, scramble the coded video
    data[body] = rng.integers(0, 256, body.stop - body.start, dtype=np.uint8).tobytes()
    p.write_bytes(bytes(data))
    video.probe(p)  # the header still opens ...
    with pytest.raises(VideoError, match=r"g\.mkv: video data cannot be decoded"):
        list(video.iter_frames(p))  # ... but no frame decodes

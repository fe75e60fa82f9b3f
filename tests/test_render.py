"""render.py: annotated video keeps every frame and draws the boxes; the timeline is an image
in the format its suffix names; unwritable suffixes are refused before any work."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synth import make_video

from dfer_cli.labels import CLASSES
from dfer_cli.render import (
    PALETTE,
    annotate_video,
    plot_format,
    plot_suffixes,
    plot_timeline,
    track_timelines,
    video_container,
)
from dfer_cli.results import ClipPrediction, TrackSummary, VideoResult

ROOT = Path(__file__).resolve().parents[1]


def probs(top: str, p: float = 0.8) -> dict[str, float]:
    rest = (1.0 - p) / (len(CLASSES) - 1)
    return {c: (p if c == top else rest) for c in CLASSES}


def result_for(video, clips, duration=2.0):
    tracks = sorted({c.track for c in clips})
    summaries = [TrackSummary(k, 0.0, duration, sum(c.track == k for c in clips), "happy", probs("happy"))
                 for k in tracks]
    return VideoResult(str(video), duration, "tiny", list(CLASSES), clips, summaries)


def decode(path):
    import av

    with av.open(str(path)) as c:
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return [t for t, _ in frames], [a for _, a in frames]


def test_timeline_interpolates_box_and_picks_nearest_clip():
    clips = [
        ClipPrediction("v", 0, 0.0, 1.0, [0, 0, 10, 10], probs("happy"), "happy", 0.8),
        ClipPrediction("v", 0, 0.5, 1.5, [10, 20, 30, 40], probs("sad"), "sad", 0.8),
        ClipPrediction("v", 1, 0.0, 1.5, [50, 50, 60, 60], None, None, None, "face missing in 9/16 frames"),
    ]
    (tl,) = track_timelines(result_for("v", clips))  # track 1 has nothing classified
    box, clip = tl.at(0.75)                            # halfway between the centres 0.5 and 1.0
    assert np.allclose(box, [5, 10, 20, 25]) and clip.label in ("happy", "sad")
    assert tl.at(0.6)[1].label == "happy" and tl.at(0.9)[1].label == "sad"
    assert np.allclose(tl.at(0.1)[0], [0, 0, 10, 10])  # before the first centre: held
    assert tl.at(1.6) is None


def test_annotate_keeps_frames_and_draws_the_box(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=20, fps=10, size=(96, 64), background=(40, 40, 40))
    clip = ClipPrediction(str(src), 0, 0.0, 1.0, [20, 16, 70, 56], probs("happy"), "happy", 0.8)
    out = annotate_video(src, tmp_path / "out.mp4", result_for(src, [clip]))
    t_in, _ = decode(src)
    t_out, frames = decode(out)
    assert len(t_out) == len(t_in) == 20
    assert np.allclose(t_out, t_in, atol=1e-3)
    assert frames[0].shape == (64, 96, 3)
    assert PALETTE[0] == (255, 196, 0)
    edge = frames[5][56, 30:60].astype(float).mean(axis=0)     # bottom edge of the box, t = 0.5 s
    # A 1-pixel yellow line, blurred by 4:2:0 chroma: bright red and green, less blue.
    assert edge[0] > 170 and edge[1] > 150 and edge[2] < edge[1] - 50, edge
    later = frames[15][56, 30:60].astype(float).mean(axis=0)   # t = 1.5 s: no clip covers it
    assert np.abs(later - 40).max() < 12, later
    assert not list(tmp_path.glob(".*part*"))                  # no temporary file left behind


def test_annotate_odd_size_and_rotation(tmp_path):
    src = make_video(tmp_path / "odd.mp4", frames=6, fps=10, size=(65, 49), rotation=-90)
    out = annotate_video(src, tmp_path / "odd_out.mkv", result_for(src, []))
    _, frames = decode(out)
    # Shown upright (rotated to 49x65 display size), odd side trimmed for yuv420p.
    assert len(frames) == 6 and frames[0].shape == (64, 48, 3)


def test_annotate_unreadable_input_leaves_no_output(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="bad.mp4"):
        annotate_video(bad, tmp_path / "out.mp4", result_for(bad, []))
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".*"))  # no temp file left


def test_plot_timeline_png_one_panel_per_track(tmp_path):
    from PIL import Image

    clips = [ClipPrediction("v.mp4", k, s, s + 1.0, [0, 0, 5, 5], probs(top), top, 0.8)
             for k in (0, 1) for s, top in ((0.0, "happy"), (0.5, "sad"), (1.0, "fear"))]
    one = plot_timeline(result_for("v.mp4", clips[:3]), tmp_path / "one.png")
    two = plot_timeline(result_for("v.mp4", clips), tmp_path / "sub" / "two.png")
    none = plot_timeline(result_for("v.mp4", []), tmp_path / "none.png")
    sizes = [Image.open(p).size for p in (one, two, none)]
    assert all(w > 300 and h > 150 for w, h in sizes)
    assert sizes[1][1] > sizes[0][1]  # a second track adds a panel
    img = np.asarray(Image.open(one).convert("RGB"))
    assert (img.std(axis=(0, 1)) > 5).all()  # something was drawn, not a blank canvas


def test_timeline_has_a_panel_for_every_track_saying_why_one_has_no_label():
    from dfer_cli.render import timeline_figure

    clips = [ClipPrediction("v.mp4", 0, s, s + 1.0, [0, 0, 5, 5], probs("happy"), "happy", 0.8) for s in (0.0, 0.5)]
    clips.append(ClipPrediction("v.mp4", 3, 0.5, 1.5, [9, 9, 19, 19], None, None, None,
                                "face missing in 15/16 frames"))
    res = VideoResult("v.mp4", 2.0, "tiny", list(CLASSES), clips,
                      [TrackSummary(0, 0.0, 1.5, 2, "happy", probs("happy")), TrackSummary(3, 0.5, 1.5, 0, None, None)])
    fig = timeline_figure(res)
    axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in axes] == ["track 0 (0.00–1.50 s): mostly happy (0.80)",
                                                          "track 3 (0.50–1.50 s)"]
    assert len(axes[0].lines) == len(CLASSES) and not axes[1].lines
    assert [t.get_text() for t in axes[1].texts] == ["not classified: face missing in 15/16 frames"]
    empty = timeline_figure(VideoResult("v.mp4", 2.0, "tiny", list(CLASSES), [], []))
    assert [t.get_text() for t in empty.axes[0].texts] == ["no face found"]


def test_plot_timeline_writes_the_format_its_suffix_names(tmp_path):
    from PIL import Image

    clips = [ClipPrediction("v.mp4", 0, s, s + 1.0, [0, 0, 5, 5], probs("happy"), "happy", 0.8) for s in (0.0, 1.0)]
    res = result_for("v.mp4", clips)
    assert Image.open(plot_timeline(res, tmp_path / "t.jpg")).format == "JPEG"  # was PNG bytes
    assert Image.open(plot_timeline(res, tmp_path / "t.JPEG")).format == "JPEG"
    assert (plot_timeline(res, tmp_path / "t.pdf")).read_bytes().startswith(b"%PDF")
    assert b"<svg" in (plot_timeline(res, tmp_path / "t.svg")).read_bytes()[:1000]
    assert {".png", ".jpg", ".pdf", ".svg"} <= set(plot_suffixes())
    for bad in ("t.xyz", "t"):
        with pytest.raises(ValueError, match=r"use one of .*\.png") as e:
            plot_timeline(res, tmp_path / bad)
        assert "\n" not in str(e.value)
        assert not (tmp_path / bad).exists()
    assert plot_format("a/b.Svg") == "svg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.JPEG", "t.jpg", "t.pdf", "t.svg"]  # no temp files


def test_annotate_refuses_an_unknown_container_before_reading_the_video(tmp_path):
    missing = tmp_path / "never-read.mp4"  # reading it would fail differently
    with pytest.raises(ValueError, match=r"^unknown video container; use \.mp4, \.mkv, \.mov, \.m4v or \.avi$"):
        annotate_video(missing, tmp_path / "out.xyz", result_for(missing, []))
    assert list(tmp_path.iterdir()) == []
    assert video_container("x.MKV") == "matroska" and video_container("x.mov") == "mov"


@pytest.mark.parametrize("suffix", [".mkv", ".mov", ".avi"])
def test_annotate_other_containers(tmp_path, suffix):
    src = make_video(tmp_path / "in.mp4", frames=4, fps=8, size=(64, 48))
    out = annotate_video(src, tmp_path / f"out{suffix}", result_for(src, []))
    times, frames = decode(out)
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)


def test_annotate_draws_a_track_only_where_its_face_was_seen(tmp_path):
    """A classified clip covers 0-2 s, but the face was seen only 0.0-0.5 s and 1.5-1.9 s
    (between: 1 s without it, e.g. black frames): no box there, none after 1.9 s."""
    src = make_video(tmp_path / "in.mp4", frames=22, fps=10, size=(96, 64), background=(40, 40, 40))
    clip = ClipPrediction(str(src), 0, 0.0, 2.0, [20, 16, 70, 56], probs("happy"), "happy", 0.8)
    res = result_for(src, [clip])
    res.faces = {0: [(k / 10, [20, 16, 70, 56]) for k in (*range(0, 6), *range(15, 20))]}
    tl = track_timelines(res)[0]
    assert tl.at(0.25) is not None and tl.at(1.0) is None and tl.at(1.95) is None
    _, frames = decode(annotate_video(src, tmp_path / "out.mp4", res))
    drawn = [bool(frame[56, 30:60].astype(float).mean(axis=0)[0] > 170) for frame in frames]
    assert drawn == [k <= 5 or 15 <= k <= 19 for k in range(22)], drawn


def test_annotate_box_follows_the_detections_between_sampled_frames(tmp_path):
    clip = ClipPrediction("v", 0, 0.0, 1.0, [0, 0, 10, 10], probs("happy"), "happy", 0.8)
    res = result_for("v", [clip])
    res.faces = {0: [(0.0, [0, 0, 10, 10]), (0.2, [10, 0, 20, 10]), (0.3, [10, 0, 20, 10])]}
    (tl,) = track_timelines(res)
    assert np.allclose(tl.at(0.1)[0], [5, 0, 15, 10]) and np.allclose(tl.at(0.3)[0], [10, 0, 20, 10])
    assert tl.at(0.31) is None  # after the last sighting


def make_av(path, *, audio_codec="aac", container=None, seconds=2.0, fps=10, tone=440.0, rate=44100):
    """A small video (grey frames, H.264) with a sine tone audio track, written with PyAV."""
    import av

    with av.open(str(path), "w", format=container) as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        a = out.add_stream(audio_codec, rate=rate)
        a.layout = "mono"
        n = int(seconds * fps)
        for i in range(n):
            img = np.full((64, 96, 3), 40 + 5 * i, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        t = np.arange(int(seconds * rate)) / rate
        pcm = (0.5 * np.sin(2 * np.pi * tone * t) * 32767).astype(np.int16)
        step = 1024
        for k in range(0, len(pcm), step):
            frame = av.AudioFrame.from_ndarray(pcm[None, k:k + step], format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = k
            for p in a.encode(frame):
                out.mux(p)
        for s in (v, a):
            for p in s.encode():
                out.mux(p)
    return path


def audio_of(path):
    """(codec name, mono float samples, sample rate, packet payloads) of the first audio stream."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        s = c.streams.audio[0]
        payloads = [bytes(p) for p in c.demux(s) if p.size]
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        chunks = [f.to_ndarray().astype(float).reshape(f.to_ndarray().shape[0], -1).mean(axis=0)
                  for f in c.decode(s)]
        return s.codec_context.name, np.concatenate(chunks), s.codec_context.sample_rate, payloads


def dominant_hz(samples, rate):
    spec = np.abs(np.fft.rfft(samples - samples.mean()))
    return np.fft.rfftfreq(len(samples), 1 / rate)[int(spec.argmax())]


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".avi", ".mkv"])
def test_annotate_keeps_the_audio_as_it_is(tmp_path, suffix):
    src = make_av(tmp_path / "talk.mp4")
    out = annotate_video(src, tmp_path / f"out{suffix}", result_for(src, []))
    codec, samples, rate, payloads = audio_of(out)
    codec0, samples0, rate0, payloads0 = audio_of(src)
    assert codec == codec0 == "aac" and rate == rate0
    # copied packet for packet, not re-encoded; AAC's priming packet (before the video's
    # start) is kept where the container can hold a negative time, else left out
    dropped = 0 if suffix in (".mp4", ".mov") else 1
    assert len(payloads0) > 50 and payloads == payloads0[dropped:]
    assert abs(len(samples) - len(samples0)) <= 2048 and dominant_hz(samples, rate) == pytest.approx(440, abs=2)
    t_in, _ = decode(src)
    t_out, frames = decode(out)
    assert len(frames) == 20
    if suffix != ".avi":  # AVI has no frame times of its own (PyAV guesses them, with or without audio)
        assert np.allclose(t_out, t_in, atol=1e-3)  # the video's frames keep their times


def test_annotate_copies_the_mp3_of_the_example_clip_into_mp4(tmp_path):
    import av

    src = ROOT / "examples" / "single_face_smile.mp4"
    out = annotate_video(src, tmp_path / "out.mp4", result_for(src, []))

    def packets(path):
        with av.open(str(path)) as c:
            s = c.streams.audio[0]
            return s.codec_context.codec.canonical_name, float(s.duration * s.time_base), \
                [bytes(p) for p in c.demux(s) if p.size]

    codec0, duration0, payloads0 = packets(src)
    codec, duration, payloads = packets(out)
    assert codec0 == codec == "mp3" and payloads == payloads0     # copied, not re-encoded to AAC
    assert duration == pytest.approx(duration0, abs=1e-3)


def test_annotate_reencodes_audio_the_container_cannot_take(tmp_path):
    src = make_av(tmp_path / "talk.mkv", audio_codec="pcm_s16le", container="matroska")
    out = annotate_video(src, tmp_path / "out.mp4", result_for(src, []))
    codec, samples, rate, _ = audio_of(out)
    assert codec == "aac" and rate == 44100
    assert abs(len(samples) / rate - 2.0) < 0.1 and dominant_hz(samples, rate) == pytest.approx(440, abs=2)
    assert len(decode(out)[1]) == 20


def test_annotate_without_audio(tmp_path):
    src = make_av(tmp_path / "talk.mp4")
    assert audio_of(annotate_video(src, tmp_path / "mute.mp4", result_for(src, []), audio=False)) is None
    silent = make_video(tmp_path / "silent.mp4", frames=4, fps=8, size=(64, 48))
    assert audio_of(annotate_video(silent, tmp_path / "out.mp4", result_for(silent, []))) is None

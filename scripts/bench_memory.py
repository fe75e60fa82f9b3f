"""Peak memory of `dfer predict` (or `dfer prepare`) on a short and a long video: it must not
grow with length.

    OMP_NUM_THREADS=1 nice -n 15 python scripts/bench_memory.py            # 10 s and 10 min
    python scripts/bench_memory.py --short 10 --long 120 --keep /tmp/bench  # other lengths, keep the videos
    python scripts/bench_memory.py --prepare                                # dfer prepare instead

Builds two 640x360 H.264 videos with PyAV from a real face clip (default
examples/talking_head_webcam.mp4, letterboxed and looped), runs `python -m dfer_cli predict
VIDEO --format jsonl` on each in a fresh subprocess (default model and options, records to a
file as they stream) and prints each one's peak resident memory (the child's ru_maxrss, from
os.wait4) and the ratio long / short. The target is a ratio <= 1.2: the predict pipeline
holds about one window of frames and crops, whatever the video's length. With --prepare each
video is put alone in a folder and `python -m dfer_cli prepare FOLDER OUT` runs on it (the
same face stages; crops go to disk as they are made).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 640, 360


def letterbox(rgb, width: int = WIDTH, height: int = HEIGHT):
    """`rgb` (h, w, 3) uint8 scaled to fit a (height, width, 3) black canvas, centred."""
    import cv2
    import numpy as np

    h, w = rgb.shape[:2]
    s = min(width / w, height / h)
    nw, nh = int(round(w * s)), int(round(h * s))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    canvas[y:y + nh, x:x + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    return canvas


def looped_frames(source: Path):
    """The source clip's frames, letterboxed to 640x360, over and over (decoded again on
    each pass, so nothing accumulates)."""
    from dfer_cli.video.decode import iter_frames

    while True:
        for frame in iter_frames(source):
            yield letterbox(frame.rgb)


def build_video(path: Path, seconds: float, fps: int, source: Path) -> Path:
    """Write a `seconds`-long 640x360 H.264 video at `fps` made of the looped source clip."""
    import av

    n = int(round(seconds * fps))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        frames = looped_frames(source)
        for _ in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(next(frames), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def loop_video(clip: Path, path: Path, seconds: float) -> Path:
    """Write `clip` over and over, `seconds` long, without re-encoding (its packets copied
    with shifted timestamps; the clip starts on a key frame and has no B-frames)."""
    import av

    with av.open(str(path), "w") as out:
        ost, clip_len, rep = None, 0, 0
        while True:
            with av.open(str(clip)) as inp:
                ist = inp.streams.video[0]
                ost = ost or out.add_stream_from_template(ist)
                offset, tb = rep * clip_len, ist.time_base
                for packet in inp.demux(ist):
                    if packet.dts is None:
                        continue   # the demuxer's final empty packet
                    if float((packet.pts + offset) * tb) >= seconds:
                        return path
                    clip_len = max(clip_len, packet.pts + (packet.duration or 0)) if rep == 0 else clip_len
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    packet.stream = ost
                    out.mux(packet)
            rep += 1


def measured(cmd: list[str], threads: int, stdout) -> tuple[float, float]:
    """Run `cmd` (a dfer command) in a fresh process with `threads` torch threads, stdout to
    `stdout`; (its peak RSS in MiB, from os.wait4, and its wall time in seconds). Exits with
    its stderr when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"bench_memory: {' '.join(cmd[2:])} exited {code}:\n{err}")
    return usage.ru_maxrss / 1024.0, wall


def run_predict(video: Path, threads: int, records: Path) -> dict:
    """Run `dfer predict` on `video`; its peak RSS (MiB), wall time and clip records."""
    with open(records, "w") as out:
        peak, wall = measured([sys.executable, "-m", "dfer_cli", "predict", str(video), "--format", "jsonl",
                               "--threads", str(threads)], threads, out)
    lines = records.read_text().splitlines()
    return {"peak_mib": peak, "wall_s": wall, "clips": sum('"type": "clip"' in line for line in lines)}


def run_prepare(video: Path, threads: int, out: Path) -> dict:
    """Run `dfer prepare` on a folder holding only `video`; its peak RSS (MiB), wall time and
    the number of aligned crops written."""
    import shutil

    src = out.with_name(out.name + "_src")
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    src.mkdir(parents=True)
    os.symlink(video.resolve(), src / video.name)
    peak, wall = measured([sys.executable, "-m", "dfer_cli", "prepare", str(src), str(out)], threads,
                          subprocess.DEVNULL)
    crops = sum(1 for _ in (out / video.stem).glob("*.jpg")) if (out / video.stem).is_dir() else 0
    return {"peak_mib": peak, "wall_s": wall, "clips": crops}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", type=float, default=10.0, help="seconds of the short video (default 10)")
    ap.add_argument("--long", type=float, default=600.0, help="seconds of the long video (default 600)")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--source", type=Path, default=ROOT / "examples" / "talking_head_webcam.mp4",
                    help="a clip with a face, looped to fill the videos")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the predict runs (default 1)")
    ap.add_argument("--keep", type=Path, default=None, help="build the videos and records here and keep them")
    ap.add_argument("--prepare", action="store_true", help="measure `dfer prepare` instead of `dfer predict`")
    args = ap.parse_args(argv)

    unit = "crops" if args.prepare else "clips"
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for label, seconds in (("short", args.short), ("long", args.long)):
            video = work / f"bench_{int(seconds)}s.mp4"
            if not video.exists():
                t0 = time.perf_counter()
                if rows:   # the long video: the short one looped (encoding minutes of video is slow)
                    loop_video(work / f"bench_{int(args.short)}s.mp4", video, seconds)
                else:
                    build_video(video, seconds, args.fps, args.source)
                print(f"built {video.name} ({seconds:g} s) in {time.perf_counter() - t0:.0f} s", flush=True)
            if args.prepare:
                row = run_prepare(video, args.threads, work / f"prepared_{int(seconds)}s")
            else:
                row = run_predict(video, args.threads, work / f"bench_{int(seconds)}s.jsonl")
            rows.append((label, seconds, row))
            print(f"{label}: {seconds:g} s video, {row['clips']} {unit}, {row['wall_s']:.0f} s wall, "
                  f"peak RSS {row['peak_mib']:.1f} MiB", flush=True)
    print(f"\n{'video':>8} {'seconds':>8} {unit:>6} {'wall s':>8} {'peak RSS MiB':>13}")
    for label, seconds, row in rows:
        print(f"{label:>8} {seconds:8g} {row['clips']:6d} {row['wall_s']:8.0f} {row['peak_mib']:13.1f}")
    ratio = rows[1][2]["peak_mib"] / rows[0][2]["peak_mib"]
    print(f"ratio long / short: {ratio:.3f} (target <= 1.2)")
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Full-scan MTCNN vs key-frame detection (dfer_cli.faces.keyframe) on the same frames.

    OMP_NUM_THREADS=2 python scripts/bench_detect.py                      # default clips
    python scripts/bench_detect.py VIDEO ... --threads 2 --repeat 3
    python scripts/bench_detect.py --make-hd /tmp/tos_720p.mp4            # a 1280x720 test clip
    python scripts/bench_detect.py VIDEO --predict                       # also whole `dfer predict`

For each video the frames predict's detector sees are decoded once (the window grid of
`--frames` slots per `--window` seconds, every `--detect-every`-th distinct frame) and both
detectors run on them in batches of `--detect-batch`, `--repeat` times, alternating; the
median per method is printed as ms per frame (wall and CPU time of this process), with the
speed-up. Boxes are compared per frame: for every face the full scan finds, the best IoU of a
key-frame box (distribution: min, 5th percentile, median, over all frames and over refined
frames only, since key frames are full scans); and the frames where one finds a face and the
other not.

--predict also times the whole `dfer predict VIDEO` process (start-up included) with
`--detector full` and `--detector keyframe` (with a non-default --key-interval or
--no-scan-when-empty, which the CLI does not offer, the key-frame run swaps predict's detector
factory in a wrapper process) and prints its real-time factor.
The machine is printed first; another process busy on the cores distorts every figure
(ratios measured in one process, alternating, are the most robust).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "media"
DEFAULT_VIDEOS = [ROOT / "examples" / "talking_head_webcam.mp4", SHARED / "tears_of_steel_0500-0510.mp4"]

# The wrapper that runs `dfer predict` with key-frame settings the CLI does not offer: predict's
# detector factory is replaced by one giving a reset KeyframeDetector per video.
_WRAPPER = """
import sys
from dfer_cli.faces import keyframe as keyframe_detect
from dfer_cli import predict
_cache = {}
def _get(detect_size=None, min_face=None, min_score=None, device=None, **_):
    key = (detect_size, min_face, min_score, str(device))
    if key not in _cache:
        _cache[key] = keyframe_detect.keyframe_detector(detect_size=detect_size, min_face=min_face,
            min_score=min_score, device=device, key_interval=float(sys.argv.pop(1)),
            scan_when_empty=sys.argv.pop(1) == '1')
    _cache[key].reset()
    return _cache[key]
predict.get_detector = _get
from dfer_cli.cli.main import main
sys.argv[0] = 'dfer'
main()
"""


def machine() -> str:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{platform.machine()} {model}, nproc {os.cpu_count()}, load average {load}"


def detect_frames(path, window: float, num_frames: int, detect_every: int):
    """(N,) RGB frames (H, W, 3) uint8 and their times: the distinct grid frames predict
    would detect (every detect_every-th)."""
    from dfer_cli.video import decode as video
    from dfer_cli.video.sampling import WindowPlan, sample_on_grid

    info = video.probe(path)
    duration = info.duration if info.duration > 0 else video.scan_duration(path)
    plan = WindowPlan(duration, window, 1.0, num_frames)
    frames, times, last, n = [], [], None, 0
    for _, f in sample_on_grid(video.iter_frames(path), plan.grid_times()):
        if f is last:
            continue
        last = f
        if n % detect_every == 0:
            frames.append(f.rgb)
            times.append(f.time)
        n += 1
    return frames, times, duration, info


def run(detector, frames, batch: int):
    """Detections per frame, wall seconds, CPU seconds."""
    w0, c0 = time.perf_counter(), time.process_time()
    out, kinds = [], []
    for i in range(0, len(frames), batch):
        out += detector.detect(frames[i:i + batch])
        kinds += getattr(detector, "last_kinds", [])
    return out, kinds, time.perf_counter() - w0, time.process_time() - c0


def compare(full, key):
    """Per full-scan face, the best IoU of a key-frame box; counts of one-sided frames."""
    from dfer_cli.faces.track import iou

    ious, only_full, only_key = [], 0, 0
    for a, b in zip(full, key):
        if a and not b:
            only_full += 1
        if b and not a:
            only_key += 1
        if a and b:
            ious += [max(iou(d.box, e.box) for e in b) for d in a]
    return ious, only_full, only_key


def jitter_floor(full, frames, batch: int, shift=(3, 2)):
    """MTCNN's own repeatability: IoUs of the full scan of each frame against the full scan of
    the same frame moved by `shift` (dx, dy) pixels (edges replicated), shift compensated."""
    import numpy as np

    from dfer_cli.faces.track import iou

    dx, dy = shift
    moved = [np.pad(f, ((dy, 0), (dx, 0), (0, 0)), mode="edge")[:f.shape[0], :f.shape[1]] for f in frames]
    a, b = [], []
    for i in range(0, len(frames), batch):
        a += full.detect(frames[i:i + batch])
        b += full.detect(moved[i:i + batch])
    off = np.array([dx, dy, dx, dy], dtype=float)
    return [max(iou(d.box + off, e.box) for e in eb) for da, eb in zip(a, b) if da and eb for d in da]


def dist(xs) -> str:
    import numpy as np

    if not xs:
        return "n/a"
    x = np.asarray(xs)
    return f"min {x.min():.3f}  p5 {np.percentile(x, 5):.3f}  median {np.median(x):.3f}  (n={len(x)})"


def predict_rtf(path, which: str, threads: int, key_interval: float, scan_when_empty: bool,
                duration: float) -> tuple[float, float]:
    """Wall seconds of the whole `dfer predict` process and its real-time factor."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    args = ["predict", str(path), "--threads", str(threads), "--quiet"]
    from dfer_cli.faces.keyframe import KEY_INTERVAL

    if which == "full":
        cmd = [sys.executable, "-m", "dfer_cli", *args, "--detector", "full"]
    elif key_interval == KEY_INTERVAL and scan_when_empty:
        cmd = [sys.executable, "-m", "dfer_cli", *args, "--detector", "keyframe"]
    else:
        cmd = [sys.executable, "-c", _WRAPPER, str(key_interval), "1" if scan_when_empty else "0", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, duration / wall


def make_hd(src: Path, dst: Path, size=(1280, 720)) -> Path:
    """Upscale `src` to size (w, h) with H.264, keeping its frame times: a 720p test clip."""
    import av
    import cv2

    from dfer_cli.video import decode as video

    info = video.probe(src)
    with av.open(str(dst), "w") as out:
        st = out.add_stream("libx264", rate=round(info.fps) or 24)
        st.width, st.height, st.pix_fmt = size[0], size[1], "yuv420p"
        st.options = {"crf": "20", "preset": "veryfast"}
        for f in video.iter_frames(src):
            big = cv2.resize(f.rgb, size, interpolation=cv2.INTER_CUBIC)
            for pkt in st.encode(av.VideoFrame.from_ndarray(big, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--frames", type=int, default=16, help="grid slots per window (model's num_frames)")
    ap.add_argument("--detect-every", type=int, default=2)
    ap.add_argument("--detect-batch", type=int, default=8)
    ap.add_argument("--key-interval", type=float, default=1.0, help="seconds between scheduled full scans")
    ap.add_argument("--scan-when-empty", action=argparse.BooleanOptionalAction, default=True,
                    help="scan frames that follow a frame without faces (the default, as predict)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--floor", action="store_true", help="also measure MTCNN's own box repeatability "
                    "(full scan vs full scan of the frames moved by 3, 2 px)")
    ap.add_argument("--predict", action="store_true", help="also time the whole dfer predict process")
    ap.add_argument("--predict-only", action="store_true", help="only the whole-process timing")
    ap.add_argument("--make-hd", type=Path, metavar="OUT", help="write a 1280x720 upscale of the "
                    "tears_of_steel clip to OUT and exit")
    args = ap.parse_args()

    if args.make_hd:
        print(make_hd(SHARED / "tears_of_steel_0500-0510.mp4", args.make_hd))
        return

    import torch

    from dfer_cli.faces.detect import FaceDetector
    from dfer_cli.faces.keyframe import keyframe_detector

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torch threads {args.threads}; "
          f"grid {args.frames}/{args.window:g} s, detect every {args.detect_every}, batch {args.detect_batch}, "
          f"key interval {args.key_interval:g} s, scan_when_empty {args.scan_when_empty}\n")
    full = FaceDetector()
    key = keyframe_detector(window=args.window, num_frames=args.frames, detect_every=args.detect_every,
                            key_interval=args.key_interval, scan_when_empty=args.scan_when_empty)
    for path in args.videos or DEFAULT_VIDEOS:
        frames, times, duration, info = detect_frames(path, args.window, args.frames, args.detect_every)
        print(f"== {path.name}: {info.width}x{info.height}, {duration:.1f} s, {len(frames)} detected frames")
        if not args.predict_only:
            res = {"full": [], "key": []}
            dets = {}
            for r in range(args.repeat):
                for name in (("full", "key") if r % 2 == 0 else ("key", "full")):
                    det = full if name == "full" else key
                    if name == "key":
                        key.reset()
                        key.stats.clear()
                    out, kinds, wall, cpu = run(det, frames, args.detect_batch)
                    res[name].append((wall, cpu))
                    dets[name] = out
                    if name == "key":
                        key_kinds = kinds
            fw = statistics.median(w for w, _ in res["full"]) / len(frames) * 1e3
            fc = statistics.median(c for _, c in res["full"]) / len(frames) * 1e3
            kw = statistics.median(w for w, _ in res["key"]) / len(frames) * 1e3
            kc = statistics.median(c for _, c in res["key"]) / len(frames) * 1e3
            print(f"  full scan : {fw:7.1f} ms/frame wall, {fc:7.1f} ms/frame CPU")
            print(f"  key-frame : {kw:7.1f} ms/frame wall, {kc:7.1f} ms/frame CPU   "
                  f"speed-up x{fw / kw:.2f} wall, x{fc / kc:.2f} CPU")
            st = key.stats
            print(f"  key-frame scans: {key.scans}/{st['frames']} frames (key {st['key']}, cut {st['cut']}, "
                  f"lost {st['lost']}, empty {st['empty']}), refined {st['refined']}")
            ious, only_full, only_key = compare(dets["full"], dets["key"])
            # frames the key-frame detector did not scan (refined, or nothing to follow)
            between = [i for i, k in enumerate(key_kinds) if k in ("refined", "none")]
            ref_ious, _, _ = compare([dets["full"][i] for i in between],
                                                  [dets["key"][i] for i in between])
            n_full = sum(len(d) for d in dets["full"])
            n_key = sum(len(d) for d in dets["key"])
            print(f"  IoU vs full (all frames, per full-scan face): {dist(ious)}")
            print(f"  IoU vs full (refined frames only):             {dist(ref_ious)}")
            print(f"  faces: full {n_full}, key-frame {n_key}; frames with a face in full only: {only_full}, "
                  f"in key-frame only: {only_key}")
            if args.floor:
                print(f"  IoU full vs full moved 3,2 px (MTCNN's floor):  {dist(jitter_floor(full, frames, args.detect_batch))}")
        if args.predict or args.predict_only:
            for which in ("full", "keyframe"):
                wall, rtf = predict_rtf(path, which, args.threads, args.key_interval,
                                        args.scan_when_empty, duration)
                print(f"  dfer predict --detector {which:8s}: {wall:6.1f} s wall, x{rtf:.2f} real time "
                      f"(whole process)")
        print()


if __name__ == "__main__":
    main()

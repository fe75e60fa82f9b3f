"""Time the predict path per stage, per second of video: decode-only, detection, alignment
and model, plus the whole `predict_video` call and its real-time factor.

    OMP_NUM_THREADS=2 python benchmarks/pipeline.py                 # clips in ../shared/media or examples/
    python benchmarks/pipeline.py video.mp4 --threads 1 --model logo_former_dfew

Model: `--model NAME_OR_PATH` (a checkpoint, via dfer_cli.load_model); by default the bundled
default checkpoint when present, else a randomly initialised `logo_former` at 112 px
(labelled "random init" in the table: same cost, meaningless predictions).
Run it on an otherwise idle machine: other processes on the cores distort every figure.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_videos() -> list[Path]:
    for d in (ROOT.parent / "shared" / "media", ROOT / "examples"):
        vids = sorted(p for p in d.glob("*") if p.suffix.lower() in {".mp4", ".mov", ".mkv", ".webm", ".avi"})
        if vids:
            return vids
    return []


def get_model(spec: str | None):
    import torch

    from dfer_cli.checkpoint import load_model
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing
    from dfer_cli.weights import DEFAULT_WEIGHTS, find_weights

    if spec:
        return load_model(spec), spec
    try:
        find_weights(DEFAULT_WEIGHTS)
        return load_model(DEFAULT_WEIGHTS), DEFAULT_WEIGHTS
    except Exception:
        torch.manual_seed(0)
        m = create_model("logo_former", input_size=112, num_frames=16)
        m.preprocessing = Preprocessing(input_size=112, num_frames=16)
        m.classes = list(CLASSES)
        return m.eval(), "logo_former 112 px, random init (no checkpoint found)"


def decode_only(path, plan_times) -> float:
    """Seconds to decode the whole video and convert the grid frames to RGB."""
    from dfer_cli.video import decode as video
    from dfer_cli.video.sampling import sample_on_grid

    t0 = time.perf_counter()
    last = None
    for _, f in sample_on_grid(video.iter_frames(path), plan_times):
        if f is not last:
            f.rgb
            last = f
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*", type=Path)
    ap.add_argument("--model", default=None, help="checkpoint name or path (default: bundled default, else random logo_former 112 px)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--stride", type=float, default=1.0)
    ap.add_argument("--detect-size", type=int, default=640)
    ap.add_argument("--min-face", type=float, default=None)
    ap.add_argument("--detect-every", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--all-faces", action="store_true")
    ap.add_argument("--tta", default="none", choices=("none", "flip"), help="test-time augmentation (predict --tta)")
    ap.add_argument("--detector", default="full", choices=("full", "keyframe"),
                    help="face detection (predict --detector): full pyramid on every detected frame, or key frames")
    args = ap.parse_args()

    import torch

    from dfer_cli import predict
    from dfer_cli.faces import detect as faces
    from dfer_cli.video import decode as video
    from dfer_cli.video.sampling import WindowPlan

    torch.set_num_threads(args.threads)
    model, model_label = get_model(args.model)
    opts = dict(window=args.window, stride=args.stride, batch_size=args.batch_size,
                all_faces=args.all_faces, detect_size=args.detect_size,
                min_face=args.min_face if args.min_face is not None else faces.MIN_FACE,
                detect_every=args.detect_every or predict.DETECT_EVERY, tta=args.tta, detection=args.detector)
    videos = args.videos or default_videos()
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}, threads {args.threads}")
    print(f"model: {model_label}; preprocessing {model.preprocessing.input_size} px x "
          f"{model.preprocessing.num_frames} frames")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    print("times are seconds per second of video (lower is better); x RT = video seconds per wall second\n")
    hdr = f"{'video':34s} {'size':>9s} {'dur s':>6s} {'decode':>7s} {'detect':>7s} {'align':>7s} {'model':>7s} {'total':>7s} {'x RT':>6s} {'clips':>5s}"
    print(hdr)
    print("-" * len(hdr))
    predict.get_detector(args.detect_size, opts["min_face"])  # load MTCNN outside the timings
    for path in videos:
        info = video.probe(path)
        dur = info.duration or video.scan_duration(path)
        plan = WindowPlan(dur, args.window, args.stride, model.preprocessing.num_frames)
        dec = decode_only(path, plan.grid_times())
        tm: dict = {}
        t0 = time.perf_counter()
        res = predict.predict_video(model, path, timings=tm, **opts)
        total = time.perf_counter() - t0
        print(f"{path.name[:34]:34s} {info.width:>4d}x{info.height:<4d} {dur:6.1f} {dec / dur:7.3f} "
              f"{tm['detect'] / dur:7.3f} {tm['align'] / dur:7.3f} {tm['model'] / dur:7.3f} "
              f"{total / dur:7.3f} {dur / total:6.2f} {len(res.clips):5d}")
    print("\ndecode = decode-only pass (all frames decoded, grid frames converted to RGB); detect/align/model"
          " = stage times inside predict_video; total = whole predict_video wall time")


if __name__ == "__main__":
    main()

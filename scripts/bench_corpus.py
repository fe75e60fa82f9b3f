"""Throughput of corpus runs: clips per second and real-time factor, on CPU and, when there
is one, on CUDA.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python scripts/bench_corpus.py [--videos 8] [--seconds 4]
        [--weights NAME|PATH] [--threads 1] [--batch-size 8] [--in-flight 4]

Two measurements, each printed as a Markdown table:

1. the classifier alone: forward passes of random clips of the checkpoint's shape, for a few
   batch sizes (CPU fp32; CUDA fp32, fp16 and bf16 autocast): clips/s. This is what batching
   clips, within a video or across videos, buys.
2. the whole corpus path (`dfer_cli.corpus.run.run_corpus`, decode + detect + align + classify):
   N synthetic face videos of S seconds each; videos one at a time, and on CUDA also
   `--in-flight` videos at once sharing one classifier (`SharedClassifier`, fp16 and bf16
   autocast). Real-time factor = seconds of video / wall seconds; the wall time includes
   loading the model once (printed apart under the first table).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
W, H, FPS = 240, 136, 8


def make_videos(d: Path, n: int, seconds: float) -> float:
    """`n` videos of the credited face of tests/data, shifted a different amount in each
    frame and video; returns their total duration in seconds."""
    import av
    from PIL import Image

    face = np.asarray(Image.open(ROOT / "tests" / "data" / "face_smile.png").convert("RGB").resize((W, H)))
    frames = int(round(seconds * FPS))
    for i in range(n):
        with av.open(str(d / f"v{i:03d}.mp4"), "w") as out:
            s = out.add_stream("libx264", rate=Fraction(FPS))
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            for j in range(frames):
                img = np.ascontiguousarray(np.roll(face, 5 * i + j, axis=1))
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
    return n * frames / FPS


def bench_model(model, device: str, precision: str, batch: int, seconds: float = 3.0) -> float:
    """Clips per second through `model` at batch size `batch` (at least 3 passes and `seconds`)."""
    import contextlib

    import torch

    pre = model.preprocessing
    x = torch.rand(batch, int(pre.num_frames), 3, int(pre.input_size), int(pre.input_size), device=device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    cast = torch.autocast("cuda", dtype=dtype) if device == "cuda" and dtype else contextlib.nullcontext()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode(), cast:
        model(x)  # warm-up
        sync()
        t0, n = time.perf_counter(), 0
        while n < 3 or time.perf_counter() - t0 < seconds:
            model(x)
            n += 1
        sync()
    return n * batch / (time.perf_counter() - t0)


def clip_count(out: Path) -> int:
    n = 0
    for p in out.glob("*.jsonl"):
        if p.name.startswith("manifest"):
            continue
        recs = [json.loads(line) for line in p.read_text().splitlines()]
        n += sum(1 for r in recs if r.get("type") == "clip" and r.get("label") is not None)
    return n


def bench_corpus(videos: Path, work: Path, duration: float, **kw) -> tuple[float, float, int]:
    """(wall seconds, clips/s, clips) of one corpus run over `videos` into a fresh folder."""
    from dfer_cli.corpus.run import run_corpus

    out = Path(tempfile.mkdtemp(dir=work, prefix="out-"))
    t0 = time.perf_counter()
    s = run_corpus([str(videos)], out, **kw)
    wall = time.perf_counter() - t0
    if s.failed:
        raise SystemExit(f"bench: {s.failed} videos failed: {s.failures[:2]}")
    clips = clip_count(out)
    return wall, clips / wall, clips


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each synthetic video")
    ap.add_argument("--weights", default=None, help="checkpoint name or path (default: the bundled default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--in-flight", type=int, default=4, help="videos at once on CUDA")
    a = ap.parse_args()

    import torch

    from dfer_cli.checkpoint import load_model
    from dfer_cli.weights import DEFAULT_WEIGHTS, find_weights

    torch.set_num_threads(a.threads)
    ckpt = find_weights(a.weights or DEFAULT_WEIGHTS)
    cuda = torch.cuda.is_available()
    devices = ["cpu"] + (["cuda"] if cuda else [])
    print(f"checkpoint {ckpt.name}; torch {torch.__version__}, {a.threads} CPU thread(s)"
          + (f", GPU {torch.cuda.get_device_name(0)}" if cuda else ", no GPU"))

    print("\n| classifier | batch | clips/s |\n|---|---:|---:|")
    for device in devices:
        t0 = time.perf_counter()
        model = load_model(str(ckpt), device=device).eval()
        load = time.perf_counter() - t0
        modes = ["fp32"] + (["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else []) if device == "cuda" else [])
        for precision in modes:
            for batch in (1, a.batch_size, 4 * a.batch_size):
                print(f"| {device} {precision} | {batch} | {bench_model(model, device, precision, batch):.1f} |",
                      flush=True)
        print(f"(model load on {device}: {load:.2f} s)")

    work = Path(tempfile.mkdtemp(prefix="dfer-bench-corpus-"))
    try:
        videos = work / "videos"
        videos.mkdir()
        duration = make_videos(videos, a.videos, a.seconds)
        common = dict(weights=str(ckpt), threads=a.threads, batch_size=a.batch_size, window=2.0, stride=1.0)
        runs = [("cpu, one video at a time", dict(device="cpu", videos_in_flight=1))]
        if cuda:
            runs += [("cuda fp16, one video at a time", dict(device="cuda", videos_in_flight=1, precision="fp16")),
                     (f"cuda fp16, {a.in_flight} videos in flight", dict(device="cuda", videos_in_flight=a.in_flight,
                                                                        precision="fp16"))]
            if torch.cuda.is_bf16_supported():
                runs.append((f"cuda bf16, {a.in_flight} videos in flight",
                             dict(device="cuda", videos_in_flight=a.in_flight, precision="bf16")))
        print(f"\ncorpus: {a.videos} videos x {a.seconds:g} s ({W}x{H}, {FPS} fps), window 2 s, stride 1 s, "
              f"--batch-size {a.batch_size}")
        print("| run | wall | clips | clips/s | real-time factor |\n|---|---:|---:|---:|---:|")
        for name, kw in runs:
            wall, rate, clips = bench_corpus(videos, work, duration, **common, **kw)
            print(f"| {name} | {wall:.1f} s | {clips} | {rate:.1f} | {duration / wall:.2f}x |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check, in one run of about ten minutes on one GPU and 16 CPU cores.

    python benchmarks/gpu.py                          # on the GPU machine: every part, figures to $OUT
    python benchmarks/gpu.py --device cpu --tiny      # the same parts on tiny inputs (checks the script)
    python benchmarks/gpu.py --parts agreement corpus --out /tmp/gpu-check

Parts, each run in a process of its own with a time limit, so that one that fails or hangs
is reported and the others still run:

1. tests      the tests marked `gpu` (tests/test_gpu.py, tests/test_corpus.py) under pytest;
2. agreement  `dfer predict --device DEVICE` on the examples against `dfer predict --device
              cpu --precision fp32`: the same clips, the same labels, every probability within
              --tolerance (default 0.02); anything else fails the check;
3. corpus     corpus throughput (video seconds per wall second, model loading included) on
              many hard-linked copies of the examples: one process with `--in-flight` videos
              decoded and detected in threads, their clips classified together on the device
              (`run_corpus(videos_in_flight=...)`), and `--processes` `dfer predict DIR
              --output-dir OUT --shard K/N --device DEVICE` processes side by side;
4. training   the papers' configuration (LOGO-Former, 112 px, 16 frames, batch 32, bf16
              autocast, SGD inside SAM): training steps per second on clips already on the
              device; beside it, the data loader's own rate (`dfer train`'s DFEW dataset with
              the paper recipe's 8x2 sampling and augmentation, `--workers` processes) on
              DFEW-shaped synthetic clips (224x224 JPEG frames in DFEW's layout); and one
              epoch of `dfer train --dataset dfew --recipe paper` on them, end to end. The GPU
              is fed when the loader's rate is at least the step rate.

Figures go to OUT/gpu-check.md (Markdown, to paste into docs) and OUT/gpu-check.json; OUT is
--out, else $OUT, else ./gpu-check. Exit status 0 when every part ran and the agreement
held, 1 otherwise (the reasons are at the end of the Markdown and on stderr), 2 when dfer's
dependencies are not installed (nothing ran).

`--tiny` shrinks every input (one short example, a few copies, a 32 px 4-frame model) so
that the whole run takes well under a minute on 2 CPU cores; its figures say nothing about
speed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PARTS = ("tests", "agreement", "corpus", "training")
# seconds each part may take on the GPU machine (9 minutes in all, each part's process 10 s more
# to report); --tiny: half, + 20 s
LIMITS = {"tests": 100, "agreement": 70, "corpus": 190, "training": 180}
TOLERANCE = 0.02
REQUIRED = ("torch", "numpy", "av", "cv2", "typer", "rich", "safetensors", "facenet_pytorch", "pytest")
# --tiny: a LOGO-Former small enough to train a few steps on 2 CPU cores in seconds
TINY_MODEL = dict(input_size=32, num_frames=4, dim=32, depth=1, heads=2, trunk_width=16)


# --------------------------------------------------------------------------- helpers

def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    return e


def dfer(*args) -> list[str]:
    return [sys.executable, "-m", "dfer_cli", *map(str, args)]


def run_cmd(cmd, timeout: float, **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout, **kw)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}: {r.stderr.strip()[-600:]}")
    return wall, r


def video_seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(c.duration) / 1e6 if c.duration else float(s.duration * s.time_base)


def examples(tiny: bool) -> list[Path]:
    names = ["single_face_smile.mp4"] if tiny else ["single_face_smile.mp4", "talking_head_webcam.mp4"]
    return [EXAMPLES / n for n in names]


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "device": device}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=torch.cuda.get_device_name(torch.device(device)), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


# --------------------------------------------------------------------------- parts

def part_tests(args) -> dict:
    files = ["tests/test_gpu.py", "tests/test_corpus.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rs", *files]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=args.limit)
    wall = time.perf_counter() - t0
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()[-300:]
    counts = {w.rstrip("s") if w.startswith("error") else w: int(n)
              for n, w in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}
    ok = r.returncode in (0, 5) and not counts.get("failed") and not counts.get("error")
    out = {"command": " ".join(cmd[1:]), "summary": tail, "counts": counts, "seconds": round(wall, 1), "ok": ok}
    if not ok:
        out["error"] = f"pytest exited {r.returncode}: {tail}"
    return out


def _records(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("type") == "clip"]


def part_agreement(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="dfer-gpu-agree-"))
    try:
        vids = examples(args.tiny)
        half = str(max(1, (os.cpu_count() or 2) // 2))   # the two runs share the cores
        ref_cmd = dfer("predict", *vids, "-q", "-f", "jsonl", "-o", tmp / "cpu.jsonl", "--device", "cpu",
                       "--precision", "fp32", "--threads", half)
        dev_cmd = dfer("predict", *vids, "-q", "-f", "jsonl", "-o", tmp / "dev.jsonl", "--device", args.device,
                       "--threads", half)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:  # side by side: the reference on the CPU, the candidate on the device
            ref_run, dev_run = pool.submit(run_cmd, ref_cmd, args.limit - 10), pool.submit(run_cmd, dev_cmd, args.limit - 10)
            t_ref, t_dev = ref_run.result()[0], dev_run.result()[0]
        ref, dev = _records(tmp / "cpu.jsonl"), _records(tmp / "dev.jsonl")
        key = lambda c: (c["video"], c["track"], c["start"], c["end"])  # noqa: E731
        same_clips = [key(c) for c in ref] == [key(c) for c in dev]
        labels = sum(a["label"] == b["label"] for a, b in zip(ref, dev))
        diffs = [abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in zip(ref, dev)
                 if a["probabilities"] and b["probabilities"] for k in a["probabilities"]]
        worst = max(diffs) if diffs else 0.0
        ok = same_clips and labels == len(ref) and worst <= args.tolerance and len(ref) > 0
        out = {"videos": [v.name for v in vids], "clips": len(ref), "same_clips": same_clips,
               "labels_equal": labels, "max_abs_dp": round(worst, 4),
               "mean_abs_dp": round(sum(diffs) / len(diffs), 5) if diffs else 0.0,
               "tolerance": args.tolerance, "reference": f"--device cpu --precision fp32 ({t_ref:.1f} s)",
               "candidate": f"--device {args.device} ({t_dev:.1f} s)", "ok": ok}
        if not ok:
            out["error"] = (f"--device {args.device} does not reproduce the CPU: clips equal {same_clips}, labels "
                            f"{labels}/{len(ref)}, largest |dp| {worst:.4f} (tolerance {args.tolerance})")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _corpus_dir(tmp: Path, copies: int, tiny: bool) -> tuple[Path, float, int]:
    """`copies` hard links (copies where links fail) of each example: (folder, video seconds, files)."""
    d = tmp / "videos"
    d.mkdir()
    total, n = 0.0, 0
    for src in examples(tiny):
        secs = video_seconds(src)
        for i in range(copies):
            dst = d / f"{src.stem}_{i:03d}{src.suffix}"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            total += secs
            n += 1
    return d, total, n


def part_corpus(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="dfer-gpu-corpus-"))
    out: dict = {}
    try:
        copies = 3 if args.tiny else args.copies
        folder, seconds, files = _corpus_dir(tmp, copies, args.tiny)
        out.update(videos=files, video_seconds=round(seconds, 1), copies_of=[v.name for v in examples(args.tiny)])
        budget = args.limit / 2

        def in_flight():
            # one process, videos in flight in threads sharing one classifier on the device
            code = ("import sys, time, json\n"
                    "from dfer_cli.corpus.run import run_corpus\n"   # (internal: the corpus runner)
                    "t0 = time.perf_counter()\n"
                    "s = run_corpus([sys.argv[1]], sys.argv[2], device=sys.argv[3], videos_in_flight=int(sys.argv[4]),"
                    " threads=int(sys.argv[5]))\n"
                    "print(json.dumps({'seconds': time.perf_counter() - t0, 'done': s.done, 'failed': s.failed}))\n")
            threads = 1 if args.tiny else max(1, (os.cpu_count() or 2) // 4)
            cmd = [sys.executable, "-c", code, str(folder), str(tmp / "out-threads"), args.device, str(args.in_flight),
                   str(threads)]
            wall, r = run_cmd(cmd, budget)
            inner = json.loads(r.stdout.strip().splitlines()[-1])
            out["in_flight"] = {"how": f"one process, run_corpus(videos_in_flight={args.in_flight}, threads={threads}, "
                                       f"device={args.device})",
                                "wall_s": round(wall, 2), "x_real_time": round(seconds / wall, 1),
                                "done": inner.get("done"), "failed": inner.get("failed"),
                                "run_corpus_s": round(inner["seconds"], 2),
                                "x_real_time_in_process": round(seconds / inner["seconds"], 1)}
            if inner.get("failed"):
                raise RuntimeError(f"{inner['failed']} of the videos failed in run_corpus")

        def processes():
            # N processes, each a shard, each with the CLI's own in-flight default
            n = args.processes
            per = max(1, (os.cpu_count() or 2) // n)
            t0 = time.perf_counter()
            procs = [subprocess.Popen(dfer("predict", folder, "--output-dir", tmp / f"out-shard{k}", "--shard", f"{k}/{n}",
                                           "--device", args.device, "--threads", per, "-q"),
                                      cwd=ROOT, env=dict(env(), OMP_NUM_THREADS=str(per)),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for k in range(1, n + 1)]
            errors = []
            for p in procs:
                try:
                    _, err = p.communicate(timeout=max(1.0, budget - (time.perf_counter() - t0)))
                except subprocess.TimeoutExpired:
                    for q in procs:
                        q.kill()
                    raise RuntimeError(f"{n} shard processes took longer than {budget:.0f} s")
                if p.returncode != 0:
                    errors.append(err.strip()[-300:])
            wall = time.perf_counter() - t0
            out["processes"] = {"how": f"{n} processes: dfer predict DIR --output-dir OUT --shard K/{n} --device "
                                       f"{args.device} --threads {per}",
                                "wall_s": round(wall, 2), "x_real_time": round(seconds / wall, 1)}
            if errors:
                raise RuntimeError("a shard process failed: " + errors[0])

        errors = []
        for name, measure in (("in_flight", in_flight), ("processes", processes)):
            try:  # each on its own: one failing leaves the other's figures
                measure()
            except Exception as e:  # noqa: BLE001
                errors.append(f"{name}: {type(e).__name__}: {str(e)[:400]}")
        return _finished(out, errors)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_clip(job) -> None:
    """One DFEW-shaped clip: `frames` 224x224 JPEG frames of a real face, moving."""
    folder, frames, seed = job
    import cv2
    import numpy as np

    face = cv2.imread(str(ROOT / "tests" / "data" / "face_smile.png"))
    face = cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    dx, dy = rng.integers(-8, 9, size=2)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        x, y = 16 + int(dx * i / frames), 16 + int(dy * i / frames)
        cv2.imwrite(str(Path(folder) / f"{i + 1:05d}.jpg"), face[y:y + 224, x:x + 224], [cv2.IMWRITE_JPEG_QUALITY, 90])


def make_dfew(root: Path, clips: int, frames: int, workers: int) -> tuple[int, int]:
    """A DFEW tree of synthetic clips (Clip/clip_224x224/<id>/, EmoLabel_DataSplit/ fold 1
    with one clip in ten for test): (train clips, test clips)."""
    from multiprocessing import Pool

    jobs = [(root / "Clip" / "clip_224x224" / f"{i:05d}", frames, i) for i in range(1, clips + 1)]
    with Pool(max(1, workers)) as pool:
        pool.map(_write_clip, jobs)
    test = [i for i in range(1, clips + 1) if i % 10 == 0]
    train = [i for i in range(1, clips + 1) if i % 10 != 0]
    for split, ids in (("train", train), ("test", test)):
        d = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
        d.mkdir(parents=True, exist_ok=True)
        (d / "set_1.csv").write_text("video_name,label\n" + "".join(f"{i},{(i - 1) % 7 + 1}\n" for i in ids))
    return len(train), len(test)


def step_rate(args, seconds: float) -> dict:
    """Training steps of the papers' configuration on a fixed batch already on the device."""
    import torch
    from dfer_cli.train.optim import SAM  # (internal: dfer's SAM, as `dfer train --recipe paper`)

    import dfer_cli

    dev = torch.device(args.device)
    opts = TINY_MODEL if args.tiny else {}
    model = dfer_cli.create_model("logo_former", **opts).to(dev).train()
    size, frames, batch = model.config.input_size, model.config.num_frames, (2 if args.tiny else 32)
    model.backbone.to(memory_format=torch.channels_last)   # as dfer train does under bf16
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, frames, 3, size, size, device=dev)
    y = torch.randint(0, 7, (batch,), device=dev)

    def loss_of():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits = model(x)
        return torch.nn.functional.cross_entropy(logits.float(), y)

    def step():
        opt.step(lambda: loss_of().backward(), model=model)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(2):  # warm-up (cuDNN autotuning, allocator)
        step()
    sync()
    t0, n = time.perf_counter(), 0
    while n < 2 or (time.perf_counter() - t0 < seconds and n < 200):
        step()
        n += 1
    sync()
    wall = time.perf_counter() - t0
    out = {"config": f"logo_former {size} px, {frames} frames, dim {model.config.dim}, depth {model.config.depth}, "
                     f"batch {batch}, bf16 autocast, SAM(SGD)",
           "steps": n, "clips_per_s": round(n * batch / wall, 1)}
    if dev.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return out


def loader_rate(root: Path, args, seconds: float) -> dict:
    """Batches from `dfer train`'s DFEW dataset (paper recipe) through a DataLoader."""
    from torch.utils.data import DataLoader

    from dfer_cli.train.config import TrainConfig, recipe_values  # (internal: the training data path)
    from dfer_cli.train.setup import load_datasets

    extra = dict(input_size=32, frames=4, batch_size=2) if args.tiny else {}
    cfg = TrainConfig(**recipe_values("paper", dataset="dfew", data_root=str(root), fold=1, val_split=None,
                                      workers=args.workers, **extra))
    train_ds, _, _ = load_datasets(cfg)
    train_ds.set_epoch(0)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=args.workers,
                        pin_memory=args.device.startswith("cuda"), drop_last=True,
                        persistent_workers=False)
    it = iter(loader)
    next(it)  # workers started, first batch
    t0, clips = time.perf_counter(), 0
    for x, _ in it:
        clips += x.shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    wall = time.perf_counter() - t0
    return {"workers": args.workers, "batch": cfg.batch_size, "clip_shape": list(x.shape[1:]),
            "clips": clips, "clips_per_s": round(clips / wall, 1) if clips else None}


def part_training(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="dfer-gpu-train-"))
    out: dict = {}
    errors = []
    t_start = time.perf_counter()
    try:
        clips, frames = (12, 16) if args.tiny else (args.train_clips, 48)
        n_train, n_test = make_dfew(tmp / "DFEW", clips, frames, args.workers or 1)
        out["data"] = (f"{n_train} train + {n_test} test DFEW-shaped clips of {frames} 224x224 JPEG frames "
                       f"(built in {time.perf_counter() - t_start:.1f} s)")
        share = 1.0 if args.tiny else (args.limit - (time.perf_counter() - t_start)) / 4
        for name, measure in (("steps", lambda: step_rate(args, share)),
                              ("loader", lambda: loader_rate(tmp / "DFEW", args, share))):
            try:  # each measurement on its own: one failing leaves the others' figures
                out[name] = measure()
            except Exception as e:  # noqa: BLE001
                errors.append(f"{name}: {type(e).__name__}: {e}")
        # one epoch of dfer train, end to end (start-up, validation on the test clips and saving included)
        tiny = []
        if args.tiny:
            tiny = ["--input-size", str(TINY_MODEL["input_size"]), "--frames", str(TINY_MODEL["num_frames"]),
                    "--batch-size", "2"]
            for k in ("dim", "depth", "heads", "trunk_width"):
                tiny += ["--model-opt", f"{k}={TINY_MODEL[k]}"]
        cmd = dfer("train", "--dataset", "dfew", "--data-root", tmp / "DFEW", "--fold", "1", "--recipe", "paper",
                   "--precision", "bf16", "--epochs", "1", "--workers", args.workers, "--device", args.device,
                   "--output", tmp / "run", "-q", *tiny)
        try:
            wall, _ = run_cmd(cmd, max(10.0, args.limit - (time.perf_counter() - t_start) - 5))
            out["dfer_train"] = {"command": "dfer train --dataset dfew --recipe paper --precision bf16 --epochs 1 "
                                            f"--workers {args.workers} --device {args.device}"
                                            + (" " + " ".join(tiny) if tiny else ""),
                                 "wall_s": round(wall, 1), "train_clips_per_wall_s": round(n_train / wall, 1)}
        except Exception as e:  # noqa: BLE001
            errors.append(f"dfer train: {type(e).__name__}: {str(e)[:400]}")
        if "steps" in out and "loader" in out:
            out["fed"] = (out["loader"]["clips_per_s"] or 0.0) >= out["steps"]["clips_per_s"]
        return _finished(out, errors)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _finished(out: dict, errors: list[str]) -> dict:
    """A part's figures with its verdict: ok, or the errors of the measurements that failed."""
    out["ok"] = not errors
    if errors:
        out["error"] = "; ".join(errors)
    return out


RUNNERS = {"tests": part_tests, "agreement": part_agreement, "corpus": part_corpus, "training": part_training}


# --------------------------------------------------------------------------- report

def markdown(res: dict) -> str:
    m = res["machine"]
    hw = m.get("gpu") and f"{m['gpu']} ({m.get('gpu_memory_gib')} GiB, CUDA {m.get('cuda')})" or f"device {m['device']}"
    lines = ["# dfer GPU check", "",
             f"- machine: {hw}; CPU {m.get('cpu', '?')}, {m['cpu_count']} cores; python {m['python']}, "
             f"torch {m['torch']}",
             f"- command: `{res['command']}`",
             f"- date: {res['date']}; total {res['seconds']:.0f} s" + (" (--tiny: plumbing only, not speed)"
                                                                      if res["tiny"] else ""), ""]
    parts = res["parts"]

    def failed(name):
        p = parts.get(name)
        return None if p is None else (p.get("error") if not p.get("ok") else None)

    if "tests" in parts:
        p = parts["tests"]
        lines += ["## CUDA tests", ""]
        lines += [f"`{p.get('command', 'pytest -m gpu')}`: {p.get('summary', p.get('error'))}", ""]
    if "agreement" in parts:
        p = parts["agreement"]
        lines += ["## CPU and device agree", ""]
        if "clips" in p:
            lines += ["| videos | clips | same clips | labels equal | max \\|Δp\\| | mean \\|Δp\\| | tolerance |",
                      "|---|---:|---|---:|---:|---:|---:|",
                      f"| {', '.join(p['videos'])} | {p['clips']} | {p['same_clips']} | {p['labels_equal']}/{p['clips']} "
                      f"| {p['max_abs_dp']:.4f} | {p['mean_abs_dp']:.5f} | {p['tolerance']} |", "",
                      f"reference `{p['reference']}`; candidate `{p['candidate']}`", ""]
    if "corpus" in parts:
        p = parts["corpus"]
        lines += ["## Corpus throughput", ""]
        if "videos" in p:
            lines += [f"{p['videos']} videos, {p['video_seconds']} s of video (copies of {', '.join(p['copies_of'])})", "",
                      "| how | wall s (whole process) | × real time | × real time inside run_corpus |", "|---|---:|---:|---:|"]
            for k in ("in_flight", "processes"):
                if k in p:
                    lines.append(f"| {p[k]['how']} | {p[k]['wall_s']} | {p[k]['x_real_time']} "
                                 f"| {p[k].get('x_real_time_in_process', '')} |")
            lines.append("")
    if "training" in parts:
        p = parts["training"]
        lines += ["## Training throughput", ""]
        if "data" in p:
            lines.append(f"data: {p['data']}")
            lines.append("")
        rows = []
        if "steps" in p:
            rows.append(f"| training steps, clips on the device ({p['steps']['config']}) | {p['steps']['clips_per_s']} |")
        if "loader" in p:
            lo = p["loader"]
            rows.append(f"| data loader alone ({lo['workers']} workers, batch {lo['batch']}, clips "
                        f"{'×'.join(map(str, lo['clip_shape']))}) | {lo['clips_per_s']} |")
        if "dfer_train" in p:
            rows.append(f"| `{p['dfer_train']['command']}`, whole command | {p['dfer_train']['train_clips_per_wall_s']} |")
        if rows:
            lines += ["| what | clips / s |", "|---|---:|", *rows, ""]
        if "fed" in p:
            lines += [f"GPU fed by the loader: {'yes' if p['fed'] else 'no (data-bound)'}", ""]
    problems = [f"- {name}: {failed(name)}" for name in parts if failed(name)]
    lines += ["## Result", "", "all parts ran; the device agrees with the CPU" if not problems else "FAILED:"]
    lines += problems
    return "\n".join(lines) + "\n"


def run_part_process(name: str, args, limit: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--device", args.device,
           "--tolerance", str(args.tolerance), "--copies", str(args.copies), "--in-flight", str(args.in_flight),
           "--processes", str(args.processes), "--workers", str(args.workers), "--train-clips", str(args.train_clips),
           "--limit", str(limit)] + (["--tiny"] if args.tiny else [])
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=limit + 10)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"did not finish in {limit + 10:.0f} s"}
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    try:
        res = json.loads(last)
    except json.JSONDecodeError:
        res = {"ok": False, "error": f"exited {r.returncode}: {r.stderr.strip()[-600:] or last}"}
    res["part_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--tiny", action="store_true", help="tiny inputs: checks the script, measures nothing")
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu-check.md/.json (default $OUT, else ./gpu-check)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest |probability difference| (default 0.02)")
    ap.add_argument("--copies", type=int, default=64, help="corpus: copies of each example (default 64)")
    ap.add_argument("--in-flight", type=int, default=None, help="corpus: videos in flight in one process "
                    "(default: the CPU count)")
    ap.add_argument("--processes", type=int, default=None, help="corpus: shard processes (default: CPU count / 4)")
    ap.add_argument("--workers", type=int, default=None, help="training: DataLoader workers (default: CPU count)")
    ap.add_argument("--train-clips", type=int, default=1000, help="training: synthetic DFEW clips (default 1000)")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cpus = os.cpu_count() or 2
    args.in_flight = args.in_flight or (2 if args.tiny else cpus)
    args.processes = args.processes or (2 if args.tiny else max(1, cpus // 4))
    args.workers = args.workers if args.workers is not None else (1 if args.tiny else cpus)

    if args.part:  # one part, in this process: its result as the last line of stdout
        try:
            res = RUNNERS[args.part](args)
        except Exception as e:  # noqa: BLE001 -- reported, and the other parts still run
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(res))
        return 0

    out = args.out or Path(os.environ.get("OUT") or "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:  # nothing can run: say so in the report, not only in a traceback
        msg = (f"missing Python packages: {', '.join(missing)} -- install dfer's dependencies first "
               "(pip install -e '.[test]')")
        (out / "gpu-check.md").write_text(f"# dfer GPU check\n\nFAILED: {msg}\n")
        print(f"gpu check FAILED: {msg}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = {"command": " ".join(["python", "benchmarks/gpu.py", *sys.argv[1:]]), "tiny": args.tiny,
           "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(args.device), "parts": {}}
    for name in args.parts:
        limit = LIMITS[name] / 2 + 20 if args.tiny else LIMITS[name]
        print(f"gpu check: {name} (at most {limit:.0f} s)...", file=sys.stderr, flush=True)
        res["parts"][name] = run_part_process(name, args, limit)
        p = res["parts"][name]
        print(f"gpu check: {name}: {'ok' if p.get('ok') else 'FAILED: ' + str(p.get('error'))} "
              f"({p.get('part_seconds')} s)", file=sys.stderr, flush=True)
    res["seconds"] = time.perf_counter() - t0
    (out / "gpu-check.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (out / "gpu-check.md").write_text(md)
    print(md)
    bad = [n for n, p in res["parts"].items() if not p.get("ok")]
    if bad:
        print(f"gpu check FAILED: {', '.join(bad)} (see {out / 'gpu-check.md'})", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

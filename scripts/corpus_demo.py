"""A synthetic corpus run end to end, with the figures behind docs/corpus.md:

    .venv/bin/python scripts/corpus_demo.py [--videos 200] [--workdir /tmp/dfer-corpus-demo] [--no-ray]

Builds N short videos (1 s, 160x96, 8 fps: the credited face of tests/data shifted a
different amount in each, every 10th one blank, plus one file that is not a video), then runs
`dfer predict DIR --output-dir OUT` with the default (bundled) weights four ways and checks
that each gives the same result files as the first:

1. one clean run (timed: videos per minute);
2. a run killed with SIGKILL half-way, then resumed (checks that no video finished before
   the kill was redone: same result-file mtimes, one manifest line each);
3. two shards, one after the other, into one folder;
4. --ray --workers 2 on a local Ray (skipped without Ray, or with --no-ray).

Prints one line per step, a Markdown table of the wall times (for docs/corpus.md) and a
summary; exit status 1 if any check fails. On a shared machine run it niced:
``OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python scripts/corpus_demo.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
W, H = 160, 96
OPTS = ["--window", "1.0", "--stride", "0.5", "--threads", "1", "--device", "cpu", "--recursive"]


def make_corpus(d: Path, n: int) -> None:
    import av
    from PIL import Image

    face = np.asarray(Image.open(ROOT / "tests" / "data" / "face_smile.png").convert("RGB").resize((W, H)))
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = d / f"part{i % 4}"
        sub.mkdir(exist_ok=True)
        blank = i % 10 == 9
        with av.open(str(sub / f"v{i:04d}.mp4"), "w") as out:
            s = out.add_stream("libx264", rate=Fraction(8))
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            for j in range(8):
                img = np.full_like(face, 40) if blank else np.roll(face, 3 * i + j, axis=1)
                for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
    (d / "part0" / "broken.mp4").write_bytes(b"not a video " * 100)


def manifest(out: Path) -> list[dict]:
    recs = []
    for p in sorted(out.glob("manifest*.jsonl")):
        for line in p.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


def read_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def results(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in out.iterdir()
            if p.suffix == ".jsonl" and not p.name.startswith((".", "manifest"))}


def dfer(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "dfer_cli", "predict", *args], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dfer-corpus-demo"))
    ap.add_argument("--no-ray", action="store_true")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    corpus = a.workdir / "videos"
    t = time.monotonic()
    make_corpus(corpus, a.videos)
    n = a.videos
    print(f"corpus: {n} videos + 1 broken file in {corpus} ({time.monotonic() - t:.0f} s to build)", flush=True)
    ok = True
    table = []  # (step, videos processed, wall seconds)

    def check(name, cond):
        nonlocal ok
        ok &= bool(cond)
        print(f"  {'ok  ' if cond else 'FAIL'} {name}", flush=True)

    # 1. clean run
    ref = a.workdir / "clean"
    t = time.monotonic()
    r = dfer([str(corpus), *OPTS, "--output-dir", str(ref)])
    wall = time.monotonic() - t
    print(f"1. clean run: exit {r.returncode}, {wall:.0f} s wall, {60 * (n + 1) / wall:.1f} inputs/min "
          f"(process start and model load included); {r.stderr.strip().splitlines()[-1]}", flush=True)
    table.append(("clean run", n + 1, wall))
    check("one result file per video", len(results(ref)) == n)
    check("exit 1 for the broken file", r.returncode == 1)
    ref_files = results(ref)

    # 2. killed half-way, resumed
    out = a.workdir / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "dfer_cli", "predict", str(corpus), *OPTS, "--output-dir", str(out)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while p.poll() is None and sum(x["status"] != "failed" for x in manifest(out)) < n // 2:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_wall = time.monotonic() - t
    before = {x["result"]: (out / x["result"]).stat().st_mtime_ns for x in manifest(out) if x["status"] != "failed"}
    partial = results(out)
    t = time.monotonic()
    r = dfer([str(corpus), *OPTS, "--output-dir", str(out)])
    resume_wall = time.monotonic() - t
    table.append((f"killed (SIGKILL) after {len(before)} videos", len(before), killed_wall))
    table.append(("resumed", n + 1 - len(before), resume_wall))
    print(f"2. killed after {len(before)} videos, resumed in {resume_wall:.0f} s: "
          f"{r.stderr.strip().splitlines()[-1]}", flush=True)
    check("files present at the kill were complete", all(ref_files.get(k) == v for k, v in partial.items()))
    check("nothing finished before the kill was redone",
          all((out / k).stat().st_mtime_ns == v for k, v in before.items()))
    check("each video finished once in the manifest", sum(x["status"] != "failed" for x in manifest(out)) == n)
    check("no temporary file left", not [q for q in out.iterdir() if q.name.startswith(".")])
    check("same result files as the clean run", results(out) == ref_files)

    # 3. two shards
    out = a.workdir / "sharded"
    t = time.monotonic()
    rs = []
    for k in (1, 2):
        t1 = time.monotonic()
        rs.append(dfer([str(corpus), *OPTS, "--output-dir", str(out), "--shard", f"{k}/2"]))
        table.append((f"--shard {k}/2 (one after the other)", None, time.monotonic() - t1))
    print(f"3. shards 1/2 and 2/2 in {time.monotonic() - t:.0f} s: "
          + " | ".join(x.stderr.strip().splitlines()[-1] for x in rs), flush=True)
    check("same result files as the clean run", results(out) == ref_files)
    per_shard = [len(read_lines(out / f"manifest.shard-{k}-of-2.jsonl")) for k in (1, 2)]
    table[-2:] = [(name, count, secs) for (name, _, secs), count in zip(table[-2:], per_shard)]
    check("each input in exactly one shard", sum(per_shard) == n + 1
          and not {x["key"] for x in read_lines(out / "manifest.shard-1-of-2.jsonl")}
          & {x["key"] for x in read_lines(out / "manifest.shard-2-of-2.jsonl")})

    # 4. Ray
    try:
        import ray  # noqa: F401
        have_ray = not a.no_ray
    except ImportError:
        have_ray = False
    if have_ray:
        out = a.workdir / "ray"
        t = time.monotonic()
        r = dfer([str(corpus), *OPTS, "--output-dir", str(out), "--ray", "--workers", "2"])
        wall = time.monotonic() - t
        print(f"4. --ray --workers 2: exit {r.returncode}, {wall:.0f} s wall (Ray start included), "
              f"{60 * (n + 1) / wall:.1f} inputs/min; {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}",
              flush=True)
        if r.returncode == 2:  # Ray did not start (e.g. its start-up deadlines on a loaded machine): no figure
            check("a local Ray started", False)
        else:
            table.append(("--ray --workers 2 (local Ray, start included)", n + 1, wall))
            check("same result files as the clean run", results(out) == ref_files)
    else:
        print("4. Ray: skipped (not installed, or --no-ray)")
    print("\n| step | inputs | wall time | inputs/min |\n|---|---:|---:|---:|")
    for name, count, secs in table:
        print(f"| {name} | {count} | {secs:.0f} s | {60 * count / secs:.1f} |")
    print()
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

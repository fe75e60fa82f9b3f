"""One benchmark command: the stage table and the whole `dfer predict` process, for one or
several settings or commits side by side, runs alternated.

    python benchmarks/run.py                                  # the benchmark videos, defaults
    python benchmarks/run.py --compare "@main" "@HEAD"        # two commits
    python benchmarks/run.py --compare "" "--detector full"   # the defaults against a flag
    python benchmarks/run.py VIDEO... --compare "old=@HEAD~3" "new=@HEAD --threads 1" --repeat 5

Videos: by default the two of benchmarks/media.py (about a minute of the 400x300 webcam
talking head, and the 10 s film clip upscaled to 1280x720), built once into a cache folder.

Settings (`--compare SPEC...`, default one: this tree with dfer's defaults). A SPEC is
`[LABEL=][@REV] [FLAGS...]`: `@REV` is a git revision, checked out into a temporary `git
worktree` and run with PYTHONPATH pointing at it (default: this tree); FLAGS are extra
`dfer predict` options. The first setting is the reference of the ratios.

For every round (`--repeat`), every video and every setting, in an order rotated each round:
1. the whole process, `python -m dfer_cli predict VIDEO -q -f jsonl -o FILE --threads N
   FLAGS`, start-up and model load included: wall seconds (and CPU seconds, from wait4);
2. unless `--no-stages`, a separate process that times its own start-up (import torch,
   import dfer_cli, load the model, load the detector) and `dfer_cli.predict_video` with its
   per-stage times (the CLI flags are passed to predict_video by name).

Printed (Markdown): the machine; per video a stage table (the least disturbed stage run;
start-up parts in seconds, stages in seconds per second of video) and a whole-process
table: fastest and median wall seconds, x real time (video seconds per wall second), each setting's time over
the reference's (fastest over fastest, and the median over rounds of the same round's
ratio), and how its records agree with the reference's (labels equal, largest probability
difference). Other processes on the cores only ever add time, so on shared machines the
fastest of several rounds and the ratios are what to trust; a median can be several times
the fastest when another job runs.
`--json FILE` also writes every measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- settings

@dataclass
class Setting:
    label: str
    rev: str | None          # git revision, or None for this tree
    flags: list[str]
    tree: Path = ROOT        # where its dfer_cli is imported from
    commit: str = ""
    shim: Path | None = None
    results: dict = field(default_factory=dict)   # video -> {"wall": [], "cpu": [], "stages": [], "records": ...}


def parse_spec(spec: str, index: int) -> Setting:
    """`[LABEL=][@REV] [FLAGS...]` -> Setting."""
    label = None
    m = re.match(r"^([^=]+?)=(.*)$", spec.strip(), re.S)
    if m and not spec.strip().startswith(("-", "@")):
        label, spec = m.group(1), m.group(2)
    words = shlex.split(spec)
    rev = None
    if words and words[0].startswith("@"):
        rev = words.pop(0)[1:]
    if label is None:
        label = " ".join(([f"@{rev}"] if rev else []) + words) or "defaults"
    return Setting(label=label, rev=rev, flags=words)


def checkout(rev: str, tmp: Path) -> Path:
    """A detached git worktree of `rev` under tmp."""
    dst = tmp / re.sub(r"[^A-Za-z0-9_.-]", "_", rev)
    if not dst.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(dst), rev], check=True)
    return dst


def remove_checkout(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def commit_of(tree: Path) -> str:
    r = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() or "?") + ("+changes" if dirty else "")


# --------------------------------------------------------------------------- machine

def machine_line(threads: int) -> str:
    model = platform.processor() or "?"
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in flags]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{model}, {os.cpu_count()} cores ({' '.join(isa) or 'flags unknown'}), python "
            f"{platform.python_version()}, threads {threads}, load average at start {load}")


# --------------------------------------------------------------------------- runs

def weights_shim(tree: Path, tmp: Path) -> Path:
    """A folder whose `dfer_weights` is `tree`'s weights/: on PYTHONPATH after the tree, the
    bundled checkpoint is the tree's own, not the one an editable install points at."""
    shim = tmp / ("shim-" + re.sub(r"[^A-Za-z0-9_.-]", "_", str(tree)))
    shim.mkdir(exist_ok=True)
    link = shim / "dfer_weights"
    if not link.exists() and (tree / "weights").is_dir():
        link.symlink_to(tree / "weights", target_is_directory=True)
    return shim


def env_for(setting: Setting, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(str(p) for p in (setting.tree, setting.shim) if p))
    env.pop("PYTHONSTARTUP", None)
    return env


def with_threads(flags: list[str], threads: int) -> list[str]:
    return flags if "--threads" in flags else [*flags, "--threads", str(threads)]


def whole_process(setting: Setting, video: Path, threads: int, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `dfer predict` process writing JSON Lines to `out`."""
    cmd = [sys.executable, "-m", "dfer_cli", "predict", str(video), "-q", "-f", "jsonl", "-o", str(out),
           *with_threads(setting.flags, threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=setting.tree, env=env_for(setting, threads),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.strip()[-400:]}")
    return wall, usage.ru_utime + usage.ru_stime


def stage_run(setting: Setting, video: Path, threads: int) -> dict:
    """The stage worker (this script, --stage-worker) in a fresh process on `setting`'s tree."""
    job = {"video": str(video), "flags": with_threads(setting.flags, threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage-worker", json.dumps(job)]
    r = subprocess.run(cmd, cwd=setting.tree, env=env_for(setting, threads), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"stage worker on {setting.label} exited {r.returncode}: {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def flags_to_kwargs(flags: list[str], predict_video) -> tuple[dict, dict]:
    """predict options -> (predict_video keyword arguments, other settings: weights, threads).
    Each `--name VALUE` goes to predict_video's parameter `name` (dashes to underscores,
    `--detector` to `detection`), converted to the type of that parameter's default; a flag
    with no value is True."""
    import inspect

    params = inspect.signature(predict_video).parameters
    kw, other, i = {}, {}, 0
    while i < len(flags):
        f = flags[i]
        if not f.startswith("-"):
            raise ValueError(f"unexpected word {f!r} in the flags")
        name, _, value = f.lstrip("-").partition("=")
        if not value:
            if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
                value = flags[i + 1]
                i += 1
            else:
                value = None
        i += 1
        name = {"w": "weights", "detector": "detection"}.get(name, name).replace("-", "_")
        if name in ("weights", "threads"):
            other[name] = value
            continue
        if name not in params:
            raise ValueError(f"--{name.replace('_', '-')} is not a predict_video parameter")
        default = params[name].default
        if value is None:
            kw[name] = True
        elif isinstance(default, bool):
            kw[name] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            kw[name] = int(value)
        elif isinstance(default, float):
            kw[name] = float(value)
        else:
            kw[name] = value
    return kw, other


def stage_worker(job: dict) -> None:
    """Runs inside the measured tree: prints one JSON line of start-up and stage times."""
    out: dict = {}
    t0 = time.perf_counter()
    import torch
    out["import_torch"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    import dfer_cli
    from dfer_cli import predict as _predict  # (internal: the detector cache, for its load time)
    out["import_dfer"] = time.perf_counter() - t0
    out["dfer_cli"] = str(Path(dfer_cli.__file__).parent)
    import dfer_weights
    out["weights"] = str(Path(dfer_weights.__file__).parent)

    kw, other = flags_to_kwargs(job["flags"], dfer_cli.predict_video)
    if other.get("threads"):
        torch.set_num_threads(int(other["threads"]))
    t0 = time.perf_counter()
    from dfer_cli.weights import DEFAULT_WEIGHTS
    model = dfer_cli.load_model(other.get("weights") or DEFAULT_WEIGHTS)
    out["load_model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        names = ("detect_size", "min_face", "min_score")
        _predict.get_detector(**{k: kw[k] for k in names if k in kw})
        out["load_detector"] = time.perf_counter() - t0
    except Exception:  # another tree's signature: then it is loaded inside predict_video
        out["load_detector"] = None
    tm: dict = {}
    t0 = time.perf_counter()
    res = dfer_cli.predict_video(model, job["video"], timings=tm, **kw)
    out["predict_video"] = time.perf_counter() - t0
    out["duration"] = res.duration
    out["clips"] = len(res.clips)
    out["stages"] = {k: float(v) for k, v in tm.items() if isinstance(v, (int, float))}
    print(json.dumps(out))


def read_clips(path: Path) -> list[dict]:
    clips = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "clip":
            clips.append(rec)
    return clips


def agreement(ref: list[dict], other: list[dict]) -> dict:
    """Clips paired by (start, end, track), else by (start, end) in order: pairs, labels
    equal, the largest and mean absolute probability difference over paired classified clips."""
    def key(c, track=True):
        return (round(c["start"], 3), round(c["end"], 3)) + ((c.get("track"),) if track else ())

    pairs = []
    by_key = {key(c): c for c in other}
    rest = []
    for c in ref:
        if key(c) in by_key:
            pairs.append((c, by_key.pop(key(c))))
        else:
            rest.append(c)
    loose: dict = {}
    for c in by_key.values():
        loose.setdefault(key(c, False), []).append(c)
    for c in rest:
        cand = loose.get(key(c, False))
        if cand:
            pairs.append((c, cand.pop(0)))
    same = sum(a.get("label") == b.get("label") for a, b in pairs)
    diffs = [abs(a["probabilities"][k] - b["probabilities"][k])
             for a, b in pairs if a.get("probabilities") and b.get("probabilities") for k in a["probabilities"]]
    return {"ref": len(ref), "other": len(other), "paired": len(pairs), "labels_equal": same,
            "max_dp": max(diffs) if diffs else None, "mean_dp": statistics.fmean(diffs) if diffs else None}


# --------------------------------------------------------------------------- report

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def report(settings: list[Setting], videos: list[Path], stages: bool) -> str:
    lines = []
    ref = settings[0]
    for v in videos:
        key = str(v)
        dur = median([s["duration"] for s in ref.results[key]["stages"]]) if stages else None
        dur = dur or ref.results[key].get("duration")
        lines.append(f"\n### {v.name} ({ref.results[key]['size']}, {dur:.1f} s)\n")
        if stages:
            lines.append("| setting | import torch s | import dfer s | load model s | load detector s | decode | detect "
                         "| align | model | other | predict_video | × RT in process |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for s in settings:
                runs = s.results[key]["stages"]
                best = min(runs, key=lambda r: r["predict_video"])   # the run least disturbed
                st = {k: best["stages"].get(k) for k in ("decode", "detect", "align", "model")}
                pv = best["predict_video"]
                other = pv - sum(x or 0 for x in st.values())
                lines.append(
                    f"| {s.label} | {fmt(best['import_torch'], '.2f')} | {fmt(best['import_dfer'], '.2f')} "
                    f"| {fmt(best['load_model'], '.2f')} | {fmt(best['load_detector'], '.2f')} "
                    + "".join(f"| {fmt(x / dur if x is not None else None)} " for x in st.values())
                    + f"| {fmt(other / dur)} | {fmt(pv / dur)} | {fmt(dur / pv, '.2f')} |")
            lines.append("\nthe stage process with the shortest predict_video of the rounds; start-up parts in "
                         "seconds, stages in seconds per second of video (other: tracking, windows, the rest of "
                         "predict_video)\n")
        lines.append("| setting | commit | whole process s: fastest, median (runs) | × real time: fastest, median "
                     "| ratio to ref: fastest, per round | CPU s | clips | labels equal to ref | max \\|Δp\\| "
                     "| mean \\|Δp\\| |")
        lines.append("|---|---|---|---|---|---:|---:|---:|---:|---:|")
        ref_walls = ref.results[key]["wall"]
        for s in settings:
            r = s.results[key]
            walls = r["wall"]
            per_round = median([w / rw for w, rw in zip(walls, ref_walls)])
            ag = agreement(ref.results[key]["records"], r["records"])
            lines.append(
                f"| {s.label} | {s.commit} | {min(walls):.2f}, {median(walls):.2f} "
                f"({', '.join(f'{w:.2f}' for w in walls)}) | {dur / min(walls):.2f}, {dur / median(walls):.2f} "
                f"| {min(walls) / min(ref_walls):.3f}, {per_round:.3f} | {min(r['cpu']):.2f} | {ag['other']} "
                f"| {ag['labels_equal']}/{ag['paired']} | {fmt(ag['max_dp'], '.4f')} | {fmt(ag['mean_dp'], '.4f')} |")
        lines.append("\nfastest: the least disturbed of the rounds (other processes only ever add time); per round: "
                     "the median over rounds of this setting's time over the reference's in the same round; CPU s: "
                     "user + system of the fastest-CPU run")
    return "\n".join(lines)


def video_info(path: Path) -> tuple[str, float]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        dur = float(c.duration) / 1e6 if c.duration else float(s.duration * s.time_base)
        return f"{s.width}×{s.height}", dur


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--stage-worker":
        stage_worker(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*", type=Path, help="default: benchmarks/media.py's two videos")
    ap.add_argument("--compare", nargs="+", default=[""], metavar="SPEC",
                    help='settings: "[LABEL=][@REV] [FLAGS...]"; the first is the reference')
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (--threads, OMP_NUM_THREADS; default 2)")
    ap.add_argument("--no-stages", dest="stages", action="store_false", help="whole-process timings only")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()

    settings = [parse_spec(s, i) for i, s in enumerate(args.compare)]
    if len({s.label for s in settings}) < len(settings):
        ap.error("two settings have the same label: name them LABEL=...")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import media

    videos = [v.resolve() for v in args.videos] or media.benchmark_videos()
    tmp = Path(tempfile.mkdtemp(prefix="dfer-bench-"))
    made = []
    try:
        for s in settings:
            if s.rev:
                s.tree = checkout(s.rev, tmp)
                made.append(s.tree)
            s.commit = commit_of(s.tree)
            s.shim = weights_shim(s.tree, tmp)
            for v in videos:
                size, dur = video_info(v)
                s.results[str(v)] = {"wall": [], "cpu": [], "stages": [], "records": [], "size": size, "duration": dur}
        print(f"machine: {machine_line(args.threads)}")
        print(f"settings: " + "; ".join(f"{s.label} = {s.commit}{' ' + ' '.join(s.flags) if s.flags else ''}"
                                        for s in settings))
        print(f"rounds: {args.repeat}, order rotated each round; reference: {settings[0].label}")
        for r in range(args.repeat):
            order = settings[r % len(settings):] + settings[:r % len(settings)]
            for v in videos:
                for s in order:
                    res = s.results[str(v)]
                    out = tmp / f"out-{len(res['wall'])}.jsonl"
                    wall, cpu = whole_process(s, v, args.threads, out)
                    res["wall"].append(wall)
                    res["cpu"].append(cpu)
                    res["records"] = read_clips(out)
                    if args.stages:
                        res["stages"].append(stage_run(s, v, args.threads))
                    print(f"  round {r + 1}: {v.name} {s.label}: {wall:.2f} s", file=sys.stderr, flush=True)
        print(report(settings, videos, args.stages))
        if args.json:
            args.json.write_text(json.dumps({"machine": machine_line(args.threads), "settings": [
                {"label": s.label, "rev": s.rev, "commit": s.commit, "flags": s.flags,
                 "results": {k: {kk: vv for kk, vv in v.items() if kk != "records"} for k, v in s.results.items()}}
                for s in settings]}, indent=1))
    finally:
        for t in made:
            remove_checkout(t)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Corpus runs: ``dfer predict INPUTS... --output-dir OUT`` -- one result file per video,
a manifest, resumable, shardable (``--shard K/N``) and spreadable over Ray (``--ray``).

    from dfer_cli.corpus import run_corpus
    summary = run_corpus(["videos/"], "out/", weights="logo_former_fer2013", recursive=True)
    print(summary.done, summary.skipped, summary.failed)

The output folder (see docs/corpus.md):

- ``OUT/<stem>-<hash12><ext>``: the result of one video in the chosen format (jsonl, json or
  csv; the same records ``dfer predict`` prints for that video alone). ``hash12`` is the
  start of the sha256 of the video's resolved path, so ``a/x.mp4`` and ``b/x.mp4`` never
  collide. Each file is written to a hidden temporary file in OUT and renamed over its
  name (`fsutil.atomic_path`): a kill at any moment leaves the old file or the new one,
  never half of one.
- ``OUT/manifest.jsonl`` (``manifest.shard-K-of-N.jsonl`` for a shard, so that shards that
  share OUT never write the same file): one JSON line per video finished, appended,
  flushed and fsynced after the result file is in place. A line cut by a kill is ignored
  when read (and the next append starts on a new line).

A rerun skips a video when some manifest in OUT has a line that is not ``failed`` for it with
the same resolved path, size, mtime, model sha256 and settings (window, stride, faces,
detector, TTA, format) and its result file exists; everything else is (re)done. ``force``
redoes everything.

Work is spread either in this process (one model, videos in turn) or over Ray
(`dfer_cli.corpus_ray`); in both cases only this process writes to OUT.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

RESULT_SUFFIX = {"jsonl": ".jsonl", "json": ".json", "csv": ".csv"}
CORPUS_FORMATS = tuple(RESULT_SUFFIX)
MANIFEST = "manifest.jsonl"


# --------------------------------------------------------------------------- names, shards

def input_key(path: str) -> str:
    """The identity of an input: its absolute path with symlinks resolved (the same file
    named two ways is one video; shards and result names derive from this)."""
    return os.path.realpath(os.path.expanduser(path))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def result_name(key: str, fmt: str) -> str:
    """File name (inside OUT) of the result for the input whose `input_key` is `key`:
    ``<stem>-<first 12 hex of sha256(key)><.jsonl|.json|.csv>``. The stem keeps the name
    readable (characters other than letters, digits, ``._-+`` become ``_``; at most 80)."""
    stem = re.sub(r"[^\w.+-]", "_", Path(key).stem)[:80] or "video"
    return f"{stem}-{_digest(key).hex()[:12]}{RESULT_SUFFIX[fmt]}"


def parse_shard(spec: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N), K counted from 1 (1 <= K <= N), as SLURM's ``--array=1-N``
    numbers its tasks. Raises ValueError with a one-line message naming the fix."""
    m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", spec or "")
    if not m:
        raise ValueError(f"--shard {spec}: expected K/N, e.g. --shard 1/4 (K counts from 1 to N)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ValueError(f"--shard {spec}: N must be at least 1")
    if not 1 <= k <= n:
        hint = f"; for 0-based task ids use $((ID+1))/{n}" if k == 0 else ""
        raise ValueError(f"--shard {spec}: K counts from 1, so it must be between 1 and {n}{hint}")
    return k, n


def shard_of(key: str, n: int) -> int:
    """The shard (1..n) an input belongs to: a hash of its resolved path, so the split does
    not depend on the order or number of the other inputs."""
    return int.from_bytes(_digest(key)[:8], "big") % n + 1


# --------------------------------------------------------------------------- manifest

def read_manifests(out_dir: str | os.PathLike) -> list[dict]:
    """Every record of every ``manifest*.jsonl`` in OUT, file by file in name order. Lines
    that are not a JSON object (a line cut by a kill) are skipped."""
    records = []
    for path in sorted(Path(out_dir).glob("manifest*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
    return records


class ManifestWriter:
    """Appends records to one manifest file: one line each, flushed and fsynced, so a kill
    loses at most the line being written (and leaves the others readable)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.f = open(self.path, "a+b")
        if self.f.seek(0, os.SEEK_END) > 0:
            self.f.seek(-1, os.SEEK_END)
            if self.f.read(1) != b"\n":  # a line cut by a kill: start on a fresh line
                self.f.write(b"\n")
                self.f.flush()

    def append(self, record: dict) -> None:
        from dfer_cli.results import strict_json

        self.f.write((strict_json(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def manifest_name(shard: Optional[tuple[int, int]]) -> str:
    return MANIFEST if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.jsonl"


# --------------------------------------------------------------------------- plan

@dataclass
class Job:
    """One input of a corpus run."""
    path: str                   # as given (what the records' "video" field says)
    key: str                    # input_key(path)
    result: str                 # result file name inside OUT
    error: Optional[str] = None  # why it cannot be processed at all (missing, ...), before any work
    size: Optional[int] = None
    mtime_ns: Optional[int] = None


@dataclass
class Plan:
    todo: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)     # already done with this model and settings
    other_shards: int = 0                                # inputs left to the other shards


def plan_corpus(items: Sequence[tuple[str, Optional[str]]], out_dir, fmt: str, model_sha256: str,
                settings: dict, *, shard: Optional[tuple[int, int]] = None, force: bool = False) -> Plan:
    """Split `items` ((path, error) pairs from `cli_predict.collect_inputs`) into what this
    run must do and what OUT already has. Inputs resolving to the same file count once."""
    done: dict[tuple, set] = {}
    if not force:
        for rec in read_manifests(out_dir):
            if rec.get("status") not in (None, "failed") and rec.get("result"):
                sig = (rec.get("key"), rec.get("size"), rec.get("mtime_ns"), rec.get("model_sha256"),
                       json.dumps(rec.get("settings"), sort_keys=True))
                done.setdefault(sig, set()).add(rec["result"])
    plan, seen = Plan(), set()
    settings_sig = json.dumps(settings, sort_keys=True)
    for path, error in items:
        key = input_key(path)
        if key in seen:
            continue
        seen.add(key)
        if shard is not None and shard_of(key, shard[1]) != shard[0]:
            plan.other_shards += 1
            continue
        job = Job(path=path, key=key, result=result_name(key, fmt), error=error)
        if error is None:
            try:
                st = os.stat(key)
                job.size, job.mtime_ns = st.st_size, st.st_mtime_ns
            except OSError as e:
                job.error = e.strerror or str(e)
        sig = (key, job.size, job.mtime_ns, model_sha256, settings_sig)
        if job.error is None and job.result in done.get(sig, ()) and (Path(out_dir) / job.result).is_file():
            plan.skipped.append(job)
        else:
            plan.todo.append(job)
    return plan


# --------------------------------------------------------------------------- one video

def predict_options(*, window=2.0, stride=1.0, all_faces=False, batch_size=8, tta="none",
                    min_face=None, detect_size=None, min_score=None) -> dict:
    """Keyword arguments for `predict_video` (detector options only when given)."""
    opts = dict(window=window, stride=stride, all_faces=all_faces, batch_size=batch_size, tta=tta)
    for name, value in (("min_face", min_face), ("detect_size", detect_size), ("min_score", min_score)):
        if value is not None:
            opts[name] = value
    return opts


def result_settings(opts: dict, fmt: str) -> dict:
    """What, besides the model and the input, decides a result file's content (recorded in the
    manifest; a change makes the video be redone). The batch size and device do not."""
    from dfer_cli import faces

    return {"window": float(opts["window"]), "stride": float(opts["stride"]), "all_faces": bool(opts["all_faces"]),
            "min_face": float(opts.get("min_face", faces.MIN_FACE)),
            "detect_size": opts.get("detect_size", faces.DETECT_SIZE),
            "min_score": float(opts.get("min_score", faces.MIN_SCORE)), "tta": opts["tta"], "format": fmt}


def one_line(exc: BaseException, *paths) -> str:
    """The first line of an exception's message, without a leading ``<path>: `` for any of
    `paths` (the caller names the video already)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    for p in paths:
        if p is not None and text.startswith(f"{p}: "):
            text = text[len(str(p)) + 2:]
    return text if len(text) < 300 else text[:297] + "..."


def render_result(result, fmt: str, classes: Sequence[str]) -> str:
    """The text of one video's result file: what `dfer predict VIDEO -f FMT` prints."""
    from dfer_cli.writers import make_writer

    buf = io.StringIO()
    writer = make_writer(fmt, buf, classes)
    for clip in result.clips:
        writer.clip(clip)
    writer.video(result)
    writer.close()
    return buf.getvalue()


def process_video(model, path: str, key: str, fmt: str, opts: dict, predict: Callable | None = None) -> dict:
    """Predict one video and render its result file; never raises for a bad video.

    The file is opened by its resolved path (`key`: a Ray worker's working folder is not the
    driver's) and the records name it as given (`path`). Returns {"status": "ok" | "no face" |
    "failed", "text": result file text or None, "error": one-line reason or None, "seconds"}.
    """
    if predict is None:
        from dfer_cli.predict import predict_video as predict
    t0 = time.perf_counter()
    try:
        result = predict(model, key, **opts)
        result.video = path
        for clip in result.clips:
            clip.video = path
        text = render_result(result, fmt, list(model.classes))
        out = {"status": result.status, "text": text, "error": None}
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # one bad file must not stop the corpus
        out = {"status": "failed", "text": None, "error": one_line(e, key, path)}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


# --------------------------------------------------------------------------- progress

@dataclass
class Summary:
    total: int = 0          # distinct inputs named
    done: int = 0           # processed in this run (ok or no face)
    failed: int = 0         # failed in this run
    skipped: int = 0        # already in OUT
    other_shards: int = 0   # left to other shards
    seconds: float = 0.0    # wall time of the processing
    failures: list = field(default_factory=list)   # [(path, error)]

    @property
    def per_minute(self) -> float:
        return 60.0 * (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self, out_dir) -> str:
        parts = [f"{self.done} done", f"{self.skipped} already done (skipped)", f"{self.failed} failed"]
        if self.other_shards:
            parts.append(f"{self.other_shards} in other shards")
        rate = f"; {self.per_minute:.1f} videos/min" if self.done + self.failed else ""
        return f"dfer: {self.total} inputs: " + ", ".join(parts) + f"{rate}; results in {out_dir}"


class CorpusProgress:
    """Done / failed / skipped / remaining, videos per minute and ETA, on stderr (a rich line
    that redraws itself; only when `enabled`, i.e. stderr is a terminal and not --quiet).
    Failures are always printed, one line each."""

    def __init__(self, summary: Summary, todo: int, enabled: bool):
        self.s = summary
        self.todo = todo
        self.t0 = time.monotonic()
        self.bar = self.task = None
        if enabled and todo:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("corpus"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), console=Console(stderr=True),
                                transient=True, redirect_stdout=False, redirect_stderr=False)
            self.task = self.bar.add_task("corpus", total=todo, stats=self.stats())

    def stats(self) -> str:
        s = self.s
        finished = s.done + s.failed
        left = self.todo - finished
        elapsed = time.monotonic() - self.t0
        text = f"done {s.done} · failed {s.failed} · skipped {s.skipped} · left {left}"
        if finished and elapsed > 0:
            rate = finished / elapsed
            eta = int(left / rate) if rate > 0 else 0
            text += f" · {60 * rate:.1f} videos/min · ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        return text

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def finished(self, job: Job, outcome: dict) -> None:
        if outcome["status"] == "failed":
            self.log(f"dfer: skipping {job.path}: {outcome['error']}")
        if self.bar is not None:
            self.bar.update(self.task, completed=self.s.done + self.s.failed, stats=self.stats())

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run

class CorpusError(ValueError):
    """A usage problem found before any video is read (the CLI exits 2 with its message)."""


def run_corpus(inputs: Sequence[str] | Sequence[tuple[str, Optional[str]]], out_dir, *,
               weights: str | os.PathLike | None = None, fmt: str = "jsonl", shard: str | tuple | None = None,
               force: bool = False, ray: Optional[str] = None, workers: Optional[int] = None,
               gpus_per_worker: float = 0.0, retries: int = 2, device: str = "auto",
               threads: Optional[int] = None, recursive: bool = False, progress: bool = False,
               predict: Callable | None = None, **options) -> Summary:
    """Process a corpus into the output folder `out_dir` (created if needed); see the module
    docstring. `inputs`: paths / folders / ``-`` as on the command line, or (path, error)
    pairs from `collect_inputs`. `shard`: ``"K/N"`` or (K, N). `ray`: None to work in this
    process, else a Ray address (``"local"`` starts a local Ray, ``"auto"`` joins a running
    cluster; an already initialised Ray is used as it is). `options`: window, stride,
    all_faces, batch_size, tta, min_face, detect_size, min_score (as `predict_video`). `predict`: the
    function called as ``predict(model, path, **options)`` (default `predict_video`).

    Raises CorpusError for a usage problem (nothing read yet); a video that fails is counted
    in the summary and recorded in the manifest, and the others go on.
    """
    from dfer_cli import __version__
    from dfer_cli.weights import DEFAULT_WEIGHTS, file_sha256, find_weights

    if fmt not in RESULT_SUFFIX:
        raise CorpusError(f"--format {fmt}: an --output-dir gets one file per video in json, jsonl or csv "
                          "(the table is for terminals)")
    if isinstance(shard, str):
        try:
            shard = parse_shard(shard)
        except ValueError as e:
            raise CorpusError(str(e)) from None
    if ray is None and (workers is not None or gpus_per_worker):
        raise CorpusError("--workers and --gpus-per-worker spread videos over Ray workers: add --ray")
    if workers is not None and workers < 1:
        raise CorpusError(f"--workers {workers}: must be at least 1")
    if gpus_per_worker < 0:
        raise CorpusError(f"--gpus-per-worker {gpus_per_worker}: must be >= 0 (a fraction shares a GPU)")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CorpusError(f"--output-dir {out}: exists and is not a folder; give a folder path (created if needed)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".dfer-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise CorpusError(f"--output-dir {out}: cannot write there ({e.strerror or e}); "
                          "choose a writable folder") from None

    items = list(inputs)
    if items and isinstance(items[0], (str, os.PathLike)):
        from dfer_cli.cli_predict import collect_inputs

        items = collect_inputs([os.fspath(p) for p in inputs], recursive=recursive)
    try:
        ckpt = find_weights(weights or DEFAULT_WEIGHTS)
    except FileNotFoundError as e:
        raise CorpusError(f"no usable checkpoint: {e}") from None
    sha = file_sha256(ckpt)
    opts = predict_options(**options)
    settings = result_settings(opts, fmt)
    plan = plan_corpus(items, out, fmt, sha, settings, shard=shard, force=force)

    summary = Summary(total=len(plan.todo) + len(plan.skipped) + plan.other_shards,
                      skipped=len(plan.skipped), other_shards=plan.other_shards)
    base = {"model": str(ckpt), "model_sha256": sha, "dfer_version": __version__, "settings": settings}
    manifest = ManifestWriter(out / manifest_name(shard))
    bar = CorpusProgress(summary, len(plan.todo), progress)
    t0 = time.monotonic()

    def record(job: Job, outcome: dict, worker: str = "local") -> None:
        """Write the result file (atomically), then its manifest line."""
        from dfer_cli.fsutil import atomic_write_text

        status, error = outcome["status"], outcome.get("error")
        if status != "failed":
            try:
                atomic_write_text(out / job.result, outcome["text"])
            except OSError as e:
                status, error = "failed", f"cannot write {out / job.result}: {e.strerror or e}"
        rec = {"input": job.path, "key": job.key, "size": job.size, "mtime_ns": job.mtime_ns,
               "result": job.result if status != "failed" else None, "status": status, "error": error,
               **base, "seconds": outcome.get("seconds"), "attempts": outcome.get("attempts", 1),
               "worker": worker, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if outcome.get("retried_after"):
            rec["retried_after"] = outcome["retried_after"]  # why earlier attempts (Ray workers) died
        manifest.append(rec)
        if status == "failed":
            summary.failed += 1
            summary.failures.append((job.path, error))
        else:
            summary.done += 1
        outcome = dict(outcome, status=status, error=error)
        bar.finished(job, outcome)

    try:
        with bar:
            for job in [j for j in plan.todo if j.error is not None]:  # missing, not a file, ...
                record(job, {"status": "failed", "error": job.error, "seconds": 0.0, "attempts": 0})
            jobs = [j for j in plan.todo if j.error is None]
            if jobs and ray is None:
                _run_local(jobs, ckpt, fmt, opts, device, threads, predict, record)
            elif jobs:
                from dfer_cli.corpus_ray import run_ray

                run_ray(jobs, ckpt, fmt, opts, record, address=ray, workers=workers,
                        gpus_per_worker=gpus_per_worker, device=device, threads=threads,
                        retries=retries, predict=predict, log=bar.log)
    finally:
        manifest.close()
        summary.seconds = time.monotonic() - t0
    return summary


def _run_local(jobs, ckpt, fmt, opts, device, threads, predict, record) -> None:
    """One model in this process, the videos in turn."""
    import torch

    from dfer_cli.checkpoint import load_model
    from dfer_cli.device import resolve_device

    if threads:
        torch.set_num_threads(threads)
    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise CorpusError(f"--device: {e}") from None
    try:
        model = load_model(str(ckpt), device=dev)
    except (ValueError, OSError) as e:
        raise CorpusError(f"cannot use checkpoint {ckpt}: {one_line(e, ckpt)}") from None
    opts = dict(opts, device=dev)
    for job in jobs:
        record(job, process_video(model, job.path, job.key, fmt, opts, predict))


# --------------------------------------------------------------------------- CLI

RAY_ADDRESS = re.compile(r"(local|auto|ray://\S+|[\w.\-]+:\d+)")


def check_ray_address(value: str) -> str:
    """`--ray` alone gives "local"; `--ray-address` "auto", HOST:PORT or ray://HOST:PORT."""
    if not RAY_ADDRESS.fullmatch(value):
        raise CorpusError(f"--ray-address {value}: not a Ray address; use auto to join the running cluster, "
                          "HOST:PORT or ray://HOST:PORT, or leave --ray-address out to start a local Ray")
    return value


def corpus_command(items, *, output_dir, fmt, fmt_given: bool, output, annotate, plot, shard, force, ray,
                   workers, gpus_per_worker, weights, device, threads, quiet, **options) -> None:
    """`dfer predict ... --output-dir OUT [--shard K/N] [--ray [ADDRESS]]`: run the corpus, print
    the summary, and exit (0; 1 when a video failed; 2 for a usage error)."""
    import typer

    from dfer_cli.cli import fail

    if output_dir is None:
        for flag, given in (("--shard", shard is not None), ("--ray", ray is not None), ("--force", force)):
            if given:
                fail(f"{flag} works on an output folder: add --output-dir OUT", 2)
        return
    if output is not None:
        fail("--output and --output-dir: choose one (--output-dir writes one file per video)", 2)
    if annotate or plot:
        fail("--annotate / --plot are not available with --output-dir; run them on single videos", 2)
    if not fmt_given:
        fmt = "jsonl"
    try:
        summary = run_corpus(items, output_dir, weights=weights, fmt=fmt, shard=shard, force=force,
                             ray=check_ray_address(ray) if ray is not None else None, workers=workers,
                             gpus_per_worker=gpus_per_worker, device=device, threads=threads,
                             progress=not quiet and sys.stderr.isatty(), **options)
    except CorpusError as e:
        msg = str(e)
        code = 1 if msg.startswith(("no usable checkpoint", "cannot use checkpoint")) else 2
        fail(msg, code)
    if not quiet:
        typer.echo(summary.line(output_dir), err=True)
    raise typer.Exit(1 if summary.failed else 0)

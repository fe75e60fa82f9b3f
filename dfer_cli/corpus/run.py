"""Corpus runs: ``dfer predict INPUTS... --output-dir OUT`` -- one result file per video,
a manifest, resumable, shardable (``--shard K/N``) and spreadable over Ray (``--ray``).

    from dfer_cli.corpus.run import run_corpus
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

Work is spread either in this process (one model; videos in turn, or on CUDA several at
once in threads whose clips share forward passes, `SharedClassifier`) or over Ray
(`dfer_cli.corpus.on_ray`); in every case only this process's main thread writes to OUT.
Ctrl-C raises `CorpusInterrupted` (never in the middle of writing a result and its manifest
line); a run first removes the temporary files a killed run left (`remove_stale_temps`).
"""
from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional, Sequence

from dfer_cli.corpus.errors import CorpusError
from dfer_cli.corpus.plan import Job, corpus_done, parse_shard, plan_corpus, predict_options, result_settings
from dfer_cli.corpus.progress import CorpusInterrupted, CorpusProgress, Summary
from dfer_cli.corpus.shared import AUTOCAST, SharedClassifier
from dfer_cli.corpus.store import (
    RESULT_SUFFIX,
    ManifestWriter,
    manifest_name,
    open_output_dir,
    write_result,
)
from dfer_cli.corpus.work import process_video
from dfer_cli.interrupts import InterruptGuard


def run_corpus(inputs: Sequence[str] | Sequence[tuple[str, Optional[str]]], out_dir, *,
               weights: str | os.PathLike | None = None, fmt: str = "jsonl", shard: str | tuple | None = None,
               force: bool = False, ray: Optional[str] = None, workers: Optional[int] = None,
               gpus_per_worker: float = 0.0, retries: int = 2, device: str = "auto",
               threads: Optional[int] = None, recursive: bool = False, progress: bool = False,
               predict: Callable | None = None, videos_in_flight: Optional[int] = None,
               precision: str = "fp16", **options) -> Summary:
    """Process a corpus into the output folder `out_dir` (created if needed); see the module
    docstring. `inputs`: paths / folders / ``-`` as on the command line, or (path, error)
    pairs from `collect_inputs`. `shard`: ``"K/N"`` or (K, N). `ray`: None to work in this
    process, else a Ray address (``"local"`` starts a local Ray, ``"auto"`` joins a running
    cluster; an already initialised Ray is used as it is). `options`: window, stride,
    all_faces, batch_size, tta, min_face, detect_size, min_score, detection (as `predict_video`). `predict`: the
    function called as ``predict(model, path, **options)`` (default `predict_video`).

    `videos_in_flight` (local runs): videos decoded and detected at once, each in a thread of
    its own, their clips classified together by one `SharedClassifier` in forward passes of
    up to ``batch_size * videos_in_flight`` clips. Default: 4 on CUDA, else 1 (one video after
    the other, the records byte for byte those of ``dfer predict VIDEO``). `precision`: the
    autocast dtype of those passes on CUDA, ``fp16``, ``bf16`` or ``fp32``.

    Raises CorpusError for a usage problem (nothing read yet), and CorpusInterrupted (a
    KeyboardInterrupt) on Ctrl-C once videos are under way. A video that fails is counted in
    the summary and recorded in the manifest, and the others go on.
    """
    from dfer_cli import __version__
    from dfer_cli.weights import DEFAULT_WEIGHTS, file_sha256, find_weights

    started = time.monotonic()
    shard = _check_run_options(fmt, shard, ray, workers, gpus_per_worker, videos_in_flight, precision)
    out = open_output_dir(out_dir)

    items = list(inputs)
    if items and isinstance(items[0], (str, os.PathLike)):
        from dfer_cli.video.inputs import collect_inputs

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
                      skipped=len(plan.skipped), other_shards=plan.other_shards, shard=shard,
                      manifest=str(out / manifest_name(shard)))
    base = {"model": str(ckpt), "model_sha256": sha, "dfer_version": __version__, "settings": settings}
    whole = (lambda: corpus_done(out, plan.keys, sha, settings)) if shard is not None else None
    bar = CorpusProgress(summary, len(plan.todo), progress, whole=whole)
    shield = InterruptGuard((signal.SIGINT,), only_over_default=True)
    recorder = _Recorder(out, base, summary, bar, shield)
    record = recorder.record

    try:
        with shield, bar:
            with shield.shielded():
                recorder.manifest = ManifestWriter(out / manifest_name(shard))
            for job in [j for j in plan.todo if j.error is not None]:  # missing, not a file, ...
                record(job, {"status": "failed", "error": job.error, "seconds": 0.0, "attempts": 0})
            jobs = [j for j in plan.todo if j.error is None]
            if jobs and ray is None:
                _run_local(jobs, ckpt, fmt, opts, device, threads, predict, record,
                           videos_in_flight=videos_in_flight, precision=precision)
            elif jobs:
                from dfer_cli.corpus.on_ray import run_ray

                run_ray(jobs, ckpt, fmt, opts, record, address=ray, workers=workers,
                        gpus_per_worker=gpus_per_worker, device=device, threads=threads,
                        retries=retries, predict=predict, log=bar.log)
    except KeyboardInterrupt as e:
        summary.interrupted = True
        summary.seconds = time.monotonic() - started
        raise CorpusInterrupted(summary) from e
    finally:
        if recorder.manifest is not None:
            recorder.manifest.close()
        summary.seconds = time.monotonic() - started
    if whole is not None:
        summary.corpus_done = whole()
    return summary


def _check_run_options(fmt, shard, ray, workers, gpus_per_worker, videos_in_flight, precision):
    """The shard as (K, N) (or None), after refusing bad run options with a CorpusError."""
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
    if videos_in_flight is not None and videos_in_flight < 1:
        raise CorpusError(f"videos_in_flight {videos_in_flight}: must be at least 1")
    if precision not in AUTOCAST:
        raise CorpusError(f"precision {precision}: expected one of {', '.join(AUTOCAST)}")
    return shard


class _Recorder:
    """Records each finished video: its result file (atomically), then its manifest line
    (`manifest`, a ManifestWriter set once the run starts), the summary counts and the
    progress bar; Ctrl-C waits until both files are written (`shield`)."""

    def __init__(self, out: Path, base: dict, summary: "Summary", bar, shield):
        self.out, self.base, self.summary, self.bar, self.shield = out, base, summary, bar, shield
        self.manifest = None

    def record(self, job: Job, outcome: dict, worker: str = "local") -> None:
        with self.shield.shielded():
            status, error = outcome["status"], outcome.get("error")
            if status != "failed":
                try:
                    write_result(self.out / job.result, outcome["text"])
                except OSError as e:
                    status, error = "failed", f"cannot write {self.out / job.result}: {e.strerror or e}"
            rec = {"input": job.path, "key": job.key, "size": job.size, "mtime_ns": job.mtime_ns,
                   "result": job.result if status != "failed" else None, "status": status, "error": error,
                   **self.base, "seconds": outcome.get("seconds"), "attempts": outcome.get("attempts", 1),
                   "worker": worker, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if outcome.get("retried_after"):
                rec["retried_after"] = outcome["retried_after"]  # why earlier attempts (Ray workers) died
            self.manifest.append(rec)
            if status == "failed":
                self.summary.failed += 1
                self.summary.failures.append((job.path, error))
            else:
                self.summary.done += 1
        self.bar.finished(job, dict(outcome, status=status, error=error))


def _run_local(jobs, ckpt, fmt, opts, device, threads, predict, record, *, videos_in_flight=None,
               precision="fp16") -> None:
    """One model in this process: the videos in turn, or `videos_in_flight` of them at once
    in threads that share one classifier (see `run_corpus`)."""
    import torch

    from dfer_cli.device import DeviceError
    from dfer_cli.models.inference import load_for_inference

    try:
        model, dev = load_for_inference(str(ckpt), device, threads)
    except DeviceError as e:
        raise CorpusError(f"--device: {e}") from None
    except ValueError as e:  # CheckpointError
        raise CorpusError(str(e)) from None
    opts = dict(opts, device=dev)
    n = videos_in_flight or (4 if dev.type == "cuda" else 1)
    n = min(n, len(jobs))
    if n <= 1 and dev.type != "cuda":
        for job in jobs:
            record(job, process_video(model, job.path, job.key, fmt, opts, predict))
        return
    dtype = getattr(torch, AUTOCAST[precision]) if dev.type == "cuda" and AUTOCAST[precision] else None
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise CorpusError(f"precision bf16: this GPU ({torch.cuda.get_device_name(dev)}) has no bfloat16; use fp16")
    shared = SharedClassifier(model, opts["batch_size"] * n, dtype=dtype)
    _run_threads(jobs, shared, n, fmt, opts, predict, record, detector_device=dev if dev.type == "cuda" else None)


def _run_threads(jobs, shared: SharedClassifier, n: int, fmt: str, opts: dict, predict, record,
                 detector_device=None) -> None:
    """`n` threads, each with a face detector of its own (a detector keeps per-call state),
    take the videos in order and predict them through `shared`; this thread records each
    outcome as it comes (so only it writes OUT). On any exception here (Ctrl-C) the threads
    stop taking videos; the ones they are on are not recorded."""
    from dfer_cli.faces import detect as faces

    todo = deque(jobs)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    view = shared.view()
    det_opts = {k: opts.get(k, getattr(faces, k.upper())) for k in ("detect_size", "min_face", "min_score")}

    def worker() -> None:
        try:
            detector = faces.FaceDetector(device=detector_device, **det_opts)
            with shared.member():
                while not stop.is_set():
                    try:
                        job = todo.popleft()
                    except IndexError:
                        return
                    results.put((job, process_video(view, job.path, job.key, fmt, dict(opts, detector=detector),
                                                    predict)))
        except BaseException as e:  # a bug, not a bad video (process_video catches those)
            results.put((None, e))

    pool = [threading.Thread(target=worker, name=f"dfer-video-{i}", daemon=True) for i in range(n)]
    for t in pool:
        t.start()
    try:
        for _ in range(len(jobs)):
            while True:
                try:
                    job, outcome = results.get(timeout=0.25)
                    break
                except queue.Empty:
                    if not any(t.is_alive() for t in pool) and results.empty():
                        raise RuntimeError("the video threads ended before every video was done")
            if job is None:
                raise outcome
            record(job, outcome)
    finally:
        stop.set()



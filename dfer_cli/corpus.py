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

Work is spread either in this process (one model; videos in turn, or on CUDA several at
once in threads whose clips share forward passes, `SharedClassifier`) or over Ray
(`dfer_cli.corpus_ray`); in every case only this process's main thread writes to OUT.
Ctrl-C raises `CorpusInterrupted` (never in the middle of writing a result and its manifest
line); a run first removes the temporary files a killed run left (`remove_stale_temps`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from dfer_cli.messages import one_line, printable

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
    loses at most the line being written (and leaves the others readable).

    The file is locked (``flock``, exclusive) while it is open: a second run writing the same
    manifest, which would redo every video and write each line twice, is refused with a
    CorpusError; shards write manifests of their own and run side by side. The lock goes
    with the process, however it ends."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.f = open(self.path, "a+b")
        try:
            import fcntl

            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock on this platform: unguarded, as before
            pass
        except OSError:
            self.f.close()
            raise CorpusBusy(f"{self.path.parent}: another dfer run is writing {self.path.name} now; wait for it to "
                              "finish, or split the work with --shard K/N (each shard has a manifest of its own)")
        if self.f.seek(0, os.SEEK_END) > 0:
            self.f.seek(-1, os.SEEK_END)
            if self.f.read(1) != b"\n":  # a line cut by a kill: start on a fresh line
                self.f.write(b"\n")
                self.f.flush()

    def append(self, record: dict) -> None:
        from dfer_cli.results import strict_json

        try:
            self.f.write((strict_json(record, ensure_ascii=False) + "\n").encode("utf-8"))
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:  # a full disk: the run cannot record its work, so it stops
            raise CorpusStopped(f"cannot write {self.path} ({(e.strerror or str(e)).lower()}); stopped: free some "
                                "space, then rerun the same command to resume") from None

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:  # the line a full disk refused is still buffered; append said so already
            pass


def manifest_name(shard: Optional[tuple[int, int]]) -> str:
    return MANIFEST if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.jsonl"


# --------------------------------------------------------------------------- result files

_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]
_TEMP = re.compile(r"^\..*\.dfer-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[^.]*\.tmp$")
_OLD_TEMP = re.compile(r"^\..+\.[a-z0-9_]+\.tmp\.(jsonl|json|csv)$")  # fsutil.atomic_path's, before 0.x
STALE_AFTER = 3600.0  # seconds: a temporary file this old is a leftover whoever made it (a write takes ms)


def _temp_prefix(name: str) -> str:
    """``.<name>.dfer-<host hash>-<pid>-``: who writes the temporary file, so that a later run
    can tell the leftovers of a killed process from a file another run is writing now."""
    return f".{name}.dfer-{_HOST}-{os.getpid()}-"


def write_result(path: Path, text: str) -> None:
    """Write one result file atomically: a hidden temporary file in the same folder (named by
    `_temp_prefix`), flushed to disk, given the mode a plain ``open`` would give, and renamed
    over `path`. Whatever stops it (an error, Ctrl-C) removes the temporary file; a SIGKILL
    leaves it for `remove_stale_temps`."""
    from dfer_cli.fsutil import default_file_mode

    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, another user's
        return True
    return True


def remove_stale_temps(out_dir: str | os.PathLike) -> list[str]:
    """Delete the temporary files a killed run left in OUT; returns their names.

    A temporary file is stale when the process named in it (`_temp_prefix`) ran on this host
    and is gone, or when it is older than `STALE_AFTER` (a shard on another node, or a file
    of the older unnamed kind). A shard running now beside this one keeps its file."""
    removed, now = [], time.time()
    for entry in os.scandir(out_dir):
        m = _TEMP.match(entry.name)
        if m is None and not _OLD_TEMP.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER
            if m is not None and m["host"] == _HOST and not _alive(int(m["pid"])):
                stale = True
            if stale:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:  # gone meanwhile (renamed by its writer), or not ours to delete
            continue
    return removed


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
    keys: set = field(default_factory=set)               # every distinct input, all shards


def corpus_done(out_dir, keys: set, model_sha256: str, settings: dict) -> int:
    """How many of the inputs `keys` some manifest in OUT (any shard's) has as done with this
    model and these settings: the progress of the whole corpus when shards share OUT."""
    sig = json.dumps(settings, sort_keys=True)
    return len({r.get("key") for r in read_manifests(out_dir)
                if r.get("status") not in (None, "failed") and r.get("model_sha256") == model_sha256
                and json.dumps(r.get("settings"), sort_keys=True) == sig} & keys)


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
        plan.keys.add(key)
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

def detector_options(*, min_face=None, detect_size=None, min_score=None, detection=None) -> dict:
    """The face-detector keyword arguments of `predict_video` that were given (None: its
    default). `dfer predict` and corpus runs both build them here."""
    return {name: value for name, value in (("min_face", min_face), ("detect_size", detect_size),
                                            ("min_score", min_score), ("detection", detection))
            if value is not None}


def predict_options(*, window=2.0, stride=1.0, all_faces=False, batch_size=8, tta="none",
                    min_face=None, detect_size=None, min_score=None, detection=None) -> dict:
    """Keyword arguments for `predict_video` (detector options only when given)."""
    return dict(window=window, stride=stride, all_faces=all_faces, batch_size=batch_size, tta=tta,
                **detector_options(min_face=min_face, detect_size=detect_size, min_score=min_score,
                                   detection=detection))


def result_settings(opts: dict, fmt: str) -> dict:
    """What, besides the model and the input, decides a result file's content (recorded in the
    manifest; a change makes the video be redone). The batch size and device do not."""
    from dfer_cli import faces

    return {"window": float(opts["window"]), "stride": float(opts["stride"]), "all_faces": bool(opts["all_faces"]),
            "min_face": float(opts.get("min_face", faces.MIN_FACE)),
            "detect_size": opts.get("detect_size", faces.DETECT_SIZE),
            "min_score": float(opts.get("min_score", faces.MIN_SCORE)), "tta": opts["tta"], "format": fmt,
            # only when not "full", so that folders made before the option keep their results;
            # predict_video's default for dfer's MTCNN is "keyframe"
            **({"detection": opts.get("detection") or "keyframe"}
               if (opts.get("detection") or "keyframe") != "full" else {})}


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


# --------------------------------------------------------------------------- batching across videos

SHARE_WAIT = 0.05  # seconds a batch of clips may wait for other videos' before it is classified alone


class _Request:
    __slots__ = ("x", "since", "out", "error", "done")

    def __init__(self, x):
        self.x, self.since, self.out, self.error, self.done = x, time.monotonic(), None, None, False


class SharedClassifier:
    """One model fed by several threads, each predicting its own video: the clip batches they
    hand in are classified together, in one forward pass of up to `max_batch` clips.

    A thread's call (`view()` stands in for the model in `predict_video`) waits until its
    batch is classified. A forward pass runs, in whichever waiting thread gets there first, as
    soon as the batches waiting hold `max_batch` clips, or every thread that is `member` is
    waiting (none can add more), or the oldest batch has waited `max_wait` seconds (so a
    thread that is busy decoding does not hold the others up for long; default `SHARE_WAIT`). The batches are
    concatenated in arrival order and the output is split back.

    `dtype`: autocast dtype for the forward (torch.float16 or torch.bfloat16 on CUDA; None: the
    model's own precision). Counters: `forwards`, `clips`, `largest` (clips in the largest pass).
    """

    def __init__(self, model, max_batch: int, *, dtype=None, max_wait: Optional[float] = None):
        self.model, self.max_batch, self.dtype = model, max(1, int(max_batch)), dtype
        self.max_wait = SHARE_WAIT if max_wait is None else max_wait
        self.device = next(model.parameters()).device
        self.cond = threading.Condition()
        self.waiting: list[_Request] = []
        self.members = 0
        self.busy = False
        self.forwards = self.clips = self.largest = 0

    @contextlib.contextmanager
    def member(self):
        """The calling thread takes part for the duration of the block (see the class doc)."""
        with self.cond:
            self.members += 1
        try:
            yield
        finally:
            with self.cond:
                self.members -= 1
                self.cond.notify_all()

    def view(self) -> "_ModelView":
        return _ModelView(self)

    def _ready(self) -> bool:
        if not self.waiting or self.busy:
            return False
        return (sum(int(r.x.shape[0]) for r in self.waiting) >= self.max_batch
                or len(self.waiting) >= self.members
                or time.monotonic() - self.waiting[0].since >= self.max_wait)

    def __call__(self, x):
        req = _Request(x)
        with self.cond:
            self.waiting.append(req)
            self.cond.notify_all()
            while not req.done:
                if self._ready():
                    batch, n = [], 0
                    while self.waiting and (not batch or n + int(self.waiting[0].x.shape[0]) <= self.max_batch):
                        batch.append(self.waiting.pop(0))
                        n += int(batch[-1].x.shape[0])
                    self.busy = True
                    self.cond.release()
                    try:
                        self._forward(batch)
                    finally:
                        self.cond.acquire()
                        self.busy = False
                        self.cond.notify_all()
                    continue
                wait = self.max_wait
                if self.waiting and not self.busy:
                    wait = max(1e-3, self.max_wait - (time.monotonic() - self.waiting[0].since))
                self.cond.wait(wait)
        if req.error is not None:
            raise req.error
        return req.out

    def _forward(self, batch: list[_Request]) -> None:
        import torch

        sizes = [int(r.x.shape[0]) for r in batch]
        try:
            x = torch.cat([r.x.to(self.device) for r in batch]) if len(batch) > 1 else batch[0].x.to(self.device)
            # set here, whatever the calling thread has set: autocast state is per thread
            cast = (torch.autocast("cuda", dtype=self.dtype or torch.float16, enabled=self.dtype is not None)
                    if self.device.type == "cuda" else contextlib.nullcontext())
            with torch.inference_mode(), cast:
                y = self.model(x)
            outs = y.split(sizes) if len(batch) > 1 else [y]
            for r, o in zip(batch, outs):
                r.out = o
        except Exception as e:  # each caller sees the error, as if it had run the model itself
            for r in batch:
                r.error = e
        finally:
            for r in batch:
                r.done = True
        with self.cond:
            self.forwards += 1
            self.clips += sum(sizes)
            self.largest = max(self.largest, sum(sizes))


class _ModelView:
    """What `predict_video` is given instead of the model when videos share a classifier:
    everything is the model's, except that calling it goes through the `SharedClassifier`
    (and `.to()` / `.eval()` leave the shared model where it is)."""

    # Whole clips go through the shared forward pass, so the classify stage must not split
    # the model into its trunk and head (pipeline/classify.py) behind the classifier's back.
    frame_features = forward_tokens = None

    def __init__(self, shared: SharedClassifier):
        self._shared = shared

    def __call__(self, x):
        return self._shared(x)

    def __getattr__(self, name):
        return getattr(self._shared.model, name)

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self


AUTOCAST = {"fp16": "float16", "bf16": "bfloat16", "fp32": None}


# --------------------------------------------------------------------------- progress

def duration_text(seconds: float) -> str:
    """``45 s``, ``12 min 3 s``, ``2 h 5 min``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s // 60 % 60} min"


@dataclass
class Summary:
    total: int = 0          # distinct inputs named
    done: int = 0           # processed in this run (ok or no face)
    failed: int = 0         # failed in this run
    skipped: int = 0        # already in OUT
    other_shards: int = 0   # left to other shards
    seconds: float = 0.0    # wall time of the run
    failures: list = field(default_factory=list)   # [(path, error)]
    shard: Optional[tuple[int, int]] = None
    manifest: str = ""      # the manifest this run appended to
    corpus_done: Optional[int] = None  # with a shard: inputs done in OUT by all shards, at the end
    interrupted: bool = False

    @property
    def todo(self) -> int:
        """Inputs of this run (this shard) not done before it."""
        return self.total - self.other_shards - self.skipped

    @property
    def finished(self) -> int:
        """Inputs of this run (this shard) done or failed, before or in this run."""
        return self.skipped + self.done + self.failed

    @property
    def per_minute(self) -> float:
        return 60.0 * (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self, out_dir=None) -> str:
        """The summary printed at the end (without the ``dfer: `` prefix)."""
        who = "corpus" if self.shard is None else f"corpus shard {self.shard[0]}/{self.shard[1]}"
        text = (f"{who}: {self.done} done, {self.failed} failed, {self.skipped} skipped (already done) "
                f"in {duration_text(self.seconds)}")
        if self.done + self.failed and self.seconds > 0:
            text += f" ({self.per_minute:.1f} videos/min)"
        if self.shard is not None:
            text += f"; {self.other_shards} in other shards"
            if self.corpus_done is not None:
                text += f", {self.corpus_done} of {self.total} done in all"
        return text + f"; manifest {self.manifest}"

    def interrupted_line(self, out_dir) -> str:
        return (f"interrupted after {self.finished} of {self.total - self.other_shards} videos; finished results "
                f"are in {out_dir} (rerun the same command to resume)")


class CorpusProgress:
    """Done / failed / skipped / remaining, videos per minute and ETA, on stderr (a rich line
    that redraws itself; only when `enabled`, i.e. stderr is a terminal and not --quiet).
    With a shard, `whole()` gives how many inputs all shards have done (read from OUT's
    manifests, at most every `WHOLE_EVERY` seconds), shown with its own rate and ETA.
    Failures are always printed, one line each."""

    WHOLE_EVERY = 5.0

    def __init__(self, summary: Summary, todo: int, enabled: bool, whole: Optional[Callable[[], int]] = None):
        self.s = summary
        self.todo = todo
        self.t0 = time.monotonic()
        self.whole = whole
        self.whole_start = self.whole_now = None
        self.whole_at = -1e9
        self.bar = self.task = None
        if enabled and todo:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            if whole is not None:
                self.whole_start = self.whole_now = whole()
                self.whole_at = time.monotonic()
            self.bar = Progress(TextColumn("corpus"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), console=Console(stderr=True),
                                transient=True, redirect_stdout=False, redirect_stderr=False)
            self.task = self.bar.add_task("corpus", total=todo, stats=self.stats())

    @staticmethod
    def _eta(left: int, per_second: float) -> str:
        eta = int(left / per_second) if per_second > 0 else 0
        return f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"

    def stats(self) -> str:
        s = self.s
        finished = s.done + s.failed
        left = self.todo - finished
        now = time.monotonic()
        elapsed = now - self.t0
        text = f"done {s.done} · failed {s.failed} · skipped {s.skipped} · left {left}"
        if finished and elapsed > 0:
            rate = finished / elapsed
            text += f" · {60 * rate:.1f} videos/min · {self._eta(left, rate)}"
        if self.whole is not None and self.whole_start is not None:
            if now - self.whole_at >= self.WHOLE_EVERY:
                self.whole_now, self.whole_at = self.whole(), now
            all_left = s.total - self.whole_now
            text += f" │ all shards: {self.whole_now}/{s.total} done"
            if self.whole_now > self.whole_start and elapsed > 0:
                rate = (self.whole_now - self.whole_start) / elapsed
                text += f" · {60 * rate:.1f} videos/min · {self._eta(all_left, rate)}"
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
            self.log(f"dfer: skipping {printable(job.path)}: {printable(outcome['error'])}")
        if self.bar is not None:
            self.bar.update(self.task, completed=self.s.done + self.s.failed, stats=self.stats())

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- Ctrl-C

class CorpusInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a corpus run; `summary` says how far it got. Every result file in
    OUT is whole and listed in the manifest, and no temporary file is left."""

    def __init__(self, summary: Summary):
        super().__init__()
        self.summary = summary


class _Shield:
    """While a corpus run's main thread is inside `shielded()` (writing a result file and its
    manifest line), SIGINT is held back and raised as KeyboardInterrupt when the block ends;
    elsewhere it interrupts at once, as usual. Installed only from the main thread and only
    over Python's default SIGINT handler (an ignored SIGINT stays ignored)."""

    def __init__(self):
        self.inside = self.pending = False
        self.previous = None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handler(self, signum, frame):
        if self.inside:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shielded(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt


# --------------------------------------------------------------------------- the run

class CorpusError(ValueError):
    """A usage problem found before any video is read (the CLI exits 2 with its message)."""


class CorpusStopped(CorpusError):
    """The run cannot go on for a reason of the machine (exit 1, not a usage error): the
    output folder's manifest cannot be written (a full disk)."""


class CorpusBusy(CorpusStopped):
    """Another run holds the output folder's manifest."""


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
                      skipped=len(plan.skipped), other_shards=plan.other_shards, shard=shard,
                      manifest=str(out / manifest_name(shard)))
    base = {"model": str(ckpt), "model_sha256": sha, "dfer_version": __version__, "settings": settings}
    whole = (lambda: corpus_done(out, plan.keys, sha, settings)) if shard is not None else None
    bar = CorpusProgress(summary, len(plan.todo), progress, whole=whole)
    shield = _Shield()
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
                from dfer_cli.corpus_ray import run_ray

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


def open_output_dir(out_dir) -> Path:
    """The output folder, created if needed and checked writable (CorpusError if not), with
    the temporary files of a killed earlier run removed."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CorpusError(f"--output-dir {out}: exists and is not a folder; give a folder path (created if needed)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix("write-test"), suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CorpusError(f"--output-dir {out}: cannot write there ({e.strerror or e}); "
                          "choose a writable folder") from None
    remove_stale_temps(out)
    return out


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
    model.eval()
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
    from dfer_cli import faces

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


# --------------------------------------------------------------------------- CLI

RAY_ADDRESS = re.compile(r"(local|auto|ray://\S+|[\w.\-]+:\d+)")


def check_ray_address(value: str) -> str:
    """`--ray` alone gives "local"; `--ray-address` "auto", HOST:PORT or ray://HOST:PORT."""
    if not RAY_ADDRESS.fullmatch(value):
        raise CorpusError(f"--ray-address {value}: not a Ray address; use auto to join the running cluster, "
                          "HOST:PORT or ray://HOST:PORT, or leave --ray-address out to start a local Ray")
    return value


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as `dfer predict` without --output-dir


def corpus_command(items, *, output_dir, fmt, fmt_given: bool, output, annotate, plot, shard, force, ray,
                   workers, gpus_per_worker, weights, device, threads, quiet, **options) -> None:
    """`dfer predict ... --output-dir OUT [--shard K/N] [--ray [ADDRESS]]`: run the corpus, print
    the summary, and exit (0; 1 when a video failed; 2 for a usage error; 130 on Ctrl-C)."""
    import typer

    from dfer_cli.cli_app import fail

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
        code = 1 if isinstance(e, CorpusStopped) or msg.startswith(("no usable checkpoint", "cannot use checkpoint")) else 2
        fail(msg, code)
    except CorpusInterrupted as e:
        typer.echo(f"dfer: {e.summary.interrupted_line(output_dir)}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # before the first video: planning, loading the model
        typer.echo(f"dfer: interrupted before any video was processed; {output_dir} is as it was "
                   "(rerun the same command to start)", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not quiet:
        typer.echo(f"dfer: {summary.line(output_dir)}", err=True)
    raise typer.Exit(1 if summary.failed else 0)

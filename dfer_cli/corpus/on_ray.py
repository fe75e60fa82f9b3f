"""The Ray backend of corpus runs (``dfer predict ... --output-dir OUT --ray [ADDRESS]``).

Videos are spread over a pool of Ray *actors*, each a process that loads the model once
(and MTCNN once) and then predicts video after video; a task per video would pay the model
and detector load, a second or more, for every video. Only the results' text comes back to
the driver, which alone writes the output folder and the manifest (`dfer_cli.corpus.run`).

Failures: a video that raises inside a worker is an ordinary failed video (no retry: it
would fail again). A worker process that dies (killed, out of memory, a crash in native
code) is restarted by Ray (``max_restarts=-1``) and the video it was doing is given to it
again, once it answers, up to `retries` more times; the attempts and the reasons are recorded
in the manifest line. A call that merely found its actor restarting (or unreachable) is not
an attempt: it is sent again when the actor is back (see `_drive`). Ray must be installed: ``pip install 'dfer[ray]'``.
"""
from __future__ import annotations

import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from dfer_cli.corpus.errors import CorpusError
from dfer_cli.corpus.work import process_video
from dfer_cli.messages import one_line, printable

try:
    import ray
except ImportError:  # pragma: no cover - exercised only without the extra
    ray = None

LOCAL_OBJECT_STORE = 128 * 1024 * 1024   # bytes; results are small texts, 128 MB is plenty
RESTART_TIMEOUT = 300.0   # seconds a worker may take to come back (restart and load the model)
MAX_BOUNCES = 5           # failed calls in a row without a worker death before one counts as an attempt


class CorpusWorker:
    """One Ray actor: a model in memory, one video per `run` call."""

    def __init__(self, ckpt: str, device: str, threads: int, predict: Optional[Callable]):
        from dfer_cli.models.inference import load_for_inference

        self.model, self.device = load_for_inference(ckpt, device, threads)
        self.predict = predict
        self.name = f"ray:{ray.util.get_node_ip_address()}:{os.getpid()}"
        self.incarnation = f"{self.name}/{uuid.uuid4().hex}"  # new each time Ray restarts the actor

    def ready(self) -> str:
        """Which process this actor is now; the driver compares it across a failed call to
        tell a worker that died (a restarted actor answers anew) from one that did not."""
        return self.incarnation

    def run(self, path: str, key: str, fmt: str, opts: dict) -> dict:
        out = process_video(self.model, path, key, fmt, dict(opts, device=self.device), self.predict)
        out["worker"] = self.name
        return out


def start_local_ray(attempts: int = 2, **init_kwargs) -> None:
    """``ray.init`` a new local Ray instance, trying again when it fails to start.

    On a busy machine Ray's node can miss its own start-up deadlines (the raylet waits a
    fixed 15 s for its agent processes, the driver 30 s for the raylet). A failed attempt's
    processes are stopped before the next one. Raises the last error."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**init_kwargs)
            return
        except Exception as e:
            _stop_half_started_node(e)
            if attempt == attempts:
                raise


def _stop_half_started_node(exc: BaseException) -> None:
    """Stop the processes of a Ray node whose start failed: ray.init does not keep the
    half-built node object, but the failed constructor's frame in the traceback does."""
    tb = exc.__traceback__
    node_cls = getattr(getattr(getattr(ray, "_private", None), "node", None), "Node", None)
    while tb is not None:
        node = tb.tb_frame.f_locals.get("self")
        if node_cls is not None and isinstance(node, node_cls):
            try:
                node.kill_all_processes(check_alive=False, allow_graceful=False)
            except Exception:
                pass
            return
        tb = tb.tb_next


def _connect(address: str) -> bool:
    """Start or join Ray unless this process already did; True when we did (and so shut down)."""
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        if address == "local":
            start_local_ray(object_store_memory=LOCAL_OBJECT_STORE, **kw)
        else:
            ray.init(address=address, **kw)
    except Exception as e:
        if address == "local":
            raise CorpusError(f"--ray: could not start a local Ray ({one_line(e)}); on a busy machine start it "
                              "yourself (ray start --head) and use --ray-address auto") from None
        raise CorpusError(f"--ray-address {address}: could not join the Ray cluster: {one_line(e)}") from None
    return True


def _death_reason(e: BaseException) -> str:
    """A short reason for a worker's death out of Ray's long message."""
    text = str(e)
    for marker in ("The actor died unexpectedly", "The actor is dead", "Worker exit", "exit_code", "OOM",
                   "killed"):
        i = text.find(marker)
        if i >= 0:
            return one_line(Exception(text[i:]))
    return f"{type(e).__name__}: {one_line(e)}"


@dataclass
class _Video:
    job: object
    attempt: int = 1                            # the attempt it is on
    errors: list = field(default_factory=list)  # why earlier attempts ended
    bounces: int = 0                            # failed calls without a worker death, in a row
    sent_to: str = ""                           # the worker incarnation the last call went to
    reason: str = ""                            # why the last call failed


def _drive(jobs, actors: list, incarnations: list, new_actor: Callable, fmt: str, opts: dict,
           record: Callable, retries: int, log: Callable[[str], None]) -> None:
    """Keep one video in flight on each actor until all are recorded.

    A call that fails with a RayActorError does not say whether the video ran: the one that
    killed its worker gets "Socket closed, may or may not have been executed", and a call
    that reaches an actor Ray is restarting gets "the actor is restarting". So the driver
    pings the actor (`ready`, which waits for a restart to finish, with backoff while Ray
    reports it unavailable) and compares the answer with the incarnation the video was sent
    to: a new incarnation means the worker died with the video on it, which counts as an
    attempt; the same one means the video never ran there, and it is sent again as it was.
    `actors` is updated in place when an actor that is gone for good is replaced."""
    _Driver(jobs, actors, incarnations, new_actor, fmt, opts, record, retries, log).loop()


class _Driver:
    """The state of `_drive`: videos queued, calls in flight (ref -> (kind, actor index,
    video, ping tries, ping start)) and pings to send again later ((when, actor index,
    video, tries, ping start))."""

    def __init__(self, jobs, actors, incarnations, new_actor, fmt, opts, record, retries, log):
        self.queue = deque(_Video(j) for j in jobs)
        self.actors, self.incarnations, self.new_actor = actors, incarnations, new_actor
        self.fmt, self.opts, self.record, self.retries, self.log = fmt, opts, record, retries, log
        self.pending: dict = {}
        self.later: list = []

    def loop(self) -> None:
        for i in range(len(self.actors)):
            if self.queue:
                self.run(i, self.queue.popleft())
        while self.pending or self.later:
            now = time.monotonic()
            for item in [x for x in self.later if x[0] <= now]:
                self.later.remove(item)
                self.ping(*item[1:])
            for kind, i, video, tries, since in self.pending.values():
                if kind == "ping" and now - since > RESTART_TIMEOUT:
                    raise CorpusError(f"a Ray worker did not come back within {RESTART_TIMEOUT:g} s after "
                                      f"failing on {video.job.path} ({video.reason})")
            if not self.pending:
                time.sleep(max(0.0, min(x[0] for x in self.later) - now))
                continue
            wait = min([x[0] - now for x in self.later] + [5.0])
            done, _ = ray.wait(list(self.pending), num_returns=1, timeout=max(0.0, wait))
            if done:
                kind, i, video, tries, since = self.pending.pop(done[0])
                if kind == "run":
                    self.ran(done[0], i, video)
                else:
                    self.pinged(done[0], i, video, tries, since)

    def run(self, i: int, video: _Video) -> None:
        video.sent_to = self.incarnations[i]
        ref = self.actors[i].run.remote(video.job.path, video.job.key, self.fmt, self.opts)
        self.pending[ref] = ("run", i, video, 0, 0.0)

    def ping(self, i: int, video: _Video, tries: int, since: float) -> None:
        self.pending[self.actors[i].ready.remote()] = ("ping", i, video, tries, since)

    def finish(self, i: int, video: _Video, outcome: dict) -> None:
        outcome["attempts"] = video.attempt
        if video.errors:
            outcome["retried_after"] = video.errors
        self.record(video.job, outcome, outcome.pop("worker", "ray"))
        if self.queue:
            self.run(i, self.queue.popleft())

    def ran(self, ref, i: int, video: _Video) -> None:
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayActorError as e:  # died, or never ran: ask the actor
            video.reason = _death_reason(e)
            self.ping(i, video, 0, time.monotonic())
            return
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None) or e
            outcome = {"status": "failed", "seconds": None, "error": one_line(cause, video.job.key, video.job.path)}
        self.finish(i, video, outcome)

    def pinged(self, ref, i: int, video: _Video, tries: int, since: float) -> None:
        gone = getattr(ray.exceptions, "ActorDiedError", ())
        try:
            self.incarnations[i] = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            if gone and isinstance(e, gone):
                self.actors[i] = self.new_actor()  # gone for good (not restartable): a new actor takes its place
            self.later.append((time.monotonic() + min(0.5 * 2 ** tries, 10.0), i, video, tries + 1, since))
            return
        if self.incarnations[i] == video.sent_to:  # the same worker: the video did not kill it
            video.bounces += 1
            if video.bounces < MAX_BOUNCES:
                self.run(i, video)
            else:
                self.finish(i, video, {"status": "failed", "seconds": None,
                                       "error": f"Ray failed to run it {MAX_BOUNCES} times in a row: {video.reason}"})
            return
        video.bounces = 0
        video.errors = video.errors + [video.reason]
        if video.attempt <= self.retries:
            self.log(f"dfer: a worker died on {printable(video.job.path)} ({video.reason}); trying again "
                     f"(attempt {video.attempt + 1} of {self.retries + 1})")
            video.attempt += 1
            self.run(i, video)
        else:
            self.finish(i, video, {"status": "failed", "seconds": None,
                                   "error": f"the worker died on each of {video.attempt} attempts: {video.reason}"})


def run_ray(jobs, ckpt, fmt: str, opts: dict, record: Callable, *, address: str = "local",
            workers: Optional[int] = None, gpus_per_worker: float = 0.0, device: str = "auto",
            threads: Optional[int] = None, retries: int = 2, predict: Optional[Callable] = None,
            log: Callable[[str], None] = print) -> None:
    """Predict `jobs` (corpus.Job) on Ray actors; `record(job, outcome, worker)` is called
    in this process as each video finishes, in completion order."""
    if ray is None:
        raise CorpusError("--ray needs Ray, which is not installed: pip install 'dfer[ray]'")
    if retries < 0:
        raise CorpusError(f"retries {retries}: must be >= 0")
    started = _connect(address)
    try:
        cpus = int(threads or 1)
        resources = ray.cluster_resources()
        if gpus_per_worker > 0:
            if resources.get("GPU", 0) < gpus_per_worker:
                raise CorpusError(f"--gpus-per-worker {gpus_per_worker}: the Ray cluster has "
                                  f"{resources.get('GPU', 0):g} GPUs; lower it or use a cluster with GPUs")
            fit = int(resources["GPU"] // gpus_per_worker)
            if device == "auto":
                device = "cuda"
        else:
            fit = int(resources.get("CPU", 1) // cpus)
        n = max(1, min(workers or fit or 1, len(jobs)))
        actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus_per_worker, max_restarts=-1,
                               max_task_retries=0)(CorpusWorker)
        actors = [actor_cls.remote(str(ckpt), device, cpus, predict) for _ in range(n)]
        try:
            incarnations = ray.get([a.ready.remote() for a in actors])
        except Exception as e:
            cause = getattr(e, "cause", None) or e
            raise CorpusError(f"cannot use checkpoint {ckpt} on the Ray workers: {one_line(cause, ckpt)}") from None

        _drive(jobs, actors, incarnations, lambda: actor_cls.remote(str(ckpt), device, cpus, predict),
               fmt, opts, record, retries, log)
        for actor in actors:
            ray.kill(actor)
    finally:
        if started:
            ray.shutdown()

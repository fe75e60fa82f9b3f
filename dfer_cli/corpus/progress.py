"""What a corpus run tells its user while it goes (a live line: done, failed, skipped, rate,
ETA) and when it ends (one summary line).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from dfer_cli.corpus.plan import Job
from dfer_cli.messages import printable


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


class CorpusInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a corpus run; `summary` says how far it got. Every result file in
    OUT is whole and listed in the manifest, and no temporary file is left."""

    def __init__(self, summary: Summary):
        super().__init__()
        self.summary = summary

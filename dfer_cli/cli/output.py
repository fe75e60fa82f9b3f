"""Where `dfer predict` writes: stdout (with a progress bar on stderr kept apart from the
records), a file written whole, per-video --annotate/--plot paths, and the speed line.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from dfer_cli.cli.app import EXIT_STDOUT_CLOSED, fail
from dfer_cli.messages import printable

FORMAT_BY_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "table"}


def check_live_inputs(items: list[tuple[str, Optional[str]]], *, output_dir, annotate, plot) -> None:
    """Refuse (exit 2) the options a live input cannot take: it is read once, so it can
    neither be resumed in an output folder nor read again to draw on."""
    from dfer_cli.video.live import is_stream

    streams = [p for p, err in items if err is None and is_stream(p)]
    if not streams:
        return
    name = "standard input (-)" if streams[0] == "-" else streams[0]
    if output_dir is not None:
        fail(f"{name} is a live input: --output-dir resumes video files only; "
             "use --output FILE, or save the stream to a file first", 2)
    for flag, given in (("--annotate", annotate), ("--plot", plot)):
        if given:
            fail(f"{name} is a live input, read once: {flag} needs a video file to read again; "
                 "save the stream to a file first", 2)


def output_paths(spec: Optional[str], videos: list[str], suffix: str, option: str) -> dict[str, Path]:
    """Where `--annotate` / `--plot` write for each video.

    - A value containing ``{stem}`` (the input's file name without suffix) or ``{index}``
      (its 1-based position among the videos) is a pattern, filled in per video.
    - Otherwise, with one video and a value that is not an existing directory (and does not
      end in ``/``), it is the output file.
    - Otherwise it is a directory (created if needed) receiving ``<stem><suffix>`` per video.

    Two videos mapping to the same file, or an output equal to its input, is a usage error
    (exit 2), raised before any work starts.
    """
    if not spec:
        return {}
    paths: dict[str, Path] = {}
    is_dir = spec.endswith(("/", os.sep)) or Path(spec).expanduser().is_dir()
    for i, video in enumerate(videos, 1):
        stem = Path(video).stem
        if "{stem}" in spec or "{index}" in spec:
            p = Path(spec.replace("{stem}", stem).replace("{index}", str(i)))
        elif len(videos) == 1 and not is_dir:
            p = Path(spec)
        else:
            p = Path(spec) / f"{stem}{suffix}"
        paths[video] = p.expanduser()
    by_target: dict[Path, str] = {}
    for video, p in paths.items():
        target = p.resolve()
        if target == Path(video).resolve():
            fail(f"{option} {spec}: would overwrite the input {video}; choose another name", 2)
        if target in by_target:
            fail(f"{option} {spec}: {by_target[target]} and {video} would both write {p}; "
                 "use a pattern with {index}, e.g. out/{index}-{stem}" + suffix, 2)
        by_target[target] = video
    return paths


def check_render_formats(annotate_to: dict[str, Path], plot_to: dict[str, Path]) -> None:
    """Refuse, as a usage error (exit 2) before any video is read, an --annotate path whose
    suffix is not a video container dfer can write, or a --plot path whose suffix is not an
    image format matplotlib can write."""
    from dfer_cli.render import plot_format, video_container

    for option, targets, check in (("--annotate", annotate_to, video_container), ("--plot", plot_to, plot_format)):
        for p in dict.fromkeys(targets.values()):
            try:
                check(p)
            except ValueError as e:
                fail(f"{option} {p}: {e}", 2)


def default_format(output: Optional[Path]) -> str:
    """table on a terminal, else jsonl; with --output, the format its suffix names."""
    if output is not None:
        return FORMAT_BY_SUFFIX.get(output.suffix.lower(), "jsonl")
    return "table" if sys.stdout.isatty() else "jsonl"


class StdoutRecords:
    """Where records go without --output: `stream`, the stdout the command started with (the
    file or pipe it is redirected to, or the terminal), never rich's proxy, so records reach
    stdout whatever stderr is.

    When `stream` is a terminal while the progress bar is drawn (on stderr, usually the same
    terminal), text is held until flush() and written with the bar taken down, so that
    neither overwrites the other; every writer flushes after each record.
    """

    def __init__(self, stream, progress: "BatchProgress"):
        self.stream = stream
        self.progress = progress
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.held: list[str] = []

    def write(self, text: str) -> int:
        if self.tty and self.progress.live:
            self.held.append(text)
        else:
            try:
                self.stream.write(text)
            except BrokenPipeError:  # the reader went away: `dfer predict ... | head -1`
                raise StdoutClosed() from None
            except OSError as e:  # a full disk, /dev/full, an I/O error
                raise OutputFailed("standard output", e) from None
        return len(text)

    def flush(self) -> None:
        try:
            if self.held:
                text, self.held = "".join(self.held), []
                with self.progress.hidden():
                    self.stream.write(text)
                    self.stream.flush()
            else:
                self.stream.flush()
        except BrokenPipeError:
            raise StdoutClosed() from None
        except OSError as e:
            raise OutputFailed("standard output", e) from None

    def isatty(self) -> bool:
        return self.tty


class FileOut:
    """The --output file's stream, with a failed write (a full disk) raised as OutputFailed."""

    def __init__(self, stream, name: str):
        self.stream, self.name = stream, name

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as e:
            raise OutputFailed(f"--output {self.name}", e) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as e:
            raise OutputFailed(f"--output {self.name}", e) from None

    def isatty(self) -> bool:
        return False


class StdoutToStderr:
    """sys.stderr looked up at each write: stands in for sys.stdout while videos are processed,
    so that a stray print() (from a library) cannot land among the records; while the
    progress bar is live, sys.stderr is rich's proxy that prints above the bar."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class BatchProgress:
    """A rich progress bar on stderr (only when stderr is a terminal and not --quiet): per
    video, "video k of n" in a batch, the file name, the share of the video decoded, the time
    spent and an ETA (from the rate so far); then `summary()`, the run's real-time factor.

    It never touches stdout: rich's stdout redirection is off, so records written to a
    file or pipe while the bar is drawn stay there (see StdoutRecords for stdout on a terminal).
    """

    def __init__(self, enabled: bool, total: int = 1):
        self.bar = None
        self.task = None
        self.total = total   # videos in the run (not counting inputs already known to be bad)
        self.started = 0     # videos started so far
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True, redirect_stdout=False)

    @property
    def enabled(self) -> bool:
        return self.bar is not None

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    @property
    def live(self) -> bool:
        """Whether the bar is drawn now."""
        return self.bar is not None and self.bar.live.is_started

    @contextmanager
    def hidden(self):
        """Take the bar off the terminal for the duration of the block, then draw it again."""
        if not self.live:
            yield
            return
        self.bar.stop()
        try:
            yield
        finally:
            self.bar.start()

    def start(self, name: str) -> None:
        """A new video: its bar, labelled "video k of n  NAME" in a batch, else "NAME"."""
        self.started += 1
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            from rich.markup import escape

            name = escape(printable(name))  # a name is shown, never read as markup or control codes
            label = f"video {self.started} of {self.total}  {name}" if self.total > 1 else name
            self.task = self.bar.add_task(label, total=None)
            self.bar.refresh()  # shown at once, however quickly the video then goes

    def update(self, done: float, total: Optional[float] = None) -> None:
        """The `progress` callback handed to predict_video: `done` out of `total` seconds."""
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done, total=total)

    def finish(self) -> None:
        if self.bar is not None and self.task is not None:
            task = self.bar.tasks[-1]
            self.bar.update(self.task, completed=task.total or 1, total=task.total or 1)

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        else:
            typer.echo(message, err=True)

    @property
    def callback(self):
        return self.update if self.bar is not None else None


def speed_line(videos: int, seconds_of_video: float, wall: float, startup: float | None = None) -> str:
    """The last line of a run on a terminal: how much video took how long to process, and
    apart from it the start-up (imports, model and detector load), which dominates short
    clips, e.g. "3 videos, 41.2 s of video processed in 9.8 s (4.2x real time); start-up 3.1 s"."""
    from dfer_cli.writers import counted

    factor = seconds_of_video / wall if wall > 0 else float("inf")
    line = (f"{counted(videos, 'video')}, {seconds_of_video:.1f} s of video processed in {wall:.1f} s "
            f"({factor:.1f}x real time)")
    return line if startup is None else f"{line}; start-up {startup:.1f} s"


class StdoutClosed(Exception):
    """stdout's reader went away (EPIPE): the run ends quietly (see exit_stdout_closed)."""


class OutputFailed(Exception):
    """Records could not be written (`what`: standard output or --output FILE) for `reason`."""

    def __init__(self, what: str, error: OSError):
        super().__init__(what)
        self.what = what
        self.reason = (error.strerror or str(error)).lower() if isinstance(error, OSError) else str(error)


def exit_stdout_closed() -> None:
    """End the run after stdout's reader closed the pipe: no message (nobody reads the
    output; the shell reports the status), exit 141. stdout is pointed at /dev/null first so
    that Python's own flush at exit does not print a BrokenPipeError."""
    quiet_stdout()
    raise typer.Exit(EXIT_STDOUT_CLOSED)


def to_stderr(line: str) -> None:
    """Write one line to stderr, past rich's redirect of it when one was left in place."""
    stream = sys.stderr
    stream = getattr(stream, "rich_proxied_file", None) or stream
    typer.echo(line, file=stream)


def quiet_stdout() -> None:
    """Point stdout's file descriptor at /dev/null, dropping what Python still buffers, so that
    its flush at exit cannot fail once more (EPIPE, a full disk) with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test's captured stdout)
        pass

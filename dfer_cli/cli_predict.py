"""`dfer` commands: predict, weights list, weights download (registered on the app of
dfer_cli.cli_app by dfer_cli.cli).

This module only parses flags, finds inputs and routes results to a writer; the work is
done by `dfer_cli.predict.predict_video`. torch, PyAV and matplotlib are imported inside
the commands so that `dfer --help` stays instant.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Callable, List, Optional

import typer

from dfer_cli.messages import one_line, printable
from dfer_cli.cli_app import (FORMAT_HELP, JSON_ALIAS_HELP, DferCommand, DferGroup, app, fail, output_format,
                              require_finite)
from dfer_cli.fsutil import PartialFile, path_problem
from dfer_cli.weights import DEFAULT_WEIGHTS

# Suffixes taken as videos when a directory is searched (files named on the command
# line are tried whatever their suffix).
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
    ".3gp", ".ts", ".mts", ".m2ts", ".ogv",
})

FORMAT_BY_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "table"}


# --------------------------------------------------------------------------- inputs

# Bytes of standard input read to tell a video stream from a list of paths.
STDIN_SNIFF = 512


class PrefixedReader:
    """A binary reader that gives back `head` (bytes already read from `raw`) and then the
    rest of `raw`: what PyAV reads when standard input turned out to be a video stream."""

    def __init__(self, head: bytes, raw):
        self.head, self.raw = head, raw

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self.raw.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        read1 = getattr(self.raw, "read1", None)
        # read1: whatever the pipe has now (at most n), so that a slow writer's bytes reach
        # the decoder as they arrive instead of after n of them have been gathered
        return read1(n) if read1 is not None and n is not None and n > 0 else self.raw.read(n)


class FdReader:
    """Standard input read straight from its file descriptor, without Python's buffered
    reader: a live stream is decoded in a thread of its own, and a read blocked there on a
    stalled pipe must not hold the buffered reader's lock, which the interpreter takes at exit
    (it would abort instead of exiting with the records kept)."""

    def __init__(self, fd: int = 0):
        self.fd = fd

    def read(self, n: int = -1) -> bytes:
        chunks, want = [], n if n is not None and n >= 0 else None
        got = 0
        while want is None or got < want:
            block = os.read(self.fd, (1 << 16) if want is None else want - got)
            if not block:
                break
            chunks.append(block)
            got += len(block)
        return b"".join(chunks)

    def read1(self, n: int = -1) -> bytes:
        return os.read(self.fd, n if n and n > 0 else 1 << 16)

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def seekable(self) -> bool:
        try:
            os.lseek(self.fd, 0, os.SEEK_CUR)
            return True
        except OSError:
            return False


def looks_like_video(head: bytes) -> bool:
    """Whether the first bytes of standard input are a video container rather than text (a
    list of paths): containers (MPEG-TS, Matroska, MP4, FLV, NUT, Ogg, AVI, raw YUV...) carry
    control bytes such as NUL in their first few hundred bytes; a list of file names has none
    except tab, CR and LF."""
    return any(b < 0x20 and b not in (0x09, 0x0A, 0x0D) for b in head) or b"\x7f" in head


# ISO base media (MP4, MOV, M4V, 3GP) box types that open a file: bytes 4-8 of its first box
ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
# The most of an MP4/MOV on standard input that is copied to a temporary file (bytes)
STDIN_SPOOL_LIMIT = int(os.environ.get("DFER_STDIN_SPOOL_LIMIT", str(4 << 30)))


def needs_whole_file(head: bytes) -> bool:
    """Whether a stream starting with `head` is an MP4/MOV-family file, whose index (moov)
    may sit at the end and so cannot be decoded from a pipe as it arrives (MPEG-TS,
    Matroska/WebM, FLV and the like can)."""
    return len(head) >= 8 and head[4:8] in ISO_BOXES


def spool(head: bytes, raw, limit: int):
    """A temporary file (deleted when closed) holding `head` and the rest of `raw`, at its
    start; None when the input is longer than `limit` bytes."""
    import tempfile

    tmp = tempfile.TemporaryFile(prefix="dfer-stdin-")
    tmp.write(head)
    total = len(head)
    while block := raw.read(1 << 20):
        total += len(block)
        if total > limit:
            tmp.close()
            return None
        tmp.write(block)
    tmp.seek(0)
    return tmp


def sniff_stdin(buffer=None, spool_limit: int | None = None) -> tuple[str, object]:
    """("stream", a binary reader of the whole input) when standard input (binary `buffer`,
    default sys.stdin.buffer) carries a video, else ("paths", its text). A terminal is
    always read as typed paths. An MP4/MOV on a pipe is first copied to a temporary file
    (a seekable reader; at most `spool_limit` bytes, else ("too large", the limit)), since
    its index may come last; live container formats are decoded as they arrive."""
    if buffer is None:
        try:
            buffer = FdReader(sys.stdin.fileno())
        except (AttributeError, ValueError, OSError):  # no real descriptor (a test's stdin)
            buffer = sys.stdin.buffer
    if getattr(buffer, "isatty", lambda: False)():
        return "paths", buffer.read().decode("utf-8", "surrogateescape")
    head = buffer.read(STDIN_SNIFF) or b""
    if looks_like_video(head):
        if needs_whole_file(head) and not _seekable(buffer):
            limit = STDIN_SPOOL_LIMIT if spool_limit is None else spool_limit
            whole = spool(head, buffer, limit)
            return ("stream", whole) if whole is not None else ("too large", limit)
        return "stream", PrefixedReader(head, buffer)
    return "paths", (head + (buffer.read() or b"")).decode("utf-8", "surrogateescape")


def _seekable(buffer) -> bool:
    try:
        return bool(buffer.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def collect_inputs(specs: list[str], recursive: bool = False, stdin=None,
                   live: Optional[dict] = None) -> list[tuple[str, Optional[str]]]:
    """Expand the INPUT arguments into (path, error) pairs, in order, without duplicates.

    A file is taken as is; a directory contributes its videos (by suffix, sorted; all
    subfolders too with `recursive`); ``-`` reads one path per line from `stdin` (blank
    lines and lines starting with ``#`` are ignored), unless standard input carries a video
    stream (`sniff_stdin`): then ``-`` is that live input and `live["-"]` (when a dict is
    given) receives the reader to decode it from. A URL, a named pipe or a device named as
    an argument is a live input too (`video.is_stream`). `error` is None for a usable path, else
    the reason it cannot be processed (missing, a broken symlink or a symlink loop, a FIFO,
    unreadable, empty, an empty directory, ``~user`` of an unknown user, ...): every path is
    checked here, so that bad inputs are reported before the model is loaded.
    """
    out: list[tuple[str, Optional[str]]] = []
    seen: set[str] = set()

    def add(path: str, error: Optional[str] = None) -> None:
        key = os.path.normpath(path)
        if key not in seen:
            seen.add(key)
            out.append((path, error))

    def expand(spec: str, named: bool = True) -> None:
        from dfer_cli.video import is_stream

        if named and is_stream(spec):  # named on the command line: read as a stream
            add(spec)
            return
        try:
            p = Path(spec).expanduser()
        except RuntimeError:  # ~name of a user this system does not know
            user = spec.split("/", 1)[0]
            add(spec, f"cannot expand {user}: no such user; write the path out in full")
            return
        try:
            is_dir = p.is_dir()
        except OSError:  # a folder on the way cannot be entered: path_problem names it
            is_dir = False
        if is_dir:
            try:
                entries = list(p.rglob("*") if recursive else p.iterdir())
            except OSError as e:
                add(spec, f"cannot list this directory ({(e.strerror or str(e)).lower()}); "
                          "make it readable or name its videos")
                return
            # Entries named like videos that are not readable regular files (a dangling
            # symlink, a symlink loop, a FIFO, an empty file...) are reported, not dropped;
            # folders are passed over (searched with --recursive).
            found = sorted((q, path_problem(q)) for q in entries
                           if q.suffix.lower() in VIDEO_SUFFIXES and not q.name.startswith(".")
                           and not q.is_dir())
            if not found:
                hint = "" if recursive else " (add --recursive to search subfolders)"
                add(spec, f"no video files in this directory{hint}")
            for q, problem in found:
                add(str(q), problem)
            if recursive:  # rglob passes over subfolders it cannot list: name them
                for e in _unlistable(p):
                    add(str(e.filename), f"cannot list this directory ({(e.strerror or str(e)).lower()}); make it "
                                         "readable or name its videos")
        else:
            add(str(p) if spec.startswith("~") else spec, path_problem(p))

    for spec in specs:
        if spec == "-":
            if stdin is not None:
                text = stdin.read()
            else:
                kind, payload = sniff_stdin()
                if kind == "too large":
                    add("-", f"an MP4/MOV on standard input is read whole (its index may come last), and this one "
                             f"is over {payload / 2**30:.1f} GiB; pass its path instead, or pipe MPEG-TS "
                             "(ffmpeg -i IN -c copy -f mpegts -)")
                    continue
                if kind == "stream":
                    if live is not None:
                        live["-"] = payload
                    add("-")
                    continue
                text = payload
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    expand(line, named=False)  # a listed pipe or device is reported, never read
        else:
            expand(spec)
    return out


def _unlistable(folder: Path) -> list[OSError]:
    """The errors of the subfolders of `folder` that cannot be listed (no read or search
    permission), in walk order."""
    errors: list[OSError] = []
    for _ in os.walk(folder, onerror=errors.append):
        pass
    return [e for e in errors if getattr(e, "filename", None) and os.path.normpath(e.filename) != os.path.normpath(folder)]


def check_live_inputs(items: list[tuple[str, Optional[str]]], *, output_dir, annotate, plot) -> None:
    """Refuse (exit 2) the options a live input cannot take: it is read once, so it can
    neither be resumed in an output folder nor read again to draw on."""
    from dfer_cli.video import is_stream

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


class _Stdout:
    """Where records go without --output: `stream`, the stdout the command started with (the
    file or pipe it is redirected to, or the terminal), never rich's proxy, so records reach
    stdout whatever stderr is.

    When `stream` is a terminal while the progress bar is drawn (on stderr, usually the same
    terminal), text is held until flush() and written with the bar taken down, so that
    neither overwrites the other; every writer flushes after each record.
    """

    def __init__(self, stream, progress: "_Progress"):
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
                raise _StdoutClosed() from None
            except OSError as e:  # a full disk, /dev/full, an I/O error
                raise _OutputFailed("standard output", e) from None
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
            raise _StdoutClosed() from None
        except OSError as e:
            raise _OutputFailed("standard output", e) from None

    def isatty(self) -> bool:
        return self.tty


class _FileOut:
    """The --output file's stream, with a failed write (a full disk) raised as _OutputFailed."""

    def __init__(self, stream, name: str):
        self.stream, self.name = stream, name

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as e:
            raise _OutputFailed(f"--output {self.name}", e) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as e:
            raise _OutputFailed(f"--output {self.name}", e) from None

    def isatty(self) -> bool:
        return False


class _Stderr:
    """sys.stderr looked up at each write: stands in for sys.stdout while videos are processed,
    so that a stray print() (from a library) cannot land among the records; while the
    progress bar is live, sys.stderr is rich's proxy that prints above the bar."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _Progress:
    """A rich progress bar on stderr (only when stderr is a terminal and not --quiet): per
    video, "video k of n" in a batch, the file name, the share of the video decoded, the time
    spent and an ETA (from the rate so far); then `summary()`, the run's real-time factor.

    It never touches stdout: rich's stdout redirection is off, so records written to a
    file or pipe while the bar is drawn stay there (see _Stdout for stdout on a terminal).
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


# --------------------------------------------------------------------------- predict

@app.command("predict", cls=DferCommand)
def predict_cmd(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...",
                                       help="Video files, directories of videos, live inputs (a URL, a named pipe, a "
                                                 "device such as /dev/video0), or -: a video stream on stdin "
                                                 "(MPEG-TS, Matroska...) or paths, one per line."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", metavar="NAME|PATH",
                                          help="Checkpoint name (see `dfer weights list`) or .safetensors path.",
                                          show_default=DEFAULT_WEIGHTS),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips per model forward pass."),
    window: float = typer.Option(2.0, "--window", min=0.01, help="Clip length in seconds."),
    stride: float = typer.Option(1.0, "--stride", min=0.01, help="Seconds between clip starts."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Classify every face track, not only the main face."),
    min_face: Optional[float] = typer.Option(None, "--min-face",
                                             help="Smallest face to detect: a fraction of the frame's "
                                                  "shorter side (<= 1) or pixels (> 1).", show_default="0.1"),
    min_score: Optional[float] = typer.Option(None, "--min-score", min=0.0, max=1.0,
                                              help="Smallest MTCNN detection confidence (0..1) a face is kept "
                                                   "with.", show_default="0.9"),
    detect_size: Optional[int] = typer.Option(None, "--detect-size", min=32,
                                              help="Detect faces on a copy scaled to at most this many pixels on the "
                                                   "longer side.", show_default="640"),
    detection: str = typer.Option("keyframe", "--detector", metavar="keyframe|full",
                                  help="keyframe: MTCNN's whole pyramid only on key frames (1 s apart, at cuts "
                                       "and after a frame without faces), faces followed between them on crops "
                                       "(boxes within a few %, the same labels on the examples); full: the whole "
                                       "pyramid on every detected frame."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="table|json|jsonl|csv",
                                      help="Output format.",
                                      show_default="table on a terminal, else jsonl; with --output, from its suffix"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE",
                                          help="Write results to FILE instead of stdout.", show_default="stdout"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Search directories recursively."),
    stall_timeout: float = typer.Option(30.0, "--stall-timeout", min=0.0, metavar="SECONDS",
                                        help="A live input (stdin, a pipe, a URL, a device) that sends no frame for "
                                             "this long is taken as ended there (0: wait for ever)."),
    annotate: Optional[str] = typer.Option(None, "--annotate", metavar="OUT",
                                           help="Write an annotated video. Several inputs: a directory or a "
                                                "pattern with {stem} / {index}."),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="IMAGE",
                                       help="Write a timeline plot (.png, .jpg, .pdf, .svg...). Several inputs: "
                                            "a directory or a pattern with {stem} / {index}."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, metavar="N", help="CPU threads for torch.",
                                          show_default="torch's choice"),
    tta: str = typer.Option("none", "--tta", metavar="none|flip",
                            help="Test-time augmentation: flip averages each clip with its mirror image "
                                 "(twice the model cost)."),
    precision: str = typer.Option("auto", "--precision", metavar="auto|fp32|bf16|fp16",
                                  help="What the model computes in: auto is float16 on CUDA, bfloat16 on a CPU "
                                       "with native bfloat16 (AVX512-BF16, AMX; probabilities within 0.02 of "
                                       "fp32), else fp32."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary on stderr (errors still)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", metavar="OUT",
                                              help="One result file per video in OUT and a manifest; a rerun skips "
                                                   "videos already done (docs/corpus.md)."),
    force: bool = typer.Option(False, "--force", help="With --output-dir: redo the videos already done."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N",
                                        help="With --output-dir: only shard K of N (K from 1), chosen by a hash "
                                             "of each resolved path."),
    ray: bool = typer.Option(False, "--ray", help="With --output-dir: spread the videos over Ray workers "
                                                  "(a local Ray unless --ray-address)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="ADDRESS",
                                              help="Implies --ray: auto joins the running cluster, or HOST:PORT / "
                                                   "ray://HOST:PORT.", show_default="start a local Ray"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          metavar="N", help="With --ray: worker processes.",
                                          show_default="as many as the CPUs allow"),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0,
                                          help="With --ray: GPUs per worker (a fraction shares one GPU)."),
) -> None:
    """Classify the facial expressions in videos, clip by clip and face by face.

    Each probability estimates the share of people who would name that expression for the
    face (the default weights learned from crowd votes and are calibrated to them).

    Exit status: 0 every input done, 1 some input failed (the rest are still done), 2 usage error,
    130 interrupted (Ctrl-C), 141 stdout closed by its reader (e.g. `| head`), 143 terminated
    (SIGTERM).
    """
    require_finite({"--window": window, "--stride": stride, "--min-face": min_face, "--min-score": min_score,
                    "--stall-timeout": stall_timeout})
    from dfer_cli import cli_app

    if cli_app.STDOUT_CLOSED and not output and not output_dir:
        fail("standard output is closed (>&-), so the records would be lost; redirect it to a file or pass "
             "-o FILE", 2)
    fmt, fmt_given = _check_options(fmt, output, tta, detection, min_face)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        fail(f"--precision {precision}: expected auto, fp32, bf16 or fp16", 2)
    if precision != "auto" and output_dir is not None:
        fail("--precision works on single runs; corpus runs (--output-dir) choose it themselves", 2)
    live: dict = {}
    items = collect_inputs(inputs, recursive=recursive, live=live)
    if not items:
        fail("no inputs: give video files, directories, or - with paths on stdin", 2)
    check_live_inputs(items, output_dir=output_dir, annotate=annotate, plot=plot)
    from dfer_cli.corpus import corpus_command, detector_options  # --output-dir...: runs and exits when given

    detector = detector_options(min_face=min_face, detect_size=detect_size, min_score=min_score,
                                detection=detection)
    corpus_command(items, output_dir=output_dir, fmt=fmt, fmt_given=fmt_given, output=output, annotate=annotate,
                   plot=plot, shard=shard, force=force, ray=ray_address or ("local" if ray else None),
                   workers=workers, gpus_per_worker=gpus_per_worker, weights=weights, device=device,
                   threads=threads, quiet=quiet, window=window, stride=stride, all_faces=all_faces,
                   batch_size=batch_size, tta=tta, **{"detection": None, **detector})
    videos = [p for p, err in items if err is None]
    renders = _render_targets(annotate, plot, videos)
    output = _check_output(output, videos)
    # Inputs that cannot be read (missing, a broken link, a FIFO, empty, ...) are reported
    # now, before seconds go into loading torch and the model; with none left, the model is
    # not loaded at all.
    for path, error in items:
        if error is not None:
            typer.echo(f"dfer: skipping {printable(path)}: {printable(error)}", err=True)
    try:
        model, dev = _load_checkpoint(weights, device, threads) if videos else (None, None)
    except KeyboardInterrupt:
        typer.echo("dfer: interrupted before any video was processed; nothing written", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if dev is not None:
        from dfer_cli.device import autocast_dtype

        try:
            autocast_dtype(dev, precision)
        except ValueError as e:
            fail(f"--precision: {e}", 2)
    run = _BatchRun(model, dict(window=window, stride=stride, all_faces=all_faces, batch_size=batch_size,
                                device=dev, tta=tta, stall_timeout=stall_timeout, precision=precision, **detector),
                    live, renders,
                    _Progress(not quiet and sys.stderr.isatty(), total=len(videos)))
    run.open_output(output, fmt)
    run.run(items)
    run.report(len(items), quiet)


def _check_options(fmt, output, tta, detection, min_face) -> tuple[str, bool]:
    """(the output format, whether it was given), after refusing bad option values (exit 2)."""
    from dfer_cli.writers import FORMATS

    fmt_given = fmt is not None
    fmt = fmt.lower() if fmt else default_format(output)
    if fmt not in FORMATS:
        fail(f"--format {fmt}: expected one of {', '.join(FORMATS)}", 2)
    if tta not in ("none", "flip"):
        fail(f"--tta {tta}: expected none or flip", 2)
    if detection not in ("full", "keyframe"):
        fail(f"--detector {detection}: expected full or keyframe", 2)
    if min_face is not None and min_face <= 0:
        fail(f"--min-face {min_face}: must be > 0 (a fraction <= 1 or pixels > 1)", 2)
    return fmt, fmt_given


def _render_targets(annotate, plot, videos: list[str]) -> list[tuple[str, dict, Callable]]:
    """(what, {video: destination}, render function) for --annotate and --plot."""
    annotate_to = output_paths(annotate, videos, ".annotated.mp4", "--annotate")
    plot_to = output_paths(plot, videos, ".timeline.png", "--plot")
    check_render_formats(annotate_to, plot_to)
    return [("annotated video", annotate_to, _annotate), ("timeline plot", plot_to, _plot)]


def _check_output(output: Optional[Path], videos: list[str]) -> Optional[Path]:
    """--output, with ~ expanded, after refusing one that is also an input (exit 2)."""
    if output is None:
        return None
    output = output.expanduser()
    for video in videos:
        if Path(video).resolve() == output.resolve():
            fail(f"--output {output}: would overwrite the input {video}; choose another name", 2)
    return output


class _NotedInterrupt:
    """While active (in the main thread), Ctrl-C (SIGINT) and SIGTERM (a job scheduler or
    `kill` stopping the run) raise KeyboardInterrupt, so that both keep the records written so
    far; the signal is noted in `seen` / `signum`, so that an interrupt swallowed on its way
    (inside a C library's callback) is not taken for the end of the input."""

    def __init__(self):
        self.seen, self.signum, self.previous = False, None, {}

    def __enter__(self) -> "_NotedInterrupt":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.seen, self.signum = True, signum
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> bool:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        return False


class _BatchRun:
    """One `dfer predict` run over its inputs without --output-dir: each video through
    `predict_video` in turn, records to one writer, a bad video reported and passed over,
    Ctrl-C and a closed stdout turned into their exit statuses."""

    def __init__(self, model, options: dict, live: dict, renders, progress: "_Progress"):
        self.model, self.options, self.live, self.renders, self.progress = model, options, live, renders, progress
        self.failed = self.done = self.truncated = self.finished = 0
        self.seconds_of_video = 0.0   # of the videos done, for the real-time factor
        self.sink = self.stream = self.writer = self.fmt = None
        self.sigint = _NotedInterrupt()   # replaced by the active one while `run` goes

    def open_output(self, output: Optional[Path], fmt: str) -> None:
        """The writer: to `output` (as FILE.partial until the run completes) or to stdout."""
        from dfer_cli.labels import CLASSES
        from dfer_cli.writers import make_writer

        if output is not None:
            try:
                output.parent.mkdir(parents=True, exist_ok=True)
                self.sink = PartialFile(output)
            except OSError as e:
                fail(f"--output {output}: cannot write it ({e.strerror or e}); choose a writable file path", 2)
            self.stream = _FileOut(self.sink.file, output)
        else:
            self.stream = _Stdout(sys.stdout, self.progress)
        # Without a model (every input was bad) the error records go out with dfer's 7 classes.
        classes = list(self.model.classes) if self.model is not None else CLASSES
        self.fmt, self.writer = fmt, make_writer(fmt, self.stream, classes)

    def run(self, items: list[tuple[str, Optional[str]]]) -> None:
        """Every input in order; exits 130 on Ctrl-C and 141 when stdout's reader goes away."""
        self.t0 = time.monotonic()
        self.videos = sum(err is None for _, err in items)
        stopped = None  # "interrupted" (Ctrl-C) or "closed" (the reader of stdout went away)
        try:
            with self.progress, redirect_stdout(_Stderr()), _NotedInterrupt() as self.sigint:
                for path, error in items:
                    self.one(path, error)
                self.writer.close()
                _work_done()  # the records are complete: a Ctrl-C from here on is too late to matter
        except KeyboardInterrupt:
            stopped = "interrupted"
        except _StdoutClosed:
            stopped = "closed"
        except _OutputFailed as e:
            from dfer_cli.writers import counted

            # the records so far stay where they were written (an --output's FILE.partial)
            typer.echo(f"dfer: cannot write {printable(e.what)} ({e.reason}); stopped after {self.finished} of "
                       f"{counted(self.videos, 'video')}: free some space or write the records elsewhere", err=True)
            if e.what == "standard output":
                _quiet_stdout()
            raise typer.Exit(1)
        except BaseException:
            if self.sink is not None:
                self.sink.abandon()
            raise
        if stopped == "closed":
            _exit_stdout_closed()
        if stopped == "interrupted":
            self.interrupted()
        if self.sink is not None:
            self.sink.commit()

    def one(self, path: str, error: Optional[str]) -> None:
        """One input: its records, or its error (reported above when `error` is given)."""
        if error is not None:
            self.failed += 1
            self.writer.error(path, error)
            return
        from dfer_cli.predict import predict_video

        self.progress.start(Path(path).name)
        notes = _VideoWarnings()
        try:
            with notes:
                result = predict_video(self.model, path, on_clip=self.writer.clip, progress=self.progress.callback,
                                       stdin=self.live.get(path), **self.options)
        except (KeyboardInterrupt, SystemExit, _StdoutClosed, _OutputFailed):
            raise
        except Exception as e:  # one bad file must not stop the batch
            error = one_line(e, path)
        if self.sigint.seen:
            # Ctrl-C while PyAV was reading a stream: PyAV turns the exception raised in its
            # read callback into the end of the stream, so it is raised here instead
            raise KeyboardInterrupt
        for line in notes.lines:
            self.progress.log(f"dfer: {line}")
        self.finished += 1
        if error is not None:
            self.failed += 1
            self.progress.log(f"dfer: skipping {printable(path)}: {printable(error)}")
            self.writer.error(path, error)
            return
        if notes.truncation is not None:  # keep what was decoded, say so in the record
            result.truncated = True
            # decoding may go on past damage in the middle: the duration covers every clip
            result.duration = max([notes.truncation.decoded, *(c.end for c in result.clips)])
            self.truncated += 1
        self.progress.finish()
        self.writer.video(result)
        self.done += 1
        self.seconds_of_video += result.duration or 0.0
        for what, targets, render in self.renders:
            if path in targets:
                try:
                    render(path, targets[path], result)
                except Exception as e:
                    self.failed += 1
                    self.progress.log(f"dfer: {printable(path)}: could not write the {what} {printable(targets[path])}: "
                                      f"{one_line(e, targets[path])}")

    def interrupted(self) -> None:
        """Ctrl-C or SIGTERM: keep what was written, say how far it got, exit 130 (143 for
        SIGTERM, the shell's 128 + signal number)."""
        import signal

        from dfer_cli.writers import counted

        if self.sink is not None:
            self.writer.close()  # JSON: the array of the videos finished so far, in the .partial file
            where = f"partial output in {self.sink.abandon()}"
        elif self.fmt == "json":
            where = "nothing written (--format json writes its array when every input is done)"
        else:
            try:
                self.stream.flush()
            except _StdoutClosed:
                pass
            where = "partial output on stdout"
        terminated = self.sigint.signum == signal.SIGTERM
        # past the progress bar: an interrupt inside its exit can leave sys.stderr redirected
        # into the bar, which is no longer drawn
        _to_stderr(f"dfer: {'terminated (SIGTERM)' if terminated else 'interrupted'} after {self.finished} of "
                   f"{counted(self.videos, 'video')}; {where}")
        raise typer.Exit(128 + signal.SIGTERM if terminated else EXIT_INTERRUPTED)

    def report(self, inputs: int, quiet: bool) -> None:
        """The summary lines on stderr, and exit status 1 when an input failed."""
        if not quiet and inputs > 1:
            typer.echo(f"dfer: {self.done} of {inputs} inputs done"
                       + (f", {self.truncated} truncated" if self.truncated else "")
                       + (f", {self.failed} failed" if self.failed else ""), err=True)
        if self.progress.enabled and self.done:  # a terminal, not --quiet: what the run cost
            from dfer_cli.cli_app import STARTED

            typer.echo(f"dfer: {speed_line(self.done, self.seconds_of_video, time.monotonic() - self.t0, self.t0 - STARTED)}",
                       err=True)
        if self.failed:
            raise typer.Exit(1)


# Exit status when the reader of stdout goes away (`dfer predict ... | head -1`): what the
# shell reports for a process killed by SIGPIPE (128 + 13), as for cat or grep in that place.
EXIT_STDOUT_CLOSED = 141
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def _load_checkpoint(weights: Optional[str], device: str, threads: Optional[int]):
    """Find, verify and load the checkpoint: (model, device). Exit 1 with one line when it is
    unusable (missing, damaged, not the registered bytes), 2 for a bad --device."""
    from dfer_cli.weights import find_weights

    try:
        ckpt = find_weights(weights or DEFAULT_WEIGHTS)
    except FileNotFoundError as e:  # also WeightsMismatchError: a registered name with other bytes
        fail(f"no usable checkpoint: {e}", 1)

    import torch

    from dfer_cli.checkpoint import load_model
    from dfer_cli.device import resolve_device

    if threads:
        torch.set_num_threads(threads)
    try:
        dev = resolve_device(device)
    except ValueError as e:
        fail(f"--device: {e}", 2)
    try:
        model = load_model(str(ckpt), device=dev)
    except (ValueError, OSError) as e:
        fail(f"cannot use checkpoint {ckpt}: {one_line(e, ckpt)}", 1)
    return model, dev


class _StdoutClosed(Exception):
    """stdout's reader went away (EPIPE): the run ends quietly (see _exit_stdout_closed)."""


class _OutputFailed(Exception):
    """Records could not be written (`what`: standard output or --output FILE) for `reason`."""

    def __init__(self, what: str, error: OSError):
        super().__init__(what)
        self.what = what
        self.reason = (error.strerror or str(error)).lower() if isinstance(error, OSError) else str(error)


def _exit_stdout_closed() -> None:
    """End the run after stdout's reader closed the pipe: no message (nobody reads the
    output; the shell reports the status), exit 141. stdout is pointed at /dev/null first so
    that Python's own flush at exit does not print a BrokenPipeError."""
    _quiet_stdout()
    raise typer.Exit(EXIT_STDOUT_CLOSED)


def _to_stderr(line: str) -> None:
    """Write one line to stderr, past rich's redirect of it when one was left in place."""
    stream = sys.stderr
    stream = getattr(stream, "rich_proxied_file", None) or stream
    typer.echo(line, file=stream)


def _work_done() -> None:
    """Every record is written: a Ctrl-C or SIGTERM from now on (while an --output file is
    put in place and the summary printed) would only turn a complete run into a reported
    interruption, so in the `dfer` process both are ignored until it exits."""
    import signal
    import threading

    from dfer_cli import cli_app

    if cli_app.STANDALONE and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _quiet_stdout() -> None:
    """Point stdout's file descriptor at /dev/null, dropping what Python still buffers, so that
    its flush at exit cannot fail once more (EPIPE, a full disk) with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test's captured stdout)
        pass


class _VideoWarnings:
    """Python warnings raised while one video is processed, caught so that each prints as
    one clean line (``dfer: <message>``) rather than Python's two-line form with a source
    excerpt. A TruncatedVideoWarning (the file ended early) is kept in `truncation`, and the
    video's record is marked from it; any other warning's first line goes to `lines`."""

    def __init__(self):
        self.truncation = None
        self.lines: list[str] = []

    def __enter__(self):
        from dfer_cli.video import TruncatedVideoWarning

        self._type = TruncatedVideoWarning
        self._catch = warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always", TruncatedVideoWarning)  # one per file, however many files
        return self

    def __exit__(self, *exc) -> bool:
        self._catch.__exit__(*exc)
        for w in self._caught:
            if isinstance(w.message, self._type):
                if self.truncation is None:
                    self.truncation = w.message
                    self.lines.append(str(w.message))
            else:
                self.lines.append(f"warning: {one_line(w.message)}")
        return False


def _annotate(path: str, dst: Path, result) -> None:
    from dfer_cli.render import annotate_video

    dst.parent.mkdir(parents=True, exist_ok=True)
    annotate_video(path, dst, result)


def _plot(path: str, dst: Path, result) -> None:
    from dfer_cli.render import plot_timeline

    plot_timeline(result, dst)


# --------------------------------------------------------------------------- weights

weights_app = typer.Typer(cls=DferGroup, help="Checkpoints: what is installed where, and explicit downloads.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def weights_inventory() -> dict:
    """Found checkpoints, known names not installed, and the search folders (for `weights list`)."""
    from dfer_cli.weights import DEFAULT_WEIGHTS, KNOWN, list_weights, search_dirs, weights_source

    found = []
    for name, path in list_weights():
        known = KNOWN.get(name)
        found.append({"name": name, "path": str(path), "source": weights_source(path),
                      "size_mb": round(path.stat().st_size / 1e6, 2), "default": name == DEFAULT_WEIGHTS,
                      "description": known.description if known else ""})
    names = {w["name"] for w in found}
    missing = [{"name": k.name, "description": k.description, "downloadable": bool(k.url and k.sha256),
                "default": k.name == DEFAULT_WEIGHTS}
               for k in KNOWN.values() if k.name not in names]
    return {"search_dirs": [{"path": str(d), "exists": d.is_dir()} for d in search_dirs()],
            "installed": found, "not_installed": missing}


@weights_app.command("list", cls=DferCommand)
def weights_list(
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="table|json", help=FORMAT_HELP,
                                      show_default="table"),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALIAS_HELP),
) -> None:
    """Checkpoints found (in $DFER_WEIGHTS_DIR, the user cache, the bundled weights/ folder)
    and known names that are not installed."""
    fmt = output_format(fmt, as_json)
    inv = weights_inventory()
    if fmt == "json":
        typer.echo(json.dumps(inv, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title="dfer weights", title_justify="left")
    for col in ("name", "where", "path", "MB", "about"):
        table.add_column(col)
    for w in inv["installed"]:
        table.add_row(w["name"] + (" (default)" if w["default"] else ""), w["source"], w["path"],
                      f"{w['size_mb']:.1f}", w["description"])
    for w in inv["not_installed"]:
        how = f"`dfer weights download {w['name']}`" if w["downloadable"] else "train it (`dfer train`)"
        table.add_row(w["name"] + (" (default)" if w["default"] else ""), "not installed", how, "",
                      w["description"])
    console.print(table)
    dirs = ", ".join(d["path"] + ("" if d["exists"] else " (absent)") for d in inv["search_dirs"])
    console.print(f"searched, in order: {dirs}", markup=False, highlight=False)


@weights_app.command("download", cls=DferCommand)
def weights_download(
    name: str = typer.Argument(..., metavar="SOURCE", help="A published name from `dfer weights list`, or the URL "
                               "(https, http, file) or path of a dfer checkpoint."),
    sha256: Optional[str] = typer.Option(None, "--sha256", metavar="HEX", help="The checkpoint's expected sha256 "
                                         "(needed for a URL or path; a published name has its own)."),
    save_as: Optional[str] = typer.Option(None, "--name", metavar="NAME", help="Install as NAME.safetensors, so "
                                          "that --weights NAME finds it.", show_default="the source's file name"),
    dest: Optional[Path] = typer.Option(None, "--dir", metavar="DIR", help="Folder to write to.",
                                        show_default="the user cache"),
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy is present."),
) -> None:
    """Download a checkpoint, verify its sha256 and dfer header, and put it where `--weights
    NAME` finds it. This is the only command that uses the network."""
    from urllib.parse import urlparse

    from dfer_cli.weights import KNOWN, DownloadError, download_weights

    if name not in KNOWN:
        if urlparse(name).scheme.lower() not in ("http", "https", "file") and not os.path.isfile(name):
            fail(f"unknown weights name {name!r}: known names are {', '.join(sorted(KNOWN))}; or give a URL or "
                 "file path of a dfer checkpoint with --sha256", 2)
        if not sha256:
            fail(f"{name}: give the checkpoint's expected sha256 with --sha256 HEX, so that it is verified "
                 "before it is installed", 2)
    bar = None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                       console=Console(stderr=True), transient=True)
    kw = dict(force=force, sha256=sha256, save_as=save_as)
    try:
        if bar is None:
            path = download_weights(name, dest, **kw)
        else:
            with bar:
                task = bar.add_task(name, total=None)
                path = download_weights(name, dest, progress=lambda d, t: bar.update(task, completed=d, total=t),
                                        **kw)
    except DownloadError as e:
        fail(str(e), 1)
    typer.echo(str(path))


@weights_app.command("export", cls=DferCommand)
def weights_export(
    src: str = typer.Argument(..., help="A checkpoint path or name (e.g. runs/x/best.safetensors)."),
    dst: Path = typer.Argument(..., help="The .safetensors file to write."),
    half: bool = typer.Option(True, "--half/--float32", help="Store floating tensors as float16 (half the size)."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, metavar="N", help="Make the exported model take "
                                         "clips of this many frames (e.g. 16 for a model trained on stills at 1).",
                                         show_default="the checkpoint's"),
    prior_shift: float = typer.Option(0.0, "--prior-shift", metavar="ALPHA",
                                      help="Add ALPHA * log(training class prior) to the "
                                      "classifier bias (post-hoc logit adjustment; needs the class counts in "
                                      "the checkpoint's provenance)."),
    detail_size: Optional[int] = typer.Option(None, "--detail-size", min=0, metavar="PX",
                                              help="Reduce video faces to PX x PX before resizing them to the "
                                              "input size: the training images' native side (48 for FER2013); "
                                              "0 removes it.", show_default="the checkpoint's"),
    member: Optional[int] = typer.Option(None, "--member", min=1, metavar="N",
                                         help="Of an ensemble, export only its N-th model (from 1), with the "
                                         "ensemble's prior shift in its classifier bias, e.g. to fine-tune it "
                                         "with `dfer train --init`."),
) -> None:
    """Copy a checkpoint for distribution: model, classes, preprocessing and provenance kept,
    tensors stored in half precision by default; prints the new file's sha256."""
    from dfer_cli.checkpoint import CheckpointError, load_model, save_checkpoint, with_num_frames
    from dfer_cli.weights import file_sha256

    if dst.suffix != ".safetensors":
        fail(f"{dst}: the exported file must end in .safetensors", 2)
    try:
        model = load_model(src)
    except (CheckpointError, FileNotFoundError) as e:
        fail(str(e), 1)
    source = Path(model.checkpoint_path).name
    if member is not None:
        from dfer_cli.models.ensemble import Ensemble, member_model

        if not isinstance(model, Ensemble):
            fail(f"{src}: --member picks a model of an ensemble, and this checkpoint is a single "
                 f"{model.model_name}; leave --member out", 2)
        try:
            model = member_model(model, member - 1)
        except IndexError:
            fail(f"{src}: --member {member}, but the ensemble has {len(model.members)} members; "
                 f"pick 1 to {len(model.members)}", 2)
    provenance = dict(model.provenance)
    provenance["exported_from"] = {"file": source, "dtype": "float16" if half else "float32"}
    if member is not None:
        provenance["exported_from"]["member"] = member
    if prior_shift:
        counts = (provenance.get("data") or {}).get("train_class_counts") or {}
        if sorted(counts) != sorted(model.classes):
            fail(f"{src}: --prior-shift needs the training class counts (provenance data.train_class_counts), "
                 "which this checkpoint does not have", 1)
        from dfer_cli.losses import shift_prior

        shift_prior(model, [counts[c] for c in model.classes], prior_shift)
        provenance["exported_from"]["prior_shift"] = prior_shift
    if detail_size is not None:
        if detail_size and not 8 <= detail_size <= model.preprocessing.input_size:
            fail(f"{src}: --detail-size {detail_size} must be from 8 to the model's input size "
                 f"({model.preprocessing.input_size}), or 0 for none", 2)
        model.preprocessing.detail_size = detail_size or None
    if frames is not None and frames != model.config.num_frames:
        provenance["exported_from"]["num_frames"] = model.config.num_frames
        try:
            model = with_num_frames(model, frames)
        except ValueError as e:
            fail(f"{src}: {e}", 1)
    save_checkpoint(dst, model, classes=model.classes, preprocessing=model.preprocessing,
                    provenance=provenance, half=half)
    typer.echo(f"{dst}  {dst.stat().st_size / 1e6:.2f} MB  sha256 {file_sha256(dst)}")


@weights_app.command("calibrate", cls=DferCommand)
def weights_calibrate(
    src: str = typer.Argument(..., help="A checkpoint path or name trained with --votes and --holdout."),
    dst: Path = typer.Argument(..., help="The .safetensors file to write."),
    data_root: Optional[str] = typer.Option(None, "--data-root", envvar="DFER_DATA_ROOT",
                                            help="The dataset root the model was trained on."),
    votes: List[str] = typer.Option([], "--votes", metavar="CSV", help="The vote CSV(s) it was trained with."),
    split: str = typer.Option("train", "--split", help="The training split (a sub-folder of --data-root)."),
    holdout: float = typer.Option(0.1, "--holdout", help="The --holdout fraction it was trained with."),
    holdout_seed: int = typer.Option(0, "--holdout-seed", help="The --holdout-seed it was trained with."),
    half: bool = typer.Option(True, "--half/--float32", help="Store floating tensors as float16 (half the size)."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help="torch CPU threads.",
                                          show_default="torch's choice"),
) -> None:
    """Fit a temperature on the images the model's training held out, so that each
    probability estimates the share of raters who would name that expression, and store it
    in the header (predict and eval apply it; labels do not change). Never fit it on the
    split you report."""
    from dfer_cli.calibration import calibrate
    from dfer_cli.checkpoint import CheckpointError, load_model, save_checkpoint
    from dfer_cli.weights import file_sha256

    if dst.suffix != ".safetensors":
        fail(f"{dst}: the calibrated file must end in .safetensors", 2)
    if not data_root:
        fail("no data: pass --data-root DIR (the dataset the model was trained on)", 2)
    if not votes:
        fail("no votes: pass --votes CSV (the vote file the model was trained with)", 2)
    for v in votes:
        if not os.path.isfile(v):
            fail(f"--votes {v}: no such file; give a CSV with a 'file' column and one column per class", 1)
    if not os.path.isdir(os.path.join(data_root, split)):
        fail(f"--data-root {data_root}: no {split}/ folder in it; pass the dataset root the model was trained on", 1)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        model = load_model(src)
        record = calibrate(model, data_root, votes, split=split, holdout=holdout, seed=holdout_seed)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        fail(f"{src}: {e}" if not str(e).startswith(str(src)) else str(e), 1)
    model.calibration = record
    save_checkpoint(dst, model, classes=model.classes, preprocessing=model.preprocessing,
                    provenance=dict(model.provenance), half=half)
    typer.echo(f"{dst}  temperature {record['temperature']:g}  mean KL on {record['fitted_on']}: "
               f"{record['mean_kl_before']:.4f} -> {record['mean_kl_after']:.4f}  sha256 {file_sha256(dst)}")


@weights_app.command("ensemble", cls=DferCommand)
def weights_ensemble(
    members: List[str] = typer.Argument(..., metavar="CHECKPOINT...", help="Two or more checkpoints (paths or "
                                        "names) of models with the same classes, clip length and face crops."),
    output: Path = typer.Option(..., "--output", "-o", metavar="OUT.safetensors", help="The ensemble file to write."),
    half: bool = typer.Option(True, "--half/--float32", help="Store floating tensors as float16 (half the size)."),
) -> None:
    """Combine checkpoints into one ensemble checkpoint that predicts the mean of their
    probabilities (models of other seeds or input sizes make different mistakes, so the
    mean is more accurate than either). It loads and predicts like any checkpoint; each
    member runs on every face, so it costs the sum of their model times. `dfer weights
    export` then sets its clip length, prior shift or detail size."""
    from dfer_cli.checkpoint import CheckpointError, load_model, save_checkpoint
    from dfer_cli.models.ensemble import combine
    from dfer_cli.weights import file_sha256

    if output.suffix != ".safetensors":
        fail(f"{output}: the ensemble file must end in .safetensors", 2)
    if len(members) < 2:
        fail(f"an ensemble needs at least 2 checkpoints, got {len(members)}; name each member", 2)
    models = []
    for spec in members:
        try:
            models.append(load_model(spec))
        except (CheckpointError, FileNotFoundError) as e:
            fail(str(e), 1)
    try:
        ensemble = combine(models, names=list(members))
    except ValueError as e:
        fail(str(e), 1)
    save_checkpoint(output, ensemble, classes=ensemble.classes, preprocessing=ensemble.preprocessing,
                    provenance=ensemble.provenance, half=half, sampling=ensemble.sampling)
    sizes = " + ".join(f"{m.config.input_size} px" for m in ensemble.members)
    typer.echo(f"{output}  {len(models)} members ({sizes})  {output.stat().st_size / 1e6:.2f} MB  "
               f"sha256 {file_sha256(output)}")

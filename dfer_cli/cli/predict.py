"""`dfer` commands: predict, weights list, weights download (registered on the app of
dfer_cli.cli.app by dfer_cli.cli.main).

This module only parses flags, finds inputs and routes results to a writer; the work is
done by `dfer_cli.predict.predict_video`. torch, PyAV and matplotlib are imported inside
the commands so that `dfer --help` stays instant.
"""
from __future__ import annotations

import sys
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Callable, List, Optional

import typer

from dfer_cli.cli.app import EXIT_INTERRUPTED, EXIT_TERMINATED, DferCommand, app, fail, require_finite
from dfer_cli.cli.output import (
    BatchProgress,
    FileOut,
    OutputFailed,
    StdoutClosed,
    StdoutRecords,
    StdoutToStderr,
    check_live_inputs,
    check_render_formats,
    default_format,
    exit_stdout_closed,
    output_paths,
    quiet_stdout,
    speed_line,
    to_stderr,
)
from dfer_cli.fsutil import PartialFile
from dfer_cli.interrupts import InterruptGuard
from dfer_cli.messages import one_line, printable
from dfer_cli.video.inputs import collect_inputs
from dfer_cli.weights import DEFAULT_WEIGHTS


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
    from dfer_cli.cli import app as cli_app

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
    from dfer_cli.cli.corpus import corpus_command  # --output-dir...: runs and exits when given
    from dfer_cli.corpus.plan import detector_options

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
                    live, renders, BatchProgress(not quiet and sys.stderr.isatty(), total=len(videos)))
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


class _BatchRun:
    """One `dfer predict` run over its inputs without --output-dir: each video through
    `predict_video` in turn, records to one writer, a bad video reported and passed over,
    Ctrl-C and a closed stdout turned into their exit statuses."""

    def __init__(self, model, options: dict, live: dict, renders, progress: "BatchProgress"):
        self.model, self.options, self.live, self.renders, self.progress = model, options, live, renders, progress
        self.failed = self.done = self.truncated = self.finished = 0
        self.seconds_of_video = 0.0   # of the videos done, for the real-time factor
        self.sink = self.stream = self.writer = self.fmt = None
        self.sigint = InterruptGuard()   # replaced by the active one while `run` goes

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
            self.stream = FileOut(self.sink.file, output)
        else:
            self.stream = StdoutRecords(sys.stdout, self.progress)
        # Without a model (every input was bad) the error records go out with dfer's 7 classes.
        classes = list(self.model.classes) if self.model is not None else CLASSES
        self.fmt, self.writer = fmt, make_writer(fmt, self.stream, classes)

    def run(self, items: list[tuple[str, Optional[str]]]) -> None:
        """Every input in order; exits 130 on Ctrl-C and 141 when stdout's reader goes away."""
        self.t0 = time.monotonic()
        self.videos = sum(err is None for _, err in items)
        stopped = None  # "interrupted" (Ctrl-C) or "closed" (the reader of stdout went away)
        try:
            with self.progress, redirect_stdout(StdoutToStderr()), InterruptGuard() as self.sigint:
                for path, error in items:
                    self.one(path, error)
                self.writer.close()
                _work_done()  # the records are complete: a Ctrl-C from here on is too late to matter
        except KeyboardInterrupt:
            stopped = "interrupted"
        except StdoutClosed:
            stopped = "closed"
        except OutputFailed as e:
            from dfer_cli.writers import counted

            # the records so far stay where they were written (an --output's FILE.partial)
            typer.echo(f"dfer: cannot write {printable(e.what)} ({e.reason}); stopped after {self.finished} of "
                       f"{counted(self.videos, 'video')}: free some space or write the records elsewhere", err=True)
            if e.what == "standard output":
                quiet_stdout()
            raise typer.Exit(1)
        except BaseException:
            if self.sink is not None:
                self.sink.abandon()
            raise
        if stopped == "closed":
            exit_stdout_closed()
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
        except (KeyboardInterrupt, SystemExit, StdoutClosed, OutputFailed):
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
            except StdoutClosed:
                pass
            where = "partial output on stdout"
        terminated = self.sigint.signum == signal.SIGTERM
        # past the progress bar: an interrupt inside its exit can leave sys.stderr redirected
        # into the bar, which is no longer drawn
        to_stderr(f"dfer: {'terminated (SIGTERM)' if terminated else 'interrupted'} after {self.finished} of "
                   f"{counted(self.videos, 'video')}; {where}")
        raise typer.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)

    def report(self, inputs: int, quiet: bool) -> None:
        """The summary lines on stderr, and exit status 1 when an input failed."""
        if not quiet and inputs > 1:
            typer.echo(f"dfer: {self.done} of {inputs} inputs done"
                       + (f", {self.truncated} truncated" if self.truncated else "")
                       + (f", {self.failed} failed" if self.failed else ""), err=True)
        if self.progress.enabled and self.done:  # a terminal, not --quiet: what the run cost
            from dfer_cli.cli.app import STARTED

            typer.echo(f"dfer: {speed_line(self.done, self.seconds_of_video, time.monotonic() - self.t0, self.t0 - STARTED)}",
                       err=True)
        if self.failed:
            raise typer.Exit(1)


# Exit status when the reader of stdout goes away (`dfer predict ... | head -1`): what the
# shell reports for a process killed by SIGPIPE (128 + 13), as for cat or grep in that place.


def _load_checkpoint(weights: Optional[str], device: str, threads: Optional[int]):
    """(model, device) from `models.inference.load_for_inference`; exit 1 with one line when
    the checkpoint is unusable (missing, damaged, not the registered bytes), 2 for a bad --device."""
    from dfer_cli.checkpoint import CheckpointError
    from dfer_cli.device import DeviceError
    from dfer_cli.models.inference import load_for_inference

    try:
        return load_for_inference(weights or DEFAULT_WEIGHTS, device, threads)
    except DeviceError as e:
        fail(f"--device: {e}", 2)
    except CheckpointError as e:
        fail(str(e), 1)


def _work_done() -> None:
    """Every record is written: a Ctrl-C or SIGTERM from now on (while an --output file is
    put in place and the summary printed) would only turn a complete run into a reported
    interruption, so in the `dfer` process both are ignored until it exits."""
    import signal
    import threading

    from dfer_cli.cli import app as cli_app

    if cli_app.STANDALONE and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


class _VideoWarnings:
    """Python warnings raised while one video is processed, caught so that each prints as
    one clean line (``dfer: <message>``) rather than Python's two-line form with a source
    excerpt. A TruncatedVideoWarning (the file ended early) is kept in `truncation`, and the
    video's record is marked from it; any other warning's first line goes to `lines`."""

    def __init__(self):
        self.truncation = None
        self.lines: list[str] = []

    def __enter__(self):
        from dfer_cli.video.decode import TruncatedVideoWarning

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



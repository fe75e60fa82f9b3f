"""Output formats of `dfer predict`: one writer per format.

Every writer gets the same three calls, in this order for each input:

- ``clip(ClipPrediction)`` as each clip is classified (streaming formats write it at once),
- ``video(VideoResult)`` when a video is done, or ``error(video, message)`` when it failed,

and ``close()`` at the end. Records are those of `dfer_cli.results` (see docs/predict.md):

- ``jsonl``: one JSON object per line, flushed as produced: ``clip`` records, then one
  ``video`` record per video; ``error`` records for inputs that failed.
- ``json``: one JSON array, written at the end, with one object per input in input order:
  the ``video`` record with its clip records under ``"clips"``, or the ``error`` record.
- ``csv``: one row per clip (streamed), one ``track`` row per face track when the video is
  done (its ``status`` is the number of classified clips: "1 clip", "3 clips"), a ``video``
  row for a video with no face, an ``error`` row for a failed input.
  Probabilities are one column per class, named ``p_<class>``; the ``video`` record's
  provenance (``PROVENANCE``: frame rate, window, stride, model, weights' sha256, dfer and
  schema versions) fills the last columns of the ``track`` and ``video`` rows.
- ``table``: a rich table per video and a one-line summary (for people, not programs).

JSON output is strict JSON: a non-finite number (NaN, infinity) is written as null, and
as an empty cell in CSV.
"""
from __future__ import annotations

import csv
import math
from typing import IO, Sequence

from dfer_cli.results import ClipPrediction, VideoResult, strict_json

FORMATS = ("table", "json", "jsonl", "csv")

# Fields of the `video` record that say where a result came from (CSV: the last columns).
PROVENANCE = ("fps", "window", "stride", "model", "weights_sha256", "dfer_version", "schema_version")


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 clip', '2 clips', '0 clips': a count and its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def error_record(video: str, message: str) -> dict:
    """The record written for an input that could not be processed."""
    return {"type": "error", "video": video, "error": message}


class Writer:
    """Base class: receives results and writes them to `stream`."""

    def __init__(self, stream: IO[str], classes: Sequence[str]):
        self.stream = stream
        self.classes = list(classes)

    def clip(self, clip: ClipPrediction) -> None:
        """Called as each clip is classified."""

    def video(self, result: VideoResult) -> None:
        """Called once per video that was processed (with or without faces)."""

    def error(self, video: str, message: str) -> None:
        """Called once per input that failed."""

    def close(self) -> None:
        """Called once after the last input."""
        self.stream.flush()


class JsonLinesWriter(Writer):
    def _write(self, record: dict) -> None:
        self.stream.write(strict_json(record, ensure_ascii=False) + "\n")
        self.stream.flush()  # so `dfer predict a.mp4 | jq` shows clips as they come

    def clip(self, clip: ClipPrediction) -> None:
        self._write(clip.to_record())

    def video(self, result: VideoResult) -> None:
        self._write(result.to_record())

    def error(self, video: str, message: str) -> None:
        self._write(error_record(video, message))


class JsonWriter(Writer):
    def __init__(self, stream: IO[str], classes: Sequence[str]):
        super().__init__(stream, classes)
        self.records: list[dict] = []

    def video(self, result: VideoResult) -> None:
        record = result.to_record()
        record["clips"] = [c.to_record() for c in result.clips]
        self.records.append(record)

    def error(self, video: str, message: str) -> None:
        self.records.append(error_record(video, message))

    def close(self) -> None:
        self.stream.write(strict_json(self.records, indent=2, ensure_ascii=False) + "\n")
        self.stream.flush()


class CsvWriter(Writer):
    def __init__(self, stream: IO[str], classes: Sequence[str]):
        super().__init__(stream, classes)
        self.columns = (["type", "video", "track", "start", "end", "first_frame", "last_frame",
                         "x1", "y1", "x2", "y2", "label", "confidence"]
                        + [f"p_{c}" for c in self.classes] + ["status", *PROVENANCE])
        self.csv = csv.DictWriter(stream, fieldnames=self.columns, lineterminator="\n")
        self.csv.writeheader()
        self.stream.flush()

    def _row(self, **values) -> None:
        probs = values.pop("probabilities", None) or {}
        row = {k: "" for k in self.columns}
        row.update({k: _cell(v) for k, v in values.items()})
        for c in self.classes:
            if c in probs:
                row[f"p_{c}"] = _cell(probs[c])
        self.csv.writerow(row)
        self.stream.flush()

    def clip(self, clip: ClipPrediction) -> None:
        r = clip.to_record()
        x1, y1, x2, y2 = r["box"]
        first, last = r["frames"] if r["frames"] is not None else (None, None)
        self._row(type="clip", video=r["video"], track=r["track"], start=r["start"], end=r["end"],
                  first_frame=first, last_frame=last,
                  x1=x1, y1=y1, x2=x2, y2=y2, label=r["label"], confidence=r["confidence"],
                  probabilities=r["probabilities"], status=r["status"])

    def video(self, result: VideoResult) -> None:
        r = result.to_record()
        provenance = {k: r[k] for k in PROVENANCE}
        if not r["tracks"]:
            self._row(type="video", video=r["video"], start=0.0, end=r["duration"], status=r["status"],
                      **provenance)
        for t in r["tracks"]:
            probs = t["probabilities"]
            conf = probs[t["label"]] if probs and t["label"] in probs else None
            self._row(type="track", video=r["video"], track=t["track"], start=t["start"], end=t["end"],
                      label=t["label"], confidence=conf, probabilities=probs,
                      status=counted(t["clips"], "clip"), **provenance)

    def error(self, video: str, message: str) -> None:
        self._row(type="error", video=video, status=message)


def _cell(value):
    """A CSV cell: empty for None and for a non-finite float."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


class TableWriter(Writer):
    """Rich tables for a terminal; plain text (no colour) when written to a file or pipe."""

    def __init__(self, stream: IO[str], classes: Sequence[str]):
        super().__init__(stream, classes)
        from rich.console import Console

        tty = hasattr(stream, "isatty") and stream.isatty()
        # Off a terminal rich would assume 80 columns and squeeze the 7 probability columns.
        self.console = Console(file=stream, width=None if tty else 200, highlight=False,
                               no_color=not tty, emoji=False)

    def video(self, result: VideoResult) -> None:
        from rich.table import Table

        if result.clips:
            # Full headers and 3 decimals need ~100 columns; a narrower terminal gets
            # 3-letter class names and 2 decimals rather than truncated numbers.
            compact = self.console.width < 100
            digits = 2 if compact else 3
            from rich.markup import escape

            from dfer_cli.messages import printable

            table = Table(title=escape(printable(result.video)), title_justify="left")
            table.add_column("start–end" if compact else "start–end (s)", no_wrap=True)
            table.add_column("trk" if compact else "track", justify="right", no_wrap=True)
            table.add_column("label", no_wrap=True)
            for c in self.classes:
                table.add_column(c[:3] if compact else c, justify="right", no_wrap=True)
            # a clip without a label shows a numbered mark, its reason below the table: a
            # long status in the label column would squeeze the probability columns
            notes: dict[str, int] = {}
            for clip in result.clips:
                probs = clip.probabilities or {}
                cells = [f"{p:.{digits}f}" if (p := probs.get(c)) is not None else "" for c in self.classes]
                if clip.label in self.classes:
                    i = self.classes.index(clip.label)
                    cells[i] = f"[bold]{cells[i]}[/bold]"
                if clip.label is not None:
                    label = clip.label
                else:
                    label = f"– ({notes.setdefault(str(clip.status), len(notes) + 1)})"
                table.add_row(f"{clip.start:.2f}–{clip.end:.2f}", str(clip.track), label, *cells)
            self.console.print(table)
            for status, k in notes.items():
                self.console.print(f"({k}) not classified: {status}", markup=False, soft_wrap=True)
        from dfer_cli.messages import printable

        self.console.print(printable(summary_line(result)), soft_wrap=True, markup=False)
        self.stream.flush()

    def error(self, video: str, message: str) -> None:
        # The message already went to stderr; keep the table output free of it.
        pass


def summary_line(result: VideoResult) -> str:
    """One line per video: duration, faces, and each track's dominant expression."""
    head = f"{result.video}: {result.duration:.2f} s"
    if not result.tracks:
        return f"{head}, no face found"
    parts = []
    for t in result.tracks:
        if t.label is None or not t.probabilities:
            parts.append(f"track {t.track} {t.start:.2f}–{t.end:.2f} s: not classified")
        else:
            parts.append(f"track {t.track} {t.start:.2f}–{t.end:.2f} s: {t.label} "
                         f"({t.probabilities[t.label]:.2f}, {counted(t.clips, 'clip')})")
    return f"{head}, {counted(len(result.tracks), 'face track')}; " + "; ".join(parts)


WRITERS: dict[str, type[Writer]] = {
    "table": TableWriter, "json": JsonWriter, "jsonl": JsonLinesWriter, "csv": CsvWriter,
}


def make_writer(fmt: str, stream: IO[str], classes: Sequence[str]) -> Writer:
    """The writer for format `fmt` (one of FORMATS)."""
    if fmt not in WRITERS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return WRITERS[fmt](stream, classes)

"""The videos a command names: files, folders (searched by suffix), lists of paths on standard
input, and a video piped on standard input (sniffed, spooled when its index comes last).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from dfer_cli.fsutil import path_problem

# Suffixes taken as videos when a directory is searched (files named on the command
# line are tried whatever their suffix).
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
    ".3gp", ".ts", ".mts", ".m2ts", ".ogv",
})


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
    an argument is a live input too (`live.is_stream`). `error` is None for a usable path, else
    the reason it cannot be processed (missing, a broken symlink or a symlink loop, a FIFO,
    unreadable, empty, an empty directory, ``~user`` of an unknown user, ...): every path is
    checked here, so that bad inputs are reported before the model is loaded.
    """
    found = _Inputs(recursive)
    for spec in specs:
        if spec != "-":
            found.expand(spec)
            continue
        if stdin is not None:
            text = stdin.read()
        else:
            kind, payload = sniff_stdin()
            if kind == "too large":
                found.add("-", f"an MP4/MOV on standard input is read whole (its index may come last), and this one "
                               f"is over {payload / 2**30:.1f} GiB; pass its path instead, or pipe MPEG-TS "
                               "(ffmpeg -i IN -c copy -f mpegts -)")
                continue
            if kind == "stream":
                if live is not None:
                    live["-"] = payload
                found.add("-")
                continue
            text = payload
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.expand(line, named=False)  # a listed pipe or device is reported, never read
    return found.items


_UNLISTABLE = "cannot list this directory ({}); make it readable or name its videos"


class _Inputs:
    """(path, error) pairs in the order found, each path once (by its normalised form)."""

    def __init__(self, recursive: bool):
        self.recursive = recursive
        self.items: list[tuple[str, Optional[str]]] = []
        self.seen: set[str] = set()

    def add(self, path: str, error: Optional[str] = None) -> None:
        key = os.path.normpath(path)
        if key not in self.seen:
            self.seen.add(key)
            self.items.append((path, error))

    def expand(self, spec: str, named: bool = True) -> None:
        from dfer_cli.video.live import is_stream

        if named and is_stream(spec):  # named on the command line: read as a stream
            self.add(spec)
            return
        try:
            p = Path(spec).expanduser()
        except RuntimeError:  # ~name of a user this system does not know
            user = spec.split("/", 1)[0]
            self.add(spec, f"cannot expand {user}: no such user; write the path out in full")
            return
        try:
            is_dir = p.is_dir()
        except OSError:  # a folder on the way cannot be entered: path_problem names it
            is_dir = False
        if is_dir:
            self.folder(spec, p)
        else:
            self.add(str(p) if spec.startswith("~") else spec, path_problem(p))

    def folder(self, spec: str, p: Path) -> None:
        try:
            entries = list(p.rglob("*") if self.recursive else p.iterdir())
        except OSError as e:
            self.add(spec, _UNLISTABLE.format((e.strerror or str(e)).lower()))
            return
        # Entries named like videos that are not readable regular files (a dangling
        # symlink, a symlink loop, a FIFO, an empty file...) are reported, not dropped;
        # folders are passed over (searched with --recursive).
        found = sorted((q, path_problem(q)) for q in entries
                       if q.suffix.lower() in VIDEO_SUFFIXES and not q.name.startswith(".") and not q.is_dir())
        if not found:
            hint = "" if self.recursive else " (add --recursive to search subfolders)"
            self.add(spec, f"no video files in this directory{hint}")
        for q, problem in found:
            self.add(str(q), problem)
        if self.recursive:  # rglob passes over subfolders it cannot list: name them
            for e in _unlistable(p):
                self.add(str(e.filename), _UNLISTABLE.format((e.strerror or str(e)).lower()))


def _unlistable(folder: Path) -> list[OSError]:
    """The errors of the subfolders of `folder` that cannot be listed (no read or search
    permission), in walk order."""
    errors: list[OSError] = []
    for _ in os.walk(folder, onerror=errors.append):
        pass
    return [e for e in errors if getattr(e, "filename", None) and os.path.normpath(e.filename) != os.path.normpath(folder)]

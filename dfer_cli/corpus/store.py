"""The output folder of a corpus run: result files written whole (a temporary name, then a
rename), the manifest (one JSON line per finished video) and leftover temporary files.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from dfer_cli.corpus.errors import CorpusBusy, CorpusError, CorpusStopped
from dfer_cli.fsutil import HOST, TEMP_NAME, atomic_write_text

RESULT_SUFFIX = {"jsonl": ".jsonl", "json": ".json", "csv": ".csv"}


CORPUS_FORMATS = tuple(RESULT_SUFFIX)


MANIFEST = "manifest.jsonl"


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


STALE_AFTER = 3600.0  # seconds: a temporary file this old is a leftover whoever made it (a write takes ms)


def write_result(path: Path, text: str) -> None:
    """Write one result file atomically (`fsutil.atomic_write_text`: whatever stops it removes
    the temporary file; a SIGKILL leaves it for `remove_stale_temps`)."""
    atomic_write_text(path, text)


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

    A temporary file is stale when the process named in it (`fsutil.TEMP_NAME`) ran on this host
    and is gone, or when it is older than `STALE_AFTER` (a shard on another node). A shard running now beside this one keeps its file."""
    removed, now = [], time.time()
    for entry in os.scandir(out_dir):
        m = TEMP_NAME.match(entry.name)
        if m is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER
            if m is not None and m["host"] == HOST and not _alive(int(m["pid"])):
                stale = True
            if stale:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:  # gone meanwhile (renamed by its writer), or not ours to delete
            continue
    return removed


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


def open_output_dir(out_dir) -> Path:
    """The output folder, created if needed and checked writable (CorpusError if not), with
    the temporary files of a killed earlier run removed."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CorpusError(f"--output-dir {out}: exists and is not a folder; give a folder path (created if needed)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-test.dfer-{HOST}-{os.getpid()}-", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CorpusError(f"--output-dir {out}: cannot write there ({e.strerror or e}); "
                          "choose a writable folder") from None
    remove_stale_temps(out)
    return out

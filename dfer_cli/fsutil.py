"""Atomic file writes: the one helper every dfer writer of run files, checkpoints and
downloads goes through.

A temporary file is created next to the destination (same folder, so the rename stays on
one filesystem), filled, flushed to disk, given the mode a plain ``open(path, "w")`` would
give (``0o666 & ~umask``: ``tempfile.mkstemp`` creates files 0600, which would make a shared
run folder unreadable to other users), and renamed over the destination. A reader sees
either the old file or the complete new one; a failure removes the temporary file and
leaves the destination untouched.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def default_file_mode() -> int:
    """The mode a newly created regular file gets from this process: 0o666 & ~umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, briefly, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for the caller to write (by any means: a
    library that wants a file name, an ``open``); on normal exit it is flushed to disk,
    given the default mode and renamed over ``path``; on an exception it is removed.

    The parent folder must exist. The temporary name starts with ``.`` and ends in the
    destination's own suffix (``.<name>.<random>.tmp<suffix>``), so libraries that choose
    a format by suffix (PyAV, matplotlib) see the right one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see `atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see `atomic_path`); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))

"""Files: atomic writes (the one helper every dfer writer of run files, checkpoints and
downloads goes through), `PartialFile` for `dfer predict --output`, and `path_problem`,
why an input path cannot be read, checked before any work starts.

Atomic writes: a temporary file is created next to the destination (same folder, so the rename stays on
one filesystem), filled, flushed to disk, given the mode a plain ``open(path, "w")`` would
give (``0o666 & ~umask``: ``tempfile.mkstemp`` creates files 0600, which would make a shared
run folder unreadable to other users), and renamed over the destination. A reader sees
either the old file or the complete new one; a failure removes the temporary file and
leaves the destination untouched.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import stat
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


# Temporary files are named for their writer, ``.<name>.dfer-<host hash>-<pid>-<random>.tmp<suffix>``,
# so that a later run can tell the leftovers of a killed process from a file being written now.
HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]
TEMP_NAME = re.compile(r"^\..*\.dfer-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[^.]*\.tmp(\.[A-Za-z0-9]+)?$")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for the caller to write (by any means: a
    library that wants a file name, an ``open``); on normal exit it is flushed to disk,
    given the default mode and renamed over ``path``; on an exception (Ctrl-C included) it
    is removed. A SIGKILL leaves it, named for its writer (`TEMP_NAME`).

    The parent folder must exist. The temporary name starts with ``.`` and ends in the
    destination's own suffix, so libraries that choose a format by suffix (PyAV,
    matplotlib) see the right one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.dfer-{HOST}-{os.getpid()}-", suffix=".tmp" + path.suffix,
                               dir=path.parent)
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


# --------------------------------------------------------------------------- inputs

def path_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a regular file, in a few words with the fix, or None
    when it can (it exists, is a regular file after following symlinks, is readable and is
    not empty). Never raises: every answer is a reason.

    Tells apart what a plain ``exists()`` folds into "missing": a symlink whose target is
    gone, a symlink loop, a folder on the way that cannot be entered, a FIFO, socket or
    device (which would block or never end), a NUL byte in the name.
    """
    try:
        st = os.stat(path)
    except ValueError:  # embedded NUL byte
        return "the path contains a NUL byte; check how the list of paths was made"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop: the link leads back to itself; fix or remove the link"
        if e.errno == errno.ENOENT:
            try:
                target = os.readlink(path)
            except OSError:
                return "no such file or directory"
            return f"broken symbolic link: its target {target} does not exist; fix or remove the link"
        if e.errno == errno.EACCES:
            return "permission denied on a folder of this path; make the folder searchable (chmod +x)"
        if e.errno == errno.ENOTDIR:
            return "no such file or directory (a part of the path is a file, not a folder)"
        if e.errno == errno.ENAMETOOLONG:
            return "file name too long"
        return (e.strerror or type(e).__name__).lower()
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return "is a directory, not a video; pass a video file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file: videos are read from files; save the stream to a file first"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file; pass a video file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file; pass a video file"
    if not stat.S_ISREG(mode):
        return "not a regular file; pass a video file"
    if not os.access(path, os.R_OK):
        return "permission denied; make the file readable"
    if st.st_size == 0:
        return "file is empty (0 bytes); re-export or re-copy the video"
    return None


# --------------------------------------------------------------------------- outputs

class PartialFile:
    """A text output file that only gets its real name once it is complete.

    Text is written to ``<name>.partial`` next to `path`; `commit()` flushes it to disk and
    renames it to `path` (replacing an earlier result in one step), `abandon()` closes it and
    leaves it under the ``.partial`` name (an interrupted run: the file says it is not a
    complete result). So `path` is always either absent, the previous complete result, or
    this run's complete result.

    A destination that exists and is not a regular file (``/dev/stdout``, a FIFO, a
    terminal) is written directly: there is nothing to rename, and a reader of such a stream
    sees data as it comes. A destination that is a symlink is followed: the file it points
    to is replaced, the link stays.
    """

    def __init__(self, path: str | os.PathLike, encoding: str = "utf-8", newline: str | None = ""):
        self.path = Path(path)
        try:
            special = not stat.S_ISREG(os.stat(self.path).st_mode)
        except OSError:
            special = False
        target = Path(os.path.realpath(self.path))
        self.partial = None if special else target.with_name(target.name + ".partial")
        self._target = target
        self.file = open(self.partial or self.path, "w", encoding=encoding, newline=newline)

    def commit(self) -> Path:
        """Close the file and give it its real name; returns the destination."""
        if self.partial is None:
            self.file.close()
            return self.path
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.partial, self._target)
        return self.path

    def abandon(self) -> Path:
        """Close the file and leave it under its ``.partial`` name; returns where it is."""
        try:
            self.file.close()
        except OSError:
            pass
        return self.partial or self.path


@contextmanager
def quiet_pickle_protocol():
    """A context in which torch.load(weights_only=True) does not warn that a file was pickled
    with another protocol than its default: files written by other tools (a foreign .pth, a
    state.pt from a newer torch) are read, or refused with dfer's own one-line message."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield

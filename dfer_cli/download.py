"""Explicit download of a published checkpoint (`dfer weights download`): fetched over HTTPS into
the user cache, checked against its sha256 and read as a dfer checkpoint before it is installed."""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Callable

from dfer_cli.fsutil import atomic_path
from dfer_cli.weights import KNOWN, SUFFIX, bundled_dir, file_sha256, user_cache_dir


class DownloadError(RuntimeError):
    """A download that could not be done or did not verify; the message is one line."""


def download_weights(
    name: str,
    dest_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    timeout: float = 60.0,
    sha256: str | None = None,
    save_as: str | None = None,
) -> Path:
    """Fetch a checkpoint into `dest_dir` (default: the user cache) and return its path.
    Called only by `dfer weights download`, never implicitly.

    ``name`` is a published registry name (its url and sha256 come from the registry), or a
    URL (http, https, file) or file path of a dfer checkpoint, which then needs the expected
    ``sha256``; it is stored as ``save_as`` (default: the source's file name without
    ``.safetensors``) so that ``--weights SAVE_AS`` finds it. The file is streamed to a
    temporary name, its sha256 checked and its dfer header read, and only then renamed into
    place; a mismatch or a file that is not a dfer checkpoint installs nothing and raises
    DownloadError. An existing file with the right sha256 is kept unless `force`.
    `progress(done_bytes, total_bytes_or_None)` is called as data arrives.
    """
    from urllib.parse import urlparse

    if name in KNOWN:
        entry = KNOWN[name]
        if not entry.url or not entry.sha256:
            raise DownloadError(f"{name!r} is not published for download (it ships in {bundled_dir()}); "
                                "see `dfer weights list`")
        url, expected, stem = entry.url, entry.sha256.lower(), name
    else:
        scheme = urlparse(name).scheme.lower()
        if scheme in ("http", "https", "file"):
            url = name
        elif os.path.isfile(name):
            url = Path(name).resolve().as_uri()
        else:
            raise DownloadError(f"unknown weights name {name!r}: known names are {', '.join(sorted(KNOWN))}; "
                                "or give a URL or file path of a dfer checkpoint with --sha256")
        if not sha256 or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
            raise DownloadError(f"{name}: give the checkpoint's expected sha256 (64 hex digits) with --sha256, "
                                "so that what arrives is verified before it is installed")
        expected = sha256.lower()
        stem = Path(urlparse(url).path).name.removesuffix(SUFFIX)
    stem = save_as or stem
    if not stem or "/" in stem or stem.startswith("."):
        raise DownloadError(f"{name}: cannot name the installed file {stem!r}; pass --name NAME")
    dest_dir = Path(dest_dir) if dest_dir is not None else user_cache_dir()
    dest = dest_dir / (stem + SUFFIX)
    if dest.is_file() and not force and file_sha256(dest) == expected:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
                total = int(total) if total else None
                done = 0
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
            digest = h.hexdigest()
            if digest != expected:
                raise DownloadError(f"{url}: sha256 {digest} does not match the expected "
                                    f"{expected}; nothing was installed, try again later")
            from dfer_cli.checkpoint import CheckpointError, read_metadata

            try:
                read_metadata(tmp)
            except CheckpointError as e:
                raise DownloadError(f"{url}: not a dfer checkpoint ({str(e).split(': ', 1)[-1]}); "
                                    "nothing was installed") from None
    except OSError as e:  # URLError is an OSError
        raise DownloadError(f"{url}: download failed ({getattr(e, 'reason', e)}); "
                            "check the network or copy the file into "
                            f"{dest_dir} yourself") from None
    return dest

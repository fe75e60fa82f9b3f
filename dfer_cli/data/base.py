"""What every dataset adapter shares: a sample (a clip's path, kind and label), the report of what
was skipped and why, and how frames and files are listed and recognised."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}


@dataclass
class Sample:
    path: str     # a frame folder, an image file or a video file
    label: int    # index into the dataset's class list (dfer's CLASSES order)
    kind: str     # "frames" | "image" | "video"
    votes: tuple | None = None  # raters' votes per class (data/votes.py); the target is their shares


@dataclass
class DataReport:
    """What an adapter skipped, and why: (reason, path) pairs, counted by reason."""

    root: str
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, reason: str, path: str | os.PathLike) -> None:
        self.problems.append((reason, str(path)))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reason, _ in self.problems:
            out[reason] = out.get(reason, 0) + 1
        return out

    def summary(self, max_paths: int = 3) -> str:
        """Multi-line text: one line per reason with its count and a few example paths."""
        lines = []
        for reason, n in sorted(self.counts().items()):
            paths = [p for r, p in self.problems if r == reason][:max_paths]
            more = f" (+{n - len(paths)} more)" if n > len(paths) else ""
            lines.append(f"{n} skipped: {reason}: {', '.join(paths)}{more}")
        return "\n".join(lines)


def natural_key(name: str):
    """Sort key that orders 'frame2' before 'frame10'."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def list_frames(folder: str | os.PathLike) -> list[str]:
    """Image files of a frame folder in natural order."""
    names = [n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTS]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def clip_kind(path: str | os.PathLike) -> str | None:
    """'frames' for a directory, 'image' / 'video' by extension, None otherwise."""
    p = Path(path)
    if p.is_dir():
        return "frames"
    ext = p.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None

"""The generic layout for your own data: ``<root>/<split>/<class>/<clip>``.

A clip is a video file, a folder of frames, or a single still image (e.g. FER2013's
``train/happy/Training_123.jpg``), always an already-aligned face. Class folder names are
mapped onto dfer's classes with :func:`dfer_cli.labels.canonical` ('Happiness' -> happy);
folders that name no dfer class, unsupported files and empty frame folders are reported.
"""
from __future__ import annotations

import os

from dfer_cli.data.base import DataReport, Sample, clip_kind, list_frames, natural_key
from dfer_cli.labels import CLASSES, canonical


def scan_folder(root: str, split: str) -> tuple[list[Sample], DataReport]:
    """Samples of ``root/split``; raises ValueError when that folder is missing."""
    base = os.path.join(root, split) if split else root
    if not os.path.isdir(base):
        have = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise ValueError(f"split folder {base} does not exist (found: {', '.join(have) or 'nothing'}): "
                         "pass --split/--val-split with one of those names")
    report = DataReport(base)
    samples: list[Sample] = []
    for cls_dir in sorted(os.listdir(base), key=natural_key):
        cls_path = os.path.join(base, cls_dir)
        if not os.path.isdir(cls_path):
            report.add("not a class folder", cls_path)
            continue
        try:
            label = CLASSES.index(canonical(cls_dir))
        except ValueError:
            report.add("unknown class folder", cls_path)
            continue
        for name in sorted(os.listdir(cls_path), key=natural_key):
            path = os.path.join(cls_path, name)
            kind = clip_kind(path)
            if kind is None:
                report.add("unsupported file type", path)
            elif kind == "frames" and not list_frames(path):
                report.add("empty frame folder", path)
            else:
                samples.append(Sample(path, label, kind))
    return samples, report

"""AFEW: ``<root>/Train_AFEW|Val_AFEW/<Emotion>/<clip>.avi`` raw movie clips.

AFEW's videos are not face crops, so they are used through ``dfer prepare``, which runs
detection, tracking and alignment once and writes the same tree with one aligned frame
folder per clip (``<dst>/Train_AFEW/Angry/<clip>/0001.jpg``...). This adapter reads that
prepared tree; raw videos found instead are reported with the command that prepares them.
Splits: train -> ``Train_AFEW`` (the official name), or ``Train``; val (or test) ->
``Val_AFEW`` or ``Val``. Folder names match in any case (``train``, ``TRAIN_AFEW``).
"""
from __future__ import annotations

import os

from dfer_cli.data.base import VIDEO_EXTS, DataReport, Sample, list_frames, natural_key
from dfer_cli.labels import CLASSES, canonical

# split -> accepted folder names, official first; compared case-insensitively
SPLIT_FOLDERS = {"train": ("Train_AFEW", "Train"), "val": ("Val_AFEW", "Val")}


def split_folder(root: str, split: str) -> str:
    """The folder of ``split`` ('train', 'val' or 'test' = val) under ``root``.

    Raises ValueError (one line) naming the accepted folder names when none or more than one
    of them is there.
    """
    want = {"train": "train", "val": "val", "test": "val"}.get(split.lower())
    if want is None:
        raise ValueError(f"AFEW split {split!r}: use train or val")
    names = {n.lower() for n in SPLIT_FOLDERS[want]}
    found = sorted(d for d in os.listdir(root)
                   if d.lower() in names and os.path.isdir(os.path.join(root, d)))
    expected = " or ".join(f"{n}/" for n in SPLIT_FOLDERS[want])
    if not found:
        there = sorted(d + "/" for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        seen = ", ".join(there[:6]) + (" ..." if len(there) > 6 else "") if there else "no folders"
        raise ValueError(f"AFEW {want} split not found in {root}: expected a folder {expected} (any case; "
                         f"the official download has Train_AFEW/ and Val_AFEW/), found {seen}")
    if len(found) > 1:
        raise ValueError(f"AFEW {want} split is ambiguous in {root}: {', '.join(found)} all match; "
                         f"keep one of {expected}")
    return os.path.join(root, found[0])


def scan_afew(root: str, split: str) -> tuple[list[Sample], DataReport]:
    """Samples of AFEW ``split`` under ``root`` (a prepared tree; see the module docstring)."""
    base = split_folder(root, split)
    report = DataReport(base)
    samples: list[Sample] = []
    raw = 0
    for emo in sorted(os.listdir(base), key=natural_key):
        d = os.path.join(base, emo)
        if not os.path.isdir(d):
            continue
        try:
            label = CLASSES.index(canonical(emo))
        except ValueError:
            report.add("unknown class folder", d)
            continue
        for name in sorted(os.listdir(d), key=natural_key):
            p = os.path.join(d, name)
            if os.path.isdir(p):
                if list_frames(p):
                    samples.append(Sample(p, label, "frames"))
                else:
                    report.add("empty clip (no face found by dfer prepare?)", p)
            elif os.path.splitext(name)[1].lower() in VIDEO_EXTS:
                raw += 1
                report.add("raw video, not prepared", p)
            else:
                report.add("unsupported file type", p)
    if not samples and raw:
        raise ValueError(f"{base} holds {raw} raw AFEW videos and no aligned clips: run "
                         f"`dfer prepare {root} PREPARED` and pass --data-root PREPARED")
    return samples, report

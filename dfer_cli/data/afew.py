"""AFEW: ``<root>/Train|Val/<Emotion>/<clip>.avi`` raw movie clips.

AFEW's videos are not face crops, so they are used through ``dfer prepare``, which runs
detection, tracking and alignment once and writes the same tree with one aligned frame
folder per clip (``<dst>/Train/Angry/<clip>/0001.jpg``...). This adapter reads that
prepared tree; raw videos found instead are reported with the command that prepares them.
Splits: train -> Train, val (or test) -> Val.
"""
from __future__ import annotations

import os

from dfer_cli.data import VIDEO_EXTS, DataReport, Sample, list_frames, natural_key
from dfer_cli.labels import CLASSES, canonical


def scan_afew(root: str, split: str) -> tuple[list[Sample], DataReport]:
    want = {"train": "train", "val": "val", "test": "val"}.get(split.lower())
    if want is None:
        raise ValueError(f"AFEW split {split!r}: use train or val")
    base = next((os.path.join(root, d) for d in os.listdir(root)
                 if d.lower() == want and os.path.isdir(os.path.join(root, d))), None)
    if base is None:
        raise ValueError(f"AFEW split folder {os.path.join(root, want.capitalize())} does not exist: "
                         "--data-root must hold Train/ and Val/")
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

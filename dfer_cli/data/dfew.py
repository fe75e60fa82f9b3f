"""DFEW in its official layout.

    <root>/Clip/clip_224x224/<video_id>/<frames>.jpg          aligned face frames
    <root>/Clip/clip_224x224_16f/<video_id>/<16 frames>.jpg   16-frame variant (also clip_224x16f)
    <root>/EmoLabel_DataSplit/train(single-labeled)/set_<fold>.csv   video_name,label
    <root>/EmoLabel_DataSplit/test(single-labeled)/set_<fold>.csv

Labels are DFEW ids 1..7 (happy, sad, neutral, angry, surprise, disgust, fear), the dfer
order. A clip is read from ``clip_224x224``; when that folder is missing or has fewer than
16 frames, the 16-frame variant is used if present. Video names are matched as written
and zero-padded to 5 digits ('1' -> '00001').
"""
from __future__ import annotations

import csv
import os

from dfer_cli.data.base import DataReport, Sample, list_frames
from dfer_cli.labels import CLASSES, dfew_label

SPLIT_DIRS = {"train": ("train(single-labeled)", "train"), "test": ("test(single-labeled)", "test")}
FULL = ("clip_224x224",)
SHORT = ("clip_224x224_16f", "clip_224x16f")


def _find(root: str, names) -> str | None:
    for n in names:
        p = os.path.join(root, "Clip", n)
        if os.path.isdir(p):
            return p
    return None


def scan_dfew(root: str, split: str, fold: int | None) -> tuple[list[Sample], DataReport]:
    """Samples of DFEW `split` ('train' or 'test'; 'val' means 'test') of `fold` 1..5."""
    split = "test" if split == "val" else split
    if split not in SPLIT_DIRS:
        raise ValueError(f"DFEW split {split!r}: use train or test (with --fold 1..5)")
    if fold is None or not 1 <= int(fold) <= 5:
        raise ValueError("DFEW needs --fold 1..5 (the official 5-fold protocol)")
    csv_path = None
    for d in SPLIT_DIRS[split]:
        p = os.path.join(root, "EmoLabel_DataSplit", d, f"set_{int(fold)}.csv")
        if os.path.isfile(p):
            csv_path = p
            break
    if csv_path is None:
        raise ValueError(f"DFEW label file {os.path.join(root, 'EmoLabel_DataSplit', SPLIT_DIRS[split][0], f'set_{fold}.csv')} "
                         "does not exist: --data-root must be the DFEW folder holding Clip/ and EmoLabel_DataSplit/")
    full, short = _find(root, FULL), _find(root, SHORT)
    if full is None and short is None:
        raise ValueError(f"no DFEW frames under {os.path.join(root, 'Clip')}: expected clip_224x224/ or clip_224x224_16f/")
    report = DataReport(csv_path)
    samples: list[Sample] = []
    with open(csv_path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if n == 1 and row and row[0].strip().lower() == "video_name":
                continue
            if len(row) < 2 or not row[0].strip():
                report.add("malformed CSV row", f"{csv_path}:{n}")
                continue
            name, raw = row[0].strip(), row[1].strip()
            try:
                label = CLASSES.index(dfew_label(raw))
            except ValueError:
                report.add(f"unknown label {raw!r}", f"{csv_path}:{n}")
                continue
            path = _clip_dir(full, short, name)
            if path is None:
                report.add("missing clip frames", os.path.join(full or short, name))
                continue
            samples.append(Sample(path, label, "frames"))
    return samples, report


def _clip_dir(full: str | None, short: str | None, name: str) -> str | None:
    names = [name] + ([name.zfill(5)] if name.isdigit() else [])
    best = None
    for base in (full, short):
        if base is None:
            continue
        for n in names:
            p = os.path.join(base, n)
            if os.path.isdir(p):
                count = len(list_frames(p))
                if count >= 16:
                    return p
                if count and best is None:
                    best = p
    return best

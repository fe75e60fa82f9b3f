"""FERV39K in its official layout.

    <root>/2_ClipsforFaceCrop/<Scene>/<Emotion>/<clip>/<frames>.jpg   face-crop frames
    <root>/4_setups/All_scenes/train_All.csv                          "<Scene>/<Emotion>/<clip> <Emotion>"
    <root>/4_setups/All_scenes/test_All.csv

Each list line is a clip path relative to ``2_ClipsforFaceCrop`` and its emotion name
(Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise), separated by a space (a comma is
accepted too). FERV39K has no validation split; 'val' means 'test'.
"""
from __future__ import annotations

import os
import re

from dfer_cli.data.base import DataReport, Sample, list_frames
from dfer_cli.labels import CLASSES, canonical


def _list_file(root: str, split: str) -> str:
    name = {"train": "train_All.csv", "test": "test_All.csv"}[split]
    for sub in (os.path.join("4_setups", "All_scenes"), "All_scenes", ""):
        p = os.path.join(root, sub, name)
        if os.path.isfile(p):
            return p
    raise ValueError(f"FERV39K list {os.path.join(root, '4_setups', 'All_scenes', name)} does not exist: "
                     "--data-root must be the FERV39K folder holding 2_ClipsforFaceCrop/ and 4_setups/")


def scan_ferv39k(root: str, split: str) -> tuple[list[Sample], DataReport]:
    split = "test" if split == "val" else split
    if split not in ("train", "test"):
        raise ValueError(f"FERV39K split {split!r}: use train or test")
    list_path = _list_file(root, split)
    clips = os.path.join(root, "2_ClipsforFaceCrop")
    if not os.path.isdir(clips):
        raise ValueError(f"FERV39K frames folder {clips} does not exist")
    report = DataReport(list_path)
    samples: list[Sample] = []
    with open(list_path) as f:
        for n, line in enumerate(f, 1):
            parts = [p for p in re.split(r"[ ,\t]+", line.strip()) if p]
            if not parts:
                continue
            if len(parts) != 2:
                report.add("malformed list row", f"{list_path}:{n}")
                continue
            rel, emotion = parts
            try:
                label = CLASSES.index(canonical(emotion))
            except ValueError:
                if n == 1:  # a header line
                    continue
                report.add(f"unknown label {emotion!r}", f"{list_path}:{n}")
                continue
            path = os.path.join(clips, rel)
            if not os.path.isdir(path):
                report.add("missing clip frames", path)
            elif not list_frames(path):
                report.add("empty clip", path)
            else:
                samples.append(Sample(path, label, "frames"))
    return samples, report

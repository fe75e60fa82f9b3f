"""Datasets for training and evaluation: one sample list per dataset layout, one Dataset.

Each adapter (``folder``, ``dfew``, ``ferv39k``, ``afew``) scans its dataset's official
layout into a list of :class:`Sample` (a clip's path, kind and label index in dfer's class
order) plus a :class:`DataReport` that lists every file it could not use (missing frames,
unknown labels, empty clips, bad CSV rows) with counts and paths. :class:`ClipDataset`
turns samples into model inputs with :class:`~dfer_cli.data.transforms.ClipTransform`.

A sample is an already-aligned face: a frame folder's images, a still image and a video
file are used as they are (resized to the input size), never re-detected. Raw videos
(e.g. AFEW) go through ``dfer prepare`` first.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from dfer_cli.data.base import DataReport, Sample, list_frames
from dfer_cli.data.transforms import Augment, ClipTransform
from dfer_cli.labels import CLASSES
from dfer_cli.preprocess import Preprocessing
from dfer_cli.video.sampling import DEFAULT_SAMPLING, check_sampling, frame_indices

DATASETS = ("folder", "dfew", "ferv39k", "afew")


def read_image(path: str, grayscale: bool) -> np.ndarray:
    """uint8 (H, W) when `grayscale`, else (H, W, 3) RGB. Raises ValueError on a bad file."""
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}: not an image file or unreadable")
    return img if grayscale else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_video(path: str, grayscale: bool) -> list[np.ndarray]:
    """All frames of a (short, already-aligned) video file as uint8 arrays."""
    import av

    try:
        with av.open(path) as container:
            fmt = "gray" if grayscale else "rgb24"
            return [f.to_ndarray(format=fmt) for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as exc:
        raise ValueError(f"cannot decode video {path}: {exc}") from None


class ClipDataset:
    """A map-style dataset of (clip tensor (T, 3, S, S), label) pairs.

    Training randomness (segment choice, crop, flip, motion) comes from a generator seeded
    with (seed, epoch, index), so a sample's augmentation does not depend on worker count
    or process, and a resumed run sees the same data as an uninterrupted one. Call
    :meth:`set_epoch` before each epoch. With ``test_clips > 1`` (evaluation only) an item
    is (K, T, 3, S, S): K clips at evenly shifted segment positions, for averaging.
    ``sampling`` chooses the frames of a clip (:mod:`dfer_cli.video.sampling`: ``uniform``,
    one frame per segment, or ``segments8x2``, two consecutive frames from each of 8).
    Still images are decoded once and kept in memory (``cache_images``).
    """

    def __init__(self, samples: list[Sample], pre: Preprocessing, *, train: bool,
                 classes=CLASSES, augment: Augment | None = None, seed: int = 0,
                 test_clips: int = 1, cache_images: bool = True, sampling: str = DEFAULT_SAMPLING):
        if not samples:
            raise ValueError("the dataset has no usable samples")
        check_sampling(sampling, pre.num_frames)
        self.sampling = sampling
        self.samples = samples
        self.classes = list(classes)
        self.pre = pre
        self.train = train
        self.transform = ClipTransform(pre, train, augment)
        self.seed = seed
        self.epoch = 0
        self.test_clips = max(1, int(test_clips))
        self._frames_cache: dict[int, list[str]] = {}
        self._images: dict[int, np.ndarray] = {}
        if cache_images:
            for i, s in enumerate(samples):
                if s.kind == "image":
                    self._images[i] = read_image(s.path, pre.grayscale)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def soft(self) -> bool:
        """Whether the training targets are vote shares (every sample has votes)."""
        return all(s.votes is not None for s in self.samples)

    def targets(self):
        """Training targets: labels (N,) int64, or vote shares (N, C) float32 when ``soft``."""
        if not self.soft:
            return self.labels
        from dfer_cli.metrics import vote_shares

        return vote_shares([s.votes for s in self.samples]).astype(np.float32)

    def target(self, i: int):
        s = self.samples[i]
        if s.votes is None:
            return s.label
        from dfer_cli.metrics import vote_shares

        return vote_shares([s.votes])[0].astype(np.float32)

    def _frame_list(self, i: int) -> list[str]:
        if i not in self._frames_cache:
            frames = list_frames(self.samples[i].path)
            if not frames:
                raise ValueError(f"empty clip {self.samples[i].path}: no image files in the folder")
            self._frames_cache[i] = frames
        return self._frames_cache[i]

    def load(self, i: int, rng: np.random.Generator | None, shift: float = 0.5) -> tuple[list[np.ndarray], bool]:
        """The clip's sampled uint8 frames and whether it is a still image. `shift` in
        [0, 1) places test-time samples within each segment (0.5 = centre)."""
        s, t, gray = self.samples[i], self.pre.num_frames, self.pre.grayscale
        if s.kind == "image":
            img = self._images.get(i)
            return [img if img is not None else read_image(s.path, gray)], True
        if s.kind == "frames":
            paths = self._frame_list(i)
            idx = frame_indices(len(paths), t, self.sampling, rng, shift)
            cache: dict[int, np.ndarray] = {}
            for j in idx:
                if j not in cache:
                    cache[j] = read_image(paths[j], gray)
            return [cache[j] for j in idx], False
        frames = read_video(s.path, gray)
        if not frames:
            raise ValueError(f"empty clip {s.path}: the video has no frames")
        return [frames[j] for j in frame_indices(len(frames), t, self.sampling, rng, shift)], False

    def __getitem__(self, i: int):
        import torch

        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            frames, still = self.load(i, rng)
            return self.transform(frames, rng, still), self.target(i)
        clips = []
        for k in range(self.test_clips):
            frames, still = self.load(i, None, shift=(k + 0.5) / self.test_clips)
            clips.append(self.transform(frames, None, still))
            if still:  # every test clip of a still image is the same
                clips = clips * self.test_clips
                break
        x = clips[0] if self.test_clips == 1 else torch.stack(clips)
        return x, self.samples[i].label


def scan(name: str, root: str | os.PathLike, split: str, *, fold: int | None = None,
         limit: int | None = None, seed: int = 0) -> tuple[list[Sample], DataReport]:
    """Samples of dataset `name` ('folder', 'dfew', 'ferv39k', 'afew') under `root` for
    `split` (train/test/val..., DFEW also needs `fold` 1..5). `limit` keeps a seeded random
    subset of that many samples. Raises ValueError with a one-line message on a missing or
    malformed root."""
    root = str(root)
    if not os.path.isdir(root):
        raise ValueError(f"data root {root} does not exist: pass --data-root DIR")
    if name == "folder":
        from dfer_cli.data.folder import scan_folder
        samples, report = scan_folder(root, split)
    elif name == "dfew":
        from dfer_cli.data.dfew import scan_dfew
        samples, report = scan_dfew(root, split, fold)
    elif name == "ferv39k":
        from dfer_cli.data.ferv39k import scan_ferv39k
        samples, report = scan_ferv39k(root, split)
    elif name == "afew":
        from dfer_cli.data.afew import scan_afew
        samples, report = scan_afew(root, split)
    else:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if limit is not None and 0 < limit < len(samples):
        keep = np.sort(np.random.default_rng(seed).choice(len(samples), size=limit, replace=False))
        samples = [samples[i] for i in keep]
    return samples, report


def canonical_split(dataset: str, split: str | None) -> str | None:
    """The split a dataset adapter actually reads for ``split``: DFEW and FERV39K have no
    validation split ('val' reads 'test'), AFEW's 'test' reads 'val' (names compared in
    lower case); a folder layout's split is its sub-folder name, kept as written."""
    if split is None or dataset == "folder":
        return split
    s = split.strip().lower()
    if dataset in ("dfew", "ferv39k"):
        return "test" if s == "val" else s
    if dataset == "afew":
        return "val" if s == "test" else s
    return s


def class_counts(samples: list[Sample], num_classes: int = len(CLASSES)) -> list[int]:
    """Number of samples per class index."""
    counts = [0] * num_classes
    for s in samples:
        counts[s.label] += 1
    return counts


def class_mass(samples: list[Sample], num_classes: int = len(CLASSES)) -> list[float]:
    """Samples per class, each sample with votes counted as its vote shares (a fractional
    count per class), the others as one count of their label: the class prior that soft
    targets train towards."""
    mass = [0.0] * num_classes
    for s in samples:
        if s.votes is None:
            mass[s.label] += 1.0
        else:
            total = float(sum(s.votes))
            for c, v in enumerate(s.votes):
                mass[c] += v / total
    return mass

"""Batch order of an epoch as a function of (seed, epoch), so a resumed run draws exactly the
batches the interrupted one would have, and the learning-rate schedule.
"""
from __future__ import annotations

import math

import numpy as np

from dfer_cli.labels import CLASSES
from dfer_cli.train.config import TrainConfig


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: TrainConfig) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, then cosine or flat."""
    if warmup_steps and step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


class EpochSampler:
    """Single-process shuffling that depends only on (seed, epoch), like
    DistributedSampler, so a resumed run draws the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def batch_sizes(n: int, batch_size: int, merge_single: bool) -> list[int]:
    """Sizes of the batches that cover `n` samples once: full batches, then the remainder.

    With `merge_single`, a last batch of exactly one sample joins the one before (BatchNorm
    in train mode cannot normalise a single value per channel, which is what the trunk sees
    for one clip of one frame).
    """
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    if merge_single and len(sizes) > 1 and sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def describe_batches(sizes: list[int]) -> str:
    """'1 batch of 32 + 1 of 10', '12 batches of 6'..."""
    parts, i = [], 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        k = j - i
        parts.append(f"{k} {'batch' if k == 1 else 'batches'} of {sizes[i]}" if not parts else f"{k} of {sizes[i]}")
        i = j
    return " + ".join(parts) if parts else "no batches"


class EpochBatches:
    """Batch sampler: the indices of `sampler` (re-read each epoch) cut into `batch_sizes`,
    so every sample is used every epoch and the order still depends only on (seed, epoch)."""

    def __init__(self, sampler, batch_size: int, merge_single: bool):
        self.sampler, self.batch_size, self.merge_single = sampler, batch_size, merge_single

    def sizes(self) -> list[int]:
        return batch_sizes(len(self.sampler), self.batch_size, self.merge_single)

    def __iter__(self):
        indices = list(self.sampler)
        start = 0
        for size in self.sizes():
            yield indices[start:start + size]
            start += size

    def __len__(self) -> int:
        return len(self.sizes())


def still_batches(train_ds, cfg: TrainConfig, order, sizes: list[int]):
    """A :class:`~dfer_cli.data.stills.StillBatches` over ``train_ds``'s images when it holds
    only still images and clips are one frame; None otherwise (clips use the DataLoader)."""
    if cfg.frames != 1 or any(s.kind != "image" for s in train_ds.samples):
        return None
    from dfer_cli.data.stills import StillAugment, StillBatches, images_to_tensor

    aug = StillAugment(rotate=cfg.rotate, scale=cfg.zoom, shift=cfg.shift, flip=cfg.flip,
                       erase=cfg.erase, mixup=cfg.mixup, cutmix=cfg.cutmix)
    images = images_to_tensor([train_ds.load(i, None)[0][0] for i in range(len(train_ds))], cfg.input_size)
    return StillBatches(images, train_ds.targets(), cfg.preprocessing(), aug, seed=cfg.seed, order=order,
                        sizes=sizes, num_classes=len(CLASSES))

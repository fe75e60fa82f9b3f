"""Near-duplicate images, by difference hash (dHash).

FER2013's *Training* images hold many near-copies of one another (the same photo cropped,
re-encoded or brightened). A held-out split drawn from them at random then contains images
whose twin was trained on, and those are nearly always right: on the bundled default's
held-out split the 251 images (of 2,872) with an exact-hash twin in the training portion
score 84 % WAR against 66 % for the rest, and the rest predict FER2013 `val` far better
(weights/README.md, *The ensemble*). ``unseen_mask`` finds the held-out images without a
twin, so that selection can be scored on them.

The hash: the image in grey, area-resized to 9 x 8, and one bit per horizontally adjacent
pair, set where the right pixel is brighter. It ignores brightness and contrast changes and
small shifts of detail, and two images are near-duplicates when their 64 bits differ in at
most ``max_distance`` places (0: identical hashes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np


def dhash(image: np.ndarray) -> int:
    """The 64-bit difference hash of a grey (H, W) or RGB (H, W, 3) uint8 image."""
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(image, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)   # (8, 9)
    bits = (small[:, 1:] > small[:, :-1]).flatten()                                    # 64
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def file_hashes(paths: Iterable) -> np.ndarray:
    """(N,) uint64 hashes of image files (read in grey). Raises ValueError naming an
    unreadable file."""
    import cv2

    out = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"{p}: not a readable image")
        out.append(dhash(img))
    return np.array(out, dtype=np.uint64)


def _bits(hashes: np.ndarray) -> np.ndarray:
    """(N,) uint64 -> (N, 64) float32 of 0/1, most significant bit first."""
    as_bytes = hashes.astype(">u8").view(np.uint8).reshape(len(hashes), 8)
    return np.unpackbits(as_bytes, axis=1).astype(np.float32)


def nearest_distances(query: np.ndarray, reference: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(Q,) int: for each query hash, the fewest bits in which it differs from any reference
    hash (64 when there is no reference)."""
    if len(reference) == 0:
        return np.full(len(query), 64, dtype=np.int64)
    r = _bits(reference)                                                  # (R, 64)
    r_ones = r.sum(1)
    out = []
    for i in range(0, len(query), chunk):
        q = _bits(query[i:i + chunk])                                     # (q, 64)
        # |a xor b| = |a| + |b| - 2 a.b for 0/1 vectors
        d = q.sum(1)[:, None] + r_ones[None, :] - 2 * (q @ r.T)           # (q, R)
        out.append(np.rint(d.min(1)).astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def unseen_mask(held: list[Path], train: list[Path], max_distance: int = 0) -> np.ndarray:
    """(len(held),) bool: True where a held-out image has no near-duplicate (hash distance
    <= ``max_distance``) among the training images."""
    return nearest_distances(file_hashes(held), file_hashes(train)) > max_distance

"""Near-duplicate detection by difference hash: the hash, the distances (against a
brute-force count written out here) and the held-out images without a twin in training."""
from __future__ import annotations

import cv2
import numpy as np
from synth import face_image

from dfer_cli.data.duplicates import dhash, file_hashes, nearest_distances, unseen_mask


def _face48() -> np.ndarray:
    return cv2.resize(cv2.cvtColor(face_image(), cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA)


def test_the_hash_is_the_written_out_gradient_bits():
    img = _face48()
    small = cv2.resize(img, (9, 8), interpolation=cv2.INTER_AREA).astype(int)
    want = 0
    for y in range(8):
        for x in range(8):
            want = (want << 1) | int(small[y, x + 1] > small[y, x])
    assert dhash(img) == want
    assert dhash(np.repeat(img[:, :, None], 3, axis=2)) == want      # RGB of the same grey


def test_copies_hash_alike_and_other_images_do_not():
    img = _face48()
    brighter = np.clip(img.astype(int) + 12, 0, 255).astype(np.uint8)
    reencoded = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_GRAYSCALE)
    flipped = img[:, ::-1].copy()
    h = np.array([dhash(img), dhash(brighter), dhash(reencoded), dhash(flipped)], dtype=np.uint64)
    d = nearest_distances(h[1:], h[:1])
    assert d[0] == 0 and d[1] <= 4 and d[2] > 12


def test_nearest_distances_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    query = rng.integers(0, 2**63, 37, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 37).astype(np.uint64)
    reference = rng.integers(0, 2**63, 101, dtype=np.uint64)
    reference[5] = query[3] ^ np.uint64(0b1011)                        # 3 bits from query 3
    want = [min(bin(int(q) ^ int(r)).count("1") for r in reference) for q in query]
    got = nearest_distances(query, reference, chunk=8)
    assert got.tolist() == want and got[3] <= 3
    assert nearest_distances(query[:2], reference[:0]).tolist() == [64, 64]


def test_unseen_mask_marks_held_out_images_without_a_twin(tmp_path):
    rng = np.random.default_rng(1)
    train, held = [], []
    for i in range(4):
        p = tmp_path / f"train{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 200, (48, 48), dtype=np.uint8))  # no clipping when brightened
        train.append(p)
    twin = tmp_path / "held_twin.png"                                  # train1, 10 levels brighter
    cv2.imwrite(str(twin), np.clip(cv2.imread(str(train[1]), cv2.IMREAD_GRAYSCALE).astype(int) + 10, 0, 255)
                .astype(np.uint8))
    new = tmp_path / "held_new.png"
    cv2.imwrite(str(new), rng.integers(0, 255, (48, 48), dtype=np.uint8))
    assert unseen_mask([twin, new], train).tolist() == [False, True]
    assert file_hashes([twin]).dtype == np.uint64

"""Measure where FER2013's faces have their 5 landmarks (unit coordinates of the 48x48 crop).

Runs MTCNN on a fixed, seeded sample of FER2013 training images (upscaled so MTCNN can see
them) and prints the median landmark positions, raw and made left/right symmetric. The
symmetric figures are `dfer_cli.preprocess.FER2013_TEMPLATE`.

    python scripts/fer2013_template.py --root ../shared/data/fer2013/train --per-class 60
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/data/fer2013/train")
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--upscale", type=int, default=192, help="side the 48 px images are resized to")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    files: list[Path] = []
    for cls in sorted(p for p in Path(args.root).iterdir() if p.is_dir()):
        fs = sorted(cls.glob("*.jpg"))
        rng.shuffle(fs)
        files += fs[: args.per_class]
    detector = MTCNN(keep_all=True, min_face_size=40, device="cpu")
    size = args.upscale
    points = []
    for i in range(0, len(files), 32):
        batch = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC))
                          for f in files[i:i + 32]])
        boxes, probs, landmarks = detector.detect(batch, landmarks=True)
        for b, p, lm in zip(boxes, probs, landmarks):
            if b is None:
                continue
            b, p, lm = (np.asarray(v, dtype=float) for v in (b, p, lm))
            k = int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
            if p[k] >= 0.9:
                points.append(lm[k] / size)
    pts = np.median(np.array(points), axis=0)  # (5, 2)
    print(f"{len(files)} images, {len(points)} faces found")
    print("median:", np.round(pts, 4).tolist())
    # Mirror: left eye <-> right eye, nose stays, left mouth <-> right mouth.
    mirror = pts[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]
    sym = (pts + mirror) / 2
    print("symmetric:", np.round(sym, 4).tolist())


if __name__ == "__main__":
    main()

"""Side-by-side picture: FER2013 training faces next to faces aligned from real videos.

Top rows: random FER2013 training images (48x48 grey). Bottom rows: faces that dfer's own
pipeline (MTCNN landmarks + similarity alignment) cuts from each video with a checkpoint's
preprocessing (template, input size, grey). If the two look alike in framing, the template
is right. Used for the model card of the bundled weights.

    python scripts/alignment_montage.py --weights weights/logo_former_fer2013.safetensors \\
        --fer ../shared/data/fer2013/train --out weights/logo_former_fer2013_alignment.png \\
        ../shared/media/single_face_smile.mp4 ../shared/media/talking_head_webcam.mp4
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image


def video_faces(path: str, pre, count: int, detector) -> list[np.ndarray]:
    """`count` aligned faces from frames spread over the video (largest face per frame)."""
    from dfer_cli.faces.align import align_face
    from dfer_cli.video.decode import iter_frames, probe

    info = probe(path)
    times = np.linspace(0, max(info.duration - 0.05, 0), count * 3)
    frames, k = [], 0
    for f in iter_frames(path):
        if k < len(times) and f.time >= times[k]:
            frames.append(f.rgb)
            k += 1
    out = []
    for rgb, dets in zip(frames, detector.detect(frames)):
        if dets and len(out) < count:
            d = max(dets, key=lambda d: d.area)
            out.append(align_face(rgb, d.landmarks, pre.input_size, pre.template, pre.detail_size))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--weights", required=True, help="checkpoint whose preprocessing is used")
    ap.add_argument("--fer", required=True, help="FER2013 train folder (class sub-folders)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-row", type=int, default=8)
    ap.add_argument("--scale", type=int, default=2, help="pixel zoom of the picture")
    args = ap.parse_args()

    from dfer_cli.checkpoint import read_checkpoint
    from dfer_cli.faces.detect import FaceDetector
    from dfer_cli.preprocess import Preprocessing

    _, meta = read_checkpoint(args.weights)
    pre = Preprocessing.from_dict(meta["preprocessing"])
    size, n = pre.input_size, args.per_row
    rng = random.Random(0)
    fer = sorted(Path(args.fer).glob("*/*.jpg"))
    fer_rows = [[np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
                 for p in rng.sample(fer, n)] for _ in range(2)]
    detector = FaceDetector()
    vid_rows = []
    for v in args.videos:
        faces = video_faces(v, pre, n, detector)
        faces += [np.zeros((size, size, 3), np.uint8)] * (n - len(faces))
        vid_rows.append(faces)
    rows = fer_rows + vid_rows
    gap = 2
    canvas = np.full((len(rows) * (size + gap), n * (size + gap), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            if pre.grayscale:
                img = np.repeat((img.astype(np.float32) @ [0.299, 0.587, 0.114])[..., None], 3, -1).astype(np.uint8)
            canvas[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = img
    pic = Image.fromarray(canvas).resize((canvas.shape[1] * args.scale, canvas.shape[0] * args.scale), Image.NEAREST)
    pic.save(args.out)
    print(f"wrote {args.out}: rows 1-2 FER2013 train, then one row per video: {', '.join(args.videos)}")


if __name__ == "__main__":
    main()

"""What each checkpoint reads on single frames of a real video: one line per checkpoint, one
`label p` per sampled frame that shows a face (the largest face, aligned as predict aligns it,
classified as a clip of that one frame repeated).

    python scripts/frame_readings.py examples/single_face_smile.mp4 weights/logo_former_fer2013.safetensors runs/x/best.safetensors
    python scripts/frame_readings.py VIDEO CKPT... --every 4 --zoom 0.85

This is how the model card compares candidate checkpoints on the example smile (neutral for
about the first second, then a smile) without the smoothing of 16-frame windows. --zoom
scales the alignment template about its centre (< 1: more margin), to see how much a
checkpoint depends on the framing. The first checkpoint's preprocessing (size, template,
grey) is used for all of them, so give checkpoints that share it.
"""
from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("video")
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--every", type=int, default=4, help="read every n-th decoded frame")
    ap.add_argument("--zoom", type=float, default=1.0, help="template zoom (1 = as trained)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch

    from dfer_cli.checkpoint import load_model
    from dfer_cli.faces.align import align_face
    from dfer_cli.faces.detect import FaceDetector
    from dfer_cli.preprocess import frames_to_tensor, zoom_template
    from dfer_cli.video import decode as video

    torch.set_num_threads(args.threads)
    frames = [f.rgb for i, f in enumerate(video.iter_frames(args.video)) if i % args.every == 0]
    detector = FaceDetector()
    found = []  # (frame index, largest face)
    for start in range(0, len(frames), 8):
        for k, faces in enumerate(detector.detect(frames[start:start + 8])):
            if faces:
                found.append((start + k, max(faces, key=lambda d: d.area)))
    if not found:
        raise SystemExit(f"{args.video}: no face in the {len(frames)} sampled frames; "
                         "nothing to read (try a smaller --every)")
    models = [load_model(p) for p in args.checkpoints]
    pre = models[0].preprocessing
    template = zoom_template(pre.template, args.zoom)
    crops = np.stack([align_face(frames[i], d.landmarks, int(pre.input_size), template, pre.detail_size) for i, d in found])
    x = frames_to_tensor(crops, pre)  # (N, 3, H, W)
    print(f"{args.video}: {len(found)} of {len(frames)} sampled frames show a face "
          f"(every {args.every}th frame, template zoom {args.zoom:g})")
    for path, model in zip(args.checkpoints, models):
        with torch.no_grad():  # each frame as a clip of num_frames copies: (N, T, 3, H, W)
            probs = model(x[:, None].expand(-1, int(model.preprocessing.num_frames), -1, -1, -1)).softmax(-1)
        top = probs.argmax(-1)
        cells = " ".join(f"{model.classes[int(c)][:3]} {float(p[c]):.2f}" for p, c in zip(probs, top))
        print(f"{path}: {cells}")


if __name__ == "__main__":
    main()

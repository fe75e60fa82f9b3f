"""Markdown table of what a checkpoint says about each video: the model card's
"clip-level behaviour" section.

    python scripts/media_report.py --weights logo_former_fer2013 ../shared/media/*.mp4 ../shared/media/*.mov

For every video: its duration, the face tracks found, and per track the clip labels in time
order (label and confidence of each clip) and the track's dominant label.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--weights", default=None, help="checkpoint name or path (default: dfer's default)")
    ap.add_argument("--all-faces", action="store_true")
    ap.add_argument("--window", type=float, default=2.0, help="clip length, seconds")
    ap.add_argument("--stride", type=float, default=1.0, help="seconds between clip starts")
    args = ap.parse_args()

    import dfer_cli
    from dfer_cli.weights import DEFAULT_WEIGHTS

    model = dfer_cli.load_model(args.weights or DEFAULT_WEIGHTS)
    print("| video | duration | track | clips (start s: label p) | dominant |")
    print("|---|---:|---:|---|---|")
    for v in args.videos:
        res = dfer_cli.predict_video(model, v, all_faces=args.all_faces, window=args.window,
                                     stride=args.stride)
        name = Path(v).name
        if not res.tracks:
            print(f"| {name} | {res.duration:.1f} s | – | no face found | – |")
            continue
        for t in res.tracks:
            clips = [c for c in res.clips if c.track == t.track]
            seq = ", ".join(f"{c.start:g}: {c.label} {c.confidence:.2f}" if c.label else
                            f"{c.start:g}: ({c.status})" for c in clips)
            dom = f"{t.label} {t.probabilities[t.label]:.2f}" if t.label else "–"
            print(f"| {name} | {res.duration:.1f} s | {t.track} | {seq} | {dom} |")


if __name__ == "__main__":
    main()

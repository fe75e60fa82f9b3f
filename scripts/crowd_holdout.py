"""Score checkpoints against the crowd's votes on the images their training held out.

    python scripts/crowd_holdout.py runs/crowd_logo/last.safetensors runs/crowd_cnn/last.safetensors \
        runs/crowd_pair_cal.safetensors --data-root ../shared/data/fer2013 \
        --votes ../shared/data/fer2013/ferplus/train.csv [--holdout 0.1 --holdout-seed 0] [--threads 2]

The held-out images are rebuilt as `dfer train --votes ... --holdout F --holdout-seed S`
chose them (and checked against each checkpoint's recorded digest), so every model is
compared on images none of them trained on, without touching `val`. Each checkpoint is
scored at its stored temperature (1 when it has none) and, when it has one, at 1 too.
"""
from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--votes", action="append", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--holdout-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from dfer_cli.calibration import dataset_logits, held_out_with_votes, recorded_holdouts, temperature_of
    from dfer_cli.checkpoint import load_model
    from dfer_cli.metrics import VoteScores

    if args.threads:
        torch.set_num_threads(args.threads)
    held, digest = held_out_with_votes(args.data_root, args.votes, split=args.split, holdout=args.holdout,
                                       seed=args.holdout_seed)
    votes = np.array([s.votes for s in held], dtype=np.float64)
    print(f"{len(held)} held-out images (holdout {args.holdout:g} of {args.split}, seed {args.holdout_seed}); "
          f"sha256 of their names {digest[:12]}")
    print(f"{'checkpoint':48s} {'T':>6s} {'acc':>7s} {'UAR':>7s} {'NLL':>7s} {'KL':>7s} {'VSCE':>7s} {'ECE':>7s}")
    for path in args.checkpoints:
        model = load_model(path)
        recorded = recorded_holdouts(model)
        if recorded and recorded != {digest}:
            print(f"{path}: trained with another held-out set; skipped")
            continue
        z = dataset_logits(model, held).astype(np.float64)
        temps = sorted({1.0, temperature_of(model)})
        for t in temps:
            p = np.exp(z / t - (z / t).max(1, keepdims=True))
            d = VoteScores(list(model.classes), votes, p / p.sum(1, keepdims=True)).to_dict()
            print(f"{path[-48:]:48s} {t:6.3f} {100 * d['plurality_accuracy']:7.2f} {100 * d['plurality_uar']:7.2f} "
                  f"{d['nll']:7.4f} {d['mean_kl']:7.4f} {d['vote_share_calibration_error']:7.4f} "
                  f"{d['top_label_ece']:7.4f}")


if __name__ == "__main__":
    main()

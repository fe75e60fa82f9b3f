"""Score checkpoints against the crowd's votes on the images their training held out.

    python scripts/crowd_holdout.py runs/crowd_logo/last.safetensors runs/crowd_cnn/last.safetensors \
        runs/crowd_pair_cal.safetensors --data-root ../shared/data/fer2013 \
        --votes ../shared/data/fer2013/ferplus/train.csv [--holdout 0.1 --holdout-seed 0] [--threads 2]

The held-out images are rebuilt as `dfer train --votes ... --holdout F --holdout-seed S`
chose them (and checked against each checkpoint's recorded digest), so every model is
compared on images none of them trained on, without touching `val`. Each checkpoint is
scored at its stored temperature (1 when it has none) and, when it has one, at 1 too.

With `--unseen` the tables are repeated for the held-out images without a near-duplicate
(the same difference hash, `dfer_cli.data.duplicates`) among the training images: FER2013
repeats pictures, and a held-out image whose twin was trained on flatters every model.
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
    ap.add_argument("--unseen", action="store_true", help="also score the held-out images without a twin in train")
    args = ap.parse_args()

    import torch

    from dfer_cli.calibration import log_probs, temperature_of
    from dfer_cli.checkpoint import load_model
    from dfer_cli.evaluation.calibrate import dataset_logits, held_out_with_votes, recorded_holdouts
    from dfer_cli.metrics import VoteScores

    if args.threads:
        torch.set_num_threads(args.threads)
    held, digest = held_out_with_votes(args.data_root, args.votes, split=args.split, holdout=args.holdout,
                                       seed=args.holdout_seed)
    votes = np.array([s.votes for s in held], dtype=np.float64)
    print(f"{len(held)} held-out images (holdout {args.holdout:g} of {args.split}, seed {args.holdout_seed}); "
          f"sha256 of their names {digest[:12]}")
    subsets = [("all", np.ones(len(held), dtype=bool))]
    if args.unseen:
        from dfer_cli.data import scan
        from dfer_cli.data.duplicates import unseen_mask

        names = {s.path for s in held}
        train = [s.path for s in scan("folder", args.data_root, args.split)[0] if s.path not in names]
        mask = unseen_mask([s.path for s in held], train)
        subsets.append((f"unseen ({int(mask.sum())})", mask))
    print(f"{'checkpoint':48s} {'images':>12s} {'T':>6s} {'acc':>7s} {'UAR':>7s} {'NLL':>7s} {'KL':>7s} "
          f"{'VSCE':>7s} {'ECE':>7s}")
    for path in args.checkpoints:
        model = load_model(path)
        recorded = recorded_holdouts(model)
        if recorded and recorded != {digest}:
            print(f"{path}: trained with another held-out set; skipped")
            continue
        z = dataset_logits(model, held).astype(np.float64)
        temps = sorted({1.0, temperature_of(model)})
        for t in temps:
            p = np.exp(log_probs(z, t))
            for label, keep in subsets:
                d = VoteScores(list(model.classes), votes[keep], p[keep]).to_dict()
                print(f"{path[-48:]:48s} {label:>12s} {t:6.3f} {100 * d['plurality_accuracy']:7.2f} "
                      f"{100 * d['plurality_uar']:7.2f} {d['nll']:7.4f} {d['mean_kl']:7.4f} "
                      f"{d['vote_share_calibration_error']:7.4f} {d['top_label_ece']:7.4f}")


if __name__ == "__main__":
    main()

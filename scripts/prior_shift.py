"""Choose the post-hoc prior shift of a logit-adjusted model on its run's held-out split.

    python scripts/prior_shift.py runs/starter/best.safetensors [--tta flip] [--threads 2]

A model trained with `--logit-adjust tau` predicts as if the classes were balanced (best
UAR); adding alpha * log(prior) to its logits moves it back towards the training prior
(best WAR). This script rebuilds the run's held-out split from the checkpoint's own recipe
(`--holdout` fraction and seed: the same images the run selected its epoch on, never the
test data), computes the logits once and prints WAR and UAR for alpha = 0, 0.1, ..., 1, then
the alpha with the highest WAR + UAR. Export with it:
`dfer weights export RUN/best.safetensors OUT.safetensors --prior-shift ALPHA`.
"""
from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--tta", default="none", choices=("none", "flip"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()

    import numpy as np
    import torch

    from dfer_cli.checkpoint import load_model
    from dfer_cli.data import ClipDataset, scan
    from dfer_cli.evaluate import predict_dataset
    from dfer_cli.losses import logit_adjustment
    from dfer_cli.metrics import Scores, confusion_matrix
    from dfer_cli.train import TrainConfig, holdout_split

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    recipe = TrainConfig.from_dict(model.provenance["recipe"])
    if not recipe.holdout:
        raise SystemExit(f"{args.checkpoint}: its run had no --holdout split to select on")
    samples, _ = scan(recipe.dataset, recipe.data_root, recipe.split, fold=recipe.fold, limit=recipe.limit,
                      seed=recipe.seed)
    _, held = holdout_split(samples, recipe.holdout, recipe.split_seed)
    ds = ClipDataset(held, model.preprocessing, train=False, classes=model.classes)
    probs, labels = predict_dataset(model, ds, batch_size=args.batch_size, tta=args.tta)
    logp = np.log(np.clip(probs, 1e-12, None))
    counts = model.provenance["data"]["train_class_counts"]
    log_prior = logit_adjustment([counts[c] for c in model.classes], 1.0).numpy()
    print(f"{args.checkpoint}: {len(held)} held-out images ({recipe.holdout:g} of {recipe.split}, "
          f"seed {recipe.split_seed}), tta {args.tta}")
    print("alpha    WAR     UAR")
    best = None
    for alpha in np.round(np.arange(0.0, 1.01, 0.1), 2):
        pred = (logp + alpha * log_prior).argmax(1)
        s = Scores(list(model.classes), confusion_matrix(labels, pred, len(model.classes)))
        print(f"{alpha:5.1f}  {100 * s.war:6.2f}  {100 * s.uar:6.2f}")
        if best is None or s.war + s.uar > best[1]:
            best = (float(alpha), s.war + s.uar)
    print(f"highest WAR + UAR: alpha {best[0]:.1f}")


if __name__ == "__main__":
    main()

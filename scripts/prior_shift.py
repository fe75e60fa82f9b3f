"""Choose the post-hoc prior shift of a logit-adjusted model on its run's held-out split,
and score several models as an ensemble there.

    python scripts/prior_shift.py runs/starter/best.safetensors [MORE.safetensors ...]
                                  [--tta flip] [--threads 2]

A model trained with `--logit-adjust tau` predicts as if the classes were balanced (best
UAR); adding alpha * log(prior) to its logits moves it back towards the training prior
(best WAR). This script rebuilds the run's held-out split from the checkpoint's own recipe
(`--holdout` fraction and seed: the same images the run selected its epoch on, never the
test data), computes the logits once and prints WAR and UAR for alpha = 0, 0.1, ..., 1, then
the alpha with the highest WAR + UAR. Export with it:
`dfer weights export RUN/best.safetensors OUT.safetensors --prior-shift ALPHA`.

With several checkpoints (runs that held out the same images: same data, `--holdout` and
`--holdout-seed`), each is scored on its own, then their ensemble: the mean of their
probabilities, the soft target that `dfer train --teacher A --teacher B` distils from
un-augmented images. Each model
sees the images at its own input size, so a 64 px and a 96 px model can be compared and
combined.

With `--unseen`, every table is repeated for the held-out images that have no
near-duplicate among the run's training images (`dfer_cli.data.duplicates`). FER2013's
training images hold many near-copies, and a held-out image whose twin was trained on is
nearly always right, so the full split flatters every model; its unseen part predicts the
scores on new images (FER2013 `val`) better.
"""
from __future__ import annotations

import argparse
import os


def split_of(model):
    """(recipe, training samples, held-out samples) of the run that made ``model``."""
    from dfer_cli.data import scan
    from dfer_cli.train.config import TrainConfig
    from dfer_cli.train.setup import holdout_split

    if "recipe" not in model.provenance:
        raise SystemExit(f"{model.checkpoint_path}: no training recipe in its provenance (not written by dfer "
                         "train), so its held-out split is unknown")
    recipe = TrainConfig.from_dict(model.provenance["recipe"])
    if not recipe.holdout:
        raise SystemExit(f"{model.checkpoint_path}: its run had no --holdout split to select on")
    samples, _ = scan(recipe.dataset, recipe.data_root, recipe.split, fold=recipe.fold, limit=recipe.limit,
                      seed=recipe.seed)
    kept, held = holdout_split(samples, recipe.holdout, recipe.split_seed)
    if recipe.holdout_unseen:  # the run validated on these only
        from dfer_cli.train.setup import unseen_held_out

        held, _ = unseen_held_out(kept, held)
    return recipe, kept, held


def held_out(model, tta: str, batch_size: int):
    """(probabilities (N, C), labels (N,), split description, sample paths) of ``model`` on
    its run's held-out split."""
    from dfer_cli.data import ClipDataset
    from dfer_cli.evaluation.run import predict_dataset

    recipe, _, held = split_of(model)
    ds = ClipDataset(held, model.preprocessing, train=False, classes=model.classes)
    probs, labels = predict_dataset(model, ds, batch_size=batch_size, tta=tta)
    where = (f"{len(held)} held-out images ({recipe.holdout:g} of {recipe.split}, seed {recipe.split_seed}), "
             f"tta {tta}")
    # relative to the data root: the same images reached through another path are the same
    return probs, labels, where, [os.path.relpath(sample.path, recipe.data_root) for sample in held]


def sweep(name: str, probs, labels, log_prior, classes, unseen=None) -> float:
    """Print WAR and UAR per alpha; return the alpha with the highest WAR + UAR. With
    ``unseen`` (a bool mask), the same again on those images only."""
    import numpy as np

    from dfer_cli.metrics import Scores, confusion_matrix

    logp = np.log(np.clip(probs, 1e-12, None))
    print(name)
    print("alpha    WAR     UAR")
    best = None
    for alpha in np.round(np.arange(0.0, 1.01, 0.1), 2):
        pred = (logp + alpha * log_prior).argmax(1)
        s = Scores(list(classes), confusion_matrix(labels, pred, len(classes)))
        print(f"{alpha:5.1f}  {100 * s.war:6.2f}  {100 * s.uar:6.2f}")
        if best is None or s.war + s.uar > best[1]:
            best = (float(alpha), s.war + s.uar)
    print(f"highest WAR + UAR: alpha {best[0]:.1f}")
    if unseen is not None:
        sweep(f"{name}, unseen images only ({int(unseen.sum())} of {len(unseen)}: no near-duplicate in its "
              "training images)", probs[unseen], labels[unseen], log_prior, classes)
    return best[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", metavar="checkpoint")
    p.add_argument("--tta", default="none", choices=("none", "flip"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--unseen", action="store_true",
                   help="also score the held-out images that have no near-duplicate among the run's training "
                        "images (dfer_cli/data/duplicates.py): a better guess of the scores on new images")
    p.add_argument("--duplicate-distance", type=int, default=0, metavar="BITS",
                   help="with --unseen, images whose 64-bit hashes differ in at most BITS places are duplicates")
    args = p.parse_args()

    import numpy as np
    import torch

    from dfer_cli.checkpoint import load_model
    from dfer_cli.train.losses import logit_adjustment

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for path in args.checkpoints:
        model = load_model(path)
        probs, labels, where, paths = held_out(model, args.tta, args.batch_size)
        if runs and (list(model.classes) != list(runs[0][0].classes) or paths != runs[0][4]):
            raise SystemExit(f"{path}: its run held out other images than {args.checkpoints[0]}'s (or has other "
                             "classes); an ensemble needs the same --holdout and --holdout-seed on the same data")
        runs.append((model, probs, labels, where, paths))
    model, _, labels, where, _ = runs[0]
    counts = model.provenance["data"]["train_class_counts"]
    log_prior = logit_adjustment([counts[c] for c in model.classes], 1.0).numpy()
    unseen = None
    if args.unseen:
        from dfer_cli.data.duplicates import unseen_mask

        _, kept, held = split_of(model)
        unseen = unseen_mask([s.path for s in held], [s.path for s in kept], args.duplicate_distance)
    print(where)
    for path, (_, probs, _, _, _) in zip(args.checkpoints, runs):
        sweep(path, probs, labels, log_prior, model.classes, unseen)
    if len(runs) > 1:
        mean = np.mean([run[1] for run in runs], axis=0)
        sweep(f"ensemble of {len(runs)} (mean of probabilities)", mean, labels, log_prior, model.classes, unseen)


if __name__ == "__main__":
    main()

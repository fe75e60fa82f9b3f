"""Evaluation: a model over a dataset split -> WAR, UAR, per-class recall, confusion matrix.

Test-time sampling follows the papers: each clip is cut into `num_frames` segments and the
frame at each segment centre is used. With ``test_clips = K > 1`` the K clips at evenly
shifted positions inside the segments are classified and their probabilities averaged.
``evaluate_folds`` runs the DFEW 5-fold protocol: each fold's checkpoint on its own test
fold, reported per fold and as mean ± sample std (ddof=1, see ``FoldSummary.stat``).

Frames are sampled as the checkpoint was trained (its ``sampling``: uniform, or 8 segments
x 2 consecutive frames). No model selection on the scored split: a run's ``best``
checkpoint records the split it was selected on (``provenance.selected_on``);
:func:`choose_checkpoint` scores the run's ``last`` checkpoint instead when that is the split
being scored, and refuses when there is no ``last`` next to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dfer_cli.evaluation.selection import CheckpointChoice, choose_checkpoint
from dfer_cli.metrics import Scores, confusion_matrix
from dfer_cli.models.inference import clip_probs


def predict_dataset(model, dataset, *, batch_size: int = 16, device="cpu", indices=None,
                    workers: int = 0, on_batch=None, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C) and true labels (N,) for `dataset` (or its `indices`).

    Items may be (T, 3, S, S) clips or (K, T, 3, S, S) stacks of test clips, whose softmax
    outputs are averaged. ``tta``: see :func:`clip_probs`. ``on_batch(done, total)``
    reports progress.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    ds = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    was_training = model.training
    model.eval()
    probs, labels, done = [], [], 0
    try:
        with torch.inference_mode():
            for x, y in loader:
                x = x.to(device)
                if x.dim() == 6:  # (B, K, T, C, H, W): average over the K test clips
                    b, k = x.shape[:2]
                    p = clip_probs(model, x.flatten(0, 1), tta).view(b, k, -1).mean(1)
                else:
                    p = clip_probs(model, x, tta)
                probs.append(p.cpu().numpy())
                labels.append(y.numpy())
                done += len(y)
                if on_batch is not None:
                    on_batch(done, len(ds))
    finally:
        model.train(was_training)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


def score(probs: np.ndarray, labels: np.ndarray, classes) -> Scores:
    """Scores from probabilities (argmax) and labels."""
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    return Scores(list(classes), confusion_matrix(labels, pred, len(classes)))


@dataclass
class FoldResult:
    fold: int
    weights: str
    scores: Scores
    checkpoint: "CheckpointChoice | None" = None   # which checkpoint was scored, and why


@dataclass
class FoldSummary:
    """Per-fold scores and their mean ± std over the folds, as the DFEW papers report."""

    folds: list[FoldResult] = field(default_factory=list)

    def stat(self, key: str) -> tuple[float, float]:
        """(mean, std) of score ``key`` ("uar", "war") over the folds.

        The std is the SAMPLE standard deviation (ddof=1: divide by n - 1), the estimate of
        the spread between folds that papers report for 5-fold results -- not the population
        std (divide by n), which is smaller by sqrt((n-1)/n), 11 % at 5 folds. With fewer
        than two folds the spread is unknown: std is NaN (mean is NaN with none).
        """
        vals = np.array([getattr(f.scores, key) for f in self.folds], dtype=np.float64)
        mean = float(vals.mean()) if len(vals) else math.nan
        return mean, float(vals.std(ddof=1)) if len(vals) > 1 else math.nan

    def to_dict(self) -> dict:
        """JSON-ready: per-fold scores, mean, sample std (``std_ddof``: 1); NaN as None."""
        def num(v: float):
            return None if math.isnan(v) else v

        (uar_m, uar_s), (war_m, war_s) = self.stat("uar"), self.stat("war")
        return {
            "folds": [{"fold": f.fold, "weights": f.weights, **f.scores.to_dict(),
                       **({"checkpoint": f.checkpoint.to_dict()} if f.checkpoint is not None else {})}
                      for f in self.folds],
            "mean": {"uar": num(uar_m), "war": num(war_m)},
            "std": {"uar": num(uar_s), "war": num(war_s)},
            "std_ddof": 1,
        }


def evaluate(model, dataset, *, batch_size: int = 16, device="cpu", workers: int = 0, on_batch=None,
             tta: str = "none") -> Scores:
    """Scores of `model` on `dataset`, in the model's class order."""
    probs, labels = predict_dataset(model, dataset, batch_size=batch_size, device=device,
                                    workers=workers, on_batch=on_batch, tta=tta)
    classes = getattr(model, "classes", None) or dataset.classes
    return score(probs, labels, classes)


def run_checkpoint(weights: str, which: str = "best") -> str:
    """``weights`` itself, or for a run folder (holding best/last.safetensors) its
    ``{which}.safetensors``."""
    import os

    if os.path.isdir(weights):
        path = os.path.join(weights, f"{which}.safetensors")
        if not os.path.isfile(path):
            raise ValueError(f"{weights} is a folder without {which}.safetensors: pass a run folder or a checkpoint file")
        return path
    return weights


def fold_checkpoints(run_dir: str, which: str = "best") -> dict[int, str]:
    """The five fold checkpoints of a DFEW 5-fold run directory: ``fold1/best.safetensors``
    ... ``fold5/...`` (or ``last``). Raises ValueError naming what is missing."""
    import os

    found, missing = {}, []
    for k in range(1, 6):
        path = os.path.join(run_dir, f"fold{k}", f"{which}.safetensors")
        (found.__setitem__(k, path) if os.path.isfile(path) else missing.append(path))
    if missing:
        raise ValueError(f"5-fold evaluation needs {run_dir}/fold1..fold5/{which}.safetensors; missing: "
                         + ", ".join(missing) + " (train each fold with --fold K --output RUN/foldK)")
    return found


def format_pm(mean: float, std: float) -> str:
    """'54.21 ± 1.03' in percent ('54.21' when the std is NaN, e.g. one fold)."""
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def remap_to_classes(samples, classes) -> tuple[list, list]:
    """Samples relabelled from dfer's class order to a checkpoint's `classes`; samples
    whose class the checkpoint lacks are returned apart (to be reported)."""
    from dataclasses import replace

    from dfer_cli.labels import CLASSES

    index = {c: i for i, c in enumerate(classes)}
    kept, dropped = [], []
    for s in samples:
        name = CLASSES[s.label]
        (kept.append(replace(s, label=index[name])) if name in index else dropped.append(s))
    return kept, dropped


def evaluate_checkpoint(weights, dataset: str, data_root: str, split: str, **kw):
    """Load `weights` (path or name) and score it on a dataset split with the checkpoint's
    own preprocessing, frame sampling and class order. Returns (Scores, DataReport); see
    :func:`evaluate_split` for the arguments."""
    ev = evaluate_split(weights, dataset, data_root, split, **kw)
    return ev.scores, ev.report


@dataclass
class Evaluation:
    """Everything one scoring run produced: hard-label ``scores``, the skipped-file
    ``report``, and per sample its ``paths`` (relative to the data root), ``labels`` (index
    into ``classes``), ``probs`` (N, C) and, with votes, ``votes`` (N, C; a row of NaN where
    the sample has none) and ``vote_scores`` over the samples that have them."""

    scores: Scores
    report: object
    classes: list
    paths: list
    labels: np.ndarray
    probs: np.ndarray
    votes: np.ndarray | None = None
    vote_scores: object = None
    temperature: float = 1.0


def evaluate_split(weights, dataset: str, data_root: str, split: str, *, fold: int | None = None,
                   batch_size: int = 16, test_clips: int = 1, limit: int | None = None,
                   device="cpu", workers: int = 0, on_batch=None, seed: int = 0, tta: str = "none",
                   on_choice=None, guard: bool = True, votes=None) -> Evaluation:
    """Score `weights` on a dataset split (see :func:`evaluate_checkpoint`).

    With ``guard`` (the default) the checkpoint goes through :func:`choose_checkpoint`: a
    ``best`` selected on this very split is replaced by its run's ``last``.
    ``on_choice(CheckpointChoice)`` is told which checkpoint is scored, before scoring.
    ``votes``: vote CSVs (data/votes.py); each sample found there is also scored against its
    raters' vote distribution (:class:`dfer_cli.metrics.VoteScores`)."""
    import os

    from dfer_cli.calibration import temperature_of
    from dfer_cli.checkpoint import load_model
    from dfer_cli.data import ClipDataset, scan
    from dfer_cli.labels import CLASSES
    from dfer_cli.metrics import VoteScores

    if guard:
        choice = choose_checkpoint(str(weights), dataset, data_root, split, fold)
        weights = choice.path
        if on_choice is not None:
            on_choice(choice)
    table = None
    if votes:
        from dfer_cli.data.votes import read_vote_tables

        table = read_vote_tables(votes)
    model = load_model(weights, device=device, for_inference=True)
    if table is not None and sorted(model.classes) != sorted(CLASSES):
        raise ValueError(f"--votes scores dfer's 7 classes and {weights} predicts {', '.join(model.classes)}; "
                         "leave --votes out for this checkpoint")
    samples, report = scan(dataset, data_root, split, fold=fold, limit=limit, seed=seed)
    samples, dropped = remap_to_classes(samples, model.classes)
    for s in dropped:
        report.add("class not in the checkpoint", s.path)
    if not samples:
        raise ValueError(f"no usable samples in {data_root} split {split!r}" + (f" fold {fold}" if fold else ""))
    ds = ClipDataset(samples, model.preprocessing, train=False, classes=model.classes, test_clips=test_clips,
                     sampling=getattr(model, "sampling", "uniform"))
    probs, labels = predict_dataset(model, ds, batch_size=batch_size, device=device, workers=workers,
                                    on_batch=on_batch, tta=tta)
    ev = Evaluation(scores=score(probs, labels, model.classes), report=report, classes=list(model.classes),
                    paths=[os.path.relpath(s.path, data_root).replace(os.sep, "/") for s in samples],
                    labels=labels, probs=probs, temperature=temperature_of(model))
    if table is not None:
        order = [CLASSES.index(c) for c in model.classes]   # dfer order -> the model's
        split_dir = os.path.join(data_root, split)
        rows = np.full((len(samples), len(CLASSES)), np.nan)
        other = np.zeros(len(samples))
        for i, s in enumerate(samples):
            v, why = table.lookup(s.path, data_root, split_dir)
            if v is None:
                report.add(f"no usable votes ({why}); scored against its label only", s.path)
            else:
                rows[i] = np.asarray(v)[order]
                other[i] = table.other.get(table.key_of(s.path, data_root, split_dir), 0.0)
        ev.votes = rows
        have = ~np.isnan(rows).any(1)
        if not have.any():
            raise ValueError(f"no sample of {data_root} split {split!r} has votes in {table.path}; check that its "
                             "'file' paths are relative to --data-root")
        ev.vote_scores = VoteScores(list(model.classes), rows[have], probs[have].astype(np.float64), other[have])
    return ev


def write_predictions(ev: Evaluation, path: str) -> None:
    """One CSV row per sample: ``path`` (relative to the data root), ``label`` (its class
    name) and one probability column per class, named by class (atomic write)."""
    import csv
    import io

    from dfer_cli.fsutil import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", *ev.classes])
    for p, y, row in zip(ev.paths, ev.labels, ev.probs):
        w.writerow([p, ev.classes[int(y)], *(f"{float(v):.6f}" for v in row)])
    atomic_write_text(path, buf.getvalue())


def evaluate_folds(run_dir: str, data_root: str, *, which: str = "best", on_choice=None, **kw) -> FoldSummary:
    """The DFEW 5-fold protocol: ``run_dir/fold{k}/{which}.safetensors`` on test fold k.

    Per fold, a ``best`` selected on that fold's test split is replaced by the fold's
    ``last`` (:func:`choose_checkpoint`; every fold is checked before any is scored, so a
    refusal comes first). ``on_choice(fold, CheckpointChoice)`` is told each fold's choice."""
    summary = FoldSummary()
    choices = {k: choose_checkpoint(path, "dfew", data_root, "test", k)
               for k, path in fold_checkpoints(run_dir, which).items()}
    for k, choice in choices.items():
        if on_choice is not None:
            on_choice(k, choice)
        scores, _ = evaluate_checkpoint(choice.path, "dfew", data_root, "test", fold=k, guard=False, **kw)
        summary.folds.append(FoldResult(k, choice.path, scores, choice))
    return summary



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

from dfer_cli.metrics import Scores, confusion_matrix


def clip_logits(model, x):
    """``model(x)`` for clips (B, T, 3, S, S), with the trunk run once per still.

    Datasets give a video model a still image as that image repeated T times. When every
    clip of the batch is such a repeat (each frame equal to its first), the model is in eval
    mode without autograd, and it splits into a per-frame trunk and a clip head
    (``frame_features`` / ``forward_tokens`` / ``forward_head``, as dfer's models do), the
    trunk runs on the B stills instead of the B*T frames and the head reads its maps
    repeated: the same logits (in eval mode the trunk treats frames independently), about T
    times less trunk work (FER2013 `val` with a 16-frame model)."""
    import torch

    T = x.shape[1] if x.dim() == 5 else 1
    split = all(callable(getattr(model, a, None)) for a in ("frame_features", "forward_tokens", "forward_head"))
    if T > 1 and split and not model.training and not torch.is_grad_enabled() \
            and torch.equal(x, x[:, :1].expand_as(x)):
        maps = model.frame_features(x[:, 0])                                   # (B, ...)
        return model.forward_head(model.forward_tokens(maps.unsqueeze(1).expand(-1, T, *maps.shape[1:])))
    return model(x)


def clip_probs(model, x, tta: str = "none"):
    """Probabilities (B, C) of clips (B, T, 3, S, S): the softmax at the model's stored
    temperature (calibration.py). ``tta="flip"`` averages them
    with those of the left-right mirrored clips (test-time augmentation: a face's expression
    does not change in a mirror; costs a second forward pass)."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta {tta!r}: choose one of {', '.join(TTA_MODES)}")
    from dfer_cli.calibration import probabilities

    p = probabilities(model, clip_logits(model, x))
    if tta == "flip":
        p = (p + probabilities(model, clip_logits(model, x.flip(-1)))) / 2
    return p


TTA_MODES = ("none", "flip")


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
class CheckpointChoice:
    """The checkpoint an evaluation scores: ``path``; ``which`` ("best", "last", or None for
    a file that is not a run checkpoint); its ``epoch`` of ``epochs``; for a best,
    ``selected_on`` (the selection record, train.selection_record); ``requested`` (the path
    asked for) and a one-line ``note`` when another checkpoint was scored instead."""

    path: str
    requested: str
    which: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    selected_on: dict | None = None
    note: str | None = None
    members: "list[CheckpointChoice] | None" = None   # of an ensemble: each member's own record
    averaged_from: list[str] | None = None   # of a weight average (scripts/average_weights.py): its inputs

    def describe(self) -> str:
        """'last (epoch 100 of 100)', 'best (epoch 37 of 100, selected on holdout 0.1 of
        dfew train fold 1)', 'ensemble of 2 members: 1) ...; 2) ...', or 'checkpoint (no
        training epoch recorded)' for files without one."""
        if self.members is not None:
            parts = "; ".join(f"{i}) {m.describe()}" for i, m in enumerate(self.members, 1))
            return f"ensemble of {len(self.members)} members: {parts}"
        if self.averaged_from is not None:
            return f"weight average of {len(self.averaged_from)} checkpoints ({', '.join(self.averaged_from)})"
        if self.epoch is None:
            return f"{self.which or 'checkpoint'} (no training epoch recorded)"
        of = f" of {self.epochs}" if self.epochs else ""
        text = f"{self.which or 'checkpoint'} (epoch {self.epoch}{of}"
        if self.which == "best":
            text += f", selected on {describe_selection(self.selected_on)}"
            if self.epochs and self.epoch >= self.epochs:
                text += "; it is also the last epoch"
        elif self.which == "last" and self.best_epoch and self.best_epoch != self.epoch:
            text += f"; the run's best was epoch {self.best_epoch}"
        return text + ")"

    def to_dict(self) -> dict:
        return {"path": self.path, "requested": self.requested, "which": self.which, "epoch": self.epoch,
                "epochs": self.epochs, "best_epoch": self.best_epoch, "selected_on": self.selected_on,
                "substituted": self.path != self.requested, "description": self.describe(),
                **({"members": [m.to_dict() for m in self.members]} if self.members is not None else {}),
                **({"averaged_from": list(self.averaged_from)} if self.averaged_from is not None else {})}


def describe_selection(sel: dict | None) -> str:
    """'dfew test fold 1', 'holdout 0.1 of folder train (/data/x)', 'an unrecorded split'."""
    if not sel:
        return "an unrecorded split"
    where = f"{sel.get('dataset')} {sel.get('split')}" + (f" fold {sel['fold']}" if sel.get("fold") else "")
    if sel.get("dataset") == "folder" and sel.get("root"):
        where += f" ({sel['root']})"
    return f"holdout {sel['holdout']:g} of {where}" if sel.get("holdout") else where


def _selection_from_provenance(prov: dict) -> dict | None:
    """The selection record of a ``best`` checkpoint; for one written before dfer recorded
    it, rebuilt from the run's data provenance (``val_split`` 'holdout F of SPLIT ...' or a
    split name)."""
    from dfer_cli.data import canonical_split

    if isinstance(prov.get("selected_on"), dict):
        return prov["selected_on"]
    data = prov.get("data") or {}
    val = data.get("val_split")
    if not isinstance(val, str) or not val:
        return None
    dataset = data.get("dataset")
    if val.startswith("holdout "):
        try:
            frac = float(val.split()[1])
        except (IndexError, ValueError):
            frac = None
        return {"metric": "val_uar", "dataset": dataset, "split": canonical_split(dataset, data.get("split")),
                "fold": data.get("fold"), "holdout": frac or 1.0, "root": data.get("root")}
    return {"metric": "val_uar", "dataset": dataset, "split": canonical_split(dataset, val), "fold": data.get("fold"),
            "holdout": None, "root": data.get("root")}


def selected_on_split(sel: dict | None, dataset: str, data_root: str, split: str, fold: int | None) -> bool:
    """Whether a ``best`` checkpoint selected as ``sel`` says was chosen on the split being
    scored: same dataset, same split (canonical names, e.g. DFEW 'val' is 'test'), same DFEW
    fold, and for a folder layout the same root folder. Selection on a holdout of the
    training split never is; an unknown selection (None) is not counted as one."""
    import os

    from dfer_cli.data import canonical_split

    if not sel or sel.get("holdout"):
        return False
    if sel.get("dataset") != dataset or sel.get("split") != canonical_split(dataset, split):
        return False
    if dataset == "dfew" and sel.get("fold") != fold:
        return False
    if dataset == "folder":
        root = sel.get("root")
        return bool(root) and os.path.realpath(root) == os.path.realpath(data_root)
    return True


def _read_choice(path: str, requested: str) -> CheckpointChoice:
    """What a checkpoint's provenance says about itself (best/last, epoch, selection)."""
    from dfer_cli.checkpoint import read_metadata

    prov = read_metadata(path).get("provenance") or {}
    records = prov.get("members")
    if isinstance(records, list) and records:
        # an ensemble (`dfer weights ensemble`): its top-level record is its first member's, so
        # each member is described from its own record and the file as a whole is neither a
        # run's best nor its last (never substituted)
        records = [r if isinstance(r, dict) else {} for r in records]
        members = [_choice_from_provenance(str(r.get("file") or f"member {i}"), str(r.get("file") or ""),
                                           r.get("provenance") or {}) for i, r in enumerate(records, 1)]
        return CheckpointChoice(path=path, requested=requested, members=members)
    return _choice_from_provenance(path, requested, prov)


def _choice_from_provenance(path: str, requested: str, prov: dict) -> CheckpointChoice:
    """A CheckpointChoice from one model's provenance record."""
    import os

    averaged = prov.get("averaged_from")
    if isinstance(averaged, list) and averaged:
        # its other fields are its first input's: the average is neither a best nor a last
        return CheckpointChoice(path=path, requested=requested, averaged_from=[str(a) for a in averaged])
    which = prov.get("checkpoint")
    if which not in ("best", "last"):
        # written before dfer recorded it: the file name (or the name it was exported from)
        name = (prov.get("exported_from") or {}).get("file") or os.path.basename(path)
        stem = os.path.splitext(os.path.basename(str(name)))[0]
        which = stem if stem in ("best", "last") and "epoch" in prov else None
    epoch = prov.get("epoch") if type(prov.get("epoch")) is int else None
    epochs = (prov.get("recipe") or {}).get("epochs")
    best_epoch = prov.get("best_epoch") if type(prov.get("best_epoch")) is int else None
    return CheckpointChoice(path=path, requested=requested, which=which, epoch=epoch,
                            epochs=epochs if type(epochs) is int else None, best_epoch=best_epoch,
                            selected_on=_selection_from_provenance(prov) if which == "best" else None)


def choose_checkpoint(weights: str, dataset: str, data_root: str, split: str, fold: int | None = None) -> CheckpointChoice:
    """The checkpoint to score for ``weights`` (a path or a weights name) on a split.

    A run's ``best`` checkpoint selected on the split being scored (e.g. a DFEW fold trained
    with the test fold as validation) is replaced by the ``last.safetensors`` next to it,
    with a one-line ``note``; when there is none, ValueError naming the fix. A best whose
    epoch is the run's last epoch is the last checkpoint already and is kept. An ensemble
    (`dfer weights ensemble`) is described member by member and always scored as it is, with
    a ``note`` naming any member that is a best selected on the split being scored."""
    import os

    from dfer_cli.checkpoint import CheckpointError
    from dfer_cli.weights import find_weights

    try:
        path = str(find_weights(weights))
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None

    def chosen_here(c: CheckpointChoice) -> bool:
        # a best selected on the split being scored, and not simply the run's last epoch
        return (c.which == "best" and selected_on_split(c.selected_on, dataset, data_root, split, fold)
                and not (c.epochs and c.epoch is not None and c.epoch >= c.epochs))

    choice = _read_choice(path, path)
    if choice.members is not None:
        # an ensemble cannot be swapped for a last checkpoint: say which members were chosen here
        here = [(i, m) for i, m in enumerate(choice.members, 1) if chosen_here(m)]
        if here:
            named = ", ".join(f"member {i} ({m.path}, epoch {m.epoch})" for i, m in here)
            choice.note = (f"{path}: {named} {'was' if len(here) == 1 else 'were'} selected on "
                           f"{describe_selection(here[0][1].selected_on)}, the split being scored, so this "
                           "score overstates unseen data; rebuild the ensemble from the runs' last checkpoints")
        return choice
    if not chosen_here(choice):
        return choice
    where = describe_selection(choice.selected_on)
    last = os.path.join(os.path.dirname(path), "last.safetensors")
    if not os.path.isfile(last):
        raise ValueError(f"{path} was selected on {where}, the split being scored, and there is no last.safetensors "
                         "next to it: score the run's last checkpoint, or retrain with --holdout 0.1 to select on "
                         "held-out training data")
    chosen = _read_choice(last, path)
    chosen.note = (f"{path} was selected (epoch {choice.epoch}) on {where}, the split being scored; "
                   f"scoring {last} instead")
    return chosen


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
    model = load_model(weights, device=device)
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


def plot_confusion(scores: Scores, path: str, title: str | None = None, reliability: list | None = None) -> str:
    """Write a confusion-matrix PNG: cells coloured by row-normalised recall, annotated
    with percent and count. With ``reliability`` (``metrics.reliability_bins``) a second
    panel draws the reliability diagram against the vote shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(scores.confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(scores.classes)
    side = (1.0 + 0.9 * n, 0.8 + 0.8 * n)
    if reliability is None:
        fig, ax = plt.subplots(figsize=side, dpi=120)
    else:
        fig, (ax, rax) = plt.subplots(1, 2, figsize=(side[0] + side[1], side[1]), dpi=120)
        _plot_reliability(rax, reliability)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{100 * norm[i, j]:.0f}%\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), scores.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), scores.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"WAR {100 * scores.war:.2f}%  UAR {100 * scores.uar:.2f}%  (n={scores.count})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_reliability(ax, bins: list) -> None:
    """Mean vote share against mean predicted probability per bin (every sample x class
    pair), the diagonal for reference and each bin's share of the pairs as bars."""
    used = [b for b in bins if b["count"]]
    total = sum(b["count"] for b in bins)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    ax.bar([(b["low"] + b["high"]) / 2 for b in used], [b["count"] / total for b in used],
           width=1 / len(bins), color="0.85", edgecolor="0.7", label="pairs in bin (share)")
    ax.plot([b["mean_probability"] for b in used], [b["mean_share"] for b in used], "o-", color="tab:blue",
            label="mean vote share")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("share of raters naming the class")
    ax.set_title("reliability against the vote shares", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)

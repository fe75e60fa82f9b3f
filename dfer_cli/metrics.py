"""Classification metrics of the DFER papers: WAR (accuracy) and UAR (mean per-class recall).

Everything is computed from one confusion matrix ``cm[true, predicted]`` of counts, so
results from several processes or folds combine by adding matrices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall of each class (diagonal / row sum); NaN for a class with no samples."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.where(support > 0, support, 1), np.nan)


def uar(cm: np.ndarray) -> float:
    """Unweighted average recall: the mean recall over the classes present in the data."""
    r = per_class_recall(cm)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def war(cm: np.ndarray) -> float:
    """Weighted average recall = overall accuracy."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


@dataclass
class Scores:
    """WAR, UAR, per-class recall and the confusion matrix, with their class names."""

    classes: list[str]
    confusion: np.ndarray

    @property
    def war(self) -> float:
        return war(self.confusion)

    @property
    def uar(self) -> float:
        return uar(self.confusion)

    @property
    def recall(self) -> dict[str, float]:
        return {c: float(r) for c, r in zip(self.classes, per_class_recall(self.confusion))}

    @property
    def count(self) -> int:
        return int(np.asarray(self.confusion).sum())

    def to_dict(self) -> dict:
        def clean(v):
            return None if v != v else round(v, 6)  # NaN (absent class) -> null in JSON
        return {
            "war": clean(self.war), "uar": clean(self.uar), "samples": self.count,
            "recall": {c: clean(r) for c, r in self.recall.items()},
            "classes": list(self.classes),
            "confusion": np.asarray(self.confusion).astype(int).tolist(),
        }


# ---- scores against raters' vote distributions --------------------------------------------
#
# votes (N, C): each sample's vote counts (any non-negative numbers; shares are the row
# renormalised); probs (N, C): the model's probabilities; other (N,), optional: the largest
# count among columns outside the classes (FER+'s contempt, unknown, not-a-face). The
# plurality is the most-voted class; samples whose top count is shared by two classes, or
# is matched by an outside column (the crowd's plurality is not one of the classes), have
# none and are left out of the plurality scores (accuracy, UAR, NLL, ECE), not of KL or the
# vote-share error.

EPS = 1e-12
CALIBRATION_BINS = 15


def vote_shares(votes) -> np.ndarray:
    v = np.asarray(votes, dtype=np.float64)
    return v / v.sum(1, keepdims=True)


def unique_plurality(votes, other=None) -> np.ndarray:
    """(N,) the most-voted class of each row, -1 where the top count is tied or an outside
    column (`other`) has as many votes."""
    v = np.asarray(votes, dtype=np.float64)
    top = v.max(1, keepdims=True)
    y = np.where(np.isclose(v, top).sum(1) > 1, -1, v.argmax(1))
    if other is not None:
        y = np.where(np.asarray(other, dtype=np.float64) >= top[:, 0], -1, y)
    return y


def mean_kl(votes, probs) -> float:
    """Mean over samples of KL(vote shares || model) = sum_c s_c log(s_c / p_c), in nats;
    a class with no votes contributes 0."""
    s = vote_shares(votes)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(s > 0, s * (np.log(np.where(s > 0, s, 1.0)) - np.log(p)), 0.0)
    return float(terms.sum(1).mean())


def plurality_nll(votes, probs, other=None) -> float:
    """Mean -log p(plurality class) over the samples with a unique plurality."""
    y = unique_plurality(votes, other)
    keep = y >= 0
    p = np.clip(np.asarray(probs, dtype=np.float64)[keep, y[keep]], EPS, 1.0)
    return float(-np.log(p).mean()) if keep.any() else float("nan")


def vote_share_calibration_error(votes, probs, bins: int = CALIBRATION_BINS) -> float:
    """How far the predicted probabilities are from the share of raters who named the class:
    every (sample, class) pair is put into one of ``bins`` equal-width bins of its predicted
    probability on [0, 1]; the error is the pair-weighted mean over bins of
    |mean predicted probability - mean vote share| in the bin."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    s = vote_shares(votes).ravel()
    return _binned_gap(p, s, bins)


def top_label_ece(votes, probs, bins: int = CALIBRATION_BINS, other=None) -> float:
    """Expected calibration error of the top label against the plurality (the usual ECE):
    samples binned by their highest probability; weighted mean over bins of
    |accuracy - mean confidence|. Samples without a unique plurality are left out."""
    y = unique_plurality(votes, other)
    keep = y >= 0
    p = np.asarray(probs, dtype=np.float64)[keep]
    conf = p.max(1)
    hit = (p.argmax(1) == y[keep]).astype(np.float64)
    return _binned_gap(conf, hit, bins)


def _binned_gap(x: np.ndarray, target: np.ndarray, bins: int) -> float:
    if x.size == 0:
        return float("nan")
    idx = np.minimum((x * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(x[m].mean() - target[m].mean())
    return float(total / x.size)


def reliability_bins(votes, probs, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per bin of predicted probability (every sample x class pair): its range, pair count,
    mean predicted probability and mean vote share -- the reliability diagram's data."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    s = vote_shares(votes).ravel()
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": int(m.sum()),
                    "mean_probability": float(p[m].mean()) if m.any() else None,
                    "mean_share": float(s[m].mean()) if m.any() else None})
    return out


@dataclass
class VoteScores:
    """Scores of probabilities against vote distributions (see the functions above)."""

    classes: list[str]
    votes: np.ndarray      # (N, C)
    probs: np.ndarray      # (N, C)
    other: np.ndarray | None = None  # (N,) the top count outside the classes, or None

    @property
    def plurality(self) -> np.ndarray:
        return unique_plurality(self.votes, self.other)

    @property
    def plurality_scores(self) -> Scores:
        y = self.plurality
        keep = y >= 0
        cm = confusion_matrix(y[keep], self.probs[keep].argmax(1), len(self.classes))
        return Scores(list(self.classes), cm)

    def to_dict(self) -> dict:
        ps = self.plurality_scores
        return {"samples": int(len(self.votes)), "unique_plurality": int((self.plurality >= 0).sum()),
                "plurality_accuracy": ps.war, "plurality_uar": ps.uar, "plurality_recall": ps.recall,
                "nll": plurality_nll(self.votes, self.probs, self.other), "mean_kl": mean_kl(self.votes, self.probs),
                "vote_share_calibration_error": vote_share_calibration_error(self.votes, self.probs),
                "top_label_ece": top_label_ece(self.votes, self.probs, other=self.other),
                "plurality_confusion": ps.confusion.tolist()}

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

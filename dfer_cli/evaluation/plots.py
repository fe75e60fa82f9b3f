"""Figures of an evaluation: the confusion matrix and, against crowd votes, the reliability
diagram.
"""
from __future__ import annotations

import numpy as np

from dfer_cli.metrics import Scores


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

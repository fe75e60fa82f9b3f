"""Post-hoc calibration: one temperature that makes probabilities match raters' vote shares.

A dfer probability is meant to estimate the share of people who would name that expression
for the face. A network trained on vote shares comes close; an ensemble's averaged
probabilities are usually too flat or too sharp by a constant factor on the log scale. One
temperature T fixes that without changing any label (the argmax of z / T is the argmax of z):

    p = softmax(z / T),   z = the model's output (logits; an ensemble's log mean probability)

T is fitted on images held out from training (never on the split that is reported) by
minimising the mean cross-entropy to the vote shares, which is the mean KL(votes || model)
plus a constant. It is stored in the checkpoint header as ``calibration`` and applied by
every place that turns outputs into probabilities (:func:`probabilities`): predict and eval.
"""
from __future__ import annotations

import math

import numpy as np

T_MIN, T_MAX = 0.05, 20.0  # the range a stored temperature may take (header validation)


def temperature_of(model) -> float:
    """The temperature stored with a loaded model (1.0 when it has none)."""
    cal = getattr(model, "calibration", None) or {}
    return float(cal.get("temperature", 1.0))


def probabilities(model, logits):
    """softmax(logits / T) along the last axis, T the model's temperature (torch tensors)."""
    t = temperature_of(model)
    z = logits.float()
    return (z / t if t != 1.0 else z).softmax(-1)


def log_probs(logits, temperature: float = 1.0) -> np.ndarray:
    """log softmax(z / T) of numpy logits (N, C), computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def soft_cross_entropy(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean over rows of -sum_c s_c log softmax(z / T)_c (targets renormalised to shares)."""
    from dfer_cli.metrics import vote_shares

    return float(-(vote_shares(targets) * log_probs(logits, temperature)).sum(1).mean())


def fit_temperature(logits, votes, lo: float = T_MIN, hi: float = T_MAX, tol: float = 1e-4) -> float:
    """The T in [lo, hi] that minimises :func:`soft_cross_entropy` (golden-section search on
    log T; the loss is unimodal in T for a fixed set of logits)."""
    logits = np.asarray(logits, dtype=np.float64)
    votes = np.asarray(votes, dtype=np.float64)
    if logits.ndim != 2 or logits.shape != votes.shape or len(logits) == 0:
        raise ValueError(f"fit_temperature needs logits and votes of one (N, C) shape, got {logits.shape} "
                         f"and {votes.shape}")
    g = (math.sqrt(5) - 1) / 2
    a, b = math.log(lo), math.log(hi)
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = (soft_cross_entropy(logits, votes, math.exp(v)) for v in (c, d))
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = soft_cross_entropy(logits, votes, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = soft_cross_entropy(logits, votes, math.exp(d))
    return float(math.exp((a + b) / 2))


def check_record(cal) -> str | None:
    """None when ``cal`` is a valid ``calibration`` header entry (or None), else what is wrong."""
    if cal is None:
        return None
    if not isinstance(cal, dict):
        return "is not an object"
    t = cal.get("temperature")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not T_MIN <= t <= T_MAX:
        return f"temperature {t!r} is not a number in [{T_MIN}, {T_MAX}]"
    return None



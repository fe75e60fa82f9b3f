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
import os

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


def held_out_with_votes(data_root: str, votes, *, split: str = "train", holdout: float = 0.1, seed: int = 0):
    """The images a ``dfer train --votes ... --holdout F --holdout-seed S`` run held out:
    the same scan, the same samples with votes (labelled by plurality) and the same
    stratified split. Returns (held-out samples, their names' sha256 as training records it)."""
    from dfer_cli.data import scan
    from dfer_cli.data.votes import attach_votes, read_vote_tables
    from dfer_cli.train.loop import _names_digest, holdout_split

    if not 0 < holdout < 1:
        raise ValueError(f"--holdout must be in (0, 1), got {holdout}")
    samples, report = scan("folder", data_root, split)
    samples = attach_votes(samples, read_vote_tables(votes), data_root, split, report)
    _, held = holdout_split(samples, holdout, seed)
    if not held:
        raise ValueError(f"no held-out images with votes in {data_root} split {split!r}")
    return held, _names_digest(held)


def recorded_holdouts(model) -> set:
    """The held-out sets' digests recorded in a model's provenance (every member's for an
    ensemble)."""
    prov = getattr(model, "provenance", None) or {}
    records = [prov] + [m.get("provenance") or {} for m in prov.get("members") or []]
    return {(r.get("data") or {}).get("holdout_sha256") for r in records} - {None}


def dataset_logits(model, samples, *, batch_size: int = 64, device="cpu") -> np.ndarray:
    """The model's outputs (N, C) before any temperature, for still or clip samples."""
    import torch
    from torch.utils.data import DataLoader

    from dfer_cli.data import ClipDataset
    from dfer_cli.evaluation.run import clip_logits

    ds = ClipDataset(samples, model.preprocessing, train=False, classes=model.classes,
                     sampling=getattr(model, "sampling", "uniform"))
    out = []
    model.eval()
    with torch.inference_mode():
        for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False):
            out.append(clip_logits(model, x.to(device)).float().cpu().numpy())
    return np.concatenate(out)


def calibrate(model, data_root: str, votes, *, split: str = "train", holdout: float = 0.1, seed: int = 0,
              device="cpu") -> dict:
    """Fit the temperature of ``model`` on the images its training held out and return the
    ``calibration`` record (set it as ``model.calibration`` to apply it). Raises ValueError
    when the held-out images are not the ones recorded in the model's provenance."""
    from dfer_cli.labels import CLASSES
    from dfer_cli.metrics import mean_kl

    if list(model.classes) != list(CLASSES):
        raise ValueError(f"calibration against votes needs dfer's class order ({', '.join(CLASSES)})")
    held, digest = held_out_with_votes(data_root, votes, split=split, holdout=holdout, seed=seed)
    recorded = recorded_holdouts(model)
    if recorded and recorded != {digest}:
        raise ValueError(f"the held-out images of {split!r} with --holdout {holdout:g} --holdout-seed {seed} are not "
                         "the ones the model's training held out (provenance holdout_sha256); pass the --votes, "
                         "--holdout and --holdout-seed it was trained with")
    logits = dataset_logits(model, held, device=device)
    v = np.array([s.votes for s in held], dtype=np.float64)
    t = fit_temperature(logits, v)

    def kl_at(temp):
        return mean_kl(v, np.exp(log_probs(logits, temp)))

    names = [os.path.basename(str(p)) for p in (votes if isinstance(votes, (list, tuple)) else [votes])]
    return {"method": "temperature", "temperature": round(t, 4),
            "fitted_on": f"holdout {holdout:g} of {split} (seed {seed}), {len(held)} images, votes {', '.join(names)}",
            "holdout_sha256": digest, "mean_kl_before": round(kl_at(1.0), 4), "mean_kl_after": round(kl_at(t), 4)}

"""TODO docstring (evaluation.calibrate)."""
from __future__ import annotations

import os

import numpy as np

from dfer_cli.calibration import fit_temperature, log_probs


def held_out_with_votes(data_root: str, votes, *, split: str = "train", holdout: float = 0.1, seed: int = 0):
    """The images a ``dfer train --votes ... --holdout F --holdout-seed S`` run held out:
    the same scan, the same samples with votes (labelled by plurality) and the same
    stratified split. Returns (held-out samples, their names' sha256 as training records it)."""
    from dfer_cli.data import scan
    from dfer_cli.data.votes import attach_votes, read_vote_tables
    from dfer_cli.train.setup import holdout_split, names_digest

    if not 0 < holdout < 1:
        raise ValueError(f"--holdout must be in (0, 1), got {holdout}")
    samples, report = scan("folder", data_root, split)
    samples = attach_votes(samples, read_vote_tables(votes), data_root, split, report)
    _, held = holdout_split(samples, holdout, seed)
    if not held:
        raise ValueError(f"no held-out images with votes in {data_root} split {split!r}")
    return held, names_digest(held)


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
    from dfer_cli.models.inference import clip_logits
    from dfer_cli.models.folding import inference_copy

    ds = ClipDataset(samples, model.preprocessing, train=False, classes=model.classes,
                     sampling=getattr(model, "sampling", "uniform"))
    out = []
    model = inference_copy(model)
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

"""Moving weights between models of different shapes: a checkpoint at another clip length or
input size (position embeddings resized), partial loads that report what was skipped.
"""
from __future__ import annotations

import math

import torch

from dfer_cli.preprocess import Preprocessing


def with_num_frames(model, num_frames: int):
    """A copy of a loaded model (from :func:`load_model`) that takes clips of ``num_frames``.

    This is how a model trained on stills (``num_frames=1``) becomes a video model: the
    temporal position embedding is repeated and a LOGO window pool kernel is spread evenly
    over the window's frames (see :func:`load_state_partial`); every other tensor is copied.
    An ensemble has each of its members resized.
    The preprocessing's ``num_frames`` follows. Raises ValueError if a tensor cannot be
    carried over.
    """
    from dataclasses import replace

    from dfer_cli.models import create_model
    from dfer_cli.models.ensemble import Ensemble

    def resized(m):
        return create_model(m.model_name, **replace(m.config, num_frames=int(num_frames),
                                                     backbone_weights=None).to_dict())

    new = Ensemble([resized(m) for m in model.members]) if isinstance(model, Ensemble) else resized(model)
    loaded, skipped = load_state_partial(new, model.state_dict())
    if skipped:
        raise ValueError(f"cannot make a {num_frames}-frame model: {'; '.join(skipped[:3])}")
    new.classes = list(model.classes)
    new.preprocessing = Preprocessing.from_dict({**model.preprocessing.to_dict(), "num_frames": int(num_frames)})
    new.provenance = dict(model.provenance)
    new.sampling = getattr(model, "sampling", "uniform")
    new.calibration = getattr(model, "calibration", None)
    new.checkpoint_path = model.checkpoint_path
    return new.eval()


def load_state_partial(model: torch.nn.Module, state_dict: dict) -> tuple[list[str], list[str]]:
    """Load every tensor of ``state_dict`` whose name and shape fit ``model``; report the rest.

    For staged training (``dfer train --init``): e.g. a stage-1 model trained on stills
    (``num_frames=1``) initialising a 16-frame model. A temporal position embedding
    (``pos_time``, shape (1, T, 1, D)) of another length is resized along T by linear
    interpolation (a length-1 embedding is repeated) rather than skipped, a spatial one
    (``pos_space``, (1, 1, g*g, D)) made for another input size is resized over the g x g
    grid by bicubic interpolation (fine-tuning at a higher resolution), a LOGO window pool
    kernel built for 1 frame is spread evenly over the window's frames, and one built for
    several frames is summed over them for a 1-frame model (a video model fine-tuned on
    stills); everything else with a different shape, or absent from the model, is skipped.

    Returns ``(loaded, skipped)``: loaded names, and ``"name: reason"`` strings.
    """
    own = model.state_dict()
    loaded, skipped, new = [], [], {}
    for k, v in state_dict.items():
        if k not in own:
            skipped.append(f"{k}: not in model")
            continue
        target = own[k]
        if v.shape != target.shape and k.split(".")[-1] == "pos_time" and v.ndim == 4 \
                and v.shape[0] == target.shape[0] and v.shape[2:] == target.shape[2:]:
            v = resize_time_embedding(v, target.shape[1])
        if v.shape != target.shape and k.split(".")[-1] == "pos_space" and v.ndim == 4 \
                and v.shape[:2] == target.shape[:2] and v.shape[3] == target.shape[3] \
                and _is_square(v.shape[2]) and _is_square(target.shape[2]):
            v = resize_space_embedding(v, math.isqrt(target.shape[2]))
        if v.shape != target.shape and k.endswith("pool.weight") and v.ndim == 5 and v.shape[2] == 1 \
                and v.shape[:2] == target.shape[:2] and v.shape[3:] == target.shape[3:]:
            # a LOGO window pool built for 1 frame: spread it evenly over the f frames
            v = v.repeat(1, 1, target.shape[2], 1, 1) / target.shape[2]
        if v.shape != target.shape and k.endswith("pool.weight") and v.ndim == 5 and target.shape[2] == 1 \
                and v.shape[:2] == target.shape[:2] and v.shape[3:] == target.shape[3:]:
            # the reverse, a video model back to stills: on f identical frames the kernel acts as
            # its sum over time, so that sum is the 1-frame kernel (exact for a still)
            v = v.sum(dim=2, keepdim=True)
        if v.shape != target.shape:
            skipped.append(f"{k}: shape {tuple(v.shape)} != {tuple(target.shape)}")
            continue
        new[k] = v.to(dtype=target.dtype)
        loaded.append(k)
    skipped += [f"{k}: not in state dict" for k in own if k not in state_dict]
    model.load_state_dict(new, strict=False)
    return loaded, skipped


def resize_time_embedding(pos: torch.Tensor, length: int) -> torch.Tensor:
    """(1, T, 1, D) -> (1, length, 1, D): repeat a single step, else linear interpolation."""
    if pos.shape[1] == 1:
        return pos.expand(-1, length, -1, -1).clone()
    seq = pos[:, :, 0].transpose(1, 2)                                   # (1, D, T)
    seq = torch.nn.functional.interpolate(seq.float(), size=length, mode="linear", align_corners=True)
    return seq.transpose(1, 2)[:, :, None].to(pos.dtype)                 # (1, length, 1, D)


def resize_space_embedding(pos: torch.Tensor, side: int) -> torch.Tensor:
    """(1, 1, g*g, D) -> (1, 1, side*side, D): bicubic resampling of the row-major g x g grid.

    Corners map to corners (``align_corners=True``), so a grid cell keeps its place on the face.
    """
    g = math.isqrt(pos.shape[2])
    grid = pos[0, 0].reshape(g, g, -1).permute(2, 0, 1)[None]           # (1, D, g, g)
    grid = torch.nn.functional.interpolate(grid.float(), size=(side, side), mode="bicubic",
                                           align_corners=True)           # (1, D, side, side)
    return grid[0].permute(1, 2, 0).reshape(1, 1, side * side, -1).to(pos.dtype)


def _is_square(n: int) -> bool:
    return math.isqrt(n) ** 2 == n

"""dfer checkpoints: one ``.safetensors`` file that rebuilds a model on its own.

The tensors are the model's state dict (float32, or float16 with ``half=True``; loading
always gives float32). The safetensors header metadata holds one key, ``dfer``, whose value
is a JSON object::

    {"format": "dfer-checkpoint", "format_version": 1, "dfer_version": "0.1.0",
     "model": "logo_former", "config": {...every FormerConfig field...},
     "classes": ["happy", ...], "preprocessing": {...Preprocessing.to_dict()...},
     "provenance": {"dataset": ..., "fold": ..., "epochs": ..., "metrics": {...}},
     "dtype": "float32" | "float16"}

Reading never unpickles: safetensors parses a JSON header and raw tensor bytes only.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dfer_cli import __version__
from dfer_cli.fsutil import atomic_path
from dfer_cli.preprocess import Preprocessing

FORMAT = "dfer-checkpoint"
FORMAT_VERSION = 1
META_KEY = "dfer"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used; the message is one line naming the file and the fix."""


def save_checkpoint(path, model, *, classes, preprocessing, provenance=None, half=False) -> Path:
    """Write ``model`` (a registered model: has ``.model_name`` and ``.config``) to ``path``.

    ``classes`` are the output class names in logit order; ``preprocessing`` a
    ``Preprocessing`` (or its dict); ``provenance`` any JSON-able dict (dataset, fold,
    epochs, metrics...). ``half=True`` stores floating tensors as float16 (half the size).
    The write is atomic: a temporary file in the same folder is renamed over ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    classes = [str(c) for c in classes]
    if len(classes) != model.config.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.config.num_classes} outputs")
    pre = preprocessing.to_dict() if isinstance(preprocessing, Preprocessing) else dict(preprocessing)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dfer_version": __version__,
        "model": model.model_name, "config": model.config.to_dict(), "classes": classes,
        "preprocessing": pre, "provenance": provenance or {},
        "dtype": "float16" if half else "float32",
    }
    # The trunk is already in the tensors; the path to its initial weights is not needed
    # (and may not exist) where the checkpoint is loaded.
    meta["config"]["backbone_weights"] = None
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if v.is_floating_point():
            v = v.half() if half else v.float()
        tensors[k] = v.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return path


def read_metadata(path) -> dict:
    """The JSON metadata of a dfer checkpoint, without reading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; pass an existing .safetensors checkpoint") from None
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_first_line(e)}); it may be truncated "
            "or in another format -- re-download or re-save it with dfer") from None
    if raw is None:
        raise CheckpointError(
            f"{path}: a safetensors file without dfer metadata (not a dfer checkpoint); "
            "use a checkpoint written by `dfer train`, or a ResNet-18 file via backbone_weights")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: dfer metadata is not valid JSON ({e}); re-save the checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: metadata is not a dfer checkpoint header; re-save it with dfer")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer dfer (format {meta['format_version']}); "
                              "upgrade dfer to load it")
    for key in ("model", "config", "classes", "preprocessing"):
        if key not in meta:
            raise CheckpointError(f"{path}: dfer metadata lacks {key!r}; re-save the checkpoint")
    return meta


def read_checkpoint(path) -> tuple[dict, dict]:
    """Read a dfer checkpoint: (state dict of float32 CPU tensors, metadata dict)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read tensors ({_first_line(e)}); the file may be "
                              "truncated -- re-download or re-save it") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, meta


def load_model(name_or_path="logo_former_fer2013", device="cpu"):
    """Rebuild a model from a checkpoint path or a weights name (see weights.py).

    Returns the model in eval mode on ``device`` with ``.classes`` (list of str),
    ``.preprocessing`` (Preprocessing), ``.provenance`` (dict) and ``.checkpoint_path``.
    Raises CheckpointError (one line naming the file and the fix) for any unusable file.
    """
    from dfer_cli.models import available_models, create_model
    from dfer_cli.weights import find_weights

    try:
        path = find_weights(name_or_path)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    state, meta = read_checkpoint(path)
    name = meta["model"]
    if name not in available_models():
        raise CheckpointError(f"{path}: model {name!r} is unknown to this dfer "
                              f"({', '.join(available_models())}); upgrade dfer")
    config = dict(meta["config"])
    config["backbone_weights"] = None
    try:
        model = create_model(name, **config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config does not build a {name} ({e}); upgrade dfer") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensors do not fit a {name} with this config "
                              f"({_first_line(e)}); re-save the checkpoint") from None
    model.classes = list(meta["classes"])
    model.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    model.provenance = dict(meta.get("provenance") or {})
    model.checkpoint_path = str(path)
    model.dfer_meta = meta
    return model.to(device).eval()


def with_num_frames(model, num_frames: int):
    """A copy of a loaded model (from :func:`load_model`) that takes clips of ``num_frames``.

    This is how a model trained on stills (``num_frames=1``) becomes a video model: the
    temporal position embedding is repeated and a LOGO window pool kernel is spread evenly
    over the window's frames (see :func:`load_state_partial`); every other tensor is copied.
    The preprocessing's ``num_frames`` follows. Raises ValueError if a tensor cannot be
    carried over.
    """
    from dataclasses import replace

    from dfer_cli.models import create_model

    config = replace(model.config, num_frames=int(num_frames), backbone_weights=None).to_dict()
    new = create_model(model.model_name, **config)
    loaded, skipped = load_state_partial(new, model.state_dict())
    if skipped:
        raise ValueError(f"cannot make a {num_frames}-frame model: {'; '.join(skipped[:3])}")
    new.classes = list(model.classes)
    new.preprocessing = Preprocessing.from_dict({**model.preprocessing.to_dict(), "num_frames": int(num_frames)})
    new.provenance = dict(model.provenance)
    new.checkpoint_path = model.checkpoint_path
    return new.eval()


def load_state_partial(model: torch.nn.Module, state_dict: dict) -> tuple[list[str], list[str]]:
    """Load every tensor of ``state_dict`` whose name and shape fit ``model``; report the rest.

    For staged training (``dfer train --init``): e.g. a stage-1 model trained on stills
    (``num_frames=1``) initialising a 16-frame model. A temporal position embedding
    (``pos_time``, shape (1, T, 1, D)) of another length is resized along T by linear
    interpolation (a length-1 embedding is repeated) rather than skipped, and a LOGO window
    pool kernel built for 1 frame is spread evenly over the window's frames; everything else
    with a different shape, or absent from the model, is skipped.

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
        if v.shape != target.shape and k.endswith("pool.weight") and v.ndim == 5 and v.shape[2] == 1 \
                and v.shape[:2] == target.shape[:2] and v.shape[3:] == target.shape[3:]:
            # a LOGO window pool built for 1 frame: spread it evenly over the f frames
            v = v.repeat(1, 1, target.shape[2], 1, 1) / target.shape[2]
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]

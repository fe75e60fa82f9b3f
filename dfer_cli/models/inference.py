"""Models for inference: loading a checkpoint for it (`load_for_inference`: find, device,
threads, load folded for inference, `models.folding`), and the forward pass of a batch of
clips (logits, and probabilities at the checkpoint's temperature with optional flip
test-time augmentation).
"""
from __future__ import annotations


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


def load_for_inference(weights: str, device="auto", threads: int | None = None):
    """The one way a checkpoint is loaded to predict: find it (a weights name or a path),
    pick the device, set torch's CPU threads, load it and fold it for inference. Returns
    (model, torch.device). Raises CheckpointError (a ValueError, one line: a missing or
    unusable checkpoint) or DeviceError (an unknown or unavailable device)."""
    import torch

    from dfer_cli.checkpoint import CheckpointError, load_model
    from dfer_cli.device import resolve_device
    from dfer_cli.messages import one_line
    from dfer_cli.weights import find_weights

    try:
        path = find_weights(weights)
    except FileNotFoundError as e:  # also WeightsMismatchError: a registered name with other bytes
        raise CheckpointError(f"no usable checkpoint: {e}") from None
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    try:
        model = load_model(str(path), device=dev, for_inference=True)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"cannot use checkpoint {path}: {one_line(e, path)}") from None
    return model, dev

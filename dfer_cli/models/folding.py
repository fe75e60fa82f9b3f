"""The inference transform: a model folded for inference (eval mode, no gradients, each ResNet
trunk's BatchNorm merged into its convolutions), made once and explicitly, never cached."""
from __future__ import annotations


def fold_for_inference(model):
    """Prepare ``model`` for inference, in place, and return it: eval mode, no gradients, and
    every ResNet trunk's BatchNorm folded into the convolution before it, weights in
    channels_last (`backbone.fold_batchnorm`). Outputs equal the eval-mode model's to float
    rounding; the trunk runs about 1.7x faster on CPU. A folded model has no BatchNorm
    statistics left: it refuses to train (``.train()``) and to be saved (`save_checkpoint`).
    Its weights are its own: changing them changes its outputs, nothing is cached."""
    from dfer_cli.models.backbone import fold_batchnorm
    from dfer_cli.models.former import Former

    for m in model.modules():
        if isinstance(m, Former) and not m.folded:
            m.backbone = fold_batchnorm(m.backbone)
            m.folded = True
    model.folded = True
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def inference_copy(model):
    """``model`` itself when it is already folded for inference or has no dfer trunk to fold
    (another classifier), else a folded copy (the caller's model is left as it was)."""
    import copy

    from dfer_cli.models.former import Former

    if getattr(model, "folded", False) or not any(isinstance(m, Former) for m in model.modules()):
        return model
    return fold_for_inference(copy.deepcopy(model))

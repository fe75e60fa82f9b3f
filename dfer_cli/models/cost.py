"""Model cost: parameters and FLOPs counted with ``torch.utils.flop_counter``.

Counting runs on the ``meta`` device: tensors there have shapes but no data, so a forward
pass costs almost nothing and the count is the same on any machine. One multiply-add
counts as 2 FLOPs (FlopCounterMode's convention); only matmuls and convolutions are
counted (softmax, norms and activations are not).
"""
from __future__ import annotations

import re

import torch

# attention steps inside blocks: their q/k/v/output projections, score and mixing matmuls,
# and (LOGO) the window-pooling convolution
_ATTN = re.compile(r"\.blocks\.\d+\.steps\.\d+$")


def _is_mixing(op) -> bool:
    name = str(op)
    return "bmm" in name or "attention" in name  # SDPA decomposes to bmm on meta


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_cost(name: str, num_frames: int = 16, batch: int = 1, **overrides) -> dict:
    """FLOPs of one forward pass of model ``name`` on ``batch`` clips of ``num_frames``.

    Returns ``{"model", "num_frames", "params", "gflops", "attention_gflops",
    "mixing_gflops", "backbone_gflops"}`` (GFLOPs per batch; per clip with batch=1).
    ``attention_gflops`` is whole attention layers (projections included); ``mixing_gflops``
    only their query-key scores and value mixing, the part that grows with sequence length.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from dfer_cli.models import create_model

    overrides = {**overrides, "num_frames": num_frames, "backbone_weights": None}
    with torch.device("meta"):
        model = create_model(name, **overrides).eval()
        c = model.config
        x = torch.empty(batch, num_frames, 3, c.input_size, c.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    per_module = counter.get_flop_counts()
    attn = mixing = 0
    for mod, ops in per_module.items():
        if _ATTN.search(mod):
            attn += sum(ops.values())
            mixing += sum(n for op, n in ops.items() if _is_mixing(op))
    trunk = sum(sum(ops.values()) for mod, ops in per_module.items() if mod.endswith(".backbone"))
    return {
        "model": name,
        "num_frames": num_frames,
        "params": count_params(model),
        "gflops": counter.get_total_flops() / 1e9,
        "attention_gflops": attn / 1e9,
        "mixing_gflops": mixing / 1e9,
        "backbone_gflops": trunk / 1e9,
    }

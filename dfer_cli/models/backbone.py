"""The frame encoder: ResNet-18 kept up to layer3 (or, with ``layers=4``, through layer4).

A 112x112 face gives a 256x7x7 feature map (stride 16). Other sizes give a
ceil(size/16) grid: 48 -> 3x3, 64 -> 4x4, 32 -> 2x2.

``layers=4`` keeps ResNet-18's layer4 as well: 512 channels at half the grid side
(stride 32; 48 px with stem "s1" -> 512x3x3). The transformers tokenise layer3 as the
papers do; layer4 is there for the plain CNN (``trunk_pool``), where a 3x3 grid does not
matter because the maps are averaged.

``width`` sets the channels of the first stage (64 in ResNet-18; the stages double it:
width, 2, 4 and 8 times width). A narrower trunk is for the plain CNN trained from scratch:
width 32 has a quarter of the weights and trains about 3x as fast on these CPUs, so a
schedule of many more epochs fits the same hours. Pre-trained ResNet-18 weights need 64.

``stem="s1"`` replaces the 7x7 stride-2 conv1 by a 3x3 stride-1 conv (the max-pool is kept),
so the trunk's stride is 8: a 48 px FER2013 face gives a 6x6 layer3 grid instead of 3x3.
That is what small-image networks (CIFAR-style ResNets) do; it costs about 4x the FLOPs
of the standard stem at the same input size, the same as a 96 px input would, without
upsampling 48 px images. Pre-trained conv1 weights (7x7) do not fit it and are skipped.

The trunk is built here rather than taken from torchvision: importing torchvision imports
torch._dynamo (through torchvision.ops), which was the largest single cost of starting
`dfer predict` (measured in docs/predict.md). It keeps torchvision's attribute names
(conv1, bn1, layer1..layer3, downsample.0/.1) and initialisation, so a ResNet-18 state dict -- e.g. the MS-Celeb-1M face-recognition ResNet-18 that Former-DFER
and RAN users keep as ``.pth``/``.pth.tar`` -- loads onto it directly.
"""
from __future__ import annotations

import logging
import math
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("dfer")

STRIDE = 16
LAYERS = (3, 4)             # the last ResNet-18 stage kept
# Keys a full ResNet-18 has that the trunk does not use: not reported as "unexpected"
# (layer4's too when the trunk stops at layer3).
IGNORED_PREFIXES = ("fc.", "classifier.", "head.")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params", "weights")


STEMS = ("standard", "s1")
WIDTH = 64                  # ResNet-18's first-stage channels (trunk width)


def grid_size(input_size: int, stem: str = "standard", layers: int = 3) -> int:
    """Side of the feature grid the trunk makes from an ``input_size`` square frame."""
    side = input_size
    # conv1 (s2; s1 with stem "s1"), maxpool (s2), layer2 (s2), layer3 (s2), layer4 (s2):
    # each ceil(x/2)
    for _ in range((4 if stem == "standard" else 3) + (layers - 3)):
        side = math.ceil(side / 2)
    return side


def check_width(width) -> None:
    """Raise ValueError unless ``width`` is a usable trunk width (a positive multiple of 8)."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 8 or width % 8:
        raise ValueError(f"trunk width must be a multiple of 8 (ResNet-18's is {WIDTH}), got {width!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18's block): (N, C_in, H, W)
    -> (N, C_out, H/stride, W/stride). A 1x1 strided projection (``downsample``) matches the
    shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out))


class ResNetTrunk(nn.Module):
    """ResNet-18 up to layer3: (N, 3, H, W) -> (N, 256, ceil(H/16), ceil(W/16)); with
    ``layers=4`` through layer4: (N, 512, ceil(H/32), ceil(W/32)). With ``width`` w other than
    64 the channels are 4w (layer3) and 8w (layer4).

    Randomly initialised as torchvision does (Kaiming-normal convolutions, unit BatchNorm);
    nothing is ever downloaded.
    """

    def __init__(self, stem: str = "standard", layers: int = 3, width: int = WIDTH) -> None:
        super().__init__()
        check_width(width)
        if stem not in STEMS:
            raise ValueError(f"stem {stem!r} is not one of {', '.join(STEMS)}")
        if layers not in LAYERS:
            raise ValueError(f"trunk layers must be one of {', '.join(map(str, LAYERS))}, got {layers!r}")
        self.stem = stem
        self.layers = layers
        self.width = width
        w = width
        self.out_channels = 4 * w if layers == 3 else 8 * w  # 256 / 512 at ResNet-18's width
        if stem == "s1":
            self.conv1 = nn.Conv2d(3, w, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(w, w, 1)
        self.layer2 = _stage(w, 2 * w, 2)
        self.layer3 = _stage(2 * w, 4 * w, 2)
        if layers == 4:
            self.layer4 = _stage(4 * w, 8 * w, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # a channels_last model (bf16 path)
        # shapes for the standard stem; with stem "s1" every side is twice as large
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer1(x)                                     # (N, 64, H/4, W/4)
        x = self.layer2(x)                                     # (N, 128, H/8, W/8)
        x = self.layer3(x)                                     # (N, 256, H/16, W/16)
        if self.layers == 4:
            x = self.layer4(x)                                 # (N, 512, H/32, W/32)
        return x


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution that computes bn(conv(x)) of an eval-mode BatchNorm:
    weight * g / sqrt(var + eps) per output channel, bias (b - mean) * g / sqrt(var + eps) + beta."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)                # (C_out,)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused.to(device=conv.weight.device, dtype=conv.weight.dtype)


def fold_batchnorm(trunk: ResNetTrunk) -> ResNetTrunk:
    """A copy of ``trunk`` for inference: every BatchNorm folded into the convolution before
    it (its running statistics, as in eval mode) and the weights in channels_last memory
    format. Same maps as ``trunk.eval()`` to float rounding (about 1e-5), about 1.7x faster
    on 2 CPU cores at 80 px (16 frames: 53 ms against 92). The copy is a snapshot of the
    trunk's current weights and has no BatchNorm left to train; ``trunk`` is not changed.
    """
    import copy

    out = copy.deepcopy(trunk).eval()
    for module in list(out.modules()):
        if isinstance(module, (ResNetTrunk, BasicBlock)):
            module.conv1, module.bn1 = _folded(module.conv1, module.bn1), nn.Identity()
        if isinstance(module, BasicBlock):
            module.conv2, module.bn2 = _folded(module.conv2, module.bn2), nn.Identity()
            if module.downsample is not None:
                module.downsample = nn.Sequential(_folded(module.downsample[0], module.downsample[1]))
    for param in out.parameters():
        param.requires_grad_(False)
    # the forward pass puts its input in channels_last when conv1's weight is
    return out.to(memory_format=torch.channels_last)


def _unwrap(obj) -> dict:
    """Find the tensor dict inside common checkpoint wrappers ({'state_dict': ...} etc.)."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if isinstance(obj, dict):  # a dict mixing tensors and bookkeeping (e.g. 'epoch')
        tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
        if tensors:
            return tensors
    raise ValueError("holds no tensor state dict")


def _strip(key: str) -> str:
    for prefix in ("module.", "backbone.", "base.", "encoder."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_backbone_weights(trunk: ResNetTrunk, path: str | Path) -> dict:
    """Load a ResNet-18 state dict file (``.pth``/``.pth.tar``/``.safetensors``) into ``trunk``.

    The file is read with ``torch.load(weights_only=True)`` (never a full unpickle).
    ``module.`` prefixes (DataParallel) are stripped; the classifier is ignored, and layer4
    too when the trunk stops at layer3.
    Missing, unexpected and wrong-shape keys are reported in one log line (a warning when
    anything is missing). Returns ``{"loaded": [...], "missing": [...], "unexpected": [...],
    "mismatched": [...]}``. Raises ValueError with a one-line message for an unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: backbone weights file not found; pass an existing ResNet-18 .pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            from dfer_cli.fsutil import quiet_pickle_protocol

            with quiet_pickle_protocol():
                raw = torch.load(str(path), map_location="cpu", weights_only=True)
        state = _unwrap(raw)
    except Exception as e:  # noqa: BLE001 -- any failure to read becomes one clear line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) or "weights" in msg.lower():
            # torch's refusal suggests loading with weights_only=False: never pass that on
            msg = "it holds something other than tensors, or is not a torch file"
        raise ValueError(
            f"{path}: cannot read backbone weights ({msg[:200]}); pass a ResNet-18 state dict "
            "saved with torch.save (tensors only) or a .safetensors file") from None

    own = trunk.state_dict()
    ignored = IGNORED_PREFIXES + (("layer4.",) if getattr(trunk, "layers", 3) == 3 else ())
    loaded, unexpected, mismatched, new = [], [], [], {}
    for key, value in state.items():
        k = _strip(key)
        if k.startswith(ignored):
            continue
        if k not in own:
            unexpected.append(k)
        elif own[k].shape != value.shape:
            mismatched.append(k)
        else:
            new[k] = value
            loaded.append(k)
    # BatchNorm's step counter is bookkeeping that older files lack; not worth reporting.
    missing = [k for k in own if k not in new and not k.endswith("num_batches_tracked")]
    trunk.load_state_dict(new, strict=False)
    n_own = sum(not k.endswith("num_batches_tracked") for k in own)
    line = (f"backbone weights {path.name}: loaded {len(loaded)}/{n_own} tensors; "
            f"missing {len(missing)}{_few(missing)}; unexpected {len(unexpected)}{_few(unexpected)}; "
            f"wrong shape {len(mismatched)}{_few(mismatched)}")
    if not loaded:
        raise ValueError(f"{path}: no tensor matches a ResNet-18 trunk ({line}); is it a ResNet-18 state dict?")
    if missing or mismatched:
        warnings.warn(line, stacklevel=2)
    else:
        log.info(line)
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected, "mismatched": mismatched}


def _few(keys: list[str], n: int = 3) -> str:
    if not keys:
        return ""
    more = f", +{len(keys) - n} more" if len(keys) > n else ""
    return " (" + ", ".join(keys[:n]) + more + ")"

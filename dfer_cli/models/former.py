"""The video transformers: a ResNet-18 trunk per frame, then transformer blocks over the
(T, H, W) grid of feature tokens, then [CLS] -> LayerNorm -> linear classifier.

    frames (B, T, 3, S, S)
      -> ResNet-18 up to layer3, per frame   (B*T, 256, g, g), g = ceil(S/16) (ceil(S/8), stem s1)
      -> 1x1 conv 256 -> dim                 (B*T, dim, g, g)
      -> + spatial and temporal position embeddings, [CLS] in front, dropout
                                             (B, 1 + T*g*g, dim)
      -> depth x Block(kind)                 (B, 1 + T*g*g, dim)
      -> LayerNorm, take [CLS]               (B, dim)      forward_features
      -> Linear                              (B, classes)  forward_head

The four registered models differ only in the block kind (see blocks.py):
``logo_former`` (local windows + pooled global), ``stt`` (divided space -> time),
``joint`` (full space-time) and ``space_only``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from dfer_cli.models.backbone import STEMS, ResNetTrunk, grid_size, load_backbone_weights
from dfer_cli.models.blocks import BLOCK_KINDS, Block


@dataclass
class FormerConfig:
    """Sizes of a model. Defaults are the papers' (LOGO-Former / STT on DFEW)."""

    num_frames: int = 16          # T, frames per clip; forward accepts any T <= num_frames
    input_size: int = 112         # square face crop side in px; grid g = ceil(size/16): 112 -> 7
    num_classes: int = 7
    dim: int = 512                # token width after the 1x1 conv from the trunk's 256 channels
    depth: int = 4                # transformer blocks
    heads: int = 8
    mlp_ratio: float = 4.0        # MLP hidden width = dim * mlp_ratio (2048 at dim 512)
    dropout: float = 0.1          # after the embedding, attention output projections and MLPs
    attn_dropout: float = 0.0     # on attention weights
    drop_path: float = 0.1        # stochastic depth of the last block; 0 -> this, linearly
    block: str = "logo"           # one of blocks.BLOCK_KINDS
    # LOGO window (frames, rows, cols). Default 2x7x7: at the paper's 16x7x7 grid a window
    # is two whole frames (98 tokens, 8 windows), so local attention models short-range
    # motion over the full face and global attention reads 8 window summaries. Each size is
    # clamped to the grid at build time (a 48 px model, 3x3 grid, uses 2x3x3); a grid the
    # window does not divide (e.g. 7x7 with 4x4 windows, or T=15) is padded and masked.
    window: tuple[int, int, int] = (2, 7, 7)
    backbone_weights: str | None = None  # optional ResNet-18 .pth to initialise the trunk
    # trunk stem: "standard" (ResNet-18's 7x7 stride-2 conv1, grid ceil(S/16)) or "s1"
    # (3x3 stride-1 conv1, grid ceil(S/8): 48 px -> 6x6, room for windows smaller than the frame)
    stem: str = "standard"
    compact_lambda: float = 0.1   # training: weight of the compact-loss regulariser (losses.py)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window"] = list(self.window)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FormerConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TypeError(f"unknown config field(s) {', '.join(unknown)}; "
                            f"valid: {', '.join(sorted(names))}")
        d = dict(d)
        if "window" in d:
            d["window"] = tuple(int(v) for v in d["window"])
        return cls(**d)

    def __post_init__(self) -> None:
        if self.block not in BLOCK_KINDS:
            raise ValueError(f"block {self.block!r} is not one of {', '.join(BLOCK_KINDS)}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        self.window = tuple(int(v) for v in self.window)
        if len(self.window) != 3 or min(self.window) < 1:
            raise ValueError(f"window must be 3 positive ints (frames, rows, cols), got {self.window}")
        if self.stem not in STEMS:
            raise ValueError(f"stem {self.stem!r} is not one of {', '.join(STEMS)}")


@dataclass
class LogoFormerConfig(FormerConfig):
    block: str = "logo"


@dataclass
class STTConfig(FormerConfig):
    block: str = "divided"


@dataclass
class JointConfig(FormerConfig):
    block: str = "joint"


@dataclass
class SpaceOnlyConfig(FormerConfig):
    block: str = "space"


class Former(nn.Module):
    """A ResNet-18 + transformer video classifier; the block kind comes from the config."""

    def __init__(self, config: FormerConfig, model_name: str = "former") -> None:
        super().__init__()
        c = config
        self.config = config
        self.model_name = model_name
        g = grid_size(c.input_size, c.stem)
        self.grid_hw = (g, g)
        # the window actually used: clamped to the grid this config makes
        self.window = (min(c.window[0], c.num_frames), min(c.window[1], g), min(c.window[2], g))

        self.backbone = ResNetTrunk(c.stem)
        if c.backbone_weights:
            load_backbone_weights(self.backbone, c.backbone_weights)
        self.proj = nn.Conv2d(ResNetTrunk.out_channels, c.dim, kernel_size=1)
        self.pos_space = nn.Parameter(torch.zeros(1, 1, g * g, c.dim))      # one per grid cell
        self.pos_time = nn.Parameter(torch.zeros(1, c.num_frames, 1, c.dim))  # one per frame
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.drop = nn.Dropout(c.dropout)
        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(
            Block(c.block, c.dim, c.heads, c.mlp_ratio, c.dropout, c.attn_dropout, r, self.window)
            for r in rates)
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.pos_space, self.pos_time, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02)
        for m in [*self.blocks.modules(), self.head]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, 3, S, S), T <= num_frames -> trunk maps (B, T, 256, g, g).

        With a frozen trunk these can be computed once and fed to ``forward_tokens``.
        """
        c = self.config
        if x.ndim != 5 or x.shape[2] != 3:
            raise ValueError(f"expected clips shaped (B, T, 3, H, W), got {tuple(x.shape)}")
        B, T = x.shape[:2]
        if T > c.num_frames:
            raise ValueError(f"clip has {T} frames; this model takes at most {c.num_frames}")
        if x.shape[3] != c.input_size or x.shape[4] != c.input_size:
            raise ValueError(f"frames are {x.shape[3]}x{x.shape[4]}; this model takes "
                             f"{c.input_size}x{c.input_size}")
        f = self.backbone(x.flatten(0, 1))                            # (B*T, 256, g, g)
        return f.reshape(B, T, *f.shape[1:])                          # (B, T, 256, g, g)

    def forward_tokens(self, f: torch.Tensor) -> torch.Tensor:
        """Trunk maps (B, T, 256, g, g) -> [CLS] features (B, dim)."""
        B, T = f.shape[:2]
        f = self.proj(f.flatten(0, 1))                                # (B*T, D, g, g)
        D, gh, gw = f.shape[1:]
        f = f.flatten(2).transpose(1, 2).reshape(B, T, gh * gw, D)    # (B, T, g*g, D)
        f = f + self.pos_space + self.pos_time[:, :T]                 # (B, T, g*g, D)
        z = torch.cat([self.cls_token.expand(B, -1, -1), f.reshape(B, T * gh * gw, D)], dim=1)
        z = self.drop(z)                                              # (B, 1+N, D)
        for block in self.blocks:
            z = block(z, (T, gh, gw))
        return self.norm(z[:, 0])                                     # (B, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, 3, S, S), T <= num_frames -> [CLS] features (B, dim)."""
        return self.forward_tokens(self.trunk_features(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """[CLS] features (B, dim) -> logits (B, num_classes)."""
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, 3, S, S) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

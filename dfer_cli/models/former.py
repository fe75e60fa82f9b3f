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

The four registered transformers differ only in the block kind (see blocks.py):
``logo_former`` (local windows + pooled global), ``stt`` (divided space -> time),
``joint`` (full space-time) and ``space_only``. A fifth, ``trunk_pool`` (block ``"pool"``),
has no attention at all: the projected trunk maps are averaged over (T, g, g) and go
straight to LayerNorm -> Linear. It is the CNN baseline the transformers are measured
against, and a cheap way to pre-train the trunk on a dataset before a transformer is put on
it (``dfer train --backbone-weights RUN/last.safetensors``; the trunk's ``backbone.`` keys
load, the rest is ignored).

Position embeddings, two choices made on purpose:

- **[CLS] has no position slot** (neither in ``pos_time`` nor in ``pos_space``). It is a
  learned token, so a learned embedding added to it would only be a second learned constant
  (``cls_token + p`` is just another ``cls_token``): no slot loses nothing, and it keeps
  ``pos_time`` one row per frame, so it can be sliced or resized along T like the frames.
  (ViT gives [CLS] a slot only because its table is indexed by sequence position.)
- **Clips shorter than the model: the first T temporal embeddings.** A clip of
  T < num_frames frames is embedded with ``pos_time[:, :T]`` -- read as the first T frames
  of a full clip, not resampled to span it. The embeddings used are exactly trained ones
  (interpolating would give every frame a blend of two it was never trained with), and the
  result does not change with num_frames. dfer's own pipelines always feed
  ``preprocessing.num_frames`` frames (datasets repeat short clips up to it; ``predict``
  samples that many per window), so T < num_frames comes only from a checkpoint whose
  preprocessing asks for fewer frames than its config holds, or from direct calls. To make
  a model take another clip length for good, resize it deliberately:
  ``models.transfer.with_num_frames`` (``dfer weights export --frames``) resizes ``pos_time``
  along T. A clip with more than num_frames frames is refused.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from dfer_cli.models.backbone import (
    LAYERS,
    STEMS,
    WIDTH,
    ResNetTrunk,
    check_width,
    grid_size,
    load_backbone_weights,
)
from dfer_cli.models.blocks import BLOCK_KINDS, Block

POOL = "pool"  # the block kind of trunk_pool: no blocks, mean over all tokens
MODEL_BLOCKS = (*BLOCK_KINDS, POOL)


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
    block: str = "logo"           # one of blocks.BLOCK_KINDS, or "pool" (no attention blocks)
    # LOGO window (frames, rows, cols). Default 2x4x4: LOGO-Former restricts local attention
    # to a window that is local in space AND time ("facial muscles move locally, expressions
    # change gradually"). On the paper's 16x7x7 grid, 4x4 is the smallest square that splits
    # 7 into two (padded to 8: 4 + 3 real rows) without 1-token slivers (3x3 would pad 7 to
    # 9 and leave 1-row windows); each window covers about a quarter of the face (an eye and
    # brow, a mouth corner and cheek: 64 px of 112) over 2 frames, at most 32 tokens.
    # Per frame that is 4 windows (16, 12, 12 and 9 real tokens), 32 windows in a 16-frame
    # clip, so global attention reads 32 window summaries + [CLS]. The old default 2x7x7
    # was two whole frames (full attention over frame pairs, not local in space).
    # Each size is clamped to the grid at build time (``effective_window``): grids of 4 or
    # less (<= 64 px with the standard stem) get whole-frame windows, e.g. 48 px, 3x3 grid,
    # uses 2x3x3 (the s1 stem's 6x6 grid keeps 2x4x4). A grid the window does not divide is
    # zero-padded on the far side and masked (attention.LocalWindowAttention). Checkpoints
    # store their window, so a model saved with 2x7x7 keeps 2x7x7 when loaded.
    window: tuple[int, int, int] = (2, 4, 4)
    backbone_weights: str | None = None  # optional ResNet-18 .pth to initialise the trunk
    # trunk stem: "standard" (ResNet-18's 7x7 stride-2 conv1, grid ceil(S/16)) or "s1"
    # (3x3 stride-1 conv1, grid ceil(S/8): 48 px -> 6x6, room for windows smaller than the frame)
    stem: str = "standard"
    # last ResNet-18 stage in the trunk: 3 (the papers' layer3, 256 channels) or 4 (layer4 too:
    # 512 channels, half the grid side). 4 is for the plain CNN (trunk_pool), whose maps are
    # averaged, so its small grid costs no locality (weights/README.md: the plain ResNet-18).
    trunk_layers: int = 3
    # channels of the trunk's first stage; the later stages double it (64: ResNet-18, whose
    # pre-trained weights need it). 32 is a quarter of the weights and about 3x the training
    # throughput of 64 on these CPUs: for a plain CNN trained from scratch on long schedules.
    trunk_width: int = 64
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
        if self.block not in MODEL_BLOCKS:
            raise ValueError(f"block {self.block!r} is not one of {', '.join(MODEL_BLOCKS)}")
        for name in ("num_frames", "input_size", "num_classes", "dim", "depth", "heads"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        self.window = tuple(int(v) for v in self.window)
        if len(self.window) != 3 or min(self.window) < 1:
            raise ValueError(f"window must be 3 positive ints (frames, rows, cols), got {self.window}")
        if self.stem not in STEMS:
            raise ValueError(f"stem {self.stem!r} is not one of {', '.join(STEMS)}")
        if self.trunk_layers not in LAYERS:
            raise ValueError(f"trunk_layers must be one of {', '.join(map(str, LAYERS))}, got {self.trunk_layers!r}")
        check_width(self.trunk_width)

    def effective_window(self) -> tuple[int, int, int]:
        """The window the model uses: ``window`` clamped to (num_frames, g, g), g the grid side."""
        g = grid_size(self.input_size, self.stem, self.trunk_layers)
        return (min(self.window[0], self.num_frames), min(self.window[1], g), min(self.window[2], g))


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


@dataclass
class TrunkPoolConfig(FormerConfig):
    """ResNet-18 trunk + mean pooling: depth, heads, mlp_ratio, window and the attention
    dropouts are not used."""

    block: str = POOL


class Former(nn.Module):
    """A ResNet-18 + transformer video classifier; the block kind comes from the config."""

    def __init__(self, config: FormerConfig, model_name: str = "former") -> None:
        super().__init__()
        c = config
        self.config = config
        self.model_name = model_name
        g = grid_size(c.input_size, c.stem, c.trunk_layers)
        self.grid_hw = (g, g)
        self.window = c.effective_window()  # the window actually used: clamped to the grid
        self.folded = False                  # set by models.folding.fold_for_inference

        self.backbone = ResNetTrunk(c.stem, c.trunk_layers, c.trunk_width)
        if c.backbone_weights:
            if c.trunk_width != WIDTH:
                raise ValueError(f"{c.backbone_weights}: ResNet-18 weights fit a trunk of width {WIDTH}, not "
                                 f"{c.trunk_width}; drop --backbone-weights or --model-opt trunk_width")
            load_backbone_weights(self.backbone, c.backbone_weights)
        self.proj = nn.Conv2d(self.backbone.out_channels, c.dim, kernel_size=1)
        # registered before the blocks: parameter order is the order of a train state's
        # optimizer slots in runs saved before names were recorded (run_folder.load_state)
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        self.pooled = c.block == POOL
        if self.pooled:  # no position embeddings, [CLS] or blocks: a mean has no use for them
            self.blocks = nn.ModuleList()
        else:
            self.pos_space = nn.Parameter(torch.zeros(1, 1, g * g, c.dim))      # one per grid cell
            self.pos_time = nn.Parameter(torch.zeros(1, c.num_frames, 1, c.dim))  # one per frame
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
            self.drop = nn.Dropout(c.dropout)
            rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
            self.blocks = nn.ModuleList(
                Block(c.block, c.dim, c.heads, c.mlp_ratio, c.dropout, c.attn_dropout, r, self.window)
                for r in rates)
        self._init_weights()

    def _init_weights(self) -> None:
        if not self.pooled:
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
        f = self.frame_features(x.flatten(0, 1))                      # (B*T, 256, g, g)
        return f.reshape(B, T, *f.shape[1:])                          # (B, T, 256, g, g)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, S, S), any N -> trunk maps (N, 256, g, g). The trunk sees one frame
        at a time (in eval mode), so a frame shared by overlapping clips needs it only once.
        (`models.folding.fold_for_inference` makes this trunk faster for inference.)"""
        return self.backbone(frames)

    def train(self, mode: bool = True):
        if mode and self.folded:
            raise RuntimeError("this model was folded for inference (its BatchNorm is merged into the "
                               "convolutions); load the checkpoint again to train it")
        return super().train(mode)

    def forward_tokens(self, f: torch.Tensor) -> torch.Tensor:
        """Trunk maps (B, T, 256, g, g), T <= num_frames -> [CLS] features (B, dim).

        A clip with T < num_frames uses ``pos_time[:, :T]`` (see the module docstring)."""
        B, T = f.shape[:2]
        if T > self.config.num_frames:
            raise ValueError(f"clip has {T} frames; this model takes at most {self.config.num_frames}")
        if self.pooled:  # proj is linear, so pooling first gives the same mean for less work
            m = f.mean(dim=(1, 3, 4))                                 # (B, 256)
            return self.norm(self.proj(m[:, :, None, None]).flatten(1))  # (B, D)
        f = self.proj(f.flatten(0, 1))                                # (B*T, D, g, g)
        D, gh, gw = f.shape[1:]
        f = f.flatten(2).transpose(1, 2).reshape(B, T, gh * gw, D)    # (B, T, g*g, D)
        # T < num_frames: the first T temporal embeddings, on purpose (module docstring)
        f = f + self.pos_space + self.pos_time[:, :T]                 # (B, T, g*g, D)
        # [CLS] is added without a position embedding: it has no slot (module docstring)
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

"""Transformer blocks: pre-norm, residual, DropPath, MLP (ratio 4, GELU).

Each block maps tokens z = [CLS] + patch tokens, (B, 1+N, D), on a (T, H, W) grid to the same.
A block is a list of token-mixing steps, each ``x = x + drop_path(step(norm(x)))``,
followed by the MLP step:

- ``joint``:      [JointAttention]
- ``space``:      [SpaceAttention]
- ``divided``:    [SpaceAttention, TimeAttention]                 (STT, space then time)
- ``logo``:       [LocalWindowAttention, GlobalPooledAttention]   (LOGO-Former)
"""
from __future__ import annotations

import torch
from torch import nn

from dfer_cli.models.attention import (
    GlobalPooledAttention,
    Grid,
    JointAttention,
    LocalWindowAttention,
    SpaceAttention,
    TimeAttention,
)

BLOCK_KINDS = ("joint", "space", "divided", "logo")


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of
    samples and rescale the rest by 1/keep."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """One transformer block of the given ``kind`` (see module docstring)."""

    def __init__(self, kind: str, dim: int, heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, attn_dropout: float = 0.0, drop_path: float = 0.0,
                 window: Grid = (2, 4, 4)) -> None:
        super().__init__()
        kw = dict(attn_drop=attn_dropout, proj_drop=dropout)
        if kind == "joint":
            steps = [JointAttention(dim, heads, **kw)]
        elif kind == "space":
            steps = [SpaceAttention(dim, heads, **kw)]
        elif kind == "divided":
            steps = [SpaceAttention(dim, heads, **kw), TimeAttention(dim, heads, **kw)]
        elif kind == "logo":
            steps = [LocalWindowAttention(dim, heads, window, **kw),
                     GlobalPooledAttention(dim, heads, window, **kw)]
        else:
            raise ValueError(f"unknown block kind {kind!r}; choose one of {', '.join(BLOCK_KINDS)}")
        self.kind = kind
        self.steps = nn.ModuleList(steps)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in steps)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, z: torch.Tensor, grid: Grid) -> torch.Tensor:
        """z: [CLS] then the patch tokens, (B, 1+N, D) -> (B, 1+N, D)."""
        for norm, step in zip(self.norms, self.steps):
            h = norm(z)
            dx, dcls = step(h[:, 1:], h[:, :1], grid)             # (B, N, D), (B, 1, D)
            z = z + self.drop_path(torch.cat([dcls, dx], dim=1))
        return z + self.drop_path(self.mlp(self.norm_mlp(z)))

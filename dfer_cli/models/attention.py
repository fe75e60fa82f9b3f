"""Attention layers over a (T, H, W) grid of tokens.

Every layer takes patch tokens ``x`` of shape (B, N, D) with N = T*H*W laid out time-major
(t, then row, then column), plus the [CLS] token ``cls`` (B, 1, D), and returns both
updated. How [CLS] takes part differs per layer and is written in each docstring.

- ``Attention``: plain multi-head attention, optionally with separate keys/values and a mask.
- ``JointAttention``: every token attends to every token (cost grows as (T*H*W)^2).
- ``SpaceAttention``: tokens attend within their own frame.
- ``TimeAttention``: tokens attend along time at their own spatial position.
- ``LocalWindowAttention``: tokens attend within non-overlapping f x h x w windows.
- ``GlobalPooledAttention``: each token attends to one pooled token per window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Grid = tuple[int, int, int]  # (T, H, W) of the patch-token grid


class Attention(nn.Module):
    """Multi-head scaled dot-product attention.

    ``forward(x, kv=None, mask=None)``: queries from ``x`` (B, L, D); keys and values from
    ``kv`` (B, S, D), default ``x``; ``mask`` boolean, broadcastable to (B, L, S), True where
    a query may attend to a key.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        kv = self.kv(x if kv is None else kv)                                    # (B, S, 2D)
        k, v = kv.chunk(2, dim=-1)                                               # (B, S, D) each
        return self.proj_drop(self.proj(self.mix(self.q(x), k, v, mask)))        # (B, L, D)

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention itself on projected tokens, before the output projection.

        q (B, L, D), k and v (B, S, D) -> softmax(q k^T / sqrt(d)) v per head, d = D/heads,
        heads concatenated: (B, L, D). ``mask`` as in ``forward``.
        """
        B, L, D = q.shape
        S, h = k.shape[1], self.heads
        q = q.reshape(B, L, h, D // h).transpose(1, 2)                           # (B, h, L, d)
        k = k.reshape(B, S, h, D // h).transpose(1, 2)                           # (B, h, S, d)
        v = v.reshape(B, S, h, D // h).transpose(1, 2)                           # (B, h, S, d)
        if mask is not None:
            mask = mask.unsqueeze(-3)                                            # (B, 1, L, S)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        return out.transpose(1, 2).reshape(B, L, D)                              # (B, L, D)


class JointAttention(nn.Module):
    """Full space-time attention over [CLS] + all T*H*W tokens."""

    def __init__(self, dim: int, heads: int, **kw) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, **kw)

    def forward(self, x, cls, grid: Grid):
        y = self.attn(torch.cat([cls, x], dim=1))  # (B, 1+N, D)
        return y[:, 1:], y[:, :1]


def attend_in_groups(attn: "Attention", groups: torch.Tensor, cls: torch.Tensor):
    """Attention within each group of tokens, with [CLS] joining every group.

    groups: (B*G, L, D), the G groups of each clip consecutive; cls: (B, 1, D). [CLS] is
    copied into each group as one extra token and its G outputs are averaged. Returns the
    group tokens (B*G, L, D) and the new [CLS] (B, 1, D).
    """
    B = cls.shape[0]
    G = groups.shape[0] // B
    y = attn(torch.cat([cls.repeat_interleave(G, dim=0), groups], dim=1))  # (B*G, 1+L, D)
    return y[:, 1:], y[:, :1].reshape(B, G, 1, -1).mean(dim=1)


class SpaceAttention(nn.Module):
    """Attention within each frame. [CLS] joins every frame's attention (as one extra
    token, copied per frame) and its T outputs are averaged, as in TimeSformer."""

    def __init__(self, dim: int, heads: int, **kw) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, **kw)

    def forward(self, x, cls, grid: Grid):
        B, N, D = x.shape
        T, H, W = grid
        y, cls = attend_in_groups(self.attn, x.reshape(B * T, H * W, D), cls)  # (B*T, HW, D)
        return y.reshape(B, N, D), cls


class TimeAttention(nn.Module):
    """Attention along time at each spatial position. [CLS] joins every position's
    attention (one extra token, copied per position) and its H*W outputs are averaged --
    the same rule as in SpaceAttention. [CLS] must read the time step: in STT's
    space -> time order it is the last token mixing of the network, and without [CLS]
    the final block's time attention would reach no output."""

    def __init__(self, dim: int, heads: int, **kw) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, **kw)

    def forward(self, x, cls, grid: Grid):
        B, N, D = x.shape
        T, H, W = grid
        tubes = x.reshape(B, T, H * W, D).transpose(1, 2).reshape(B * H * W, T, D)  # (B*HW, T, D)
        y, cls = attend_in_groups(self.attn, tubes, cls)                            # (B*HW, T, D)
        y = y.reshape(B, H * W, T, D).transpose(1, 2).reshape(B, N, D)              # (B, N, D)
        return y, cls


# ----------------------------------------------------------------------------- windows

def padded_grid(grid: Grid, window: Grid) -> Grid:
    """The grid rounded up to a whole number of windows in each dimension."""
    return tuple(-(-g // w) * w for g, w in zip(grid, window))  # type: ignore[return-value]


def pad_to_windows(x: torch.Tensor, grid: Grid, window: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad tokens (B, N, D) on the far side of each dimension up to whole windows.

    Returns the padded grid tensor (B, T', H', W', D) and a boolean (T', H', W') mask that
    is True on real tokens.
    """
    B, N, D = x.shape
    T, H, W = grid
    Tp, Hp, Wp = padded_grid(grid, window)
    x = x.reshape(B, T, H, W, D)
    x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H, 0, Tp - T))                 # (B, T', H', W', D)
    valid = torch.zeros(Tp, Hp, Wp, dtype=torch.bool, device=x.device)
    valid[:T, :H, :W] = True
    return x, valid


def window_partition(x: torch.Tensor, window: Grid) -> torch.Tensor:
    """(B, T', H', W', D) -> (B, nW, f*h*w, D), windows ordered time-major."""
    B, T, H, W, D = x.shape
    f, h, w = window
    x = x.reshape(B, T // f, f, H // h, h, W // w, w, D)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)                                  # (B, nt, nh, nw, f, h, w, D)
    return x.reshape(B, -1, f * h * w, D)


def window_merge(x: torch.Tensor, padded: Grid, window: Grid) -> torch.Tensor:
    """Inverse of ``window_partition``: (B, nW, f*h*w, D) -> (B, T', H', W', D)."""
    B, _, _, D = x.shape
    T, H, W = padded
    f, h, w = window
    x = x.reshape(B, T // f, H // h, W // w, f, h, w, D)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)                                  # (B, nt, f, nh, h, nw, w, D)
    return x.reshape(B, T, H, W, D)


class LocalWindowAttention(nn.Module):
    """Attention inside non-overlapping f x h x w windows of the token grid.

    A grid that the window does not divide is zero-padded on the far side up to whole
    windows; padded tokens are masked out as keys and their outputs dropped, so the result
    equals full attention restricted to each (possibly partial) window. Every window holds
    at least one real token, because padding is always shorter than a window. The q/k/v and
    output projections run on the real tokens only (padding is added between them), so
    padding costs only in the score and mixing products.
    [CLS] belongs to no window: it is left unchanged (returned as zeros, i.e. no residual
    update) and reaches the patch tokens in the global step.
    """

    def __init__(self, dim: int, heads: int, window: Grid, **kw) -> None:
        super().__init__()
        self.window = tuple(window)
        self.attn = Attention(dim, heads, **kw)

    def forward(self, x, cls, grid: Grid):
        B, N, D = x.shape
        T, H, W = grid
        a = self.attn
        qkv = torch.cat([a.q(x), a.kv(x)], dim=-1)                         # (B, N, 3D): q, k, v
        qkv, valid = pad_to_windows(qkv, grid, self.window)                # (B, T', H', W', 3D)
        win = window_partition(qkv, self.window)                           # (B, nW, L, 3D)
        nW, L = win.shape[1], win.shape[2]
        q, k, v = win.reshape(B * nW, L, 3 * D).split(D, dim=-1)           # (B*nW, L, D) each
        key_ok = window_partition(valid[None, ..., None], self.window)     # (1, nW, L, 1)
        key_ok = key_ok.reshape(nW, 1, L).repeat(B, 1, 1)                  # (B*nW, 1, L)
        mask = None if padded_grid(grid, self.window) == tuple(grid) else key_ok
        y = a.mix(q, k, v, mask)                                           # (B*nW, L, D)
        y = window_merge(y.reshape(B, nW, L, D), qkv.shape[1:4], self.window)
        y = y[:, :T, :H, :W].reshape(B, N, D)                              # drop padding
        return a.proj_drop(a.proj(y)), torch.zeros_like(cls)


class GlobalPooledAttention(nn.Module):
    """Every token attends to one summary token per window.

    The summaries come from a depthwise 3-D convolution whose kernel and stride equal the
    window (a learned weighted pool of each window, then LayerNorm). Padded positions are
    zeros and add nothing to a window's summary. Keys/values are the nW summaries plus
    [CLS]; queries are all patch tokens and [CLS]. So [CLS] reads one summary per window,
    and every patch token can read [CLS]: cost is (N+1) x (nW+1) instead of (N+1)^2.
    """

    def __init__(self, dim: int, heads: int, window: Grid, **kw) -> None:
        super().__init__()
        self.window = tuple(window)
        self.pool = nn.Conv3d(dim, dim, kernel_size=self.window, stride=self.window, groups=dim)
        self.pool_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, **kw)

    def summaries(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """One pooled token per window: (B, N, D) -> (B, nW, D)."""
        xp, _ = pad_to_windows(x, grid, self.window)                        # (B, T', H', W', D)
        pooled = self.pool(xp.permute(0, 4, 1, 2, 3))                       # (B, D, nt, nh, nw)
        return self.pool_norm(pooled.flatten(2).transpose(1, 2))            # (B, nW, D)

    def forward(self, x, cls, grid: Grid):
        kv = torch.cat([cls, self.summaries(x, grid)], dim=1)               # (B, 1+nW, D)
        y = self.attn(torch.cat([cls, x], dim=1), kv=kv)                    # (B, 1+N, D)
        return y[:, 1:], y[:, :1]

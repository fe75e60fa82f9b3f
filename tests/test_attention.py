"""Attention layers against independent references (float64).

``reference_attention`` writes multi-head attention out by hand -- softmax(Q K^T / sqrt(d)) V
per head with the layer's own q / kv / proj weights -- and every layer is compared with it,
with its masks built by hand from token coordinates and [CLS] handled as the layer's
docstring says. A wrong scale, a mask off by one or a wrong token order makes these fail.
"""
import itertools
import math

import pytest
import torch

from dfer_cli.models.attention import (
    Attention,
    GlobalPooledAttention,
    JointAttention,
    LocalWindowAttention,
    SpaceAttention,
    TimeAttention,
)
from dfer_cli.models.blocks import Block

D, HEADS = 16, 4


def reference_attention(attn: Attention, xq, xkv=None, mask=None):
    """softmax(Q K^T / sqrt(d)) V per head, heads concatenated, then the output projection.

    xq (L, D) queries, xkv (S, D) keys/values (default xq), mask (L, S) bool, True = may
    attend. Q = xq Wq^T + bq; [K | V] = xkv Wkv^T + bkv (the first D outputs are K).
    """
    xkv = xq if xkv is None else xkv
    Dm = xq.shape[-1]
    d = Dm // attn.heads
    q = xq @ attn.q.weight.T + attn.q.bias                       # (L, D)
    kv = xkv @ attn.kv.weight.T + attn.kv.bias                   # (S, 2D)
    k, v = kv[:, :Dm], kv[:, Dm:]
    heads = []
    for h in range(attn.heads):
        sl = slice(h * d, (h + 1) * d)
        scores = q[:, sl] @ k[:, sl].T / math.sqrt(d)            # (L, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
        heads.append((w / w.sum(dim=1, keepdim=True)) @ v[:, sl])  # (L, d)
    return torch.cat(heads, dim=1) @ attn.proj.weight.T + attn.proj.bias


def _index(grid, t, i, j):
    """Position of token (t, i, j) in the time-major sequence of a (T, H, W) grid."""
    T, H, W = grid
    return (t * H + i) * W + j


def _layer(kind, *args):
    torch.manual_seed(0)
    layer = kind(D, HEADS, *args).double().eval()
    with torch.no_grad():  # non-zero biases everywhere, so a bias mix-up shows
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _inputs(B, N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, D, dtype=torch.float64, generator=g),
            torch.randn(B, 1, D, dtype=torch.float64, generator=g))


def test_attention_equals_reference_with_kv_and_mask():
    attn = _layer(Attention)
    B, L, S = 2, 5, 7
    x, _ = _inputs(B, L)
    kv, _ = _inputs(B, S, seed=2)
    mask = torch.rand(B, L, S, generator=torch.Generator().manual_seed(3)) < 0.5
    mask[..., 0] = True                                          # every query sees a key
    y = attn(x, kv=kv, mask=mask)
    for b in range(B):
        torch.testing.assert_close(y[b], reference_attention(attn, x[b], kv[b], mask[b]),
                                   atol=1e-12, rtol=1e-10)
    # self-attention without a mask
    y = attn(x)
    for b in range(B):
        torch.testing.assert_close(y[b], reference_attention(attn, x[b]), atol=1e-12, rtol=1e-10)


def test_joint_attention_is_full_attention_over_cls_and_tokens():
    layer = _layer(JointAttention)
    grid = (3, 2, 2)
    x, cls = _inputs(2, 12)
    y, ycls = layer(x, cls, grid)
    for b in range(2):
        ref = reference_attention(layer.attn, torch.cat([cls[b], x[b]]))   # (1+N, D)
        torch.testing.assert_close(ycls[b], ref[:1], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(y[b], ref[1:], atol=1e-12, rtol=1e-10)


def check_groups_with_cls_averaged(layer, grid, groups):
    """Each group of token indices attends only within itself plus [CLS]; [CLS] is the mean
    of its outputs over the groups (reference_attention per group)."""
    x, cls = _inputs(2, grid[0] * grid[1] * grid[2])
    y, ycls = layer(x, cls, grid)
    for b in range(2):
        cls_sum = torch.zeros(1, D, dtype=torch.float64)
        for idx in groups:
            ref = reference_attention(layer.attn, torch.cat([cls[b], x[b, idx]]))
            torch.testing.assert_close(y[b, idx], ref[1:], atol=1e-12, rtol=1e-10)
            cls_sum += ref[:1]
        torch.testing.assert_close(ycls[b], cls_sum / len(groups), atol=1e-12, rtol=1e-10)


def test_space_attention_is_per_frame_with_cls_averaged():
    grid = T, H, W = (3, 2, 3)
    frames = [[_index(grid, t, i, j) for i in range(H) for j in range(W)] for t in range(T)]
    check_groups_with_cls_averaged(_layer(SpaceAttention), grid, frames)


def test_time_attention_is_per_position_with_cls_averaged():
    grid = T, H, W = (4, 2, 3)
    positions = [[_index(grid, t, i, j) for t in range(T)] for i, j in itertools.product(range(H), range(W))]
    check_groups_with_cls_averaged(_layer(TimeAttention), grid, positions)


def _block_diagonal_mask(grid, window):
    """mask[a, b] = tokens a and b fall in the same window (built from coordinates)."""
    coords = list(itertools.product(*(range(g) for g in grid)))  # time-major order
    win = torch.tensor([[c // w for c, w in zip(p, window)] for p in coords])
    return (win[:, None, :] == win[None, :, :]).all(-1)          # (N, N)


@pytest.mark.parametrize("grid,window", [
    ((4, 4, 4), (2, 2, 2)),     # divides
    ((5, 7, 7), (2, 4, 4)),     # padding in every dimension
    ((16, 7, 7), (2, 4, 4)),    # the default window on the paper's grid (7x7 padded to 8x8)
    ((3, 3, 3), (2, 7, 7)),     # window larger than the grid: one padded window per frame pair
    ((1, 7, 7), (2, 7, 7)),     # a single frame in a 2-frame window
])
def test_local_window_attention_equals_masked_full_attention(grid, window):
    layer = _layer(LocalWindowAttention, window)
    B, N = 2, grid[0] * grid[1] * grid[2]
    x, cls = _inputs(B, N)
    y, dcls = layer(x, cls, grid)
    mask = _block_diagonal_mask(grid, window)                    # (N, N), from coordinates
    for b in range(B):
        torch.testing.assert_close(y[b], reference_attention(layer.attn, x[b], mask=mask),
                                   atol=1e-12, rtol=1e-10)
    assert torch.count_nonzero(dcls) == 0  # [CLS] is in no window: no update


def test_local_windows_of_the_default_are_quarter_faces():
    # 2x4x4 on a 7x7 grid: the window of token (t, i, j) is (t // 2, i // 4, j // 4), so frame
    # 0 splits into 4 windows of 16, 12, 12 and 9 tokens shared with frame 1 only
    mask = _block_diagonal_mask((2, 7, 7), (2, 4, 4))
    sizes = sorted({int(mask[_index((2, 7, 7), 0, i, j)].sum()) for i in range(7) for j in range(7)})
    assert sizes == [2 * 9, 2 * 12, 2 * 16]


def test_local_window_attention_is_not_full_attention():
    # guard against a reference that is trivially the same as the layer
    torch.manual_seed(0)
    layer = LocalWindowAttention(D, HEADS, (2, 2, 2)).double().eval()
    x = torch.randn(1, 64, D, dtype=torch.float64)
    y, _ = layer(x, x[:, :1], (4, 4, 4))
    assert not torch.allclose(y, layer.attn(x), atol=1e-3)


@pytest.mark.parametrize("grid,window", [((4, 4, 4), (2, 2, 2)), ((5, 7, 7), (2, 4, 4)),
                                         ((16, 7, 7), (2, 7, 7))])
def test_global_attention_keys_are_one_per_window_plus_cls(grid, window):
    torch.manual_seed(0)
    layer = GlobalPooledAttention(D, HEADS, window).double().eval()
    B, N = 2, grid[0] * grid[1] * grid[2]
    x = torch.randn(B, N, D, dtype=torch.float64)
    cls = torch.randn(B, 1, D, dtype=torch.float64)
    seen = {}
    layer.attn.register_forward_hook(lambda m, args, kwargs, out: seen.update(q=args[0], kv=kwargs["kv"]),
                                     with_kwargs=True)
    y, ycls = layer(x, cls, grid)
    n_windows = -(-grid[0] // window[0]) * -(-grid[1] // window[1]) * -(-grid[2] // window[2])  # padded tiling
    assert seen["kv"].shape == (B, n_windows + 1, D)
    assert seen["q"].shape == (B, N + 1, D)
    assert y.shape == x.shape and ycls.shape == cls.shape


def _summaries_by_hand(layer, x, grid, window):
    """One summary per window, windows time-major: the depthwise pool written as loops over
    the real tokens of each window (padded positions add nothing), then LayerNorm. x (N, D)."""
    w = layer.pool.weight[:, 0]                   # (D, f, h, w)
    counts = [-(-g // s) for g, s in zip(grid, window)]
    out = []
    for wt, wi, wj in itertools.product(*(range(c) for c in counts)):
        acc = layer.pool.bias.clone()
        for dt, di, dj in itertools.product(*(range(s) for s in window)):
            t, i, j = wt * window[0] + dt, wi * window[1] + di, wj * window[2] + dj
            if t < grid[0] and i < grid[1] and j < grid[2]:
                acc = acc + w[:, dt, di, dj] * x[_index(grid, t, i, j)]
        out.append(acc)
    return layer.pool_norm(torch.stack(out))     # (nW, D)


def test_global_summaries_are_the_depthwise_pool_of_each_window():
    grid, window = (3, 5, 5), (2, 4, 4)          # padded: windows hold 16..32 real tokens
    layer = _layer(GlobalPooledAttention, window)
    x, _ = _inputs(1, 75)
    s = layer.summaries(x, grid)                  # (1, nW, D)
    torch.testing.assert_close(s[0], _summaries_by_hand(layer, x[0], grid, window), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("grid,window", [((4, 4, 4), (2, 2, 2)), ((3, 7, 7), (2, 4, 4))])
def test_global_attention_equals_reference(grid, window):
    # queries: [CLS] + every patch token; keys/values: [CLS] + one summary per window
    layer = _layer(GlobalPooledAttention, window)
    B, N = 2, grid[0] * grid[1] * grid[2]
    x, cls = _inputs(B, N)
    y, ycls = layer(x, cls, grid)
    for b in range(B):
        kv = torch.cat([cls[b], _summaries_by_hand(layer, x[b], grid, window)])   # (1+nW, D)
        ref = reference_attention(layer.attn, torch.cat([cls[b], x[b]]), kv)      # (1+N, D)
        torch.testing.assert_close(ycls[b], ref[:1], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(y[b], ref[1:], atol=1e-12, rtol=1e-10)


def test_divided_attention_equals_space_then_time_loops():
    torch.manual_seed(0)
    T, H, W, B = 3, 4, 4, 2
    space = SpaceAttention(D, HEADS).double().eval()
    time = TimeAttention(D, HEADS).double().eval()
    x = torch.randn(B, T * H * W, D, dtype=torch.float64)
    cls = torch.randn(B, 1, D, dtype=torch.float64)

    xs, cls_s = space(x, cls, (T, H, W))
    yt, cls_t = time(xs, cls_s, (T, H, W))

    # explicit loops: each frame with [CLS] prepended; [CLS] averaged over frames
    grid = x.reshape(B, T, H * W, D)
    ref_s = torch.empty_like(grid)
    ref_cls = torch.zeros(B, 1, D, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            out = space.attn(torch.cat([cls[b:b + 1], grid[b:b + 1, t]], dim=1))[0]
            ref_cls[b] += out[:1] / T
            ref_s[b, t] = out[1:]
    torch.testing.assert_close(xs, ref_s.reshape(B, -1, D), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(cls_s, ref_cls, atol=1e-10, rtol=1e-10)
    # then each spatial position along time, [CLS] prepended and averaged over positions
    ref_t = torch.empty_like(ref_s)
    ref_cls_t = torch.zeros(B, 1, D, dtype=torch.float64)
    for b in range(B):
        for p in range(H * W):
            out = time.attn(torch.cat([ref_cls[b:b + 1], ref_s[b:b + 1, :, p]], dim=1))[0]
            ref_cls_t[b] += out[:1] / (H * W)
            ref_t[b, :, p] = out[1:]
    torch.testing.assert_close(yt, ref_t.reshape(B, -1, D), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(cls_t, ref_cls_t, atol=1e-10, rtol=1e-10)


def test_divided_block_is_residual_space_then_time_then_mlp():
    torch.manual_seed(0)
    grid = (3, 2, 2)
    block = Block("divided", D, HEADS, dropout=0.0, drop_path=0.0).double().eval()
    z = torch.randn(2, 1 + 12, D, dtype=torch.float64)
    out = block(z, grid)
    ref = z
    for norm, step in zip(block.norms, block.steps):
        h = norm(ref)
        dx, dc = step(h[:, 1:], h[:, :1], grid)
        ref = ref + torch.cat([dc, dx], 1)
    ref = ref + block.mlp(block.norm_mlp(ref))
    torch.testing.assert_close(out, ref)
    assert [type(s) for s in block.steps] == [SpaceAttention, TimeAttention]


def test_attention_mask_blocks_keys():
    torch.manual_seed(0)
    attn = Attention(D, HEADS).double().eval()
    x = torch.randn(1, 5, D, dtype=torch.float64)
    mask = torch.tensor([True, True, True, False, False])[None, None]  # last two keys hidden
    y1 = attn(x, mask=mask)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(1, 2, D, dtype=torch.float64)   # change only the hidden tokens
    y2 = attn(x2, mask=mask)
    torch.testing.assert_close(y1[:, :3], y2[:, :3])

"""Attention layers against independent references (float64)."""
import itertools

import pytest
import torch

from dfer_cli.models.attention import (
    Attention, GlobalPooledAttention, LocalWindowAttention, SpaceAttention, TimeAttention,
    num_windows,
)
from dfer_cli.models.blocks import Block

D, HEADS = 16, 4


def _block_diagonal_mask(grid, window):
    """mask[a, b] = tokens a and b fall in the same window (built from coordinates)."""
    coords = list(itertools.product(*(range(g) for g in grid)))  # time-major order
    win = torch.tensor([[c // w for c, w in zip(p, window)] for p in coords])
    return (win[:, None, :] == win[None, :, :]).all(-1)          # (N, N)


@pytest.mark.parametrize("grid,window", [
    ((4, 4, 4), (2, 2, 2)),     # divides
    ((5, 7, 7), (2, 4, 4)),     # padding in every dimension
    ((3, 3, 3), (2, 7, 7)),     # window larger than the grid: one padded window per frame pair
    ((1, 7, 7), (2, 7, 7)),     # a single frame in a 2-frame window
])
def test_local_window_attention_equals_masked_full_attention(grid, window):
    torch.manual_seed(0)
    layer = LocalWindowAttention(D, HEADS, window).double().eval()
    B, N = 2, grid[0] * grid[1] * grid[2]
    x = torch.randn(B, N, D, dtype=torch.float64)
    cls = torch.randn(B, 1, D, dtype=torch.float64)
    y, dcls = layer(x, cls, grid)
    ref = layer.attn(x, mask=_block_diagonal_mask(grid, window)[None])
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    assert torch.count_nonzero(dcls) == 0  # [CLS] is in no window


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
    n_windows = num_windows(grid, window)
    assert n_windows == -(-grid[0] // window[0]) * -(-grid[1] // window[1]) * -(-grid[2] // window[2])
    assert seen["kv"].shape == (B, n_windows + 1, D)
    assert seen["q"].shape == (B, N + 1, D)
    assert y.shape == x.shape and ycls.shape == cls.shape


def test_global_summaries_are_the_depthwise_pool_of_each_window():
    torch.manual_seed(0)
    grid, window = (3, 5, 5), (2, 4, 4)          # padded: windows hold 16..32 real tokens
    layer = GlobalPooledAttention(D, HEADS, window).double()
    x = torch.randn(1, 75, D, dtype=torch.float64)
    s = layer.summaries(x, grid)                  # (1, nW, D)
    xg = x.reshape(3, 5, 5, D)
    w = layer.pool.weight[:, 0]                   # (D, f, h, w)
    expected = []
    for wt, wi, wj in itertools.product(range(2), range(2), range(2)):
        acc = layer.pool.bias.clone()
        for dt, di, dj in itertools.product(range(2), range(4), range(4)):
            t, i, j = wt * 2 + dt, wi * 4 + di, wj * 4 + dj
            if t < 3 and i < 5 and j < 5:       # padded positions add nothing
                acc = acc + w[:, dt, di, dj] * xg[t, i, j]
        expected.append(acc)
    expected = layer.pool_norm(torch.stack(expected))[None]
    torch.testing.assert_close(s, expected, atol=1e-9, rtol=1e-9)


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

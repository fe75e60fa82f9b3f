"""Still-image batches (data/stills.py): the warp moves content where its parameters say,
erasing boxes have the documented size, normalisation equals the per-frame path, batches
are a function of (seed, epoch), mixing keeps targets consistent; plus the held-out
validation split, the logit adjustment and the trunk's stride-1 stem."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfer_cli.data.base import Sample
from dfer_cli.data.stills import (
    StillAugment,
    StillBatches,
    affine_theta,
    erase_mask,
    images_to_tensor,
    normalise,
)
from dfer_cli.preprocess import Preprocessing, frames_to_tensor
from dfer_cli.train.batches import EpochSampler
from dfer_cli.train.losses import logit_adjustment
from dfer_cli.train.setup import holdout_split


def warp(img: torch.Tensor, angle=0.0, zoom=1.0, tx=0.0, ty=0.0, flip=1.0, size=None) -> torch.Tensor:
    """Apply affine_theta with one set of parameters to a (1, 1, S, S) image."""
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    theta = affine_theta(t(angle), t(zoom), t(tx), t(ty), t(flip))
    size = size or img.shape[-1]
    grid = F.affine_grid(theta, (1, 1, size, size), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def dot(size=8, y=1, x=2) -> torch.Tensor:
    img = torch.zeros(1, 1, size, size)
    img[0, 0, y, x] = 1.0
    return img


def peak(img: torch.Tensor) -> tuple[int, int]:
    i = int(img.flatten().argmax())
    return divmod(i, img.shape[-1])


def test_identity_and_flip_are_exact():
    img = torch.rand(1, 1, 8, 8)
    assert torch.allclose(warp(img), img, atol=1e-6)
    assert torch.allclose(warp(img, flip=-1), img.flip(-1), atol=1e-6)


def test_rotation_turns_content_clockwise_on_screen():
    # 90 degrees: pixel (row y, col x) of an S x S image goes to (row x, col S-1-y)
    img = dot(8, y=1, x=2)
    assert peak(warp(img, angle=math.pi / 2)) == (2, 8 - 1 - 1)
    assert torch.allclose(warp(img, angle=math.pi / 2), torch.rot90(img, k=-1, dims=(2, 3)), atol=1e-5)


def test_shift_moves_content_right_and_down_by_fraction_of_side():
    img = dot(8, y=1, x=2)
    assert peak(warp(img, tx=0.25)) == (1, 4)      # a quarter of 8 px to the right
    assert peak(warp(img, ty=0.5)) == (5, 2)       # half the side down


def test_zoom_enlarges_about_the_centre():
    # a ramp (value = column index, pixel centres at k + 0.5): zoomed 2x about the centre
    # (4.0), output column j shows the input at 4 + (j + 0.5 - 4) / 2
    img = torch.arange(8.0).expand(1, 1, 8, 8).clone()
    out = warp(img, zoom=2.0)
    expect = torch.tensor([4 + (j + 0.5 - 4) / 2 - 0.5 for j in range(2, 6)])
    assert torch.allclose(out[0, 0, 4, 2:6], expect, atol=1e-5)


def test_warp_resamples_straight_to_the_input_size():
    img = torch.zeros(1, 1, 48, 48)
    img[..., :, 24:] = 1.0                          # right half bright
    out = warp(img, size=64)
    assert out.shape[-1] == 64
    assert out[..., :, :31].max() == 0 and out[..., 2:-2, 33:-2].min() == 1


def test_erase_mask_boxes():
    gen = torch.Generator().manual_seed(0)
    m = erase_mask(gen, 200, 48, p=1.0)
    assert m.shape == (200, 1, 48, 48) and m.dtype == torch.bool
    area = m.flatten(1).float().sum(1) / 48 ** 2
    assert area.min() >= 0.015 and area.max() <= 0.34
    for box in m[:20, 0]:                           # each is one solid rectangle
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        assert box.sum() == len(rows) * len(cols)
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
    assert not erase_mask(gen, 50, 48, p=0.0).any()


def test_normalise_matches_frames_to_tensor():
    pre = Preprocessing(input_size=8, num_frames=1, grayscale=True)
    gray = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    expect = frames_to_tensor([rgb], pre)           # (1, 3, 8, 8)
    got = normalise(torch.from_numpy(gray).float()[None, None], pre)
    assert torch.allclose(got, expect, atol=1e-5)


def make_batches(n=40, seed=0, aug=None, sizes=(16, 16, 8), frames=1):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (12, 12), dtype=np.uint8) for _ in range(n)]
    labels = np.arange(n) % 7
    pre = Preprocessing(input_size=16, num_frames=frames, grayscale=True)
    return StillBatches(images_to_tensor(imgs, 16), labels, pre, aug or StillAugment(), seed=seed,
                        order=EpochSampler(n, seed), sizes=list(sizes), num_classes=7), labels


def epoch_of(b, epoch):
    b.set_epoch(epoch)
    b.order.set_epoch(epoch)
    return list(b)


def test_batches_depend_only_on_seed_and_epoch():
    b1, labels = make_batches()
    b2, _ = make_batches()
    e0, e0b, e1 = epoch_of(b1, 0), epoch_of(b2, 0), epoch_of(b1, 1)
    assert [x.shape for x, _ in e0] == [(16, 1, 3, 16, 16), (16, 1, 3, 16, 16), (8, 1, 3, 16, 16)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(e0, e0b))
    assert not torch.equal(e0[0][0], e1[0][0])
    # every sample once per epoch, in the sampler's order
    order = list(EpochSampler(40, 0).__iter__())
    assert torch.equal(torch.cat([y for _, y in e0]), torch.as_tensor(labels[order]))


def test_still_repeated_over_frames():
    b, _ = make_batches(frames=4, aug=StillAugment(erase=0.0))
    x, _ = epoch_of(b, 0)[0]
    assert x.shape == (16, 4, 3, 16, 16) and torch.equal(x[:, 0], x[:, 3])


def test_mixup_targets_are_convex_and_match_the_images():
    b, _ = make_batches(aug=StillAugment(rotate=0, scale=0, shift=0, flip=0, erase=0, mixup=1.0))
    for x, y in epoch_of(b, 0):
        assert y.dtype == torch.float32 and y.shape == (len(x), 7)
        assert torch.allclose(y.sum(1), torch.ones(len(x)))
        assert ((y > 0).sum(1) <= 2).all()


def test_cutmix_target_share_is_the_pasted_area():
    b, _ = make_batches(aug=StillAugment(rotate=0, scale=0, shift=0, flip=0, erase=0, cutmix=1.0))
    x, y = epoch_of(b, 0)[0]
    lam = y.max(1).values                            # the larger share
    assert ((lam >= 0.5) & (lam <= 1.0)).all()


def test_holdout_is_stratified_disjoint_and_seeded():
    samples = [Sample(f"/d/{c}/{i}.png", c, "image") for c in range(3) for i in range(10 * (c + 1))]
    kept, held = holdout_split(samples, 0.2, seed=0)
    assert [sum(s.label == c for s in held) for c in range(3)] == [2, 4, 6]
    assert len(kept) + len(held) == len(samples) and not {s.path for s in kept} & {s.path for s in held}
    assert holdout_split(samples, 0.2, seed=0)[1] == held
    assert holdout_split(samples, 0.2, seed=1)[1] != held


def test_logit_adjustment_is_tau_log_prior():
    counts = [3995, 436, 4097, 7215, 4830, 3171, 4965]
    expect = 0.5 * np.log(np.array(counts) / sum(counts))
    assert np.allclose(logit_adjustment(counts, 0.5).numpy(), expect, atol=1e-6)


def test_stride1_stem_grid_and_local_window():
    from dfer_cli.models import create_model
    from dfer_cli.models.backbone import grid_size

    assert grid_size(48, "s1") == 6 and grid_size(48) == 3 and grid_size(64) == 4 and grid_size(112) == 7
    m = create_model("logo_former", num_frames=2, input_size=48, dim=32, depth=1, heads=2,
                     window=(2, 3, 3), stem="s1")
    assert m.grid_hw == (6, 6) and m.window == (2, 3, 3)
    assert m.trunk_features(torch.randn(1, 2, 3, 48, 48)).shape == (1, 2, 256, 6, 6)
    with pytest.raises(ValueError, match="stem"):
        create_model("logo_former", stem="s3")

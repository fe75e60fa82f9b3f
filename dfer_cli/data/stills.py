"""Still-image training at CPU speed: the whole image set in one uint8 tensor, augmented a
batch at a time with tensor ops.

Per-image OpenCV warps in a DataLoader cost more than the 48 px network itself on 2 CPU
cores. For image datasets (FER2013: 28,709 48x48 faces, 66 MB as uint8) every image is
decoded once into memory and each batch is augmented in one ``affine_grid``/``grid_sample``
call (rotation, zoom, shift, flip), then random erasing and optional mixup/cutmix, all on
(B, C, S, S) tensors.

Randomness comes from a ``torch.Generator`` seeded with (seed, epoch), and the order from
:class:`dfer_cli.train.batches.EpochSampler`, so a resumed run draws exactly the batches an
uninterrupted run would.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from dfer_cli.preprocess import Preprocessing


@dataclass
class StillAugment:
    """Batch augmentation of still faces (all drawn per image)."""

    rotate: float = 12.0     # max rotation, degrees (uniform in [-rotate, rotate])
    scale: float = 0.10      # max relative zoom (uniform in [1 - scale, 1 + scale])
    shift: float = 0.10      # max translation, fraction of the side
    flip: float = 0.5        # probability of a horizontal flip
    erase: float = 0.5       # probability of random erasing (one box, 2-33 % of the area)
    mixup: float = 0.0       # probability that a batch is mixed with mixup (alpha 0.2)
    cutmix: float = 0.0      # probability that a batch is mixed with cutmix (alpha 1.0)

    def to_dict(self) -> dict:
        return asdict(self)


def images_to_tensor(images: list[np.ndarray], size: int):
    """uint8 images (H, W) or (H, W, 3) -> uint8 tensor (N, C, S0, S0). Images that all
    share one square size keep it (the batch warp resamples them straight to the model's
    input size, once); otherwise each is resized to ``size`` with area interpolation."""
    import cv2
    import torch

    shapes = {img.shape[:2] for img in images}
    if len(shapes) == 1 and (s0 := next(iter(shapes)))[0] == s0[1]:
        size = s0[0]
    out = []
    for img in images:
        if img.shape[0] != size or img.shape[1] != size:
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out.append(img if img.ndim == 3 else img[..., None])
    arr = np.stack(out)                                         # (N, S, S, C)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def normalise(x, pre: Preprocessing):
    """uint8-range float batch (B, C, S, S), C = 1 (grey) or 3 (RGB) -> the model's input
    (B, 3, S, S), exactly as :func:`dfer_cli.preprocess.frames_to_tensor` does per frame."""
    import torch

    x = x / 255.0
    if pre.grayscale and x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(pre.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def affine_theta(angle, zoom, tx, ty, flip):
    """(n, 2, 3) ``affine_grid`` matrices from per-image parameters (each a (n,) tensor):
    ``angle`` in radians (positive turns the content clockwise on screen, y pointing down),
    ``zoom`` (>1 enlarges the content), ``tx``/``ty`` shift of the content in fractions of
    the side (positive: right/down) and ``flip`` (-1 mirrors left-right, 1 keeps).

    ``affine_grid`` wants the inverse map, output -> input in [-1, 1] coordinates: the
    input point sampled for output p is R(-angle) (p - 2 t) / zoom, mirrored when flipped.
    """
    import torch

    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    ox, oy = -2 * tx, -2 * ty                            # the output offset, in input units
    row0 = torch.stack([cos * flip, sin * flip, (cos * ox + sin * oy) * flip], 1)
    row1 = torch.stack([-sin, cos, -sin * ox + cos * oy], 1)
    return torch.stack([row0, row1], 1)                 # (n, 2, 3)


def affine_thetas(gen, n: int, aug: StillAugment):
    """(n, 2, 3) ``affine_grid`` matrices for a random rotation, zoom, shift and flip of
    each image, drawn from ``gen`` within ``aug``'s ranges."""
    import torch

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = uniform(-1, 1) * math.radians(aug.rotate)
    zoom = uniform(1 - aug.scale, 1 + aug.scale)
    tx, ty = uniform(-1, 1) * aug.shift, uniform(-1, 1) * aug.shift
    flip = torch.where(torch.rand(n, generator=gen) < aug.flip, -1.0, 1.0)
    return affine_theta(angle, zoom, tx, ty, flip)


def erase_mask(gen, n: int, size: int, p: float, area=(0.02, 0.33), ratio=(0.3, 3.3)):
    """Boolean (n, 1, size, size), True inside one random box per image chosen with
    probability ``p`` (random erasing, Zhong et al. 2020)."""
    import torch

    a = size * size * (area[0] + (area[1] - area[0]) * torch.rand(n, generator=gen))
    r = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, generator=gen))
    h = torch.sqrt(a * r).clamp(1, size).round()
    w = torch.sqrt(a / r).clamp(1, size).round()
    y0 = (torch.rand(n, generator=gen) * (size - h + 1)).floor()
    x0 = (torch.rand(n, generator=gen) * (size - w + 1)).floor()
    on = torch.rand(n, generator=gen) < p
    idx = torch.arange(size, dtype=torch.float32)
    rows = (idx.view(1, -1) >= y0.view(-1, 1)) & (idx.view(1, -1) < (y0 + h).view(-1, 1))  # (n, S)
    cols = (idx.view(1, -1) >= x0.view(-1, 1)) & (idx.view(1, -1) < (x0 + w).view(-1, 1))  # (n, S)
    return (rows[:, :, None] & cols[:, None, :] & on.view(-1, 1, 1)).unsqueeze(1)


class StillBatches:
    """An epoch of augmented batches from an in-memory image set.

    Iterating yields ``(x, y)`` with x (B, T, 3, S, S) float32 -- each still repeated over
    the T = ``pre.num_frames`` frames -- and y either int64 labels (B,) or, for a mixed batch
    or when ``labels`` are vote shares (N, C), float soft targets (B, C). ``set_epoch`` before each epoch; ``order`` gives the sample
    order of the epoch (an :class:`~dfer_cli.train.batches.EpochSampler`), ``sizes`` the batch sizes.
    """

    def __init__(self, images, labels, pre: Preprocessing, aug: StillAugment, *, seed: int,
                 order, sizes: list[int], num_classes: int):
        import torch

        self.images = images                     # uint8 (N, C, S0, S0)
        labels = torch.as_tensor(labels)
        self.labels = labels.float() if labels.ndim == 2 else labels.long()  # (N, C) shares or (N,)
        self.pre, self.aug, self.seed = pre, aug, seed
        self.order, self.sizes, self.num_classes = order, sizes, num_classes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self):
        import torch

        gen = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, self.epoch, 11]).integers(2**62)))
        idx = torch.as_tensor(list(self.order), dtype=torch.int64)
        start = 0
        for size in self.sizes:
            batch = idx[start:start + size]
            start += size
            yield self.augment(self.images[batch].float(), self.labels[batch], gen)

    def augment(self, x, y, gen):
        """uint8-valued float (B, C, S0, S0) and labels (B,) or shares (B, C) -> model input
        and targets."""
        import torch
        import torch.nn.functional as F

        a, pre = self.aug, self.pre
        B, S = x.shape[0], pre.input_size
        theta = affine_thetas(gen, B, a)
        grid = F.affine_grid(theta, (B, x.shape[1], S, S), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = normalise(x, pre)                                   # (B, 3, S, S)
        if a.erase > 0:
            # erased pixels take the normalised mean grey (0), like torchvision's value=0
            x = x.masked_fill(erase_mask(gen, B, S, a.erase), 0.0)
        target = y
        u = float(torch.rand(1, generator=gen))
        if u < a.mixup + a.cutmix and B > 1:
            perm = torch.randperm(B, generator=gen)
            onehot = y if y.ndim == 2 else F.one_hot(y, self.num_classes).float()
            if u < a.mixup:
                lam = _beta(gen, 0.2)
                x = lam * x + (1 - lam) * x[perm]
            else:
                lam = _beta(gen, 1.0)
                h = int(round(S * math.sqrt(1 - lam)))
                cy, cx = (int(v) for v in torch.randint(0, S, (2,), generator=gen))
                y0, y1 = max(cy - h // 2, 0), min(cy + (h + 1) // 2, S)
                x0, x1 = max(cx - h // 2, 0), min(cx + (h + 1) // 2, S)
                x = x.clone()
                x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
                lam = 1 - (y1 - y0) * (x1 - x0) / (S * S)
            target = lam * onehot + (1 - lam) * onehot[perm]
        T = pre.num_frames
        return x.unsqueeze(1).expand(-1, T, -1, -1, -1).contiguous(), target  # (B, T, 3, S, S)


def _beta(gen, alpha: float) -> float:
    """A Beta(alpha, alpha) draw that depends only on ``gen``'s state.

    torch's Beta sampler takes no generator, so a seed is drawn from ``gen`` for numpy."""
    import torch

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))

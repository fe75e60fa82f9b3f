"""The temporal path learns: a blob moving left vs right is learnable only from frame order.

Every clip shows one bright blob crossing the frame over 16 frames, left -> right
(class 0) or right -> left (class 1). Start and end points are drawn from mirrored
ranges, so the set of frames has the same distribution in both classes: no single frame,
and no bag of frames, tells the classes apart. A small LOGO-Former must reach >= 95%
held-out accuracy; the same data with each clip's frames shuffled must stay near chance.
"""
import numpy as np
import pytest
import torch

from dfer_cli.models import create_model
from dfer_cli.train.losses import compact_loss

SIZE, FRAMES = 32, 16


def moving_blobs(n, rng):
    """n clips (n, 16, 3, 32, 32) float32 and labels (n,): 0 = moving right, 1 = moving left."""
    labels = rng.integers(0, 2, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    clips = np.empty((n, FRAMES, 3, SIZE, SIZE), np.float32)
    for i, label in enumerate(labels):
        a, b = rng.uniform(5, 10), rng.uniform(22, 27)
        xs = np.linspace(a, b, FRAMES) if label == 0 else np.linspace(b, a, FRAMES)
        y = rng.uniform(8, 24)
        for t, x in enumerate(xs):
            blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5 ** 2))
            clips[i, t] = blob[None] * 2.0 - 0.5 + rng.normal(0, 0.1, (3, SIZE, SIZE))
    return torch.from_numpy(clips), torch.from_numpy(labels)


def shuffle_frames(clips, rng):
    out = clips.clone()
    for i in range(len(out)):
        out[i] = out[i, torch.from_numpy(rng.permutation(FRAMES))]
    return out


def train_and_score(train_x, train_y, test_x, test_y, epochs=20, seed=0):
    """Train a small LOGO-Former whose randomly initialised ResNet trunk is frozen: trunk
    maps are computed once (BatchNorm on batch statistics, which keeps random features
    well scaled), so the CPU time goes to the transformer -- the temporal path under test."""
    torch.manual_seed(seed)
    model = create_model("logo_former", input_size=SIZE, num_frames=FRAMES, num_classes=2,
                         dim=32, heads=2, depth=1, dropout=0.0, drop_path=0.0)
    model.backbone.requires_grad_(False)
    with torch.no_grad():
        train_f = torch.cat([model.trunk_features(x) for x in train_x.split(64)])  # (n, T, 256, 2, 2)
        test_f = torch.cat([model.trunk_features(x) for x in test_x.split(64)])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(train_f), generator=gen).split(32):
            logits = model.forward_head(model.forward_tokens(train_f[idx]))
            loss = compact_loss(logits, train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model.forward_head(model.forward_tokens(test_f)).argmax(1)
    return (pred == test_y).float().mean().item()


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)  # the machine is shared; one thread is the predictable choice
    rng = np.random.default_rng(0)
    return moving_blobs(256, rng), moving_blobs(128, rng), rng


def test_learns_direction_of_motion(data):
    (xtr, ytr), (xte, yte), _ = data
    assert train_and_score(xtr, ytr, xte, yte) >= 0.95


def test_shuffled_frames_stay_at_chance(data):
    (xtr, ytr), (xte, yte), rng = data
    acc = train_and_score(shuffle_frames(xtr, rng), ytr, shuffle_frames(xte, rng), yte)
    assert acc < 0.68  # 128 held-out clips: chance is 0.5 +- 0.045

"""Compact loss against a direct numpy computation, and its behaviour."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfer_cli.train.losses import DEFAULT_LAMBDA, CompactLoss, compact_loss, compact_regulariser


def _numpy_compact(logits, target, lam, symmetric=True):
    total = 0.0
    for z, y in zip(logits, target):
        p = np.exp(z - z.max())
        p /= p.sum()
        ce = -np.log(p[y])
        others = np.delete(z, y)
        q = np.exp(others - others.max())
        q /= q.sum()
        u = np.full_like(q, 1.0 / len(q))
        r = np.sum(u * np.log(u / q))
        if symmetric:
            r += np.sum(q * np.log(q / u))
        total += ce + lam * r
    return total / len(logits)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("lam", [DEFAULT_LAMBDA, 1.0])
def test_value_matches_numpy(lam, symmetric):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(16, 7))
    target = rng.integers(0, 7, size=16)
    got = compact_loss(torch.tensor(logits), torch.tensor(target), lam=lam, symmetric=symmetric)
    assert got.item() == pytest.approx(_numpy_compact(logits, target, lam, symmetric), rel=1e-10)
    module = CompactLoss(lam=lam, symmetric=symmetric)
    assert module(torch.tensor(logits), torch.tensor(target)).item() == pytest.approx(got.item(), rel=1e-12)


def test_lambda_zero_is_cross_entropy():
    z, y = torch.randn(8, 7), torch.randint(0, 7, (8,))
    torch.testing.assert_close(compact_loss(z, y, lam=0.0), F.cross_entropy(z, y))


def test_regulariser_zero_when_non_targets_uniform():
    target = torch.tensor([0, 3, 6])
    logits = torch.full((3, 7), -1.5, dtype=torch.float64)
    logits[torch.arange(3), target] = torch.tensor([4.0, -9.0, 0.3], dtype=torch.float64)  # any target logit
    r = compact_regulariser(logits, target)
    torch.testing.assert_close(r, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # and positive otherwise
    logits[0, 1] += 1.0
    assert compact_regulariser(logits, target)[0] > 1e-3


def test_regulariser_gradient_pushes_non_targets_toward_uniform():
    torch.manual_seed(0)
    target = torch.randint(0, 7, (32,))
    logits = (3 * torch.randn(32, 7, dtype=torch.float64)).requires_grad_()
    r = compact_regulariser(logits, target)
    r.sum().backward()
    g = logits.grad
    # the regulariser never touches the target logit
    assert torch.count_nonzero(g[torch.arange(32), target]) == 0
    # a small step against the gradient makes every sample's non-target softmax more uniform
    with torch.no_grad():
        stepped = logits - 0.01 * g

    def spread(z):  # KL(q || uniform) per sample = log(C-1) - entropy(q)
        keep = torch.ones_like(z, dtype=torch.bool)
        keep[torch.arange(len(z)), target] = False
        q = F.softmax(z[keep].reshape(len(z), 6), dim=1)
        return math.log(6) + (q * q.log()).sum(1)

    assert (spread(stepped) < spread(logits.detach())).all()
    assert (compact_regulariser(stepped, target) < r.detach()).all()


def test_two_classes_have_no_regulariser():
    z, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(compact_loss(z, y, lam=5.0), F.cross_entropy(z, y))


def test_value_computed_by_hand():
    # C = 3, target 0, non-target logits (log 3, 0): q = (3/4, 1/4), u = (1/2, 1/2)
    logits = torch.tensor([[0.5, math.log(3.0), 0.0]], dtype=torch.float64)
    target = torch.tensor([0])
    kl_uq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)      # = 0.5 log(4/3)
    kl_qu = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    ce = -(0.5 - math.log(math.exp(0.5) + 3.0 + 1.0))
    assert compact_regulariser(logits, target).item() == pytest.approx(kl_uq + kl_qu, rel=1e-12)
    assert compact_regulariser(logits, target, symmetric=False).item() == pytest.approx(kl_uq, rel=1e-12)
    assert compact_loss(logits, target, lam=0.1).item() == pytest.approx(ce + 0.1 * (kl_uq + kl_qu), rel=1e-12)

"""SAM: one step on a quadratic equals the closed form; state round-trips."""
import copy

import pytest
import torch

from dfer_cli.train.optim import SAM

A = torch.tensor([[3.0, 0.5], [0.5, 1.0]])


def _loss(w):
    return 0.5 * w @ A @ w  # gradient A w


def test_one_sam_step_matches_closed_form():
    w0 = torch.tensor([1.0, -2.0])
    w = torch.nn.Parameter(w0.clone())
    lr, rho = 0.1, 0.05
    opt = SAM([w], torch.optim.SGD, rho=rho, lr=lr)
    _loss(w).backward()
    opt.first_step(zero_grad=True)
    g = A @ w0
    assert torch.allclose(w.detach(), w0 + rho * g / g.norm())   # the ascent point
    _loss(w).backward()
    opt.second_step(zero_grad=True)
    w_adv = w0 + rho * g / g.norm()
    expect = w0 - lr * (A @ w_adv)   # SGD step at w0 with the gradient taken at w_adv
    assert torch.allclose(w.detach(), expect, atol=1e-6)


def test_closure_step_equals_two_step_api():
    w1 = torch.nn.Parameter(torch.tensor([0.3, 0.7]))
    w2 = torch.nn.Parameter(torch.tensor([0.3, 0.7]))
    o1 = SAM([w1], torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    o2 = SAM([w2], torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    for _ in range(3):
        def closure():
            o1.zero_grad()
            loss = _loss(w1)
            loss.backward()
            return loss
        o1.step(closure)
        _loss(w2).backward()
        o2.first_step()
        _loss(w2).backward()
        o2.second_step()
    assert torch.allclose(w1, w2)
    assert not torch.allclose(w1, torch.tensor([0.3, 0.7]))


def test_closure_step_zeroes_the_gradients_before_each_pass():
    """A closure that only computes and back-propagates (as training's does): the update
    uses the gradient at the ascent point alone, not that plus the gradient at w."""
    w0 = torch.tensor([1.0, -2.0])
    w = torch.nn.Parameter(w0.clone())
    w.grad = torch.tensor([5.0, 5.0])        # left over from elsewhere: must not count
    lr, rho = 0.1, 0.05
    opt = SAM([w], torch.optim.SGD, rho=rho, lr=lr)

    def closure():
        loss = _loss(w)
        loss.backward()
        return loss

    first = opt.step(closure)
    g = A @ w0
    w_adv = w0 + rho * g / g.norm()
    assert torch.allclose(first, _loss(w0))
    assert torch.allclose(w.detach(), w0 - lr * (A @ w_adv), atol=1e-6)
    assert w.grad is None                    # zeroed after the update too


def test_state_dict_round_trip_keeps_momentum():
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = SAM([w], torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    _loss(w).backward(); opt.first_step(); _loss(w).backward(); opt.second_step()
    sd = opt.state_dict()
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = SAM([w2], torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(sd))  # as from a file: no shared buffers
    for o, p in ((opt, w), (opt2, w2)):
        _loss(p).backward(); o.first_step(); _loss(p).backward(); o.second_step()
    assert torch.equal(w, w2)
    assert opt2.param_groups[0]["params"][0] is w2


def test_negative_rho_rejected():
    with pytest.raises(ValueError, match="rho"):
        SAM([torch.nn.Parameter(torch.zeros(1))], torch.optim.SGD, rho=-1, lr=0.1)


def test_perturbation_uses_one_norm_over_all_parameters():
    # e = rho * g / ||g||_2 with the norm over every tensor of every group together; a
    # per-tensor norm would move each tensor by rho instead
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0]))
    b = torch.nn.Parameter(torch.tensor([[0.5, -3.0], [2.0, 1.0]]))
    c = torch.nn.Parameter(torch.tensor([4.0]))
    a0, b0, c0 = a.detach().clone(), b.detach().clone(), c.detach().clone()
    rho = 0.1
    opt = SAM([{"params": [a, b]}, {"params": [c]}], torch.optim.SGD, rho=rho, lr=0.1)
    ga, gb, gc = torch.tensor([3.0, 0.0, -4.0]), torch.tensor([[1.0, 2.0], [0.0, -2.0]]), torch.tensor([6.0])
    ((a * ga).sum() + (b * gb).sum() + (c * gc).sum()).backward()      # gradients ga, gb, gc
    opt.first_step()
    norm = (25.0 + 9.0 + 36.0) ** 0.5                                   # ||(ga, gb, gc)||_2 by hand
    torch.testing.assert_close(a.detach(), a0 + rho * ga / norm)
    torch.testing.assert_close(b.detach(), b0 + rho * gb / norm)
    torch.testing.assert_close(c.detach(), c0 + rho * gc / norm)
    step = torch.cat([(a - a0).flatten(), (b - b0).flatten(), (c - c0).flatten()]).detach()
    assert step.norm().item() == pytest.approx(rho, rel=1e-5)          # one step of length rho


def _bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                               torch.nn.Linear(6, 3), torch.nn.BatchNorm1d(3, momentum=None))


def _bn_stats(net):
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]


@pytest.mark.parametrize("api", ["two_steps", "closure"])
def test_sam_step_updates_batchnorm_statistics_once(api):
    from dfer_cli.train.optim import frozen_bn_stats

    net = _bn_net().train()
    plain = copy.deepcopy(net)
    x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2] * 2 + [0, 1])
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    if api == "two_steps":
        loss_fn(net(x), y).backward()
        opt.first_step()
        with frozen_bn_stats(net):
            second = net(x)                     # still normalised with the batch's statistics
        loss_fn(second, y).backward()
        opt.second_step()
    else:
        def closure():
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            return loss
        opt.step(closure, model=net)
    plain(x)                                    # one plain forward of the first pass
    for (m1, v1, n1), (m2, v2, n2) in zip(_bn_stats(net), _bn_stats(plain)):
        torch.testing.assert_close(m1, m2, atol=0, rtol=0)
        torch.testing.assert_close(v1, v2, atol=0, rtol=0)
        assert n1.item() == n2.item() == 1
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), plain.parameters()))  # it trained


def test_frozen_bn_stats_keeps_batch_normalisation_in_training_mode():
    from dfer_cli.train.optim import frozen_bn_stats

    net = _bn_net().train()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    before = _bn_stats(net)
    with frozen_bn_stats(net):
        out = net[:2](x)                        # Linear -> BatchNorm1d
    assert net.training
    torch.testing.assert_close(out.mean(0), torch.zeros(6), atol=1e-5, rtol=0)  # batch statistics
    for (m1, v1, n1), (m2, v2, n2) in zip(before, _bn_stats(net)):
        assert torch.equal(m1, m2) and torch.equal(v1, v2) and torch.equal(n1, n2)
    net(x)                                      # outside the block the statistics move again
    assert _bn_stats(net)[0][2].item() == 1 and not torch.equal(before[0][0], _bn_stats(net)[0][0])


def test_sam_around_adamw_matches_closed_form():
    """`--optimizer sam-adamw`: AdamW's first step, written out (bias-corrected moments of
    the gradient taken at the ascent point, decoupled weight decay), from w0."""
    from dfer_cli.train.config import TrainConfig
    from dfer_cli.train.setup import build_optimizer

    # chosen so that the ascent step flips the sign of the first gradient component: Adam's
    # first step is about lr * sign(g), so only then does it matter where g was taken
    w0 = torch.tensor([1.0, -5.9])
    w = torch.nn.Parameter(w0.clone())
    lr, rho, wd, eps = 0.1, 0.5, 0.05, 1e-8
    cfg = TrainConfig(optimizer="sam-adamw", lr=lr, rho=rho, weight_decay=wd)
    opt = build_optimizer([w], cfg)
    assert isinstance(opt, SAM) and isinstance(opt.base_optimizer, torch.optim.AdamW)
    _loss(w).backward()
    opt.first_step(zero_grad=True)
    g = A @ w0
    w_adv = w0 + rho * g / g.norm()
    assert torch.allclose(w.detach(), w_adv)
    _loss(w).backward()
    opt.second_step(zero_grad=True)
    g_adv = A @ w_adv
    b1, b2 = 0.9, 0.999
    m_hat = (1 - b1) * g_adv / (1 - b1)          # bias-corrected first moment after one step
    v_hat = (1 - b2) * g_adv ** 2 / (1 - b2)     # and second moment
    expect = w0 * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
    assert torch.allclose(w.detach(), expect, atol=1e-6)
    # the gradient at w0 (not at the ascent point) would have given another update
    plain = w0 * (1 - lr * wd) - lr * g / (g.abs() + eps)
    assert g[0] > 0 > g_adv[0] and not torch.allclose(expect, plain, atol=1e-3)

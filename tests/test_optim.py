"""SAM: one step on a quadratic equals the closed form; state round-trips."""
import copy

import torch
import pytest

from dfer_cli.optim import SAM

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

"""The resume state's optimizer slots follow parameter names, not positions.

torch numbers an optimizer's per-parameter state by position. A run saved by one dfer
version and resumed by another that registers its parameters in another order would hand
one tensor's Adam moments to another: a crash in the first step when the shapes differ,
silent damage when they agree. ``state.pt`` therefore carries the parameter names.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dfer_cli.train.run_folder import TrainState, load_state, optimizer_param_names, save_state

CPU = torch.device("cpu")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)   # a and b have the same shapes: a swap would not crash
        self.b = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _trained(order: str):
    """A Net and an AdamW over its parameters in registration order or reversed, after 3 steps."""
    torch.manual_seed(0)
    net = Net()
    params = list(net.parameters())
    opt = torch.optim.AdamW(params[::-1] if order == "reversed" else params, lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, opt


def _moments(net, opt) -> dict[str, torch.Tensor]:
    return {n: opt.state[p]["exp_avg"].clone() for n, p in net.named_parameters()}


def test_slots_follow_names_when_the_parameter_order_changes(tmp_path):
    net, opt = _trained("reversed")
    assert optimizer_param_names(net, opt)[0] == "head.bias"
    save_state(str(tmp_path / "state.pt"), net, opt, TrainState(epoch=1, step=3), CPU)
    want = _moments(net, opt)

    fresh = Net()
    fresh_opt = torch.optim.AdamW(list(fresh.parameters()), lr=0.1)  # registration order
    counters = load_state(str(tmp_path / "state.pt"), fresh, fresh_opt, CPU)
    assert (counters.epoch, counters.step) == (1, 3)
    got = _moments(fresh, fresh_opt)
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    # a and b differ, so slots placed by position would have failed the loop above
    assert not torch.equal(want["a.weight"], want["b.weight"])


def test_a_state_without_names_still_resumes_in_the_same_order(tmp_path):
    net, opt = _trained("forward")
    save_state(str(tmp_path / "state.pt"), net, opt, TrainState(epoch=2, step=6), CPU)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    del state["param_names"]  # as written before names were recorded
    torch.save(state, tmp_path / "state.pt")
    fresh = Net()
    fresh_opt = torch.optim.AdamW(list(fresh.parameters()), lr=0.1)
    load_state(str(tmp_path / "state.pt"), fresh, fresh_opt, CPU)
    got, want = _moments(fresh, fresh_opt), _moments(net, opt)
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_a_state_without_names_in_another_order_is_one_clear_line(tmp_path):
    net, opt = _trained("reversed")
    save_state(str(tmp_path / "state.pt"), net, opt, TrainState(epoch=1, step=3), CPU)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    del state["param_names"]
    torch.save(state, tmp_path / "state.pt")
    fresh = Net()
    fresh_opt = torch.optim.AdamW(list(fresh.parameters()), lr=0.1)
    with pytest.raises(ValueError) as e:
        load_state(str(tmp_path / "state.pt"), fresh, fresh_opt, CPU)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "state.pt") in msg
    assert "does not fit this model" in msg and "a.weight" in msg and "without --resume" in msg


def test_a_state_for_other_parameters_is_refused(tmp_path):
    net, opt = _trained("forward")
    save_state(str(tmp_path / "state.pt"), net, opt, TrainState(epoch=1, step=3), CPU)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    state["param_names"] = [n.replace("head.", "fc.") for n in state["param_names"]]
    torch.save(state, tmp_path / "state.pt")
    fresh = Net()
    with pytest.raises(ValueError, match=r"does not fit this model \(its parameters differ.*fc\.bias"):
        load_state(str(tmp_path / "state.pt"), fresh, torch.optim.AdamW(fresh.parameters()), CPU)

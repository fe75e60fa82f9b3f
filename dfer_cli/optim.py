"""Sharpness-Aware Minimization (SAM, Foret et al. 2021), the optimizer of the DFER papers.

Each update takes two gradients: at the current weights w, then at the worst-case nearby
weights w + e with e = rho * g / ||g|| (the ascent step), and applies the base optimizer's
update at w using the second gradient. ``adaptive=True`` scales e by |w| (ASAM).
"""
from __future__ import annotations

import torch


class SAM(torch.optim.Optimizer):
    """Wraps a base optimizer class, e.g. ``SAM(params, torch.optim.SGD, rho=0.05, lr=1e-3,
    momentum=0.9)``. Call :meth:`first_step` after the first backward pass and
    :meth:`second_step` after the second, or :meth:`step` with a closure that recomputes
    the loss and gradients. ``state_dict`` is the base optimizer's (plain tensors)."""

    def __init__(self, params, base_optimizer_cls=torch.optim.SGD, rho: float = 0.05,
                 adaptive: bool = False, **kwargs):
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        for g in self.param_groups:
            g.setdefault("rho", rho)
            g.setdefault("adaptive", adaptive)

    def _grad_norm(self) -> torch.Tensor:
        norms = [
            ((torch.abs(p) if g["adaptive"] else 1.0) * p.grad).norm(p=2)
            for g in self.param_groups for p in g["params"] if p.grad is not None
        ]
        if not norms:
            return torch.tensor(0.0)
        return torch.norm(torch.stack(norms), p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """Move the weights to w + e (the sharpness-seeking ascent step)."""
        norm = self._grad_norm()
        for g in self.param_groups:
            scale = g["rho"] / (norm + 1e-12)
            for p in g["params"]:
                if p.grad is None:
                    continue
                e = (torch.pow(p, 2) if g["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e)
                self.state[p]["e_w"] = e
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True) -> None:
        """Return to w and apply the base optimizer with the gradient taken at w + e."""
        for g in self.param_groups:
            for p in g["params"]:
                e = self.state[p].pop("e_w", None)
                if e is not None:
                    p.sub_(e)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):
        """Full SAM update; `closure` must zero the grads, compute the loss and call
        backward, and is called once more at the perturbed weights."""
        if closure is None:
            raise ValueError("SAM.step needs a closure (or call first_step/second_step)")
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step()
        return loss

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups

"""Sharpness-Aware Minimization (SAM, Foret et al. 2021), the optimizer of the DFER papers.

Each update takes two gradients: at the current weights w, then at the worst-case nearby
weights w + e with e = rho * g / ||g|| (the ascent step), and applies the base optimizer's
update at w using the second gradient. ``adaptive=True`` scales e by |w| (ASAM).

The second forward pass must not count as a second look at the batch: BatchNorm layers in
training mode update their running statistics on every forward, so without care each SAM
step would update them twice, the second time with statistics taken at the perturbed
weights w + e. Run the second forward under :func:`frozen_bn_stats`.
"""
from __future__ import annotations

import contextlib
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def frozen_bn_stats(model: nn.Module):
    """Inside the block, BatchNorm layers of ``model`` keep normalising with the batch's own
    statistics (training mode unchanged) but their running statistics are left as they were.

    Each ``_BatchNorm`` that tracks running statistics gets throw-away copies of
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` for the block, and its own
    tensors back on exit, untouched. Swapping (rather than setting ``momentum`` to 0, or
    copying the old values back) is exact whatever the momentum, also ``momentum=None``
    (cumulative average); keeps ``num_batches_tracked`` from counting the pass; cannot turn a
    statistic into NaN through 0 * inf; and writes nothing in place into tensors the
    autograd graph of the pass may hold, so ``backward`` can run after the block.
    """
    saved = [(m, m.running_mean, m.running_var, m.num_batches_tracked)
             for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.running_mean is not None]
    for m, mean, var, count in saved:
        m.running_mean, m.running_var, m.num_batches_tracked = mean.clone(), var.clone(), count.clone()
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


class SAM(torch.optim.Optimizer):
    """Wraps a base optimizer class, e.g. ``SAM(params, torch.optim.SGD, rho=0.05, lr=1e-3,
    momentum=0.9)``. Call :meth:`first_step` after the first backward pass and
    :meth:`second_step` after the second, or :meth:`step` with a closure that recomputes
    the loss and gradients. ``state_dict`` is the base optimizer's (plain tensors).

    The perturbation is e = rho * g / ||g||_2 with ONE norm over all parameters together
    (every group, every tensor), not one per tensor: the ascent step is a step of length
    rho in the joint weight space. Wrap the second forward pass in
    ``frozen_bn_stats(model)`` (see the module docstring)."""

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
        """||g||_2 over all parameters together: the 2-norm of the per-tensor 2-norms
        (with ``adaptive``, of |w| * g)."""
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

    def step(self, closure=None, *, model: nn.Module | None = None):
        """Full SAM update. `closure()` computes the loss at the current weights and calls
        backward on it; it is called twice, at w and at w + e, with the gradients zeroed
        before each call (so it need not zero them), and the second time with the BatchNorm
        running statistics of ``model`` frozen when it is given (see ``frozen_bn_stats``).
        Returns the first call's value."""
        if closure is None:
            raise ValueError("SAM.step needs a closure (or call first_step/second_step)")
        closure = torch.enable_grad()(closure)
        self.zero_grad(set_to_none=True)
        out = closure()
        self.first_step(zero_grad=True)
        with frozen_bn_stats(model) if model is not None else contextlib.nullcontext():
            closure()
        self.second_step(zero_grad=True)
        return out

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups

"""Compact loss: cross-entropy plus a term that keeps the non-target probabilities even.

For logits z over C classes and target y, let q be the softmax over the C-1 non-target
logits only (the target removed, renormalised) and u the uniform distribution over those
C-1 classes. Then

    loss = CE(z, y) + lam * R,     R = KL(u || q) + KL(q || u)   (symmetric KL)

CE alone is indifferent to how the remaining mass is spread over the wrong classes; R asks
it to be spread evenly, so no single wrong class sits close to the target -- the papers'
"minimum intra-class, maximum inter-class distance" aim, expressed on the outputs. R is 0
exactly when the non-target probabilities are equal, and R never rewards or penalises the
target probability itself (q is renormalised without it), so it does not fight CE.

Choices we made (the papers do not pin these down):

- ``lam`` defaults to ``DEFAULT_LAMBDA = 0.1`` (also ``FormerConfig.compact_lambda``). With
  C = 7 and one wrong class holding 90% of the non-target mass (2% on each other one),
  R is about 2.8, so the term adds ~0.3 to a CE that is typically 0.5-1.5 in training: a regulariser, not the
  objective.
- LOGO-Former's compact loss regularisation and STT's "compact softmax cross-entropy" are
  the same family: CE on the full softmax plus a uniformity term on the non-target
  softmax. We implement both with this one function. ``symmetric=True`` (default, used
  for every model) is the symmetric KL above; ``symmetric=False`` keeps only KL(u || q),
  the one-sided form (it punishes a non-target class whose probability collapses to 0
  harder, and one that dominates less).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_LAMBDA = 0.1


def non_target_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log q: log-softmax over the non-target logits, (B, C) -> (B, C-1), class order kept."""
    B, C = logits.shape
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[torch.arange(B, device=logits.device), target] = False
    return F.log_softmax(logits[keep].reshape(B, C - 1), dim=1)


def compact_regulariser(logits: torch.Tensor, target: torch.Tensor,
                        symmetric: bool = True) -> torch.Tensor:
    """Per-sample R (B,): KL(u||q) [+ KL(q||u)] between uniform u and the non-target softmax q."""
    C = logits.shape[1]
    if C < 3:
        return logits.new_zeros(logits.shape[0])  # one non-target class: always uniform
    log_q = non_target_log_probs(logits, target)                 # (B, C-1)
    log_u = -math.log(C - 1)
    r = (log_u - log_q).mean(dim=1)                               # KL(u || q) = sum u (log u - log q)
    if symmetric:
        r = r + (log_q.exp() * (log_q - log_u)).sum(dim=1)        # KL(q || u)
    return r


def compact_loss(logits: torch.Tensor, target: torch.Tensor, lam: float = DEFAULT_LAMBDA,
                 symmetric: bool = True, label_smoothing: float = 0.0,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of CE(logits, target) + lam * R (see the module docstring).

    logits (B, C) float, target (B,) int64 class indices. ``weight`` (C,) optional class
    weights for the CE part, as in ``F.cross_entropy``.
    """
    ce = F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    if lam == 0:
        return ce
    return ce + lam * compact_regulariser(logits, target, symmetric).mean()


class CompactLoss(nn.Module):
    """``compact_loss`` as a module: ``CompactLoss(lam=0.1)(logits, target)``."""

    def __init__(self, lam: float = DEFAULT_LAMBDA, symmetric: bool = True,
                 label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.lam = lam
        self.symmetric = symmetric
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return compact_loss(logits, target, self.lam, self.symmetric, self.label_smoothing, self.weight)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, symmetric={self.symmetric}"


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015): mean over the batch of
    ``T^2 * KL(p_t || softmax(z / T))``, where ``p_t`` are the teacher's probabilities at the
    same temperature T (``teacher_probabilities``). The T^2 keeps the gradient's size
    independent of T, so the weight between this and the label loss means the same at any T.
    student_logits (B, C) float, teacher_probs (B, C) rows summing to 1. Zero exactly when
    the student's tempered softmax equals the teacher's."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)             # (B, C)
    p_t = teacher_probs.to(log_s.dtype)
    log_t = torch.log(p_t.clamp_min(1e-12))
    kl = (p_t * (log_t - log_s)).sum(dim=1)                               # (B,)
    return temperature ** 2 * kl.mean()


def teacher_probabilities(teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """The soft target of one or more teachers: the mean of their softmax(z / T), (B, C).
    Averaging probabilities (not logits) is the ensemble whose accuracy the student is asked
    to reach."""
    probs = [F.softmax(z.float() / temperature, dim=1) for z in teacher_logits]
    return torch.stack(probs).mean(0)


def logit_adjustment(class_counts, tau: float = 1.0) -> torch.Tensor:
    """``tau * log(prior)`` per class, the offset that logit-adjusted training adds to the
    logits before the loss (Menon et al., "Long-tail learning via logit adjustment", ICLR
    2021). Trained this way, the raw logits estimate a balanced posterior, so rare classes
    (FER2013's disgust: 1.5 % of the images) are predicted more often: higher UAR."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1)
    return tau * torch.log(counts / counts.sum())


def shift_prior(model, class_counts, alpha: float) -> None:
    """Add ``alpha * log(prior)`` to the classifier's bias, in place: post-hoc logit
    adjustment. A model trained with ``logit_adjustment(counts, tau)`` predicts as if the
    classes were balanced; ``alpha = tau`` restores the training prior (best accuracy, WAR),
    ``alpha = 0`` keeps balanced predictions (best mean recall, UAR), values in between trade
    one for the other. ``model.head`` must be the final ``nn.Linear``, or the model has a
    ``logit_bias`` added to its output (an ``Ensemble``: the shift applies to the members'
    mean probability, not to each member)."""
    bias = model.logit_bias if hasattr(model, "logit_bias") else model.head.bias
    with torch.no_grad():
        bias += logit_adjustment(class_counts, alpha).to(bias)

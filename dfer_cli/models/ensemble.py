"""An ensemble of Former models that predicts the mean of their probabilities.

    frames (B, T, 3, S, S), S = the largest member input size
      -> member i: frames resized to its input size s_i (resampling_matrix), its trunk
                                             (B*T, C_i, g_i, g_i), C_i 256 (512 with layer4)
      -> member i: its blocks, [CLS], its head  logits_i (B, classes)
      -> log(mean_i softmax(logits_i)) + logit_bias     (B, classes)  forward

Members trained on the same data with other seeds, sizes or schedules make different
mistakes, so the mean of their probabilities is more accurate than either alone (on the
FER2013 held-out split the bundled pair gains +1.4 WAR and +1.0 UAR over its better member;
weights/README.md). The output is a log-probability, so ``softmax(forward(x))`` is exactly
the members' mean probability (times ``exp(logit_bias)``, renormalised). ``logit_bias`` is
zero unless a post-hoc prior shift was exported into it (``losses.shift_prior``): it plays
the part of a single model's classifier bias.

The per-frame split that ``pipeline.classify`` uses to run the trunk once per face is kept:
``frame_features`` returns every member's trunk maps flattened and concatenated per frame,
``forward_tokens`` splits them back and returns the members' [CLS] features concatenated,
and ``forward_head`` turns those into the ensemble's output.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

ENSEMBLE = "ensemble"  # the model name in a checkpoint header


@dataclass
class EnsembleConfig:
    """The members of an ensemble: ``[{"model": name, "config": {...FormerConfig...}}, ...]``.

    ``num_classes`` and ``num_frames`` are shared by all members (checked when built);
    ``input_size`` is the largest member's, the size the ensemble's frames come in at."""

    members: list = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.members[0]["config"]["num_classes"])

    @property
    def num_frames(self) -> int:
        return int(self.members[0]["config"]["num_frames"])

    @property
    def input_size(self) -> int:
        return max(int(m["config"]["input_size"]) for m in self.members)

    def to_dict(self) -> dict:
        return {"members": [{"model": m["model"], "config": dict(m["config"])} for m in self.members]}


def area_matrix(dst: int, src: int) -> np.ndarray:
    """The (dst, src) matrix of OpenCV's area resize along one axis (``cv2.INTER_AREA``):
    ``R @ x`` resizes a column ``x``."""
    import cv2

    return cv2.resize(np.eye(src, dtype=np.float32), (src, dst), interpolation=cv2.INTER_AREA).astype(np.float64)


def upsampling_matrix(dst: int, src: int) -> np.ndarray:
    """The (dst, src) matrix of the bilinear resize that makes a ``src`` px still (or a
    face reduced to ``src`` px, ``faces.align.align_face``) the model's ``dst`` px input
    (``data.transforms.warp``); built by warping one unit row per source pixel."""
    from dfer_cli.data.transforms import crop_matrix, warp

    m = crop_matrix(0.0, 0.0, float(src), float(src), dst)
    cols = []
    for j in range(src):
        unit = np.zeros((src, src), np.float32)
        unit[j] = 1.0                                  # image e_j 1^T: its warp is (R e_j) 1^T
        cols.append(warp(unit, m, dst)[:, 0])
    return np.stack(cols, axis=1).astype(np.float64)


def resampling_matrix(src: int, dst: int, detail: int | None = None) -> np.ndarray:
    """(dst, src) float32: how a face crop of side ``src`` becomes the crop a member of input
    ``dst`` would have been given on its own. Without ``detail``, an area resize (the crop
    aligned at ``dst`` directly, to resampling error). With ``detail``
    (``Preprocessing.detail_size``: the crop is the face reduced to ``detail`` px, then
    upsampled to ``src``), the ``detail`` px face is recovered first (least squares, exact
    to float rounding: the upsampling has full column rank) and then upsampled to ``dst``:
    the crop the member sees alone, and the way its training stills of ``detail`` px were
    made."""
    if detail is None:
        return area_matrix(dst, src).astype(np.float32)
    return (upsampling_matrix(dst, detail) @ np.linalg.pinv(upsampling_matrix(src, detail))).astype(np.float32)


class Ensemble(nn.Module):
    """Former models averaged in probability; see the module docstring."""

    model_name = ENSEMBLE

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0].config
        for i, m in enumerate(members[1:], 2):
            if m.config.num_classes != first.num_classes:
                raise ValueError(f"member {i} has {m.config.num_classes} classes, member 1 has {first.num_classes}")
            if m.config.num_frames != first.num_frames:
                raise ValueError(f"member {i} takes clips of {m.config.num_frames} frames, member 1 of "
                                 f"{first.num_frames}; export them to one clip length (--frames)")
        self.members = nn.ModuleList(members)
        self.config = EnsembleConfig([{"model": m.model_name, "config": m.config.to_dict()} for m in members])
        self.register_buffer("logit_bias", torch.zeros(first.num_classes))
        # floats per frame of each member's flattened trunk maps, for splitting them back
        self._map_sizes = [m.backbone.out_channels * m.grid_hw[0] * m.grid_hw[1] for m in members]
        self._resamplers: dict = {}  # (S, size, detail) -> (size, S) matrix

    def _resized(self, frames: torch.Tensor, size: int) -> torch.Tensor:
        """Frames (N, 3, S, S) as a member of input ``size`` would have been given them."""
        S = frames.shape[-1]
        if S == size:
            return frames
        pre = getattr(self, "preprocessing", None)
        detail = pre.detail_size if pre is not None and pre.detail_size and pre.detail_size < S else None
        key = (S, size, detail)
        if key not in self._resamplers:
            self._resamplers[key] = torch.from_numpy(resampling_matrix(S, size, detail))
        A = self._resamplers[key].to(frames.device, frames.dtype)                    # (size, S)
        return torch.einsum("ij,ncjk,lk->ncil", A, frames, A)                        # (N, 3, size, size)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, S, S) -> every member's trunk maps, flattened and concatenated (N, K)."""
        S = self.config.input_size
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[2] != S or frames.shape[3] != S:
            raise ValueError(f"expected frames shaped (N, 3, {S}, {S}), got {tuple(frames.shape)}")
        maps = [m.frame_features(self._resized(frames, m.config.input_size)) for m in self.members]
        return torch.cat([f.flatten(1) for f in maps], dim=1)               # (N, K)

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, 3, S, S) -> concatenated trunk maps (B, T, K)."""
        if x.ndim != 5:
            raise ValueError(f"expected clips shaped (B, T, 3, H, W), got {tuple(x.shape)}")
        B, T = x.shape[:2]
        if T > self.config.num_frames:
            raise ValueError(f"clip has {T} frames; this model takes at most {self.config.num_frames}")
        return self.frame_features(x.flatten(0, 1)).reshape(B, T, -1)       # (B, T, K)

    def forward_tokens(self, f: torch.Tensor) -> torch.Tensor:
        """Concatenated trunk maps (B, T, K) (or (B, T, K) built from ``frame_features``
        rows) -> the members' [CLS] features, concatenated (B, sum of dims)."""
        B, T = f.shape[:2]
        f = f.reshape(B, T, -1)
        feats = []
        for m, part in zip(self.members, f.split(self._map_sizes, dim=2)):
            g = m.grid_hw
            feats.append(m.forward_tokens(part.reshape(B, T, m.backbone.out_channels, *g)))  # (B, D_i)
        return torch.cat(feats, dim=1)                                      # (B, sum D_i)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, 3, S, S) -> the members' [CLS] features, concatenated (B, sum of dims)."""
        return self.forward_tokens(self.trunk_features(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Concatenated [CLS] features -> log of the members' mean probability + logit_bias (B, C)."""
        dims = [m.config.dim for m in self.members]
        logp = torch.stack([m.forward_head(part).float().log_softmax(-1)
                            for m, part in zip(self.members, feats.split(dims, dim=1))])  # (M, B, C)
        # log(mean_i p_i), computed in log space: no underflow for confident members
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members)) + self.logit_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, 3, S, S) -> log mean probability + logit_bias (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


def combine(models: list, names: list[str] | None = None) -> Ensemble:
    """An Ensemble of loaded checkpoints (from ``checkpoint.load_model``), ready to save.

    The members must agree on what a clip is: classes in the same order, clip length and
    frame sampling, colour, normalisation and face template. They may differ in input size:
    the ensemble takes frames at the largest and resizes them for the smaller members, and
    keeps that member's preprocessing (its ``detail_size`` too). Its provenance is the first
    member's (training data and class counts, for ``--prior-shift``), with every member's
    file, sha256 and provenance under ``members``. ``names`` label the members in errors
    (default: their checkpoint paths). Raises ValueError, one line naming the member.
    """
    from dfer_cli.preprocess import Preprocessing
    from dfer_cli.weights import file_sha256

    names = names or [str(getattr(m, "checkpoint_path", f"member {i + 1}")) for i, m in enumerate(models)]
    if len(models) < 2:
        raise ValueError(f"an ensemble needs at least 2 checkpoints, got {len(models)}")
    first, first_name = models[0], names[0]
    shared = ("grayscale", "mean", "std", "template")
    for name, m in zip(names, models):
        if isinstance(m, Ensemble):
            raise ValueError(f"{name}: is an ensemble already; name its members instead")
        if list(m.classes) != list(first.classes):
            raise ValueError(f"{name}: its classes {list(m.classes)} differ from {first_name}'s "
                             f"{list(first.classes)} (names or order)")
        if m.config.num_frames != first.config.num_frames:
            raise ValueError(f"{name}: takes clips of {m.config.num_frames} frames, {first_name} of "
                             f"{first.config.num_frames}; export both to one length with `dfer weights export --frames`")
        if getattr(m, "sampling", "uniform") != getattr(first, "sampling", "uniform"):
            raise ValueError(f"{name}: samples frames {m.sampling}, {first_name} {first.sampling}")
        a, b = m.preprocessing.to_dict(), first.preprocessing.to_dict()
        for key in shared:
            if a.get(key) != b.get(key):
                raise ValueError(f"{name}: its preprocessing {key} {a.get(key)} differs from {first_name}'s "
                                 f"{b.get(key)}; an ensemble needs the same face crops for all members")
    largest = max(models, key=lambda m: m.config.input_size)
    ensemble = Ensemble(list(models))
    ensemble.classes = list(first.classes)
    ensemble.preprocessing = Preprocessing.from_dict(largest.preprocessing.to_dict())
    ensemble.sampling = getattr(first, "sampling", "uniform")
    provenance = dict(first.provenance)
    provenance["members"] = [
        {"file": Path(getattr(m, "checkpoint_path", name)).name,
         "sha256": file_sha256(m.checkpoint_path) if getattr(m, "checkpoint_path", None) else None,
         "input_size": int(m.config.input_size), "provenance": dict(m.provenance)}
        for name, m in zip(names, models)]
    ensemble.provenance = provenance
    return ensemble.eval()


def member_model(ensemble: Ensemble, index: int) -> nn.Module:
    """Member ``index`` (0-based) of a loaded ensemble as a model of its own, ready to save:
    the ensemble's classes, sampling and face crop at the member's input size, the member's
    own provenance, and the ensemble's ``logit_bias`` (its prior shift) carried into the
    member's classifier bias. Raises IndexError for a member that does not exist."""
    from dfer_cli.preprocess import Preprocessing

    if not 0 <= index < len(ensemble.members):
        raise IndexError(f"member {index + 1} of an ensemble of {len(ensemble.members)}")
    member = copy.deepcopy(ensemble.members[index])  # the ensemble itself stays as it was
    with torch.no_grad():
        member.head.bias += ensemble.logit_bias.to(member.head.bias)
    size = int(member.config.input_size)
    pre = ensemble.preprocessing.to_dict()
    pre["input_size"] = size
    if pre.get("detail_size") and pre["detail_size"] > size:
        pre["detail_size"] = None
    member.classes = list(ensemble.classes)
    member.preprocessing = Preprocessing.from_dict(pre)
    member.sampling = getattr(ensemble, "sampling", "uniform")
    records = (getattr(ensemble, "provenance", None) or {}).get("members") or []
    member.provenance = dict(records[index].get("provenance") or {}) if index < len(records) else {}
    member.checkpoint_path = getattr(ensemble, "checkpoint_path", None)
    return member.eval()

"""Teachers for knowledge distillation (``dfer train --teacher CKPT --distill W``).

A teacher is any dfer checkpoint with the same classes, in the same order, as the model
being trained, and the same input normalisation (grey or colour, mean and std, alignment
template): it is shown the very batch the student is shown, after augmentation (flip, zoom,
erasing, cutmix...), so the soft target matches what the student sees ("consistent
teaching"). A teacher with another input size gets the batch resized to its own size
(bilinear, antialiased). A still model (1 frame) teaches stills. A video model teaches
clips of its own length and frame sampling, and stills too: a still is repeated to the
teacher's clip length, as dfer's datasets repeat it for a video model.

Several teachers are an ensemble: the soft target is the mean of their probabilities
(``losses.teacher_probabilities``). The teachers are frozen: in eval mode, under
``torch.no_grad``, never seen by the optimizer. Their raw logits are used: a checkpoint
exported with ``dfer weights export --prior-shift ALPHA`` carries that shift in its
classifier bias, so distil from training checkpoints (``runs/NAME/last.safetensors``) or
remove the shift first (``--prior-shift -ALPHA``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

# preprocessing fields that decide what a normalised input tensor means
_SAME_INPUT = ("grayscale", "mean", "std", "template")


class Teachers:
    """Frozen teacher models loaded from dfer checkpoints (see the module docstring).

    paths: checkpoint paths or weights names. classes: the student's class names, in its
    logit order. preprocessing: the student's Preprocessing; num_frames and sampling: the
    student's clips. recipe: the student's TrainConfig as a dict (optional), to warn about
    teachers trained on another split or with another logit adjustment (``warnings``).
    Raises ValueError (one line, naming the teacher file and the fix) for a teacher that
    cannot teach this student.
    """

    def __init__(self, paths, classes, preprocessing, num_frames: int, device="cpu", sampling: str = "uniform",
                 recipe: dict | None = None) -> None:
        from dfer_cli.checkpoint import CheckpointError, load_model
        from dfer_cli.weights import file_sha256

        self.models, self.records, self.warnings = [], [], []
        student = preprocessing.to_dict()
        for path in paths:
            try:
                model = load_model(path, device=device, for_inference=True)
            except (CheckpointError, FileNotFoundError) as e:
                raise ValueError(f"--teacher: {e}") from None
            name = model.checkpoint_path
            if list(model.classes) != list(classes):
                raise ValueError(f"--teacher {name}: its classes ({', '.join(model.classes)}) are not the student's "
                                 f"({', '.join(classes)}) in the same order; distil from a model of this dataset")
            theirs = model.preprocessing.to_dict()
            for key in _SAME_INPUT:
                if not _same(theirs.get(key), student.get(key)):
                    how = {"grayscale": " (--grayscale/--color)", "template": " (--template)"}.get(key, "")
                    raise ValueError(f"--teacher {name}: its preprocessing {key} is {theirs.get(key)!r}, the "
                                     f"student's {student.get(key)!r}; train the student with the teacher's{how}")
            frames = int(model.preprocessing.num_frames)
            if num_frames > 1 and (frames != num_frames or model.sampling != sampling):
                raise ValueError(f"--teacher {name}: it takes clips of {frames} frames sampled {model.sampling}, "
                                 f"the student {num_frames} sampled {sampling}; give a teacher of the student's "
                                 f"clips (`dfer weights export {name} OUT.safetensors --frames {num_frames}`)")
            self.warnings += _recipe_warnings(name, model.provenance.get("recipe") or {}, recipe or {})
            model.requires_grad_(False)
            self.models.append(model.eval())
            self.records.append({"file": str(name), "sha256": file_sha256(name),
                                 "input_size": int(model.config.input_size)})

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Clips (B, T, 3, S, S) as the student sees them -> each teacher's logits (B, C)."""
        out = []
        for model in self.models:
            size = model.config.input_size
            clips = x
            if clips.shape[-1] != size or clips.shape[-2] != size:
                B, T = clips.shape[:2]
                resized = F.interpolate(clips.flatten(0, 1).float(), size=(size, size), mode="bilinear",
                                        align_corners=False, antialias=True)      # (B*T, 3, s, s)
                clips = resized.reshape(B, T, *resized.shape[1:]).to(x.dtype)     # (B, T, 3, s, s)
            frames = int(model.preprocessing.num_frames)
            if clips.shape[1] == 1 and frames > 1:  # a still, shown to a video model as its datasets do
                clips = clips.expand(-1, frames, -1, -1, -1)                      # (B, frames, 3, s, s)
            out.append(model(clips).float())                                      # (B, C)
        return out

    def probabilities(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The soft target (B, C): mean of the teachers' softmax(logits / temperature)."""
        from dfer_cli.train.losses import teacher_probabilities

        return teacher_probabilities(self.logits(x), temperature)


def _recipe_warnings(name: str, teacher: dict, student: dict) -> list[str]:
    """Warnings (not errors: it may be intended) about a teacher trained in a way that
    biases this run: on the images the student holds out for selection, or with another
    logit adjustment (then its raw logits and the student's estimate different priors)."""
    if not teacher or not student:
        return []
    out = []
    def split(r):
        seed = r.get("holdout_seed")
        return (r.get("data_root"), r.get("split"), r.get("holdout") or 0.0,
                r.get("seed") if seed is None else seed)
    if student.get("holdout") and split(teacher) != split(student):
        out.append(f"teacher {name} was not trained with this run's --holdout split (data root, fraction and "
                   "seed differ): it may have learnt the images this run selects on, so held-out scores "
                   "flatter the student")
    if float(teacher.get("logit_adjust") or 0.0) != float(student.get("logit_adjust") or 0.0):
        out.append(f"teacher {name} was trained with --logit-adjust {teacher.get('logit_adjust') or 0:g}, this "
                   f"run {student.get('logit_adjust') or 0:g}: its raw probabilities assume another class prior")
    return out


def _same(a, b) -> bool:
    """Equal, numbers to 1e-6 (templates and mean/std go through JSON and arithmetic)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-6
    return a == b


def describe_teachers(records: list[dict]) -> str:
    """One log line about the teachers of a run."""
    parts = [f"{Path(r['file']).name} ({r['input_size']} px, sha256 {r['sha256'][:12]})" for r in records]
    return f"distilling from {len(records)} teacher{'s' if len(records) != 1 else ''}: " + ", ".join(parts)

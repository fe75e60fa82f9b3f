"""Teachers for knowledge distillation (``dfer train --teacher CKPT --distill W``).

A teacher is any dfer checkpoint with the same classes, in the same order, as the model
being trained, and the same input normalisation (grey or colour, mean and std, alignment
template): it is shown the very batch the student is shown, after augmentation (flip, zoom,
erasing, cutmix...), so the soft target matches what the student sees ("consistent
teaching"). A teacher with another input size gets the batch resized to its own size
(bilinear, antialiased); a still model (1 frame) teaches stills, a video model clips of at
most its frame count.

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
    logit order. preprocessing: the student's Preprocessing. Raises ValueError (one line,
    naming the teacher file and the fix) for a teacher that cannot teach this student.
    """

    def __init__(self, paths, classes, preprocessing, num_frames: int, device="cpu") -> None:
        from dfer_cli.checkpoint import CheckpointError, load_model
        from dfer_cli.weights import file_sha256

        self.models, self.records = [], []
        student = preprocessing.to_dict()
        for path in paths:
            try:
                model = load_model(path, device=device)
            except (CheckpointError, FileNotFoundError) as e:
                raise ValueError(f"--teacher: {e}") from None
            name = model.checkpoint_path
            if list(model.classes) != list(classes):
                raise ValueError(f"--teacher {name}: its classes ({', '.join(model.classes)}) are not the student's "
                                 f"({', '.join(classes)}) in the same order; distil from a model of this dataset")
            theirs = model.preprocessing.to_dict()
            for key in _SAME_INPUT:
                if not _same(theirs.get(key), student.get(key)):
                    flag = "--grayscale/--color" if key == "grayscale" else "--template" if key == "template" else key
                    raise ValueError(f"--teacher {name}: its preprocessing {key} is {theirs.get(key)!r}, the "
                                     f"student's {student.get(key)!r}; train the student with the teacher's "
                                     f"({flag})")
            if model.config.num_frames < num_frames:
                raise ValueError(f"--teacher {name}: it takes clips of at most {model.config.num_frames} frames, "
                                 f"the student {num_frames}; export it with --frames {num_frames}")
            model.requires_grad_(False)
            self.models.append(model.eval())
            self.records.append({"file": str(name), "sha256": file_sha256(name),
                                 "input_size": int(model.config.input_size)})

    def __len__(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Clips (B, T, 3, S, S) as the student sees them -> each teacher's logits (B, C)."""
        out = []
        for model in self.models:
            size = model.config.input_size
            clips = x
            if x.shape[-1] != size or x.shape[-2] != size:
                B, T = x.shape[:2]
                frames = F.interpolate(x.flatten(0, 1).float(), size=(size, size), mode="bilinear",
                                       align_corners=False, antialias=True)       # (B*T, 3, s, s)
                clips = frames.reshape(B, T, *frames.shape[1:]).to(x.dtype)       # (B, T, 3, s, s)
            out.append(model(clips).float())                                      # (B, C)
        return out

    def probabilities(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The soft target (B, C): mean of the teachers' softmax(logits / temperature)."""
        from dfer_cli.losses import teacher_probabilities

        return teacher_probabilities(self.logits(x), temperature)


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

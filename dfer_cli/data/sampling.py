"""Which frames of a clip a training or test sample uses (the ``--sampling`` schemes).

``uniform`` (dfer's default): the clip is cut into ``num_frames`` equal segments and one
frame is taken from each -- a random one in training, the one at ``shift`` (0.5: the centre)
at test time (:func:`dfer_cli.video.sampling.segment_indices`).

``segments8x2`` (Former-DFER's scheme, which STT and LOGO-Former train and test with): the
clip is cut into 8 equal segments and a run of 2 *consecutive* frames is taken from each,
8 x 2 = 16 frames. The run's start is random within its segment in training and at the
segment centre at test time. Taking pairs keeps a little frame-to-frame motion in every
segment, which one frame per segment loses.

Both are written with continuous segment boundaries, so every frame can be drawn and the
result only depends on the clip length: for a run of ``L`` frames there are ``n - L + 1``
possible starts, split into ``S`` segments of length ``seg = (n - L + 1) / S``; segment ``k``
starts its run at ``floor(k * seg + u * seg)`` with ``u`` uniform in [0, 1) (training) or
``u = shift`` (test). A clip shorter than ``S * L`` frames repeats frames, as the uniform
scheme does; a clip of one frame gives that frame 16 times.
"""
from __future__ import annotations

import numpy as np

SAMPLINGS = ("uniform", "segments8x2")
DEFAULT_SAMPLING = "uniform"
RUN_LENGTH = 2  # consecutive frames per segment in segments8x2


def check_sampling(sampling: str, num_frames: int | None = None) -> None:
    """Raise ValueError (one line, naming the fix) for an unknown scheme, or a clip length
    that ``segments8x2`` cannot make (it needs an even number of frames; 16 = 8 x 2)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"--sampling {sampling!r}: choose one of {', '.join(SAMPLINGS)}")
    if sampling == "segments8x2" and num_frames is not None and num_frames % RUN_LENGTH:
        raise ValueError(f"--sampling segments8x2 takes pairs of consecutive frames, so the clip length must be "
                         f"even (16 = 8 segments x 2); got {num_frames} frames: use --frames 16 or --sampling uniform")


def run_indices(num_available: int, segments: int, run: int, rng: np.random.Generator | None = None,
                shift: float = 0.5) -> np.ndarray:
    """Indices of ``segments * run`` frames: ``run`` consecutive frames from each of
    ``segments`` equal segments of the possible run starts (see the module docstring).
    ``rng`` given: a random start per segment (training); otherwise the start at ``shift``
    (0 <= shift < 1) of each segment."""
    if num_available < 1:
        raise ValueError("a clip needs at least one frame")
    if segments < 1 or run < 1:
        raise ValueError("segments and run must be >= 1")
    starts_available = max(1, num_available - run + 1)
    seg = starts_available / segments
    u = rng.random(segments) if rng is not None else np.full(segments, float(shift))
    starts = np.floor((np.arange(segments) + u) * seg).astype(int)
    starts = np.minimum(starts, starts_available - 1)
    idx = starts[:, None] + np.arange(run)[None, :]
    return np.minimum(idx, num_available - 1).reshape(-1)


def frame_indices(num_available: int, num_frames: int, sampling: str = DEFAULT_SAMPLING,
                  rng: np.random.Generator | None = None, shift: float = 0.5) -> np.ndarray:
    """Indices (into ``0 .. num_available - 1``) of the ``num_frames`` frames a clip uses
    under ``sampling``: random within each segment when ``rng`` is given (training), at
    ``shift`` of each segment otherwise (test; 0.5 = centre, other values for
    ``--test-clips`` > 1). ``segments8x2`` at other even lengths uses ``num_frames / 2``
    segments of 2 frames."""
    check_sampling(sampling, num_frames)
    if sampling == "segments8x2":
        return run_indices(num_available, num_frames // RUN_LENGTH, RUN_LENGTH, rng, shift)
    if rng is not None:
        from dfer_cli.video.sampling import segment_indices

        return np.asarray(segment_indices(num_available, num_frames, train=True, rng=rng), dtype=int)
    edges = np.linspace(0.0, num_available, num_frames + 1)
    pos = edges[:-1] + shift * (edges[1:] - edges[:-1])
    return np.clip(np.floor(pos).astype(int), 0, num_available - 1)

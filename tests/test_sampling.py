"""Frame sampling schemes (``--sampling uniform | segments8x2``): indices against hand-worked
expectations, the frames a ClipDataset really loads, and the scheme kept in checkpoints and
used by evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_data import _frames

from dfer_cli.data import ClipDataset
from dfer_cli.data.base import Sample
from dfer_cli.preprocess import Preprocessing
from dfer_cli.video.sampling import check_sampling, frame_indices


class _Fixed:
    """A stand-in generator whose every draw is `u` (to pin the 'random' offsets)."""

    def __init__(self, u: float):
        self.u = u

    def random(self, n):
        return np.full(n, self.u)


def test_segments8x2_test_indices_are_pairs_at_segment_centres():
    # 20 frames: 19 possible pair starts, 8 segments of 19/8 = 2.375 starts; the centre of
    # segment k is 2.375 k + 1.1875 -> starts 1, 3, 5, 8, 10, 13, 15, 17
    assert frame_indices(20, 16, "segments8x2").tolist() == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18]
    # 160 frames: 159 starts, segments of 19.875 -> starts 9, 29, 49, 69, 89, 109, 129, 149
    assert frame_indices(160, 16, "segments8x2").tolist() == [9, 10, 29, 30, 49, 50, 69, 70, 89, 90, 109, 110,
                                                              129, 130, 149, 150]
    # a second test clip (--test-clips 2) at a quarter of each segment: 2.375 k + 0.59375
    assert frame_indices(20, 16, "segments8x2", shift=0.25).tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13,
                                                                         14, 15, 17, 18]


def test_segments8x2_training_offsets_span_each_segment():
    # offsets 0: each segment's first start; offsets just below 1: its last start
    assert frame_indices(20, 16, "segments8x2", rng=_Fixed(0.0)).tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12,
                                                                              14, 15, 16, 17]
    assert frame_indices(20, 16, "segments8x2", rng=_Fixed(0.999)).tolist() == [2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 14,
                                                                                15, 16, 17, 18, 19]
    rng = np.random.default_rng(0)
    seen = [set() for _ in range(8)]
    for _ in range(300):
        idx = frame_indices(40, 16, "segments8x2", rng=rng).reshape(8, 2)
        assert (idx[:, 1] == idx[:, 0] + 1).all()  # two consecutive frames per segment
        for k, start in enumerate(idx[:, 0]):
            assert np.floor(k * 39 / 8) <= start < (k + 1) * 39 / 8  # inside segment k of the 39 starts
            seen[k].add(int(start))
    assert all(len(s) >= 4 for s in seen)  # random within the segment, not one fixed start


def test_short_clips_repeat_frames_and_uniform_is_unchanged():
    # 5 frames: 4 starts in 8 segments of 0.5 -> centres 0.25 + 0.5 k -> starts 0,0,1,1,2,2,3,3
    assert frame_indices(5, 16, "segments8x2").tolist() == [0, 1, 0, 1, 1, 2, 1, 2, 2, 3, 2, 3, 3, 4, 3, 4]
    assert frame_indices(1, 16, "segments8x2").tolist() == [0] * 16
    # uniform: one frame at the centre of each of 16 segments of 1.25 frames
    assert frame_indices(20, 16, "uniform").tolist() == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19]


def test_clip_dataset_loads_the_sampled_frames(tmp_path):
    _frames(tmp_path / "clip", 20, size=8)  # frame i has brightness 10 * i
    pre = Preprocessing(input_size=8, num_frames=16, mean=(0, 0, 0), std=(1, 1, 1))
    sample = [Sample(str(tmp_path / "clip"), 0, "frames")]
    x, _ = ClipDataset(sample, pre, train=False, sampling="segments8x2")[0]
    assert (x[:, 0, 4, 4] * 255 / 10).round().int().tolist() == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16,
                                                                  17, 18]
    xt, _ = ClipDataset(sample, pre, train=True, sampling="segments8x2", seed=1)[0]
    idx = (xt[:, 0, 4, 4] * 255 / 10).round().int().view(8, 2)
    assert (idx[:, 1] == idx[:, 0] + 1).all()


def test_unusable_sampling_is_one_line_naming_the_fix():
    with pytest.raises(ValueError, match="choose one of uniform, segments8x2"):
        check_sampling("pairs")
    with pytest.raises(ValueError, match="use --frames 16 or --sampling uniform"):
        check_sampling("segments8x2", 15)


def _tiny_checkpoint(path, sampling):
    from dfer_cli.checkpoint import save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model

    torch.manual_seed(0)
    model = create_model("logo_former", dim=32, depth=1, heads=2, num_frames=16, input_size=16)
    save_checkpoint(path, model, classes=list(CLASSES), sampling=sampling,
                    preprocessing=Preprocessing(input_size=16, num_frames=16, grayscale=True))
    return path


def test_checkpoint_keeps_its_sampling_and_older_files_mean_uniform(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dfer_cli.checkpoint import CheckpointError, load_model, read_metadata
    from dfer_cli.models.transfer import with_num_frames

    ck = _tiny_checkpoint(tmp_path / "seg.safetensors", "segments8x2")
    assert read_metadata(ck)["sampling"] == "segments8x2"
    model = load_model(str(ck))
    assert model.sampling == "segments8x2" and with_num_frames(model, 8).sampling == "segments8x2"

    def rewrite(meta_change, name):
        with safe_open(str(ck), framework="pt") as f:
            meta = json.loads(f.metadata()["dfer"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta_change(meta)
        save_file(tensors, str(tmp_path / name), metadata={"dfer": json.dumps(meta)})
        return tmp_path / name

    old = rewrite(lambda m: m.pop("sampling"), "old.safetensors")  # written before the key existed
    assert load_model(str(old)).sampling == "uniform"
    bad = rewrite(lambda m: m.update(sampling="every-third"), "bad.safetensors")
    with pytest.raises(CheckpointError, match="frame sampling 'every-third' is unknown"):
        read_metadata(bad)


def test_evaluation_samples_frames_as_the_checkpoint_was_trained(tmp_path, monkeypatch):
    from test_data import make_dfew

    import dfer_cli.data as data
    from dfer_cli.evaluation.run import evaluate_checkpoint

    root = make_dfew(tmp_path / "DFEW")
    used = []
    real_init = data.ClipDataset.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        used.append(self.sampling)

    monkeypatch.setattr(data.ClipDataset, "__init__", spy)
    for sampling in ("segments8x2", "uniform"):
        ck = _tiny_checkpoint(tmp_path / f"{sampling}.safetensors", sampling)
        scores, _ = evaluate_checkpoint(str(ck), "dfew", str(root), "test", fold=1, batch_size=2)
        assert scores.count == 2
    assert used == ["segments8x2", "uniform"]

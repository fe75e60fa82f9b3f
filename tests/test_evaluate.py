"""Evaluation: checkpoint scoring with its own preprocessing and class order, multi-clip
averaging, the DFEW 5-fold table, the confusion-matrix plot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data import make_dfew

from dfer_cli.checkpoint import load_model, save_checkpoint
from dfer_cli.data import ClipDataset, scan
from dfer_cli.evaluation.plots import plot_confusion
from dfer_cli.evaluation.run import (
    FoldResult,
    FoldSummary,
    evaluate_checkpoint,
    evaluate_folds,
    format_pm,
    predict_dataset,
    remap_to_classes,
    score,
)
from dfer_cli.labels import CLASSES
from dfer_cli.metrics import Scores
from dfer_cli.models import create_model
from dfer_cli.preprocess import Preprocessing

TINY = dict(dim=32, depth=1, heads=2, num_frames=4, input_size=16)


def _checkpoint(path, seed: int, classes=CLASSES):
    torch.manual_seed(seed)
    model = create_model("logo_former", **TINY)
    save_checkpoint(path, model, classes=list(classes),
                    preprocessing=Preprocessing(input_size=16, num_frames=4, grayscale=True))
    return path


def test_evaluate_checkpoint_matches_direct_forward(tmp_path):
    root = make_dfew(tmp_path / "DFEW")
    ck = _checkpoint(tmp_path / "m.safetensors", 0)
    scores, report = evaluate_checkpoint(str(ck), "dfew", str(root), "train", fold=2, batch_size=3)
    # the same clips through the model one by one, with the checkpoint's preprocessing
    model = load_model(str(ck))
    samples, _ = scan("dfew", root, "train", fold=2)
    ds = ClipDataset(samples, model.preprocessing, train=False)
    with torch.no_grad():
        pred = [int(model(ds[i][0][None]).argmax()) for i in range(len(ds))]
    expect = np.zeros((7, 7), int)
    for s, p in zip(samples, pred):
        expect[s.label, p] += 1
    assert scores.confusion.tolist() == expect.tolist()
    assert scores.count == len(samples) == 7
    assert report.counts() == {"missing clip frames": 1}


def test_multi_clip_average_is_mean_of_softmax(tmp_path):
    root = make_dfew(tmp_path / "DFEW")
    model = load_model(str(_checkpoint(tmp_path / "m.safetensors", 1)))
    samples, _ = scan("dfew", root, "train", fold=1)
    one = ClipDataset(samples, model.preprocessing, train=False, test_clips=1)
    two = ClipDataset(samples, model.preprocessing, train=False, test_clips=2)
    p2, y = predict_dataset(model, two, batch_size=4)
    with torch.no_grad():
        x = two[0][0]  # (2, T, 3, S, S)
        manual = model(x).softmax(-1).mean(0).numpy()
    assert np.allclose(p2[0], manual, atol=1e-5)
    p1, _ = predict_dataset(model, one, batch_size=4)
    assert p1.shape == p2.shape == (len(samples), 7) and not np.allclose(p1, p2)


def test_remap_to_checkpoint_class_order():
    from dfer_cli.data.base import Sample

    samples = [Sample("a", CLASSES.index("happy"), "image"), Sample("b", CLASSES.index("fear"), "image"),
               Sample("c", CLASSES.index("sad"), "image")]
    kept, dropped = remap_to_classes(samples, ["fear", "happy"])
    assert [(s.path, s.label) for s in kept] == [("a", 1), ("b", 0)]
    assert [s.path for s in dropped] == ["c"]


def test_five_fold_table(tmp_path):
    root = make_dfew(tmp_path / "DFEW")
    run = tmp_path / "run"
    for k in range(1, 6):
        _checkpoint(run / f"fold{k}" / "best.safetensors", k)
    summary = evaluate_folds(str(run), str(root), batch_size=4)
    assert [f.fold for f in summary.folds] == [1, 2, 3, 4, 5]
    assert [f.scores.count for f in summary.folds] == [2, 2, 2, 1, 2]  # clip 9 (fold 4) is missing
    uars = [f.scores.uar for f in summary.folds]
    assert summary.stat("uar") == pytest.approx((np.mean(uars), np.std(uars, ddof=1)))
    d = summary.to_dict()
    assert d["mean"]["war"] == pytest.approx(np.mean([f.scores.war for f in summary.folds]))
    (run / "fold5" / "best.safetensors").unlink()
    with pytest.raises(ValueError, match="fold5/best.safetensors"):
        evaluate_folds(str(run), str(root))


def test_plot_confusion_png(tmp_path):
    cm = np.array([[5, 1], [2, 3]])
    out = plot_confusion(Scores(["a", "b"], cm), str(tmp_path / "cm.png"))
    data = open(out, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_score_from_probabilities():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    s = score(probs, np.array([0, 1, 1]), ["a", "b"])
    assert s.confusion.tolist() == [[1, 0], [1, 1]] and s.war == pytest.approx(2 / 3)


def test_flip_tta_averages_the_mirrored_clip():
    import torch

    from dfer_cli.models.inference import clip_probs

    class LeftRight(torch.nn.Module):
        """Logits from the brightness of the left and right halves: mirror-sensitive."""

        def forward(self, x):                                   # (B, T, 3, S, S)
            s = x.shape[-1] // 2
            return torch.stack([x[..., :s].mean((1, 2, 3, 4)), x[..., s:].mean((1, 2, 3, 4))], -1)

    x = torch.zeros(1, 2, 3, 4, 4)
    x[..., :2] = 3.0                                            # bright left half
    model = LeftRight()
    plain = clip_probs(model, x)
    mirrored = clip_probs(model, x.flip(-1))
    assert plain[0, 0] > 0.9 and mirrored[0, 1] > 0.9
    assert torch.allclose(clip_probs(model, x, "flip"), (plain + mirrored) / 2)
    assert torch.allclose(clip_probs(model, x, "flip"), torch.tensor([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="tta 'rotate'"):
        clip_probs(model, x, "rotate")


def test_a_still_repeated_in_time_runs_the_trunk_once_with_the_same_logits():
    from dfer_cli.models.inference import clip_logits

    torch.manual_seed(0)
    model = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=4).eval()
    calls = []
    trunk = model.frame_features
    model.frame_features = lambda frames: calls.append(len(frames)) or trunk(frames)
    stills = torch.randn(3, 1, 3, 32, 32).expand(3, 4, 3, 32, 32)   # each still 4 times, as datasets feed it
    with torch.inference_mode():
        want = model.forward_head(model.forward_tokens(trunk(stills.flatten(0, 1)).reshape(3, 4, 256, 2, 2)))
        got = clip_logits(model, stills)
        assert calls == [3]                                            # 3 stills, not 12 frames
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # a clip whose frames differ goes through the whole model
        video = stills.clone()
        video[1, 2] += 0.5
        calls.clear()
        torch.testing.assert_close(clip_logits(model, video), model(video))
        assert calls == [12, 12]
    # training or autograd: always the whole model
    model.train()
    calls.clear()
    clip_logits(model, stills)
    assert calls == [12]


def test_fold_std_is_the_sample_std():
    # 5 folds, 2 classes of 10 clips, k right in each class: UAR = WAR = k / 10
    def fold(i, k):
        return FoldResult(i, f"fold{i}", Scores(["a", "b"], np.array([[k, 10 - k], [10 - k, k]])))

    summary = FoldSummary([fold(i, k) for i, k in enumerate([5, 6, 7, 4, 8], 1)])
    # by hand: mean 0.6; squared deviations .01 + 0 + .01 + .04 + .04 = 0.10; / (5 - 1) = 0.025
    mean, std = summary.stat("uar")
    assert mean == pytest.approx(0.6, rel=1e-12)
    assert std == pytest.approx(0.025 ** 0.5, rel=1e-12)              # 0.1581, not sqrt(0.10 / 5) = 0.1414
    assert summary.stat("war") == pytest.approx((0.6, 0.025 ** 0.5), rel=1e-12)
    assert format_pm(mean, std) == "60.00 ± 15.81"
    d = summary.to_dict()
    assert d["std"]["uar"] == pytest.approx(0.025 ** 0.5) and d["std_ddof"] == 1
    # one fold: no spread to estimate
    one = FoldSummary(summary.folds[:1])
    assert np.isnan(one.stat("uar")[1]) and one.to_dict()["std"]["uar"] is None
    assert format_pm(*one.stat("uar")) == "50.00"

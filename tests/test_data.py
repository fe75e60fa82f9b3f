"""Dataset adapters and clip transforms, on fixture datasets built inside the tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from synth import make_video

from dfer_cli.data import ClipDataset, scan
from dfer_cli.data.base import Sample
from dfer_cli.data.transforms import Augment, ClipTransform, crop_matrix, motion_matrices, warp
from dfer_cli.labels import CLASSES
from dfer_cli.preprocess import Preprocessing, frames_to_tensor


def _still(path, value: int, size: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size, size), value, np.uint8)
    img[size // 4: size // 2, size // 4: 3 * size // 4] = 255 - value  # some structure
    cv2.imwrite(str(path), img)


def _frames(folder, n: int, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):  # frame i has brightness 10 * i, so sampled indices are readable
        cv2.imwrite(str(folder / f"img_{i + 1}.png"), np.full((size, size, 3), 10 * i, np.uint8))


@pytest.fixture()
def folder_root(tmp_path):
    root = tmp_path / "data"
    # FER2013-style stills, class names in several spellings
    for i in range(3):
        _still(root / "train" / "Happiness" / f"h{i}.jpg", 40)
        _still(root / "train" / "angry" / f"a{i}.jpg", 200)
    _frames(root / "train" / "sad" / "clip_a", 20)
    (root / "train" / "surprise").mkdir(parents=True)
    make_video(root / "train" / "surprise" / "v1.mp4", frames=12, fps=10, size=(48, 48))
    (root / "train" / "sad" / "empty_clip").mkdir()
    (root / "train" / "sad" / "notes.txt").write_text("not a clip")
    _still(root / "train" / "contempt" / "c0.jpg", 90)
    _still(root / "val" / "happy" / "h.jpg", 40)
    return root


def test_folder_scan_counts_labels_and_report(folder_root):
    samples, report = scan("folder", folder_root, "train")
    by_label = {}
    for s in samples:
        by_label.setdefault(CLASSES[s.label], []).append(s.kind)
    assert by_label == {"happy": ["image"] * 3, "angry": ["image"] * 3, "sad": ["frames"], "surprise": ["video"]}
    assert report.counts() == {"empty frame folder": 1, "unsupported file type": 1, "unknown class folder": 1}
    assert "contempt" in report.summary() and "empty_clip" in report.summary()


def test_folder_scan_missing_split_names_alternatives(folder_root):
    with pytest.raises(ValueError, match="test.*found: train, val"):
        scan("folder", folder_root, "test")
    with pytest.raises(ValueError, match="does not exist"):
        scan("folder", folder_root / "nope", "train")


def test_limit_is_seeded_subset(folder_root):
    a, _ = scan("folder", folder_root, "train", limit=4, seed=1)
    b, _ = scan("folder", folder_root, "train", limit=4, seed=1)
    assert len(a) == 4 and [s.path for s in a] == [s.path for s in b]


def test_still_becomes_repeated_clip_in_eval(folder_root):
    pre = Preprocessing(input_size=24, num_frames=5, grayscale=True)
    ds = ClipDataset([Sample(str(folder_root / "val" / "happy" / "h.jpg"), 0, "image")], pre, train=False)
    x, y = ds[0]
    assert x.shape == (5, 3, 24, 24) and y == 0
    assert torch.equal(x[0], x[4])
    # eval = plain resize of the whole image, normalised like prediction does
    img = cv2.imread(str(folder_root / "val" / "happy" / "h.jpg"), cv2.IMREAD_GRAYSCALE)
    ref = cv2.resize(img, (24, 24), interpolation=cv2.INTER_LINEAR)
    expect = frames_to_tensor(np.repeat(ref[None, :, :, None], 3, axis=-1), pre)[0]
    assert torch.allclose(x[0], expect, atol=0.05)


def test_still_with_motion_moves_smoothly_and_is_seeded(folder_root):
    pre = Preprocessing(input_size=32, num_frames=8, grayscale=True)
    samples, _ = scan("folder", folder_root, "train")
    stills = [s for s in samples if s.kind == "image"]
    ds = ClipDataset(stills, pre, train=True, augment=Augment(motion=True, motion_shift=0.1), seed=3)
    x1, _ = ds[0]
    x2, _ = ds[0]
    assert torch.equal(x1, x2)  # same (seed, epoch, index) -> same clip
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x1)  # another epoch draws another augmentation
    diffs = [(x1[t + 1] - x1[t]).abs().mean().item() for t in range(7)]
    assert all(d > 0 for d in diffs)  # every frame moves
    assert (x1[7] - x1[0]).abs().mean() > max(diffs)  # drift accumulates along the clip
    still = ClipDataset(stills, pre, train=True, augment=Augment(motion=False), seed=3)[0][0]
    assert torch.equal(still[0], still[7])  # without motion: crop/flip shared by all frames


def test_frame_folder_segment_sampling(folder_root):
    pre = Preprocessing(input_size=16, num_frames=4, grayscale=False, mean=(0, 0, 0), std=(1, 1, 1))
    sample = Sample(str(folder_root / "train" / "sad" / "clip_a"), 1, "frames")
    x, _ = ClipDataset([sample], pre, train=False)[0]
    # 20 frames, 4 segments of 5: centres are frames 2, 7, 12, 17 (brightness 10 * i)
    values = (x[:, 0, 8, 8] * 255).round().tolist()
    assert values == [20.0, 70.0, 120.0, 170.0]
    multi = ClipDataset([sample], pre, train=False, test_clips=2)[0][0]
    assert multi.shape == (2, 4, 3, 16, 16)
    assert (multi[0, :, 0, 8, 8] * 255).round().tolist() == [10.0, 60.0, 110.0, 160.0]
    xt, _ = ClipDataset([sample], pre, train=True, augment=Augment(crop_scale=(1, 1), crop_ratio=(1, 1), flip=0))[0]
    got = (xt[:, 0, 8, 8] * 255).round().tolist()
    assert all(10 * 5 * k <= v <= 10 * (5 * k + 4) for k, v in enumerate(got))  # one frame per segment


def test_video_clip_loads(folder_root):
    pre = Preprocessing(input_size=16, num_frames=4)
    x, y = ClipDataset([Sample(str(folder_root / "train" / "surprise" / "v1.mp4"), 4, "video")], pre, train=False)[0]
    assert x.shape == (4, 3, 16, 16) and y == 4


def test_bad_image_raises_with_path(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="x.jpg"):
        ClipDataset([Sample(str(bad), 0, "image")], Preprocessing(), train=False)


def test_crop_flip_matrix_geometry():
    # a crop box mapped onto the output: the box's left edge goes to 0, right edge to size;
    # with flip the left edge goes to size
    m = crop_matrix(10, 20, 40, 40, 80)
    assert np.allclose(m @ [10, 20, 1], [0, 0, 1]) and np.allclose(m @ [50, 60, 1], [80, 80, 1])
    mf = crop_matrix(10, 20, 40, 40, 80, flip=True)
    assert np.allclose(mf @ [10, 20, 1], [80, 0, 1])
    # warping through an identity-sized crop returns the image; flip mirrors it exactly
    img = np.random.default_rng(0).integers(0, 255, (12, 12), dtype=np.uint8)
    assert np.array_equal(warp(img, crop_matrix(0, 0, 12, 12, 12), 12), img)
    assert np.array_equal(warp(img, crop_matrix(0, 0, 12, 12, 12, flip=True), 12), img[:, ::-1])


def test_motion_matrices_start_and_end_poses_are_bounded():
    aug = Augment(motion_shift=0.05, motion_rotate=5, motion_scale=0.05)
    mats = motion_matrices(np.random.default_rng(0), 16, 100, aug)
    for m in mats:
        centre = m @ [50, 50, 1]
        assert np.abs(centre[:2] - 50).max() <= 5 + 1e-9  # translation bounded by shift * size
        s = np.sqrt(abs(np.linalg.det(m[:2, :2])))
        assert 0.95 - 1e-9 <= s <= 1.05 + 1e-9


def test_transform_gray_input_color_model():
    pre = Preprocessing(input_size=8, num_frames=2, grayscale=False)
    x = ClipTransform(pre, train=False)([np.full((8, 8), 100, np.uint8)])
    assert x.shape == (2, 3, 8, 8)
    expect = frames_to_tensor(np.full((2, 8, 8, 3), 100, np.uint8), pre)
    assert torch.allclose(x, expect)


# ---- official layouts -------------------------------------------------------------------

def make_dfew(root, n_clips: int = 10, short_ids=(3,), missing_ids=(9,)):
    """DFEW: Clip/clip_224x224/<5-digit id>/ frames, the 16-frame variant for `short_ids`
    (whose full folder has only 5 frames), 5 folds of CSVs (video_name,label)."""
    for vid in range(1, n_clips + 1):
        name = f"{vid:05d}"
        if vid in missing_ids:
            continue
        _frames(root / "Clip" / "clip_224x224" / name, 5 if vid in short_ids else 20, size=8)
        _frames(root / "Clip" / "clip_224x224_16f" / name, 16, size=8)
    for fold in range(1, 6):
        test = [v for v in range(1, n_clips + 1) if v % 5 == fold % 5]
        train = [v for v in range(1, n_clips + 1) if v not in test]
        for split, ids in (("train", train), ("test", test)):
            d = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
            d.mkdir(parents=True, exist_ok=True)
            rows = ["video_name,label"] + [f"{v},{(v - 1) % 7 + 1}" for v in ids]
            if split == "train" and fold == 1:
                rows += ["11,9", "broken-row"]
            (d / f"set_{fold}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_dfew_folds_labels_and_report(tmp_path):
    root = make_dfew(tmp_path / "DFEW")
    test1, rep = scan("dfew", root, "test", fold=1)
    assert [Path(s.path).name for s in test1] == ["00001", "00006"]
    assert [CLASSES[s.label] for s in test1] == ["happy", "disgust"]  # ids 1 -> happy, 6 -> disgust
    train1, rep = scan("dfew", root, "train", fold=1)
    assert len(train1) == 7  # 8 listed, clip 9 missing
    assert rep.counts() == {"missing clip frames": 1, "unknown label '9'": 1, "malformed CSV row": 1}
    # clip 3 has 5 frames in clip_224x224, so the 16-frame variant is used
    s3 = next(s for s in train1 if Path(s.path).name == "00003")
    assert "clip_224x224_16f" in s3.path
    all_test = sorted(Path(s.path).name for k in range(1, 6) for s in scan("dfew", root, "test", fold=k)[0])
    assert all_test == [f"{v:05d}" for v in range(1, 11) if v != 9]  # every clip tested once
    with pytest.raises(ValueError, match="--fold 1..5"):
        scan("dfew", root, "test")


def make_ferv39k(root):
    lines = []
    for scene, emo, clip in (("Action", "Happy", "0001"), ("Action", "Sad", "0002"),
                             ("Interview", "Fear", "0003"), ("Interview", "Angry", "0004")):
        _frames(root / "2_ClipsforFaceCrop" / scene / emo / clip, 6, size=8)
        lines.append(f"{scene}/{emo}/{clip} {emo}")
    (root / "2_ClipsforFaceCrop" / "Talkshow" / "Neutral" / "0005").mkdir(parents=True)  # empty
    setups = root / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    (setups / "train_All.csv").write_text("\n".join(lines[:3] + ["Talkshow/Neutral/0005 Neutral",
                                                                 "War/Happy/0099 Happy", "bad"]) + "\n")
    (setups / "test_All.csv").write_text(lines[3] + "\n")
    return root


def test_ferv39k_lists(tmp_path):
    root = make_ferv39k(tmp_path / "FERV39K")
    train, rep = scan("ferv39k", root, "train")
    assert [CLASSES[s.label] for s in train] == ["happy", "sad", "fear"]
    assert rep.counts() == {"empty clip": 1, "missing clip frames": 1, "malformed list row": 1}
    test, _ = scan("ferv39k", root, "val")  # no val split: val means test
    assert len(test) == 1 and CLASSES[test[0].label] == "angry"


def test_afew_prepared_tree_and_raw_videos(tmp_path):
    raw = tmp_path / "AFEW"
    (raw / "Train" / "Happy").mkdir(parents=True)
    make_video(raw / "Train" / "Happy" / "001.avi", frames=4, codec="mpeg4", size=(32, 32))
    with pytest.raises(ValueError, match="dfer prepare"):
        scan("afew", raw, "train")
    prepared = tmp_path / "AFEW_prepared"
    _frames(prepared / "Train" / "Happy" / "001", 4, size=8)
    _frames(prepared / "Val" / "Surprise" / "002", 4, size=8)
    (prepared / "Val" / "Surprise" / "003").mkdir()
    train, _ = scan("afew", prepared, "train")
    assert [(Path(s.path).name, CLASSES[s.label]) for s in train] == [("001", "happy")]
    val, rep = scan("afew", prepared, "val")
    assert len(val) == 1 and list(rep.counts().values()) == [1]


@pytest.mark.parametrize("train_name,val_name", [("Train_AFEW", "Val_AFEW"), ("train_afew", "val_afew"),
                                                 ("Train", "Val"), ("train", "val")])
def test_afew_official_and_lowercase_split_folders(tmp_path, train_name, val_name):
    root = tmp_path / "AFEW_prepared"
    _frames(root / train_name / "Angry" / "001", 3, size=8)
    _frames(root / train_name / "Happy" / "002", 3, size=8)
    _frames(root / val_name / "Sad" / "003", 3, size=8)
    train, _ = scan("afew", root, "train")
    assert [(Path(s.path).parent.parent.name, CLASSES[s.label]) for s in train] == \
        [(train_name, "angry"), (train_name, "happy")]
    for split in ("val", "test"):  # test means val
        val, _ = scan("afew", root, split)
        assert [CLASSES[s.label] for s in val] == ["sad"]


def test_afew_raw_official_tree_points_to_prepare(tmp_path):
    raw = tmp_path / "AFEW"
    (raw / "Train_AFEW" / "Angry").mkdir(parents=True)
    make_video(raw / "Train_AFEW" / "Angry" / "001.avi", frames=4, codec="mpeg4", size=(32, 32))
    with pytest.raises(ValueError, match="dfer prepare"):
        scan("afew", raw, "train")


def test_afew_missing_or_ambiguous_split_folder_is_one_clear_line(tmp_path):
    root = tmp_path / "AFEW"
    _frames(root / "Clips" / "Angry" / "001", 3, size=8)
    with pytest.raises(ValueError) as e:
        scan("afew", root, "val")
    msg = str(e.value)
    assert "\n" not in msg and "Val_AFEW/ or Val/" in msg and "Clips/" in msg, msg
    _frames(root / "Train" / "Angry" / "001", 3, size=8)
    _frames(root / "Train_AFEW" / "Angry" / "001", 3, size=8)
    with pytest.raises(ValueError, match="ambiguous.*Train, Train_AFEW") as e:
        scan("afew", root, "train")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="use train or val"):
        scan("afew", root, "dev")

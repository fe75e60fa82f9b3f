"""The bundled default checkpoint: it is found, fed the way it was trained, and does its job
on the credited example clip."""
import hashlib
import re
from pathlib import Path

import pytest

import dfer_cli
from dfer_cli.labels import CLASSES
from dfer_cli.preprocess import FER2013_TEMPLATE
from dfer_cli.weights import DEFAULT_WEIGHTS, bundled_dir

ROOT = Path(__file__).resolve().parent.parent
FILE = bundled_dir() / f"{DEFAULT_WEIGHTS}.safetensors"


@pytest.fixture(scope="module")
def model():
    return dfer_cli.load_model(str(FILE))


def test_model_card_names_the_file_hash():
    card = (bundled_dir() / "README.md").read_text()
    digest = hashlib.sha256(FILE.read_bytes()).hexdigest()
    assert digest in card
    assert FILE.stat().st_size < 50e6


def test_preprocessing_is_what_it_was_trained_with(model):
    pre = model.preprocessing
    assert (pre.input_size, pre.num_frames, pre.grayscale) == (48, 16, True)
    assert pre.detail_size is None  # faces are aligned straight to FER2013's 48 px
    assert [c for p in pre.template for c in p] == pytest.approx([c for p in FER2013_TEMPLATE for c in p])
    assert list(model.classes) == list(CLASSES)
    assert model.provenance["data"]  # training provenance travels with the weights


def test_members_learned_from_the_crowd_and_the_temperature_was_fitted_on_held_out_train_images(model):
    members = model.provenance["members"]
    assert len(members) == 5
    for m in members:
        recipe = m["provenance"]["recipe"]
        assert recipe["votes"] and recipe["loss"] == "ce" and recipe["holdout"] == 0.1
        assert m["provenance"]["data"]["holdout_sha256"] == model.calibration["holdout_sha256"]
    cal = model.calibration
    assert cal["method"] == "temperature" and 0.3 < cal["temperature"] < 3.0
    assert cal["fitted_on"].startswith("holdout 0.1 of train (seed 0)")
    assert cal["mean_kl_after"] <= cal["mean_kl_before"]


def test_windows_are_local_in_space(model):
    # the default is an ensemble of a LOGO-Former (6x6 layer3 grid from a 48 px face with the
    # stride-1 stem; 2x2x2 windows cover 2x2 of its cells, so the "local" attention really is
    # local) and two plain CNNs (a ResNet-18 of width 32 through layer4, maps averaged)
    import torch

    from dfer_cli.models.ensemble import Ensemble

    assert isinstance(model, Ensemble)
    former, *cnns = model.members
    assert (former.model_name, former.config.input_size, former.config.stem, former.grid_hw) == (
        "logo_former", 48, "s1", (6, 6))
    grid = former.backbone(torch.zeros(1, 3, 48, 48)).shape[-2:]
    assert tuple(grid) == former.grid_hw
    assert former.config.window == (2, 2, 2) and former.window == (2, 2, 2)
    assert former.window[1] < grid[0] and former.window[2] < grid[1]
    for cnn in cnns:
        assert (cnn.model_name, cnn.config.input_size, cnn.config.stem) == ("trunk_pool", 48, "s1")
        assert (cnn.config.trunk_layers, cnn.config.trunk_width) == (4, 32)
        assert cnn.backbone(torch.zeros(1, 3, 48, 48)).shape == (1, 256, 3, 3)


def test_smile_example_reads_happy(model):
    res = dfer_cli.predict_video(model, ROOT / "examples" / "single_face_smile.mp4", window=1.0, stride=0.5)
    assert len(res.tracks) == 1 and all(c.status == "ok" for c in res.clips)
    assert res.clips[-1].label == "happy" and res.clips[-1].confidence > 0.5
    assert res.tracks[0].label == "happy"
    # 0-1 s: the man is neutral for the first third and starts to smile: clearly the least
    # happy clip, with neutral one of its two most likely labels; every later clip is happy
    # with p > 0.5
    happy = [c.probabilities["happy"] for c in res.clips]
    assert happy[0] == min(happy) and min(happy[1:]) > 0.5 and min(happy[1:]) - happy[0] > 0.15
    first = sorted(res.clips[0].probabilities, key=res.clips[0].probabilities.get, reverse=True)
    assert "neutral" in first[:2]


def test_readme_quotes_the_measured_val_scores():
    card = (bundled_dir() / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    war, uar = re.search(r"WAR \(accuracy\)\s+([\d.]+) %, UAR ([\d.]+) %", card).groups()
    assert f"WAR (accuracy) {war} %, UAR {uar} %" in " ".join(readme.split())
    acc = re.search(r"plurality accuracy \| \*\*([\d.]+) %\*\*", card).group(1)
    uar_v = re.search(r"plurality UAR \| \*\*([\d.]+) %\*\*", card).group(1)
    kl = re.search(r"mean KL\(votes ‖ model\) \| \*\*([\d.]+) nats\*\*", card).group(1)
    flat = " ".join(readme.split())
    assert f"plurality accuracy {acc} %, UAR {uar_v} %" in flat and f"mean KL(votes ‖ model) {float(kl):.3f}" in flat

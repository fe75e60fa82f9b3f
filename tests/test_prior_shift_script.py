"""scripts/prior_shift.py: held-out WAR/UAR per prior shift, for one model and for the
ensemble of several (mean of probabilities), checked against scores computed here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import make_dataset, still_config

from dfer_cli.checkpoint import load_model
from dfer_cli.metrics import Scores, confusion_matrix
from dfer_cli.train.loop import train

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prior_shift.py"


def run_script(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args), "--threads", "1"], env=env,
                          capture_output=True, text=True, timeout=300)


def tables(stdout: str) -> dict[str, dict[float, tuple[float, float]]]:
    """{table name: {alpha: (WAR, UAR)}} from the script's output."""
    out, name = {}, None
    for line in stdout.splitlines():
        parts = line.split()
        if line.startswith("alpha") or line.startswith("highest") or "held-out images" in line:
            continue
        if len(parts) == 3 and parts[0].replace(".", "").isdigit():
            out[name][float(parts[0])] = (float(parts[1]), float(parts[2]))
        else:
            name = line.strip()
            out[name] = {}
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("ps_data"))
    root = tmp_path_factory.mktemp("ps_runs")
    for seed in (0, 1):
        train(still_config(data, root / f"s{seed}", seed=seed, holdout_seed=0, epochs=2), progress=False)
    train(still_config(data, root / "other", seed=0, holdout_seed=5, epochs=1), progress=False)
    return root


def held_out_probs(path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from prior_shift import held_out
    finally:
        sys.path.pop(0)
    probs, labels, _, _ = held_out(load_model(path), "none", 64)
    return probs, labels


def scores(probs, labels):
    s = Scores(["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"],
               confusion_matrix(labels, probs.argmax(1), 7))
    return round(100 * s.war, 2), round(100 * s.uar, 2)


def test_each_model_and_their_ensemble_are_scored_on_the_shared_held_out_split(runs):
    a, b = runs / "s0" / "last.safetensors", runs / "s1" / "last.safetensors"
    p = run_script(a, b)
    assert p.returncode == 0, p.stderr
    t = tables(p.stdout)
    pa, labels = held_out_probs(a)
    pb, labels_b = held_out_probs(b)
    assert np.array_equal(labels, labels_b) and len(labels) == 15  # 20 % of 3 x 24, per class
    assert t[str(a)][0.0] == pytest.approx(scores(pa, labels), abs=0.006)
    assert t[str(b)][0.0] == pytest.approx(scores(pb, labels), abs=0.006)
    ensemble = t["ensemble of 2 (mean of probabilities)"]
    assert ensemble[0.0] == pytest.approx(scores((pa + pb) / 2, labels), abs=0.006)
    assert len(ensemble) == 11 and p.stdout.count("highest WAR + UAR: alpha") == 3


def test_models_that_held_out_other_images_are_refused(runs):
    p = run_script(runs / "s0" / "last.safetensors", runs / "other" / "last.safetensors")
    assert p.returncode != 0
    assert "held out other images" in p.stderr and "--holdout-seed" in p.stderr


def test_unseen_tables_score_only_held_out_images_without_a_training_twin(runs):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from prior_shift import split_of
    finally:
        sys.path.pop(0)
    from dfer_cli.data.duplicates import file_hashes, nearest_distances, unseen_mask

    a = runs / "s0" / "last.safetensors"
    _, kept, held = split_of(load_model(a))
    # the fixture's noise images are all different: a threshold between the nearest distances
    # found makes some held-out images "duplicates" and leaves the others unseen
    d = nearest_distances(file_hashes([s.path for s in held]), file_hashes([s.path for s in kept]))
    bits = int(np.median(d))
    mask = unseen_mask([s.path for s in held], [s.path for s in kept], bits)
    assert mask.tolist() == (d > bits).tolist() and 0 < mask.sum() < len(mask)
    p = run_script(a, "--unseen", "--duplicate-distance", bits)
    assert p.returncode == 0, p.stderr
    t = tables(p.stdout)
    name = f"{a}, unseen images only ({int(mask.sum())} of 15: no near-duplicate in its training images)"
    probs, labels = held_out_probs(a)
    assert t[name][0.0] == pytest.approx(scores(probs[mask], labels[mask]), abs=0.006)
    assert t[str(a)][0.0] == pytest.approx(scores(probs, labels), abs=0.006)

"""Learning from and scoring against raters' votes: the vote CSVs (FER+ and generic), soft
targets, the soft cross-entropy, the distribution metrics, the fitted temperature and its
round trip through checkpoints, and the CLI path train --votes -> weights calibrate -> eval
--votes --predictions."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dfer_cli.cli.main import app
from dfer_cli.data import ClipDataset, scan
from dfer_cli.data.votes import attach_votes, read_vote_tables, read_votes
from dfer_cli.labels import CLASSES
from dfer_cli.preprocess import Preprocessing

FERPLUS_HEADER = ["file", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                  "unknown", "NF", "match_distance", "status"]
C = len(CLASSES)
H, S, N = CLASSES.index("happy"), CLASSES.index("sad"), CLASSES.index("neutral")


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def ferplus_row(file, neutral=0, happiness=0, sadness=0, contempt=0, unknown=0, nf=0, status="ok"):
    if status != "ok":
        return [file] + [""] * 10 + ["602.6", status]
    return [file, neutral, happiness, 0, sadness, 0, 0, 0, contempt, unknown, nf, "83.1", status]


# ---- the vote CSVs ------------------------------------------------------------------------


def test_ferplus_rows_keep_the_seven_classes_and_leave_out_not_a_face_unknown_and_unmatched(tmp_path):
    p = write_csv(tmp_path / "v.csv", FERPLUS_HEADER, [
        ferplus_row("train/happy/a.jpg", neutral=2, happiness=6, contempt=1),   # sums to 9 as one FER+ row does
        ferplus_row("train/sad/b.jpg", sadness=4, nf=5, unknown=1),              # NF the most votes
        ferplus_row("train/sad/c.jpg", sadness=4, nf=3, unknown=3),              # NF present but not the most
        ferplus_row("train/sad/d.jpg", contempt=4, unknown=6),                    # nothing in our 7
        ferplus_row("train/neutral/e.jpg", status="unmatched"),                   # no votes at all
    ])
    t = read_votes(p)
    assert t.layout == "ferplus"
    want = np.zeros(C)
    want[H], want[N] = 6, 2                                   # contempt's vote is dropped
    np.testing.assert_array_equal(t.votes["train/happy/a.jpg"], want)
    assert t.votes["train/sad/c.jpg"][S] == 4 and t.votes["train/sad/c.jpg"].sum() == 4
    assert "not a face" in t.dropped["train/sad/b.jpg"]
    assert "contempt/unknown only" in t.dropped["train/sad/d.jpg"]
    assert t.dropped["train/neutral/e.jpg"] == "no votes (status unmatched)"
    root = tmp_path / "root"
    assert t.lookup(str(root / "train/happy/a.jpg"), str(root))[0] is not None
    assert t.lookup(str(root / "train/happy/zz.jpg"), str(root)) == (None, "no row in the vote CSV")


def test_generic_csv_reads_counts_or_probabilities_by_class_name_relative_to_the_split(tmp_path):
    header = ["file", "fear", "neutral", "happy", "sad", "angry", "surprise", "disgust", "annotator_note"]
    p = write_csv(tmp_path / "g.csv", header, [["happy/1.png", 0, 0.25, 0.75, 0, 0, 0, 0, "x"],
                                               ["sad/2.png", 1, 0, 0, 3, 0, 0, 0, ""]])
    t = read_votes(p)
    assert t.layout == "generic"
    root = tmp_path / "data"
    v, why = t.lookup(str(root / "train" / "happy" / "1.png"), str(root), str(root / "train"))
    assert why is None and v[H] == 0.75 and v[N] == 0.25 and v.sum() == 1.0
    assert t.lookup(str(root / "train" / "sad" / "2.png"), str(root), str(root / "train"))[0][CLASSES.index("fear")] == 1


@pytest.mark.parametrize("header,rows,message", [
    (["path", "happy"], [], "no 'file' column"),
    (["file", "happy", "sad"], [], "no column for neutral, angry, surprise, disgust, fear"),
    (["file", *CLASSES], [["a.png", -1, 0, 0, 0, 0, 0, 0]], "line 2: happy = '-1'; votes must be finite and >= 0"),
    (["file", *CLASSES], [["a.png", "many", 0, 0, 0, 0, 0, 0]], "line 2: happy = 'many' is not a number"),
])
def test_a_malformed_vote_csv_is_one_line_naming_the_file(tmp_path, header, rows, message):
    p = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError) as e:
        read_votes(p)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_a_later_vote_file_overrides_an_earlier_one(tmp_path):
    a = write_csv(tmp_path / "a.csv", ["file", *CLASSES], [["x.png", 1, 0, 0, 0, 0, 0, 0]])
    b = write_csv(tmp_path / "b.csv", ["file", *CLASSES], [["x.png", 0, 1, 0, 0, 0, 0, 0], ["y.png", 0, 0, 1, 0, 0, 0, 0]])
    t = read_vote_tables([a, b])
    assert t.votes["x.png"][S] == 1 and t.votes["x.png"][H] == 0 and "y.png" in t.votes


# ---- soft targets and the loss ------------------------------------------------------------


def _votes_dataset(tmp_path):
    from test_train import make_dataset

    root = make_dataset(tmp_path / "data", per_class=4, val_per_class=2)
    rows = []
    for f in sorted(root.glob("*/*/*.png")):
        rel = f.relative_to(root).as_posix()
        cls, i = f.parent.name, int(f.stem)
        if rel == "train/neutral/3.png":
            rows.append(ferplus_row(rel, nf=8, neutral=2))                          # not a face
            continue
        if rel == "train/sad/3.png":
            continue                                                                # no row at all
        major = {"happy": "happiness", "sad": "sadness", "neutral": "neutral"}[cls]
        votes = {"neutral": 0, "happiness": 0, "sadness": 0, major: 6 + i % 3}
        votes["neutral" if cls != "neutral" else "sadness"] += 2
        rows.append(ferplus_row(rel, contempt=1, **votes))
    return root, write_csv(tmp_path / "votes.csv", FERPLUS_HEADER, rows)


def test_targets_are_the_vote_shares_renormalised_over_the_seven_classes(tmp_path):
    root, votes = _votes_dataset(tmp_path)
    samples, report = scan("folder", str(root), "train")
    kept = attach_votes(samples, read_votes(votes), str(root), "train", report)
    assert len(kept) == len(samples) - 2
    reasons = report.counts()
    assert reasons == {"no usable votes (no row in the vote CSV)": 1,
                       "no usable votes (the raters call it not a face (NF holds the most votes))": 1}
    ds = ClipDataset(kept, Preprocessing(input_size=32, num_frames=1, grayscale=True), train=True)
    t = ds.targets()
    assert t.shape == (len(kept), C) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    s0 = kept[0]                             # happy/0.png: happiness 6, neutral 2, contempt 1 -> 6/8, 2/8
    assert Path(s0.path).name == "0.png" and CLASSES[s0.label] == "happy"
    np.testing.assert_allclose(t[0][[H, N]], [0.75, 0.25])
    np.testing.assert_allclose(ds[0][1], t[0])                # the DataLoader path gives the same target


def test_soft_cross_entropy_of_training_matches_a_hand_computation():
    from dfer_cli.train.config import TrainConfig
    from dfer_cli.train.setup import build_loss

    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5, 0.0, 0.0, 1.0]])
    shares = torch.tensor([[0.6, 0.0, 0.3, 0.0, 0.1, 0.0, 0.0]])
    z = [2.0, 0.0, -1.0, 0.5, 0.0, 0.0, 1.0]
    log_z = math.log(sum(math.exp(v) for v in z))
    want = -(0.6 * (2.0 - log_z) + 0.3 * (-1.0 - log_z) + 0.1 * (0.0 - log_z))
    loss = build_loss(TrainConfig(loss="ce", votes=["v.csv"]), None)
    assert float(loss(logits, shares)) == pytest.approx(want, rel=1e-6)
    smoothed = build_loss(TrainConfig(loss="ce", label_smoothing=0.1), None)
    target = [0.9 * s + 0.1 / 7 for s in [0.6, 0.0, 0.3, 0.0, 0.1, 0.0, 0.0]]
    want_ls = -sum(t * (v - log_z) for t, v in zip(target, z))
    assert float(smoothed(logits, shares)) == pytest.approx(want_ls, rel=1e-6)


def test_votes_refuse_the_compact_loss_with_one_line():
    from dfer_cli.train.config import TrainConfig

    with pytest.raises(ValueError, match="add --loss ce"):
        TrainConfig(data_root="x", loss="compact", votes=["v.csv"]).validate()


def test_cutmix_mixes_vote_shares_into_targets_that_still_sum_to_one():
    from dfer_cli.data.stills import StillAugment, StillBatches

    images = torch.randint(0, 255, (8, 1, 16, 16), dtype=torch.uint8)
    shares = np.random.default_rng(0).dirichlet(np.ones(C), size=8).astype(np.float32)
    b = StillBatches(images, shares, Preprocessing(input_size=16, num_frames=1, grayscale=True),
                     StillAugment(cutmix=1.0), seed=0, order=range(8), sizes=[8], num_classes=C)
    x, y = next(iter(b))
    assert y.shape == (8, C)
    torch.testing.assert_close(y.sum(1), torch.ones(8))
    assert not torch.allclose(y, torch.from_numpy(shares))    # mixed with another image's shares


# ---- metrics against numpy written out ----------------------------------------------------


def _example():
    rng = np.random.default_rng(4)
    votes = rng.integers(0, 6, size=(40, C)).astype(float)
    votes[votes.sum(1) == 0, 0] = 1
    votes[3] = [3, 3, 0, 0, 0, 0, 0]                         # a tie: no plurality
    probs = rng.dirichlet(np.ones(C) * 0.7, size=40)
    probs[5] = [1.0, 0, 0, 0, 0, 0, 0]                      # a zero probability where votes may be
    return votes, probs


def test_kl_nll_calibration_error_and_ece_match_loops_written_out():
    from dfer_cli.metrics import mean_kl, plurality_nll, top_label_ece, unique_plurality, vote_share_calibration_error

    votes, probs = _example()
    eps = 1e-12
    kl = []
    for v, p in zip(votes, probs):
        s = v / v.sum()
        kl.append(sum(si * (math.log(si) - math.log(max(pi, eps))) for si, pi in zip(s, p) if si > 0))
    assert mean_kl(votes, probs) == pytest.approx(np.mean(kl), rel=1e-9)

    nll = [-math.log(max(p[int(np.argmax(v))], eps)) for v, p in zip(votes, probs) if (v == v.max()).sum() == 1]
    assert plurality_nll(votes, probs) == pytest.approx(np.mean(nll), rel=1e-9)
    assert unique_plurality(votes)[3] == -1

    # vote-share error: 15 equal bins over every (image, class) pair
    bins = [[] for _ in range(15)]
    for v, p in zip(votes, probs):
        for c in range(C):
            bins[min(int(p[c] * 15), 14)].append((p[c], v[c] / v.sum()))
    n = sum(len(b) for b in bins)
    want = sum(len(b) * abs(np.mean([a for a, _ in b]) - np.mean([s for _, s in b])) for b in bins if b) / n
    assert vote_share_calibration_error(votes, probs) == pytest.approx(want, rel=1e-9)

    bins = [[] for _ in range(15)]
    for v, p in zip(votes, probs):
        if (v == v.max()).sum() == 1:
            bins[min(int(p.max() * 15), 14)].append((p.max(), float(np.argmax(p) == np.argmax(v))))
    n = sum(len(b) for b in bins)
    want = sum(len(b) * abs(np.mean([a for a, _ in b]) - np.mean([h for _, h in b])) for b in bins if b) / n
    assert top_label_ece(votes, probs) == pytest.approx(want, rel=1e-9)


def test_an_image_whose_crowd_plurality_is_outside_the_classes_has_no_plurality(tmp_path):
    from dfer_cli.metrics import VoteScores, unique_plurality

    p = write_csv(tmp_path / "v.csv", FERPLUS_HEADER, [
        ferplus_row("a.jpg", happiness=3, contempt=5, neutral=2),   # contempt is the crowd's plurality
        ferplus_row("b.jpg", happiness=6, contempt=4),
        ferplus_row("c.jpg", sadness=4, unknown=4, neutral=2)])     # a tie with unknown
    t = read_votes(p)
    assert (t.other["a.jpg"], t.other["b.jpg"], t.other["c.jpg"]) == (5, 4, 4)
    votes = np.array([t.votes[k] for k in ("a.jpg", "b.jpg", "c.jpg")])
    other = np.array([t.other[k] for k in ("a.jpg", "b.jpg", "c.jpg")])
    assert list(unique_plurality(votes, other)) == [-1, H, -1] and list(unique_plurality(votes)) == [H, H, S]
    probs = np.full((3, C), 1 / C)
    d = VoteScores(list(CLASSES), votes, probs, other).to_dict()
    assert d["samples"] == 3 and d["unique_plurality"] == 1          # KL still over all three


def test_probabilities_equal_to_the_vote_shares_score_zero_kl_and_zero_calibration_error():
    from dfer_cli.metrics import mean_kl, vote_share_calibration_error

    votes, _ = _example()
    shares = votes / votes.sum(1, keepdims=True)
    assert mean_kl(votes, shares) == pytest.approx(0.0, abs=1e-12)
    assert vote_share_calibration_error(votes, shares) == pytest.approx(0.0, abs=1e-12)


# ---- temperature ------------------------------------------------------------------------


def test_fitted_temperature_is_the_minimum_of_the_soft_cross_entropy_on_a_fine_grid():
    from dfer_cli.calibration import fit_temperature, soft_cross_entropy

    rng = np.random.default_rng(1)
    votes = rng.dirichlet(np.ones(C), size=200) * 10
    logits = 3.0 * np.log(votes / votes.sum(1, keepdims=True) + 0.05)   # too sharp by about 3x
    t = fit_temperature(logits, votes)
    grid = np.exp(np.linspace(np.log(0.5), np.log(8), 4001))
    best = grid[np.argmin([soft_cross_entropy(logits, votes, g) for g in grid])]
    assert t == pytest.approx(best, rel=2e-3)
    assert 2.0 < t < 4.0


def _tiny_still_model():
    from dfer_cli.models import create_model

    torch.manual_seed(0)
    m = create_model("logo_former", num_frames=1, input_size=32, num_classes=C, dim=32, depth=1, heads=2)
    m.classes = list(CLASSES)
    m.preprocessing = Preprocessing(input_size=32, num_frames=1, grayscale=True)
    return m.eval()


def test_temperature_round_trip_through_save_load_export_and_predict_probabilities(tmp_path):
    from dfer_cli.checkpoint import CheckpointError, load_model, read_metadata, save_checkpoint
    from dfer_cli.models.inference import clip_logits, clip_probs

    m = _tiny_still_model()
    m.calibration = {"method": "temperature", "temperature": 2.5, "fitted_on": "test"}
    path = save_checkpoint(tmp_path / "cal.safetensors", m, classes=CLASSES, preprocessing=m.preprocessing)
    assert read_metadata(path)["calibration"]["temperature"] == 2.5
    loaded = load_model(path)
    x = torch.randn(3, 1, 3, 32, 32)
    with torch.no_grad():
        z = clip_logits(loaded, x)
        torch.testing.assert_close(clip_probs(loaded, x), (z / 2.5).softmax(-1))
    r = CliRunner().invoke(app, ["weights", "export", str(path), str(tmp_path / "v.safetensors"), "--frames", "4"])
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "v.safetensors").calibration["temperature"] == 2.5
    r = CliRunner().invoke(app, ["models", str(path), "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["checkpoints"][0]["temperature"] == 2.5
    r = CliRunner().invoke(app, ["models", str(path)])
    assert "probabilities are softmax(output / 2.5), a temperature fitted to raters' votes on test" \
        in " ".join(r.stdout.split())

    m.calibration = {"temperature": 0.0}
    bad = save_checkpoint(tmp_path / "bad.safetensors", m, classes=CLASSES, preprocessing=m.preprocessing)
    with pytest.raises(CheckpointError, match="'calibration'"):
        load_model(bad)


# ---- the CLI path -----------------------------------------------------------------------


def test_train_with_votes_calibrate_on_the_holdout_then_eval_against_votes_and_recompute_from_predictions(tmp_path):
    from dfer_cli.metrics import confusion_matrix, mean_kl, uar, vote_share_calibration_error

    root, votes = _votes_dataset(tmp_path)
    runner = CliRunner()
    common = ["--data-root", str(root), "--votes", str(votes)]
    r = runner.invoke(app, ["train", *common, "--frames", "1", "--input-size", "32", "--grayscale",
                            "--model-opt", "dim=32", "--model-opt", "depth=1", "--model-opt", "heads=2",
                            "--loss", "ce", "--optimizer", "adamw", "--lr", "1e-3", "--epochs", "1",
                            "--batch-size", "4", "--holdout", "0.25", "--holdout-seed", "3", "--threads", "1",
                            "--quiet", "--output", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["votes"] == [str(votes)]
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["val_kl"] > 0

    run_ckpt = str(tmp_path / "run" / "last.safetensors")
    # the vote loss takes the label loss's place beside distillation, and mixed batches mix the shares
    r = runner.invoke(app, ["train", *common, "--frames", "1", "--input-size", "32", "--grayscale",
                            "--model-opt", "dim=32", "--model-opt", "depth=1", "--model-opt", "heads=2",
                            "--loss", "ce", "--optimizer", "adamw", "--epochs", "1", "--batch-size", "4",
                            "--holdout", "0.25", "--holdout-seed", "3", "--threads", "1", "--quiet",
                            "--teacher", run_ckpt, "--distill", "0.5", "--cutmix", "0.5", "--label-smoothing", "0.1",
                            "--logit-adjust", "1", "--output", str(tmp_path / "student")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "student" / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"] > 0
    wrong = runner.invoke(app, ["weights", "calibrate", run_ckpt, str(tmp_path / "x.safetensors"), *common,
                                "--holdout", "0.25", "--holdout-seed", "4"])
    assert wrong.exit_code == 1 and "not the ones the model's training held out" in wrong.stderr
    cal = tmp_path / "cal.safetensors"
    r = runner.invoke(app, ["weights", "calibrate", run_ckpt, str(cal), *common, "--holdout", "0.25",
                            "--holdout-seed", "3", "--float32"])
    assert r.exit_code == 0, r.output
    from dfer_cli.checkpoint import read_metadata

    record = read_metadata(cal)["calibration"]
    assert record["mean_kl_after"] <= record["mean_kl_before"] + 1e-9

    preds = tmp_path / "pred.csv"
    r = runner.invoke(app, ["eval", "-w", str(cal), "--data-root", str(root), "--split", "val", "--votes",
                            str(votes), "--predictions", str(preds), "--json", "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["temperature"] == record["temperature"] and (tmp_path / "p.png").stat().st_size > 0
    with open(preds, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", *CLASSES] and len(rows) == 6
    p = np.array([[float(r_[c]) for c in CLASSES] for r_ in rows])
    y = np.array([CLASSES.index(r_["label"]) for r_ in rows])
    cm = confusion_matrix(y, p.argmax(1), C)
    assert out["war"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
    assert out["uar"] == pytest.approx(uar(cm), abs=1e-6)
    table = read_votes(votes)
    v = np.array([table.votes[r_["path"]] for r_ in rows])
    assert out["votes"]["mean_kl"] == pytest.approx(mean_kl(v, p), abs=1e-5)
    assert out["votes"]["vote_share_calibration_error"] == pytest.approx(vote_share_calibration_error(v, p), abs=1e-5)

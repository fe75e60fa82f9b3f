"""No model selection on the scored split: a run's best checkpoint records the split it was
selected on, and `dfer eval` (one split or DFEW's 5 folds) never scores a best on that split;
it scores the run's last instead and says so, or refuses when there is no last."""
from __future__ import annotations

import json
import shutil

import pytest
from test_data import make_dfew
from typer.testing import CliRunner

from dfer_cli.cli.main import app
from dfer_cli.evaluation.selection import _selection_from_provenance, describe_selection, selected_on_split
from dfer_cli.train.config import TrainConfig
from dfer_cli.train.loop import train

runner = CliRunner()


@pytest.fixture(scope="module")
def dfew_runs(tmp_path_factory):
    """A tiny DFEW dataset and a 5-fold run trained on it, each fold validating (and so
    selecting best) on its own test fold, as `dfer train --dataset dfew --fold K` does by
    default. lr 0 and a frozen trunk keep the validation UAR of epoch 2 equal to epoch 1's,
    so every fold's best is epoch 1 of 2: a best that differs from last."""
    base = tmp_path_factory.mktemp("dfew_sel")
    root = make_dfew(base / "DFEW")
    run = base / "run"
    for k in range(1, 6):
        cfg = TrainConfig(dataset="dfew", data_root=str(root), fold=k, val_split="val", output=str(run / f"fold{k}"),
                          model_opts={"dim": 32, "depth": 1, "heads": 2}, input_size=16, frames=2, grayscale=True,
                          epochs=2, batch_size=4, optimizer="sgd", lr=0.0, freeze_backbone=True, threads=1,
                          init=None)
        summary = train(cfg, progress=False)
        assert summary["best_epoch"] == 1
    return root, run


def test_best_records_what_it_was_selected_on(dfew_runs):
    from dfer_cli.checkpoint import read_metadata

    root, run = dfew_runs
    best = read_metadata(run / "fold3" / "best.safetensors")["provenance"]
    last = read_metadata(run / "fold3" / "last.safetensors")["provenance"]
    assert best["checkpoint"] == "best" and last["checkpoint"] == "last"
    assert best["selected_on"] == {"metric": "val_uar", "dataset": "dfew", "split": "test", "fold": 3,
                                   "holdout": None, "root": str(root)}
    assert (best["epoch"], last["epoch"], last["best_epoch"]) == (1, 2, 1)


def test_five_fold_eval_scores_each_folds_last_and_says_so(dfew_runs):
    root, run = dfew_runs
    r = runner.invoke(app, ["eval", "--dataset", "dfew", "--data-root", str(root), "--split", "5-fold",
                            "--weights", str(run), "--json", "--threads", "1"])
    assert r.exit_code == 0, r.output
    (note,) = r.stderr.strip().splitlines()
    assert note.startswith("dfer: fold 1, 2, 3, 4, 5: best.safetensors was selected on the test fold being scored; "
                           "scoring last.safetensors instead")
    folds = json.loads(r.stdout)["folds"]
    for k, f in enumerate(folds, 1):
        ck = f["checkpoint"]
        assert f["weights"] == str(run / f"fold{k}" / "last.safetensors")
        assert ck["requested"] == str(run / f"fold{k}" / "best.safetensors") and ck["substituted"]
        assert (ck["which"], ck["epoch"], ck["best_epoch"]) == ("last", 2, 1)
    # the table says it too, per fold
    r = runner.invoke(app, ["eval", "--dataset", "dfew", "--data-root", str(root), "--split", "5-fold",
                            "--weights", str(run), "--which", "last", "--threads", "1"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert r.stderr == "" and r.stdout.count("last (epoch 2 of 2; the run's best was epoch 1)") == 5


def test_one_split_eval_substitutes_only_on_the_selection_split(dfew_runs):
    root, run = dfew_runs
    best = str(run / "fold1" / "best.safetensors")
    common = ["eval", "--dataset", "dfew", "--data-root", str(root), "--json", "--threads", "1"]
    r = runner.invoke(app, [*common, "-w", best, "--split", "test", "--fold", "1"])
    assert r.exit_code == 0, r.output
    (note,) = r.stderr.strip().splitlines()
    assert note == (f"dfer: {best} was selected (epoch 1) on dfew test fold 1, the split being scored; "
                    f"scoring {run / 'fold1' / 'last.safetensors'} instead")
    assert json.loads(r.stdout)["checkpoint"]["which"] == "last"
    # 'val' is DFEW's test split: the same selection, the same substitution
    r = runner.invoke(app, [*common, "-w", str(run / "fold1"), "--split", "val", "--fold", "1"])
    assert r.exit_code == 0 and json.loads(r.stdout)["checkpoint"]["which"] == "last", r.output
    # another fold's test split, or the training split: the best was not selected there
    for split, fold in (("test", 2), ("train", 1)):
        r = runner.invoke(app, [*common, "-w", best, "--split", split, "--fold", str(fold)])
        assert r.exit_code == 0 and "selected" not in r.stderr, r.output  # (the data report may speak)
        ck = json.loads(r.stdout)["checkpoint"]
        assert (ck["which"], ck["epoch"], ck["substituted"]) == ("best", 1, False)
        assert ck["description"] == "best (epoch 1 of 2, selected on dfew test fold 1)"


def test_a_best_alone_on_its_selection_split_is_refused_in_one_line(dfew_runs, tmp_path):
    root, run = dfew_runs
    lone = tmp_path / "best.safetensors"
    shutil.copy(run / "fold2" / "best.safetensors", lone)
    r = runner.invoke(app, ["eval", "-w", str(lone), "--dataset", "dfew", "--data-root", str(root), "--split", "test",
                            "--fold", "2", "--threads", "1"])
    assert r.exit_code == 1
    (line,) = r.output.strip().splitlines()
    assert line == (f"dfer: {lone} was selected on dfew test fold 2, the split being scored, and there is no "
                    "last.safetensors next to it: score the run's last checkpoint, or retrain with --holdout 0.1 "
                    "to select on held-out training data")


def test_selection_rules():
    dfew1 = {"dataset": "dfew", "split": "test", "fold": 1, "holdout": None, "root": "/d/DFEW"}
    assert selected_on_split(dfew1, "dfew", "/elsewhere/DFEW", "val", 1)  # official splits: any copy of DFEW
    assert not selected_on_split(dfew1, "dfew", "/d/DFEW", "test", 2)
    assert not selected_on_split({**dfew1, "holdout": 0.1, "split": "train"}, "dfew", "/d/DFEW", "train", 1)
    folder = {"dataset": "folder", "split": "val", "fold": None, "holdout": None, "root": "/data/fer"}
    assert selected_on_split(folder, "folder", "/data/fer/", "val", None)
    assert not selected_on_split(folder, "folder", "/data/other", "val", None)  # another folder's val
    assert not selected_on_split(folder, "folder", "/data/fer", "test", None)
    assert not selected_on_split(None, "folder", "/data/fer", "val", None)
    # checkpoints written before the record existed: rebuilt from the data provenance
    old = {"data": {"dataset": "folder", "root": "/data/fer", "split": "train", "fold": None, "val_split": "val"}}
    assert selected_on_split(_selection_from_provenance(old), "folder", "/data/fer", "val", None)
    old["data"]["val_split"] = "holdout 0.1 of train (stratified, seed 0)"
    sel = _selection_from_provenance(old)
    assert sel["holdout"] == 0.1 and describe_selection(sel) == "holdout 0.1 of folder train (/data/fer)"


def test_an_ensemble_is_described_member_by_member_and_never_substituted(dfew_runs, tmp_path):
    """An ensemble's top-level provenance is its first member's; eval must not read it as that
    member (a best of fold 1 would have been swapped for a last.safetensors that is not
    there) but describe every member and warn about the one chosen on the scored split."""
    root, run = dfew_runs
    ens = tmp_path / "pair.safetensors"
    r = runner.invoke(app, ["weights", "ensemble", str(run / "fold1" / "best.safetensors"),
                            str(run / "fold2" / "last.safetensors"), "-o", str(ens)])
    assert r.exit_code == 0, r.output
    common = ["eval", "-w", str(ens), "--dataset", "dfew", "--data-root", str(root), "--json", "--threads", "1"]
    r = runner.invoke(app, [*common, "--split", "test", "--fold", "1"])
    assert r.exit_code == 0, r.output
    ck = json.loads(r.stdout)["checkpoint"]
    assert ck["path"] == str(ens) and not ck["substituted"] and ck["which"] is None
    assert ck["description"] == ("ensemble of 2 members: 1) best (epoch 1 of 2, selected on dfew test fold 1); "
                                 "2) last (epoch 2 of 2; the run's best was epoch 1)")
    assert [(m["path"], m["which"], m["epoch"]) for m in ck["members"]] == [
        ("best.safetensors", "best", 1), ("last.safetensors", "last", 2)]
    (note,) = [line for line in r.stderr.splitlines() if "selected" in line]
    assert note == (f"dfer: {ens}: member 1 (best.safetensors, epoch 1) was selected on dfew test fold 1, the split "
                    "being scored, so this score overstates unseen data; rebuild the ensemble from the runs' last "
                    "checkpoints")
    # on another fold nothing was selected on the scored split: no note
    r = runner.invoke(app, [*common, "--split", "test", "--fold", "3"])
    assert r.exit_code == 0 and "selected" not in r.stderr, r.output


def test_a_weight_average_is_described_as_one(dfew_runs, tmp_path):
    """scripts/average_weights.py keeps its first input's provenance (a best) and adds
    averaged_from: eval describes the average, not that best, and does not substitute it."""
    import subprocess
    import sys
    from pathlib import Path

    root, run = dfew_runs
    avg = tmp_path / "avg.safetensors"
    script = Path(__file__).resolve().parents[1] / "scripts" / "average_weights.py"
    a, b = str(run / "fold1" / "best.safetensors"), str(run / "fold1" / "last.safetensors")
    subprocess.run([sys.executable, str(script), str(avg), a, b], check=True, capture_output=True)
    r = runner.invoke(app, ["eval", "-w", str(avg), "--dataset", "dfew", "--data-root", str(root), "--json",
                            "--threads", "1", "--split", "test", "--fold", "1"])
    assert r.exit_code == 0, r.output
    ck = json.loads(r.stdout)["checkpoint"]
    assert ck["averaged_from"] == [a, b] and not ck["substituted"]
    assert ck["description"] == f"weight average of 2 checkpoints ({a}, {b})"

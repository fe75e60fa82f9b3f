"""`dfer train` / `dfer eval` from the command line: files written, JSON output, errors."""
from __future__ import annotations

import json

from test_train import make_dataset
from typer.testing import CliRunner

from dfer_cli.cli.main import app

runner = CliRunner()
TINY = ["--model-opt", "dim=32", "--model-opt", "depth=1", "--model-opt", "heads=2", "--input-size", "32",
        "--frames", "2", "--grayscale", "--threads", "1", "--quiet"]


def test_train_then_eval(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=4, val_per_class=2)
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--data-root", str(data), "--epochs", "1", "--batch-size", "4",
                            "--optimizer", "sgd", "--template-scale", "0.8", "--output", str(out), *TINY])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and summary["best_epoch"] == 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optimizer"] == "sgd" and cfg["model_opts"] == {"dim": 32, "depth": 1, "heads": 2}
    from dfer_cli.checkpoint import read_metadata
    from dfer_cli.preprocess import DEFAULT_TEMPLATE, zoom_template

    meta = read_metadata(out / "last.safetensors")
    assert meta["preprocessing"]["template"] == [list(p) for p in zoom_template(DEFAULT_TEMPLATE, 0.8)]
    assert meta["provenance"]["command"][:2] == ["dfer", "train"] or meta["provenance"]["command"][0] == "dfer"

    png = tmp_path / "cm.png"
    r = runner.invoke(app, ["eval", "-w", str(out / "best.safetensors"), "--data-root", str(data), "--json",
                            "--plot", str(png), "--threads", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["samples"] == 6 and set(res["recall"]) == {"happy", "sad", "neutral", "angry", "surprise",
                                                          "disgust", "fear"}
    assert png.stat().st_size > 1000


def test_train_usage_errors(tmp_path):
    r = runner.invoke(app, ["train", "--data-root", str(tmp_path), "--model-opt", "dimm=3"])
    assert r.exit_code == 2 and "not a field" in r.output
    r = runner.invoke(app, ["train", "--data-root", str(tmp_path), "--optimizer", "adam"])
    assert r.exit_code == 2 and "--optimizer" in r.output
    r = runner.invoke(app, ["train"])
    assert r.exit_code == 2 and "--data-root" in r.output
    r = runner.invoke(app, ["train", "--data-root", str(tmp_path), "--holdout-seed", "1"])
    assert r.exit_code == 2 and "--holdout-seed chooses the --holdout split" in r.output
    r = runner.invoke(app, ["train", "--data-root", str(tmp_path), "--holdout-unseen"])
    assert r.exit_code == 2 and "--holdout-unseen filters the --holdout split: pass --holdout too" in r.output
    r = runner.invoke(app, ["train", "--data-root", str(tmp_path / "missing"), "--quiet"])
    assert r.exit_code == 1 and "missing" in r.output and "does not exist" in r.output


def test_eval_errors(tmp_path):
    r = runner.invoke(app, ["eval", "-w", str(tmp_path / "nope.safetensors"), "--data-root", str(tmp_path)])
    assert r.exit_code == 1 and "nope.safetensors" in r.output
    r = runner.invoke(app, ["eval", "--split", "5-fold", "--data-root", str(tmp_path)])
    assert r.exit_code == 2 and "dfew" in r.output


def test_unknown_dataset_and_unavailable_device_are_usage_errors(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cmd in (["train", "--data-root", str(tmp_path), "--output", str(tmp_path / "run")],
                ["eval", "-w", str(tmp_path / "x.safetensors"), "--data-root", str(tmp_path)]):
        r = runner.invoke(app, [*cmd, "--device", "cuda"])
        assert r.exit_code == 2 and r.output.strip() == (f"dfer {cmd[0]}: --device: device 'cuda' requested but CUDA "
                                                         f"is not available: use --device cpu or auto "
                                                         f"(try: dfer {cmd[0]} --help)")
        r = runner.invoke(app, [*cmd, "--dataset", "dfw"])
        assert r.exit_code == 2 and "--dataset 'dfw': choose one of folder, dfew" in r.output
    assert not (tmp_path / "run").exists()


def test_eval_plot_folder_is_created_and_a_bad_plot_path_is_one_line(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=2, val_per_class=1)
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--data-root", str(data), "--epochs", "1", "--batch-size", "4",
                            "--optimizer", "sgd", "--output", str(out), *TINY])
    assert r.exit_code == 0, r.output
    ckpt = str(out / "best.safetensors")
    png = tmp_path / "new" / "folder" / "cm.png"
    r = runner.invoke(app, ["eval", "-w", ckpt, "--data-root", str(data), "--plot", str(png), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = runner.invoke(app, ["eval", "-w", ckpt, "--data-root", str(data), "--json", "--plot",
                            str(tmp_path / "cm.txt"), "--threads", "1"])
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["samples"] > 0  # the scores are printed before the plot fails
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"dfer: --plot {tmp_path / 'cm.txt'}: could not write the confusion matrix")


def test_help_texts_keep_their_bracketed_words():
    """rich reads "[...]" in a help text as markup and drops it: --crop-scale's help lost
    "[this, 1]" that way. No option help may contain an unescaped bracket pair."""
    import re

    import typer.main

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None) or {name: cmd}
        for sub in subs.values():
            for p in sub.params:
                assert not re.search(r"(?<!\\)\[[a-z#/@][^\[]*?\]", getattr(p, "help", None) or ""), (name, p.name)
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250"})
    assert "Random resized crop keeps between this fraction and all of the area." in r.stdout
    r = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "250"})
    from dfer_cli.weights import DEFAULT_WEIGHTS

    assert f"[default: {DEFAULT_WEIGHTS}]" in r.stdout


def test_prepare_cli_names_a_bad_video_once_and_a_file_src(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.mp4").write_text("not a video")
    r = runner.invoke(app, ["prepare", str(src), str(tmp_path / "dst"), "--threads", "1"])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("[1/1] failed bad.mp4: cannot be read as a video")
    assert lines[-1].startswith(f"dfer: failed {src / 'bad.mp4'}: cannot be read as a video")
    assert all(line.count("bad.mp4") == 1 for line in lines)
    r = runner.invoke(app, ["prepare", str(src / "bad.mp4"), str(tmp_path / "dst2")])
    assert r.exit_code == 1 and "is a file: SRC is the folder holding the videos" in r.stderr


def test_recipe_paper_is_recorded_explicit_flags_win_and_a_random_trunk_is_warned_once(tmp_path):
    from dfer_cli.checkpoint import read_metadata
    from dfer_cli.train.setup import RANDOM_TRUNK_WARNING

    data = make_dataset(tmp_path / "data", per_class=2, val_per_class=1)
    out = tmp_path / "paper"
    r = runner.invoke(app, ["train", "--data-root", str(data), "--recipe", "paper", "--epochs", "1", "--lr", "0.02",
                            "--output", str(out), *TINY])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["recipe"], cfg["sampling"], cfg["optimizer"], cfg["batch_size"], cfg["momentum"], cfg["rho"]) == \
        ("paper", "segments8x2", "sam", 32, 0.9, 0.05)
    assert (cfg["lr"], cfg["epochs"], cfg["frames"], cfg["input_size"]) == (0.02, 1, 2, 32)  # given flags win
    assert read_metadata(out / "last.safetensors")["sampling"] == "segments8x2"
    assert r.stderr.splitlines() == [RANDOM_TRUNK_WARNING]  # --quiet, but the warning is one line, once
    assert "--backbone-weights" in RANDOM_TRUNK_WARNING and "MS-Celeb-1M" in RANDOM_TRUNK_WARNING

    # from a checkpoint: no warning; the default recipe is dfer's
    r = runner.invoke(app, ["train", "--data-root", str(data), "--epochs", "1", "--batch-size", "4", "--optimizer",
                            "sgd", "--init", str(out / "last.safetensors"), "--output", str(tmp_path / "dfer"), *TINY])
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    cfg = json.loads((tmp_path / "dfer" / "config.json").read_text())
    assert (cfg["recipe"], cfg["sampling"]) == ("dfer", "uniform")

    r = runner.invoke(app, ["train", "--data-root", str(data), "--recipe", "paper", "--frames", "3", "--quiet"])
    assert r.exit_code == 2 and "use --frames 16 or --sampling uniform" in r.output
    r = runner.invoke(app, ["train", "--data-root", str(data), "--recipe", "fast", "--quiet"])
    assert r.exit_code == 2 and "--recipe 'fast': choose one of dfer, paper" in r.output
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250"})
    assert "[default: uniform (--recipe dfer), segments8x2 (--recipe paper)]" in r.stdout

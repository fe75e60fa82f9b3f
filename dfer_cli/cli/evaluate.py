"""`dfer eval`: score a checkpoint on a dataset split or over folds, against labels or crowd votes,
and print the tables (or JSON) and write the figures.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

import typer

from dfer_cli.cli.app import FORMAT_HELP, JSON_ALIAS_HELP, DferCommand, app, fail, output_format
from dfer_cli.cli.train import DATASET_HELP, check_dataset_and_device, print_data_report
from dfer_cli.weights import DEFAULT_WEIGHTS


@app.command("eval", cls=DferCommand)
def eval_cmd(
    weights: Optional[str] = typer.Option(None, "--weights", "-w", metavar="NAME|PATH|RUN_DIR",
                                          help="Checkpoint name or .safetensors path, or a run folder (its --which "
                                          "checkpoint); with --split 5-fold, a run folder holding fold1..fold5/.",
                                          show_default=DEFAULT_WEIGHTS),
    dataset: str = typer.Option("folder", "--dataset", help=DATASET_HELP),
    data_root: Optional[str] = typer.Option(None, "--data-root", envvar="DFER_DATA_ROOT", help="Dataset root folder."),
    split: str = typer.Option("val", "--split", help="Split to score (folder: sub-folder name; DFEW/FERV39K: "
                              "test; AFEW: val), or 5-fold for a DFEW run's five fold checkpoints."),
    fold: Optional[int] = typer.Option(None, "--fold", min=1, max=5, help="DFEW fold 1..5."),
    which: str = typer.Option("best", "--which", help="Of a run folder (each fold's with --split 5-fold): best or "
                              "last checkpoint. A best selected on the split being scored is never used: its "
                              "run's last is scored instead, and the output says so."),
    batch_size: int = typer.Option(16, "--batch-size", help="Clips per model forward pass."),
    test_clips: int = typer.Option(1, "--test-clips", help="Clips per sample at shifted segment positions, averaged."),
    tta: str = typer.Option("none", "--tta", metavar="none|flip", help="Test-time augmentation: none | flip "
                            "(average with the mirrored clip; twice the model cost)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score a random subset of N samples."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help="torch CPU threads.",
                                          show_default="torch's choice"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N] | mps."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="table|json", help=FORMAT_HELP,
                                      show_default="table"),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALIAS_HELP),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="IMAGE", help="Write a confusion-matrix PNG here "
                                       "(5-fold: the sum of the folds' matrices); with --votes beside the "
                                       "reliability diagram against the vote shares."),
    votes: List[str] = typer.Option([], "--votes", metavar="CSV", help="Also score against raters' votes (FER+'s "
                                    "CSV, or 'file' plus one column per class; repeatable): plurality accuracy "
                                    "and UAR, NLL, mean KL(votes || model), vote-share calibration error, ECE."),
    predictions: Optional[str] = typer.Option(None, "--predictions", metavar="CSV", help="Write one row per "
                                              "sample here: path, label and one probability column per class."),
) -> None:
    """Score a checkpoint: WAR (accuracy), UAR (mean per-class recall), per-class recall and
    the confusion matrix; --split 5-fold gives the DFEW per-fold table with mean ± std.

    Exit status: 0 scored, 1 a missing or unusable checkpoint, run folder or data root (named,
    with the fix), 2 usage error (a bad or missing flag).
    """
    as_json = output_format(fmt, as_json) == "json"
    _check_eval_options(weights, dataset, data_root, split, which, tta, device, votes, predictions)
    import torch

    from dfer_cli.device import resolve_device

    if threads:
        torch.set_num_threads(threads)
    kw = dict(batch_size=batch_size, test_clips=test_clips, limit=limit, device=resolve_device(device),
              workers=workers, tta=tta)
    if split == "5-fold":
        _eval_folds(weights, data_root, which, as_json, plot, kw)
    else:
        _eval_split(weights, dataset, data_root, split, fold, which, votes, as_json, plot, predictions, kw)


def _check_eval_options(weights, dataset, data_root, split, which, tta, device, votes, predictions) -> None:
    """Exit 2 on a bad combination of flags and 1 on a missing path, before torch is loaded."""
    if not data_root:
        fail("no data: pass --data-root DIR (or set DFER_DATA_ROOT)", 2)
    if which not in ("best", "last"):
        fail(f"--which {which!r}: choose best or last", 2)
    if tta not in ("none", "flip"):
        fail(f"--tta {tta!r}: choose none or flip", 2)
    if split == "5-fold":
        if votes or predictions:
            fail("--votes and --predictions score one checkpoint on one split; leave them out with --split 5-fold", 2)
        if dataset != "dfew":
            fail("--split 5-fold is the DFEW protocol: pass --dataset dfew", 2)
        if not weights:
            fail("--split 5-fold needs --weights RUN_DIR, the folder holding fold1/ .. fold5/", 2)
    try:
        check_dataset_and_device(dataset, device)
    except ValueError as exc:
        fail(str(exc), 2)
    _check_eval_paths(weights, which, split, data_root)
    for v in votes:
        if not os.path.isfile(v):
            fail(f"--votes {v}: no such file; give a CSV with a 'file' column and one column per class", 1)


def _eval_folds(run_dir: str, data_root: str, which: str, as_json: bool, plot: Optional[str], kw: dict) -> None:
    from dfer_cli.evaluation.plots import plot_confusion
    from dfer_cli.evaluation.run import evaluate_folds, format_pm
    from dfer_cli.metrics import Scores

    try:
        summary = evaluate_folds(run_dir, data_root, which=which, **kw)
    except (ValueError, FileNotFoundError) as exc:  # a CheckpointError is a ValueError
        fail(str(exc), 1)
    substituted = [f.fold for f in summary.folds if f.checkpoint is not None and f.checkpoint.note]
    if substituted:
        typer.echo(f"dfer: fold {', '.join(map(str, substituted))}: {which}.safetensors was selected on the "
                   "test fold being scored; scoring last.safetensors instead (docs/training.md, "
                   "'No model selection on the scored split')", err=True)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        _fold_table(summary, format_pm)
    if plot:
        total = sum(f.scores.confusion for f in summary.folds)
        _write_plot(plot_confusion, Scores(summary.folds[0].scores.classes, total), plot,
                    title=f"DFEW 5-fold  UAR {format_pm(*summary.stat('uar'))}  "
                          f"WAR {format_pm(*summary.stat('war'))}")


def _eval_split(weights, dataset, data_root, split, fold, which, votes, as_json, plot, predictions, kw) -> None:
    from dfer_cli.evaluation.plots import plot_confusion
    from dfer_cli.evaluation.run import evaluate_split, run_checkpoint, write_predictions
    from dfer_cli.metrics import reliability_bins

    chosen = []
    try:
        ev = evaluate_split(run_checkpoint(weights or DEFAULT_WEIGHTS, which), dataset, data_root,
                            split, fold=fold, on_choice=chosen.append, votes=votes or None, **kw)
    except (ValueError, FileNotFoundError) as exc:  # a CheckpointError is a ValueError
        fail(str(exc), 1)
    scores, report, choice = ev.scores, ev.report, chosen[0]
    print_data_report(report)
    if choice.note:
        typer.echo(f"dfer: {choice.note}", err=True)
    vote_dict = _clean_json(ev.vote_scores.to_dict()) if ev.vote_scores is not None else None
    if as_json:
        out = {"weights": weights or DEFAULT_WEIGHTS, "dataset": dataset, "split": split,
               "fold": fold, "checkpoint": choice.to_dict(), "skipped": report.counts(),
               "temperature": ev.temperature, **scores.to_dict()}
        if vote_dict is not None:
            out["votes"] = vote_dict
        typer.echo(json.dumps(out, indent=2))
    else:
        _scores_table(scores, f"{choice.path} on {dataset} {split}" + (f" fold {fold}" if fold else ""),
                      caption=f"checkpoint: {choice.describe()}")
        if vote_dict is not None:
            _vote_table(vote_dict, ev.classes, ev.temperature)
    if predictions:
        try:
            write_predictions(ev, predictions)
        except OSError as exc:
            fail(f"--predictions {predictions}: could not write it ({exc.strerror or exc}); choose a writable path", 1)
    if plot:
        rel = reliability_bins(ev.vote_scores.votes, ev.vote_scores.probs) if ev.vote_scores is not None else None
        _write_plot(plot_confusion, scores, plot, reliability=rel)


def _check_eval_paths(weights: Optional[str], which: str, split: str, data_root: str) -> None:
    """Exit 1 with one line naming the path and the fix when --weights names a file or folder
    that is not there (or a run folder without the checkpoint asked for), or --data-root is
    not a folder: before torch and the model are loaded. Weights names (no path separator,
    no .safetensors) are looked up later, with their own message."""
    from pathlib import Path

    from dfer_cli.weights import looks_like_path

    if weights is not None and (split == "5-fold" or looks_like_path(weights) or os.path.isdir(weights)):
        p = Path(weights).expanduser()
        if split == "5-fold":
            if not p.is_dir():
                fail(f"--weights {weights}: no such run folder; --split 5-fold needs the folder holding fold1/ .. "
                     f"fold5/ (train each fold with --fold K --output {weights}/foldK)", 1)
        elif not p.exists():
            fail(f"--weights {weights}: no such file or folder; pass a .safetensors checkpoint, a run folder "
                 "written by `dfer train --output`, or a name from `dfer weights list`", 1)
        elif p.is_dir() and not (p / f"{which}.safetensors").is_file():
            other = "last" if which == "best" else "best"
            fix = (f"add --which {other} (it has {other}.safetensors)" if (p / f"{other}.safetensors").is_file()
                   else "pass a run folder written by `dfer train --output`, or a .safetensors checkpoint")
            fail(f"--weights {weights}: a folder without {which}.safetensors; {fix}", 1)
    if not Path(data_root).expanduser().is_dir():
        what = "not a folder" if Path(data_root).expanduser().exists() else "no such folder"
        fail(f"--data-root {data_root}: {what}; pass the dataset's root folder (or set DFER_DATA_ROOT)", 1)


def _write_plot(plot_confusion, scores, path: str, **kw) -> None:
    """Write the confusion-matrix image (its folder is created); a path that cannot be
    written is one line and exit 1, after the scores have been printed."""
    from pathlib import Path

    try:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(scores, str(Path(path).expanduser()), **kw)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        fail(f"--plot {path}: could not write the confusion matrix ({reason}); choose a writable .png path", 1)


def _clean_json(d):
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(d, dict):
        return {k: _clean_json(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_clean_json(v) for v in d]
    if isinstance(d, float) and d != d:
        return None
    return d


def _vote_table(v: dict, classes, temperature: float) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.2f}"

    table = Table(title=f"against the raters' votes ({v['samples']} samples with votes, {v['unique_plurality']} "
                        "with a single plurality)",
                  caption=f"probabilities at temperature {temperature:g}")
    table.add_column("score")
    table.add_column("value", justify="right")
    for c in classes:
        table.add_row(f"plurality recall {c} %", pct(v["plurality_recall"][c]))
    table.add_section()
    table.add_row("plurality accuracy %", pct(v["plurality_accuracy"]))
    table.add_row("plurality UAR %", pct(v["plurality_uar"]))
    table.add_row("NLL of the plurality (nats)", f"{v['nll']:.4f}")
    table.add_row("mean KL(votes || model) (nats)", f"{v['mean_kl']:.4f}")
    table.add_row("vote-share calibration error", f"{v['vote_share_calibration_error']:.4f}")
    table.add_row("top-label ECE", f"{v['top_label_ece']:.4f}")
    Console().print(table)


def _scores_table(scores, title: str, caption: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption)
    table.add_column("class")
    table.add_column("samples", justify="right")
    table.add_column("recall %", justify="right")
    for i, c in enumerate(scores.classes):
        r = scores.recall[c]
        table.add_row(c, str(int(scores.confusion[i].sum())), "n/a" if r != r else f"{100 * r:.2f}")
    table.add_section()
    table.add_row("UAR", "", f"{100 * scores.uar:.2f}")
    table.add_row("WAR (accuracy)", str(scores.count), f"{100 * scores.war:.2f}")
    Console().print(table)


def _fold_table(summary, format_pm) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="DFEW 5-fold")
    for col in ("fold", "samples", "UAR %", "WAR %", "checkpoint"):
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    for f in summary.folds:
        table.add_row(str(f.fold), str(f.scores.count), f"{100 * f.scores.uar:.2f}", f"{100 * f.scores.war:.2f}",
                      f.checkpoint.describe() if f.checkpoint is not None else f.weights)
    table.add_section()
    table.add_row("mean ± sample std", "", format_pm(*summary.stat("uar")), format_pm(*summary.stat("war")), "")
    Console().print(table)

"""`dfer` commands: train, eval, prepare (registered on the app of dfer_cli.cli.app by dfer_cli.cli.main).

These functions only parse flags and format output; the work is in dfer_cli.train.loop,
dfer_cli.evaluation.run and dfer_cli.data.prepare.
"""
from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

import typer

from dfer_cli.cli.app import FORMAT_HELP, JSON_ALIAS_HELP, DferCommand, app, fail, output_format, require_finite
from dfer_cli.weights import DEFAULT_WEIGHTS

_DATASET_HELP = "Dataset layout: folder (ROOT/SPLIT/CLASS/CLIP), dfew, ferv39k, afew."


def _r(text: str, name: str) -> dict:
    """help= and show_default= of a flag a --recipe sets: the help text, and as default the
    recipes' values for it ("112, from --recipe" or "cosine (--recipe dfer), ... (--recipe paper)")."""
    from dfer_cli.train.loop import RECIPES

    vals = {r: RECIPES[r][name] for r in RECIPES}
    show = {r: ("model config's" if v is None else f"{v:g}" if isinstance(v, float) else str(v)) for r, v in vals.items()}
    if len(set(show.values())) == 1:
        default = f"{next(iter(show.values()))}, from --recipe"
    else:
        default = ", ".join(f"{v} (--recipe {r})" for r, v in show.items())
    return {"help": text, "show_default": default}


def _parse_template(text: str) -> list:
    from dfer_cli.preprocess import TEMPLATES

    if text.strip().lower() in TEMPLATES:
        return [list(p) for p in TEMPLATES[text.strip().lower()]]
    vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    if len(vals) != 10:
        raise ValueError("--template needs a name (default, fer2013) or 10 numbers: x,y of left eye, right eye, nose, left and right "
                         "mouth corner, in unit crop coordinates")
    return [vals[i:i + 2] for i in range(0, 10, 2)]


@app.command("train", cls=DferCommand)
def train_cmd(
    dataset: str = typer.Option("folder", "--dataset", help=_DATASET_HELP),
    data_root: Optional[str] = typer.Option(None, "--data-root", envvar="DFER_DATA_ROOT",
                                            help="Dataset root folder."),
    split: str = typer.Option("train", "--split", help="Training split (folder layout: sub-folder name)."),
    val_split: str = typer.Option("auto", "--val-split", help="Validation split (model selection); 'none' "
                                  "disables it; auto: val, or none with --holdout."),
    holdout: float = typer.Option(0.0, "--holdout", help="Validate on this fraction of the training split "
                                  "(stratified, seeded) instead of a separate split: select models without "
                                  "touching the test data."),
    holdout_seed: Optional[int] = typer.Option(None, "--holdout-seed", help="Seed of the --holdout split, "
                                               "--seed when not given: runs with other seeds then select on the "
                                               "same images, e.g. to average or ensemble them."),
    holdout_unseen: bool = typer.Option(False, "--holdout-unseen", help="Validate only on the --holdout images "
                                        "without a near-duplicate among the training images (the others stay out "
                                        "of training too): on datasets with near-copies, as FER2013, their scores "
                                        "predict those on new images."),
    fold: Optional[int] = typer.Option(None, "--fold", min=1, max=5, help="DFEW fold 1..5."),
    votes: List[str] = typer.Option([], "--votes", metavar="CSV", help="Train on raters' vote shares (soft "
                                    "cross-entropy, needs --loss ce): FER+'s CSV, or 'file' plus one column per "
                                    "class; repeatable (e.g. FER+ train.csv and val.csv). Files without usable "
                                    "votes are left out."),
    model: str = typer.Option("logo_former", "--model", help="A registered model (dfer models)."),
    model_opt: List[str] = typer.Option([], "--model-opt", help="Model config override key=value "
                                        "(repeatable), e.g. --model-opt dim=256 --model-opt window=2,3,3."),
    recipe: str = typer.Option("dfer", "--recipe", help="Defaults for the flags whose default is 'from --recipe': "
                               "dfer (dfer's defaults) or paper (the settings STT / LOGO-Former state, with their "
                               "8x2 frame sampling; docs/training.md marks which values are the papers'). "
                               "Flags given explicitly win; the recipe is recorded in config.json."),
    input_size: Optional[int] = typer.Option(None, "--input-size", **_r("Face crop side in pixels.", "input_size")),
    frames: Optional[int] = typer.Option(None, "--frames", **_r("Frames per clip.", "frames")),
    sampling: Optional[str] = typer.Option(None, "--sampling", **_r(
        "Frames of a clip: uniform (one per segment) or segments8x2 (2 consecutive frames from each of 8 "
        "segments; random in training, centred in test); recorded in the checkpoint, eval uses it.", "sampling")),
    grayscale: bool = typer.Option(False, "--grayscale/--color", help="Train on gray faces (recorded in the checkpoint)."),
    template: Optional[str] = typer.Option(None, "--template", help="Alignment template: a name (default, "
                                           "fer2013) or 10 numbers x,y for eyes, nose, mouth corners in unit crop "
                                           "coordinates (recorded)."),
    template_scale: float = typer.Option(1.0, "--template-scale", help="Zoom the template about the centre "
                                         "(<1 = more margin around the face; recorded)."),
    detail_size: Optional[int] = typer.Option(None, "--detail-size", min=8, metavar="PX",
                                              help="Native side of the training faces when smaller than "
                                              "--input-size (48 for FER2013): predict reduces video faces to it "
                                              "first (recorded)."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from this dfer checkpoint (matching tensors)."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Freeze the ResNet-18 trunk."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="Face-pretrained ResNet-18 .pth."),
    epochs: Optional[int] = typer.Option(None, "--epochs", **_r("Training epochs.", "epochs")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", **_r(
        "Clips per batch (per process under torchrun).", "batch_size")),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", **_r(
        "sam (SGD inside SAM) | sam-adamw (AdamW inside SAM) | sgd | adamw.", "optimizer")),
    lr: Optional[float] = typer.Option(None, "--lr", **_r("Peak learning rate (after warmup).", "lr")),
    min_lr: Optional[float] = typer.Option(None, "--min-lr", **_r("Learning rate at the end of the cosine decay.",
                                                                      "min_lr")),
    momentum: Optional[float] = typer.Option(None, "--momentum", **_r("SGD momentum (sgd, sam).", "momentum")),
    nesterov: bool = typer.Option(False, "--nesterov", help="Nesterov momentum (sgd, sam)."),
    clip_grad: float = typer.Option(0.0, "--clip-grad", help="Clip the global gradient norm (0: off)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", **_r("Weight decay.", "weight_decay")),
    rho: Optional[float] = typer.Option(None, "--rho", **_r("SAM neighbourhood radius.", "rho")),
    schedule: Optional[str] = typer.Option(None, "--schedule", **_r("cosine | constant (after warmup).", "schedule")),
    warmup_epochs: Optional[float] = typer.Option(None, "--warmup-epochs",
                                                  **_r("Epochs of linear learning-rate warmup.", "warmup_epochs")),
    loss: Optional[str] = typer.Option(None, "--loss", **_r("compact | ce.", "loss")),
    lam: Optional[float] = typer.Option(None, "--lambda", help="Compact loss weight.",
                                       show_default="the model config's, 0.1"),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", help="Label smoothing (--loss ce)."),
    logit_adjust: float = typer.Option(0.0, "--logit-adjust", help="Train on logits + tau*log(class prior) "
                                       "(tau; 0: off); lifts rare classes' recall."),
    teacher: List[str] = typer.Option([], "--teacher", metavar="CKPT", help="Distil from this dfer checkpoint "
                                      "(repeatable: several are an ensemble, their probabilities averaged); it "
                                      "sees the same augmented batch. Needs --distill."),
    distill: float = typer.Option(0.0, "--distill", metavar="W", help="Weight of the distillation term: loss = "
                                  "(1-W) * label loss + W * T^2 * KL(teachers || student) at temperature T."),
    distill_temperature: float = typer.Option(1.0, "--distill-temperature", metavar="T",
                                              help="Softmax temperature of the distillation term."),
    crop_scale: Optional[float] = typer.Option(None, "--crop-scale", **_r(
        "Random resized crop keeps between this fraction and all of the area.", "crop_scale")),
    flip: Optional[float] = typer.Option(None, "--flip", **_r("Horizontal flip probability.", "flip")),
    motion: bool = typer.Option(True, "--motion/--no-motion", help="Synthetic motion on still images."),
    rotate: float = typer.Option(12.0, "--rotate", help="Stills at --frames 1: max rotation in degrees."),
    zoom: float = typer.Option(0.10, "--zoom", help="Stills at --frames 1: max relative zoom."),
    shift: float = typer.Option(0.10, "--shift", help="Stills at --frames 1: max shift, fraction of the side."),
    erase: float = typer.Option(0.5, "--erase", help="Stills at --frames 1: random erasing probability."),
    mixup: float = typer.Option(0.0, "--mixup", help="Stills at --frames 1: probability of a mixup batch (--loss ce)."),
    cutmix: float = typer.Option(0.0, "--cutmix", help="Stills at --frames 1: probability of a cutmix batch (--loss ce)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use a random subset of N training samples."),
    val_limit: Optional[int] = typer.Option(None, "--val-limit", help="Use a random subset of N validation samples."),
    test_clips: int = typer.Option(1, "--test-clips", help="Validation clips per sample, averaged."),
    seed: int = typer.Option(0, "--seed", help="Random seed (sampling, augmentation, initialisation)."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help="torch CPU threads.",
                                          show_default="torch's choice"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N] | mps."),
    precision: str = typer.Option("auto", "--precision", help="fp32 | bf16 (autocast + channels-last; CPU or "
                                  "CUDA) | fp16 (CUDA) | auto (CUDA: bf16/fp16, CPU: fp32)."),
    output: str = typer.Option("runs/dfer", "--output", "-o", help="Run folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last epoch."),
    log_every: int = typer.Option(50, "--log-every", help="Batches between log lines when not on a terminal."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Train a model. --recipe dfer (dfer's defaults) or paper: SAM, lr 1e-3, batch 32, 100 epochs,
    16 frames at 112 px, compact loss; paper also samples 8 segments x 2 consecutive frames.
    Explicit flags override the recipe. Works the same under torchrun (DDP)."""
    from dfer_cli.train.loop import TrainConfig, parse_model_opts, recipe_values, train

    try:
        opts = parse_model_opts(model_opt, model)
        if backbone_weights:
            if not os.path.isfile(backbone_weights):
                raise ValueError(f"--backbone-weights {backbone_weights} does not exist")
            opts["backbone_weights"] = backbone_weights
        if init and not os.path.isfile(init):
            raise ValueError(f"--init {init} does not exist: give a dfer .safetensors checkpoint")
        for v in votes:
            if not os.path.isfile(v):
                raise ValueError(f"--votes {v} does not exist: give a CSV with a 'file' column and one per class")
        for t in teacher:
            if not os.path.isfile(t):
                raise ValueError(f"--teacher {t} does not exist: give a dfer .safetensors checkpoint")
        # flags a recipe covers: None = not given on the command line, the recipe's value
        recipe_kw = recipe_values(
            recipe, input_size=input_size, frames=frames, sampling=sampling, epochs=epochs, batch_size=batch_size,
            optimizer=optimizer, lr=lr, min_lr=min_lr, momentum=momentum, weight_decay=weight_decay, rho=rho,
            schedule=schedule, warmup_epochs=warmup_epochs, loss=loss, lam=lam, crop_scale=crop_scale, flip=flip)
        cfg = TrainConfig(
            dataset=dataset, data_root=data_root or "", split=split,
            val_split=_resolve_val_split(val_split, holdout), holdout=holdout, holdout_seed=holdout_seed,
            holdout_unseen=holdout_unseen, fold=fold, votes=list(votes),
            limit=limit, val_limit=val_limit, model=model, model_opts=opts,
            grayscale=grayscale, template=_parse_template(template) if template else None,
            template_scale=template_scale, detail_size=detail_size, init=init, freeze_backbone=freeze_backbone,
            motion=motion, rotate=rotate, zoom=zoom, shift=shift,
            erase=erase, mixup=mixup, cutmix=cutmix, nesterov=nesterov,
            label_smoothing=label_smoothing, logit_adjust=logit_adjust, clip_grad=clip_grad,
            teachers=list(teacher), distill=distill, distill_temperature=distill_temperature,
            seed=seed, workers=workers, threads=threads, device=device, precision=precision,
            test_clips=test_clips, output=output, log_every=log_every, **recipe_kw)
        if not resume:
            cfg.validate()
        _check_dataset_and_device(dataset, device)
    except (ValueError, TypeError) as exc:
        fail(str(exc), 2)
    try:
        summary = train(cfg, resume=resume, progress=not quiet, argv=["dfer"] + sys.argv[1:])
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        fail(str(exc), 1)
    last = summary.get("last") or {}
    typer.echo(json.dumps({"output": summary["output"], "epochs": summary["epochs"],
                           "best_epoch": summary["best_epoch"], "best_uar": summary["best_uar"],
                           "last_war": last.get("war"), "last_uar": last.get("uar")}))


def _resolve_val_split(val_split: str, holdout: float) -> str | None:
    """--val-split as the run uses it: 'none'/'' -> None; 'auto' -> None with --holdout, else 'val'."""
    v = val_split.strip()
    if v.lower() in ("", "none"):
        return None
    if v.lower() == "auto":
        return None if holdout else "val"
    return v


def _check_dataset_and_device(dataset: str, device: str) -> None:
    """Raise ValueError (a usage error) for an unknown --dataset or an unavailable --device."""
    from dfer_cli.data import DATASETS
    from dfer_cli.device import resolve_device

    if dataset not in DATASETS:
        raise ValueError(f"--dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    try:
        resolve_device(device)
    except ValueError as exc:
        raise ValueError(f"--device: {exc}") from None


def _print_report(report) -> None:
    if report is not None and report.problems:
        for line in report.summary().splitlines():
            typer.echo(f"dfer: {line}", err=True)


@app.command("eval", cls=DferCommand)
def eval_cmd(
    weights: Optional[str] = typer.Option(None, "--weights", "-w", metavar="NAME|PATH|RUN_DIR",
                                          help="Checkpoint name or .safetensors path, or a run folder (its --which "
                                          "checkpoint); with --split 5-fold, a run folder holding fold1..fold5/.",
                                          show_default=DEFAULT_WEIGHTS),
    dataset: str = typer.Option("folder", "--dataset", help=_DATASET_HELP),
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
    fmt = output_format(fmt, as_json)
    as_json = fmt == "json"
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
        _check_dataset_and_device(dataset, device)
    except ValueError as exc:
        fail(str(exc), 2)
    _check_eval_paths(weights, which, split, data_root)
    import torch

    from dfer_cli.checkpoint import CheckpointError
    from dfer_cli.device import resolve_device
    from dfer_cli.evaluation.run import evaluate_folds, evaluate_split, format_pm, plot_confusion, run_checkpoint
    from dfer_cli.metrics import reliability_bins
    from dfer_cli.metrics import Scores

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    kw = dict(batch_size=batch_size, test_clips=test_clips, limit=limit, device=dev, workers=workers, tta=tta)
    try:
        if split == "5-fold":
            summary = evaluate_folds(weights, data_root, which=which, **kw)
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
            return
        for v in votes:
            if not os.path.isfile(v):
                fail(f"--votes {v}: no such file; give a CSV with a 'file' column and one column per class", 1)
        chosen = []
        ev = evaluate_split(run_checkpoint(weights or DEFAULT_WEIGHTS, which), dataset, data_root,
                            split, fold=fold, on_choice=chosen.append, votes=votes or None, **kw)
        scores, report = ev.scores, ev.report
    except CheckpointError as exc:
        fail(str(exc), 1)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), 1)
    _print_report(report)
    choice = chosen[0]
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
        from dfer_cli.evaluation.run import write_predictions

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


@app.command("prepare", cls=DferCommand)
def prepare_cmd(
    src: str = typer.Argument(..., help="Folder of raw videos (any depth), e.g. the AFEW root."),
    dst: str = typer.Argument(..., help="Output folder: one aligned frame folder per video, same tree."),
    size: int = typer.Option(112, "--size", help="Side of the aligned face crops in pixels."),
    template: Optional[str] = typer.Option(None, "--template", help="Alignment template: a name (default, "
                                           "fer2013) or 10 numbers x,y for eyes, nose, mouth corners in unit crop "
                                           "coordinates; use the one you will train with (as train --template)."),
    template_scale: float = typer.Option(1.0, "--template-scale", help="Zoom the alignment template "
                                         "(<1 = more margin); use the value you will train with."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Sample this many frames per second.",
                                       show_default="every frame"),
    detect_size: int = typer.Option(640, "--detect-size", help="Detect on a copy at most this many pixels wide."),
    min_face: float = typer.Option(0.1, "--min-face", help="Smallest face kept: fraction of the shorter side "
                                   "(<= 1), or pixels (> 1)."),
    min_score: float = typer.Option(0.9, "--min-score", min=0.0, max=1.0,
                                    help="Smallest MTCNN detection confidence (0..1) a face is kept with."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help="torch CPU threads.",
                                          show_default="torch's choice"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-video progress lines on stderr."),
) -> None:
    """Detect, track and align the main face of every video under SRC once, writing frame
    folders to DST for training (resumable; DST/manifest.jsonl records each video)."""
    from dfer_cli.preprocess import DEFAULT_TEMPLATE, zoom_template
    from dfer_cli.data.prepare import prepare

    require_finite({"--min-face": min_face, "--min-score": min_score})
    if min_face <= 0:
        fail(f"--min-face {min_face}: must be > 0 (a fraction <= 1 or pixels > 1)", 2)
    try:
        tpl = tuple(tuple(p) for p in _parse_template(template)) if template else DEFAULT_TEMPLATE
    except ValueError as exc:
        fail(str(exc), 2)

    if threads:
        import torch
        torch.set_num_threads(threads)

    def reason(res) -> str:
        # the library's error names the video's full path; the line names it already
        full = os.path.join(src, res.video) + ": "
        return res.error[len(full):] if res.error.startswith(full) else res.error

    def report(res, k, total):
        if not quiet:
            extra = f": {reason(res)}" if res.error else f" ({res.faces}/{res.frames} frames)"
            typer.echo(f"[{k}/{total}] {res.status} {res.video}{extra}", err=True)

    try:
        results = prepare(src, dst, size=size, template=zoom_template(tpl, template_scale), fps=fps,
                          detector_options={"detect_size": detect_size, "min_face": min_face,
                                            "min_score": min_score}, on_video=report)
    except ValueError as exc:
        fail(str(exc), 1)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    typer.echo(json.dumps({"output": dst, **counts}))
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        typer.echo(f"dfer: failed {os.path.join(src, r.video)}: {reason(r)}", err=True)
    if failed:
        raise typer.Exit(1)

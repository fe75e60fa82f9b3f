"""`dfer train` (registered on the app of dfer_cli.cli.app by dfer_cli.cli.main).

These functions only parse flags and format output; the work is in dfer_cli.train.loop.
"""
from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

import typer

from dfer_cli.cli.app import DferCommand, app, fail

DATASET_HELP = "Dataset layout: folder (ROOT/SPLIT/CLASS/CLIP), dfew, ferv39k, afew."


def _r(text: str, name: str) -> dict:
    """help= and show_default= of a flag a --recipe sets: the help text, and as default the
    recipes' values for it ("112, from --recipe" or "cosine (--recipe dfer), ... (--recipe paper)")."""
    from dfer_cli.train.config import RECIPES

    vals = {r: RECIPES[r][name] for r in RECIPES}
    show = {r: ("model config's" if v is None else f"{v:g}" if isinstance(v, float) else str(v)) for r, v in vals.items()}
    if len(set(show.values())) == 1:
        default = f"{next(iter(show.values()))}, from --recipe"
    else:
        default = ", ".join(f"{v} (--recipe {r})" for r, v in show.items())
    return {"help": text, "show_default": default}


def parse_template(text: str) -> list:
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
    dataset: str = typer.Option("folder", "--dataset", help=DATASET_HELP),
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
    from dfer_cli.train.config import TrainConfig, parse_model_opts, recipe_values
    from dfer_cli.train.loop import train

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
            grayscale=grayscale, template=parse_template(template) if template else None,
            template_scale=template_scale, detail_size=detail_size, init=init, freeze_backbone=freeze_backbone,
            motion=motion, rotate=rotate, zoom=zoom, shift=shift,
            erase=erase, mixup=mixup, cutmix=cutmix, nesterov=nesterov,
            label_smoothing=label_smoothing, logit_adjust=logit_adjust, clip_grad=clip_grad,
            teachers=list(teacher), distill=distill, distill_temperature=distill_temperature,
            seed=seed, workers=workers, threads=threads, device=device, precision=precision,
            test_clips=test_clips, output=output, log_every=log_every, **recipe_kw)
        if not resume:
            cfg.validate()
        check_dataset_and_device(dataset, device)
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


def check_dataset_and_device(dataset: str, device: str) -> None:
    """Raise ValueError (a usage error) for an unknown --dataset or an unavailable --device."""
    from dfer_cli.data import DATASETS
    from dfer_cli.device import resolve_device

    if dataset not in DATASETS:
        raise ValueError(f"--dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    try:
        resolve_device(device)
    except ValueError as exc:
        raise ValueError(f"--device: {exc}") from None


def print_data_report(report) -> None:
    if report is not None and report.problems:
        for line in report.summary().splitlines():
            typer.echo(f"dfer: {line}", err=True)



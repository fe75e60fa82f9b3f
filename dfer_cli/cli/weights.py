"""`dfer weights`: list, download, export, calibrate and ensemble checkpoints.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from dfer_cli.cli.app import FORMAT_HELP, JSON_ALIAS_HELP, DferCommand, DferGroup, app, fail, output_format

weights_app = typer.Typer(cls=DferGroup, help="Checkpoints: what is installed where, and explicit downloads.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")



def weights_inventory() -> dict:
    """Found checkpoints, known names not installed, and the search folders (for `weights list`)."""
    from dfer_cli.weights import DEFAULT_WEIGHTS, KNOWN, list_weights, search_dirs, weights_source

    found = []
    for name, path in list_weights():
        known = KNOWN.get(name)
        found.append({"name": name, "path": str(path), "source": weights_source(path),
                      "size_mb": round(path.stat().st_size / 1e6, 2), "default": name == DEFAULT_WEIGHTS,
                      "description": known.description if known else ""})
    names = {w["name"] for w in found}
    missing = [{"name": k.name, "description": k.description, "downloadable": bool(k.url and k.sha256),
                "default": k.name == DEFAULT_WEIGHTS}
               for k in KNOWN.values() if k.name not in names]
    return {"search_dirs": [{"path": str(d), "exists": d.is_dir()} for d in search_dirs()],
            "installed": found, "not_installed": missing}


@weights_app.command("list", cls=DferCommand)
def weights_list(
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="table|json", help=FORMAT_HELP,
                                      show_default="table"),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALIAS_HELP),
) -> None:
    """Checkpoints found (in $DFER_WEIGHTS_DIR, the user cache, the bundled weights/ folder)
    and known names that are not installed."""
    fmt = output_format(fmt, as_json)
    inv = weights_inventory()
    if fmt == "json":
        typer.echo(json.dumps(inv, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title="dfer weights", title_justify="left")
    for col in ("name", "where", "path", "MB", "about"):
        table.add_column(col)
    for w in inv["installed"]:
        table.add_row(w["name"] + (" (default)" if w["default"] else ""), w["source"], w["path"],
                      f"{w['size_mb']:.1f}", w["description"])
    for w in inv["not_installed"]:
        how = f"`dfer weights download {w['name']}`" if w["downloadable"] else "train it (`dfer train`)"
        table.add_row(w["name"] + (" (default)" if w["default"] else ""), "not installed", how, "",
                      w["description"])
    console.print(table)
    dirs = ", ".join(d["path"] + ("" if d["exists"] else " (absent)") for d in inv["search_dirs"])
    console.print(f"searched, in order: {dirs}", markup=False, highlight=False)


@weights_app.command("download", cls=DferCommand)
def weights_download(
    name: str = typer.Argument(..., metavar="SOURCE", help="A published name from `dfer weights list`, or the URL "
                               "(https, http, file) or path of a dfer checkpoint."),
    sha256: Optional[str] = typer.Option(None, "--sha256", metavar="HEX", help="The checkpoint's expected sha256 "
                                         "(needed for a URL or path; a published name has its own)."),
    save_as: Optional[str] = typer.Option(None, "--name", metavar="NAME", help="Install as NAME.safetensors, so "
                                          "that --weights NAME finds it.", show_default="the source's file name"),
    dest: Optional[Path] = typer.Option(None, "--dir", metavar="DIR", help="Folder to write to.",
                                        show_default="the user cache"),
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy is present."),
) -> None:
    """Download a checkpoint, verify its sha256 and dfer header, and put it where `--weights
    NAME` finds it. This is the only command that uses the network."""
    from urllib.parse import urlparse

    from dfer_cli.download import DownloadError, download_weights
    from dfer_cli.weights import KNOWN

    if name not in KNOWN:
        if urlparse(name).scheme.lower() not in ("http", "https", "file") and not os.path.isfile(name):
            fail(f"unknown weights name {name!r}: known names are {', '.join(sorted(KNOWN))}; or give a URL or "
                 "file path of a dfer checkpoint with --sha256", 2)
        if not sha256:
            fail(f"{name}: give the checkpoint's expected sha256 with --sha256 HEX, so that it is verified "
                 "before it is installed", 2)
    bar = None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                       console=Console(stderr=True), transient=True)
    kw = dict(force=force, sha256=sha256, save_as=save_as)
    try:
        if bar is None:
            path = download_weights(name, dest, **kw)
        else:
            with bar:
                task = bar.add_task(name, total=None)
                path = download_weights(name, dest, progress=lambda d, t: bar.update(task, completed=d, total=t),
                                        **kw)
    except DownloadError as e:
        fail(str(e), 1)
    typer.echo(str(path))


@weights_app.command("export", cls=DferCommand)
def weights_export(
    src: str = typer.Argument(..., help="A checkpoint path or name (e.g. runs/x/best.safetensors)."),
    dst: Path = typer.Argument(..., help="The .safetensors file to write."),
    half: bool = typer.Option(True, "--half/--float32", help="Store floating tensors as float16 (half the size)."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, metavar="N", help="Make the exported model take "
                                         "clips of this many frames (e.g. 16 for a model trained on stills at 1).",
                                         show_default="the checkpoint's"),
    prior_shift: float = typer.Option(0.0, "--prior-shift", metavar="ALPHA",
                                      help="Add ALPHA * log(training class prior) to the "
                                      "classifier bias (post-hoc logit adjustment; needs the class counts in "
                                      "the checkpoint's provenance)."),
    detail_size: Optional[int] = typer.Option(None, "--detail-size", min=0, metavar="PX",
                                              help="Reduce video faces to PX x PX before resizing them to the "
                                              "input size: the training images' native side (48 for FER2013); "
                                              "0 removes it.", show_default="the checkpoint's"),
    member: Optional[int] = typer.Option(None, "--member", min=1, metavar="N",
                                         help="Of an ensemble, export only its N-th model (from 1), with the "
                                         "ensemble's prior shift in its classifier bias, e.g. to fine-tune it "
                                         "with `dfer train --init`."),
) -> None:
    """Copy a checkpoint for distribution: model, classes, preprocessing and provenance kept,
    tensors stored in half precision by default; prints the new file's sha256."""
    from dfer_cli.checkpoint import CheckpointError, load_model, save_checkpoint
    from dfer_cli.models.transfer import with_num_frames
    from dfer_cli.weights import file_sha256

    if dst.suffix != ".safetensors":
        fail(f"{dst}: the exported file must end in .safetensors", 2)
    try:
        model = load_model(src)
    except (CheckpointError, FileNotFoundError) as e:
        fail(str(e), 1)
    source = Path(model.checkpoint_path).name
    if member is not None:
        from dfer_cli.models.ensemble import Ensemble, member_model

        if not isinstance(model, Ensemble):
            fail(f"{src}: --member picks a model of an ensemble, and this checkpoint is a single "
                 f"{model.model_name}; leave --member out", 2)
        try:
            model = member_model(model, member - 1)
        except IndexError:
            fail(f"{src}: --member {member}, but the ensemble has {len(model.members)} members; "
                 f"pick 1 to {len(model.members)}", 2)
    provenance = dict(model.provenance)
    provenance["exported_from"] = {"file": source, "dtype": "float16" if half else "float32"}
    if member is not None:
        provenance["exported_from"]["member"] = member
    if prior_shift:
        counts = (provenance.get("data") or {}).get("train_class_counts") or {}
        if sorted(counts) != sorted(model.classes):
            fail(f"{src}: --prior-shift needs the training class counts (provenance data.train_class_counts), "
                 "which this checkpoint does not have", 1)
        from dfer_cli.train.losses import shift_prior

        shift_prior(model, [counts[c] for c in model.classes], prior_shift)
        provenance["exported_from"]["prior_shift"] = prior_shift
    if detail_size is not None:
        if detail_size and not 8 <= detail_size <= model.preprocessing.input_size:
            fail(f"{src}: --detail-size {detail_size} must be from 8 to the model's input size "
                 f"({model.preprocessing.input_size}), or 0 for none", 2)
        model.preprocessing.detail_size = detail_size or None
    if frames is not None and frames != model.config.num_frames:
        provenance["exported_from"]["num_frames"] = model.config.num_frames
        try:
            model = with_num_frames(model, frames)
        except ValueError as e:
            fail(f"{src}: {e}", 1)
    save_checkpoint(dst, model, classes=model.classes, preprocessing=model.preprocessing,
                    provenance=provenance, half=half)
    typer.echo(f"{dst}  {dst.stat().st_size / 1e6:.2f} MB  sha256 {file_sha256(dst)}")


@weights_app.command("calibrate", cls=DferCommand)
def weights_calibrate(
    src: str = typer.Argument(..., help="A checkpoint path or name trained with --votes and --holdout."),
    dst: Path = typer.Argument(..., help="The .safetensors file to write."),
    data_root: Optional[str] = typer.Option(None, "--data-root", envvar="DFER_DATA_ROOT",
                                            help="The dataset root the model was trained on."),
    votes: List[str] = typer.Option([], "--votes", metavar="CSV", help="The vote CSV(s) it was trained with."),
    split: str = typer.Option("train", "--split", help="The training split (a sub-folder of --data-root)."),
    holdout: float = typer.Option(0.1, "--holdout", help="The --holdout fraction it was trained with."),
    holdout_seed: int = typer.Option(0, "--holdout-seed", help="The --holdout-seed it was trained with."),
    half: bool = typer.Option(True, "--half/--float32", help="Store floating tensors as float16 (half the size)."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help="torch CPU threads.",
                                          show_default="torch's choice"),
) -> None:
    """Fit a temperature on the images the model's training held out, so that each
    probability estimates the share of raters who would name that expression, and store it
    in the header (predict and eval apply it; labels do not change). Never fit it on the
    split you report."""
    from dfer_cli.checkpoint import CheckpointError, load_model, save_checkpoint
    from dfer_cli.evaluation.calibrate import calibrate
    from dfer_cli.weights import file_sha256

    if dst.suffix != ".safetensors":
        fail(f"{dst}: the calibrated file must end in .safetensors", 2)
    if not data_root:
        fail("no data: pass --data-root DIR (the dataset the model was trained on)", 2)
    if not votes:
        fail("no votes: pass --votes CSV (the vote file the model was trained with)", 2)
    for v in votes:
        if not os.path.isfile(v):
            fail(f"--votes {v}: no such file; give a CSV with a 'file' column and one column per class", 1)
    if not os.path.isdir(os.path.join(data_root, split)):
        fail(f"--data-root {data_root}: no {split}/ folder in it; pass the dataset root the model was trained on", 1)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        model = load_model(src)
        record = calibrate(model, data_root, votes, split=split, holdout=holdout, seed=holdout_seed)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        fail(f"{src}: {e}" if not str(e).startswith(str(src)) else str(e), 1)
    model.calibration = record
    save_checkpoint(dst, model, classes=model.classes, preprocessing=model.preprocessing,
                    provenance=dict(model.provenance), half=half)
    typer.echo(f"{dst}  temperature {record['temperature']:g}  mean KL on {record['fitted_on']}: "
               f"{record['mean_kl_before']:.4f} -> {record['mean_kl_after']:.4f}  sha256 {file_sha256(dst)}")


@weights_app.command("ensemble", cls=DferCommand)
def weights_ensemble(
    members: List[str] = typer.Argument(..., metavar="CHECKPOINT...", help="Two or more checkpoints (paths or "
                                        "names) of models with the same classes, clip length and face crops."),
    output: Path = typer.Option(..., "--output", "-o", metavar="OUT.safetensors", help="The ensemble file to write."),
    half: bool = typer.Option(True, "--half/--float32", help="Store floating tensors as float16 (half the size)."),
) -> None:
    """Combine checkpoints into one ensemble checkpoint that predicts the mean of their
    probabilities (models of other seeds or input sizes make different mistakes, so the
    mean is more accurate than either). It loads and predicts like any checkpoint; each
    member runs on every face, so it costs the sum of their model times. `dfer weights
    export` then sets its clip length, prior shift or detail size."""
    from dfer_cli.checkpoint import CheckpointError, load_model, save_checkpoint
    from dfer_cli.models.ensemble import combine
    from dfer_cli.weights import file_sha256

    if output.suffix != ".safetensors":
        fail(f"{output}: the ensemble file must end in .safetensors", 2)
    if len(members) < 2:
        fail(f"an ensemble needs at least 2 checkpoints, got {len(members)}; name each member", 2)
    models = []
    for spec in members:
        try:
            models.append(load_model(spec))
        except (CheckpointError, FileNotFoundError) as e:
            fail(str(e), 1)
    try:
        ensemble = combine(models, names=list(members))
    except ValueError as e:
        fail(str(e), 1)
    save_checkpoint(output, ensemble, classes=ensemble.classes, preprocessing=ensemble.preprocessing,
                    provenance=ensemble.provenance, half=half, sampling=ensemble.sampling)
    sizes = " + ".join(f"{m.config.input_size} px" for m in ensemble.members)
    typer.echo(f"{output}  {len(models)} members ({sizes})  {output.stat().st_size / 1e6:.2f} MB  "
               f"sha256 {file_sha256(output)}")

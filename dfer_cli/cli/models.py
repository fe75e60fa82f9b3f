"""`dfer models`: every registered model with its size and cost, and the checkpoints at
hand with the recipe, window and frame sampling each was trained with (registered on the app)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from dfer_cli.cli.app import FORMAT_HELP, JSON_ALIAS_HELP, DferCommand, app, output_format

GROWTH_FRAMES = (8, 16, 32, 64)


def models_report(frames: tuple[int, ...] = GROWTH_FRAMES, clip_frames: int = 16) -> dict:
    """Parameters, FLOPs and the window used of every registered model at its default
    (paper) config."""
    from dfer_cli.models import available_models, describe, get_config
    from dfer_cli.models.cost import model_cost

    out = []
    for name in available_models():
        base = model_cost(name, clip_frames)
        growth = [base if t == clip_frames else model_cost(name, t) for t in frames]
        cfg = get_config(name, num_frames=clip_frames)
        out.append({
            "model": name,
            "description": describe(name),
            "config": {k: v for k, v in cfg.to_dict().items()
                       if k in ("input_size", "stem", "dim", "depth", "heads", "mlp_ratio", "block", "window")},
            # the LOGO window the model uses (config.window clamped to the grid); None when
            # the block kind has no windows
            "window": list(cfg.effective_window()) if cfg.block == "logo" else None,
            "params": base["params"],
            "gflops": base["gflops"],
            "attention_gflops": base["attention_gflops"],
            "mixing_gflops": base["mixing_gflops"],
            "backbone_gflops": base["backbone_gflops"],
            "growth": [{k: g[k] for k in ("num_frames", "gflops", "attention_gflops", "mixing_gflops")}
                       for g in growth],
        })
    return {"clip_frames": clip_frames, "flops_unit": "GFLOPs per clip (1 multiply-add = 2 FLOPs)",
            "models": out}


def checkpoint_info(path: str | Path) -> dict:
    """What `dfer models` says about one checkpoint file: its model, the recipe it was trained
    with (``provenance.recipe.recipe``, written by `dfer train` since --recipe exists;
    "unknown" for older checkpoints), the LOGO window it uses (its config's window clamped to
    its token grid; None for other blocks), its frames per clip and frame sampling. Raises
    CheckpointError (one line) for a file that is not a readable dfer checkpoint."""
    from dfer_cli.checkpoint import CheckpointError, read_metadata
    from dfer_cli.models import get_config
    from dfer_cli.models.backbone import grid_size
    from dfer_cli.models.ensemble import ENSEMBLE

    meta = read_metadata(path)
    members = meta["config"]["members"] if meta["model"] == ENSEMBLE else [meta]
    try:
        cfgs = [get_config(m["model"], **{**m["config"], "backbone_weights": None}) for m in members]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config does not build a {meta['model']} ({e}); upgrade dfer") from None
    recorded = (meta.get("provenance") or {}).get("recipe")
    recipe = recorded.get("recipe") if isinstance(recorded, dict) else None
    described = [{"model": m["model"], "input_size": c.input_size, "block": c.block,
                  "window": list(c.effective_window()) if c.block == "logo" else None,
                  "grid": [c.num_frames, *[grid_size(c.input_size, c.stem, c.trunk_layers)] * 2]}
                 for m, c in zip(members, cfgs)]
    info = {
        "path": str(path), "model": meta["model"],
        "recipe": recipe if isinstance(recipe, str) and recipe else "unknown",
        "block": described[0]["block"], "window": described[0]["window"], "grid": described[0]["grid"],
        "frames": cfgs[0].num_frames, "sampling": meta["sampling"],
        "input_size": max(c.input_size for c in cfgs),
        "temperature": float((meta.get("calibration") or {}).get("temperature", 1.0)),
        "calibration": meta.get("calibration"),
    }
    if meta["model"] == ENSEMBLE:  # window and grid above are the first member's
        info["members"] = described
    return info


def checkpoint_paths(specs: list[str]) -> list[tuple[str, str | None]]:
    """(label, path or None) per checkpoint to describe: with no `specs`, every installed
    checkpoint (`dfer weights list`); else each spec: a weights name, a .safetensors file, or
    a run folder (its best and last checkpoints). None stands for a spec that names nothing."""
    from dfer_cli.weights import find_weights, list_weights

    if not specs:
        return [(name, str(p)) for name, p in list_weights()]
    out: list[tuple[str, str | None]] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_dir():
            found = [q for q in (p / "best.safetensors", p / "last.safetensors") if q.is_file()]
            found = found or sorted(p.glob("*.safetensors"))
            out += [(str(q), str(q)) for q in found] or [(spec, None)]
            continue
        try:
            out.append((spec, str(find_weights(spec))))
        except FileNotFoundError:
            out.append((spec, None))
    return out


# what a model without LOGO windows attends over, by block kind (models/blocks.py, former.POOL)
_NO_WINDOW = {"divided": "none (frame, then time)", "joint": "none (full space-time attention)",
              "space": "none (each frame)", "pool": "none (maps averaged)"}


def _window_text(c: dict) -> str:
    if c["window"] is None:
        return _NO_WINDOW.get(c.get("block"), "none (full attention)")
    return f"{'x'.join(map(str, c['window']))} of {'x'.join(map(str, c['grid']))}"


@app.command("models", cls=DferCommand)
def models_cmd(
    checkpoints: List[str] = typer.Argument(None, metavar="CHECKPOINT...",
                                            help="Checkpoints to describe: weights names, .safetensors files or "
                                                 "run folders.", show_default="every installed checkpoint"),
    fmt: str = typer.Option(None, "--format", "-f", metavar="table|json", help=FORMAT_HELP, show_default="table"),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALIAS_HELP),
) -> None:
    """List the registered models: parameters, GFLOPs per 16-frame clip (total and
    attention), the LOGO window used, and how the cost grows with clip length (T = 8, 16,
    32, 64); then the checkpoints (installed, or those named) with the recipe each was
    trained with ("unknown" before dfer recorded it), the window it uses and its frame
    sampling."""
    from dfer_cli.checkpoint import CheckpointError

    fmt = output_format(fmt, as_json)
    named = bool(checkpoints)
    ckpts, problems = [], []
    for label, path in checkpoint_paths(list(checkpoints or [])):
        if path is None:
            problems.append(f"{label}: no such checkpoint, run folder or weights name (`dfer weights list` shows "
                            "the installed ones)")
            continue
        try:
            ckpts.append({"name": Path(label).stem if label == path else label, **checkpoint_info(path)})
        except CheckpointError as e:
            problems.append(str(e))
    report = models_report()
    report["checkpoints"] = ckpts
    if fmt == "json":
        typer.echo(json.dumps(report, indent=2))
        _end(problems, named)
        return
    from rich.console import Console

    console = Console()
    _print_models(console, report)
    _print_checkpoints(console, ckpts, named, bool(problems))
    _end(problems, named)


def _print_models(console, report: dict) -> None:
    from rich.table import Table

    from dfer_cli.models.backbone import grid_size

    t = Table(title=f"dfer models (paper config: 112 px, {report['clip_frames']} frames per clip)")
    for col in ("model", "params (M)", "GFLOPs", "attention GFLOPs", "of which QK/AV"):
        t.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for m in report["models"]:
        t.add_row(m["model"], f"{m['params'] / 1e6:.2f}", f"{m['gflops']:.1f}",
                  f"{m['attention_gflops']:.2f}", f"{m['mixing_gflops']:.2f}")
    console.print(t)
    for m in report["models"]:
        console.print(f"  {m['model']}: {m['description']}", highlight=False)
        if m["window"]:  # the window used, after clamping to the grid
            g = grid_size(m["config"]["input_size"], m["config"]["stem"])
            console.print(f"    window used: {'x'.join(map(str, m['window']))} (frames x rows x cols) "
                          f"of the {report['clip_frames']}x{g}x{g} token grid", highlight=False)
    frames_first = report["models"][0]["growth"][0]["num_frames"]
    frames_last = report["models"][0]["growth"][-1]["num_frames"]
    g = Table(title="cost growth with clip length: total GFLOPs (attention QK/AV GFLOPs)")
    g.add_column("model", no_wrap=True)
    for row in report["models"][0]["growth"]:
        g.add_column(f"T={row['num_frames']}", justify="right")
    g.add_column(f"QK/AV T={frames_last} vs T={frames_first}", justify="right")
    for m in report["models"]:
        cells = [f"{r['gflops']:.1f} ({r['mixing_gflops']:.2f})" for r in m["growth"]]
        first, last = m["growth"][0]["mixing_gflops"], m["growth"][-1]["mixing_gflops"]
        g.add_row(m["model"], *cells, f"{last / first:.1f}x" if first else "-")
    console.print(g)
    console.print("FLOPs counted by torch.utils.flop_counter on the meta device; "
                  "1 multiply-add = 2 FLOPs; the ResNet-18 trunk is "
                  f"{report['models'][0]['backbone_gflops']:.1f} GFLOPs of each total.")


def _print_checkpoints(console, ckpts: list[dict], named: bool, problems: bool) -> None:
    from rich.table import Table

    c = Table(title="checkpoints" + ("" if named else " installed (dfer weights list)"), title_justify="left")
    for col in ("checkpoint", "model", "recipe", "window used", "frames", "sampling", "input px"):
        c.add_column(col, no_wrap=col != "checkpoint")
    for k in ckpts:
        model, window, size = k["model"], _window_text(k), str(k["input_size"])
        if "members" in k:  # an ensemble: one entry per member
            model = "\n".join(["ensemble of", *(f"  {m['model']}" for m in k["members"])])
            window = "\n".join(["", *(_window_text(m) for m in k["members"])])
            size = "\n".join(["", *(str(m["input_size"]) for m in k["members"])])
        c.add_row(k["name"], model, k["recipe"], window, str(k["frames"]), k["sampling"], size)
    if ckpts:
        console.print(c)
        console.print('recipe: the --recipe of the `dfer train` run ("unknown": trained before dfer recorded it); '
                      "window used: frames x rows x cols of the token grid each LOGO attention sees.",
                      highlight=False, markup=False)
        for k in ckpts:
            cal = k["calibration"]
            if cal:
                console.print(f"{k['name']}: probabilities are softmax(output / {k['temperature']:g}), a temperature "
                              f"fitted to raters' votes on {cal.get('fitted_on', 'held-out images')}",
                              highlight=False, markup=False)
    elif not problems:
        console.print("no checkpoints installed (`dfer weights list`)", highlight=False, markup=False)


def _end(problems: list[str], named: bool) -> None:
    """Report unreadable checkpoints on stderr; exit 1 when one the user named is among them."""
    for p in problems:
        typer.echo(f"dfer: {p}", err=True)
    if problems and named:
        raise typer.Exit(1)

"""`dfer models`: every registered model with its size and cost (registered on the app)."""
from __future__ import annotations

import json

import typer

from dfer_cli.cli import app

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


@app.command("models")
def models_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """List the registered models: parameters, GFLOPs per 16-frame clip (total and
    attention), the LOGO window used, and how the cost grows with clip length (T = 8, 16,
    32, 64)."""
    report = models_report()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from dfer_cli.models.backbone import grid_size

    console = Console()
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

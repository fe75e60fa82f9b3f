"""`dfer prepare`: turn raw videos into aligned face-frame folders for training.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import typer

from dfer_cli.cli.app import DferCommand, app, fail, require_finite
from dfer_cli.cli.train import parse_template


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
    from dfer_cli.data.prepare import prepare
    from dfer_cli.preprocess import DEFAULT_TEMPLATE, zoom_template

    require_finite({"--min-face": min_face, "--min-score": min_score})
    if min_face <= 0:
        fail(f"--min-face {min_face}: must be > 0 (a fraction <= 1 or pixels > 1)", 2)
    try:
        tpl = tuple(tuple(p) for p in parse_template(template)) if template else DEFAULT_TEMPLATE
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

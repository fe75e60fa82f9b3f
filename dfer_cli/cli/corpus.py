"""`dfer predict --output-dir`: a resumable corpus run (locally or on Ray), its flags checked
and its errors and Ctrl-C turned into messages and exit codes.
"""
from __future__ import annotations

import re
import sys

from dfer_cli.cli.app import EXIT_INTERRUPTED
from dfer_cli.corpus.errors import CorpusError, CorpusStopped
from dfer_cli.corpus.progress import CorpusInterrupted
from dfer_cli.corpus.run import run_corpus

RAY_ADDRESS = re.compile(r"(local|auto|ray://\S+|[\w.\-]+:\d+)")


def check_ray_address(value: str) -> str:
    """`--ray` alone gives "local"; `--ray-address` "auto", HOST:PORT or ray://HOST:PORT."""
    if not RAY_ADDRESS.fullmatch(value):
        raise CorpusError(f"--ray-address {value}: not a Ray address; use auto to join the running cluster, "
                          "HOST:PORT or ray://HOST:PORT, or leave --ray-address out to start a local Ray")
    return value




def corpus_command(items, *, output_dir, fmt, fmt_given: bool, output, annotate, plot, shard, force, ray,
                   workers, gpus_per_worker, weights, device, threads, quiet, **options) -> None:
    """`dfer predict ... --output-dir OUT [--shard K/N] [--ray [ADDRESS]]`: run the corpus, print
    the summary, and exit (0; 1 when a video failed; 2 for a usage error; 130 on Ctrl-C)."""
    import typer

    from dfer_cli.cli.app import fail

    if output_dir is None:
        for flag, given in (("--shard", shard is not None), ("--ray", ray is not None), ("--force", force)):
            if given:
                fail(f"{flag} works on an output folder: add --output-dir OUT", 2)
        return
    if output is not None:
        fail("--output and --output-dir: choose one (--output-dir writes one file per video)", 2)
    if annotate or plot:
        fail("--annotate / --plot are not available with --output-dir; run them on single videos", 2)
    if not fmt_given:
        fmt = "jsonl"
    try:
        summary = run_corpus(items, output_dir, weights=weights, fmt=fmt, shard=shard, force=force,
                             ray=check_ray_address(ray) if ray is not None else None, workers=workers,
                             gpus_per_worker=gpus_per_worker, device=device, threads=threads,
                             progress=not quiet and sys.stderr.isatty(), **options)
    except CorpusError as e:
        msg = str(e)
        code = 1 if isinstance(e, CorpusStopped) or msg.startswith(("no usable checkpoint", "cannot use checkpoint")) else 2
        fail(msg, code)
    except CorpusInterrupted as e:
        typer.echo(f"dfer: {e.summary.interrupted_line(output_dir)}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # before the first video: planning, loading the model
        typer.echo(f"dfer: interrupted before any video was processed; {output_dir} is as it was "
                   "(rerun the same command to start)", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not quiet:
        typer.echo(f"dfer: {summary.line(output_dir)}", err=True)
    raise typer.Exit(1 if summary.failed else 0)

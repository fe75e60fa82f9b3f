"""The CLI as people meet it, run as a separate process in a pipe, redirected to a file and
under a pseudo-terminal: help without type tags and with one default style, usage errors
as one line (exit 2) when stderr is not a terminal, `dfer eval`'s missing paths, "1 clip"
grammar, `--format` / `--json` on every command that prints data, `dfer models`' checkpoint
table, and `dfer predict`'s progress (video k of n, ETA, real-time factor) only on a
terminal and never with --quiet.

Predict runs use a tiny checkpoint (1 block, 32 px) and a 2 s synthetic video of the
credited face, so each costs a few seconds even on a busy machine.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dfer_cli.cli.main import app

try:
    import pty
except ImportError:  # Windows
    pty = None

ROOT = Path(__file__).resolve().parent.parent
DFER = [sys.executable, "-m", "dfer_cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm-256color", "COLUMNS": "200"}
needs_pty = pytest.mark.skipif(pty is None, reason="needs pseudo-terminals (the pty module)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def run(args, *, stderr_to="pipe", tmp_path=None, timeout=600):
    """Run `dfer ARGS` with stdout in a pipe and stderr in a pipe ("pipe") or a file
    ("file"): (exit status, stdout, stderr)."""
    if stderr_to == "file":
        err_path = tmp_path / "stderr.txt"
        with open(err_path, "wb") as err:
            p = subprocess.run(DFER + args, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=err, timeout=timeout)
        return p.returncode, p.stdout.decode(), err_path.read_text()
    p = subprocess.run(DFER + args, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def run_on_terminal(args, stdout_path, timeout=600):
    """Run `dfer ARGS` with stderr on a pseudo-terminal (as typed in a terminal) and stdout
    redirected to `stdout_path`: (exit status, what the terminal showed, without colours
    and cursor moves; carriage returns as newlines)."""
    master, slave = pty.openpty()
    with open(stdout_path, "wb") as out:
        proc = subprocess.Popen(DFER + args, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL, stdout=out, stderr=slave)
    os.close(slave)
    got = b""
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            proc.kill()
            pytest.fail(f"dfer {' '.join(args)} still running after {timeout} s")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the process closed its end
            data = b""
        if not data:
            break
        got += data
    os.close(master)
    rc = proc.wait(timeout=60)
    return rc, ANSI.sub("", got.decode("utf-8", "replace")).replace("\r", "\n")


# --------------------------------------------------------------------------- help

def all_commands() -> list[list[str]]:
    """Every command and subcommand of `dfer`, as argument lists: [], ["predict"], ["weights", "list"], ..."""
    import typer.main

    out = []

    def walk(cmd, path):
        out.append(path)
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, path + [name])

    walk(typer.main.get_command(app), [])
    return out


def test_every_command_is_covered():
    names = {" ".join(c) for c in all_commands()}
    assert {"", "predict", "train", "eval", "prepare", "models", "env", "weights", "weights list",
            "weights download", "weights export"} <= names


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: " ".join(c) or "dfer")
def test_help_has_no_type_tags_and_one_default_style(command):
    rc, out, err = run([*command, "--help"])
    assert rc == 0 and err == "", err
    assert f"Usage: dfer {' '.join(command)}".rstrip() in out
    assert not re.search(r"<[a-zA-Z][\w ,\[\]]*>", out), re.search(r".*<[a-zA-Z][\w ,\[\]]*>.*", out).group(0)
    assert not re.search(r"\b(BOOLEAN|BOOL)\b", out)
    # defaults are all "[default: X]": no "(default: X)", "Default from ...", nor typer's "[default: (X)]"
    assert "(default:" not in out.lower() and "default from" not in out.lower() and "[default: (" not in out


@pytest.mark.parametrize("group", [[], ["weights"]], ids=["dfer", "dfer weights"])
def test_command_lists_wrap_each_summary_as_one_paragraph(group):
    """The command list shows each docstring's first paragraph, wrapped greedily at the
    panel's width: a line ends early only where the next word would not fit (typer kept the
    docstring's own line breaks there, leaving ragged half lines)."""
    import typer

    from dfer_cli.cli.app import one_paragraph

    rc, out, _ = run([*group, "--help"])
    assert rc == 0
    panel = out[out.index("─ Commands ─"):].splitlines()[1:]
    panel = panel[:next(i for i, line in enumerate(panel) if line.startswith("╰"))]
    rows, col = {}, None
    for line in panel:
        inner = line[1:line.rindex("│")].rstrip()
        m = re.match(r" (\S+)(\s+)(\S.*)$", inner)
        if m and (col is None or not inner[:col].strip() == ""):
            name, col = m.group(1), m.start(3)
            rows[name] = [m.group(3)]
        else:
            rows[name].append(inner[col:].strip())
    width = len(panel[0][1:panel[0].rindex("│")]) - col - 1   # the description column (one space of padding)
    cli = typer.main.get_command(app)
    cmd = cli.commands[group[0]] if group else cli
    assert set(rows) == set(cmd.commands)
    for name, lines in rows.items():
        assert " ".join(lines) == one_paragraph(cmd.commands[name].help), name
        for this, nxt in zip(lines, lines[1:]):
            assert len(this) + 1 + len(nxt.split()[0]) > width, f"{name}: {this!r} ends early"


def test_help_of_predict_shows_flags_bare_and_values_by_name():
    rc, out, _ = run(["predict", "--help"])
    rows = {m.group(1): m.group(2) for m in re.finditer(r"│\s*(--[\w-]+)(?:\s+-\w)?\s{2,}(\S+)", out)}
    assert rows["--all-faces"] == "Classify"         # a flag: no type word between flag and help
    assert rows["--quiet"] == "No"
    assert rows["--format"] == "table|json|jsonl|csv"
    assert rows["--output"] == "FILE" and rows["--threads"] == "N" and rows["--window"] == "NUMBER"
    assert "[default: 2.0]" in out and "[default: 0.1]" in out and "[default: 640]" in out


@needs_pty
def test_help_on_a_terminal_has_no_type_tags(tmp_path):
    rc, shown = run_on_terminal(["eval", "--help"], tmp_path / "out")
    text = (tmp_path / "out").read_text()
    assert rc == 0 and "--which" in text
    assert not re.search(r"<[a-zA-Z][\w ,\[\]]*>", text + shown)


# --------------------------------------------------------------------------- usage errors

@pytest.mark.parametrize("stderr_to", ["pipe", "file"])
def test_unknown_option_is_one_line_with_a_hint(stderr_to, tmp_path):
    rc, out, err = run(["predict", "--foo", "x.mp4"], stderr_to=stderr_to, tmp_path=tmp_path)
    assert rc == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("dfer predict: no such option --foo")
    assert line.endswith("(try: dfer predict --help)")
    assert "╭" not in err and "Usage:" not in err


@pytest.mark.parametrize("args, expected", [
    (["predict", "x.mp4", "--window", "0"], r"dfer predict: invalid value for --window: .*0\.01"),
    (["predict"], r"dfer predict: missing argument 'INPUT\.\.\.'"),
    (["eval", "--batch-size", "many"], r"dfer eval: invalid value for --batch-size: .*integer"),
    (["weights", "download"], r"dfer weights download: missing argument 'SOURCE'"),
    # usage errors found by the command itself have the same form
    (["predict", "x.mp4", "--format", "xml"], r"dfer predict: --format xml: expected one of table, json, jsonl, csv"),
    (["predict", "examples/single_face_smile.mp4", "--annotate", "out.xyz"], r"dfer predict: --annotate out\.xyz: unknown video container.*"),
    (["eval"], r"dfer eval: no data: pass --data-root DIR.*"),
    (["predict", "examples/single_face_smile.mp4", "--stride", "inf"], r"dfer predict: --stride inf: expected a finite number"),
    (["predict", "examples/single_face_smile.mp4", "--min-face", "nan"], r"dfer predict: --min-face nan: expected a finite number"),
    (["prepare", "a", "b", "--min-face", "inf"], r"dfer prepare: --min-face inf: expected a finite number"),
    (["weights", "export", "a", "b.x"], r"dfer weights export: b\.x: the exported file must end in \.safetensors"),
    (["frobnicate"], r"dfer: no such command 'frobnicate'"),
    (["--frobnicate"], r"dfer: no such option --frobnicate"),
])
def test_usage_errors_in_a_pipe(args, expected):
    rc, out, err = run(args)
    assert rc == 2 and out == ""
    (line,) = err.splitlines()
    assert re.fullmatch(expected + r" \(try: dfer.* --help\)", line), line


def test_device_without_cuda_is_a_usage_error_of_the_command():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, out, err = run(["predict", "examples/single_face_smile.mp4", "--device", "cuda"])
    assert rc == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("dfer predict: --device: device 'cuda' requested but CUDA is not available")
    assert line.endswith("(try: dfer predict --help)")


def test_predict_help_lists_every_exit_status():
    rc, out, _ = run(["predict", "--help"])
    text = " ".join(out.split())
    for code in ("0 every input done", "1 some input failed", "2 usage error", "130 interrupted",
                 "141 stdout closed", "143 terminated"):
        assert code in text, code


@needs_pty
def test_usage_error_on_a_terminal_keeps_the_framed_message(tmp_path):
    rc, shown = run_on_terminal(["predict", "--foo", "x.mp4"], tmp_path / "out")
    assert rc == 2 and "No such option: --foo" in shown and "╭" in shown and "dfer predict --help" in shown


# --------------------------------------------------------------------------- eval's paths

def test_eval_names_a_missing_path_and_the_fix_in_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    run_dir = tmp_path / "runs" / "mine"

    def line_of(args, code):
        res = CliRunner().invoke(app, ["eval", *args])
        assert res.exit_code == code, (args, res.output)
        (line,) = res.stderr.splitlines()
        return line

    assert line_of(["-w", str(run_dir), "--data-root", str(data)], 1).startswith(
        f"dfer: --weights {run_dir}: no such file or folder; pass a .safetensors checkpoint, a run folder")
    assert line_of(["-w", str(run_dir), "--data-root", str(data), "--dataset", "dfew", "--split", "5-fold"], 1) == (
        f"dfer: --weights {run_dir}: no such run folder; --split 5-fold needs the folder holding fold1/ .. fold5/ "
        f"(train each fold with --fold K --output {run_dir}/foldK)")
    assert line_of(["--data-root", str(tmp_path / "nodata")], 1) == (
        f"dfer: --data-root {tmp_path / 'nodata'}: no such folder; pass the dataset's root folder "
        "(or set DFER_DATA_ROOT)")
    # a flag missing is a usage error (2); a path that is not there, 1
    assert line_of(["--dataset", "dfew", "--split", "5-fold", "--data-root", str(data)], 2).startswith(
        "dfer eval: --split 5-fold needs --weights RUN_DIR")
    run_dir.mkdir(parents=True)
    assert line_of(["-w", str(run_dir), "--data-root", str(data)], 1) == (
        f"dfer: --weights {run_dir}: a folder without best.safetensors; pass a run folder written by "
        "`dfer train --output`, or a .safetensors checkpoint")
    (run_dir / "last.safetensors").write_bytes(b"x")
    assert line_of(["-w", str(run_dir), "--data-root", str(data)], 1) == (
        f"dfer: --weights {run_dir}: a folder without best.safetensors; add --which last (it has last.safetensors)")


def test_eval_missing_run_dir_in_a_pipe(tmp_path):
    rc, out, err = run(["eval", "-w", str(tmp_path / "no_run"), "--data-root", str(tmp_path)])
    assert rc == 1 and out == ""
    assert err.splitlines() == [f"dfer: --weights {tmp_path / 'no_run'}: no such file or folder; pass a "
                                ".safetensors checkpoint, a run folder written by `dfer train --output`, or a name "
                                "from `dfer weights list`"]


# --------------------------------------------------------------------------- --format / --json

def test_format_json_and_its_json_alias_agree(monkeypatch, tmp_path):
    monkeypatch.setenv("DFER_WEIGHTS_DIR", str(tmp_path))
    r = CliRunner()
    for cmd in (["env"], ["weights", "list"]):
        a, b = r.invoke(app, [*cmd, "--format", "json"]), r.invoke(app, [*cmd, "--json"])
        assert a.exit_code == b.exit_code == 0, a.output + b.output
        assert json.loads(a.stdout) == json.loads(b.stdout)
        c = r.invoke(app, [*cmd, "-f", "table"])
        assert c.exit_code == 0 and not c.stdout.lstrip().startswith("{")
        bad = r.invoke(app, [*cmd, "--json", "--format", "table"])
        assert bad.exit_code == 2
        where = "dfer " + " ".join(cmd)
        assert bad.stderr.strip() == (f"{where}: --json is --format json; it cannot go with --format table "
                                      f"(try: {where} --help)")
        bad = r.invoke(app, [*cmd, "--format", "xml"])
        assert bad.exit_code == 2 and bad.stderr.strip() == (f"{where}: --format xml: expected one of table, json "
                                                             f"(try: {where} --help)")


# --------------------------------------------------------------------------- grammar

def test_one_clip_one_track_in_csv_and_table():
    from dfer_cli.labels import CLASSES
    from dfer_cli.results import ClipPrediction, TrackSummary, VideoResult
    from dfer_cli.writers import counted, make_writer, summary_line

    assert [counted(n, "clip") for n in (0, 1, 2)] == ["0 clips", "1 clip", "2 clips"]
    probs = {c: (0.7 if c == "happy" else 0.05) for c in CLASSES}
    clip = ClipPrediction("one.mp4", 0, 0.0, 2.0, [1, 2, 3, 4], probs, "happy", 0.7)
    result = VideoResult("one.mp4", 2.0, "tiny", list(CLASSES), [clip],
                         [TrackSummary(0, 0.0, 2.0, 1, "happy", probs)])
    buf = io.StringIO()
    w = make_writer("csv", buf, CLASSES)
    w.clip(clip)
    w.video(result)
    w.close()
    (track,) = [row for row in csv.DictReader(io.StringIO(buf.getvalue())) if row["type"] == "track"]
    assert track["status"] == "1 clip"
    assert ", 1 face track; track 0 0.00–2.00 s: happy (0.70, 1 clip)" in summary_line(result)


# --------------------------------------------------------------------------- dfer models

def test_models_shows_each_checkpoints_recipe_window_and_sampling(tmp_path, monkeypatch):
    import functools

    import torch

    from dfer_cli.checkpoint import save_checkpoint
    from dfer_cli.cli import models as cli_models
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    # the FLOP table is test_models' subject; one clip length keeps this test quick
    monkeypatch.setattr(cli_models, "models_report", functools.partial(cli_models.models_report, frames=(16,)))
    torch.manual_seed(0)
    model = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=8, window=(2, 7, 7))
    pre = Preprocessing(input_size=32, num_frames=8)
    new = save_checkpoint(tmp_path / "run" / "best.safetensors", model, classes=CLASSES, preprocessing=pre,
                          provenance={"recipe": {"recipe": "paper", "epochs": 1}}, sampling="segments8x2")
    old = save_checkpoint(tmp_path / "old.safetensors", model, classes=CLASSES, preprocessing=pre,
                          provenance={"recipe": {"epochs": 1}})  # a run from before --recipe was recorded
    r = CliRunner().invoke(app, ["models", str(tmp_path / "run"), str(old), "--format", "json"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    got = {Path(c["path"]).name: c for c in json.loads(r.stdout)["checkpoints"]}
    assert got[new.name]["recipe"] == "paper" and got[new.name]["sampling"] == "segments8x2"
    assert got[old.name]["recipe"] == "unknown" and got[old.name]["sampling"] == "uniform"
    # 32 px -> a 2x2 token grid: the 2x7x7 window is clamped to 2x2x2
    assert got[new.name]["window"] == [2, 2, 2] and got[new.name]["grid"] == [8, 2, 2]

    r = CliRunner().invoke(app, ["models", str(new), str(old)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in r.stdout.splitlines()
            if line.count("│") == 8 and "safetensors" not in line and ("best" in line or "old" in line)]
    assert [row[2:6] for row in rows] == [["paper", "2x2x2 of 8x2x2", "8", "segments8x2"],
                                          ["unknown", "2x2x2 of 8x2x2", "8", "uniform"]], r.stdout

    r = CliRunner().invoke(app, ["models", str(tmp_path / "nothing.safetensors"), "--json"])
    assert r.exit_code == 1 and f"dfer: {tmp_path / 'nothing.safetensors'}: no such checkpoint" in r.stderr


# --------------------------------------------------------------------------- predict's progress

@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A tiny checkpoint and two 2 s videos of the credited face (a batch of two)."""
    import torch
    from PIL import Image
    from synth import face_image, make_video

    from dfer_cli.checkpoint import save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    d = tmp_path_factory.mktemp("batch")
    torch.manual_seed(0)
    model = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=8)
    ckpt = save_checkpoint(d / "tiny.safetensors", model, classes=CLASSES,
                           preprocessing=Preprocessing(input_size=32, num_frames=8), provenance={"test": True})
    small = np.asarray(Image.fromarray(face_image()).resize((240, 136)))
    videos = [make_video(d / f"{name}.mp4", [np.roll(small, i, axis=1) for i in range(16)], fps=8)
              for name in ("first", "second")]
    args = ["predict", *map(str, videos), "-w", str(ckpt), "--window", "1", "--stride", "0.5",
            "--threads", "1", "--device", "cpu", "--format", "jsonl"]
    return args, d


SPEED = re.compile(r"dfer: 2 videos, (\d+\.\d) s of video processed in (\d+\.\d) s \((\d+\.\d)x real time\); "
                   r"start-up (\d+\.\d) s")


def records_only(text: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["type"] for r in records if r["type"] == "video"] == ["video", "video"]
    return records


@needs_pty
def test_progress_on_a_terminal_counts_videos_shows_an_eta_and_the_real_time_factor(batch, tmp_path):
    args, _ = batch
    rc, shown = run_on_terminal(args, tmp_path / "out.jsonl")
    assert rc == 0, shown[-2000:]
    records_only((tmp_path / "out.jsonl").read_text())   # stdout: records, nothing else
    assert "video 1 of 2  first.mp4" in shown and "video 2 of 2  second.mp4" in shown, shown[-2000:]
    assert "ETA" in shown and '"type"' not in shown
    lines = [line.strip() for line in shown.splitlines() if line.strip()]
    assert lines[-2] == "dfer: 2 of 2 inputs done"
    m = SPEED.fullmatch(lines[-1])
    assert m, lines[-1]
    video_s, wall, factor, startup = map(float, m.groups())
    assert video_s == pytest.approx(4.0, abs=0.1)
    assert startup > 0.3     # imports and model load are not counted as processing
    # each figure is shown to 0.1: the factor must fit the true times those roundings allow
    # (a run of half a second on a fast machine is 0.45-0.55 s, 7.2x-9.0x for 4 s of video)
    lo = (video_s - 0.05) / (wall + 0.05) - 0.05
    hi = (video_s + 0.05) / max(wall - 0.05, 1e-3) + 0.05
    assert lo <= factor <= hi, (video_s, wall, factor)


@needs_pty
def test_quiet_on_a_terminal_shows_nothing(batch, tmp_path):
    args, _ = batch
    rc, shown = run_on_terminal([*args, "--quiet"], tmp_path / "out.jsonl")
    assert rc == 0, shown[-2000:]
    records_only((tmp_path / "out.jsonl").read_text())
    assert shown.strip() == ""


def test_no_progress_when_stderr_is_a_pipe(batch):
    args, _ = batch
    rc, out, err = run(args)
    assert rc == 0, err[-2000:]
    records_only(out)
    assert "video 1 of 2" not in err and "ETA" not in err and "real time" not in err and "\x1b" not in err
    assert err.splitlines() == ["dfer: 2 of 2 inputs done"]

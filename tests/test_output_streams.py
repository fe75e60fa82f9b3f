"""`dfer predict` as a separate process, with stdout and stderr on terminals, files and
pipes: records only ever go to stdout and the progress bar only to stderr; and the jq
recipes of docs/predict.md run on its real output.

Each run classifies examples/single_face_smile.mp4 (2.4 s, one 2 s clip) with the bundled
weights on one thread: a few seconds each, so the runs are few. The terminals are
pseudo-terminals (`pty.openpty()`), one per stream, read here while the process runs.
"""
from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfer_cli.labels import CLASSES
from dfer_cli.results import ClipPrediction, TrackSummary, VideoResult
from dfer_cli.weights import DEFAULT_WEIGHTS, bundled_dir
from dfer_cli.writers import make_writer

try:
    import pty
except ImportError:  # Windows
    pty = None

ROOT = Path(__file__).resolve().parent.parent
VIDEO = "examples/single_face_smile.mp4"
PREDICT = [sys.executable, "-m", "dfer_cli", "predict", VIDEO, "--threads", "1", "--device", "cpu",
           "--weights", str(bundled_dir() / f"{DEFAULT_WEIGHTS}.safetensors")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm-256color", "COLUMNS": "100"}
needs_pty = pytest.mark.skipif(pty is None, reason="needs pseudo-terminals (the pty module)")


def run_predict(args: list[str], stdout: str, stderr: str, tmp_path: Path, timeout: float = 300) -> tuple[str, str]:
    """Run PREDICT + `args` with stdout and stderr each on a pseudo-terminal of its own
    ("tty") or a file ("file"); return what each received, as text. Fails the test on a
    non-zero exit."""
    fds, masters, files = {}, {}, []
    for name, kind in (("stdout", stdout), ("stderr", stderr)):
        if kind == "tty":
            master, slave = pty.openpty()
            masters[master] = name
            fds[name] = slave
        else:
            f = open(tmp_path / name, "wb")
            files.append(f)
            fds[name] = f
    proc = subprocess.Popen(PREDICT + args, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL,
                            stdout=fds["stdout"], stderr=fds["stderr"])
    for f in files:
        f.close()
    for master, name in masters.items():
        os.close(fds[name])
    got = {"stdout": b"", "stderr": b""}
    deadline = time.monotonic() + timeout
    while masters:
        ready, _, _ = select.select(list(masters), [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            proc.kill()
            pytest.fail(f"dfer predict still running after {timeout} s")
        for master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process closed its end
                data = b""
            if data:
                got[masters[master]] += data
            else:
                os.close(master)
                del masters[master]
    rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    for name, kind in (("stdout", stdout), ("stderr", stderr)):
        if kind == "file":
            got[name] = (tmp_path / name).read_bytes()
    out, err = (got[k].decode("utf-8", "replace") for k in ("stdout", "stderr"))
    assert rc == 0, err[-2000:]
    return out, err


def assert_only_records(text: str) -> list[dict]:
    """Every line of `text` is a JSON record: clips of the example, then its video record."""
    assert "\x1b" not in text, "terminal control codes among the records"
    lines = text.splitlines()
    assert lines and all(line.strip() for line in lines), text[:500]
    records = [json.loads(line) for line in lines]  # raises on anything that is not JSON
    assert [r["type"] for r in records] == ["clip"] * (len(records) - 1) + ["video"], text[:500]
    assert len(records) >= 2 and all(r["video"] == VIDEO for r in records)
    return records


def assert_progress_only(text: str) -> None:
    """The stderr of a run whose stderr is a terminal: the bar was drawn, no record is there."""
    assert "single_face_smile.mp4" in text and "%" in text, text[:500]
    assert '"type"' not in text


@pytest.fixture(scope="module")
def smile_jsonl(tmp_path_factory) -> tuple[str, str]:
    """`dfer predict examples/single_face_smile.mp4 --format jsonl > file` typed on a
    terminal (stderr on a pseudo-terminal; on a file where there are none): (stdout, stderr)."""
    tmp = tmp_path_factory.mktemp("smile")
    return run_predict(["--format", "jsonl"], "file", "tty" if pty else "file", tmp)


@needs_pty
def test_stdout_to_file_with_progress_on_terminal(smile_jsonl):
    out, err = smile_jsonl
    assert_only_records(out)
    assert_progress_only(err)


@needs_pty
def test_stdout_and_stderr_on_two_terminals(tmp_path):
    """Both on terminals: the records still go to stdout (the bar is taken down while one is
    written, for when the two are the same terminal), the bar to stderr. (stdout on a
    terminal and stderr not: no bar, records written as they come.)"""
    out, err = run_predict(["--format", "jsonl"], "tty", "tty", tmp_path)
    assert_only_records(out)
    assert_progress_only(err)


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("script") is None,
                    reason="needs util-linux `script`")
def test_redirected_under_script(tmp_path):
    """`script` runs the shell command on a pseudo-terminal: stderr is that terminal and
    stdout the redirected file, as for `dfer predict x.mp4 > out.jsonl` typed by a person."""
    out = tmp_path / "out.jsonl"
    cmd = f"{shlex.join(PREDICT)} > {shlex.quote(str(out))}"
    proc = subprocess.run(["script", "-qec", cmd, "/dev/null"], cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=300)
    terminal = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, terminal[-2000:] + proc.stderr.decode("utf-8", "replace")[-2000:]
    assert_only_records(out.read_text(encoding="utf-8"))
    assert_progress_only(terminal)


# --------------------------------------------------------------------------- jq recipes

DOCS = (ROOT / "docs" / "predict.md").read_text(encoding="utf-8")
# `dfer predict ... | jq [-c|-r ...] '<filter>'`; a filter may go on over several lines
RECIPES = re.findall(r"(dfer predict[^|\n]*)\|\s*jq((?:\s+-[a-zA-Z]+)*)\s+'([^']*)'", DOCS)


def edge_records() -> str:
    """JSON Lines for what the example does not show, as the writer writes it: a track
    with no classified clip (label null), a video with no face, a failed input."""
    import io

    happy = {c: (0.9 if c == "happy" else 0.1 / (len(CLASSES) - 1)) for c in CLASSES}
    clips = [ClipPrediction("two.mp4", 0, 0.0, 2.0, [1, 2, 3, 4], happy, "happy", 0.9),
             ClipPrediction("two.mp4", 1, 0.0, 2.0, [5, 6, 7, 8], None, None, None, "face missing in 12/16 frames")]
    tracks = [TrackSummary(0, 0.0, 2.0, 1, "happy", happy), TrackSummary(1, 0.0, 2.0, 0, None, None)]
    buf = io.StringIO()
    writer = make_writer("jsonl", buf, CLASSES)
    for r in (VideoResult("two.mp4", 2.0, "tiny", list(CLASSES), clips, tracks),
              VideoResult("title.mp4", 3.9, "tiny", list(CLASSES), [], [])):
        for c in r.clips:
            writer.clip(c)
        writer.video(r)
    writer.error("broken.mp4", "invalid data found when processing input")
    writer.close()
    return buf.getvalue()


def as_json_format(jsonl: str) -> str:
    """The same results as `--format json` lays them out: one array, the video records with
    their clip records under "clips", error records as they are."""
    records, clips = [], {}
    for r in map(json.loads, jsonl.splitlines()):
        if r["type"] == "clip":
            clips.setdefault(r["video"], []).append(r)
        else:
            records.append({**r, "clips": clips.pop(r["video"], [])} if r["type"] == "video" else r)
    return json.dumps(records, indent=2)


def test_docs_have_jq_recipes():
    assert len(RECIPES) >= 5, "the jq recipes of docs/predict.md were not found: update RECIPES"


@pytest.mark.parametrize("command, flags, jq_filter", RECIPES, ids=[f"recipe{i + 1}" for i in range(len(RECIPES))])
def test_docs_jq_recipe_runs_on_real_output(command, flags, jq_filter, smile_jsonl):
    """Each recipe exits 0 with something to show on the example's real output plus the
    edge cases; recipes for `--format json` get the same results in that layout."""
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed, so the jq recipes of docs/predict.md cannot be run")
    text = smile_jsonl[0] + edge_records()
    if re.search(r"(-f|--format)\s+json\b", command):
        text = as_json_format(text)
    proc = subprocess.run(["jq", *flags.split(), jq_filter], input=text, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", f"jq{flags} '{jq_filter}': {proc.stderr}"
    assert proc.stdout.strip(), f"jq{flags} '{jq_filter}' printed nothing"

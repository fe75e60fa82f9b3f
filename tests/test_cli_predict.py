"""`dfer predict` end to end (CliRunner): real pipeline, a tiny checkpoint saved here, and
videos built here (a real face from tests/data, a blank clip, a file that is not a video).

The face video is 16 frames of 240x136 at 8 fps (2 s), so MTCNN costs well under a second
per run; the model is a 1-block LOGO-Former on 8 frames of 32 px.
"""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import typer
from synth import face_image, make_video
from typer.testing import CliRunner

from dfer_cli.cli.main import app
from dfer_cli.cli.output import output_paths
from dfer_cli.labels import CLASSES
from dfer_cli.video.inputs import collect_inputs

OPTS = ["--window", "1.0", "--stride", "0.5", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    from dfer_cli.checkpoint import save_checkpoint
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    torch.manual_seed(0)
    model = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=8)
    pre = Preprocessing(input_size=32, num_frames=model.config.num_frames)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(path, model, classes=CLASSES, preprocessing=pre, provenance={"test": True})


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("media")
    small = np.asarray(Image.fromarray(face_image()).resize((240, 136)))
    face = make_video(d / "face.mp4", [np.roll(small, i, axis=1) for i in range(16)], fps=8)
    blank = make_video(d / "blank.mp4", frames=16, fps=8, size=(96, 64))
    bad = d / "broken.mp4"
    bad.write_bytes(b"\x00\x01 this is not a video " * 50)
    return {"dir": d, "face": face, "blank": blank, "bad": bad}


def invoke(args, **kw):
    r = CliRunner().invoke(app, ["predict", *args], **kw)
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def face_runs(ckpt, media, tmp_path_factory):
    """The face video in each format (jsonl read through stdin), plus --annotate and --plot."""
    out = tmp_path_factory.mktemp("out")
    face = str(media["face"])
    runs = {
        "jsonl": invoke(["-", "-w", str(ckpt), *OPTS], input=f"# a comment\n\n{face}\n"),
        "json": invoke([face, "-w", str(ckpt), "-f", "json", *OPTS,
                        "--annotate", str(out / "ann.mp4"), "--plot", str(out / "t.png")]),
        "csv": invoke([face, "-w", str(ckpt), *OPTS, "-o", str(out / "r.csv")]),
        "table": invoke([face, "-w", str(ckpt), "-f", "table", *OPTS]),
    }
    return runs, out


def test_jsonl_from_stdin_detects_the_face(face_runs, ckpt, media):
    runs, _ = face_runs
    r = runs["jsonl"]
    assert r.exit_code == 0, r.output
    recs = jsonl(r.stdout)
    assert recs[-1]["type"] == "video" and recs[-1]["video"] == str(media["face"])
    assert recs[-1]["status"] == "ok" and recs[-1]["duration"] == pytest.approx(2.0, abs=0.15)
    clips = [x for x in recs[:-1] if x["type"] == "clip"]
    assert len(clips) == len(recs) - 1 and len(clips) >= 2
    ok = [c for c in clips if c["status"] == "ok"]
    assert ok, clips
    for c in ok:
        assert list(c["probabilities"]) == list(CLASSES)
        assert math.isclose(sum(c["probabilities"].values()), 1.0, abs_tol=1e-3)
        assert c["label"] == max(c["probabilities"], key=c["probabilities"].get)
        assert c["confidence"] == pytest.approx(c["probabilities"][c["label"]])
        x1, y1, x2, y2 = c["box"]  # the face sits near x 82-153, y 30-110 in these frames
        assert 60 < (x1 + x2) / 2 < 160 and 30 < (y1 + y2) / 2 < 110 and x2 - x1 > 30
        assert 0 <= c["start"] < c["end"] <= 2.01
    track = recs[-1]["tracks"][0]
    assert track["clips"] == len([c for c in ok if c["track"] == track["track"]])
    mean = {k: np.mean([c["probabilities"][k] for c in ok if c["track"] == track["track"]]) for k in CLASSES}
    assert track["label"] == max(mean, key=mean.get)
    assert r.stderr == ""  # not a terminal: no progress bar; one input: no summary line


def test_formats_agree(face_runs):
    runs, out = face_runs
    assert all(r.exit_code == 0 for r in runs.values()), {k: r.output for k, r in runs.items()}
    lines = jsonl(runs["jsonl"].stdout)
    clips = [x for x in lines if x["type"] == "clip"]

    (doc,) = json.loads(runs["json"].stdout)
    assert doc["clips"] == clips
    assert {k: v for k, v in doc.items() if k != "clips"} == lines[-1]

    assert runs["csv"].stdout == ""  # went to --output, format from the .csv suffix
    rows = list(csv.DictReader(io.StringIO((out / "r.csv").read_text())))
    crows = [x for x in rows if x["type"] == "clip"]
    assert len(crows) == len(clips)
    for row, c in zip(crows, clips):
        assert (float(row["start"]), float(row["end"]), int(row["track"])) == (c["start"], c["end"], c["track"])
        if c["probabilities"]:
            assert [float(row[f"p_{k}"]) for k in CLASSES] == pytest.approx([c["probabilities"][k] for k in CLASSES])
            assert row["label"] == c["label"]
    trows = [x for x in rows if x["type"] == "track"]
    assert [x["label"] for x in trows] == [t["label"] for t in lines[-1]["tracks"]]

    table = runs["table"].stdout
    trs = [[s.strip() for s in line.split("│")[1:-1]] for line in table.splitlines() if line.count("│") > 5]
    assert len(trs) == len(clips)
    for tr, c in zip(trs, clips):
        assert tr[0] == f"{c['start']:.2f}–{c['end']:.2f}"
        if c["probabilities"]:
            assert tr[2] == c["label"]
            assert [float(x) for x in tr[3:]] == pytest.approx([c["probabilities"][k] for k in CLASSES], abs=6e-4)  # 3 decimals shown
    t0 = lines[-1]["tracks"][0]
    assert f"track {t0['track']} " in table and f": {t0['label']} (" in table


def test_annotate_and_plot(face_runs, media):
    import av
    from PIL import Image

    _, out = face_runs
    with av.open(str(media["face"])) as a, av.open(str(out / "ann.mp4")) as b:
        n_in = sum(1 for _ in a.decode(video=0))
        frames = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)]
    assert len(frames) == n_in == 16 and frames[0].shape == (136, 240, 3)
    src = np.asarray(Image.fromarray(face_image()).resize((240, 136))).astype(float)
    # boxes are drawn only on frames where the face was detected (or inside a short gap)
    drawn = [np.abs(f.astype(float) - src).max() > 100 for f in frames]
    assert sum(drawn) >= len(frames) // 2, drawn
    png = Image.open(out / "t.png")
    assert png.format == "PNG" and png.size[0] > 300


def test_directory_with_a_bad_video_goes_on(ckpt, media, tmp_path):
    import shutil

    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    shutil.copy(media["blank"], d / "a_blank.mp4")
    shutil.copy(media["bad"], d / "b_broken.mp4")
    shutil.copy(media["blank"], d / "sub" / "c_deep.mp4")
    (d / "notes.txt").write_text("not a video, not picked up")
    r = invoke([str(d), "-w", str(ckpt), *OPTS])
    assert r.exit_code == 1
    recs = jsonl(r.stdout)
    assert [(x["type"], x["video"].rsplit("/", 1)[-1]) for x in recs] == [
        ("video", "a_blank.mp4"), ("error", "b_broken.mp4")]
    assert recs[0]["status"] == "no face" and recs[0]["tracks"] == []
    assert f"dfer: skipping {d / 'b_broken.mp4'}: " in r.stderr
    assert "video" in recs[1]["error"] and "b_broken.mp4" not in recs[1]["error"]  # path not repeated
    assert "dfer: 1 of 2 inputs done, 1 failed" in r.stderr

    r = invoke([str(d), "-r", "-w", str(ckpt), *OPTS, "-q"])
    assert r.exit_code == 1
    assert [x["video"].rsplit("/", 1)[-1] for x in jsonl(r.stdout)] == ["a_blank.mp4", "b_broken.mp4", "c_deep.mp4"]
    assert "inputs done" not in r.stderr and "skipping" in r.stderr  # --quiet keeps errors only


def test_no_face_video_is_not_an_error(ckpt, media):
    r = invoke([str(media["blank"]), "-w", str(ckpt), *OPTS])
    assert r.exit_code == 0, r.output
    (rec,) = jsonl(r.stdout)
    assert rec["type"] == "video" and rec["tracks"] == [] and rec["status"] == "no face"
    r = invoke([str(media["blank"]), "-w", str(ckpt), *OPTS, "-f", "table"])
    assert r.exit_code == 0 and "blank.mp4: 2.00 s, no face found" in r.stdout


def test_missing_file(ckpt, media, tmp_path):
    missing = str(tmp_path / "nope.mp4")
    r = invoke([missing, str(media["blank"]), "-w", str(ckpt), *OPTS, "-f", "json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc[0] == {"type": "error", "video": missing, "error": "no such file or directory"}
    assert doc[1]["type"] == "video"
    assert f"dfer: skipping {missing}: no such file or directory" in r.stderr


def test_no_usable_checkpoint(media, tmp_path, monkeypatch):
    monkeypatch.setenv("DFER_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    r = invoke([str(media["blank"]), "--weights", "no_such_weights"])
    assert r.exit_code == 1 and r.stdout == ""
    msg = r.stderr.strip()
    assert msg.startswith("dfer: no usable checkpoint") and "\n" not in msg
    assert "dfer train" in msg and "--weights PATH" in msg

    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"garbage")
    r = invoke([str(media["blank"]), "--weights", str(fake)])
    assert r.exit_code == 1 and "cannot use checkpoint" in r.stderr and str(fake) in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--format", "xml"], "--format xml"),
    (["--window", "0"], "--window"),
    (["--min-face", "-1"], "--min-face"),
])
def test_usage_errors(ckpt, media, args, needle):
    r = invoke([str(media["blank"]), "-w", str(ckpt), *args])
    assert r.exit_code == 2 and needle in r.stderr


def test_empty_stdin_is_usage_error(ckpt):
    r = invoke(["-", "-w", str(ckpt)], input="\n")
    assert r.exit_code == 2 and "no inputs" in r.stderr


# --- input expansion and output naming (no pipeline needed) ---------------------------

def test_collect_inputs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.MP4", "a.mov", "sub/c.mkv", "x.txt", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"x")
    flat = collect_inputs([str(tmp_path)])
    assert [p.rsplit("/", 1)[-1] for p, e in flat] == ["a.mov", "b.MP4"] and all(e is None for _, e in flat)
    deep = collect_inputs([str(tmp_path), str(tmp_path / "a.mov")], recursive=True)
    assert [p.rsplit("/", 1)[-1] for p, _ in deep] == ["a.mov", "b.MP4", "c.mkv"]  # a.mov once
    got = collect_inputs(["-", str(tmp_path / "x.txt")], stdin=io.StringIO(f"{tmp_path / 'gone.mp4'}\n"))
    assert got == [(str(tmp_path / "gone.mp4"), "no such file or directory"), (str(tmp_path / "x.txt"), None)]
    (tmp_path / "empty").mkdir()
    ((p, err),) = collect_inputs([str(tmp_path / "empty")])
    assert "no video files" in err and "--recursive" in err


def test_output_paths(tmp_path):
    a, b = str(tmp_path / "x" / "a.mp4"), str(tmp_path / "y" / "b.mp4")
    assert output_paths(None, [a], ".t.png", "--plot") == {}
    assert output_paths(str(tmp_path / "one.png"), [a], ".t.png", "--plot") == {a: tmp_path / "one.png"}
    assert output_paths(str(tmp_path), [a], ".t.png", "--plot") == {a: tmp_path / "a.t.png"}
    many = output_paths(str(tmp_path / "o"), [a, b], ".t.png", "--plot")
    assert many == {a: tmp_path / "o" / "a.t.png", b: tmp_path / "o" / "b.t.png"}
    pat = output_paths(str(tmp_path / "{index}-{stem}.png"), [a, b], ".t.png", "--plot")
    assert pat == {a: tmp_path / "1-a.png", b: tmp_path / "2-b.png"}
    with pytest.raises(typer.Exit) as e:
        output_paths(str(tmp_path / "o"), [a, str(tmp_path / "z" / "a.mp4")], ".t.png", "--plot")
    assert e.value.exit_code == 2
    with pytest.raises(typer.Exit):
        output_paths(a, [a], ".t.png", "--annotate")


def test_annotate_name_clash_is_usage_error_before_work(ckpt, media, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    import shutil

    shutil.copy(media["blank"], other / "blank.mp4")
    r = invoke([str(media["blank"]), str(other / "blank.mp4"), "-w", str(ckpt), "--annotate", str(tmp_path / "ann")])
    assert r.exit_code == 2 and "would both write" in r.stderr and r.stdout == ""


def test_several_inputs_annotate_into_directory_and_plot_pattern(ckpt, media, tmp_path):
    import av

    two = tmp_path / "two.mp4"
    make_video(two, frames=5, fps=8, size=(64, 48))
    r = invoke([str(media["blank"]), str(two), "-w", str(ckpt), *OPTS, "-q",
                "--annotate", str(tmp_path / "ann"), "--plot", str(tmp_path / "plots" / "{index}-{stem}.png")])
    assert r.exit_code == 0, r.output
    for stem, n in (("blank", 16), ("two", 5)):
        with av.open(str(tmp_path / "ann" / f"{stem}.annotated.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == n
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["1-blank.png", "2-two.png"]


def test_plot_format_follows_the_suffix(ckpt, media, tmp_path):
    from PIL import Image

    r = invoke([str(media["blank"]), "-w", str(ckpt), *OPTS, "-q", "--plot", str(tmp_path / "p.jpg")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "p.jpg").format == "JPEG"  # was PNG bytes under a .jpg name


@pytest.mark.parametrize("option, name, needle", [
    ("--plot", "p.xyz", "unsupported image suffix .xyz; use one of "),
    ("--plot", "p", "no image suffix; use one of "),
    ("--annotate", "out.xyz", "unknown video container; use .mp4, .mkv, .mov, .m4v or .avi"),
    ("--annotate", "out.webm", "unknown video container; use .mp4, .mkv, .mov, .m4v or .avi"),
])
def test_unwritable_suffix_is_usage_error_before_any_work(ckpt, media, tmp_path, monkeypatch, option, name, needle):
    import dfer_cli.predict

    def no_work(*a, **k):
        raise AssertionError("a video was processed before the usage error")

    monkeypatch.setattr(dfer_cli.predict, "predict_video", no_work)
    monkeypatch.chdir(tmp_path)
    r = invoke([str(media["blank"]), "-w", str(ckpt), *OPTS, option, name])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith(f"dfer predict: {option} {name}: {needle}") and r.stderr.count("\n") == 1
    if option == "--plot":
        assert ".png" in r.stderr and ".jpg" in r.stderr and ".pdf" in r.stderr and ".svg" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_plot_is_reported_and_counts_as_failure(ckpt, media, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    r = invoke([str(media["blank"]), "-w", str(ckpt), *OPTS, "--plot", str(blocker / "t.png")])
    assert r.exit_code == 1
    assert jsonl(r.stdout)[0]["type"] == "video"  # the result itself was still written
    assert f"could not write the timeline plot {blocker / 't.png'}" in r.stderr


def test_output_that_is_an_input_is_usage_error_and_leaves_it_intact(ckpt, media, tmp_path):
    import shutil

    video = tmp_path / "clip.mp4"
    shutil.copy(media["blank"], video)
    before = video.read_bytes()
    r = invoke([str(video), "-w", str(ckpt), *OPTS, "-o", str(video)])
    assert r.exit_code == 2 and "would overwrite the input" in r.stderr and r.stdout == ""
    assert video.read_bytes() == before


def test_output_folder_is_created_and_unwritable_output_is_one_line(ckpt, media, tmp_path):
    out = tmp_path / "new" / "deeper" / "r.jsonl"
    r = invoke([str(media["blank"]), "-w", str(ckpt), *OPTS, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert jsonl(out.read_text())[0]["status"] == "no face"
    r = invoke([str(media["blank"]), "-w", str(ckpt), *OPTS, "-o", str(tmp_path)])  # a directory
    msg = r.stderr.strip()
    assert r.exit_code == 2 and msg.startswith(f"dfer predict: --output {tmp_path}: cannot write") and "\n" not in msg


def test_help_names_the_default_weights():
    from dfer_cli.weights import DEFAULT_WEIGHTS

    r = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and f"[default: {DEFAULT_WEIGHTS}]" in r.stdout


def test_docs_options_table_matches_the_command():
    """Every option row of docs/predict.md names a real `dfer predict` option, and the
    numeric defaults it states are the ones the pipeline uses."""
    import re
    from pathlib import Path

    import typer.main

    from dfer_cli.faces import detect as faces

    cmd = typer.main.get_command(app).commands["predict"]
    flags = {f for p in cmd.params for f in getattr(p, "opts", [])}
    text = (Path(__file__).resolve().parent.parent / "docs" / "predict.md").read_text()
    section = text.split("## Options", 1)[1].split("\n## ", 1)[0]
    rows = [line.replace("\\|", "/").split("|")[1:3] for line in section.splitlines() if line.startswith("| `-")]
    assert len(rows) >= 15
    defaults = {}
    for names, default in rows:
        for flag in re.findall(r"`(-[-\w]+)", names):
            assert flag in flags, f"docs/predict.md documents {flag}, which dfer predict does not have"
            defaults[flag] = default.strip().strip("`")
    params = {p.opts[0]: p for p in cmd.params if getattr(p, "opts", None)}
    for flag in ("--batch-size", "--window", "--stride"):
        assert float(defaults[flag]) == float(params[flag].default)
    assert float(defaults["--min-face"]) == faces.MIN_FACE and int(defaults["--detect-size"]) == faces.DETECT_SIZE
    from dfer_cli.weights import DEFAULT_WEIGHTS

    assert defaults["--weights"] == DEFAULT_WEIGHTS

"""Writers: each format carries the same numbers, in the documented schema."""
from __future__ import annotations

import csv
import io
import json
import math
import re

import pytest

from dfer_cli.labels import CLASSES
from dfer_cli.results import ClipPrediction, TrackSummary, VideoResult
from dfer_cli.writers import FORMATS, PROVENANCE, make_writer, summary_line


def probs(top: str, p: float) -> dict[str, float]:
    rest = (1.0 - p) / (len(CLASSES) - 1)
    return {c: (p if c == top else rest) for c in CLASSES}


def two_track_result(video="clips/a.mp4") -> VideoResult:
    clips = [
        ClipPrediction(video, 0, 0.0, 2.0, [10, 20, 110, 140], probs("happy", 0.7), "happy", 0.7, frames=(2, 58)),
        ClipPrediction(video, 0, 1.0, 3.0, [12, 22, 112, 142], probs("sad", 0.55), "sad", 0.55, frames=(32, 88)),
        ClipPrediction(video, 1, 0.5, 2.5, [200, 30, 260, 100], None, None, None, "face missing in 12/16 frames",
                       frames=(17, 73)),
    ]
    mean = {c: (clips[0].probabilities[c] + clips[1].probabilities[c]) / 2 for c in CLASSES}
    tracks = [TrackSummary(0, 0.0, 3.0, 2, max(mean, key=mean.get), mean),
              TrackSummary(1, 0.5, 2.5, 0, None, None)]
    return VideoResult(video, 3.04, "tiny", list(CLASSES), clips, tracks, weights_sha256=SHA, fps=29.97,
                       window=2.0, stride=1.0)


SHA = "0123456789abcdef" * 4


def no_face_result(video="b.mp4") -> VideoResult:
    return VideoResult(video, 1.5, "tiny", list(CLASSES), [], [], weights_sha256=SHA, fps=25.0,
                       window=1.5, stride=1.0)


def run(fmt: str, results, errors=()) -> str:
    out = io.StringIO()
    w = make_writer(fmt, out, CLASSES)
    for r in results:
        for c in r.clips:
            w.clip(c)
        w.video(r)
    for video, msg in errors:
        w.error(video, msg)
    w.close()
    return out.getvalue()


def test_jsonl_schema_and_order():
    r = two_track_result()
    lines = run("jsonl", [r, no_face_result()], [("bad.mp4", "invalid data")]).splitlines()
    recs = [json.loads(line) for line in lines]
    assert [x["type"] for x in recs] == ["clip", "clip", "clip", "video", "video", "error"]
    clip = recs[0]
    assert set(clip) == {"type", "video", "track", "start", "end", "frames", "box", "label", "confidence",
                         "probabilities", "status"}
    assert list(clip)[:6] == ["type", "video", "track", "start", "end", "frames"] and clip["frames"] == [2, 58]
    assert list(clip["probabilities"]) == list(CLASSES)  # canonical class order
    assert math.isclose(sum(clip["probabilities"].values()), 1.0, abs_tol=1e-9)
    assert clip["label"] == "happy" and clip["confidence"] == 0.7 and clip["status"] == "ok"
    assert clip["box"] == [10.0, 20.0, 110.0, 140.0] and clip["start"] == 0.0 and clip["end"] == 2.0
    unclassified = recs[2]
    assert unclassified["probabilities"] is None and unclassified["label"] is None
    assert unclassified["status"].startswith("face missing")
    video = recs[3]
    assert video["duration"] == 3.04 and video["status"] == "ok" and len(video["tracks"]) == 2
    from dfer_cli import __version__
    from dfer_cli.results import SCHEMA_VERSION

    assert {k: video[k] for k in ("fps", "window", "stride", "model", "weights_sha256", "dfer_version",
                                  "schema_version")} == {
        "fps": 29.97, "window": 2.0, "stride": 1.0, "model": "tiny", "weights_sha256": SHA,
        "dfer_version": __version__, "schema_version": SCHEMA_VERSION}
    assert video["tracks"][0]["label"] == "happy" and video["tracks"][0]["clips"] == 2
    assert recs[4]["tracks"] == [] and recs[4]["status"] == "no face"
    assert recs[5] == {"type": "error", "video": "bad.mp4", "error": "invalid data"}


def test_jsonl_flushes_each_clip_before_the_video_is_done():
    class Spy(io.StringIO):
        flushed: list[str] = []

        def flush(self):
            self.flushed.append(self.getvalue())

    out = Spy()
    w = make_writer("jsonl", out, CLASSES)
    r = two_track_result()
    w.clip(r.clips[0])
    assert out.flushed and json.loads(out.flushed[-1].splitlines()[0])["type"] == "clip"


def test_json_nests_clips_and_agrees_with_jsonl():
    r = two_track_result()
    doc = json.loads(run("json", [r, no_face_result()], [("bad.mp4", "no such file")]))
    assert [d["type"] for d in doc] == ["video", "video", "error"]
    jl = [json.loads(x) for x in run("jsonl", [r]).splitlines()]
    assert doc[0]["clips"] == [x for x in jl if x["type"] == "clip"]
    assert {k: v for k, v in doc[0].items() if k != "clips"} == jl[-1]
    assert doc[1]["clips"] == [] and doc[1]["status"] == "no face"
    assert doc[2]["error"] == "no such file"


def test_csv_rows_agree_with_jsonl():
    r = two_track_result()
    rows = list(csv.DictReader(io.StringIO(run("csv", [r, no_face_result()], [("bad.mp4", "boom")]))))
    assert [x["type"] for x in rows] == ["clip", "clip", "clip", "track", "track", "video", "error"]
    jl = [json.loads(x) for x in run("jsonl", [r]).splitlines() if '"clip"' in x]
    for row, rec in zip(rows[:3], jl):
        assert float(row["start"]) == rec["start"] and int(row["track"]) == rec["track"]
        assert [int(row["first_frame"]), int(row["last_frame"])] == rec["frames"]
        assert all(row[k] == "" for k in PROVENANCE)  # provenance is on the rows written per video
        assert [float(row[k]) for k in ("x1", "y1", "x2", "y2")] == rec["box"]
        if rec["probabilities"] is None:
            assert row["label"] == "" and all(row[f"p_{c}"] == "" for c in CLASSES)
        else:
            assert row["label"] == rec["label"]
            assert [float(row[f"p_{c}"]) for c in CLASSES] == [rec["probabilities"][c] for c in CLASSES]
    track0 = rows[3]
    assert track0["label"] == r.tracks[0].label and track0["status"] == "2 clips"
    video = r.to_record()
    for row in (rows[3], rows[4]):
        assert [row[k] for k in PROVENANCE] == [str(video[k]) for k in PROVENANCE]
    assert rows[5]["model"] == "tiny" and float(rows[5]["window"]) == 1.5 and rows[5]["first_frame"] == ""
    assert math.isclose(float(track0["confidence"]), r.tracks[0].probabilities[r.tracks[0].label])
    assert rows[5]["video"] == "b.mp4" and rows[5]["status"] == "no face"
    assert rows[6]["video"] == "bad.mp4" and rows[6]["status"] == "boom"


def test_table_shows_the_same_numbers_and_a_summary():
    r = two_track_result()
    text = run("table", [r, no_face_result()], [("bad.mp4", "boom")])
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.count("│") > 5]
    assert len(rows) == 3
    header = [c.strip() for c in next(line for line in text.splitlines() if "happy" in line and "┃" in line)
              .split("┃")[1:-1]]
    assert header[3:] == list(CLASSES)
    for row, clip in zip(rows, r.clips):
        assert row[0] == f"{clip.start:.2f}–{clip.end:.2f}" and row[1] == str(clip.track)
        if clip.probabilities:
            assert row[2] == clip.label
            assert [float(x) for x in row[3:]] == [round(clip.probabilities[c], 3) for c in CLASSES]
        else:
            assert row[2] == "– (1)"
    assert f"(1) not classified: {r.clips[2].status}" in text
    assert summary_line(r) in text and "b.mp4: 1.50 s, no face found" in text
    assert "boom" not in text  # errors go to stderr, not into the table


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("columns", [80, 120])
def test_terminal_table_keeps_every_probability_readable_when_a_clip_is_not_classified(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))
    r = two_track_result()
    r.clips[2].status = "face missing in 15/16 frames"
    out = _Terminal()
    w = make_writer("table", out, CLASSES)
    w.video(r)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())               # colours off
    lines = text.splitlines()
    assert max(len(line) for line in lines if "│" in line or "┃" in line) <= columns
    assert "…" not in text
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.count("│") > 5]
    digits = 2 if columns < 100 else 3
    for row, clip in zip(rows, r.clips):
        if clip.probabilities:
            assert [float(x) for x in row[3:]] == [round(clip.probabilities[c], digits) for c in CLASSES]
    assert rows[2][2] == "– (1)" and "(1) not classified: face missing in 15/16 frames" in text


def strict_loads(text: str):
    """json.loads that refuses the NaN / Infinity tokens, as strict JSON parsers do."""
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def test_non_finite_numbers_are_null_in_json_and_empty_in_csv():
    r = two_track_result()
    r.clips[0].probabilities = dict(r.clips[0].probabilities, sad=float("nan"))
    r.clips[0].confidence = float("inf")
    r.tracks[0].probabilities = dict(r.tracks[0].probabilities, fear=float("-inf"))
    recs = [strict_loads(line) for line in run("jsonl", [r]).splitlines()]
    assert recs[0]["probabilities"]["sad"] is None and recs[0]["confidence"] is None
    assert recs[0]["probabilities"]["happy"] == 0.7 and recs[0]["label"] == "happy"
    assert recs[-1]["tracks"][0]["probabilities"]["fear"] is None
    doc = strict_loads(run("json", [r]))
    assert doc[0]["clips"][0] == recs[0] and doc[0]["tracks"] == recs[-1]["tracks"]
    rows = list(csv.DictReader(io.StringIO(run("csv", [r]))))
    assert rows[0]["p_sad"] == "" and rows[0]["confidence"] == "" and rows[0]["p_happy"] == "0.7"
    assert rows[3]["p_fear"] == ""


def test_summary_line_names_dominant_expression():
    line = summary_line(two_track_result())
    assert "2 face tracks" in line and "track 0 0.00–3.00 s: happy (0.39, 2 clips)" in line
    assert "track 1 0.50–2.50 s: not classified" in line


def test_unknown_format():
    assert FORMATS == ("table", "json", "jsonl", "csv")
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        make_writer("xml", io.StringIO(), CLASSES)


def _doc_fields(text: str, heading: str) -> set[str]:
    """Field names in the first column of the table that follows `heading` in docs/predict.md."""
    import re

    block = text.split(heading, 1)[1].lstrip("\n")
    fields = set()
    for line in block.splitlines():
        if not line.startswith("|"):
            break
        fields |= set(re.findall(r"`(\w+)`", line.split("|")[1]))
    return fields


def test_docs_schema_tables_match_the_records():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "predict.md").read_text()
    r = two_track_result()
    assert _doc_fields(text, "`clip` record:") == set(r.clips[0].to_record())
    assert _doc_fields(text, "`video` record (one per video, after its clips):") == set(r.to_record())
    assert _doc_fields(text, "Track summary, inside `tracks`:") == set(r.tracks[0].to_record())
    assert ", ".join(CLASSES) in text  # the documented class order is the real one
    header = run("csv", []).splitlines()[0]
    assert f"Columns: `{header.replace(',', ', ')}`" in " ".join(text.split())


def test_every_record_follows_the_json_schema_in_docs():
    """docs/schema/records.schema.json describes exactly what the writers write (real
    `dfer predict` output is checked against it in test_predict_records.py)."""
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    schema = json.loads((Path(__file__).resolve().parent.parent / "docs" / "schema" / "records.schema.json")
                        .read_text())
    v = jsonschema.Draft202012Validator(schema)
    lines = run("jsonl", [two_track_result(), no_face_result()], [("bad.mp4", "invalid data")]).splitlines()
    for rec in [json.loads(x) for x in lines] + json.loads(run("json", [two_track_result()])):
        assert not [e.message for e in v.iter_errors(rec)], rec
    # so do the example records in docs/predict.md
    doc = (Path(__file__).resolve().parent.parent / "docs" / "predict.md").read_text()
    example = doc.split("\nExample: ", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    recs = [json.loads(x) for x in example.splitlines()]
    assert [x["type"] for x in recs] == ["clip", "video"]
    for rec in recs:
        assert not [e.message for e in v.iter_errors(rec)], rec
    # the schema names every field the records have, for each record type
    r = two_track_result()
    for name, rec in (("clip", r.clips[0].to_record()), ("video", r.to_record()),
                      ("track", r.tracks[0].to_record())):
        props = schema["$defs"][name]["properties"]
        assert set(rec) <= set(props) and set(schema["$defs"][name]["required"]) == set(rec)


@pytest.mark.parametrize("columns", [80, 120])
def test_table_on_a_real_terminal_of_80_and_120_columns_keeps_the_numbers(columns, tmp_path):
    """The table written to a pseudo-terminal of that width (rich measures the terminal
    itself): no cell is cut, and a clip that was not classified does not squeeze the rest."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios
    from pathlib import Path

    script = tmp_path / "show.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_writers import two_track_result\n"
        "from dfer_cli.labels import CLASSES\n"
        "from dfer_cli.writers import make_writer\n"
        "r = two_track_result()\n"
        "r.clips[2].status = 'face missing in 15/16 frames'\n"
        "make_writer('table', sys.stdout, CLASSES).video(r)\n")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, str(script)], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    got = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            pytest.fail("the table was not written within 60 s")
        try:
            data = os.read(master, 65536)
        except OSError:
            data = b""
        if not data:
            break
        got += data
    os.close(master)
    assert proc.wait(timeout=60) == 0, got.decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", got.decode()).replace("\r", "")
    table = [line for line in text.splitlines() if "│" in line or "┃" in line]
    assert table and max(len(line) for line in table) <= columns and "…" not in text
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table if line.count("│") > 5]
    digits = 2 if columns < 100 else 3
    assert [float(x) for x in rows[0][3:]] == [round(v, digits) for v in probs("happy", 0.7).values()]
    assert rows[2][2] == "– (1)" and "(1) not classified: face missing in 15/16 frames" in text

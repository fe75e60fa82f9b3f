"""`dfer predict` against hostile and broken inputs, run the way users run it: bad paths
(reported before the model is loaded), a reader that closes the pipe (`| head -1`), Ctrl-C
(SIGINT) and a file cut short. Each case gives one clear line or a marked record and the
documented exit status: no traceback, no raw Python warning, no NaN. See docs/security.md.

The subprocess tests use the installed `dfer` script next to this interpreter; the model is
a 1-block LOGO-Former on 8 frames of 32 px saved here, the videos are made here with PyAV
from the credited face in tests/data.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synth import face_image, interrupt_when, make_video
from typer.testing import CliRunner

from dfer_cli.cli.main import app

DFER = str(Path(sys.executable).with_name("dfer"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
OPTS = ["--window", "1.0", "--stride", "0.5", "--threads", "1", "--device", "cpu"]
NO_USER = "~no_such_user_dfer_test"


def face_frames(n: int) -> list[np.ndarray]:
    from PIL import Image

    small = np.asarray(Image.fromarray(face_image()).resize((240, 136)))
    return [np.roll(small, i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    face = make_video(d / "face.mp4", face_frames(16), fps=8)                 # 2 s
    longer = make_video(d / "long.mp4", face_frames(160), fps=8)              # 20 s
    cut = make_video(d / "cut.mkv", face_frames(64), fps=8)                   # 8 s, then cut:
    data = cut.read_bytes()
    # Where the frames of what is left end depends on how many bytes the encoder spent on
    # each frame, which differs between x264 builds: decoded_end() measures it.
    cut.write_bytes(data[: int(len(data) * 0.8)])
    return {"dir": d, "face": face, "long": longer, "cut": cut}


def decoded_end(path: Path, fps: float = 8.0) -> float:
    """Time of the last frame PyAV decodes from a damaged file plus one frame, in seconds."""
    import av

    last = None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                last = float(frame.pts * frame.time_base)
        except av.error.FFmpegError:
            pass
    assert last is not None, "the cut file decodes to nothing: cut it later"
    return last + 1.0 / fps


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_clean(stderr: str) -> None:
    """No traceback, no raw Python warning (file:line: Category: ... + a source excerpt)."""
    assert "Traceback" not in stderr and "Warning:" not in stderr and "warnings.warn" not in stderr, stderr
    assert all(line.startswith("dfer: ") for line in stderr.splitlines()), stderr


# --- paths: reported before the model is loaded ----------------------------------------------

def test_bad_paths_are_reported_before_the_model_is_loaded(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    (d / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (d / "loop.mp4").symlink_to(d / "loop.mp4")
    os.mkfifo(d / "fifo.mp4")
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.txt").write_text("not named like a video: passed over")
    missing = str(tmp_path / "missing.mp4")
    # A checkpoint that does not exist: had the model been loaded, this run would stop on it.
    r = CliRunner().invoke(app, ["predict", str(d), missing, f"{NO_USER}/a.mp4", "-",
                                 "--weights", str(tmp_path / "absent.safetensors")],
                           input=f"{NO_USER}/b.mp4\n")
    assert r.exit_code == 1, r.output
    assert "no usable checkpoint" not in r.stderr
    got = [(rec["video"], rec["error"]) for rec in jsonl(r.stdout)]
    assert [rec["type"] for rec in jsonl(r.stdout)] == ["error"] * 7
    expected = [
        (str(d / "dangling.mp4"), f"broken symbolic link: its target {tmp_path / 'gone.mp4'} does not exist"),
        (str(d / "empty.mp4"), "file is empty (0 bytes)"),
        (str(d / "fifo.mp4"), "a FIFO (named pipe), not a regular file"),
        (str(d / "loop.mp4"), "symlink loop"),
        (missing, "no such file or directory"),
        (f"{NO_USER}/a.mp4", f"cannot expand {NO_USER}: no such user"),
        (f"{NO_USER}/b.mp4", f"cannot expand {NO_USER}: no such user"),
    ]
    assert [v for v, _ in got] == [v for v, _ in expected]
    for (video, error), (_, needle) in zip(got, expected):
        assert error.startswith(needle), (video, error)
        assert f"dfer: skipping {video}: {error}" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "dfer: 0 of 7 inputs done, 7 failed"
    assert_clean(r.stderr)


def test_bad_path_does_not_stop_the_batch(ckpt, media):
    r = CliRunner().invoke(app, ["predict", f"{NO_USER}/x.mp4", str(media["face"]), "-w", str(ckpt), *OPTS])
    assert r.exit_code == 1, r.output
    recs = [rec for rec in jsonl(r.stdout) if rec["type"] != "clip"]
    assert [(rec["type"], rec["video"]) for rec in recs] == [("error", f"{NO_USER}/x.mp4"),
                                                            ("video", str(media["face"]))]
    assert recs[1]["status"] == "ok" and recs[1]["tracks"]
    assert "dfer: 1 of 2 inputs done, 1 failed" in r.stderr


def test_missing_file_fails_fast_without_loading_torch(tmp_path):
    """`dfer predict missing.mp4` as typed: one line, exit 1, and torch, PyAV and the face
    detector are never imported (Python's own import log says what was imported)."""
    env = {**ENV, "PYTHONPROFILEIMPORTTIME": "1"}
    p = subprocess.run([DFER, "predict", "missing.mp4"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    imported = [line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines()
                if line.startswith("import time:")]
    assert "dfer_cli.cli.predict" in imported  # the log works
    assert not {"torch", "av", "facenet_pytorch", "dfer_cli.predict"} & set(imported)
    messages = [line for line in p.stderr.splitlines() if not line.startswith("import time:")]
    assert p.returncode == 1 and messages == ["dfer: skipping missing.mp4: no such file or directory"]
    assert jsonl(p.stdout) == [{"type": "error", "video": "missing.mp4", "error": "no such file or directory"}]


# --- a file cut short ------------------------------------------------------------------------

def test_truncated_video_is_one_line_a_marked_record_and_counted(ckpt, media, tmp_path):
    out = tmp_path / "out.json"
    p = subprocess.run([DFER, "predict", str(media["cut"]), str(media["face"]), "-w", str(ckpt), *OPTS,
                        "-o", str(out)], env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr  # processed: what was decoded is classified
    assert_clean(p.stderr)
    lines = p.stderr.splitlines()
    (note,) = [line for line in lines if str(media["cut"]) in line]
    assert note.startswith(f"dfer: {media['cut']}: truncated") and "re-copy" in note
    assert lines[-1] == "dfer: 2 of 2 inputs done, 1 truncated"
    cut, face = json.loads(out.read_text())
    assert cut["video"] == str(media["cut"]) and cut["status"] == "truncated"
    end = decoded_end(media["cut"])
    assert end < 7.0  # the cut really removed frames
    # what was decoded (not the header's 8 s), stretched only to cover the last clip's window
    assert cut["duration"] == pytest.approx(max([end, *(c["end"] for c in cut["clips"])]), abs=0.01)
    assert cut["duration"] < 7.0
    assert cut["tracks"] and cut["clips"]  # the decoded part is classified
    assert "NaN" not in out.read_text()
    assert face["status"] == "ok"
    assert sorted(os.listdir(tmp_path)) == ["out.json"]  # complete: renamed from out.json.partial


# --- a reader that goes away -----------------------------------------------------------------

def test_closed_stdout_ends_the_run_quietly_with_141(ckpt, media, tmp_path):
    """`dfer predict ... | head -1`: head exits after the first record; dfer's next write
    finds the pipe closed (the later videos take seconds) and the run ends there."""
    videos = [media["face"]]
    for i in range(2):
        videos.append(tmp_path / f"copy{i}.mp4")
        videos[-1].write_bytes(media["face"].read_bytes())
    args = [DFER, "predict", *map(str, videos), "-w", str(ckpt), *OPTS, "--format", "jsonl"]
    cmd = f"{shlex.join(args)} | head -1; echo \"dfer exit ${{PIPESTATUS[0]}}\" >&2"
    p = subprocess.run(["bash", "-c", cmd], env=ENV, capture_output=True, text=True, timeout=600)
    (record,) = jsonl(p.stdout)  # head's one line, a whole record
    assert record["type"] == "clip"
    assert p.stderr.splitlines() == ["dfer exit 141"], p.stderr  # nothing else: no error, no traceback


# --- Ctrl-C ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, status, said", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_ctrl_c_exits_130_and_leaves_a_named_partial_file(ckpt, media, tmp_path, sig, status, said):
    # SIGTERM (kill, a job scheduler's time limit) keeps the finished records the same way
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    # long enough (100 s of video) that an idle machine is still on it when SIGINT arrives
    longest = make_video(tmp_path / "longest.mp4", face_frames(800), fps=8)
    proc = subprocess.Popen([DFER, "predict", str(media["face"]), str(longest), "-w", str(ckpt), *OPTS,
                             "-o", str(out)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a terminal's default: an ignored SIGINT is inherited across exec, and an
                            # earlier test in the same pytest process (a local Ray driver) can leave it so
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # interrupted while the long video is processed
    stdout, stderr = interrupt_when(proc, lambda: partial.exists() and '"type": "video"' in partial.read_text(),
                                    "the first video done", sig=sig)
    assert proc.returncode == status, stderr
    assert stdout == ""
    assert stderr.splitlines() == [f"dfer: {said} after 1 of 2 videos; partial output in {partial}"]
    assert not out.exists()  # nothing that looks complete
    recs = jsonl(partial.read_text())  # whole lines only
    assert [r["type"] for r in recs if r["type"] != "clip"] == ["video"]


def test_ctrl_c_json_output_never_looks_complete(ckpt, media, tmp_path, monkeypatch):
    """--format json writes one array at the end: an interrupted run leaves the earlier
    out.json as it was, and the videos done so far in out.json.partial; on stdout, nothing."""
    import dfer_cli.predict as predict

    real, calls = predict.predict_video, []

    def interrupted_on_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "predict_video", interrupted_on_second)
    out = tmp_path / "out.json"
    out.write_text("the previous run's complete result\n")
    args = ["predict", str(media["face"]), str(media["long"]), "-w", str(ckpt), *OPTS]
    r = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert r.exit_code == 130, r.output
    partial = tmp_path / "out.json.partial"
    assert r.stderr.strip().splitlines() == [f"dfer: interrupted after 1 of 2 videos; partial output in {partial}"]
    assert out.read_text() == "the previous run's complete result\n"
    assert [rec["video"] for rec in json.loads(partial.read_text())] == [str(media["face"])]

    calls.clear()
    r = CliRunner().invoke(app, [*args, "-f", "json"])
    assert r.exit_code == 130 and r.stdout == ""
    assert "nothing written" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_hostile_file_names_are_shown_escaped_and_kept_intact_in_records(ckpt, tmp_path):
    forged = "bad\ndfer: 3 of 3 inputs done.mp4"
    coloured = "esc\x1b[31mred [bold]x.mp4"
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (forged, coloured):
        (folder / name).write_bytes(b"not a video at all")
    p = subprocess.run([DFER, "predict", str(folder), "-w", str(ckpt), *OPTS, "-f", "jsonl"], env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert len(lines) == 3 and lines[-1] == "dfer: 0 of 2 inputs done, 2 failed"
    assert not any(line.startswith("dfer: 3 of 3") for line in lines) and "\x1b" not in p.stderr
    assert f"dfer: skipping {folder}/bad\\ndfer: 3 of 3 inputs done.mp4: cannot be read as a video" in p.stderr
    assert f"{folder}/esc\\x1b[31mred [bold]x.mp4: cannot be read" in p.stderr
    errors = {r["video"]: r["error"] for r in map(json.loads, p.stdout.splitlines())}
    assert set(errors) == {str(folder / forged), str(folder / coloured)}       # names as they are
    assert all(e.startswith("cannot be read as a video") for e in errors.values())  # not cut at the name's \n


def test_printable_escapes_control_characters_and_keeps_other_text():
    from dfer_cli.messages import one_line, printable

    assert printable("a\nb\tc\x1b[0m\x7f\u200bé漢.mp4") == "a\\nb\\tc\\x1b[0m\\x7f\\u200bé漢.mp4"
    assert one_line(ValueError("x\ny.mp4: broken\nmore"), "x\ny.mp4") == "broken"


@pytest.mark.skipif(os.name != "posix" or (os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists()),
                    reason="needs setpriv (util-linux) to run as an unprivileged user")
def test_a_subfolder_that_cannot_be_listed_under_recursive_is_reported():
    """Run as an unprivileged user (root reads any folder): the unreadable subfolder is a
    reported input, not silently skipped; a folder given that cannot be entered is one too."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="dfer-perm-"))    # pytest's own folder is private to its user
    os.chmod(base, 0o755)
    root = base / "videos"
    (root / "locked").mkdir(parents=True)
    (root / "ok.mp4").write_bytes(b"x")
    (root / "locked" / "hidden.mp4").write_bytes(b"x")
    os.chmod(root / "locked", 0o000)
    code = ("import json, sys; from dfer_cli.cli.predict import collect_inputs; "
            f"print(json.dumps(collect_inputs([{str(root)!r}, {str(root / 'locked' / 'in')!r}], recursive=True)))")
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        cmd = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {**ENV, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd="/")
    finally:
        os.chmod(root / "locked", 0o755)
        shutil.rmtree(base)
    if p.returncode != 0 and "Permission denied" in p.stderr and "site-packages" in p.stderr:
        pytest.skip("the unprivileged user cannot read this Python installation")
    assert p.returncode == 0, p.stderr[-2000:]
    items = dict(map(tuple, json.loads(p.stdout)))
    assert items[str(root / "ok.mp4")] is None
    assert items[str(root / "locked")].startswith("cannot list this directory (permission denied)")
    assert "permission denied" in items[str(root / "locked" / "in")]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("where", ["stdout", "output"])
def test_a_full_disk_under_the_records_is_one_line_not_a_traceback(ckpt, media, tmp_path, where):
    args = [DFER, "predict", str(media["face"]), str(media["face"]), "-w", str(ckpt), *OPTS, "-f", "jsonl"]
    if where == "output":
        p = subprocess.run(args + ["-o", "/dev/full"], env=ENV, capture_output=True, text=True, timeout=600)
        what = "--output /dev/full"
    else:
        with open("/dev/full", "w") as full:
            p = subprocess.run(args, env=ENV, stdout=full, stderr=subprocess.PIPE, text=True, timeout=600)
        what = "standard output"
    assert p.returncode == 1
    (line,) = p.stderr.splitlines()
    assert line.startswith(f"dfer: cannot write {what} (no space left on device); stopped after 0 of 1 video")
    assert "skipping" not in p.stderr and "Traceback" not in p.stderr


def test_closed_stdout_or_stderr_loses_no_record(ckpt, media, tmp_path):
    cmd = f"{shlex.quote(DFER)} predict {shlex.quote(str(media['face']))} -w {shlex.quote(str(ckpt))} " + \
        " ".join(OPTS) + " -f jsonl"
    closed_out = subprocess.run(["bash", "-c", cmd + " >&-"], env=ENV, capture_output=True, text=True, timeout=600)
    assert closed_out.returncode == 2
    assert closed_out.stderr.strip() == ("dfer predict: standard output is closed (>&-), so the records would be "
                                         "lost; redirect it to a file or pass -o FILE (try: dfer predict --help)")
    out = tmp_path / "r.jsonl"
    to_file = subprocess.run(["bash", "-c", cmd + f" -o {shlex.quote(str(out))} >&-"], env=ENV, capture_output=True,
                             text=True, timeout=600)
    assert to_file.returncode == 0 and json.loads(out.read_text().splitlines()[-1])["type"] == "video"
    closed_err = subprocess.run(["bash", "-c", cmd + " 2>&-"], env=ENV, capture_output=True, text=True, timeout=600)
    assert closed_err.returncode == 0
    assert [json.loads(line)["type"] for line in closed_err.stdout.splitlines()][-1] == "video"


@pytest.mark.parametrize("delay", [0.05, 0.3, 1.0])
def test_ctrl_c_at_any_moment_of_start_up_is_one_line_and_130(delay):
    """Ctrl-C while the CLI, torch or the model are still loading: one line, exit 130, no
    traceback (the command's own handlers are not installed yet that early)."""
    video = str(Path(__file__).resolve().parent.parent / "examples" / "single_face_smile.mp4")
    p = subprocess.Popen([DFER, "predict", video, "--threads", "1", "-f", "jsonl"], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    text = err.decode()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    if p.returncode == 0:             # a fast machine finished first: a complete run is complete
        assert json.loads(out.splitlines()[-1])["type"] == "video"
    else:
        assert p.returncode == 130 and len(text.strip().splitlines()) == 1 and text.startswith("dfer: interrupted")


def dfer_interrupted(owner: str, name: str, when: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run `dfer ARGS` through its real entry point in a fresh interpreter, with a SIGINT sent
    to itself the first time `owner.name` (a module or class, dotted) is called, just before
    or just after the call (`when`): a Ctrl-C at that exact moment."""
    code = f"""import importlib, os, signal, sys
path = {owner!r}.split(".")
for i in range(len(path), 0, -1):
    try:
        obj = importlib.import_module(".".join(path[:i]))
        break
    except ImportError:
        continue
for part in path[i:]:
    obj = getattr(obj, part)
real, fired = getattr(obj, {name!r}), []
def timed(*a, **k):
    first = not fired
    fired.append(1)
    if first and {when!r} == "before":
        os.kill(os.getpid(), signal.SIGINT)
    out = real(*a, **k)
    if first and {when!r} == "after":
        os.kill(os.getpid(), signal.SIGINT)
    return out
setattr(obj, {name!r}, timed)
from dfer_cli.cli.entry import main
sys.argv = {['dfer', *args]!r}
main()
"""
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)


def test_ctrl_c_after_the_output_file_is_complete_changes_nothing(ckpt, media, tmp_path):
    """The records are all in FILE and the run is only printing its summary: a late Ctrl-C
    is ignored (exit 0), not reported as an interruption of a finished run."""
    out = tmp_path / "r.jsonl"
    p = dfer_interrupted("dfer_cli.cli.predict", "_work_done", "after",
                         ["predict", str(media["face"]), "-w", str(ckpt), "-o", str(out), *OPTS])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "interrupted" not in p.stderr and json.loads(out.read_text().splitlines()[-1])["type"] == "video"


def test_a_video_record_covers_its_clips_when_decoding_went_on_past_damage(ckpt, media, monkeypatch):
    """Damage in the middle of a file warns that decoding was cut, but later packets may still
    decode: the record's duration is never shorter than the last clip's end."""
    import warnings

    import dfer_cli.predict
    from dfer_cli.labels import CLASSES
    from dfer_cli.results import ClipPrediction, VideoResult
    from dfer_cli.video.decode import TruncatedVideoWarning

    def damaged(model, path, on_clip=None, **kw):
        probs = {c: 1 / len(CLASSES) for c in CLASSES}
        clips = [ClipPrediction(str(path), 0, s, s + 1.0, [0, 0, 9, 9], probs, "happy", 1 / 7) for s in (0.0, 1.375)]
        for c in clips:
            on_clip(c)
        warnings.warn(TruncatedVideoWarning(f"{path}: damaged after 1.07 s", str(path), 9, 1.07, 2.4))
        return VideoResult(str(path), 2.4, "tiny", list(CLASSES), clips, [])

    monkeypatch.setattr(dfer_cli.predict, "predict_video", damaged)
    r = CliRunner().invoke(app, ["predict", str(media["face"]), "-w", str(ckpt), *OPTS, "-f", "jsonl"])
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in r.stdout.splitlines()]
    video = records[-1]
    assert video["status"] == "truncated" and video["duration"] >= max(c["end"] for c in records[:-1]) == 2.375


def test_a_named_pipe_in_a_list_on_stdin_is_reported_not_read(tmp_path):
    fifo = tmp_path / "cam.ts"
    os.mkfifo(fifo)                                   # no writer: reading it would block for ever
    p = subprocess.run([DFER, "predict", "-", "--threads", "1", "-f", "jsonl"], input=f"{fifo}\n", env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    (record,) = [json.loads(line) for line in p.stdout.splitlines()]
    assert record["type"] == "error" and record["video"] == str(fifo) and "FIFO" in record["error"]


def test_ctrl_c_during_the_final_json_write_says_interrupted_and_keeps_the_partial_file(ckpt, media, tmp_path):
    out = tmp_path / "r.json"
    p = dfer_interrupted("dfer_cli.writers.JsonWriter", "close", "before",
                         ["predict", str(media["face"]), "-w", str(ckpt), "-o", str(out), *OPTS])
    assert p.returncode == 130, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("dfer: interrupted after")
    assert not out.exists() and (tmp_path / "r.json.partial").exists()

"""`dfer predict` on live inputs: a video stream on standard input, a named pipe
fed by a slow writer, Ctrl-C part-way; and the open-ended window plan behind them."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from synth import face_image, make_video, slow_fifo_writer

from dfer_cli.video.inputs import PrefixedReader, looks_like_video, sniff_stdin
from dfer_cli.video.sampling import OPEN_END, WindowPlan

OPTS = ["--window", "1.0", "--stride", "0.5", "--threads", "1", "--device", "cpu", "-f", "jsonl"]


def face_frames(n: int) -> list[np.ndarray]:
    from PIL import Image

    small = np.asarray(Image.fromarray(face_image()).resize((240, 136)))
    return [np.roll(small, i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def face_ts(tmp_path_factory) -> Path:
    """A 6 s MPEG-TS face video at 8 fps (a streamable container, as `ffmpeg -f mpegts` sends)."""
    return make_video(tmp_path_factory.mktemp("live") / "face.ts", face_frames(48), fps=8, codec="mpeg2video")


def dfer(args, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "dfer_cli", "predict", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- the open-ended plan -------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(window=2.0, stride=1.0, num_frames=16),
                                dict(window=1.0, stride=3.0, num_frames=8),           # spaced windows
                                dict(window=2.0, stride=1.0, num_frames=16, sampling="segments8x2", fps=25)])
def test_open_ended_plan_is_a_finite_plan_without_its_end(kw):
    finite, live = WindowPlan(60.0, **kw), WindowPlan(None, **kw)
    assert live.open_ended and not finite.open_ended and live.num_grid == OPEN_END
    assert (live.span, live.step, live.offsets, live.stride_slots) == (finite.span, finite.step, finite.offsets,
                                                                      finite.stride_slots)
    times = live.grid_times()
    n = finite.num_grid
    np.testing.assert_allclose([times[k] for k in range(n)], finite.grid_times())
    # every regular window of the finite plan (not its end-aligned tail) is the live plan's too
    regular = [w for w in finite.windows if w.first % finite.stride_slots == 0]
    assert [live.windows[i] for i in range(len(regular))] == regular
    # up to the next regular window (which only the live plan has) or the finite plan's tail
    last = min([regular[-1].first + finite.stride_slots] + [w.first for w in finite.windows if w not in regular])
    assert [live.needed(k) for k in range(last)] == [finite.needed(k) for k in range(last)]
    assert live.windows[10**6].first == 10**6 * live.stride_slots


# --- telling a stream from a list of paths on stdin -------------------------------------------

@pytest.mark.parametrize("name,codec", [("a.ts", "mpeg2video"), ("a.mkv", "libx264"), ("a.mp4", "libx264"),
                                        ("a.avi", "mjpeg")])
def test_video_containers_are_told_from_path_lists(tmp_path, name, codec):
    data = make_video(tmp_path / name, frames=4, codec=codec).read_bytes()
    assert looks_like_video(data[:512])


@pytest.mark.parametrize("text", [b"clip1.mp4\nclip 2.mp4\r\n# comment\n\tindented.mkv\n",
                                  "vid\u00e9os/f\u00eate.mp4\n".encode(),
                                  b"caf\xe9-latin1.mp4\n",  # not UTF-8: still a name, not a video
                                  b""])
def test_path_lists_are_not_taken_for_video(text):
    assert not looks_like_video(text)
    kind, payload = sniff_stdin(io.BytesIO(text))
    assert kind == "paths" and payload.encode("utf-8", "surrogateescape") == text


def test_a_sniffed_stream_is_read_back_whole(tmp_path):
    data = make_video(tmp_path / "a.ts", frames=30, codec="mpeg2video").read_bytes()
    kind, reader = sniff_stdin(io.BufferedReader(io.BytesIO(data)))
    assert kind == "stream" and isinstance(reader, PrefixedReader)
    got = reader.read(100) + reader.read(1000)
    while chunk := reader.read(4096):
        got += chunk
    assert got == data


# --- dfer predict on live inputs ----------------------------------------------------------------

def assert_stdin_gives_the_records_of_the_file(video: Path, ckpt, min_clips: int) -> None:
    """`dfer predict -` with the file's bytes on stdin writes the records the file gives."""
    from_file = dfer([str(video), "-w", str(ckpt), *OPTS])
    out_file, err_file = from_file.communicate(timeout=600)
    piped = dfer(["-", "-w", str(ckpt), *OPTS], stdin=subprocess.PIPE)
    out_pipe, err_pipe = piped.communicate(video.read_bytes(), timeout=600)
    assert from_file.returncode == 0 and piped.returncode == 0, (err_file, err_pipe)
    want, got = records(out_file.decode()), records(out_pipe.decode())
    assert [r["type"] for r in got].count("clip") >= min_clips
    for r in want:
        r["video"] = "-"
    # the same frames, faces, clips and labels; the probabilities to float rounding (the live
    # path batches clips differently, which moves the 4th decimal now and then)
    def split(records):
        exact, numbers = [], []
        for r in records:
            r = json.loads(json.dumps(r))
            for holder in [r, *r.get("tracks", [])]:
                numbers.append([holder.pop("confidence", None), *(holder.pop("probabilities", None) or {}).values()])
            exact.append(r)
        return exact, numbers

    (got_exact, got_numbers), (want_exact, want_numbers) = split(got), split(want)
    assert got_exact == want_exact
    for g, w in zip(got_numbers, want_numbers):
        assert [x if x is None else pytest.approx(x, abs=5e-4) for x in w] == g


def test_stream_on_stdin_gives_the_records_of_the_same_file(face_ts, ckpt):
    assert_stdin_gives_the_records_of_the_file(face_ts, ckpt, min_clips=5)


def test_an_mp4_on_a_pipe_is_read_whole_and_gives_the_records_of_the_same_file(ckpt, tmp_path):
    mp4 = make_video(tmp_path / "face.mp4", face_frames(24), fps=8)
    head = mp4.read_bytes()[:512]
    assert head[4:8] == b"ftyp" and mp4.read_bytes().rfind(b"moov") > mp4.read_bytes().find(b"mdat")  # index last
    assert_stdin_gives_the_records_of_the_file(mp4, ckpt, min_clips=3)


def test_an_mp4_on_a_pipe_over_the_spool_limit_is_one_line_with_the_fix(ckpt, tmp_path):
    mp4 = make_video(tmp_path / "face.mp4", face_frames(24), fps=8)
    env = dict(os.environ, OMP_NUM_THREADS="1", DFER_STDIN_SPOOL_LIMIT="2000")
    proc = subprocess.run([sys.executable, "-m", "dfer_cli", "predict", "-", "-w", str(ckpt), *OPTS],
                          input=mp4.read_bytes(), capture_output=True, env=env, timeout=600)
    assert proc.returncode == 1
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "dfer: skipping -: an MP4/MOV on standard input is read whole" in err[0]
    assert "pass its path instead" in err[0]


def test_first_record_comes_before_a_slow_writer_has_finished(face_ts, ckpt, tmp_path):
    """The writer sends the first half of the stream, then waits for a record on dfer's
    stdout before sending the rest: a reader that waited for the end would never give one."""
    data = face_ts.read_bytes()
    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    first_record = threading.Event()
    waited = slow_fifo_writer(fifo, data, first_record)
    proc = dfer([str(fifo), "-w", str(ckpt), *OPTS])
    lines = []
    for line in proc.stdout:
        lines.append(json.loads(line))
        first_record.set()
    proc.wait(timeout=300)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert waited.get("in_time") is True, "no record was written before the writer finished"
    assert lines[0]["type"] == "clip" and lines[-1]["type"] == "video"
    assert lines[-1]["video"] == str(fifo) and lines[-1]["duration"] == pytest.approx(6.0, abs=0.01)


def test_ctrl_c_on_a_live_input_exits_130_and_keeps_every_record(face_ts, ckpt):
    data = face_ts.read_bytes()
    proc = dfer(["-", "-w", str(ckpt), *OPTS], stdin=subprocess.PIPE)
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()                      # the rest never comes: a camera still filming
    first = proc.stdout.readline()
    assert json.loads(first)["type"] == "clip"
    # let it finish what it has and block reading stdin: an interrupt there reaches Python
    # inside PyAV's read callback, which used to swallow it as the end of the stream (exit 0)
    time.sleep(5)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    got = records(first.decode() + rest.decode())  # every line written is whole JSON
    assert all(r["type"] == "clip" for r in got)
    assert err.decode().strip().splitlines()[-1] == \
        "dfer: interrupted after 0 of 1 video; partial output on stdout"


@pytest.mark.parametrize("flag", [["--output-dir", "OUT"], ["--annotate", "a.mp4"], ["--plot", "p.png"]])
def test_options_that_need_a_file_refuse_a_live_input(face_ts, ckpt, flag):
    proc = dfer(["-", "-w", str(ckpt), *flag], stdin=subprocess.PIPE)
    _, err = proc.communicate(face_ts.read_bytes()[:4096], timeout=120)
    assert proc.returncode == 2
    line = err.decode().strip()
    assert line.startswith("dfer predict: standard input (-) is a live input") and "\n" not in line
    assert "save the stream to a file first" in line


# --- stalled live inputs: Ctrl-C, SIGTERM and --stall-timeout end them --------------------------

def _held_fifo(path: Path, data: bytes, hold: float = 120.0):
    """A named pipe whose writer sends the first half of `data`, then keeps it open, silent."""
    os.mkfifo(path)

    def writer():
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(hold)

    threading.Thread(target=writer, daemon=True).start()
    return path


def _collect(stream, lines: list) -> None:
    threading.Thread(target=lambda: lines.extend(iter(stream.readline, b"")), daemon=True).start()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_a_stalled_named_pipe_within_seconds(face_ts, ckpt, tmp_path, sig, code):
    fifo = _held_fifo(tmp_path / "cam.ts", face_ts.read_bytes())
    proc = dfer([str(fifo), "-w", str(ckpt), *OPTS, "--stall-timeout", "0"])
    lines: list = []
    _collect(proc.stdout, lines)
    deadline = time.monotonic() + 300
    while not lines:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    time.sleep(1.0)                      # the writer is silent now: dfer waits for data
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code and time.monotonic() - sent < 5
    err = proc.stderr.read().decode()
    assert "Traceback" not in err and "Exception ignored" not in err
    assert all(json.loads(line)["type"] == "clip" for line in lines)      # the records so far, whole


def test_stall_timeout_ends_a_silent_named_pipe_and_marks_the_record(face_ts, ckpt, tmp_path):
    fifo = _held_fifo(tmp_path / "cam.ts", face_ts.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "dfer_cli", "predict", str(fifo), "-w", str(ckpt), *OPTS,
                           "--stall-timeout", "2"], capture_output=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr.decode()
    last = records(proc.stdout.decode())[-1]
    assert last["type"] == "video" and last["status"] == "truncated" and 0 < last["duration"] < 6
    assert f"dfer: {fifo}: no data for 2 s, so the stream is taken as ended there (--stall-timeout)" \
        in proc.stderr.decode()


def test_ctrl_c_ends_a_stalled_stdin_at_once_without_noise(face_ts, ckpt):
    data = face_ts.read_bytes()
    proc = dfer(["-", "-w", str(ckpt), *OPTS, "--stall-timeout", "0"], stdin=subprocess.PIPE)
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    lines: list = []
    _collect(proc.stdout, lines)
    deadline = time.monotonic() + 300
    while not lines:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and time.monotonic() - sent < 5
    err = proc.stderr.read().decode()
    assert "Exception ignored" not in err and "Traceback" not in err and err.count("\n") == 1


def test_stall_timeout_ends_a_server_that_keeps_the_connection_open(face_ts, ckpt):
    import http.server

    data = face_ts.read_bytes()

    class Silent(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            time.sleep(60)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cam.ts"
        proc = subprocess.run([sys.executable, "-m", "dfer_cli", "predict", url, "-w", str(ckpt), *OPTS,
                               "--stall-timeout", "2"], capture_output=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr.decode()
    assert records(proc.stdout.decode())[-1]["status"] == "truncated"
    assert "no data for 2 s" in proc.stderr.decode()

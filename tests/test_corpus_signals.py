"""Corpus runs as a user's terminal sees them, in real subprocesses: progress on stderr only
when it is a terminal (a pseudo-terminal here), the summary line, nothing on stdout, exit
status; Ctrl-C (SIGINT) exits 130 with one line and a folder a rerun resumes; the temporary
files of a run killed with SIGKILL are removed by the next run in the same folder.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synth import face_image, interrupt_when, make_video

from dfer_cli.corpus.store import read_manifests, remove_stale_temps, write_result

try:
    import pty
except ImportError:  # Windows
    pty = None

DFER = [sys.executable, "-m", "dfer_cli", "predict"]
OPTS = ["--window", "1.0", "--stride", "0.5", "--threads", "1", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm-256color", "COLUMNS": "200"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def default_sigint():
    """A terminal's default in the child: an ignored SIGINT is inherited across exec, and an
    earlier test in the same pytest process (a local Ray driver) can leave it so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def face_frames(n: int, shift: int = 0) -> list[np.ndarray]:
    from PIL import Image

    small = np.asarray(Image.fromarray(face_image()).resize((240, 136)))
    return [np.roll(small, shift + i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """Four 1.5 s face videos, one blank video and a file that is not a video."""
    d = tmp_path_factory.mktemp("small_corpus")
    for i in range(4):
        make_video(d / f"face{i}.mp4", face_frames(12, 9 * i), fps=8)
    make_video(d / "blank.mp4", frames=12, fps=8, size=(96, 64))
    (d / "not_a_video.mp4").write_bytes(b"\x00 not a video " * 40)
    return d


def hidden(out: Path) -> list[str]:
    """Temporary (hidden) files in OUT."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def run_on_pty(args: list[str], tmp_path: Path, timeout: float = 600) -> tuple[int, str, str]:
    """Run `dfer predict ARGS` with stderr on a pseudo-terminal and stdout to a file; return
    (exit status, stdout, stderr with ANSI escapes removed)."""
    master, slave = pty.openpty()
    stdout = tmp_path / "stdout"
    with open(stdout, "wb") as f:
        proc = subprocess.Popen(DFER + args, env=ENV, stdin=subprocess.DEVNULL, stdout=f, stderr=slave)
    os.close(slave)
    got = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"dfer predict still running after {timeout} s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            got += data
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, stdout.read_text(), ANSI.sub("", got.decode("utf-8", "replace"))


@pytest.mark.skipif(pty is None, reason="needs pseudo-terminals (the pty module)")
def test_progress_on_a_terminal_summary_always_nothing_on_stdout(ckpt, small_corpus, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_on_pty([str(small_corpus), "-w", str(ckpt), *OPTS, "--output-dir", str(out)],
                                      tmp_path)
    assert code == 1  # not_a_video.mp4 failed
    assert stdout == ""
    assert "corpus" in stderr and "left" in stderr and "videos/min" in stderr and "ETA" in stderr  # the live line
    lines = [x.strip() for x in stderr.replace("\r", "\n").splitlines() if x.strip().startswith("dfer: ")]
    assert lines[0].startswith(f"dfer: skipping {small_corpus / 'not_a_video.mp4'}: ")
    assert re.fullmatch(r"dfer: corpus: 5 done, 1 failed, 0 skipped \(already done\) in (\d+ min )?\d+ s "
                        rf"\([\d.]+ videos/min\); manifest {re.escape(str(out / 'manifest.jsonl'))}", lines[-1])

    # --quiet on a terminal: no progress line and no summary; the failure still
    out2 = tmp_path / "out2"
    code, stdout, stderr = run_on_pty([str(small_corpus), "-w", str(ckpt), *OPTS, "--output-dir", str(out2), "-q"],
                                      tmp_path)
    assert code == 1 and stdout == ""
    assert [x for x in stderr.splitlines() if x.strip()] == \
        [x for x in stderr.splitlines() if x.startswith(f"dfer: skipping {small_corpus / 'not_a_video.mp4'}: ")]
    assert "videos/min" not in stderr


def test_not_a_terminal_summary_only_and_exit_0_when_all_done(ckpt, small_corpus, tmp_path):
    out = tmp_path / "out"
    videos = [str(small_corpus / f"face{i}.mp4") for i in range(2)] + [str(small_corpus / "blank.mp4")]
    p = subprocess.run(DFER + videos + ["-w", str(ckpt), *OPTS, "--output-dir", str(out)], env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    (line,) = p.stderr.splitlines()
    assert re.fullmatch(r"dfer: corpus: 3 done, 0 failed, 0 skipped \(already done\) in (\d+ min )?\d+ s "
                        rf"\([\d.]+ videos/min\); manifest {re.escape(str(out / 'manifest.jsonl'))}", line)


def test_ctrl_c_exits_130_leaves_whole_files_only_and_a_rerun_resumes(ckpt, small_corpus, tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    for i in range(2):
        os.link(small_corpus / f"face{i}.mp4", d / f"a{i}.mp4")
    # third in name order, and long enough (100 s of video) that SIGINT arrives while it is processed
    long = make_video(d / "b_long.mp4", face_frames(800), fps=8)
    os.link(small_corpus / "face2.mp4", d / "c0.mp4")
    out = tmp_path / "out"
    cmd = DFER + [str(d), "-w", str(ckpt), *OPTS, "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    # 0.5 s after the first two videos are done: well into the long one
    stdout, stderr = interrupt_when(proc, lambda: out.is_dir() and len(read_manifests(out)) >= 2,
                                    "the first two videos done", settle=0.5)
    assert proc.returncode == 130, stderr
    assert stdout == ""
    assert stderr.splitlines() == [f"dfer: interrupted after 2 of 4 videos; finished results are in {out} "
                                   "(rerun the same command to resume)"]
    assert hidden(out) == []  # no temporary file left
    man = read_manifests(out)
    assert sorted(Path(r["input"]).name for r in man) == ["a0.mp4", "a1.mp4"]
    files = sorted(p.name for p in out.iterdir() if p.name != "manifest.jsonl")
    assert files == sorted(r["result"] for r in man)  # a result file for each manifest line, and no other
    for r in man:  # each whole: its clips, then its video record
        recs = [json.loads(x) for x in (out / r["result"]).read_text().splitlines()]
        assert recs[-1]["type"] == "video" and all(x["type"] == "clip" for x in recs[:-1])
    mtimes = {r["result"]: (out / r["result"]).stat().st_mtime_ns for r in man}

    # the rerun (the long video now cut short, to keep the test quick) does the rest only
    make_video(long, face_frames(12, 30), fps=8)
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, preexec_fn=default_sigint)
    assert p.returncode == 0, p.stderr
    assert "dfer: corpus: 2 done, 0 failed, 2 skipped (already done)" in p.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in mtimes} == mtimes
    assert len(read_manifests(out)) == 4 and hidden(out) == []


def test_sigint_while_a_result_is_written_waits_for_it(ckpt, small_corpus, tmp_path, monkeypatch):
    """Ctrl-C that lands while a result file and its manifest line are written takes effect
    once both are written: the folder never has a result without its manifest line."""
    from dfer_cli.corpus import run as corpus

    real = corpus.write_result
    calls = []

    def write_and_get_interrupted(path, text):
        calls.append(path)
        os.kill(os.getpid(), signal.SIGINT)  # arrives mid-write
        time.sleep(0.05)
        real(path, text)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(corpus, "write_result", write_and_get_interrupted)
        with pytest.raises(corpus.CorpusInterrupted) as e:
            corpus.run_corpus([str(small_corpus / "face0.mp4"), str(small_corpus / "face1.mp4")], tmp_path / "out",
                              weights=ckpt, threads=1, device="cpu", window=1.0, stride=0.5)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 1 and (e.value.summary.done, e.value.summary.failed) == (1, 0)
    (rec,) = read_manifests(tmp_path / "out")
    assert rec["status"] == "ok"
    assert json.loads((tmp_path / "out" / rec["result"]).read_text().splitlines()[-1])["type"] == "video"
    assert hidden(tmp_path / "out") == []
    assert e.value.summary.interrupted_line("OUT").startswith("interrupted after 1 of 2 videos; ")


def test_a_new_run_removes_what_a_sigkilled_run_left(ckpt, small_corpus, tmp_path):
    """A process killed with SIGKILL while writing a result leaves its temporary file; the
    next run in the same folder deletes it (and only such leftovers)."""
    out = tmp_path / "out"
    out.mkdir()
    # a child that blocks in the middle of write_result (in fsync), with the temporary file written
    child = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "import dfer_cli.corpus.store as c\n"
        "os.fsync = lambda fd: (print('writing', flush=True), time.sleep(600))\n"
        f"c.write_result(Path({str(out / 'x-000000000000.jsonl')!r}), 'half of a result')\n")],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert child.stdout.readline() == "writing\n"
        left = hidden(out)
        assert len(left) == 1 and left[0].startswith(".x-000000000000.jsonl.dfer-") and left[0].endswith(".tmp.jsonl")
        # a file that another process, still running, is writing now: kept
        live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        try:
            keep = out / f".y-1.jsonl.dfer-{left[0].split('.dfer-')[1].split('-')[0]}-{live.pid}-abc.tmp"
            keep.write_text("being written")
            child.send_signal(signal.SIGKILL)
            child.wait()
            old = out / ".z-2.jsonl.dfer-00000000-1-abc.tmp"  # another host's, two hours old
            old.write_text("old")
            os.utime(old, (time.time() - 7200, time.time() - 7200))
            r = subprocess.run(DFER + [str(small_corpus / "blank.mp4"), "-w", str(ckpt), *OPTS,
                                       "--output-dir", str(out), "-q"],
                               env=ENV, capture_output=True, text=True, timeout=600, preexec_fn=default_sigint)
            assert r.returncode == 0, r.stderr
            assert hidden(out) == [keep.name]
        finally:
            live.kill()
            live.wait()
        # once its writer is gone, it is a leftover too
        assert remove_stale_temps(out) == [keep.name] and hidden(out) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_write_result_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "r.jsonl"
    write_result(path, "old\n")

    class Boom(Exception):
        pass

    real = os.replace
    try:
        os.replace = lambda a, b: (_ for _ in ()).throw(Boom())
        with pytest.raises(Boom):
            write_result(path, "new\n")
    finally:
        os.replace = real
    assert path.read_text() == "old\n" and hidden(tmp_path) == []
    write_result(path, "new\n")
    from dfer_cli.fsutil import default_file_mode

    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == default_file_mode()

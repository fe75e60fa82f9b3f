"""Corpus runs (`dfer predict ... --output-dir OUT`, `--shard K/N`, `--ray`): one result file
per video, a manifest, resume after a SIGKILL, shards whose union is the whole run, and a
local Ray instance giving the same records.

The corpus is built here: 6 short face videos (a real face from tests/data, shifted
differently in each so the records differ), 2 blank videos (no face) and a file that is not
a video; a tiny checkpoint (1-block LOGO-Former, 8 frames of 32 px) is saved here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synth import face_image, make_video
from typer.testing import CliRunner

from dfer_cli.cli.main import app
from dfer_cli.corpus.plan import parse_shard, plan_corpus, result_name, shard_of
from dfer_cli.corpus.run import run_corpus
from dfer_cli.corpus.store import ManifestWriter, read_manifests

OPTS = ["--window", "1.0", "--stride", "0.5", "--threads", "1", "--device", "cpu"]
N_FACES, N_BLANK = 6, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus folder; videos are 1.5 s (12 frames at 8 fps)."""
    from PIL import Image

    from dfer_cli.corpus.plan import input_key, shard_of

    base = tmp_path_factory.mktemp("corpus")
    # shards come from a hash of each video's absolute path, so a corpus in an unlucky
    # folder could put every video in one of 2 shards (about 1 in 128): choose the folder
    # name so that each shard gets at least 2 of the videos the shard test counts on
    for salt in range(1000):
        d = base / f"c{salt}"
        d.mkdir()
        names = [d / ("a" if i % 2 else "b") / f"face{i // 2}.mp4" for i in range(N_FACES)]
        names += [d / f"blank{i}.mp4" for i in range(N_BLANK)]
        in_first = sum(shard_of(input_key(str(p)), 2) == 1 for p in names)
        if 2 <= in_first <= len(names) - 2:
            break
    small = np.asarray(Image.fromarray(face_image()).resize((240, 136)))
    for i in range(N_FACES):
        sub = d / ("a" if i % 2 else "b")   # two folders, and two videos named the same in them
        sub.mkdir(exist_ok=True)
        make_video(sub / f"face{i // 2}.mp4", [np.roll(small, 7 * i + j, axis=1) for j in range(12)], fps=8)
    for i in range(N_BLANK):
        make_video(d / f"blank{i}.mp4", frames=12, fps=8, size=(96, 64))
    (d / "broken.mp4").write_bytes(b"\x00\x01 this is not a video " * 50)
    return d


def invoke(args, **kw):
    r = CliRunner().invoke(app, ["predict", *args], **kw)
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def results(out: Path) -> dict[str, str]:
    """Result files of an output folder: name -> text (hidden temporary files excluded)."""
    return {p.name: p.read_text() for p in sorted(out.iterdir())
            if p.suffix in (".jsonl", ".json", ".csv") and not p.name.startswith((".", "manifest"))}


def latest(out: Path) -> dict[str, dict]:
    """The last manifest record of each input (by its resolved path)."""
    return {r["key"]: r for r in read_manifests(out)}


@pytest.fixture(scope="module")
def clean(ckpt, corpus, tmp_path_factory):
    """One uninterrupted, unsharded run of the corpus: the reference."""
    out = tmp_path_factory.mktemp("clean")
    r = invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out)])
    return r, out


# --------------------------------------------------------------------------- no pipeline

def test_parse_shard():
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 4 / 4 ") == (4, 4) and parse_shard("1/1") == (1, 1)
    for bad, needle in (("0/4", "K counts from 1"), ("5/4", "between 1 and 4"), ("1/0", "N must be"),
                        ("x", "expected K/N"), ("1-4", "expected K/N"), ("-1/4", "between 1 and 4")):
        with pytest.raises(ValueError) as e:
            parse_shard(bad)
        assert str(e.value).startswith(f"--shard {bad}: ") and needle in str(e.value) and "\n" not in str(e.value)


def test_shards_partition_the_inputs_whatever_their_order(tmp_path):
    keys = [str(tmp_path / f"v{i}.mp4") for i in range(200)]
    for n in (1, 2, 3, 7):
        shards = [[k for k in keys if shard_of(k, n) == s] for s in range(1, n + 1)]
        assert sorted(sum(shards, [])) == sorted(keys)
        assert all(len(s) > 200 / n / 2 for s in shards)  # no shard starved
    items = [(k, None) for k in keys[:40]]
    for k in keys[:40]:
        Path(k).write_bytes(b"x")
    fwd = plan_corpus(items, tmp_path, "jsonl", "sha", {}, shard=(2, 3))
    rev = plan_corpus(items[::-1], tmp_path, "jsonl", "sha", {}, shard=(2, 3))
    assert sorted(j.key for j in fwd.todo) == sorted(j.key for j in rev.todo)
    assert len(fwd.todo) + fwd.other_shards == 40 and 0 < len(fwd.todo) < 40


def test_result_names_do_not_collide(tmp_path):
    a, b = str(tmp_path / "a" / "x.mp4"), str(tmp_path / "b" / "x.mp4")
    na, nb = result_name(a, "jsonl"), result_name(b, "jsonl")
    assert na != nb and na.startswith("x-") and na.endswith(".jsonl") and result_name(a, "csv").endswith(".csv")
    assert result_name(a, "json") == result_name(a, "json")
    assert "/" not in result_name(str(tmp_path / "we ird\nname;.mp4"), "json")


def test_manifest_survives_a_cut_line(tmp_path):
    m = tmp_path / "manifest.jsonl"
    m.write_text('{"key": "a", "status": "ok"}\n{"key": "b", "sta')  # killed mid-line
    assert [r["key"] for r in read_manifests(tmp_path)] == ["a"]
    w = ManifestWriter(m)
    w.append({"key": "c", "status": "ok"})
    w.close()
    assert [r["key"] for r in read_manifests(tmp_path)] == ["a", "c"]
    assert m.read_text().endswith('"sta\n{"key": "c", "status": "ok"}\n')


def test_plan_skips_only_what_is_done_with_this_model_and_input(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"12345")
    out = tmp_path / "out"
    out.mkdir()
    items = [(str(video), None)]
    settings = {"window": 1.0}
    assert len(plan_corpus(items, out, "jsonl", "m1", settings).todo) == 1
    job = plan_corpus(items, out, "jsonl", "m1", settings).todo[0]
    rec = {"key": job.key, "size": job.size, "mtime_ns": job.mtime_ns, "model_sha256": "m1", "settings": settings,
           "result": job.result, "status": "ok"}
    (out / "manifest.jsonl").write_text(json.dumps(rec) + "\n")
    assert len(plan_corpus(items, out, "jsonl", "m1", settings).todo) == 1  # result file missing: redo
    (out / job.result).write_text("{}\n")
    assert len(plan_corpus(items, out, "jsonl", "m1", settings).skipped) == 1
    assert len(plan_corpus(items, out, "jsonl", "m1", settings, force=True).todo) == 1
    assert len(plan_corpus(items, out, "jsonl", "m2", settings).todo) == 1            # another model
    assert len(plan_corpus(items, out, "jsonl", "m1", {"window": 2.0}).todo) == 1     # other settings
    assert len(plan_corpus(items, out, "csv", "m1", settings).todo) == 1              # other format
    os.utime(video, ns=(job.mtime_ns, job.mtime_ns + 10**9))
    assert len(plan_corpus(items, out, "jsonl", "m1", settings).todo) == 1            # input changed
    (out / "manifest.jsonl").write_text(json.dumps(dict(rec, status="failed")) + "\n")
    os.utime(video, ns=(job.mtime_ns, job.mtime_ns))
    assert len(plan_corpus(items, out, "jsonl", "m1", settings).todo) == 1            # failed: redo


def test_progress_line_counts_and_estimates(monkeypatch):
    from dfer_cli.corpus import run as corpus

    clock = iter([100.0, 160.0])  # start, then one minute later
    monkeypatch.setattr(corpus.time, "monotonic", lambda: next(clock))
    s = corpus.Summary(total=10, skipped=2)
    p = corpus.CorpusProgress(s, todo=8, enabled=False)
    s.done, s.failed = 3, 1
    assert p.stats() == "done 3 · failed 1 · skipped 2 · left 4 · 4.0 videos/min · ETA 0:01:00"
    s.seconds, s.manifest = 60.0, "out/manifest.jsonl"
    assert s.line() == ("corpus: 3 done, 1 failed, 2 skipped (already done) in 1 min 0 s (4.0 videos/min); "
                        "manifest out/manifest.jsonl")
    s.seconds = 3 * 3600 + 125.4
    assert "in 3 h 2 min (0.0 videos/min)" in s.line()
    s.shard, s.other_shards, s.corpus_done, s.seconds = (2, 3), 4, 7, 723.0
    assert s.line() == ("corpus shard 2/3: 3 done, 1 failed, 2 skipped (already done) in 12 min 3 s "
                        "(0.3 videos/min); 4 in other shards, 7 of 10 done in all; manifest out/manifest.jsonl")
    assert s.interrupted_line("out") == ("interrupted after 6 of 6 videos; finished results are in out "
                                         "(rerun the same command to resume)")


def test_progress_across_shards_reads_every_manifest(monkeypatch):
    from dfer_cli.corpus import run as corpus

    clock = iter([0.0, 60.0])  # start, then one minute later
    monkeypatch.setattr(corpus.time, "monotonic", lambda: next(clock))
    whole = iter([10, 40])  # inputs done in OUT by all shards: at the start, then a minute later
    s = corpus.Summary(total=100, other_shards=50, shard=(1, 2))
    p = corpus.CorpusProgress(s, todo=50, enabled=False, whole=lambda: next(whole))
    p.whole_start = p.whole_now = next(whole)  # what an enabled bar reads when it starts
    p.whole_at = 0.0
    s.done = 15
    assert p.stats() == ("done 15 · failed 0 · skipped 0 · left 35 · 15.0 videos/min · ETA 0:02:20 │ "
                         "all shards: 40/100 done · 30.0 videos/min · ETA 0:02:00")


@pytest.mark.parametrize("args, needle", [
    (["--shard", "1/2"], "--shard works on an output folder: add --output-dir OUT"),
    (["--ray"], "--ray works on an output folder"),
    (["--output-dir", "{out}", "--shard", "3/2"], "--shard 3/2: K counts from 1"),
    (["--output-dir", "{out}", "-o", "{out}/x.jsonl"], "--output and --output-dir: choose one"),
    (["--output-dir", "{out}", "-f", "table"], "--format table: an --output-dir gets one file per video"),
    (["--output-dir", "{out}", "--workers", "2"], "add --ray"),
    (["--output-dir", "{out}", "--plot", "p.png"], "--annotate / --plot are not available with --output-dir"),
    (["--output-dir", "{out}", "--ray-address", "no/nsense"], "--ray-address no/nsense: not a Ray address"),
    (["--output-dir", "{file}"], "exists and is not a folder"),
])
def test_usage_errors_are_one_line_before_any_work(ckpt, corpus, tmp_path, monkeypatch, args, needle):
    import dfer_cli.predict

    def no_work(*a, **k):
        raise AssertionError("a video was processed before the usage error")

    monkeypatch.setattr(dfer_cli.predict, "predict_video", no_work)
    (tmp_path / "file").write_text("x")
    args = [a.replace("{out}", str(tmp_path / "out")).replace("{file}", str(tmp_path / "file")) for a in args]
    r = invoke([str(corpus / "blank0.mp4"), "-w", str(ckpt), *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("dfer predict: ") and needle in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- the pipeline

def test_clean_run_writes_one_file_per_video_and_a_manifest(clean, ckpt, corpus):
    r, out = clean
    assert r.exit_code == 1  # broken.mp4 failed; the rest were done
    assert f"dfer: skipping {corpus / 'broken.mp4'}: " in r.stderr
    assert re.fullmatch(rf"dfer: corpus: {N_FACES + N_BLANK} done, 1 failed, 0 skipped \(already done\) in (\d+ min )?\d+ s "
                        rf"\([\d.]+ videos/min\); manifest {re.escape(str(out / 'manifest.jsonl'))}",
                        r.stderr.splitlines()[-1]), r.stderr
    assert len(r.stderr.splitlines()) == 2  # the failure and the summary: no progress when not a terminal
    assert r.stdout == ""
    files = results(out)
    assert len(files) == N_FACES + N_BLANK
    man = latest(out)
    assert len(man) == N_FACES + N_BLANK + 1
    from dfer_cli import __version__
    from dfer_cli.weights import file_sha256

    statuses = {}
    for rec in man.values():
        assert rec["model_sha256"] == file_sha256(ckpt) and rec["dfer_version"] == __version__
        assert rec["size"] == os.path.getsize(rec["key"]) and rec["mtime_ns"] == os.stat(rec["key"]).st_mtime_ns
        statuses[Path(rec["input"]).name + ("@" + Path(rec["input"]).parent.name)] = rec["status"]
        if rec["status"] == "failed":
            assert rec["result"] is None and rec["error"] and "broken.mp4" not in rec["error"]
            continue
        recs = [json.loads(x) for x in files[rec["result"]].splitlines()]
        assert recs[-1]["type"] == "video" and recs[-1]["video"] == rec["input"] == recs[0]["video"]
        assert recs[-1]["status"] == rec["status"]
    assert sorted(statuses.values()) == sorted(["ok"] * N_FACES + ["no face"] * N_BLANK + ["failed"])
    assert sum(name.startswith("face0-") for name in files) == 2  # a/face0.mp4 and b/face0.mp4 both kept


def test_result_file_is_what_predict_prints_for_the_video(clean, ckpt, corpus):
    _, out = clean
    video = str(corpus / "a" / "face1.mp4")
    r = invoke([video, "-w", str(ckpt), *OPTS, "-f", "jsonl"])
    assert r.exit_code == 0, r.output
    from dfer_cli.corpus.plan import input_key

    assert (out / result_name(input_key(video), "jsonl")).read_text() == r.stdout


def test_rerun_skips_done_videos_and_redoes_failed_and_changed(clean, ckpt, corpus, tmp_path):
    _, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out)])
    assert r.exit_code == 1  # broken.mp4 is tried again and fails again
    assert f"0 done, 1 failed, {N_FACES + N_BLANK} skipped (already done)" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "manifest.jsonl"} == \
        {k: v for k, v in before.items() if k != "manifest.jsonl"}
    assert len(read_manifests(out)) == len(read_manifests(ref)) + 1  # only the failure appended

    # a changed input is redone; --force redoes everything
    changed = corpus / "blank1.mp4"
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        r = invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out), "-q"])
        assert r.exit_code == 1 and r.stderr.count("\n") == 1  # --quiet: the failure line only
        new = [x for x in read_manifests(out)[len(read_manifests(ref)) + 1:] if x["status"] != "failed"]
        assert [x["input"] for x in new] == [str(changed)]
        assert results(out) == results(ref)
    finally:
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_killed_run_resumes_without_redoing_and_matches_the_clean_run(clean, ckpt, corpus, tmp_path):
    _, ref = clean
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dfer_cli", "predict", str(corpus), "-r", "-w", str(ckpt), *OPTS,
           "--output-dir", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and sum(r["status"] != "failed" for r in read_manifests(out)) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done_before = {r["key"]: r for r in read_manifests(out) if r["status"] != "failed"}
    assert 2 <= len(done_before) < N_FACES + N_BLANK  # killed half-way
    # every result file present is complete: it is the clean run's file, byte for byte
    partial = results(out)
    assert partial and all(text == results(ref)[name] for name, text in partial.items())
    mtimes = {r["result"]: (out / r["result"]).stat().st_mtime_ns for r in done_before.values()}

    r = invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out)])
    assert r.exit_code == 1, r.output
    assert f"{N_FACES + N_BLANK - len(done_before)} done, 1 failed, {len(done_before)} skipped" in r.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in mtimes} == mtimes  # not redone
    ok_lines = [x for x in read_manifests(out) if x["status"] != "failed"]
    assert len(ok_lines) == N_FACES + N_BLANK  # each video finished exactly once
    assert results(out) == results(ref)


def test_two_shards_make_the_whole_run(clean, ckpt, corpus, tmp_path):
    _, ref = clean
    out = tmp_path / "out"
    runs = [invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out), "--shard", f"{k}/2"])
            for k in (1, 2)]
    assert sorted(r.exit_code for r in runs) == [0, 1]  # broken.mp4 fails in exactly one shard
    per_shard = [{x["key"] for x in read_manifests(out) if x in _lines(out / f"manifest.shard-{k}-of-2.jsonl")}
                 for k in (1, 2)]
    assert per_shard[0] and per_shard[1] and not per_shard[0] & per_shard[1]
    assert per_shard[0] | per_shard[1] == set(latest(ref))
    for k, r in zip((1, 2), runs):
        assert f"; {len(per_shard[2 - k])} in other shards, " in r.stderr
    # the second shard's summary counts what both shards did: the whole corpus but broken.mp4
    assert f", {N_FACES + N_BLANK} of {N_FACES + N_BLANK + 1} done in all; manifest " in runs[1].stderr
    assert f"manifest {out / 'manifest.shard-2-of-2.jsonl'}" in runs[1].stderr
    assert results(out) == results(ref)
    assert not (out / "manifest.jsonl").exists()
    # an unsharded rerun over the shards' folder finds everything done
    r = invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out)])
    assert f"0 done, 1 failed, {N_FACES + N_BLANK} skipped (already done)" in r.stderr


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_csv_and_json_result_files(ckpt, corpus, tmp_path):
    import csv
    import io

    video = corpus / "b" / "face0.mp4"
    for fmt in ("csv", "json"):
        out = tmp_path / fmt
        r = invoke([str(video), str(corpus / "blank0.mp4"), "-w", str(ckpt), *OPTS, "--output-dir", str(out),
                    "-f", fmt, "-q"])
        assert r.exit_code == 0 and r.stderr == "", r.output
        direct = invoke([str(video), "-w", str(ckpt), *OPTS, "-f", fmt]).stdout
        files = results(out)
        assert len(files) == 2 and all(n.endswith("." + fmt) for n in files)
        from dfer_cli.corpus.plan import input_key

        text = files[result_name(input_key(str(video)), fmt)]
        assert text == direct
        if fmt == "csv":
            assert {row["type"] for row in csv.DictReader(io.StringIO(text))} == {"clip", "track"}
        else:
            assert json.loads(text)[0]["type"] == "video"


# --------------------------------------------------------------------------- batching across videos

class _Rows:
    """A stand-in model for SharedClassifier: a fixed linear map of each clip (CPU), that
    counts its forward passes and their sizes and fails on a clip whose first value is -1."""

    def __init__(self):
        import torch

        torch.manual_seed(0)
        self.lin = torch.nn.Linear(12, 7)
        self.sizes = []

    def parameters(self):
        return self.lin.parameters()

    def __call__(self, x):
        self.sizes.append(int(x.shape[0]))
        if (x.flatten(1)[:, 0] == -1).any():
            raise ValueError("a poisoned clip")
        return self.lin(x.flatten(1))


def test_shared_classifier_merges_the_batches_of_waiting_threads_and_splits_the_output():
    import threading

    import torch

    from dfer_cli.corpus.shared import SharedClassifier

    model = _Rows()
    shared = SharedClassifier(model, max_batch=100, max_wait=60.0)  # merge only when every member waits
    rounds = {"a": 1, "b": 3, "c": 2}
    sizes = {"a": 2, "b": 3, "c": 4}
    inputs = {k: [torch.randn(sizes[k], 3, 4) for _ in range(n)] for k, n in rounds.items()}
    got, errors, start = {}, [], threading.Barrier(3)

    def member(k):
        try:
            with shared.member():
                start.wait()
                got[k] = [shared(x) for x in inputs[k]]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=member, args=(k,)) for k in rounds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    # round 1: all three together; then b and c once a has left; then b alone
    assert model.sizes == [2 + 3 + 4, 3 + 4, 3]
    assert (shared.forwards, shared.clips, shared.largest) == (3, 19, 9)
    with torch.no_grad():
        for k in rounds:
            for x, y in zip(inputs[k], got[k]):
                assert y.shape == (sizes[k], 7)
                assert torch.allclose(y, model.lin(x.flatten(1)), atol=1e-6)


def test_shared_classifier_caps_a_pass_at_max_batch_and_hands_errors_to_every_caller():
    import threading

    import torch

    from dfer_cli.corpus.shared import SharedClassifier

    model = _Rows()
    shared = SharedClassifier(model, max_batch=5, max_wait=60.0)
    xs = [torch.randn(3, 12) for _ in range(3)]
    xs[2][0, 0] = -1  # this caller's batch poisons the pass it is in
    got, start = {}, threading.Barrier(3)

    def member(i):
        with shared.member():
            start.wait()
            try:
                got[i] = shared(xs[i])
            except ValueError as e:
                got[i] = e

    threads = [threading.Thread(target=member, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(model.sizes) == [3, 3, 3]  # 3 + 3 > 5: never two batches in one pass
    assert isinstance(got[2], ValueError) and all(isinstance(got[i], torch.Tensor) for i in (0, 1))


def _records(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines()]


def test_videos_in_flight_share_batches_and_give_the_records_of_one_video_at_a_time(
        clean, ckpt, corpus, tmp_path, monkeypatch):
    """Three videos decoded and detected at once, their clips classified together (on CPU
    here; CUDA is where it pays): the same result files as the one-at-a-time reference, up to
    the last rounded digit of a probability (a one-clip batch takes another kernel on CPU)."""
    from dfer_cli.corpus import run as corpus_mod
    from dfer_cli.corpus import shared as corpus_shared

    _, ref = clean
    made = []

    class Watched(corpus_mod.SharedClassifier):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(corpus_mod, "SharedClassifier", Watched)
    monkeypatch.setattr(corpus_shared, "SHARE_WAIT", 5.0)  # a busy machine still merges
    out = tmp_path / "out"
    s = run_corpus([str(corpus)], out, weights=ckpt, recursive=True, threads=1, device="cpu", window=1.0,
                   stride=0.5, batch_size=2, videos_in_flight=3)
    assert (s.done, s.failed) == (N_FACES + N_BLANK, 1)
    (shared,) = made
    assert shared.max_batch == 2 * 3
    assert shared.largest > 2  # clips of several videos in one pass: one video hands in at most 2
    assert shared.forwards < sum(len([r for r in _records(t) if r["type"] == "clip" and r["label"]])
                                 for t in results(ref).values())
    mine, theirs = results(out), results(ref)
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        a, b = _records(mine[name]), _records(theirs[name])
        assert len(a) == len(b)
        for x, y in zip(a, b):
            px, py = x.pop("probabilities", None), y.pop("probabilities", None)
            x.pop("confidence", None), y.pop("confidence", None)
            assert x == y
            assert (px is None) == (py is None)
            for k in px or {}:
                assert px[k] == pytest.approx(py[k], abs=1.5e-4)
    # every video once in the manifest, written by this (the main) thread
    assert sorted(r["input"] for r in read_manifests(out)) == sorted(r["input"] for r in read_manifests(ref))


def test_videos_in_flight_and_precision_are_checked_before_any_work(ckpt, corpus, tmp_path):
    from dfer_cli.corpus.errors import CorpusError

    for kw, needle in (({"videos_in_flight": 0}, "videos_in_flight 0: must be at least 1"),
                       ({"precision": "fp8"}, "precision fp8: expected one of fp16, bf16, fp32")):
        with pytest.raises(CorpusError, match=needle):
            run_corpus([str(corpus / "blank0.mp4")], tmp_path / "out", weights=ckpt, **kw)
        assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_batches_videos_together_under_autocast(clean, ckpt, corpus, tmp_path, precision):
    import torch

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    _, ref = clean
    out = tmp_path / precision
    s = run_corpus([str(corpus)], out, weights=ckpt, recursive=True, device="cuda", window=1.0, stride=0.5,
                   precision=precision)  # 4 videos in flight by default on CUDA
    assert (s.done, s.failed) == (N_FACES + N_BLANK, 1)
    mine, theirs = results(out), results(ref)
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        for x, y in zip(_records(mine[name]), _records(theirs[name])):
            assert (x["type"], x.get("start"), x.get("track")) == (y["type"], y.get("start"), y.get("track"))
            for k, p in (x.get("probabilities") or {}).items():
                assert p == pytest.approx(y["probabilities"][k], abs=3e-2)


# --------------------------------------------------------------------------- Ray

class _FakeRay:
    """An in-process stand-in for the few Ray calls `corpus_ray.run_ray` makes, so that its
    scheduling (one video in flight per actor), retry-on-worker-death bookkeeping and the
    driver-side writes are checked on any machine; the real Ray is the next test.
    An actor method that raises `_FakeRay.Died` is a worker process that died."""

    class Died(BaseException):  # like os._exit in a real worker: no `except Exception` stops it
        pass

    class exceptions:
        class RayError(Exception):
            pass

        class RayActorError(RayError):
            pass

    class util:
        @staticmethod
        def get_node_ip_address():
            return "127.0.0.1"

    def __init__(self, restarting_calls: int = 0):
        self.actors = []
        self.options = None
        self.restarting_calls = restarting_calls  # calls refused after each death
        self.refuse = set()                       # run(path) calls refused once, no death

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": 2.0}

    def remote(self, **options):
        self.options = options
        fake = self

        def wrap(cls):
            class Handle:
                @staticmethod
                def remote(*args):
                    actor = _FakeActor(fake, cls, args)
                    fake.actors.append(actor)
                    return actor
            return Handle
        return wrap

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        if isinstance(ref, list):
            return [self.get(r) for r in ref]
        if isinstance(ref.value, BaseException):
            raise ref.value
        return ref.value

    def kill(self, actor):
        actor.killed = True


class _FakeRef:
    """An object reference: hashable by identity, holding the call's result or error."""
    value = None


class _FakeActor:
    def __init__(self, fake, cls, args):
        self.fake, self.obj, self.killed, self.calls = fake, cls(*args), False, 0
        self.cls, self.args = cls, args
        self.restarting = 0  # calls still to refuse as Ray does while it restarts the actor

    def __getattr__(self, name):
        method = getattr(self.obj, name)
        fake = self.fake
        actor = self

        class Method:
            @staticmethod
            def remote(*args):
                actor.calls += 1
                ref = _FakeRef()
                if actor.restarting or (name == "run" and args[0] in fake.refuse):
                    actor.restarting = max(0, actor.restarting - 1)
                    fake.refuse.discard(args[0] if name == "run" else None)
                    ref.value = fake.exceptions.RayActorError("The actor is temporarily unavailable: "
                                                              "IOError: The actor is restarting")
                    return ref
                try:
                    ref.value = method(*args)
                except _FakeRay.Died as e:
                    ref.value = fake.exceptions.RayActorError(f"The actor died unexpectedly: {e}")
                    actor.obj = actor.cls(*actor.args)  # Ray restarts it: a new incarnation
                    actor.restarting = fake.restarting_calls
                return ref
        return Method


def test_ray_driver_retries_dead_workers_and_writes_like_a_local_run(clean, ckpt, corpus, tmp_path, monkeypatch):
    from dfer_cli.corpus import on_ray as corpus_ray
    from dfer_cli.predict import predict_video

    _, ref = clean
    fake = _FakeRay()
    monkeypatch.setattr(corpus_ray, "ray", fake)
    deaths = {}

    def flaky(model, path, **kw):  # face1 videos kill their worker once; doomed.mp4 every time
        name = os.path.basename(path)
        if "doomed" in name or ("face1" in name and path not in deaths):
            deaths[path] = deaths.get(path, 0) + 1
            raise _FakeRay.Died(f"exit code 3 on {name}")
        return predict_video(model, path, **kw)

    doomed = tmp_path / "doomed.mp4"
    shutil.copy(corpus / "blank0.mp4", doomed)
    out = tmp_path / "out"
    s = run_corpus([str(corpus), str(doomed)], out, weights=ckpt, ray="local", workers=2, retries=2,
                   recursive=True, threads=1, device="cpu", window=1.0, stride=0.5, predict=flaky)
    assert (s.done, s.failed) == (N_FACES + N_BLANK, 2)
    assert fake.options == {"num_cpus": 1, "num_gpus": 0.0, "max_restarts": -1, "max_task_retries": 0}
    assert len(fake.actors) == 2 and all(a.killed for a in fake.actors)
    # ready, videos, retries, and a ready ping after each of the 5 deaths
    assert sum(a.calls for a in fake.actors) == 2 + (N_FACES + N_BLANK + 2) + 2 + 2 + 5
    man = latest(out)
    dead = man[str(doomed.resolve())]
    assert dead["status"] == "failed" and dead["attempts"] == 3 and deaths[str(doomed.resolve())] == 3
    assert dead["error"].startswith("the worker died on each of 3 attempts: The actor died unexpectedly")
    assert len(dead["retried_after"]) == 3
    retried = [r for r in man.values() if "face1" in r["input"]]
    assert len(retried) == 2 and all(r["status"] == "ok" and r["attempts"] == 2 for r in retried)
    assert all(r["worker"].startswith("ray:127.0.0.1:") for r in man.values() if r["status"] != "failed")
    assert results(out) == results(ref)


class _StubWorker:
    """A model-less CorpusWorker for `_drive`: `crash*` kills it the first time, `doomed*`
    every time."""
    crashed: set = set()

    def __init__(self):
        import uuid

        self.incarnation = uuid.uuid4().hex

    def ready(self):
        return self.incarnation

    def run(self, path, key, fmt, opts):
        if path.startswith("doomed") or (path.startswith("crash") and path not in self.crashed):
            self.crashed.add(path)
            raise _FakeRay.Died(f"exit code 3 on {path}")
        return {"status": "ok", "seconds": 0.0, "worker": self.incarnation}


def test_ray_driver_counts_attempts_only_when_the_worker_died(monkeypatch):
    """Calls refused while Ray restarts an actor ("The actor is restarting") or refused by a
    live actor are sent again without counting an attempt; a death counts one."""
    from collections import namedtuple

    from dfer_cli.corpus import on_ray as corpus_ray

    fake = _FakeRay(restarting_calls=2)   # the ping after each death is refused twice
    monkeypatch.setattr(corpus_ray, "ray", fake)
    monkeypatch.setattr(_StubWorker, "crashed", set())
    fake.refuse = {"bounced"}
    Job = namedtuple("Job", "path key")
    jobs = [Job(p, p) for p in ("ok", "bounced", "crash", "doomed", "last")]
    actor = fake.remote()(_StubWorker).remote()
    actors, incarnations = [actor], [actor.obj.ready()]
    got, logs = {}, []
    corpus_ray._drive(jobs, actors, incarnations, None, "jsonl", {}, lambda job, o, w: got.update({job.path: o}),
                      retries=1, log=logs.append)
    assert list(got) == ["ok", "bounced", "crash", "doomed", "last"]
    assert [got[p]["attempts"] for p in got] == [1, 1, 2, 2, 1]
    assert [got[p]["status"] for p in got] == ["ok", "ok", "ok", "failed", "ok"]
    assert "retried_after" not in got["bounced"] and len(got["crash"]["retried_after"]) == 1
    assert got["doomed"]["error"].startswith("the worker died on each of 2 attempts: The actor died unexpectedly")
    assert len(logs) == 2 and all("trying again (attempt 2 of 2)" in m for m in logs)
    # runs: 5 videos, the bounced one again, the retries of crash and doomed; pings: one after
    # the bounce, and after each of the 3 deaths two refused (restarting) and one answered
    assert actor.calls == (5 + 1 + 2) + (1 + 3 * 3)


class CrashOnce:
    """A `predict` for run_corpus that kills its worker process the first time it sees a video
    whose name contains `once`, and every time for `always`; otherwise predict_video."""

    def __init__(self, marks: str, once: str, always: str):
        self.marks, self.once, self.always = marks, once, always

    def __call__(self, model, path, **kw):
        import os

        from dfer_cli.predict import predict_video

        name = os.path.basename(path)
        mark = os.path.join(self.marks, path.replace(os.sep, "_") + ".crashed")
        if self.always in name or (self.once in name and not os.path.exists(mark)):
            open(mark, "w").close()
            os._exit(3)
        return predict_video(model, path, **kw)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'dfer[ray]')")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # CrashOnce travels to the workers
    from dfer_cli.corpus.on_ray import start_local_ray

    try:
        start_local_ray(attempts=2, num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
                        log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # Ray's own start-up deadlines (15 s for its agents) missed on a starved CPU
        if "timed out during startup" not in str(e):
            raise
        pytest.skip(f"a local Ray could not start on this machine: {str(e).splitlines()[0]} "
                    "(its agents missed Ray's fixed 15 s start-up limit: the CPU is busy)")
    yield ray
    ray.shutdown()


def test_ray_run_matches_the_local_run_and_retries_dead_workers(clean, ckpt, corpus, local_ray, tmp_path):
    _, ref = clean
    out = tmp_path / "out"
    doomed = tmp_path / "doomed.mp4"
    shutil.copy(corpus / "blank0.mp4", doomed)
    marks = tmp_path / "marks"
    marks.mkdir()
    inputs = [str(corpus), str(doomed)]
    s = run_corpus(inputs, out, weights=ckpt, ray="local", workers=2, retries=1, recursive=True,
                   threads=1, device="cpu", window=1.0, stride=0.5,
                   predict=CrashOnce(str(marks), once="face1", always="doomed"))
    assert (s.done, s.failed, s.skipped) == (N_FACES + N_BLANK, 2, 0)
    man = latest(out)
    dead = man[str(doomed.resolve())]
    assert dead["status"] == "failed" and dead["attempts"] == 2
    assert "the worker died on each of 2 attempts" in dead["error"]
    retried = [r for r in man.values() if "face1" in r["input"]]
    assert len(retried) == 2 and all(r["status"] == "ok" and r["attempts"] == 2 and r["retried_after"]
                                     for r in retried)
    assert all(r["worker"].startswith("ray:") for r in man.values() if r["status"] != "failed")
    assert results(out) == results(ref)  # Ray's records are the local run's

    # the CLI on the same folder: all done, nothing sent to Ray, exit 1 for the two failures again
    r = invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out), "--ray", "--workers", "1"])
    assert r.exit_code == 1 and f"1 failed, {N_FACES + N_BLANK} skipped (already done)" in r.stderr


@pytest.mark.gpu
def test_corpus_on_cuda_agrees_with_the_cpu_run(clean, ckpt, corpus, tmp_path):
    """The model stays on the GPU for the whole corpus (float16 autocast): same labels, and
    probabilities within 2e-2 of the CPU run."""
    _, ref = clean
    out = tmp_path / "cuda"
    s = run_corpus([str(corpus)], out, weights=ckpt, recursive=True, device="cuda", window=1.0, stride=0.5)
    assert (s.done, s.failed) == (N_FACES + N_BLANK, 1)
    mine, theirs = results(out), results(ref)
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        a = [json.loads(x) for x in mine[name].splitlines()]
        b = [json.loads(x) for x in theirs[name].splitlines()]
        assert [(x["type"], x.get("label")) for x in a] == [(x["type"], x.get("label")) for x in b]
        for x, y in zip(a, b):
            for k, p in (x.get("probabilities") or {}).items():
                assert p == pytest.approx(y["probabilities"][k], abs=2e-2)


def test_a_second_run_into_the_same_output_folder_is_refused_while_the_first_writes(ckpt, corpus, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / "manifest.jsonl", "a+b") as held:       # what a running first run holds
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        r = invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out)])
        assert r.exit_code == 1
        assert r.stderr.strip() == (f"dfer: {out}: another dfer run is writing manifest.jsonl now; wait for it to "
                                    "finish, or split the work with --shard K/N (each shard has a manifest of its own)")
        assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl"] and held.read() == b""
        # a shard writes a manifest of its own and is not held up
        r = invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out), "--shard", "1/8"])
        assert r.exit_code in (0, 1) and "another dfer run" not in r.stderr


def test_a_full_disk_under_the_output_folder_stops_the_run_in_one_line(ckpt, corpus, tmp_path):
    """On a 4 KiB tmpfs (mounting needs root; skipped elsewhere) the first result fits and the
    manifest then cannot grow: one line naming it and the fix, exit 1, no traceback."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:   # root in a container without the right to mount (CAP_SYS_ADMIN)
        said = (mounted.stderr.strip() or "mount failed").splitlines()[0]
        pytest.skip(f"needs root allowed to mount a tmpfs: {said}")
    try:
        out = mnt / "out"
        r = invoke([str(corpus), "-r", "-w", str(ckpt), *OPTS, "--output-dir", str(out)])
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines()[-1] == (f"dfer: cannot write {out / 'manifest.jsonl'} (no space left on device); "
                                         "stopped: free some space, then rerun the same command to resume")
    assert "Traceback" not in r.stderr

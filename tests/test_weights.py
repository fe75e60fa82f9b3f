"""weights.py: lookup order, explicit download with sha256 check, and `dfer weights`."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
from typer.testing import CliRunner

from dfer_cli import download as D
from dfer_cli import weights as W
from dfer_cli.cli.main import app


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    env, cache = tmp_path / "env", tmp_path / "xdg"
    env.mkdir()
    monkeypatch.setenv("DFER_WEIGHTS_DIR", str(env))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return env, cache / "dfer" / "weights"


@pytest.fixture
def published(tmp_path, monkeypatch, ckpt):
    """A checkpoint 'published' at a file:// URL, registered under the name 'demo'."""
    blob = ckpt.read_bytes()
    src = tmp_path / "server" / "demo.safetensors"
    src.parent.mkdir()
    src.write_bytes(blob)
    entry = W.KnownWeights("demo", "a test checkpoint", src.as_uri(), hashlib.sha256(blob).hexdigest())
    monkeypatch.setitem(W.KNOWN, "demo", entry)
    return blob, entry


def test_search_order_env_then_cache_then_bundled(dirs):
    env, cache = dirs
    assert W.search_dirs() == [env, cache, W.bundled_dir()]
    cache.mkdir(parents=True)
    (cache / "m.safetensors").write_bytes(b"cache")
    assert W.find_weights("m") == cache / "m.safetensors"
    (env / "m.safetensors").write_bytes(b"env")
    assert W.find_weights("m") == env / "m.safetensors"
    assert dict(W.list_weights())["m"] == env / "m.safetensors"
    assert W.weights_source(env / "m.safetensors") == "env"
    assert W.weights_source(cache / "m.safetensors") == "cache"


def test_missing_name_says_how_to_get_one(dirs, published):
    with pytest.raises(FileNotFoundError) as e:
        W.find_weights("demo")
    msg = str(e.value)
    assert "dfer weights download demo" in msg and "dfer train" in msg and "--weights PATH" in msg
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        W.find_weights("nowhere/x.safetensors")


def test_download_verifies_and_installs_into_cache(dirs, published):
    _, cache = dirs
    blob, _ = published
    seen = []
    path = D.download_weights("demo", progress=lambda done, total: seen.append(done))
    assert path == cache / "demo.safetensors" and path.read_bytes() == blob
    assert seen[-1] == len(blob)
    assert W.find_weights("demo") == path
    assert [p.name for p in cache.iterdir()] == ["demo.safetensors"]  # no temp file left


def test_download_rejects_wrong_sha256(dirs, published, monkeypatch):
    _, cache = dirs
    _, entry = published
    monkeypatch.setitem(W.KNOWN, "demo", W.KnownWeights("demo", "", entry.url, "0" * 64))
    with pytest.raises(D.DownloadError, match="does not match"):
        D.download_weights("demo")
    assert not cache.exists() or not any(cache.iterdir())


def test_download_refuses_unpublished_and_unknown(dirs):
    with pytest.raises(D.DownloadError, match="not published"):
        D.download_weights(W.DEFAULT_WEIGHTS)
    with pytest.raises(D.DownloadError, match="unknown weights name 'nope'"):
        D.download_weights("nope")


def test_download_network_failure_is_one_line(dirs, published, monkeypatch, tmp_path):
    _, entry = published
    gone = (tmp_path / "server" / "gone.safetensors").as_uri()
    monkeypatch.setitem(W.KNOWN, "demo", W.KnownWeights("demo", "", gone, entry.sha256))
    with pytest.raises(D.DownloadError, match="download failed") as e:
        D.download_weights("demo")
    assert "\n" not in str(e.value)


def test_cli_weights_download_and_list(dirs, published):
    _, cache = dirs
    runner = CliRunner()
    before = json.loads(runner.invoke(app, ["weights", "list", "--json"]).stdout)
    assert "demo" in [w["name"] for w in before["not_installed"]]
    assert next(w for w in before["not_installed"] if w["name"] == "demo")["downloadable"] is True

    r = runner.invoke(app, ["weights", "download", "demo"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(cache / "demo.safetensors")

    after = json.loads(runner.invoke(app, ["weights", "list", "--json"]).stdout)
    demo = next(w for w in after["installed"] if w["name"] == "demo")
    assert demo["source"] == "cache" and demo["path"] == str(cache / "demo.safetensors")
    table = runner.invoke(app, ["weights", "list"])
    assert table.exit_code == 0 and "demo" in table.stdout and "cache" in table.stdout

    r = runner.invoke(app, ["weights", "download", "nope"])
    assert r.exit_code == 2 and "unknown weights name 'nope'" in r.stderr
    r = runner.invoke(app, ["weights", "download", W.DEFAULT_WEIGHTS])
    assert r.exit_code == 1 and "not published" in r.stderr


def test_download_from_a_path_or_url_needs_the_sha256_and_installs_under_its_name(dirs, ckpt, tmp_path):
    _, cache = dirs
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    runner = CliRunner()
    r = runner.invoke(app, ["weights", "download", str(ckpt)])
    assert r.exit_code == 2 and "--sha256 HEX" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["weights", "download", ckpt.as_uri(), "--sha256", "0" * 64])
    assert r.exit_code == 1 and "does not match" in r.stderr
    assert not cache.exists() or not any(cache.iterdir())
    r = runner.invoke(app, ["weights", "download", str(ckpt), "--sha256", digest, "--name", "mine"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(cache / "mine.safetensors")
    assert W.find_weights("mine") == cache / "mine.safetensors"
    r = runner.invoke(app, ["weights", "download", ckpt.as_uri(), "--sha256", digest])
    assert r.exit_code == 0 and r.stdout.strip() == str(cache / (ckpt.stem + ".safetensors"))

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint" * 10)
    r = runner.invoke(app, ["weights", "download", str(junk), "--sha256", hashlib.sha256(junk.read_bytes()).hexdigest()])
    assert r.exit_code == 1 and "not a dfer checkpoint" in r.stderr and "nothing was installed" in r.stderr
    assert not (cache / "junk.safetensors").exists()


def test_cli_weights_export_half_keeps_predictions(tmp_path):
    import torch

    from dfer_cli.checkpoint import load_model, read_checkpoint, save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    torch.manual_seed(0)
    m = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=4).eval()
    src = save_checkpoint(tmp_path / "run" / "best.safetensors", m, classes=CLASSES,
                          preprocessing=Preprocessing(input_size=32, num_frames=4, grayscale=True),
                          provenance={"epochs": 3})
    dst = tmp_path / "out" / "small.safetensors"
    res = CliRunner().invoke(app, ["weights", "export", str(src), str(dst)])
    assert res.exit_code == 0, res.output
    assert hashlib.sha256(dst.read_bytes()).hexdigest() in res.output
    tensors, meta = read_checkpoint(dst)
    assert meta["dtype"] == "float16" and meta["preprocessing"]["grayscale"] is True
    assert meta["provenance"]["epochs"] == 3
    assert meta["provenance"]["exported_from"]["file"] == "best.safetensors"
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode():
        a, b = m(x).softmax(-1), load_model(dst)(x).softmax(-1)
    assert torch.allclose(a, b, atol=5e-3)
    bad = CliRunner().invoke(app, ["weights", "export", str(src), str(tmp_path / "x.pt")])
    assert bad.exit_code == 2 and "must end in .safetensors" in bad.output
    missing = CliRunner().invoke(app, ["weights", "export", str(tmp_path / "nope.safetensors"), str(dst)])
    assert missing.exit_code == 1 and "nope.safetensors" in missing.output


def test_cli_weights_export_frames_makes_a_video_model_from_a_stills_model(tmp_path):
    import torch

    from dfer_cli.checkpoint import load_model, read_checkpoint, save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    torch.manual_seed(0)
    m = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=1,
                     window=(2, 1, 1)).eval()
    src = save_checkpoint(tmp_path / "stills.safetensors", m, classes=CLASSES,
                          preprocessing=Preprocessing(input_size=32, num_frames=1, grayscale=True))
    dst = tmp_path / "video.safetensors"
    res = CliRunner().invoke(app, ["weights", "export", str(src), str(dst), "--frames", "16", "--float32"])
    assert res.exit_code == 0, res.output
    tensors, meta = read_checkpoint(dst)
    assert meta["config"]["num_frames"] == 16 and meta["preprocessing"]["num_frames"] == 16
    assert meta["provenance"]["exported_from"]["num_frames"] == 1
    src_t, _ = read_checkpoint(src)
    # the time embedding repeated over the 16 frames; the window pool (built for 1 frame,
    # now 2) spread evenly over them, so a still's pooled token is unchanged
    assert torch.equal(tensors["pos_time"], src_t["pos_time"].expand(-1, 16, -1, -1))
    pool = [k for k in tensors if k.endswith("pool.weight")]
    assert pool and all(torch.allclose(tensors[k].sum(2, keepdim=True), src_t[k]) for k in pool)
    assert tensors[pool[0]].shape[2] == 2
    video = load_model(dst)
    assert video(torch.randn(1, 16, 3, 32, 32)).shape == (1, 7)


def test_cli_weights_export_frames_1_takes_a_video_model_back_to_the_stills_model(tmp_path):
    """stills -> 16 frames -> stills gives back every tensor: the bundled default can be
    fine-tuned on stills from what it was exported from."""
    import torch

    from dfer_cli.checkpoint import read_checkpoint, save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    torch.manual_seed(0)
    m = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=1,
                     window=(2, 1, 1)).eval()
    src = save_checkpoint(tmp_path / "stills.safetensors", m, classes=CLASSES,
                          preprocessing=Preprocessing(input_size=32, num_frames=1, grayscale=True))
    video, back = tmp_path / "video.safetensors", tmp_path / "back.safetensors"
    for a, b, n in ((src, video, "16"), (video, back, "1")):
        res = CliRunner().invoke(app, ["weights", "export", str(a), str(b), "--frames", n, "--float32"])
        assert res.exit_code == 0, res.output
    first, _ = read_checkpoint(src)
    again, meta = read_checkpoint(back)
    assert meta["config"]["num_frames"] == 1 and meta["provenance"]["exported_from"]["num_frames"] == 16
    assert first.keys() == again.keys()
    for k in first:
        torch.testing.assert_close(again[k], first[k], msg=k)


def test_cli_weights_export_prior_shift_moves_the_bias_by_alpha_log_prior(tmp_path):
    import numpy as np
    import torch

    from dfer_cli.checkpoint import read_checkpoint, save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    m = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=1).eval()
    counts = dict(zip(CLASSES, [10, 20, 30, 40, 50, 60, 70]))
    pre = Preprocessing(input_size=32, num_frames=1)
    src = save_checkpoint(tmp_path / "a.safetensors", m, classes=CLASSES, preprocessing=pre,
                          provenance={"data": {"train_class_counts": counts}})
    dst = tmp_path / "b.safetensors"
    res = CliRunner().invoke(app, ["weights", "export", str(src), str(dst), "--prior-shift", "0.5", "--float32"])
    assert res.exit_code == 0, res.output
    a, _ = read_checkpoint(src)
    b, meta = read_checkpoint(dst)
    expect = 0.5 * np.log(np.array([10, 20, 30, 40, 50, 60, 70]) / 280)
    assert np.allclose((b["head.bias"] - a["head.bias"]).numpy(), expect, atol=1e-6)
    assert torch.equal(a["head.weight"], b["head.weight"])
    assert meta["provenance"]["exported_from"]["prior_shift"] == 0.5
    bare = save_checkpoint(tmp_path / "c.safetensors", m, classes=CLASSES, preprocessing=pre)
    res = CliRunner().invoke(app, ["weights", "export", str(bare), str(dst), "--prior-shift", "1"])
    assert res.exit_code == 1 and "train_class_counts" in res.output


def test_cli_weights_export_detail_size_is_recorded_and_checked(tmp_path):
    from dfer_cli.checkpoint import load_model, read_checkpoint, save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    m = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=1).eval()
    src = save_checkpoint(tmp_path / "a.safetensors", m, classes=CLASSES,
                          preprocessing=Preprocessing(input_size=32, num_frames=1))
    assert load_model(src).preprocessing.detail_size is None  # the default: no reduction
    dst = tmp_path / "b.safetensors"
    res = CliRunner().invoke(app, ["weights", "export", str(src), str(dst), "--detail-size", "16"])
    assert res.exit_code == 0, res.output
    assert read_checkpoint(dst)[1]["preprocessing"]["detail_size"] == 16
    assert load_model(dst).preprocessing.detail_size == 16
    kept = tmp_path / "c.safetensors"  # re-exported without the flag: kept; with 0: removed
    assert CliRunner().invoke(app, ["weights", "export", str(dst), str(kept)]).exit_code == 0
    assert load_model(kept).preprocessing.detail_size == 16
    assert CliRunner().invoke(app, ["weights", "export", str(dst), str(kept), "--detail-size", "0"]).exit_code == 0
    assert load_model(kept).preprocessing.detail_size is None
    res = CliRunner().invoke(app, ["weights", "export", str(src), str(tmp_path / "d.safetensors"),
                                   "--detail-size", "48"])
    assert res.exit_code == 2 and "--detail-size 48" in res.output and "input size (32)" in res.output
    assert not (tmp_path / "d.safetensors").exists()


# --- sha256 of registered checkpoints, checked on load -----------------------------------

def test_registry_records_the_bundled_files_real_hash():
    """Replacing weights/logo_former_fer2013.safetensors without updating BUNDLED_SHA256
    fails here (and every load of the default would refuse the file)."""
    bundled = W.bundled_dir() / f"{W.DEFAULT_WEIGHTS}.safetensors"
    assert W.KNOWN[W.DEFAULT_WEIGHTS].sha256 == W.BUNDLED_SHA256
    assert W.file_sha256(bundled) == W.BUNDLED_SHA256
    assert W.registered_name(bundled) == W.DEFAULT_WEIGHTS  # so it is checked when loaded ...
    assert W.find_weights(str(bundled)) == bundled         # ... and passes


@pytest.fixture
def registered(dirs, monkeypatch):
    """'demo' registered with the sha256 of good bytes, and installed in $DFER_WEIGHTS_DIR."""
    env, _ = dirs
    good = b"the registered checkpoint bytes" * 1000
    monkeypatch.setitem(W.KNOWN, "demo", W.KnownWeights("demo", "test", None, hashlib.sha256(good).hexdigest()))
    monkeypatch.setattr(W, "_DIGESTS", {})
    path = env / "demo.safetensors"
    path.write_bytes(good)
    return path, good


def test_tampered_registered_copy_is_refused_with_both_hashes(registered, tmp_path):
    path, good = registered
    assert W.find_weights("demo") == path  # intact: accepted
    tampered = bytearray(good)
    tampered[100] ^= 1
    path.write_bytes(bytes(tampered))
    os.utime(path, ns=(1, 1))  # a new mtime: the cached digest of the good bytes is not reused
    for spec in ("demo", str(path)):  # by name, and by the path of the registered file
        with pytest.raises(W.WeightsMismatchError) as e:
            W.find_weights(spec)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg
        assert hashlib.sha256(good).hexdigest() in msg and hashlib.sha256(tampered).hexdigest() in msg
        assert "delete it" in msg
    # the same bytes under the same name outside the search folders are the user's own file
    own = tmp_path / "mine" / "demo.safetensors"
    own.parent.mkdir()
    own.write_bytes(bytes(tampered))
    assert W.find_weights(str(own)) == own


def test_tampered_bundled_file_says_reinstall(dirs, tmp_path, monkeypatch):
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    data = bytearray((W.bundled_dir() / f"{W.DEFAULT_WEIGHTS}.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bundled / f"{W.DEFAULT_WEIGHTS}.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(W, "bundled_dir", lambda: bundled)
    with pytest.raises(W.WeightsMismatchError, match=f"sha256 {hashlib.sha256(data).hexdigest()} is not the "
                                                      f"{W.BUNDLED_SHA256}.*reinstall dfer"):
        W.find_weights(W.DEFAULT_WEIGHTS)


def test_registered_file_is_hashed_once_per_process(registered, monkeypatch):
    path, _ = registered
    calls = []
    real = W.file_sha256
    monkeypatch.setattr(W, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    for _ in range(3):
        W.find_weights("demo")
        W.find_weights(str(path))
    assert len(calls) == 1


def test_cli_refuses_a_tampered_registered_checkpoint(registered, tmp_path):
    path, good = registered
    path.write_bytes(good[:-1] + b"!")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not decoded: the checkpoint is refused first")
    r = CliRunner().invoke(app, ["predict", str(video), "--weights", "demo"])
    assert r.exit_code == 1 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("dfer: no usable checkpoint: ") and "is not the" in line and str(path) in line
    from dfer_cli.checkpoint import CheckpointError, load_model

    with pytest.raises(CheckpointError, match="is not the"):  # the library refuses it too
        load_model("demo")


@pytest.mark.skipif(os.geteuid() == 0 and not os.path.exists("/usr/bin/setpriv"),
                    reason="needs setpriv (util-linux) to run dfer as an unprivileged user")
def test_an_unreadable_checkpoint_is_one_line_saying_so(ckpt):
    """As an unprivileged user (root reads any file): a --weights file and a registered name
    in $DFER_WEIGHTS_DIR that cannot be read say "permission denied", not "no such file" or a
    traceback."""
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    base = Path(tempfile.mkdtemp(prefix="dfer-weights-"))   # pytest's folders are private to their user
    try:
        os.chmod(base, 0o755)
        (base / "env").mkdir(mode=0o755)
        mine = base / "mine.safetensors"
        shutil.copy(ckpt, mine)
        shutil.copy(ckpt, base / "env" / f"{W.DEFAULT_WEIGHTS}.safetensors")
        for f in (mine, base / "env" / f"{W.DEFAULT_WEIGHTS}.safetensors"):
            os.chmod(f, 0o000)
        os.chmod(base / "env", 0o755)
        video = str(root / "examples" / "single_face_smile.mp4")
        cmd = [sys.executable, "-m", "dfer_cli", "predict", video, "--threads", "1"]
        if os.geteuid() == 0:
            cmd = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        env = {**os.environ, "HOME": str(base), "PYTHONPATH": str(root), "XDG_CACHE_HOME": str(base / "cache")}
        env.pop("DFER_WEIGHTS_DIR", None)
        own = subprocess.run(cmd + ["-w", str(mine)], env=env, capture_output=True, text=True, timeout=300, cwd="/")
        named = subprocess.run(cmd, env={**env, "DFER_WEIGHTS_DIR": str(base / "env")}, capture_output=True,
                               text=True, timeout=300, cwd="/")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for p, path in ((own, mine), (named, base / "env" / f"{W.DEFAULT_WEIGHTS}.safetensors")):
        assert p.returncode == 1, p.stderr[-2000:]
        assert p.stderr.strip() == (f"dfer: no usable checkpoint: {path}: permission denied; make the checkpoint "
                                    "readable (chmod +r) or pass another with --weights")

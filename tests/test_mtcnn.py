"""dfer's MTCNN cascade (dfer_cli.faces.mtcnn) against facenet-pytorch's own `MTCNN.detect`, which
runs the same trained networks; and the start-up it buys (no torchvision, no torch._dynamo)."""
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from synth import face_image, paste

from dfer_cli.faces import mtcnn as M

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ours():
    return M.MTCNN()


@pytest.fixture(scope="module")
def reference():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, select_largest=False, post_process=False)


def _frames(path, every=9, count=4):
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % every == 0:
                out.append(f.to_ndarray(format="rgb24"))
            if len(out) == count:
                break
    return np.stack(out)


def _two_faces():
    # the test face twice, at different sizes, on a grey canvas, plus an empty frame
    face = face_image()
    canvas = np.full((360, 640, 3), 120, np.uint8)
    paste(canvas, face[40:340, 180:420], 20, 30)
    small = face[40:340:2, 180:420:2]
    paste(canvas, small, 420, 150)
    return np.stack([canvas, np.full_like(canvas, 90)])


@pytest.mark.parametrize("source", ["single_face_smile.mp4", "talking_head_webcam.mp4", "two_faces"])
@pytest.mark.parametrize("min_face", [20, 48])
def test_same_faces_as_facenet_pytorch(ours, reference, source, min_face):
    frames = _two_faces() if source == "two_faces" else _frames(ROOT / "examples" / source)
    ours.min_face_size = reference.min_face_size = min_face
    boxes, probs, points = reference.detect(frames, landmarks=True)
    got = ours.detect(frames)
    assert len(got) == len(frames)
    found = 0
    for (b, p, lm), rb, rp, rl in zip(got, boxes, probs, points):
        if rb is None:
            assert len(b) == len(p) == len(lm) == 0
            continue
        found += len(rb)
        assert b.shape == (len(rb), 4) and lm.shape == (len(rb), 5, 2)
        np.testing.assert_allclose(b, np.asarray(rb, float), atol=1e-3)
        np.testing.assert_allclose(p, np.asarray(rp, float), atol=1e-5)
        np.testing.assert_allclose(lm, np.asarray(rl, float), atol=1e-3)
    if source == "two_faces":
        assert [len(g[0]) for g in got] == [2, 0]      # both faces; nothing on the blank frame
    else:
        assert found >= len(frames)


@pytest.mark.parametrize("matrix_max", [1024, 0])   # whole overlap matrix, or row by row
def test_nms_against_a_worked_example(monkeypatch, matrix_max):
    monkeypatch.setattr(M, "NMS_MATRIX_MAX", matrix_max)
    boxes = np.array([[0, 0, 10, 10],      # score 0.9: kept
                      [1, 1, 11, 11],      # IoU 81/119 = 0.68 with box 0: kept at 0.7, not at 0.5
                      [0, 0, 5, 5],        # inside box 0: IoU 0.25, over the smaller 1.0
                                           # (box 1 over box 0: 81 / 100 = 0.81 over the smaller)
                      [30, 30, 40, 40]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert M.nms(boxes, scores, 0.7).tolist() == [3, 0, 1, 2]
    assert M.nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert M.nms(boxes, scores, 0.7, over_min=True).tolist() == [3, 0]
    assert M.nms(boxes, scores, 0.85, over_min=True).tolist() == [3, 0, 1]
    # boxes of different frames never suppress each other
    assert M.nms(boxes, scores, 0.5, groups=np.array([0, 1, 0, 0])).tolist() == [3, 0, 1, 2]
    # inclusive pixel sizes: 11x11 boxes, intersection 10x10 -> 100/142 = 0.704
    assert M.nms(boxes[:2], scores[:2], 0.7, inclusive=True).tolist() == [0]


def test_square_and_regress_reference():
    b = np.array([[10.0, 20.0, 30.0, 60.0]])                  # 20 wide, 40 high
    np.testing.assert_allclose(M.square(b), [[0.0, 20.0, 40.0, 60.0]])
    off = np.array([[0.1, -0.1, 0.0, 0.5]])
    np.testing.assert_allclose(M.regress(b, off), [[10 + 2.1, 20 - 4.1, 30, 60 + 20.5]])
    np.testing.assert_allclose(M.regress(b, off, inclusive=False), [[12, 16, 30, 80]])


def test_pyramid_scales(ours):
    ours.min_face_size = 40
    scales = ours.scales(100, 200)        # shorter side 100 px: 30 px at the first scale 0.3
    assert scales[0] == pytest.approx(0.3)
    assert all(b / a == pytest.approx(0.709) for a, b in zip(scales, scales[1:]))
    assert 100 * scales[-1] >= 12 > 100 * scales[-1] * 0.709


def test_weights_missing_names_the_package(monkeypatch):
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install facenet-pytorch==2\.5\.3"):
        M.weights_dir()


def test_predict_imports_neither_torchvision_nor_dynamo(tmp_path):
    # importing torchvision imports torch._dynamo: seconds at every start of `dfer predict`
    code = (
        "import sys\n"
        "from dfer_cli.checkpoint import load_model\n"
                "from dfer_cli.predict import predict_video\n"
        f"r = predict_video(load_model(), {str(ROOT / 'examples' / 'single_face_smile.mp4')!r})\n"
        "assert r.clips, r\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'facenet_pytorch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"

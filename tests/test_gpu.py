"""CUDA paths: half-precision inference and training steps. Skipped without a GPU."""
import pytest
import torch
from synth import face_image, make_video, tiny_model

import dfer_cli
from dfer_cli.labels import CLASSES
from dfer_cli.models import create_model

pytestmark = pytest.mark.gpu


def tiny():
    return tiny_model(16)


def test_autocast_forward_matches_cpu():
    m = tiny()
    x = torch.randn(2, 16, 3, 32, 32)
    with torch.inference_mode():
        ref = m(x).softmax(-1)
        m = m.cuda()
        with torch.autocast("cuda", dtype=torch.float16):
            out = m(x.cuda()).float().softmax(-1).cpu()
    assert torch.allclose(out, ref, atol=2e-2)


def test_predict_video_on_cuda_agrees_with_cpu(tmp_path):
    import cv2

    face = cv2.resize(face_image(), (240, 136), interpolation=cv2.INTER_AREA)
    path = make_video(tmp_path / "f.mp4", frames=[face] * 16, fps=8)
    cpu = dfer_cli.predict_video(tiny(), path, device="cpu")
    gpu = dfer_cli.predict_video(tiny(), path, device="cuda")
    assert [c.label for c in gpu.clips] == [c.label for c in cpu.clips]
    for a, b in zip(gpu.clips, cpu.clips):
        for k in CLASSES:
            assert a.probabilities[k] == pytest.approx(b.probabilities[k], abs=2e-2)


def test_every_parameter_gets_a_gradient_on_cuda():
    m = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=4).cuda().train()
    x = torch.randn(2, 4, 3, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = m(x).float().logsumexp(-1).mean()
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing

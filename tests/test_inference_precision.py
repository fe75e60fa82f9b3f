"""Inference precision: which dtype `predict_video` computes in, and that bfloat16 on a CPU
with native bfloat16 gives the float32 labels, probabilities within 0.02."""
from pathlib import Path

import pytest
import torch

import dfer_cli
from dfer_cli.device import autocast_dtype, cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
PLAIN = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16(AVX512_BF16)
    assert cpu_has_native_bf16("flags : amx_bf16 amx_tile")
    assert not cpu_has_native_bf16(PLAIN)
    assert not cpu_has_native_bf16("")


def test_auto_precision_by_device(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("dfer_cli.device.cpu_has_native_bf16", lambda cpuinfo=None: True)
    assert autocast_dtype(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr("dfer_cli.device.cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(torch.device("cuda"), "auto") is torch.float16
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(ValueError, match="choose one of"):
        autocast_dtype(cpu, "int8")


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (AVX512-BF16 / AMX)")
@pytest.mark.parametrize("name", ["single_face_smile.mp4", "talking_head_webcam.mp4"])
def test_bf16_matches_fp32_on_the_examples(name):
    model = dfer_cli.load_model("logo_former_fer2013")
    path = ROOT / "examples" / name
    ref = dfer_cli.predict_video(model, path, precision="fp32")
    auto = dfer_cli.predict_video(model, path)  # auto: bfloat16 on this CPU
    assert [(c.track, c.start, c.end) for c in auto.clips] == [(c.track, c.start, c.end) for c in ref.clips]
    assert [c.label for c in auto.clips] == [c.label for c in ref.clips]
    worst = max(abs(a.probabilities[k] - b.probabilities[k])
                for a, b in zip(auto.clips, ref.clips) if a.probabilities for k in a.probabilities)
    assert worst <= 0.02
    assert any(a.probabilities != b.probabilities for a, b in zip(auto.clips, ref.clips))  # it did run in bf16

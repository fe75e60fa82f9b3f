"""Knowledge distillation: the loss against a reference written out here, teachers that see
the student's batch (resized to their input size), refusals of teachers that cannot teach,
and a student that learns its teacher's labelling rather than the dataset's."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import TINY, make_dataset, still_config
from typer.testing import CliRunner

from dfer_cli.checkpoint import load_model, read_checkpoint, read_metadata, save_checkpoint
from dfer_cli.cli.main import app
from dfer_cli.labels import CLASSES
from dfer_cli.models import create_model
from dfer_cli.preprocess import Preprocessing
from dfer_cli.train.config import TrainConfig
from dfer_cli.train.distill import Teachers
from dfer_cli.train.loop import train
from dfer_cli.train.losses import distillation_loss, teacher_probabilities


def reference_kd(student: np.ndarray, teacher_p: np.ndarray, T: float) -> float:
    """T^2 * mean_b sum_c p_t * (log p_t - log softmax(z / T)), in float64 numpy."""
    z = student / T
    log_s = z - z.max(1, keepdims=True)
    log_s = log_s - np.log(np.exp(log_s).sum(1, keepdims=True))
    kl = (teacher_p * (np.log(teacher_p) - log_s)).sum(1)
    return float(T * T * kl.mean())


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_distillation_loss_matches_the_written_out_reference(T):
    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(5, 7, generator=g) * 3
    z_t = torch.randn(5, 7, generator=g) * 3
    p_t = teacher_probabilities([z_t], T)
    ref = reference_kd(z_s.double().numpy(), F.softmax(z_t.double() / T, 1).numpy(), T)
    assert distillation_loss(z_s, p_t, T).item() == pytest.approx(ref, rel=1e-5)


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_towards_it():
    z_t = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    p_t = teacher_probabilities([z_t], 2.0)
    # the same tempered softmax: zero, also when the logits differ by a constant per row
    assert distillation_loss(z_t + torch.tensor([[5.0], [-1.0]]), p_t, 2.0).item() == pytest.approx(0, abs=1e-6)
    z = torch.zeros(2, 3, requires_grad=True)
    loss = distillation_loss(z, p_t, 2.0)
    loss.backward()
    # d/dz of T^2 KL = T * (softmax(z/T) - p_t) / B: a step against it moves z toward the teacher
    expected = 2.0 * (F.softmax(z.detach() / 2.0, 1) - p_t) / 2
    assert torch.allclose(z.grad, expected, atol=1e-6)


def test_several_teachers_average_probabilities_not_logits():
    a = torch.tensor([[4.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 4.0]])
    p = teacher_probabilities([a, b], 1.0)
    manual = (F.softmax(a, 1) + F.softmax(b, 1)) / 2
    assert torch.allclose(p, manual)
    assert not torch.allclose(p, F.softmax((a + b) / 2, 1))  # the logit mean would be another target
    assert torch.allclose(p.sum(1), torch.ones(1))


def _preprocessing(size=32, grayscale=True, frames=1):
    return Preprocessing(input_size=size, num_frames=frames, grayscale=grayscale)


def _teacher_file(path, size=32, frames=1, classes=CLASSES, grayscale=True, seed=0):
    torch.manual_seed(seed)
    model = create_model("logo_former", num_frames=frames, input_size=size, num_classes=len(classes), **TINY)
    save_checkpoint(path, model, classes=list(classes), preprocessing=_preprocessing(size, grayscale, frames))
    return path


def test_teachers_see_the_student_batch_resized_to_their_own_input(tmp_path):
    small = _teacher_file(tmp_path / "t32.safetensors", size=32, seed=1)
    large = _teacher_file(tmp_path / "t48.safetensors", size=48, seed=2)
    teachers = Teachers([small, large], list(CLASSES), _preprocessing(40), num_frames=1)
    x = torch.randn(3, 1, 3, 40, 40)
    got = teachers.logits(x)
    m32, m48 = load_model(small), load_model(large)
    with torch.no_grad():
        want32 = m32(F.interpolate(x[:, 0], size=(32, 32), mode="bilinear", antialias=True)[:, None])
        want48 = m48(F.interpolate(x[:, 0], size=(48, 48), mode="bilinear", antialias=True)[:, None])
    assert torch.allclose(got[0], want32, atol=1e-4) and torch.allclose(got[1], want48, atol=1e-4)
    p = teachers.probabilities(x, 3.0)
    assert torch.allclose(p, (F.softmax(want32 / 3, 1) + F.softmax(want48 / 3, 1)) / 2, atol=1e-5)
    assert all(not q.requires_grad for m in teachers.models for q in m.parameters())
    assert teachers.records[1]["input_size"] == 48 and len(teachers.records[0]["sha256"]) == 64


def test_a_teacher_that_cannot_teach_is_refused_in_one_line(tmp_path):
    colour = _teacher_file(tmp_path / "colour.safetensors", grayscale=False)
    with pytest.raises(ValueError) as e:
        Teachers([colour], list(CLASSES), _preprocessing(32), num_frames=1)
    msg = str(e.value)
    assert "colour.safetensors" in msg and "grayscale" in msg and "--grayscale/--color" in msg and "\n" not in msg
    shuffled = _teacher_file(tmp_path / "order.safetensors", classes=list(reversed(CLASSES)))
    with pytest.raises(ValueError, match="order.safetensors: its classes .* same order"):
        Teachers([shuffled], list(CLASSES), _preprocessing(32), num_frames=1)
    still = _teacher_file(tmp_path / "still.safetensors", frames=1)
    with pytest.raises(ValueError, match=r"clips of 1 frames sampled uniform, the student 4 sampled uniform; .*"
                                         r"`dfer weights export .*still.safetensors OUT.safetensors --frames 4`"):
        Teachers([still], list(CLASSES), _preprocessing(32, frames=4), num_frames=4)
    video = _teacher_file(tmp_path / "video.safetensors", frames=4)
    with pytest.raises(ValueError, match="sampled uniform, the student 4 sampled segments8x2"):
        Teachers([video], list(CLASSES), _preprocessing(32, frames=4), num_frames=4, sampling="segments8x2")


def test_a_video_teacher_sees_a_still_repeated_to_its_clip_length(tmp_path):
    video = _teacher_file(tmp_path / "video.safetensors", frames=4, seed=5)
    teachers = Teachers([video], list(CLASSES), _preprocessing(32), num_frames=1)
    x = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        want = load_model(video)(x.repeat(1, 4, 1, 1, 1))
        once = load_model(video)(x)
    (got,) = teachers.logits(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, once, atol=1e-5)  # one frame alone is not what it was trained on


def test_teachers_trained_on_another_split_or_prior_are_warned_about(tmp_path):
    def teacher(name, **recipe):
        torch.manual_seed(0)
        model = create_model("logo_former", num_frames=1, input_size=32, **TINY)
        full = {"data_root": "/d", "split": "train", "holdout": 0.1, "seed": 0, "holdout_seed": None,
                "logit_adjust": 1.0, **recipe}
        return save_checkpoint(tmp_path / name, model, classes=list(CLASSES), preprocessing=_preprocessing(),
                               provenance={"recipe": full})

    student = {"data_root": "/d", "split": "train", "holdout": 0.1, "seed": 3, "holdout_seed": 0, "logit_adjust": 1.0}
    same = teacher("same.safetensors")  # seed 0 holds out what the student's holdout seed 0 does
    assert Teachers([same], list(CLASSES), _preprocessing(), 1, recipe=student).warnings == []
    other = teacher("other.safetensors", seed=1)
    (w,) = Teachers([other], list(CLASSES), _preprocessing(), 1, recipe=student).warnings
    assert "other.safetensors" in w and "--holdout split" in w
    plain = teacher("plain.safetensors", logit_adjust=0.0)
    (w,) = Teachers([plain], list(CLASSES), _preprocessing(), 1, recipe=student).warnings
    assert "--logit-adjust 0, this run 1" in w


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("distil_data"))


@pytest.fixture(scope="module")
def swapped_teacher(data, tmp_path_factory):
    """A tiny model trained on the data, then with its happy and neutral outputs swapped: a
    teacher whose labelling disagrees with the dataset's on two of its three classes."""
    out = tmp_path_factory.mktemp("teacher_run")
    train(still_config(data, out, optimizer="adamw", lr=3e-3, logit_adjust=0.0, epochs=6, holdout=0.0),
          progress=False)
    state, meta = read_checkpoint(out / "last.safetensors")
    model = load_model(out / "last.safetensors")
    h, n = CLASSES.index("happy"), CLASSES.index("neutral")
    perm = list(range(len(CLASSES)))
    perm[h], perm[n] = n, h
    with torch.no_grad():
        model.head.weight.copy_(state["head.weight"][perm])
        model.head.bias.copy_(state["head.bias"][perm])
    path = out / "swapped.safetensors"
    save_checkpoint(path, model, classes=model.classes, preprocessing=model.preprocessing,
                    provenance=meta["provenance"])
    return path


def _labels_and_predictions(model_path, data):
    from dfer_cli.data import ClipDataset, scan
    from dfer_cli.evaluation.run import predict_dataset

    m = load_model(model_path)
    samples, _ = scan("folder", str(data), "val")
    probs, labels = predict_dataset(m, ClipDataset(samples, m.preprocessing, train=False, classes=m.classes),
                                    batch_size=8)
    return labels, probs.argmax(1)


def test_a_distilled_student_follows_its_teacher_not_the_labels(data, swapped_teacher, tmp_path):
    labels, taught = _labels_and_predictions(swapped_teacher, data)
    assert (taught == labels).mean() < 0.5  # the teacher really disagrees with the dataset
    cfg = dict(optimizer="adamw", lr=3e-3, logit_adjust=0.0, epochs=6, holdout=0.0, seed=1)
    train(still_config(data, tmp_path / "student", teachers=[str(swapped_teacher)], distill=1.0,
                       distill_temperature=2.0, **cfg), progress=False)
    _, student = _labels_and_predictions(tmp_path / "student" / "last.safetensors", data)
    assert (student == taught).mean() >= 0.8, (student, taught)
    # the same run without the teacher learns the labels instead
    train(still_config(data, tmp_path / "plain", **cfg), progress=False)
    _, plain = _labels_and_predictions(tmp_path / "plain" / "last.safetensors", data)
    assert (plain == labels).mean() >= 0.8 and (plain == taught).mean() < 0.5
    meta = read_metadata(tmp_path / "student" / "last.safetensors")
    (record,) = meta["provenance"]["teachers"]
    assert record["file"] == str(swapped_teacher) and record["input_size"] == 32
    from dfer_cli.weights import file_sha256
    assert record["sha256"] == file_sha256(swapped_teacher)
    assert json.loads((tmp_path / "student" / "config.json").read_text())["teachers"] == [str(swapped_teacher)]


def test_resume_refuses_a_teacher_that_changed(data, tmp_path):
    teacher = _teacher_file(tmp_path / "t.safetensors", seed=3)
    out = tmp_path / "run"
    train(still_config(data, out, teachers=[str(teacher)], distill=0.5, epochs=1), progress=False)
    _teacher_file(teacher, seed=4)  # other weights under the same name
    with pytest.raises(ValueError, match=r"cannot resume: teacher .*t\.safetensors has changed"):
        train(TrainConfig(output=str(out), data_root=str(data), threads=1), resume=True, progress=False)


def test_distill_flags_from_the_command_line(data, tmp_path):
    runner = CliRunner()
    base = ["train", "--data-root", str(data), "--output", str(tmp_path / "r"), "--quiet"]
    r = runner.invoke(app, [*base, "--distill", "0.5"])
    assert r.exit_code == 2 and "--distill needs a teacher: pass --teacher CKPT" in r.output
    r = runner.invoke(app, [*base, "--teacher", str(tmp_path / "none.safetensors"), "--distill", "0.5"])
    assert r.exit_code == 2 and "none.safetensors does not exist" in r.output
    teacher = _teacher_file(tmp_path / "t.safetensors")
    r = runner.invoke(app, [*base, "--teacher", str(teacher)])
    assert r.exit_code == 2 and "--teacher is used only with --distill W" in r.output
    r = runner.invoke(app, [*base, "--teacher", str(teacher), "--distill", "1.5"])
    assert r.exit_code == 2 and "in [0, 1]" in r.output

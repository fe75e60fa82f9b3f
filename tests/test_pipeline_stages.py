"""The predict stages one by one, on synthetic input (no video, no MTCNN, no model)."""
from types import SimpleNamespace

import numpy as np
import pytest

from dfer_cli.faces.detect import Detection
from dfer_cli.faces.track import IoUTracker
from dfer_cli.pipeline import (
    ClipEmitter,
    ClipJob,
    CutDetector,
    DetectStage,
    FrameBatch,
    GridDecoder,
    GridFrame,
    TrackStage,
    WindowStage,
    interpolate_faces,
)
from dfer_cli.pipeline.frames import AlignedFace
from dfer_cli.results import ClipPrediction
from dfer_cli.video.sampling import WindowPlan


def frame(index, time, colour=100, size=(24, 32)):
    return SimpleNamespace(index=index, time=time, rgb=np.full(size + (3,), colour, dtype=np.uint8))


def face_at(x, score=0.99):
    box = np.array([x, 4.0, x + 10.0, 16.0])
    lm = np.array([[x + 3, 8], [x + 7, 8], [x + 5, 10], [x + 3, 13], [x + 7, 13]], dtype=float)
    return Detection(box, score, lm)


class FixedDetector:
    """One face per frame at x = 2 * frame colour; notes the batches it is called with."""

    def __init__(self):
        self.calls = []

    def detect(self, frames):
        self.calls.append(len(frames))
        return [[face_at(2.0 * int(f[0, 0, 0]))] for f in frames]


def test_grid_decoder_pairs_grid_slots_with_nearest_frames_and_skips_unneeded_slots():
    frames = [frame(i, i / 10) for i in range(30)]   # 3 s at 10 fps
    plan = WindowPlan(3.0, window=1.0, stride=0.5, num_frames=4)   # grid every 0.25 s, at 0.125 + k / 4
    dec = GridDecoder(plan, iter(frames))
    got = [(k, f.index) for k, f in dec]
    assert got == [(0, 1), (1, 4), (2, 6), (3, 9), (4, 11), (5, 14), (6, 16), (7, 19), (8, 21), (9, 24),
                   (10, 26), (11, 29)]
    assert dec.sampled == 12 and dec.last_time == pytest.approx(2.9)
    spaced = WindowPlan(3.0, window=0.5, stride=1.5, num_frames=2)   # windows at 0, 1.5 and 2.5 s (the tail)
    assert [k for k, _ in GridDecoder(spaced, iter(frames))] == [0, 1, 6, 7, 10, 11]


def test_detect_stage_schedules_every_nth_frame_and_batches_ending_on_a_detection():
    det = FixedDetector()
    stage = DetectStage(det, detect_every=2, max_gap=10.0, detect_batch=3)
    samples = [(k, frame(k, k * 0.1, colour=10)) for k in range(12)]
    batches = list(stage.run(samples))
    marks = [gf.detect for b in batches for gf in b.frames]
    assert marks == [True, False, True, False, True, False, True, False, True, False, True, True]
    assert [len(b.frames) for b in batches] == [5, 6, 1]   # 3 detections each, the last frame detected at the end
    assert all(b.frames[-1].detect for b in batches)
    assert det.calls == [3, 3, 1]
    assert all(len(gf.detections) == 1 for b in batches for gf in b.frames if gf.detect)
    assert all(gf.detections == [] for b in batches for gf in b.frames if not gf.detect)


def test_detect_stage_detects_both_sides_of_a_cut_and_of_a_long_gap():
    colours = [10, 10, 10, 10, 200, 200, 200]            # a cut before frame 4
    times = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 3.0]          # and a long gap before frame 6
    stage = DetectStage(FixedDetector(), detect_every=4, max_gap=1.0, detect_batch=100, cuts=CutDetector(0.5))
    frames = [gf for b in stage.run([(k, frame(k, t, c)) for k, (t, c) in enumerate(zip(times, colours))])
              for gf in b.frames]
    assert [gf.cut for gf in frames] == [False, False, False, False, True, False, False]
    assert [gf.detect for gf in frames] == [True, False, False, True, True, True, True]


def test_detect_stage_repeated_frames_join_their_frame_or_follow_as_a_repeat():
    f0, f1 = frame(0, 0.0), frame(1, 0.5)
    stage = DetectStage(FixedDetector(), detect_every=1, detect_batch=1)
    batches = list(stage.run([(0, f0), (1, f1), (2, f1)]))
    assert [len(b.frames) for b in batches] == [1, 1, 0]
    assert batches[2].repeat[0] == 2 and batches[2].repeat[1] is batches[1].frames[0]
    assert [k for k, _ in batches[2].placed()] == [2]
    stage = DetectStage(FixedDetector(), detect_every=2, detect_batch=5)   # f1 still pending when slot 2 comes
    batches = list(stage.run([(0, f0), (1, f1), (2, f1)]))
    assert [gf.slots for b in batches for gf in b.frames] == [[0], [1, 2]]


def tracked_frame(index, time, xs, detect=True, cut=False):
    gf = GridFrame(frame(index, time), [index], cut=cut, detect=detect)
    gf.detections = [face_at(x) for x in xs] if detect else []
    return gf


def test_track_stage_keeps_ids_and_interpolates_landmarks_between_detections():
    frames = [tracked_frame(0, 0.0, [0.0, 40.0]), tracked_frame(1, 0.25, [], detect=False),
              tracked_frame(2, 1.0, [4.0, 44.0])]
    stage = TrackStage(IoUTracker(0.3, 1.0))
    stage.track(frames)
    assert [tid for tid, _ in frames[0].tracked] == [0, 1] and [tid for tid, _ in frames[2].tracked] == [0, 1]
    (tid, lm, box), _ = frames[1].located
    assert tid == 0
    assert box == pytest.approx([1.0, 4.0, 11.0, 16.0])                       # a quarter of the way
    assert lm == pytest.approx(0.75 * frames[0].detections[0].landmarks + 0.25 * frames[2].detections[0].landmarks)
    assert interpolate_faces(frames[0], frames[2], 1.0)[1][2] == pytest.approx(frames[2].detections[1].box)


def test_track_stage_does_not_interpolate_across_a_cut_or_before_the_first_detection():
    stage = TrackStage(IoUTracker(0.3, 1.0))
    first = [tracked_frame(0, 0.0, [], detect=False), tracked_frame(1, 0.1, [0.0])]
    stage.track(first)
    assert first[0].located == [] and [t for t, _, _ in first[1].located] == [0]
    second = [tracked_frame(2, 0.2, [], detect=False), tracked_frame(3, 0.3, [0.0], cut=True)]
    stage.track(second)
    assert second[0].located == []                       # the face on the right is after a cut
    assert [t for t, _, _ in second[1].located] == [1]    # and a new track


def test_cut_detector_flags_a_change_of_colours_only():
    cut = CutDetector(0.5)
    rgb = [np.full((8, 8, 3), c, dtype=np.uint8) for c in (20, 20, 230, 230)]
    assert [cut(x) for x in rgb] == [False, False, True, False]


def aligned(k, faces, time=None):
    """A GridFrame for grid slot k whose faces are {track: x} (crop filled with x)."""
    gf = GridFrame(frame(k, k * 0.125 if time is None else time), [k])
    gf.faces = {t: AlignedFace(np.full((4, 4, 3), x % 256, dtype=np.uint8), np.array([x, 0.0, x + 10, 10.0]))
                for t, x in faces.items()}
    return gf


def fake_tracker(areas, max_gap=1.0):
    return SimpleNamespace(max_gap=max_gap, tracks=[SimpleNamespace(alive=True, last_time=1e9, area_sum=a)
                                                    for a in areas])


def test_window_stage_lays_windows_on_a_track_span_with_the_end_aligned_one_at_the_end():
    plan = WindowPlan(10.0, window=2.0, stride=1.0, num_frames=16)   # 8 slots per second
    stage = WindowStage(plan, fake_tracker([100.0]), "v.mp4", 10.0)
    steps = list(stage.run(FrameBatch([aligned(k, {0: 5})]) for k in range(3, 40)))
    jobs = [j for s in steps for j in s.jobs]
    assert [j.first for j in jobs] == [3, 11, 19, 24]    # from the track's start every stride; last ends on slot 39
    assert all(j.crops.shape == (16, 4, 4, 3) for j in jobs)
    assert [j.clip.frames for j in jobs] == [(3, 18), (11, 26), (19, 34), (24, 39)]
    assert jobs[0].clip.start == pytest.approx(3 * 0.125) and jobs[0].clip.end == pytest.approx(19 * 0.125)
    assert steps[-1].final and steps[-1].bound > 10**9
    bounds = [s.bound for s in steps[:-1]]
    assert bounds == sorted(bounds)                       # bounds only move forward


def test_window_stage_reports_a_clip_with_too_few_faces_unclassified():
    plan = WindowPlan(4.0, window=2.0, stride=1.0, num_frames=16)
    stage = WindowStage(plan, fake_tracker([100.0]), "v.mp4", 4.0)
    batches = [FrameBatch([aligned(k, {0: 5} if k in (0, 1, 2) else {})]) for k in range(32)]
    jobs = [j for s in stage.run(batches) for j in s.jobs]
    assert len(jobs) == 1 and jobs[0].crops is None
    assert jobs[0].clip.status == "face missing in 13/16 frames" and jobs[0].clip.label is None


def test_window_stage_by_default_keeps_the_main_face_of_each_window_only():
    plan = WindowPlan(2.0, window=2.0, stride=1.0, num_frames=16)
    batches = [FrameBatch([aligned(k, {0: 5, 1: 50})]) for k in range(16)]
    main = [j.clip.track for s in WindowStage(plan, fake_tracker([10.0, 99.0]), "v", 2.0).run(batches) for j in s.jobs]
    assert main == [1]
    batches = [FrameBatch([aligned(k, {0: 5, 1: 50})]) for k in range(16)]
    both = WindowStage(plan, fake_tracker([10.0, 99.0]), "v", 2.0, all_faces=True).run(batches)
    assert sorted(j.clip.track for s in both for j in s.jobs) == [0, 1]


def test_window_stage_memory_stays_at_about_one_window_however_long_the_video():
    plan = WindowPlan(600.0, window=2.0, stride=1.0, num_frames=16)   # 4800 grid slots
    stage = WindowStage(plan, fake_tracker([1.0]), "v", 600.0)
    held, clips = 0, 0
    for step in stage.run(FrameBatch([aligned(k, {0: k})]) for k in range(plan.num_grid)):
        held = max(held, len(stage.slots))
        clips += len(step.jobs)
    assert clips == 599 and held <= plan.span + 1


def test_window_stage_segments8x2_clip_takes_pairs_of_consecutive_slots():
    plan = WindowPlan(4.0, window=2.0, stride=1.0, num_frames=16, sampling="segments8x2", fps=25)
    assert plan.span == 50 and plan.offsets == (3, 4, 9, 10, 15, 16, 21, 22, 27, 28, 33, 34, 39, 40, 45, 46)
    stage = WindowStage(plan, fake_tracker([1.0]), "v", 4.0)
    jobs = [j for s in stage.run(FrameBatch([aligned(k, {0: k}, time=k / 25)]) for k in range(100)) for j in s.jobs]
    assert [j.first for j in jobs] == [0, 25, 50]
    assert [j.clip.frames for j in jobs] == [(3, 46), (28, 71), (53, 96)]
    assert [int(c[0, 0, 0]) for c in jobs[1].crops] == [25 + o for o in plan.offsets]   # the crops of those slots
    assert [t for j in jobs for t in (j.clip.start, j.clip.end)] == pytest.approx([0.0, 2.0, 1.0, 3.0, 2.0, 4.0])


def clip(track, start=0.0):
    return ClipPrediction("v", track, start, start + 2, [0, 0, 1, 1], None, None, None)


def test_emitter_hands_out_in_start_then_track_order_only_below_the_bound():
    got = []
    em = ClipEmitter(got.append)
    a, b, c = clip(1, 1.0), clip(0, 1.0), clip(0, 0.0)
    em.push([(8, a), (8, b)], bound=8)
    assert got == []                                   # a clip starting at slot 8 may still come
    em.push([(0, c)], bound=9)
    assert got == [c, b, a] and em.clips == got


def test_classifier_batches_clips_and_passes_unclassified_ones_through():
    import torch

    from dfer_cli.pipeline import ClipClassifier
    from dfer_cli.preprocess import Preprocessing

    class Brightness(torch.nn.Module):   # logits favour class 0 for bright clips, class 1 for dark ones
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.preprocessing = Preprocessing(input_size=4, num_frames=2)
            self.classes = ["happy", "sad"]
            self.inputs = []

        def forward(self, x):
            self.inputs.append(tuple(x.shape))
            m = x.mean(dim=(1, 2, 3, 4))
            return torch.stack([m, -m], dim=1) * 10

    model = Brightness().eval()
    clf = ClipClassifier(model, torch.device("cpu"), batch_size=2)
    bright, dark = np.full((2, 4, 4, 3), 250, np.uint8), np.full((2, 4, 4, 3), 5, np.uint8)
    steps = [SimpleNamespace(jobs=[ClipJob(0, clip(0), bright)], bound=0, final=False),
             SimpleNamespace(jobs=[ClipJob(1, clip(0), None), ClipJob(2, clip(0), dark)], bound=2, final=False),
             SimpleNamespace(jobs=[ClipJob(3, clip(0), dark)], bound=10**12, final=True)]
    out = list(clf.run(steps))
    assert [([f for f, _ in done], bound) for done, bound in out] == [([], 0), ([0, 1, 2], 2), ([3], 10**12)]
    assert model.inputs == [(2, 2, 3, 4, 4), (1, 2, 3, 4, 4)]
    labels = [c.label for done, _ in out for _, c in done]
    assert labels == ["happy", None, "sad", "sad"]
    assert out[1][0][0][1].probabilities["happy"] > 0.99


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_classifier_runs_the_trunk_once_per_face_and_matches_the_whole_model(tta):
    """Three overlapping clips of one track (4 frames each, 2 shared with the next clip): the
    trunk sees each of the 8 distinct faces once (twice with flip), the probabilities are the
    whole model's on each clip, and faces before the bound leave the cache."""
    import torch
    from synth import tiny_model

    from dfer_cli.models.inference import clip_probs
    from dfer_cli.pipeline import ClipClassifier
    from dfer_cli.preprocess import frames_to_tensor

    model = tiny_model(num_frames=4)
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    rng = np.random.default_rng(0)
    faces = {k: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for k in range(8)}   # grid slot -> face
    firsts = [0, 2, 4]
    jobs = [ClipJob(f, clip(0, float(f)), np.stack([faces[k] for k in range(f, f + 4)]),
                    [(0, k) for k in range(f, f + 4)]) for f in firsts]
    clf = ClipClassifier(model, torch.device("cpu"), batch_size=2, tta=tta)
    steps = [SimpleNamespace(jobs=jobs[:2], bound=2, final=False),
             SimpleNamespace(jobs=jobs[2:], bound=10**12, final=True)]
    out = list(clf.run(steps))
    assert sum(seen) == 8 * (2 if tta == "flip" else 1)          # not 12 (3 clips x 4 frames)
    assert clf.cache == {}                                       # all past the final bound
    got = [c for done, _ in out for _, c in done]
    pre = model.preprocessing
    with torch.inference_mode():
        want = clip_probs(model, torch.stack([frames_to_tensor(j.crops, pre) for j in jobs]), tta).numpy()
    for c, w in zip(got, want):
        assert [c.probabilities[k] for k in model.classes] == pytest.approx(w, abs=1e-4)


def test_classifier_cache_keeps_only_faces_a_later_clip_can_use():
    import torch
    from synth import tiny_model

    from dfer_cli.pipeline import ClipClassifier

    model = tiny_model(num_frames=4)
    faces = np.zeros((4, 32, 32, 3), np.uint8)
    clf = ClipClassifier(model, torch.device("cpu"), batch_size=1)
    step = SimpleNamespace(jobs=[ClipJob(0, clip(0), faces, [(0, k) for k in range(4)])], bound=2, final=False)
    list(clf.run([step]))
    assert sorted(clf.cache) == [(0, 2, False), (0, 3, False)]   # slots 0, 1 are before the bound


def test_align_stage_crops_each_located_face_with_the_models_detail_size():
    from dfer_cli.faces.align import align_face
    from dfer_cli.pipeline import AlignStage
    from dfer_cli.preprocess import DEFAULT_TEMPLATE

    rng = np.random.default_rng(0)
    f = frame(0, 0.0, size=(60, 80))
    f.rgb[:] = rng.integers(0, 256, f.rgb.shape, dtype=np.uint8)  # fine detail everywhere
    face = face_at(20.0)
    gf = GridFrame(f, [0], located=[(3, face.landmarks, face.box)])
    timings = {}
    (out,) = AlignStage(32, DEFAULT_TEMPLATE, timings, detail=8).run([FrameBatch([gf])])
    crop = out.frames[0].faces[3].crop
    assert np.array_equal(crop, align_face(f.rgb, face.landmarks, 32, DEFAULT_TEMPLATE, detail=8))
    assert not np.array_equal(crop, align_face(f.rgb, face.landmarks, 32, DEFAULT_TEMPLATE))
    assert timings["align"] > 0

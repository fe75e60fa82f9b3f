import numpy as np

from dfer_cli.faces.track import IoUTracker, frame_signature, iou, is_cut, main_track


def box(cx, cy, s=40):
    return [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]


def track_frames(times, boxes_per_frame):
    """Ids per frame and the tracks, from one tracker fed a whole sequence."""
    tracker = IoUTracker()
    return [tracker.update(t, boxes) for t, boxes in zip(times, boxes_per_frame)], tracker.tracks


def test_iou_values():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == 50 / 150
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_two_faces_moving_apart_keep_their_ids_in_any_detection_order():
    times = [i * 0.125 for i in range(30)]
    frames = []
    for i in range(30):
        a, b = box(100 - 3 * i, 100), box(160 + 3 * i, 100)
        frames.append([a, b] if i % 2 else [b, a])  # detector order flips
    ids, tracks = track_frames(times, frames)
    assert len(tracks) == 2
    left_id = ids[0][1]  # frame 0 lists the right face first
    for i, frame_ids in enumerate(ids):
        assert (frame_ids[0] if i % 2 else frame_ids[1]) == left_id
    assert all(sorted(f) == [0, 1] for f in ids)


def test_gap_tolerance_and_expiry():
    tr = IoUTracker(max_gap=1.0)
    assert tr.update(0.0, [box(50, 50)]) == [0]
    assert tr.update(0.125, []) == []
    assert tr.update(0.9, [box(52, 50)]) == [0]      # missed for 0.775 s: same face
    assert tr.update(2.5, [box(52, 50)]) == [1]      # gone for 1.6 s: a new track


def test_cut_starts_new_track_even_at_the_same_place():
    tr = IoUTracker()
    assert tr.update(0.0, [box(50, 50)]) == [0]
    tr.cut()
    assert tr.update(0.125, [box(50, 50)]) == [1]


def test_scene_cut_detection_on_frame_signatures():
    rng = np.random.default_rng(0)
    a = np.full((90, 160, 3), (200, 180, 150), np.uint8) + rng.integers(0, 10, (90, 160, 3), dtype=np.uint8)
    a2 = a.copy()
    a2[30:60, 40:80] = (200, 170, 140)  # the face moved a bit: same scene
    b = np.full((90, 160, 3), (20, 60, 120), np.uint8)  # another shot
    sa, sa2, sb = frame_signature(a), frame_signature(a2), frame_signature(b)
    assert not is_cut(sa, sa2)
    assert is_cut(sa, sb)
    assert not is_cut(None, sb)


def test_main_track_prefers_large_and_persistent():
    times = [i * 0.125 for i in range(20)]
    frames = [[box(50, 50, 30), box(200, 60, 80)] if i < 10 else [box(50, 50, 30)] for i in range(20)]
    ids, tracks = track_frames(times, frames)
    # 10 frames x 80^2 beats 20 frames x 30^2
    assert main_track(tracks) == ids[0][1]
    assert main_track([]) is None

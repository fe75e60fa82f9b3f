from types import SimpleNamespace

import numpy as np
import pytest

from dfer_cli.video.sampling import WindowPlan, frame_indices, sample_on_grid


def uniform(n, t, rng=None):
    return frame_indices(n, t, "uniform", rng).tolist()


def test_uniform_sampling_at_test_time_takes_segment_centres():
    assert uniform(160, 16) == [5 + 10 * i for i in range(16)]
    assert uniform(16, 16) == list(range(16))
    assert uniform(10, 4) == [1, 3, 6, 8]   # segments of 2.5 frames: centres 1.25, 3.75, 6.25, 8.75


def test_uniform_sampling_repeats_frames_of_short_clips():
    idx = uniform(5, 16)
    assert len(idx) == 16 and sorted(idx) == idx and set(idx) == set(range(5))
    assert uniform(1, 16) == [0] * 16


def test_uniform_sampling_in_training_is_random_within_each_segment():
    rng = np.random.default_rng(0)
    draws = [uniform(160, 16, rng) for _ in range(50)]
    for idx in draws:
        assert all(10 * i <= v < 10 * (i + 1) for i, v in enumerate(idx))
    assert len({tuple(d) for d in draws}) > 1  # offsets vary
    with pytest.raises(ValueError):
        uniform(0, 16)


def test_window_plan_defaults():
    plan = WindowPlan(10.0)
    assert plan.step == pytest.approx(0.125)
    assert [(w.start, w.end) for w in plan.windows] == [(float(s), float(s + 2)) for s in range(9)]
    # 16 uniformly spaced sample times inside the window, shared between overlapping windows
    w = plan.windows[3]
    times = [plan.time(k) for k in plan.slots(w)]
    assert times == pytest.approx([3.0625 + 0.125 * j for j in range(16)])
    assert plan.time(plan.windows[4].first) == pytest.approx(times[8])


def test_window_plan_tail_short_video_and_gaps():
    tail = WindowPlan(10.7)
    assert tail.windows[-1].end == pytest.approx(10.625) and tail.windows[-2].end == pytest.approx(10.0)
    short = WindowPlan(0.8, window=2.0)
    assert len(short.windows) == 1
    assert (short.windows[0].start, short.windows[0].end) == (0.0, pytest.approx(0.8))
    spaced = WindowPlan(10.0, window=1.0, stride=3.0)
    assert [w.start for w in spaced.windows] == [0.0, 3.0, 6.0, 9.0]
    assert spaced.needed(spaced.windows[1].first) and not spaced.needed(spaced.windows[0].first + 16)


def _frames(times):
    return [SimpleNamespace(time=t, i=i) for i, t in enumerate(times)]


def test_sample_on_grid_picks_nearest_frame_by_time():
    fr = _frames([0.0, 0.1, 0.45, 0.5, 1.2])  # variable frame rate
    got = [(k, f.i) for k, f in sample_on_grid(iter(fr), [0.06, 0.3, 0.48, 0.9, 1.1])]
    assert got == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 4)]


def test_sample_on_grid_stops_past_the_end_and_streams():
    consumed = []

    def gen():
        for f in _frames([i * 0.1 for i in range(100)]):
            consumed.append(f.i)
            yield f
    it = sample_on_grid(gen(), [0.04, 0.13])
    assert [f.i for _, f in it] == [0, 1]
    assert max(consumed) <= 2  # only reads as far as needed
    out = list(sample_on_grid(iter(_frames([0.0, 0.1])), [0.05, 0.2, 0.5], max_distance=0.15))
    assert [k for k, _ in out] == [0, 1]


def test_track_windows_start_at_the_track_and_end_on_it():
    from dfer_cli.video.sampling import track_windows

    assert track_windows(0, 31, 16, 8) == [0, 8, 16]            # the regular windows end on the track's end
    assert track_windows(0, 34, 16, 8) == [0, 8, 16, 19]        # else one more, aligned to the end
    assert track_windows(5, 40, 16, 8) == [5, 13, 21, 25]       # from the track's own start, not the grid's
    assert track_windows(25, 34, 16, 8) == [19]                 # shorter than a window: one, ending on it
    assert track_windows(2, 9, 16, 8) == [0]                    # ... not before the video's start
    assert track_windows(0, 34, 16, 8, ended=False) == [0, 8, 16]  # still going: only the regular ones
    assert track_windows(7, 3, 16, 8) == []


def test_track_windows_give_a_face_seen_for_half_a_window_a_window_half_full():
    from dfer_cli.video.sampling import track_windows

    T = 16
    for first in range(0, 40, 3):
        for length in range(T // 2, 3 * T):
            last = first + length - 1
            for stride in (4, 8, 16):
                wins = track_windows(first, last, T, stride)
                assert wins == sorted(set(wins)) and all(f >= 0 for f in wins)
                assert max(f + T - 1 for f in wins) == max(last, T - 1)   # the last one ends on the track
                best = max(min(f + T - 1, last) - max(f, first) + 1 for f in wins)
                assert best >= T // 2, (first, last, stride, wins)
                # growing the track only ever adds windows to those already laid
                assert track_windows(first, last + 5, T, stride, ended=False)[:len(
                    track_windows(first, last, T, stride, ended=False))] == track_windows(first, last, T, stride,
                                                                                          ended=False)

import cv2
import numpy as np
import pytest
from synth import face_image

from dfer_cli.faces.align import align_face, alignment_matrix, template_points
from dfer_cli.faces.detect import FaceDetector
from dfer_cli.preprocess import DEFAULT_TEMPLATE, zoom_template


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.fixture(scope="module")
def face_and_detection(detector):
    img = face_image()  # (360, 640, 3), credited frame, see tests/data/README.md
    faceless = np.full_like(img, 90)
    dets = detector.detect([img, faceless])  # a batch with a faceless frame must not crash
    assert dets[1] == []
    assert len(dets[0]) == 1
    return img, dets[0][0]


def test_detects_the_real_face(face_and_detection):
    img, d = face_and_detection
    x1, y1, x2, y2 = d.box
    # the man's face in this frame spans about x 215-365, y 80-290 (checked by eye)
    assert 195 < x1 < 235 and 345 < x2 < 385 and 60 < y1 < 110 and 270 < y2 < 310
    assert d.score > 0.95
    le, re, nose, lm, rm = d.landmarks
    assert le[0] < nose[0] < re[0] and le[1] < nose[1] < lm[1] and lm[0] < rm[0]
    assert x1 < le[0] < x2 and y1 < le[1] < y2


def test_boxes_map_back_to_full_resolution(detector, face_and_detection):
    img, d = face_and_detection
    big = cv2.resize(img, (1280, 720), interpolation=cv2.INTER_LINEAR)  # detected on a 640 copy
    (d2,) = detector.detect([big])[0]
    assert np.abs(d2.box - 2 * d.box).max() < 8
    assert np.abs(d2.landmarks - 2 * d.landmarks).max() < 6


def test_alignment_puts_the_eyes_on_the_template(detector, face_and_detection):
    img, d = face_and_detection
    size = 112
    target = template_points(DEFAULT_TEMPLATE, size)
    m = alignment_matrix(d.landmarks, size, DEFAULT_TEMPLATE)
    mapped = np.c_[d.landmarks, np.ones(5)] @ m.T  # (5, 2) landmarks in crop pixels
    assert np.linalg.norm(mapped[:2] - target[:2], axis=1).max() < 2.0
    crop = align_face(img, d.landmarks, size, DEFAULT_TEMPLATE)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    # independent check on the pixels: align with a margin (the whole face in view, as MTCNN
    # needs) and detect again on the aligned crop: the eyes are found on the template points
    wide = zoom_template(DEFAULT_TEMPLATE, 0.6)
    crop_wide = align_face(img, d.landmarks, size, wide)
    (again,) = FaceDetector(min_face=20).detect([crop_wide])[0]
    assert np.linalg.norm(again.landmarks[:2] - template_points(wide, size)[:2], axis=1).max() < 2.0


def test_align_face_exact_on_synthetic_landmarks():
    # paint 5 dots at a known similarity transform of the template; alignment must undo it
    size = 64
    template = zoom_template(DEFAULT_TEMPLATE, 0.8)
    angle, scale, t = np.deg2rad(20), 2.5, np.array([90.0, 40.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    lms = template_points(template, size) @ rot.T + t
    img = np.zeros((300, 300, 3), np.uint8)
    for x, y in lms:
        cv2.circle(img, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    crop = align_face(img, lms, size, template)
    for x, y in template_points(template, size):
        xi, yi = int(round(x)), int(round(y))
        assert crop[yi, xi].min() > 100  # every dot lands on its template point
    assert crop.mean() < 60  # and nothing else is bright


def _stripes_face():
    """A frame whose face region is 1-pixel vertical stripes (detail no 48 px face has) with
    a bright left half and a dark right half (coarse content any size keeps), and landmarks
    laid so that the face spans about 200 px."""
    size = 200
    template = DEFAULT_TEMPLATE
    lms = template_points(template, size) + np.array([50.0, 30.0])
    img = np.zeros((300, 300, 3), np.uint8)
    img[:, ::2] = 255
    img[:, 150:] //= 4
    return img, lms, template


def test_align_face_with_detail_size_is_the_reference_pipeline():
    # reference written out: warp at 4 x detail, area-average to detail, then the bilinear
    # upsampling `dfer eval` gives a still of detail px (pixel centres at i + 0.5 on both sides)
    img, lms, template = _stripes_face()
    size, detail = 64, 16
    fine = cv2.warpAffine(img, alignment_matrix(lms, 4 * detail, template), (4 * detail, 4 * detail),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    low = cv2.resize(fine, (detail, detail), interpolation=cv2.INTER_AREA)
    s = size / detail
    up = np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5]])
    expect = cv2.warpAffine(low, up, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    got = align_face(img, lms, size, template, detail=detail)
    assert got.shape == (size, size, 3) and got.dtype == np.uint8
    assert np.array_equal(got, expect)
    # the same crop `dfer eval` makes of that 16 px face as a still
    from dfer_cli.data.transforms import ClipTransform
    from dfer_cli.preprocess import Preprocessing

    still = ClipTransform(Preprocessing(input_size=size, num_frames=1), train=False).frames([low], None)
    assert np.array_equal(got, still[0])
    # not an area resize, which repeats pixels 4 x 4 here
    assert not np.array_equal(got, cv2.resize(low, (size, size), interpolation=cv2.INTER_AREA))
    # a detail at or above the crop side is no reduction at all
    direct = align_face(img, lms, size, template)
    assert np.array_equal(align_face(img, lms, size, template, detail=size), direct)
    assert np.array_equal(align_face(img, lms, size, template, detail=None), direct)


def test_align_face_with_detail_size_drops_fine_detail_and_keeps_the_coarse():
    img, lms, template = _stripes_face()
    size = 64
    direct = align_face(img, lms, size, template).astype(np.float32)
    reduced = align_face(img, lms, size, template, detail=16).astype(np.float32)
    # the 1-pixel stripes alias into strong pixel-to-pixel changes in a direct 64 px warp;
    # reduced to 16 px first, they average out to grey
    assert np.abs(np.diff(direct, axis=1)).mean() > 40
    assert np.abs(np.diff(reduced, axis=1)).mean() < 0.25 * np.abs(np.diff(direct, axis=1)).mean()
    # while the bright-left / dark-right halves are kept (means of the outer quarters)
    for crop in (direct, reduced):
        assert crop[:, : size // 4].mean() > 2 * crop[:, -size // 4:].mean()
    assert abs(reduced[:, : size // 4].mean() - direct[:, : size // 4].mean()) < 20

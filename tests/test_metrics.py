"""UAR / WAR / recall against values worked out by hand on a fixed confusion matrix."""
import math

import numpy as np
import pytest

from dfer_cli.metrics import Scores, confusion_matrix, per_class_recall, uar, war

# rows = true class, columns = predicted
CM = np.array([
    [8, 1, 1],   # class 0: 10 samples, 8 right -> recall 0.8
    [2, 2, 0],   # class 1: 4 samples, 2 right  -> recall 0.5
    [0, 3, 3],   # class 2: 6 samples, 3 right  -> recall 0.5
])


def test_recall_uar_war_by_hand():
    assert per_class_recall(CM).tolist() == [0.8, 0.5, 0.5]
    assert uar(CM) == pytest.approx((0.8 + 0.5 + 0.5) / 3)       # 0.6
    assert war(CM) == pytest.approx((8 + 2 + 3) / 20)             # 0.65


def test_confusion_matrix_from_labels():
    y_true = [0] * 10 + [1] * 4 + [2] * 6
    y_pred = [0] * 8 + [1, 2] + [0, 0, 1, 1] + [1, 1, 1, 2, 2, 2]
    assert confusion_matrix(y_true, y_pred, 3).tolist() == CM.tolist()
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([0, 1], [0], 3)


def test_absent_class_is_left_out_of_uar():
    cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 1]])
    r = per_class_recall(cm)
    assert r[0] == 0.75 and math.isnan(r[1]) and r[2] == 0.5
    assert uar(cm) == pytest.approx(0.625)


def test_scores_dict_is_json_ready():
    d = Scores(["a", "b", "c"], CM).to_dict()
    assert d["war"] == 0.65 and d["uar"] == 0.6 and d["samples"] == 20
    assert d["recall"] == {"a": 0.8, "b": 0.5, "c": 0.5}
    assert d["confusion"] == CM.tolist()

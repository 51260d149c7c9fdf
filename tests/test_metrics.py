"""Scores on masks and boxes, computed by hand."""
import numpy as np
import pytest

from coreseg.metrics import (aggregate, box_iou, detect_score, dice, iou, mask_box, mask_giou, match_boxes,
                             score_sample)


def rect(shape, x1, y1, x2, y2):
    m = np.zeros(shape, bool)
    m[y1:y2, x1:x2] = True
    return m


S = (20, 20)


def test_dice_iou_by_hand():
    a = rect(S, 0, 0, 4, 4)   # 16 px
    b = rect(S, 2, 0, 6, 4)   # 16 px, overlap 8
    assert dice(a, b) == pytest.approx(2 * 8 / 32)
    assert iou(a, b) == pytest.approx(8 / 24)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, rect(S, 10, 10, 12, 12)) == 0.0


def test_empty_target_rule():
    empty = np.zeros(S, bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, rect(S, 0, 0, 2, 2)) == 0.0 and iou(empty, rect(S, 0, 0, 2, 2)) == 0.0
    assert dice(rect(S, 0, 0, 2, 2), empty) == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_mask_box():
    assert mask_box(rect(S, 3, 5, 7, 9)) == (3, 5, 7, 9)
    assert mask_box(np.zeros(S, bool)) is None


def test_mask_giou():
    truth = rect(S, 0, 0, 4, 4)
    assert mask_giou(truth, truth) == 1.0
    near = rect(S, 5, 0, 9, 4)    # hull 9×4 = 36, union 32 → −4/36
    far = rect(S, 15, 0, 19, 4)   # hull 19×4 = 76, union 32 → −44/76
    assert mask_giou(near, truth) == pytest.approx(-4 / 36)
    assert mask_giou(far, truth) == pytest.approx(-44 / 76)
    assert mask_giou(far, truth) < mask_giou(near, truth) < 0
    adjacent = rect(S, 4, 0, 8, 4)
    assert mask_giou(adjacent, truth) == pytest.approx(0.0)
    assert -1 <= mask_giou(rect(S, 19, 19, 20, 20), rect(S, 0, 0, 1, 1)) < -0.99


def test_mask_giou_empty():
    empty = np.zeros(S, bool)
    assert mask_giou(empty, empty) == 1.0
    assert mask_giou(empty, rect(S, 0, 0, 4, 4)) == -1.0  # not 0: an empty mask is the worst, not "adjacent"
    assert mask_giou(rect(S, 0, 0, 4, 4), empty) == -1.0


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # exclusive ends: touching is no overlap
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_match_boxes_two_pred_one_truth():
    m = match_boxes([(0, 0, 10, 10), (50, 50, 60, 60)], [(0, 0, 10, 10)])
    assert (m.true_positives, m.false_positives, m.false_negatives) == (1, 1, 0)
    assert m.f1 == pytest.approx(2 / 3) and m.mean_iou == 1.0
    assert m.pairs == ((0, 0, 1.0),)


def test_match_boxes_is_one_to_one_and_optimal():
    truth = [(0, 0, 10, 10), (20, 0, 30, 10)]
    pred = [(20, 0, 30, 10), (1, 0, 10, 10)]
    m = match_boxes(pred, truth)
    assert sorted((p, t) for p, t, _ in m.pairs) == [(0, 1), (1, 0)]
    assert m.true_positives == 2 and m.f1 == 1.0


def test_match_boxes_empty():
    assert match_boxes([], [(0, 0, 1, 1)]).f1 == 0.0
    assert match_boxes([(0, 0, 1, 1)], []).f1 == 0.0
    assert match_boxes([], []).f1 == 1.0


def test_detect_score():
    truth = [(0, 0, 10, 10)]
    assert detect_score(truth, truth) == 1.0
    assert detect_score([(0, 0, 10, 10), (50, 50, 60, 60)], truth) == pytest.approx(2 / 3)
    half = [(5, 0, 15, 10)]  # IoU 1/3 < 0.5 → no TP → F1 0
    assert detect_score(half, truth) == 0.0
    close = [(0, 0, 10, 12)]  # IoU 100/120
    assert detect_score(close, truth) == pytest.approx(100 / 120)
    assert detect_score([], truth) == 0.0


def test_aggregate_and_failure_rate():
    truth = rect(S, 0, 0, 4, 4)
    hit = score_sample(truth, truth, [(0, 0, 4, 4)], [(0, 0, 4, 4)])
    miss = score_sample(rect(S, 10, 10, 14, 14), truth, [(10, 10, 14, 14)], [(0, 0, 4, 4)])
    unparsed = score_sample(truth, truth, [], [(0, 0, 4, 4)], parsed=False)
    assert not hit.failed and miss.failed and unparsed.failed
    assert miss.dice == 0.0 and miss.giou < 0
    agg = aggregate([hit, miss, unparsed])
    assert agg["n"] == 3
    assert agg["failure_rate"] == pytest.approx(2 / 3)
    assert agg["dice"] == pytest.approx(2 / 3)
    assert agg["box_f1"] == pytest.approx(1 / 3)
    assert np.isnan(aggregate([])["dice"])

"""Scores on masks and boxes, computed by hand."""
import numpy as np
import pytest

from coreseg.metrics import (aggregate, box_iou, detect_score, dice, iou, mask_box, mask_giou, mask_wasserstein,
                             match_boxes, score_sample, soft_box_f1)


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


def test_soft_box_f1_is_smooth_and_strict():
    truth = [(0, 0, 10, 10)]
    assert soft_box_f1(truth, truth) == 1.0
    shifted = [soft_box_f1([(k, 0, 10 + k, 10)], truth) for k in range(6)]
    assert all(a > b for a, b in zip(shifted, shifted[1:]))      # every pixel of shift costs: no cliff at IoU 0.5
    assert shifted[5] == pytest.approx(50 / 150)                  # IoU 1/3, 2·(1/3)/2
    assert soft_box_f1([(0, 0, 10, 10), (50, 50, 60, 60)], truth) == pytest.approx(2 / 3)
    assert soft_box_f1(truth * 100, truth) == pytest.approx(2 / 101)
    assert soft_box_f1(truth, truth, rejected=1) == pytest.approx(2 / 3)   # a refused box is a prediction
    assert soft_box_f1([(0, 0, 100, 100)], truth) == pytest.approx(0.01)  # whole-image box on a 1 % lesion
    assert soft_box_f1([], truth) == 0.0


def test_soft_box_f1_empty_target_rule():
    assert soft_box_f1([], []) == 1.0
    assert soft_box_f1([(0, 0, 1, 1)], []) == 0.0
    assert soft_box_f1([], [], rejected=1) == 0.0


def test_mask_wasserstein_sees_position_and_size():
    big = (64, 64)
    lesion = rect(big, 20, 20, 30, 30)
    assert mask_wasserstein(lesion, lesion) == pytest.approx(0.0, abs=1e-9)
    assert mask_wasserstein(rect(big, 27, 20, 37, 30), lesion) == pytest.approx(7.0)   # same shape: centre distance
    assert mask_wasserstein(rect(big, 15, 15, 35, 35), lesion) == pytest.approx(10 * np.sqrt(2 / 12))  # concentric
    whole = np.ones(big, bool)
    near_miss = rect(big, 34, 20, 44, 30)  # correctly sized, 4 px gap
    assert mask_wasserstein(near_miss, lesion) < mask_wasserstein(whole, lesion)
    assert mask_wasserstein(lesion, np.zeros(big, bool)) == float("inf")
    with pytest.raises(ValueError):
        mask_wasserstein(lesion, np.zeros((3, 3), bool))


def test_mask_box_is_the_tight_box_of_the_nonzero_pixels():
    """OpenCV's bounding rectangle gives what `np.nonzero` gives: on random masks, single pixels at the corners,
    integer masks, strided views and empty masks."""
    def by_nonzero(mask):
        rows, cols = np.nonzero(mask)
        return None if rows.size == 0 else (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)

    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) < p for p in (0.0, 0.001, 0.01, 0.3)]
    for y, x in ((0, 0), (36, 52), (0, 52), (36, 0)):
        one = np.zeros((37, 53), bool)
        one[y, x] = True
        masks.append(one)
    masks += [(rng.random((40, 30)) < 0.02).astype(np.uint8) * 255, (rng.random((60, 80)) < 0.01)[::2, ::3]]
    for mask in masks:
        assert mask_box(mask) == by_nonzero(mask)


def test_mask_parts_and_boxes_match_opencvs_component_statistics():
    """`coreseg.mask_boxes` (labels on the mask's crop, areas by counting) finds the parts OpenCV's labelling with
    statistics finds on the whole mask: same boxes, largest first, specks under the floor dropped, the largest kept
    always; each part mask is its component."""
    import cv2

    from coreseg.mask_boxes import MIN_PART_FRACTION, MIN_PART_PIXELS, lesion_parts, mask_boxes

    rng = np.random.default_rng(1)
    masks = [np.zeros((50, 70), bool), rng.random((120, 90)) < 0.002]
    for _ in range(6):
        mask = np.zeros((200, 260), bool)
        for _ in range(rng.integers(1, 6)):
            y, x, r = rng.integers(0, 200), rng.integers(0, 260), rng.integers(1, 30)
            yy, xx = np.ogrid[:200, :260]
            mask |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        masks.append(mask)
    for mask in masks:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        order = list(np.argsort(-areas, kind="stable"))
        floor = max(MIN_PART_PIXELS, MIN_PART_FRACTION * mask.size)
        keep = [i for i in order if areas[i] >= floor] or order[:1]
        expected = [(int(stats[i + 1, 0]), int(stats[i + 1, 1]), int(stats[i + 1, 0] + stats[i + 1, 2]),
                     int(stats[i + 1, 1] + stats[i + 1, 3])) for i in keep]
        assert mask_boxes(mask) == expected
        parts, boxes = lesion_parts(mask)
        assert boxes == expected and all((part == (labels == i + 1)).all() for part, i in zip(parts, keep))

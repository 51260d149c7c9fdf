"""Rewards: adversarial outputs must never beat a correct answer; GRPO group advantages."""
import numpy as np
import pytest

from coreseg.answer import render_answer
from coreseg.metrics import detect_score, dice, mask_giou
from trainers.rewards import (REWARD_FUNCS, RewardWeights, combined_reward, completion_text, detect_reward,
                              detect_score_with_rejects, format_reward, group_advantages, human_reward,
                              score_completions, segment_reward, segment_score)

H, W = 100, 120
GT_BOX = (30, 40, 50, 60)


def rect(x1, y1, x2, y2, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[y1:y2, x1:x2] = True
    return m


GT_MASK = rect(*GT_BOX)
CORRECT = render_answer("A round, darker region with a sharp border in the centre.", "polyp", [GT_BOX])


def columns(n, pred_mask=GT_MASK):
    return dict(image_size=[(H, W)] * n, gt_boxes=[[GT_BOX]] * n, gt_mask=[GT_MASK] * n,
                pred_mask=[pred_mask] * n if not isinstance(pred_mask, list) else pred_mask)


def score(text, pred_mask=GT_MASK):
    return score_completions(["q"], [text], **columns(1, pred_mask))[0]


def test_correct_answer_scores_the_maximum():
    row = score(CORRECT)
    assert row["format"] == 1.0 and row["detect"] == 1.0 and row["segment"] == 3.0
    assert row["total"] == 5.0 and row["human"] is None


rng = np.random.default_rng(0)
HUNDRED = [GT_BOX] + [tuple(int(v) for v in (x, y, x + 10, y + 10))
                      for x, y in zip(rng.integers(0, W - 10, 99), rng.integers(0, H - 10, 99))]
ADVERSARIAL = {
    "empty string": ("", None),
    "empty answer": ("<think> </think><answer></answer>", None),
    "whole-image box": (render_answer("It is everywhere.", "polyp", [(0, 0, W, H)]), GT_MASK),
    "whole-image box and mask": (render_answer("It is everywhere.", "polyp", [(0, 0, W, H)]), np.ones((H, W), bool)),
    "a hundred boxes": (render_answer("Many places.", "polyp", HUNDRED), GT_MASK),
    "a hundred copies of the right box": (render_answer("Sure.", "polyp", [GT_BOX] * 100), GT_MASK),
    "box outside the image": (render_answer("Off to the side.", "polyp", [GT_BOX, (110, 90, 200, 200)]), GT_MASK),
    "only boxes outside the image": (render_answer("Off.", "polyp", [(-50, -50, -10, -10)]), GT_MASK),
    "seg missing": (CORRECT.replace(" The mask is <seg>.", ""), GT_MASK),
    "seg twice": (CORRECT.replace("<seg>", "<seg> <seg>"), GT_MASK),
    "seg in think": (CORRECT.replace("sharp border", "sharp <seg> border"), GT_MASK),
    "text after answer": (CORRECT + " [[30, 40, 50, 60]]", GT_MASK),
    "coordinates in think": (render_answer("It spans 30, 40 to 50, 60.", "polyp", [GT_BOX]), GT_MASK),
    "no think": (CORRECT.split("</think>", 1)[1], GT_MASK),
    "degenerate box": (render_answer("Thin.", "polyp", [GT_BOX, (40, 40, 40, 60)]), GT_MASK),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_scores_below_correct(name):
    text, mask = ADVERSARIAL[name]
    good, bad = score(CORRECT), score(text, mask)
    assert bad["total"] < good["total"], (name, bad)
    for term in ("format", "detect", "segment"):
        assert bad[term] <= good[term], (name, term, bad)


def test_adversarial_specific_terms():
    s = {name: score(text, mask) for name, (text, mask) in ADVERSARIAL.items()}
    assert s["empty string"] == {"format": 0.0, "detect": 0.0, "segment": -1.0, "human": None, "total": -1.0}
    assert s["empty answer"]["detect"] == 0.0 and s["empty answer"]["segment"] == -1.0
    assert s["whole-image box"]["detect"] == 0.0                      # IoU 1/30 < 0.5 → F1 0
    # a whole-image mask still overlaps: for a lesion ≥ ~2.6 % of the image its Dice reaches 0.05 and it earns
    # the fine branch (here 1 + 2·800/12400), far below a correct mask's 3; smaller lesions drop to GIoU
    assert s["whole-image box and mask"]["segment"] == pytest.approx(1 + 2 * 800 / 12400)
    tiny = rect(0, 0, 5, 5)
    assert segment_score(np.ones((H, W), bool), tiny) == pytest.approx(1 + 25 / 12000)  # coarse, overlapping: 1 + GIoU
    assert s["a hundred boxes"]["detect"] <= 2 / 101 + 1e-9
    assert s["a hundred copies of the right box"]["detect"] == pytest.approx(2 / 101)
    assert s["box outside the image"]["detect"] == pytest.approx(2 / 3)   # rejected box = false positive
    assert s["degenerate box"]["detect"] == pytest.approx(2 / 3)
    assert s["only boxes outside the image"]["detect"] == 0.0
    assert s["seg missing"]["format"] == 0.0 and s["seg missing"]["segment"] == 3.0  # the mask is scored; format pays
    for name in ("seg twice", "seg in think", "text after answer", "coordinates in think", "no think",
                 "box outside the image"):
        assert s[name]["format"] == 0.0, name


def test_each_reward_is_lower_for_each_adversarial_in_its_own_column():
    texts = [CORRECT] + [t for t, _ in ADVERSARIAL.values()]
    masks = [GT_MASK] + [m for _, m in ADVERSARIAL.values()]
    totals = combined_reward(["q"] * len(texts), texts, **columns(len(texts), masks))
    assert totals[0] == max(totals) and totals.count(totals[0]) == 1


def test_conversational_completions():
    conv = [[{"role": "assistant", "content": CORRECT}]]
    assert format_reward(["q"], conv, image_size=[(H, W)]) == [1.0]
    assert completion_text([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]) == "y"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                             {"type": "text", "text": "b"}]}]) == "ab"
    assert completion_text({"role": "assistant", "content": "z"}) == "z"


def test_image_size_falls_back_to_gt_mask_shape():
    text = render_answer("Off.", "polyp", [(0, 0, W + 5, H)])
    assert format_reward(["q"], [text], gt_mask=[GT_MASK]) == [0.0]
    assert format_reward(["q"], [text]) == [1.0]  # nothing to check against


def test_missing_ground_truth_is_not_applicable():
    assert detect_reward(["q"], [CORRECT]) == [None]
    assert segment_reward(["q"], [CORRECT], pred_mask=[GT_MASK]) == [None]
    row = score_completions(["q"], [CORRECT], image_size=[(H, W)])[0]
    assert row == {"format": 1.0, "detect": None, "segment": None, "human": None, "total": 1.0}


def test_detect_reward_equals_detect_score_without_rejects():
    pred = [(30, 40, 50, 62), (0, 0, 10, 10)]
    text = render_answer("Two.", "polyp", pred)
    assert detect_reward(["q"], [text], image_size=[(H, W)], gt_boxes=[[GT_BOX]]) == \
        [pytest.approx(detect_score(pred, [GT_BOX]))]
    assert detect_score_with_rejects(pred, [GT_BOX], 0) == pytest.approx(detect_score(pred, [GT_BOX]))
    assert detect_score_with_rejects([], [], 0) == 1.0 and detect_score_with_rejects([], [], 1) == 0.0


# ---------------------------------------------------------------- segment reward

def test_segment_dice_one_is_three():
    assert segment_score(GT_MASK, GT_MASK) == 3.0


def test_segment_fine_branch():
    pred = rect(30, 40, 50, 50)  # half the truth: Dice = 2·200/(200+400) = 2/3
    assert segment_score(pred, GT_MASK) == pytest.approx(1 + 2 * 2 / 3)


def test_overlapping_beats_every_non_overlapping():
    # Dice 0.06: truth 400 px, pred overlaps by k px and has area a: 2k/(400+a) = 0.06 → k=15, a=100
    pred = rect(45, 40, 50, 43) | rect(0, 0, 85, 1)  # 15 px inside + 85 px outside = 100 px
    assert dice(pred, GT_MASK) == pytest.approx(0.06)
    overlapping = segment_score(pred, GT_MASK)
    assert overlapping == pytest.approx(1.12)
    for x in (50, 60, 80, 100):  # touching … far, all disjoint
        other = segment_score(rect(x, 40, x + 20, 60), GT_MASK)
        assert other <= 0 < overlapping


def test_barely_overlapping_still_beats_adjacent():
    corner = rect(49, 59, 69, 79)    # one pixel of overlap at the corner: GIoU < 0
    adjacent = rect(50, 40, 70, 60)  # shares an edge, no overlap: GIoU = 0
    assert mask_giou(corner, GT_MASK) < mask_giou(adjacent, GT_MASK) == pytest.approx(0.0)
    assert 0 < segment_score(corner, GT_MASK) < 1.1
    assert segment_score(corner, GT_MASK) > segment_score(adjacent, GT_MASK)
    # and the coarse branch stays below the fine one
    assert segment_score(corner, GT_MASK) < segment_score(rect(30, 40, 50, 41) | rect(0, 90, 1, 91), GT_MASK)


def test_closer_non_overlapping_beats_farther():
    scores = [segment_score(rect(x, 40, x + 20, 60), GT_MASK) for x in (55, 70, 100)]
    assert scores[0] > scores[1] > scores[2] > -1
    assert scores[0] == pytest.approx(mask_giou(rect(55, 40, 75, 60), GT_MASK))


def test_no_mask_is_the_floor():
    empty = np.zeros((H, W), bool)
    far = rect(119, 99, 120, 100)
    assert segment_score(None, GT_MASK) == -1.0
    assert segment_score(empty, GT_MASK) == -1.0
    assert segment_score(empty, GT_MASK) <= segment_score(far, GT_MASK)
    assert segment_reward(["q"], [CORRECT], gt_mask=[GT_MASK], pred_mask=[None]) == [-1.0]
    assert segment_score(empty, empty) == 3.0  # nothing to find, nothing found


def test_segment_shape_mismatch_raises():
    with pytest.raises(ValueError):
        segment_score(np.zeros((10, 10), bool), GT_MASK)


# ---------------------------------------------------------------- human reward and weights

def test_human_rank_normalised_within_group():
    prompts = ["a"] * 3 + ["b"] * 3
    out = human_reward(prompts, ["x"] * 6, human_rank=[1, 2, 3, 1, 1, 3])
    assert out == pytest.approx([1.0, 0.5, 0.0, 1.0, 1.0, 0.0])


def test_human_rank_ties_and_missing():
    out = human_reward(["a"] * 4, ["x"] * 4, human_rank=[2, 2, None, float("nan")])
    assert out == [0.5, 0.5, None, None]
    assert human_reward(["a", "a"], ["x", "x"]) == [None, None]


def test_human_rating_and_group_id():
    out = human_reward([None] * 4, ["x"] * 4, human_rating=[5, 1, [3, 4], {"mask": 2, "reasoning": 4}])
    assert out == pytest.approx([1.0, 0.0, 0.625, 0.5])
    both = human_reward(["p"] * 2, ["x"] * 2, human_rank=[1, 2], human_rating=[3, 3], group_id=[0, 0])
    assert both == pytest.approx([0.75, 0.25])
    split = human_reward(["p"] * 2, ["x"] * 2, human_rank=[1, 2], group_id=[0, 1])
    assert split == [0.5, 0.5]  # alone in its group: no preference


def test_weights_and_registry():
    assert set(REWARD_FUNCS) == {"format", "detect", "segment", "human"}
    assert RewardWeights().as_dict() == {"format": 1.0, "detect": 1.0, "segment": 1.0, "human": 0.0}
    cols = columns(2)
    texts = [CORRECT, CORRECT]
    assert combined_reward(["q"] * 2, texts, weights={"segment": 2.0}, **cols) == [6.0, 6.0]
    with_human = combined_reward(["q"] * 2, texts, weights=RewardWeights(human=2.0), human_rank=[1, 2], **cols)
    assert with_human == [7.0, 5.0]
    with pytest.raises(ValueError):
        combined_reward(["q"], [CORRECT], weights={"fromat": 1.0}, **columns(1))


def test_column_length_mismatch_raises():
    with pytest.raises(ValueError):
        detect_reward(["q", "q"], [CORRECT, CORRECT], gt_boxes=[[GT_BOX]])


def test_trl_style_call_with_extra_kwargs():
    out = format_reward(prompts=["q"], completions=[CORRECT], completion_ids=[[1, 2]], trainer_state=None,
                        image_size=[(H, W)])
    assert out == [1.0]


# ---------------------------------------------------------------- group advantages

def test_group_advantages_known_numbers():
    adv, keep, frac = group_advantages(np.array([[1.0, 2.0, 3.0]]), eps=1e-4)
    assert adv == pytest.approx(np.array([[-1.0, 0.0, 1.0]]) / (1 + 1e-4))
    assert keep.tolist() == [True] and frac == 0.0


def test_group_advantages_drops_equal_groups():
    r = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [2.0, 2.0, 2.0], [0.0, 4.0, 2.0]])
    res = group_advantages(r)
    assert res.keep_mask.tolist() == [True, False, False, True]
    assert res.frac_zero_std == 0.5
    assert np.all(res.advantages[1:3] == 0.0)
    assert res.advantages[3] == pytest.approx(np.array([-2.0, 2.0, 0.0]) / (2.0 + 1e-4))


def test_group_advantages_scales():
    r = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    none = group_advantages(r, scale="none")
    assert none.advantages == pytest.approx(r - r.mean(axis=1, keepdims=True))
    batch = group_advantages(r, scale="batch", eps=1e-6)
    assert batch.advantages == pytest.approx((r - r.mean(axis=1, keepdims=True)) / (r.std(ddof=1) + 1e-6))
    with pytest.raises(ValueError):
        group_advantages(r, scale="token")
    with pytest.raises(ValueError):
        group_advantages(np.array([1.0, 2.0]))
    single = group_advantages(np.array([[1.0], [2.0]]))
    assert single.keep_mask.tolist() == [False, False] and single.frac_zero_std == 1.0

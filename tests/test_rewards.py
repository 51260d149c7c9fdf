"""Rewards: adversarial outputs must never beat a correct answer; the absent target is a first-class
answer; GRPO group advantages and the reward-spread floor."""
import numpy as np
import pytest

from coreseg.answer import render_answer
from coreseg.mask_boxes import mask_boxes
from coreseg.metrics import dice
from trainers.rewards import (REWARD_FUNCS, SEGMENT_FLOOR, SEGMENT_TOP, RewardWeights, coarse_score, combined_reward,
                              completion_text, consistency_reward, consistency_score, detect_reward, format_reward,
                              group_advantages, human_reward, reward_range, score_completions, segment_reward,
                              segment_score)

H, W = 100, 120
GT_BOX = (50, 40, 70, 60)   # centred in the image


def rect(x1, y1, x2, y2, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[y1:y2, x1:x2] = True
    return m


GT_MASK = rect(*GT_BOX)
EMPTY = np.zeros((H, W), bool)
CORRECT = render_answer("A single finding in the centre of the image.", "polyp", [GT_BOX])
ABSENT = render_answer("The mucosa looks normal throughout.", "polyp", [])
TERMS = ("format", "detect", "segment", "consistency")


def columns(n, pred_mask=GT_MASK, gt_boxes=(GT_BOX,), gt_mask=GT_MASK):
    return dict(image_size=[(H, W)] * n, gt_boxes=[list(gt_boxes)] * n, gt_mask=[gt_mask] * n,
                pred_mask=[pred_mask] * n if not isinstance(pred_mask, list) else pred_mask)


def score(text, pred_mask=GT_MASK, **kw):
    return score_completions(["q"], [text], **columns(1, pred_mask, **kw))[0]


def test_correct_answer_scores_the_maximum():
    row = score(CORRECT)
    assert row == {"format": 1.0, "detect": 1.0, "segment": 3.0, "consistency": 1.0, "pointing": None, "human": None,
                   "total": 6.0}
    single_scan_terms = {"format": 1.0, "detect": 1.0, "segment": 1.0, "consistency": 1.0}
    assert row["total"] == reward_range(single_scan_terms) + SEGMENT_FLOOR  # the top of every term that applies


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
    "box far from its own mask": (render_answer("Here.", "polyp", [(0, 0, 20, 20)]), GT_MASK),
    "seg missing": (CORRECT.replace(" The mask is <seg>.", ""), GT_MASK),
    "seg twice": (CORRECT.replace("<seg>", "<seg> <seg>"), GT_MASK),
    "seg in think": (CORRECT.replace("single finding", "single <seg> finding"), GT_MASK),
    "text after answer": (CORRECT + " [[50, 40, 70, 60]]", GT_MASK),
    "coordinates in think": (render_answer("It spans 50, 40 to 70, 60.", "polyp", [GT_BOX]), GT_MASK),
    "no think": (CORRECT.split("</think>", 1)[1], GT_MASK),
    "degenerate box": (render_answer("Thin.", "polyp", [GT_BOX, (40, 40, 40, 60)]), GT_MASK),
    "absent answer on a present lesion": (ABSENT, GT_MASK),   # the probe drew the lesion, the text denies it
    "absent answer, nothing drawn": (ABSENT, EMPTY),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_scores_below_correct(name):
    text, mask = ADVERSARIAL[name]
    good, bad = score(CORRECT), score(text, mask)
    assert bad["total"] < good["total"], (name, bad)
    for term in TERMS:
        assert bad[term] <= good[term], (name, term, bad)


def test_adversarial_specific_terms():
    s = {name: score(text, mask) for name, (text, mask) in ADVERSARIAL.items()}
    assert s["empty string"] == {"format": 0.0, "detect": 0.0, "segment": -1.0, "consistency": 0.0, "pointing": None, "human": None,
                                 "total": -1.0}
    assert s["empty answer"]["detect"] == 0.0 and s["empty answer"]["segment"] == -1.0
    assert s["whole-image box"]["detect"] == pytest.approx(400 / 12000)       # soft F1 = IoU of the one pair
    assert s["whole-image box"]["consistency"] <= 400 / 12000  # far from its own mask's box too
    # the whole-image mask of a 3.3 % lesion reaches Dice 0.065: the fine branch, far below a correct mask
    assert s["whole-image box and mask"]["segment"] == pytest.approx(1 + 2 * 800 / 12400)
    assert s["a hundred boxes"]["detect"] == pytest.approx(2 / 101)       # one truth: one matched pair at most
    assert s["a hundred boxes"]["consistency"] <= 2 / 101 + 1e-9
    assert s["a hundred copies of the right box"]["detect"] == pytest.approx(2 / 101)
    assert s["a hundred copies of the right box"]["consistency"] <= 2 / 101 + 1e-9
    assert s["box outside the image"]["detect"] == pytest.approx(2 / 3)   # rejected box = a prediction
    assert s["degenerate box"]["detect"] == pytest.approx(2 / 3)
    assert s["only boxes outside the image"]["detect"] == 0.0
    assert s["only boxes outside the image"]["consistency"] == 0.0
    assert s["box far from its own mask"]["detect"] == 0.0 and s["box far from its own mask"]["consistency"] == 0.0
    assert s["seg missing"]["format"] == 0.0 and s["seg missing"]["segment"] == 3.0  # the mask is scored; format pays
    assert s["absent answer on a present lesion"] == {"format": 1.0, "detect": 0.0, "segment": -1.0,
                                                      "consistency": 1.0, "pointing": None, "human": None, "total": 1.0}
    assert s["absent answer, nothing drawn"] == s["absent answer on a present lesion"]  # it stands for an empty mask
    for name in ("seg twice", "seg in think", "text after answer", "coordinates in think", "no think",
                 "box outside the image"):
        assert s[name]["format"] == 0.0, name


def test_each_reward_is_lower_for_each_adversarial_in_its_own_column():
    texts = [CORRECT] + [t for t, _ in ADVERSARIAL.values()]
    masks = [GT_MASK] + [m for _, m in ADVERSARIAL.values()]
    totals = combined_reward(["q"] * len(texts), texts, **columns(len(texts), masks))
    assert totals[0] == max(totals) and totals.count(totals[0]) == 1


# ---------------------------------------------------------------- absent target (empty truth)

def absent(text, mask):
    return score(text, mask, gt_boxes=(), gt_mask=EMPTY)


def test_absent_target_the_absent_answer_scores_the_maximum():
    assert absent(ABSENT, EMPTY) == {"format": 1.0, "detect": 1.0, "segment": 3.0, "consistency": 1.0,
                                     "pointing": None, "human": None, "total": 6.0}
    assert absent(ABSENT, GT_MASK)["segment"] == 3.0  # an absent answer stands for an empty mask
    assert absent(ABSENT, None)["segment"] == 3.0


@pytest.mark.parametrize("text, mask", [
    (CORRECT, GT_MASK),                                                            # a confident wrong lesion
    (render_answer("Small.", "polyp", [(0, 0, 2, 2)]), rect(0, 0, 2, 2)),          # a speck
    (render_answer("All.", "polyp", [(0, 0, W, H)]), np.ones((H, W), bool)),       # the whole image
    (render_answer("Many.", "polyp", HUNDRED), GT_MASK),                           # a hundred boxes
    (CORRECT, EMPTY),                                                              # present, but nothing drawn
    ("<think> x </think><answer> The polyp is located at . The mask is <seg>. </answer>", EMPTY),  # no box
    (ABSENT + " [[0, 0, 2, 2]]", EMPTY),                                           # text after </answer>
    (ABSENT.replace("visible.", "visible. <seg>"), EMPTY),                         # a <seg> in the absent answer
])
def test_absent_target_any_present_answer_scores_low(text, mask):
    best, row = absent(ABSENT, EMPTY), absent(text, mask)
    assert row["total"] < best["total"]
    for term in TERMS:
        assert row[term] <= best[term]
    if mask is not None and mask.any():
        assert row["segment"] == SEGMENT_FLOOR


def test_absent_target_detect_and_segment_rules():
    assert detect_reward(["q"], [ABSENT], gt_boxes=[[]]) == [1.0]
    assert detect_reward(["q"], [CORRECT], gt_boxes=[[]]) == [0.0]
    assert detect_reward(["q"], [ABSENT], gt_boxes=[[GT_BOX]]) == [0.0]  # absent answer on a present lesion
    assert segment_score(EMPTY, EMPTY) == SEGMENT_TOP == 3.0
    assert segment_score(None, EMPTY) == SEGMENT_TOP
    for mask in (rect(0, 0, 1, 1), GT_MASK, np.ones((H, W), bool)):
        assert segment_score(mask, EMPTY) == SEGMENT_FLOOR


# ---------------------------------------------------------------- detect: no cliff

def test_detect_is_smooth_and_monotone_in_box_quality():
    scores = []
    for k in range(0, 21):  # slide the box right, pixel by pixel, until it no longer overlaps
        text = render_answer("Shifted.", "polyp", [(50 + k, 40, 70 + k, 60)])
        scores.append(detect_reward(["q"], [text], image_size=[(H, W)], gt_boxes=[[GT_BOX]])[0])
    assert scores[0] == 1.0 and scores[-1] == 0.0
    assert all(a > b for a, b in zip(scores, scores[1:]))  # every pixel counts, none is a cliff
    iou_04 = 8  # shift 8 of 20: IoU 12/28 ≈ 0.43 < 0.5: the old detect reward gave 0
    assert scores[iou_04] == pytest.approx(12 / 28)
    assert max(np.diff(scores)) < 0 and min(np.diff(scores)) > -0.1


def test_detect_only_exact_boxes_score_one():
    for box in [(50, 40, 70, 61), (49, 40, 70, 60), (50, 40, 69, 60)]:
        text = render_answer("Close.", "polyp", [box])
        assert 0.9 < detect_reward(["q"], [text], image_size=[(H, W)], gt_boxes=[[GT_BOX]])[0] < 1.0


# ---------------------------------------------------------------- segment reward

def test_segment_dice_one_is_three():
    assert segment_score(GT_MASK, GT_MASK) == 3.0


def test_segment_fine_branch():
    pred = rect(50, 40, 70, 50)  # half the truth: Dice = 2·200/(200+400) = 2/3
    assert segment_score(pred, GT_MASK) == pytest.approx(1 + 2 * 2 / 3)


FRAME = (256, 256)


def small_lesion(side=26, frame=FRAME):
    """A square lesion of side `side` in the middle of the frame (26 px: 1 % of 256 × 256)."""
    x = (frame[1] - side) // 2
    y = (frame[0] - side) // 2
    return rect(x, y, x + side, y + side, frame), (x, y)


def test_small_lesion_hack_is_closed():
    lesion, (x, y) = small_lesion()
    assert lesion.mean() == pytest.approx(0.0103, abs=1e-4)
    whole = segment_score(np.ones(FRAME, bool), lesion)
    near_miss = segment_score(rect(x + 30, y, x + 56, y + 26, FRAME), lesion)  # right size, 4 px gap
    barely_fine = rect(x, y, x + 26, y + 1, FRAME) | rect(0, 0, 1, 1, FRAME)     # Dice just above 0.05
    assert dice(barely_fine, lesion) >= 0.05
    assert whole < near_miss < 1.0 < segment_score(barely_fine, lesion)
    assert whole == pytest.approx(0.135, abs=0.002) and near_miss == pytest.approx(0.328, abs=0.002)


@pytest.mark.parametrize("side", [1, 3, 8, 16, 26, 40, 56])
def test_whole_image_mask_never_beats_a_fine_mask_nor_a_sized_near_miss(side):
    lesion, (x, y) = small_lesion(side)
    whole = np.ones(FRAME, bool)
    fine_floor = 1 + 2 * 0.05
    if dice(whole, lesion) < 0.05:  # the coarse branch: below every mask with Dice ≥ 0.05
        assert segment_score(whole, lesion) < 1.0 < fine_floor
        gap = max(2, side // 6)
        near = rect(x + side + gap, y, x + 2 * side + gap, y + side, FRAME)
        assert segment_score(near, lesion) > segment_score(whole, lesion)
    else:  # a large lesion: the whole image is an honest, poor overlap, scored by its Dice
        assert segment_score(whole, lesion) == pytest.approx(1 + 2 * dice(whole, lesion))


def test_coarse_branch_ranks_by_position_and_size():
    lesion, (x, y) = small_lesion(20)
    by_distance = [segment_score(rect(x + d, y, x + d + 20, y + 20, FRAME), lesion) for d in (24, 40, 80, 120)]
    assert all(a > b for a, b in zip(by_distance, by_distance[1:]))
    right = rect(x + 40, y, x + 60, y + 20, FRAME)          # the right size, 20 px off
    too_big = rect(x + 30, y - 10, x + 70, y + 30, FRAME)   # same centre as `right`, twice the side
    too_small = rect(x + 48, y + 8, x + 52, y + 12, FRAME)  # same centre, a fifth of the side
    for wrong_size in (too_big, too_small):  # same centre as `right`, wrong size
        assert dice(wrong_size, lesion) == 0.0
        assert segment_score(right, lesion) > segment_score(wrong_size, lesion)
    one_radius = rect(x + 11, y, x + 31, y + 20, FRAME)  # overlapping but Dice = 2·180/800 ≥ 0.05: fine branch
    assert segment_score(one_radius, lesion) > 1.0
    r = np.sqrt(400 / np.pi)
    shifted = rect(x + round(r), y, x + round(r) + 20, y + 20, FRAME)
    assert coarse_score(shifted, lesion) == pytest.approx(1 / (1 + round(r) / r), abs=1e-9)


def test_coarse_branch_stays_between_floor_and_fine():
    lesion, _ = small_lesion(20)
    for mask in (rect(0, 0, 1, 1, FRAME), rect(200, 200, 256, 256, FRAME), np.ones(FRAME, bool),
                 rect(118, 118, 119, 119, FRAME)):
        if dice(mask, lesion) < 0.05:
            assert SEGMENT_FLOOR < segment_score(mask, lesion) <= 1.0


def test_no_mask_is_the_floor():
    far = rect(119, 99, 120, 100)
    assert segment_score(None, GT_MASK) == -1.0
    assert segment_score(EMPTY, GT_MASK) == -1.0
    assert segment_score(EMPTY, GT_MASK) < segment_score(far, GT_MASK)
    assert segment_reward(["q"], [CORRECT], gt_mask=[GT_MASK], pred_mask=[None]) == [-1.0]


def test_segment_shape_mismatch_raises():
    with pytest.raises(ValueError):
        segment_score(np.zeros((10, 10), bool), GT_MASK)


# ---------------------------------------------------------------- self-consistency

def test_consistency_of_a_faithful_answer_is_one():
    two = rect(10, 10, 30, 30) | rect(80, 60, 110, 90)
    text = render_answer("Two findings.", "polyps", mask_boxes(two))
    assert consistency_score(text, two, (H, W)) == pytest.approx(1.0)
    assert consistency_score(CORRECT, GT_MASK, (H, W)) == pytest.approx(1.0)


def test_consistency_punishes_boxes_that_do_not_match_the_own_mask():
    two = rect(10, 10, 30, 30) | rect(80, 60, 110, 90)
    one_of_two = render_answer("One finding.", "polyp", mask_boxes(two)[:1])
    assert consistency_score(one_of_two, two, (H, W)) <= 2 / 3 + 1e-9     # soft F1 of 1 stated of 2 parts
    far = render_answer("Here.", "polyp", [(0, 0, 20, 20)])
    assert consistency_score(far, GT_MASK, (H, W)) == 0.0
    hundred = render_answer("Many.", "polyp", HUNDRED)
    assert consistency_score(hundred, GT_MASK, (H, W)) <= 2 / 101 + 1e-9
    assert consistency_score(render_answer("Same.", "polyp", [GT_BOX] * 100), GT_MASK, (H, W)) <= 2 / 101 + 1e-9
    near = render_answer("Near.", "polyp", [(52, 40, 72, 60)])
    assert 0.5 < consistency_score(near, GT_MASK, (H, W)) < 1.0           # smooth, like detect


def test_consistency_punishes_a_claim_the_own_mask_contradicts():
    wrong_place = render_answer("A single finding in the upper left part of the image.", "polyp", [GT_BOX])
    right_place = render_answer("A single finding in the centre of the image.", "polyp", [GT_BOX])
    assert consistency_score(wrong_place, GT_MASK, (H, W)) < consistency_score(right_place, GT_MASK, (H, W))
    assert consistency_score(wrong_place, GT_MASK, (H, W)) > 0.0  # the boxes still agree


def test_consistency_of_presence():
    assert consistency_score(CORRECT, EMPTY, (H, W)) == 0.0   # says present, its mask is empty
    assert consistency_score(CORRECT, None, (H, W)) == 0.0
    assert consistency_score(ABSENT, EMPTY, (H, W)) == 1.0
    assert consistency_score(ABSENT, GT_MASK, (H, W)) == 1.0  # an absent answer stands for an empty mask
    assert consistency_score("", GT_MASK, (H, W)) == 0.0
    assert consistency_score("<think> x </think><answer></answer>", GT_MASK, (H, W)) == 0.0
    no_box = "<think> x </think><answer> The polyp is located at . The mask is <seg>. </answer>"
    assert consistency_score(no_box, GT_MASK, (H, W)) == 0.0


def test_consistency_across_frames():
    """Boxes in the model's square frame, the mask in another, claims measured in the image's frame."""
    frame = 256
    box = (64, 80, 128, 160)                        # in the 256 × 256 box frame
    low_res = rect(64, 80, 128, 160, (256, 256))    # the decoder's mask, same frame
    text = render_answer("A single finding.", "polyp", [box])
    assert consistency_score(text, low_res, (frame, frame)) == pytest.approx(1.0)
    small = low_res[::4, ::4]                       # a 64 × 64 mask of the same lesion
    assert consistency_score(text, small, (frame, frame)) == pytest.approx(1.0)
    assert consistency_score(text, low_res, (frame, frame), measure_size=(128, 300)) == pytest.approx(1.0)
    image = np.zeros((200, 150, 3), np.uint8)
    # to a 200 × 150 image: the scaled box and the resampled mask round their edges apart by a pixel
    assert consistency_score(text, low_res, (frame, frame), image=image) == pytest.approx(1.0, abs=0.02)
    shifted = render_answer("A single finding.", "polyp", [(160, 80, 224, 160)])
    assert consistency_score(shifted, small, (frame, frame), measure_size=(128, 300)) == 0.0


def test_consistency_reward_columns():
    assert consistency_reward(["q"], [CORRECT]) == [None]                       # no mask column: not applicable
    assert consistency_reward(["q"] * 2, [CORRECT, ABSENT], pred_mask=[GT_MASK, GT_MASK],
                              image_size=[(H, W)] * 2) == [pytest.approx(1.0), 1.0]
    with pytest.raises(ValueError):
        consistency_reward(["q"] * 2, [CORRECT, CORRECT], pred_mask=[GT_MASK])


# ---------------------------------------------------------------- plumbing

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
    assert row == {"format": 1.0, "detect": None, "segment": None, "consistency": None, "pointing": None, "human": None, "total": 1.0}


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
    assert set(REWARD_FUNCS) == {"format", "detect", "segment", "consistency", "pointing", "human"}
    assert RewardWeights().as_dict() == {"format": 1.0, "detect": 1.0, "segment": 1.0, "consistency": 1.0,
                                         "pointing": 1.0, "human": 0.0}
    cols = columns(2)
    texts = [CORRECT, CORRECT]
    assert combined_reward(["q"] * 2, texts, weights={"segment": 2.0}, **cols) == [6.0, 6.0]
    assert combined_reward(["q"] * 2, texts, weights={"consistency": 3.0}, **cols) == [3.0, 3.0]
    with_human = combined_reward(["q"] * 2, texts, weights=RewardWeights(human=2.0), human_rank=[1, 2], **cols)
    assert with_human == [8.0, 6.0]
    with pytest.raises(ValueError):
        combined_reward(["q"], [CORRECT], weights={"fromat": 1.0}, **columns(1))


def test_reward_range():
    assert reward_range() == 1 + 1 + 4 + 1 + 1
    assert reward_range({"segment": 1.0}) == 4.0
    assert reward_range(RewardWeights(human=0.5)) == 8.5


def test_pointing_rewards_the_sentence_that_picks_the_named_panel_on_composites_only():
    """A composite's completion earns 1 only when its reasoning picks the named panel in the training words; a
    completion that answers a composite like a single scan (what GRPO drifted to without it) earns 0; single
    scans have no pointing sentence: None."""
    from trainers.rewards import pointing_reward

    sentence = "The question asks for a polyp, which a colonoscopy view shows; it points to the right panel, a colonoscopy view."
    right = render_answer(f"The image is a composite of two panels: a breast ultrasound (left), a colonoscopy view "
                          f"(right). {sentence} A polyp.", "polyp", [(300, 100, 400, 200)])
    wrong = right.replace("the right panel", "the left panel")
    single = render_answer("In contrast, there is a polyp in the mid-right region of the image.", "polyp",
                           [(300, 100, 400, 200)])
    assert pointing_reward(["q"] * 3, [right, wrong, single], pointing=[sentence] * 3) == [1.0, 0.0, 0.0]
    assert pointing_reward(["q"], [single], pointing=[None]) == [None]
    assert pointing_reward(["q"], [single]) == [None]


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


def test_group_advantages_drops_pixel_noise_below_the_floor():
    """Four candidates sharing one mask: segment rewards differing by pixel noise (2e-4 … 8e-3)."""
    noise = np.array([[5.2000, 5.2002, 5.2080, 5.2040]])
    real = np.array([[4.1, 5.3, 4.6, 5.0]])
    unfloored = group_advantages(noise)
    assert unfloored.keep_mask.tolist() == [True] and np.abs(unfloored.advantages).max() > 0.9  # the old behaviour
    floor = 0.01 * reward_range()
    res = group_advantages(np.vstack([noise, real]), min_spread=floor)
    assert res.keep_mask.tolist() == [False, True] and res.frac_zero_std == 0.5
    assert np.all(res.advantages[0] == 0.0)
    assert res.advantages[1] == pytest.approx(group_advantages(real).advantages[0])  # kept groups are unchanged
    at_floor = np.array([[0.0, floor]])
    assert group_advantages(at_floor, min_spread=floor).keep_mask.tolist() == [True]
    for scale in ("batch", "none"):
        assert group_advantages(np.vstack([noise, real]), scale, min_spread=floor).keep_mask.tolist() == [False, True]
    with pytest.raises(ValueError):
        group_advantages(real, min_spread=-1.0)


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


def test_grpo_drops_groups_below_the_configured_floor():
    """The GRPO loop's advantage step (ragged groups: stored + fresh candidates) applies the config's floor."""
    from trainers.grpo_loop import GRPOConfig, _advantages

    cfg = GRPOConfig()
    floor = cfg.min_reward_spread * reward_range(cfg.weights)
    assert floor == pytest.approx(0.08)
    groups = [[5.2000, 5.2002, 5.2080, 5.2040], [4.1, 5.3, 4.6], [3.0, 3.0]]
    advantages, keep, frac = _advantages(groups, cfg.scale_rewards, floor)
    assert keep == [False, True, False] and frac == pytest.approx(2 / 3)
    assert np.all(advantages[0] == 0.0) and np.abs(advantages[1]).max() > 0.5
    _, keep_unfloored, _ = _advantages(groups, cfg.scale_rewards)
    assert keep_unfloored == [True, True, False]  # without the floor, pixel noise would be trained on
    _, keep_batch, _ = _advantages(groups, "batch", floor)
    assert keep_batch == [False, True, False]


def test_a_resumed_step_log_keeps_its_columns(tmp_path):
    """A run resumed after a reward term was added appends rows under the file's own header, aligned."""
    import csv

    from trainers.grpo_loop import StepLog

    path = tmp_path / "log.csv"
    old = ["step", "reward", "format", "detect", "segment", "consistency", "human", "kl"]
    path.write_text(",".join(old) + "\n1,2.0,1,0.5,0.4,0.1,,0.01\n")
    log = StepLog(path)
    log.write({"step": 2, "reward": 3.0, "format": 1.0, "pointing": 1.0, "kl": 0.02})
    log.file.close()
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == old and [r["step"] for r in rows] == ["1", "2"]
    assert rows[1]["reward"] == "3.00000" and rows[1]["kl"] == "0.02000" and "pointing" not in rows[1]
    fresh = StepLog(tmp_path / "new.csv")
    fresh.write({"step": 1, "pointing": 0.5})
    fresh.file.close()
    assert list(csv.DictReader((tmp_path / "new.csv").open()))[0]["pointing"] == "0.50000"

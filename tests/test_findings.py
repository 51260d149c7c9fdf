"""Claims checked against a mask (coreseg.findings): own-mask findings, and what no image can show."""
from __future__ import annotations

import itertools
import random

import numpy as np

from coreseg.answer import render_answer
from coreseg.findings import check_answer, claim_agreement, unsupported_claims
from coreseg.mask_boxes import mask_boxes
from trainers.reasoning import build_sample

H = W = 200


def disc(cx, cy, r):
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def grey(mask):
    return np.where(mask, 60, 150).astype(np.uint8)


def test_own_mask_findings_agree_for_a_true_answer_and_catch_each_wrong_claim():
    mask = disc(40, 40, 18)
    sample = build_sample((grey(mask), mask, "busbra", {"birads": 4}), random.Random(0))
    findings = check_answer(sample["answer_text"], mask, grey(mask))
    claims = {f.claim: f for f in findings}
    assert {"present", "box 1", "location", "size", "parts"} <= set(claims)
    assert all(f.agrees for f in findings) and claim_agreement(findings) == 1.0

    # the same answer against a mask drawn elsewhere: box and location disagree, presence agrees
    elsewhere = disc(160, 160, 18)
    wrong = {f.claim: f for f in check_answer(sample["answer_text"], elsewhere)}
    assert wrong["present"].agrees and not wrong["box 1"].agrees and not wrong["location"].agrees
    assert "upper left" in wrong["location"].stated and wrong["location"].measured == "lower right"

    # a box far from the own mask; a hundred boxes do not all agree
    far = render_answer(sample["reasoning"], "breast mass", [(150, 150, 190, 190)])
    assert not {f.claim: f for f in check_answer(far, mask)}["box 1"].agrees
    many = render_answer("A lesion.", "breast mass", [(i, i, i + 5, i + 5) for i in range(100)])
    assert claim_agreement(check_answer(many, mask)) < 0.1


def test_absent_answers_are_checked_on_presence():
    absent = render_answer("The mucosa is smooth and no raised tissue is seen.", "polyp", [])
    empty = np.zeros((H, W), bool)
    assert [(f.claim, f.agrees) for f in check_answer(absent, empty)] == [("present", True)]
    assert [(f.claim, f.agrees) for f in check_answer(absent, disc(100, 100, 20))] == [("present", False)]
    present = render_answer("A polyp.", "polyp", [(80, 80, 120, 120)])
    assert {f.claim: f.agrees for f in check_answer(present, empty)}["present"] is False
    assert check_answer("no answer at all", empty) == []


def test_every_generated_training_text_says_only_what_the_scan_shows():
    """Every label combination of the three sets, many wordings: no histology, biopsy, pathology or
    confirmed diagnosis in any target text."""
    mask = disc(90, 110, 30) | disc(150, 60, 12)
    image = np.dstack([grey(mask)] * 3)
    image[mask] = (120, 70, 40)
    labels = ([("busbra", {"birads": b, "pathology": p, "histology": h}) for b, p, h in itertools.product(
        (2, 3, 4, 5), ("benign", "malignant"), ("fibroadenoma", "invasive ductal carcinoma", None))]
        + [("ph2", {"diagnosis": d, "asymmetry": 2, "pigment_network": "atypical", "colours": ["brown"]})
           for d in (0, 1, 2)] + [("kvasir", {}), (None, {})])
    for (set_name, label), seed in itertools.product(labels, range(6)):
        text = build_sample((image, mask, set_name, label), random.Random(seed))["answer_text"]
        assert unsupported_claims(text) == [], text
        assert "fibroadenoma" not in text and "carcinoma" not in text


def test_unsupported_claims_catch_what_an_image_cannot_show():
    for text in ("Histology confirmed an invasive ductal carcinoma.", "Biopsy showed a fibroadenoma, a benign lesion.",
                 "The pathology is malignant.", "The lesion is a melanoma.", "This is a confirmed malignancy."):
        assert unsupported_claims(text), text
    for text in ("The features are suspicious for malignancy.", "The dermoscopic features raise concern for melanoma.",
                 "On imaging this is a BI-RADS category four finding: the features favour a benign process."):
        assert unsupported_claims(text) == [], text


def test_boxes_of_the_one_rule_are_what_the_answer_states():
    mask = disc(50, 50, 20) | disc(150, 150, 10)
    mask[0, 199] = True  # a speck is not a lesion
    sample = build_sample((grey(mask), mask, "busbra", {}), random.Random(0))
    assert [tuple(b) for b in sample["boxes"]] == mask_boxes(mask) and len(mask_boxes(mask)) == 2
    assert mask_boxes(mask)[0] == (30, 30, 71, 71)


def test_a_composite_answer_s_panel_is_checked_against_its_own_mask():
    """"The question points to the upper-right panel" agrees when ≥ 80 % of the own mask lies in that quadrant
    (the referring accuracy's rule); a mask in another panel, or spread over two, disagrees."""
    text = render_answer("The image is a composite of two panels: a breast ultrasound (upper-left), a dermoscopy "
                         "image (upper-right). The question points to the upper-right panel, a dermoscopy image.",
                         "pigmented skin lesion", [(300, 60, 420, 180)])
    mask = np.zeros((512, 512), bool)
    mask[60:180, 300:420] = True

    def panel(m):
        (finding,) = [f for f in check_answer(text, m) if f.claim == "panel"]
        return finding

    assert panel(mask).agrees and panel(mask).stated == "upper-right" and panel(mask).measured == "100% of the mask in it"
    assert not panel(np.roll(mask, 256, axis=0)).agrees          # the lower-right panel
    spread = mask.copy()
    spread[60:180, 60:180] = True                                  # half of it in the upper-left panel
    assert not panel(spread).agrees
    halves = render_answer("Two panels. The question points to the left panel, a colonoscopy view.", "polyp",
                           [(40, 200, 200, 400)])
    left = np.zeros((512, 512), bool)
    left[200:400, 40:200] = True
    assert [f.agrees for f in check_answer(halves, left) if f.claim == "panel"] == [True]
    assert [f.agrees for f in check_answer(halves, left[:, ::-1]) if f.claim == "panel"] == [False]
    assert not [f for f in check_answer(render_answer("A polyp.", "polyp", [(40, 200, 200, 400)]), left)
                if f.claim == "panel"]  # a single scan's answer claims no panel


def test_the_evaluation_asks_whether_box_and_mask_go_where_the_reasoning_points():
    """`coreseg.eval.follows_reasoning`: the first box and the mask each on the panel the reasoning names (≥ 80 % of
    their area), separately; nothing is asked of a reasoning that names no panel."""
    from coreseg.eval import follows_reasoning

    right = np.zeros((400, 600), bool)
    right[100:200, 350:450] = True
    text = render_answer("Two panels. The question points to the right panel, a colonoscopy view.", "polyp",
                         [(350, 100, 450, 200)])
    assert follows_reasoning(text, right) == {"box_follows": True, "mask_follows": True}
    assert follows_reasoning(text, right[:, ::-1]) == {"box_follows": True, "mask_follows": False}
    spanning = render_answer("Two panels. The question points to the right panel, a colonoscopy view.", "polyp",
                             [(200, 100, 450, 200)])  # 40 % of it on the left panel
    assert follows_reasoning(spanning, right) == {"box_follows": False, "mask_follows": True}
    assert follows_reasoning(render_answer("A polyp.", "polyp", [(350, 100, 450, 200)]), right) == {}

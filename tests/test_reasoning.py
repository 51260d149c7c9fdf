"""Lesion facts, reasoning chains, their checker and the question bank, on masks drawn here."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from coreseg.answer import parse_answer
from coreseg.questions import sample_question, suggested_questions
from coreseg.findings import VOCAB, check_statements, number_words, read_statements, unsupported_claims
from coreseg.lesion_facts import describe_lesion
from trainers.reasoning import build_reasoning, build_sample

H = W = 240
LABELS = {
    "busbra": {"pathology": "malignant", "birads": 5, "histology": "invasive ductal carcinoma"},
    "ph2": {"diagnosis": 1, "asymmetry": 2, "pigment_network": "atypical", "colours": ["light brown", "dark brown"]},
    "kvasir": {},
}


def disc(cx, cy, r, h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def ultrasound(mask, inside=60, outside=150, blur=0.0, seed=0):
    """A grey, speckled image, darker inside the mask."""
    image = np.where(mask, inside, outside).astype(np.float32)
    if blur:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    image += np.random.default_rng(seed).normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def skin(mask):
    image = np.zeros(mask.shape + (3,), np.uint8)
    image[:] = (220, 180, 160)
    image[mask] = (120, 70, 40)
    return image


def test_round_lesion_upper_left_and_size_words():
    mask = disc(40, 40, 20)
    facts = describe_lesion(ultrasound(mask), mask)
    assert facts.location == "upper left" and facts.shape == "round"
    assert facts.size_fraction == pytest.approx(mask.sum() / mask.size, abs=1e-4)
    assert facts.size == "moderate"  # 2.2 % of the field
    assert facts.boxes == [(20, 20, 61, 61)] and facts.parts == 1
    small = disc(40, 40, 10)
    assert describe_lesion(ultrasound(small), small).size == "small"
    tiny = disc(200, 200, 4)
    facts = describe_lesion(ultrasound(tiny), tiny)
    assert facts.location == "lower right" and facts.shape == "round"
    assert describe_lesion(ultrasound(disc(120, 120, 60)), disc(120, 120, 60)).location == "central"


def test_wide_dark_ellipse_is_oval_hypoechoic_parallel():
    yy, xx = np.mgrid[:H, :W]
    mask = ((xx - 120) / 60.0) ** 2 + ((yy - 120) / 30.0) ** 2 <= 1
    facts = describe_lesion(ultrasound(mask), mask)
    assert facts.shape == "oval" and facts.intensity == "darker" and facts.echo == "hypoechoic"
    assert facts.orientation == "parallel" and facts.colour is None
    text = build_reasoning(facts, "busbra", LABELS["busbra"], random.Random(0))
    assert "hypoechoic" in text and "parallel to the skin" in text
    tall = describe_lesion(ultrasound(mask.T), mask.T)
    assert tall.orientation == "taller-than-wide"


def test_star_is_irregular_and_lobes_are_lobulated():
    points = [(120 + (70 if i % 2 == 0 else 30) * np.cos(a), 120 + (70 if i % 2 == 0 else 30) * np.sin(a))
              for i, a in enumerate(np.linspace(0, 2 * np.pi, 11)[:-1])]
    star = np.zeros((H, W), np.uint8)
    cv2.fillPoly(star, [np.int32(points)], 1)
    assert describe_lesion(ultrasound(star > 0), star).shape == "irregular"
    lobes = disc(90, 120, 32) | disc(150, 120, 32) | disc(120, 80, 32)
    assert describe_lesion(ultrasound(lobes), lobes).shape == "lobulated"


def test_two_blobs_give_two_boxes_largest_first():
    mask = disc(60, 60, 20) | disc(180, 180, 30)
    mask[5, 230] = True  # a one-pixel speck is not a part
    sample = build_sample((ultrasound(mask), mask, "kvasir", {}), random.Random(3))
    assert sample["boxes"] == [[150, 150, 211, 211], [40, 40, 81, 81]]
    assert sample["facts"]["parts"] == 2 and "two separate parts" in sample["reasoning"]
    assert sample["target"] == "polyps"
    parsed = parse_answer(sample["answer_text"], mask.shape)
    assert parsed.ok and parsed.answer.boxes == ((150, 150, 211, 211), (40, 40, 81, 81))


def test_blurred_edge_is_indistinct_sharp_edge_is_sharp():
    mask = disc(120, 120, 40)
    assert describe_lesion(ultrasound(mask), mask).margin == "sharp"
    assert describe_lesion(ultrasound(mask, blur=5), mask).margin == "indistinct"
    assert describe_lesion(ultrasound(mask, inside=148), mask).margin == "indistinct"  # no contrast at all


def test_colour_image_words():
    mask = disc(120, 120, 50)
    facts = describe_lesion(skin(mask), mask)
    assert facts.intensity == "darker" and facts.colour == "brown"
    text = build_reasoning(facts, "ph2", LABELS["ph2"], 1)
    assert "brown" in text and "darker" in text


@pytest.mark.parametrize("set_name", ["busbra", "kvasir", "ph2", None])
def test_builder_text_no_digits_parses_varies_and_checks(set_name):
    mask = disc(60, 50, 25) | disc(75, 55, 22)
    image = skin(mask) if set_name in ("kvasir", "ph2") else ultrasound(mask)
    labels = LABELS.get(set_name, {})
    texts = set()
    for seed in range(10):
        sample = build_sample((image, mask, set_name, labels), random.Random(seed))
        text = sample["reasoning"]
        assert not any(c.isdigit() for c in text), text
        parsed = parse_answer(sample["answer_text"], mask.shape)
        assert parsed.ok, parsed.errors
        assert parsed.answer.reasoning == text and list(map(list, parsed.answer.boxes)) == sample["boxes"]
        checks = check_statements(text, sample["facts"], set_name, labels)
        assert all(checks.values()), (checks, text)
        assert set(checks) == ({"location", "size", "shape"} | ({"impression"} if set_name else set()))
        assert unsupported_claims(sample["answer_text"]) == [], sample["answer_text"]
        assert sample["question"].endswith((".", "?"))
        texts.add(text)
    assert len(texts) >= 3


def test_checker_catches_wrong_statements():
    upper_left, lower_right = disc(40, 40, 20), disc(200, 200, 20)
    truth = describe_lesion(ultrasound(upper_left), upper_left)
    other = describe_lesion(ultrasound(lower_right), lower_right)
    text = build_reasoning(other, "busbra", LABELS["busbra"], 0)
    checks = check_statements(text, truth, "busbra", LABELS["busbra"])
    assert checks["location"] is False and checks["shape"] is True
    benign = dict(LABELS["busbra"], pathology="benign", birads=3)
    assert check_statements(text, other, "busbra", benign)["impression"] is False
    assert check_statements("", truth) == {"location": False, "size": False, "shape": False}


def test_reader_on_free_text():
    said = read_statements("A small, round lesion sits in the upper part of the image. It consists of two separate "
                           "parts. BI-RADS category three: the features favour a benign process.")
    assert said["location"] == ("upper", None) and said["size"] == "small" and said["shape"] == "round"
    assert said["impression"] == "benign" and said["birads"] == 3 and said["parts"] == 2
    assert read_statements("The small bowel is normal; a very large polyp lies in the centre of the frame.")[
        "size"] == "very large"
    assert read_statements("in the centre of the frame")["location"] == ("middle", "central")
    assert number_words(42) == "forty-two" and number_words(100) == "one hundred"
    assert all(VOCAB[k] for k in ("location", "size", "shape", "margin", "impression"))


def test_questions_never_name_a_label():
    rng = random.Random(0)
    for set_name, labels in (("busbra", {"birads": 5, "pathology": "malignant", "histology": "invasive ductal carcinoma"}),
                             ("ph2", {"diagnosis": 2}), ("kvasir", {})):
        asked = {sample_question(set_name, labels, rng) for _ in range(300)}
        assert len(asked) >= 6
        words = ("malignant", "benign", "melanoma", "nevus", "carcinoma", "biopsy", "bi-rads", "removed", "excised")
        assert not [q for q in asked if any(w in q.lower() for w in words)], asked
    assert sample_question("my set", {}, np.random.default_rng(0))
    for modality in ("US", "ultrasound", "endoscopy", "dermoscopy", "CT", "MR", "MRI", "weird"):
        questions = suggested_questions(modality)
        assert len(questions) >= 3 and all(isinstance(q, str) and q for q in questions)
    assert suggested_questions("US") == suggested_questions("ultrasound")
    assert suggested_questions("weird") != suggested_questions("CT")


def test_degenerate_masks():
    image = ultrasound(np.zeros((H, W), bool))
    with pytest.raises(ValueError):
        describe_lesion(image, np.zeros((H, W), bool))
    for mask in (np.ones((H, W), bool), disc(5, 5, 0), np.pad(np.ones((1, 30), bool), ((10, H - 11), (10, W - 40)))):
        facts = describe_lesion(image, mask)
        assert facts.parts == 1 and facts.boxes[0] == tuple(int(v) for v in (
            np.nonzero(mask.any(0))[0][0], np.nonzero(mask.any(1))[0][0],
            np.nonzero(mask.any(0))[0][-1] + 1, np.nonzero(mask.any(1))[0][-1] + 1))
        assert not any(c.isdigit() for c in build_reasoning(facts, "busbra", {}, 0))

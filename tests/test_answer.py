"""The answer schema: render → parse round trip and every strict rule."""
import pytest

from coreseg.answer import SEG_TOKEN, Answer, parse_answer, render_answer

SIZE = (100, 120)  # (H, W)
BOXES = [(10, 20, 30, 40), (50, 5, 119, 99)]


def good(boxes=BOXES, reasoning="A dark, irregular region sits in the upper left.", target="polyp"):
    return render_answer(reasoning, target, boxes)


def errors_of(text, size=SIZE):
    return " | ".join(parse_answer(text, size).errors)


def test_round_trip_several_boxes():
    result = parse_answer(good(), SIZE)
    assert result.ok, result.errors
    assert result.answer == Answer("A dark, irregular region sits in the upper left.", "polyp", tuple(BOXES))


def test_round_trip_one_box_and_whole_image():
    text = render_answer("The whole frame is abnormal.", "skin lesion", [(0, 0, 120, 100)])
    result = parse_answer(text, SIZE)
    assert result.ok, result.errors
    assert result.answer.target == "skin lesion" and result.answer.boxes == ((0, 0, 120, 100),)
    assert " is located at" in text and " are located at" in good()


@pytest.mark.parametrize("text", ["", "   \n", None])
def test_empty_text(text):
    result = parse_answer(text, SIZE)
    assert result.answer is None and not result.ok and "empty" in " ".join(result.errors)


def test_missing_think():
    text = good().split("</think>", 1)[1]
    result = parse_answer(text, SIZE)
    assert not result.ok and "<think>" in errors_of(text)
    assert result.answer.boxes == tuple(BOXES)  # lenient: still read


def test_missing_answer():
    text = "<think> something </think> The polyp is located at [[10, 20, 30, 40]]. The mask is <seg>."
    result = parse_answer(text, SIZE)
    assert result.answer is None and "<answer>" in errors_of(text)


def test_seg_missing():
    text = good().replace(SEG_TOKEN, "")
    assert not parse_answer(text, SIZE).ok and "found 0" in errors_of(text)


def test_seg_twice():
    text = good().replace(SEG_TOKEN, SEG_TOKEN + " " + SEG_TOKEN)
    assert not parse_answer(text, SIZE).ok and "found 2" in errors_of(text)


def test_seg_inside_think_is_an_error():
    text = good(reasoning="Look here <seg> first.")
    assert not parse_answer(text, SIZE).ok and "outside <answer>" in errors_of(text)


def test_text_after_answer():
    text = good() + " Also [[0, 0, 120, 100]]."
    result = parse_answer(text, SIZE)
    assert not result.ok and "after </answer>" in errors_of(text)
    assert result.answer.boxes == tuple(BOXES)  # lenient extraction keeps the boxes


def test_box_outside_image():
    text = good(boxes=[(10, 20, 30, 40), (100, 50, 121, 60)])
    result = parse_answer(text, SIZE)
    assert not result.ok and "outside" in errors_of(text)
    assert result.answer.boxes == ((10, 20, 30, 40),)
    neg = good(boxes=[(-1, 0, 10, 10)])
    assert "outside" in errors_of(neg)
    assert parse_answer(text).ok  # no size given → no in-image check


@pytest.mark.parametrize("box", [(30, 20, 30, 40), (40, 20, 30, 50), (10, 40, 30, 40)])
def test_degenerate_box(box):
    text = good(boxes=[box])
    result = parse_answer(text, SIZE)
    assert not result.ok and "x1 < x2" in errors_of(text) and result.answer.boxes == ()


@pytest.mark.parametrize("reasoning", ["The lesion spans 10, 20 to 30, 40.", "It is at [10, 20, 30, 40]."])
def test_coordinates_in_think(reasoning):
    text = good(reasoning=reasoning)
    assert not parse_answer(text, SIZE).ok and "coordinates" in errors_of(text)


def test_target_missing():
    text = good().replace("The polyp are located at", "Located at")
    assert not parse_answer(text, SIZE).ok and "target" in errors_of(text)


def test_box_list_missing():
    text = good().replace("[[10, 20, 30, 40], [50, 5, 119, 99]]", "somewhere")
    result = parse_answer(text, SIZE)
    assert not result.ok and "box list" in errors_of(text) and result.answer.boxes == ()


def test_two_answer_blocks():
    text = good() + good().split("</think>", 1)[1]
    assert not parse_answer(text, SIZE).ok and "more than one <answer>" in errors_of(text)


def test_float_coordinates_are_rounded():
    text = good().replace("[10, 20, 30, 40]", "[10.4, 19.6, 30.0, 40]")
    result = parse_answer(text, SIZE)
    assert result.ok and result.answer.boxes[0] == (10, 20, 30, 40)

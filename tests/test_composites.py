"""Composite scans (coreseg.composites, trainers.composites) on synthetic tiles: no data folder.

Each mask lands exactly under its tile, plans are deterministic, a question names the tiles its words
name, and a drawn training sample is an answer that parses, states the target's own boxes, and whose
claims all agree with the target mask."""
from __future__ import annotations

import random
from dataclasses import asdict

import numpy as np
import torch
from pathlib import Path
import pytest

from coreseg.answer import parse_answer, render_answer
from coreseg.composites import (CANVAS, PLACES, CompositePlan, CompositeScan, build_composite, cell_boxes,
                                plan_composites)
from coreseg.datasets import LabelledImage
from coreseg.findings import check_answer, claim_agreement
from coreseg.geometry import Frames
from coreseg.lesion_facts import thumbnail
from coreseg.mask_boxes import mask_boxes
from coreseg.questions import BY_PLACE, KINDS
from trainers.composites import MODALITY_WORDS, CompositeCase

LABELS = {"busbra": {"birads": 4}, "kvasir": {}, "ph2": {"diagnosis": 1}}
FRAME = 256


def tile(height: int, width: int, centre: tuple[float, float], radii: tuple[float, float], seed: int):
    """A speckled image and an elliptical lesion mask (centre and radii as fractions of height, width)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    mask = ((yy - centre[0] * height) / (radii[0] * height)) ** 2 + \
           ((xx - centre[1] * width) / (radii[1] * width)) ** 2 <= 1
    image = rng.integers(120, 220, (height, width, 3), dtype=np.uint8)
    image[mask] //= 3
    return image, mask


def item(set_name: str, image_id: str) -> LabelledImage:
    return LabelledImage(set_name=set_name, image_id=image_id, image_path=f"/nowhere/{image_id}.png",
                         mask_path=f"/nowhere/{image_id}-mask.png", labels=LABELS[set_name])


def composite(sets: list[str], layout: tuple[int, int], cells: list[int], radii: list[float],
              cls=CompositeScan) -> CompositeScan:
    """A CompositeScan built from arrays as `save_composite`/`load_composite` would keep it."""
    shapes = [(300, 400), (420, 360), (256, 256), (500, 380)]
    images, masks = zip(*[tile(*shapes[k], (0.5, 0.45), (r, r * 0.8), k) for k, r in enumerate(radii)])
    canvas, tile_masks = build_composite(list(images), list(masks), layout, cells)
    plan = CompositePlan([item(s, f"{s}-{k}") for k, s in enumerate(sets)], layout, cells)
    thumb, _ = thumbnail(canvas, tile_masks[0])
    thumb_masks = np.stack([thumbnail(canvas, m)[1] for m in tile_masks])
    return cls(plan.key, None, canvas.shape[:2], thumb, thumb_masks, [asdict(t) for t in plan.tiles])


def test_build_composite_puts_each_mask_exactly_under_its_tile():
    images, masks = zip(*[tile(300, 400, (0.4, 0.6), (0.2, 0.15), 0), tile(420, 360, (0.5, 0.5), (0.3, 0.3), 1),
                          tile(256, 256, (0.7, 0.3), (0.15, 0.2), 2)])
    layout, cells = (2, 2), [3, 0, 2]
    canvas, tile_masks = build_composite(list(images), list(masks), layout, cells)
    assert canvas.shape == (CANVAS, CANVAS, 3) and len(tile_masks) == 3
    boxes = cell_boxes(layout)
    lit = canvas.max(axis=2) > 0  # the tiles' pixels (speckle ≥ 40); the rest of the canvas is black
    for k, (image, mask, full) in enumerate(zip(images, masks, tile_masks)):
        x1, y1, x2, y2 = boxes[cells[k]]
        assert full.shape == (CANVAS, CANVAS) and full.any()
        inside = np.zeros_like(full)
        inside[y1:y2, x1:x2] = True
        assert not (full & ~inside).any(), f"mask {k} leaves its cell"
        # the mask lies on the tile's own pixels, and the tile's dark lesion is exactly where the mask is
        tile_pixels = lit & inside
        assert not (full & ~tile_pixels).any()
        ys, xs = np.nonzero(tile_pixels)
        scale = min((x2 - x1) / image.shape[1], (y2 - y1) / image.shape[0])
        assert xs.max() - xs.min() + 1 == pytest.approx(image.shape[1] * scale, abs=1)
        assert ys.max() - ys.min() + 1 == pytest.approx(image.shape[0] * scale, abs=1)
        dark = (canvas.max(axis=2) < 80) & tile_pixels
        disagree = (dark ^ full).sum() / full.sum()
        assert disagree < 0.05, f"tile {k}: mask and lesion disagree on {disagree:.1%} of the lesion"
        # the mask keeps its tile's proportions: its area is the tile's mask area times the scale squared
        assert full.sum() == pytest.approx(mask.sum() * scale ** 2, rel=0.05)
    assert not np.any(np.stack(tile_masks).sum(0) > 1), "two tiles' masks overlap"


def test_plans_are_deterministic_and_place_distinct_images():
    pools = {s: [item(s, f"{s}-{k}") for k in range(6)] for s in KINDS}
    first = plan_composites(pools, 12, seed=3)
    again = plan_composites(pools, 12, seed=3)
    other = plan_composites(pools, 12, seed=4)
    assert [p.key for p in first] == [p.key for p in again]
    assert [p.key for p in first] != [p.key for p in other]
    for plan in first:
        assert 2 <= len(plan.items) <= 4 and len(plan.items) == len(plan.cells) == len(set(plan.cells))
        assert len({(i.set_name, i.image_id) for i in plan.items}) == len(plan.items)
        assert {t.place for t in plan.tiles} <= set(PLACES[plan.layout])
    # the key names the content: another cell order is another composite
    plan = first[0]
    swapped = CompositePlan(plan.items, plan.layout, plan.cells[::-1])
    assert swapped.key != plan.key and CompositePlan(plan.items, plan.layout, list(plan.cells)).key == plan.key


def _questions(scan: CompositeScan, n: int = 200):
    rng = random.Random(0)
    return [scan.choose_question(rng) for _ in range(n)]


def test_named_tiles_match_the_question_words():
    # two breast masses of clearly different sizes and a polyp: kind, size, place, all and absent (ph2)
    scan = composite(["busbra", "busbra", "kvasir"], (2, 2), [0, 3, 1], [0.35, 0.15, 0.25])
    areas = scan.tile_masks.reshape(3, -1).sum(1)
    seen = set()
    for question, named, absent, way in _questions(scan):
        q = question.lower()
        if absent is not None:
            seen.add("absent")
            assert way == "absent"
            assert named == [] and absent not in [t["set_name"] for t in scan.tiles]
            assert KINDS[absent][0] in q
            assert not scan.target_mask(named).any()
            continue
        assert named and scan.target_mask(named).any()
        if "larger" in q or "smaller" in q:
            seen.add("size")
            assert way == "size"
            (i,) = named
            assert scan.tiles[i]["set_name"] == "busbra"
            other = 1 - i
            assert (areas[i] > areas[other]) == ("larger" in q)
        elif any(w in q for w in ("every", "all the")):
            seen.add("all")
            assert way == "all"
            assert named == [0, 1, 2]
        elif "part" in q or "panel" in q:
            seen.add("place")
            assert way == "place"
            (i,) = named
            assert f"the {scan.tiles[i]['place']} " in q
            assert not any(f"the {t['place']} " in q for j, t in enumerate(scan.tiles) if j != i)
        else:
            seen.add("kind")
            assert way == "kind"
            (i,) = named
            assert scan.tiles[i]["set_name"] == "kvasir" and KINDS["kvasir"][0] in q
        assert np.array_equal(scan.target_mask(named), scan.tile_masks[named].any(0))
    assert seen == {"absent", "size", "all", "place", "kind"}


def test_every_kind_shown_means_no_absent_question():
    scan = composite(["busbra", "kvasir", "ph2"], (2, 2), [0, 1, 2], [0.3, 0.2, 0.25])
    assert all(q.absent_kind is None and q.named for q in _questions(scan, 80))


@pytest.mark.parametrize("sets,layout,cells,radii", [
    (["busbra", "busbra", "kvasir"], (2, 2), [0, 3, 1], [0.35, 0.15, 0.25]),
    (["ph2", "kvasir"], (1, 2), [1, 0], [0.3, 0.25]),
    (["kvasir", "kvasir"], (2, 1), [0, 1], [0.2, 0.35]),
])
def test_composite_samples_parse_state_the_target_boxes_and_agree_with_it(sets, layout, cells, radii):
    case = composite(sets, layout, cells, radii, cls=CompositeCase)
    rng = random.Random(1)
    frames = Frames(case.size, box_frame=FRAME)
    thumb_shape = case.tile_masks.shape[1:]
    kinds = set()
    for _ in range(24):
        sample = case.sample(rng, FRAME)
        target = case.target_mask(sample.targets)
        result = parse_answer(sample.answer, (FRAME, FRAME))
        assert result.ok, (result.errors, sample.answer)
        answer = result.answer
        assert sample.target.shape == (1, 1, 256, 256)
        if not sample.targets:
            kinds.add("absent")
            assert answer.present is False and answer.boxes == () and sample.boxes == []
            assert not target.any() and float(sample.target.sum()) == 0
        else:
            kinds.add("present")
            assert answer.present is True and float(sample.target.sum()) > 0
            expected = frames.boxes(mask_boxes(target), thumb_shape, "box")
            assert [list(b) for b in sample.boxes] == [list(b) for b in expected]
            assert [list(b) for b in answer.boxes] == [list(b) for b in expected]
        # the answer, with its boxes on the thumbnail, says only what the target mask shows
        on_thumb = render_answer(answer.reasoning, answer.target, frames.boxes(answer.boxes, "box", thumb_shape))
        findings = check_answer(on_thumb, target)
        assert findings and claim_agreement(findings) == 1, [f for f in findings if not f.agrees]
        if answer.present:
            assert {f.claim for f in findings} >= {"present", "box 1", "parts"}
    assert "present" in kinds
    if len(set(sets)) < len(KINDS):
        assert "absent" in kinds


def test_composite_reasoning_lists_panels_in_reading_order_and_points_to_the_named_one():
    """Tiles drawn in cells 3, 0, 1 are listed upper-left, upper-right, lower-right; before the lesion is
    described the reasoning says which panel the question names (by kind, place or size alike), or that the
    asked kind is in none of them: after the panel list, or, for a place, first (copied from the question with
    no panel list in between)."""
    case = composite(["busbra", "kvasir", "ph2"], (2, 2), [3, 0, 1], [0.3, 0.25, 0.2], cls=CompositeCase)
    assert case.panels() == ("The image is a composite of three panels: a colonoscopy view (upper-left), "
                             "a dermoscopy image (upper-right), a breast ultrasound (lower-right).")
    two = composite(["ph2", "kvasir"], (1, 2), [1, 0], [0.3, 0.25], cls=CompositeCase)
    masses = composite(["busbra", "busbra", "kvasir"], (2, 2), [0, 3, 1], [0.35, 0.15, 0.25], cls=CompositeCase)
    rng = random.Random(0)
    seen = set()
    for scan in (case, two, masses):
        for _ in range(40):
            sample = scan.sample(rng, FRAME)
            reasoning = parse_answer(sample.answer, (FRAME, FRAME)).answer.reasoning
            by_place = sample.question in {q.format(place=t["place"]) for t in scan.tiles for q in BY_PLACE}
            if by_place:
                place = scan.tiles[sample.targets[0]]["place"]
                assert reasoning.startswith(f"The question points to the {place} panel. {scan.panels()} ")
                seen.add("place")
            else:
                assert reasoning.startswith(scan.panels())
            if len(sample.targets) == 1:
                named = scan.tiles[sample.targets[0]]
                assert f"points to the {named['place']} panel" in reasoning, (sample.question, reasoning)
                seen.add(named["place"])
                for word in ("larger", "smaller"):
                    if word in sample.question:
                        assert (f"asks for the {word} of the two breast masses, which a breast ultrasound shows; that is "
                                f"a breast ultrasound ({named['place']}), so it points to the {named['place']} panel.") in reasoning
                        seen.add(word)
            elif sample.targets:
                assert "every lesion, one in each panel" in reasoning
            else:
                (asked,) = [k for k in KINDS if KINDS[k][0] in sample.question.lower()]
                modality = MODALITY_WORDS[asked]
                assert reasoning.startswith(f"{scan.panels()} The question asks for a {KINDS[asked][0]}, which "
                                            f"{modality} shows; none of the panels is {modality}.")
                seen.add("absent")
    assert len(seen) >= 5 and {"absent", "place"} <= seen and ("larger" in seen or "smaller" in seen)


def test_the_tiles_a_reasoning_names_are_read_back_from_its_words():
    """`named_in` (GRPO's anchor follows the text) reads from a written reasoning the tiles its pointing sentence
    picks: the question's own for every written sample, another where the words name another panel, none for an
    absent kind, and None where no sentence picks."""
    scan = composite(["busbra", "kvasir", "busbra"], (2, 2), [0, 3, 1], [0.35, 0.15, 0.25], cls=CompositeCase)
    rng = random.Random(1)
    ways = set()
    for _ in range(60):
        sample = scan.sample(rng, FRAME)
        reasoning = parse_answer(sample.answer, (FRAME, FRAME)).answer.reasoning
        assert scan.named_in(reasoning) == sorted(sample.targets), reasoning
        ways.add(len(sample.targets))
    assert ways >= {0, 1, 3}
    other = scan.tiles[1]["place"]
    assert scan.named_in(f"{scan.panels()} The question points to the {other} panel, a colonoscopy view.") == [1]
    assert scan.named_in("A dark oval region in the upper part.") is None


def test_single_scans_ask_present_and_absent_findings_in_the_same_words():
    """Only the kind named tells a present question from an absent one (training's contrast): a question
    with a clinical qualifier is asked about the scan's own finding and about another set's."""
    from coreseg.datasets import LabelledImage
    from coreseg.lesion_facts import describe_lesion, thumbnail
    from coreseg.questions import BY_PLACE, KINDS
    from trainers.samples import Case

    image = np.full((96, 128, 3), 90, np.uint8)
    mask = np.zeros((96, 128), bool)
    mask[30:60, 40:90] = True
    image[mask] = 30
    thumb, thumb_mask = thumbnail(image, mask)
    case = Case(LabelledImage("busbra", "bus_0001-l", Path("bus_0001-l.png"), Path("m.png"), {}), None,
                torch.ones(1, 1, 256, 256), (96, 128), describe_lesion(thumb, thumb_mask, "ultrasound"),
                thumb_mask.shape)
    rng = random.Random(0)
    asked = {"present": set(), "absent": set()}
    for _ in range(400):
        sample = case.sample(rng, FRAME)
        answer = parse_answer(sample.answer, (FRAME, FRAME)).answer
        kind = "present" if sample.boxes else "absent"
        assert answer.present is (kind == "present")
        words = sample.question
        for singular, _ in KINDS.values():
            words = words.replace(singular, "{kind}")
        asked[kind].add(words)
    shared = asked["present"] & asked["absent"]
    assert "Segment the {kind} that most warrants a biopsy." in shared, shared
    assert len(shared) >= 6


def test_paired_draws_give_a_composite_two_questions_naming_different_tiles():
    """SFT's counterfactual pairs: with `paired`, each composite is drawn twice in its batch, the two questions
    naming different tiles (so different answers and target masks on one image); a single scan stays one draw,
    and without `paired` nothing is doubled."""
    from coreseg.lesion_facts import describe_lesion
    from trainers.samples import Case
    from trainers.sft import draw_samples

    scan = composite(["busbra", "kvasir", "ph2"], (2, 2), [3, 0, 1], [0.3, 0.25, 0.2], cls=CompositeCase)
    image, mask = tile(96, 128, (0.5, 0.45), (0.3, 0.24), 0)
    thumb, thumb_mask = thumbnail(image, mask)
    single = Case(item("busbra", "busbra-9"), None, torch.ones(1, 1, 256, 256), (96, 128),
                  describe_lesion(thumb, thumb_mask, "ultrasound"), thumb_mask.shape)
    rng = random.Random(0)
    for _ in range(20):
        drawn = draw_samples([scan, single], rng, FRAME, paired=True)
        assert [case for case, _ in drawn] == [scan, scan, single]
        first, second = drawn[0][1], drawn[1][1]
        assert first.targets != second.targets and first.question != second.question
        assert not torch.equal(first.target, second.target)
        assert [case for case, _ in draw_samples([scan, single], rng, FRAME)] == [scan, single]


def test_text_swaps_put_one_answer_under_the_other_question_with_its_mask_and_no_text_loss():
    """SFT's text swaps: a pair's second answer forced under the first question, the target the second answer's
    (the mask must follow the reasoning where it and the question disagree), and its text weighted 0 (the reasoner is
    not taught to answer the question with the other tile)."""
    from types import SimpleNamespace

    from coreseg.modeling.tokenizer import END_OF_TURN, add_answer_tokens, build_tokenizer
    from trainers.sft import draw_samples, token_weights

    scan = composite(["busbra", "kvasir", "ph2"], (2, 2), [3, 0, 1], [0.3, 0.25, 0.2], cls=CompositeCase)
    tokenizer = build_tokenizer(["The question points to the upper-right panel, a colonoscopy view."])
    add_answer_tokens(tokenizer)
    model = SimpleNamespace(reasoner=SimpleNamespace(tokenizer=tokenizer))
    rng, swapped = random.Random(2), 0
    for _ in range(30):
        drawn = draw_samples([scan], rng, FRAME, paired=True, swaps=True)
        samples = [sample for _, sample in drawn]
        assert [s.text_weight for s in samples[:2]] == [1.0, 1.0]
        if len(samples) == 3:
            first, second, swap = samples
            swapped += 1
            assert swap.question == first.question and swap.answer == second.answer
            assert torch.equal(swap.target, second.target) and not torch.equal(swap.target, first.target)
            weights = token_weights(model, drawn, 10.0)
            assert float(weights[2].abs().sum()) == 0 and float(weights[0].min()) == 1.0
            assert token_weights(model, drawn, 1.0) is not None  # the swap's zeros are weights too
        else:
            assert not (samples[0].pointing and samples[1].pointing)
    assert swapped >= 10


def test_pointing_weights_fall_on_the_pointing_sentence_tokens_only():
    """The text-loss weights SFT gives a composite answer: `weight` on exactly the tokens that spell the sentence
    picking the panel (decoded back, they are that sentence), 1 on every other token of the target the model is
    trained on; an answer without a pointing sentence and weight 1 change nothing."""
    from types import SimpleNamespace

    from coreseg.modeling.tokenizer import END_OF_TURN, add_answer_tokens, build_tokenizer
    from trainers.sft import token_weights

    tokenizer = build_tokenizer(["The question points to the upper-right panel, a colonoscopy view."])
    add_answer_tokens(tokenizer)
    model = SimpleNamespace(reasoner=SimpleNamespace(tokenizer=tokenizer),
                            encode_target=lambda answer: tokenizer.encode(answer + END_OF_TURN, add_special_tokens=False))
    scan = composite(["busbra", "kvasir", "ph2"], (2, 2), [3, 0, 1], [0.3, 0.25, 0.2], cls=CompositeCase)
    rng = random.Random(1)
    drawn = [(scan, scan.sample(rng, FRAME)) for _ in range(6)]
    weights = token_weights(model, drawn, 10.0)
    for (_, sample), row in zip(drawn, weights):
        ids = model.encode_target(sample.answer)
        assert len(row) == len(ids)
        heavy = [i for i, w in zip(ids, row) if w == 10.0]
        assert set(row.tolist()) == {1.0, 10.0}
        assert tokenizer.decode(heavy).strip() == sample.pointing
    from trainers.samples import Sample

    plain = Sample("Outline the lesion.", render_answer("A lesion.", "lesion", [(1, 2, 30, 40)]), torch.zeros(1, 1, 256, 256))
    assert set(token_weights(model, [(scan, plain)], 10.0)[0].tolist()) == {1.0}
    assert token_weights(model, drawn, 1.0) is None


def test_the_eval_text_swap_tells_a_mask_that_follows_the_reasoning_from_one_that_follows_the_question():
    """`coreseg.eval`'s text swap on composites: another tile's answer forced under a place question. A decoder
    that draws where the reasoning points scores "follows the text" on every pair, one that draws where the
    question points scores "stays with the question" on every pair: the measure tells the two apart."""
    from types import SimpleNamespace

    from coreseg.eval import _named_region, text_swap_on_composite

    scan = composite(["busbra", "kvasir", "ph2"], (2, 2), [3, 0, 1], [0.3, 0.25, 0.2])
    places = [t["place"] for t in scan.tiles]
    answers = {i: (f"Segment the lesion in the {place} part of the image.",
                   SimpleNamespace(text=f"<think>The question points to the {place} panel.</think>"
                                        f"<answer>The lesion <seg></answer>", token_ids=[i]))
               for i, place in enumerate(places)}

    class Decoder:
        def __init__(self, follows_text: bool):
            self.follows_text = follows_text

        def score_completions(self, canvas, question, completions):
            asked = next(i for i, place in enumerate(places) if f"the {place} part" in question)
            drawn = completions[0][0] if self.follows_text else asked
            return [SimpleNamespace(mask=_named_region(scan, [drawn]))]

    canvas = np.zeros((*scan.size, 3), np.uint8)
    follower = text_swap_on_composite(Decoder(True), canvas, scan, scan.key, answers)
    stayer = text_swap_on_composite(Decoder(False), canvas, scan, scan.key, answers)
    assert len(follower) == len(stayer) == 3  # every pair of the three tiles
    assert all(r["follows_text"] and not r["stays_with_question"] for r in follower)
    assert all(r["stays_with_question"] and not r["follows_text"] for r in stayer)


def test_development_composites_hold_only_held_out_images_and_training_composites_none(tmp_path):
    """The `dev` composites that choose checkpoints are drawn from the development images alone, and the trainers
    drop every cached training composite that holds one: no trainer sees a tile of a development composite."""
    from fake_data import make_busbra

    from coreseg.composites import PLAN_SEED, composite_path, save_composite, split_pools
    from coreseg.datasets import development_items
    from trainers.composites import training_composites

    data = make_busbra(tmp_path / "data", n=60)          # 45 training images, every 20th held out: 2
    dev_pools, train_pools = split_pools(data, "dev"), split_pools(data, "train")
    held = {(i.set_name, i.image_id) for i in development_items(data, ["busbra"])}
    assert len(held) == 2 and {(i.set_name, i.image_id) for i in dev_pools["busbra"]} == held
    for plan in plan_composites(dev_pools, 4, seed=PLAN_SEED["dev"]):
        assert {(i.set_name, i.image_id) for i in plan.items} <= held
    cache = tmp_path / "cache"
    plans = plan_composites(train_pools, 40, seed=PLAN_SEED["train"])
    for plan in plans:
        canvas, masks = plan.render()
        save_composite(composite_path(cache, "train", plan.key), plan, canvas, masks, torch.zeros(1, 256, 64, 64))
    holding = {p.key for p in plans if {(i.set_name, i.image_id) for i in p.items} & held}
    kept = training_composites(cache, data, 40)
    assert holding and len(kept) == len({p.key for p in plans}) - len(holding)
    assert not {c.key for c in kept} & holding
    assert all((t["set_name"], t["image_id"]) not in held for c in kept for t in c.tiles)


def test_the_panel_lookup_copies_the_questions_place_or_the_lists_entry_for_the_asked_modality():
    """After "points to the", the lookup writes the place the question names, else the one place the reasoning's
    own panel list gives the modality it says is asked; of two such places (a size question) the one where the
    measure gives the larger (smaller) lesion, and without a measure, with equal areas, with no such place or no panel
    list (a single scan) the choice is the reasoner's. After "which M shows;" it writes "none of the panels is" where
    the list has no M and bans that denial where it has. Tokens from the shipped tokenizer."""
    from transformers import PreTrainedTokenizerFast

    from coreseg.config import DEFAULT_CHECKPOINT
    from coreseg.findings import lookup_places
    from coreseg.modeling.panel_lookup import PanelLookup
    from coreseg.modeling.sampling import guesses_until

    listed = ("<think> The image is a composite of three panels: a breast ultrasound (upper-left), a colonoscopy view "
              "(upper-right), a breast ultrasound (lower-left).")
    kind = f"{listed} The question asks for a polyp, which a colonoscopy view shows; it points to the"
    size = f"{listed} The question asks for the larger of the two breast masses, which a breast ultrasound shows; it points to the"
    assert lookup_places("Outline the polyp.", kind) == ["upper-right"]
    assert lookup_places("Outline the larger of the two breast masses.", size) == ["upper-left", "lower-left"]
    assert lookup_places("Segment the lesion in the lower-left part of the image.", f"{listed} The question points to the") \
        == ["lower-left"]
    assert lookup_places("Outline the finding in the left panel.", "<think> The question points to the") == ["left"]
    assert lookup_places("Outline the polyp.", "<think> It asks for a polyp, which a colonoscopy view shows; it "
                                                "points to the") == []                       # no panel list
    assert lookup_places("Outline the polyp.", f"{listed} it points to the") == []        # no asked modality
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(Path(DEFAULT_CHECKPOINT) / "tokenizer"))
    lookup = PanelLookup(tokenizer, "Outline the polyp.")
    ids = tokenizer.encode(kind)
    assert lookup.opens(ids) and not lookup.opens(ids[:-1])
    assert tokenizer.decode(lookup.tokens(ids)) == " upper-right"
    assert tokenizer.decode(ids + lookup.tokens(ids)).endswith("points to the upper-right")
    assert guesses_until(ids[:-3], ids[-3:] + tokenizer.encode(" lower-left panel"), [lookup.opens]) == ids[-3:]
    assert PanelLookup(tokenizer, "Outline the larger of the two breast masses.").tokens(tokenizer.encode(size)) == []
    areas = {"upper-left": 100.0, "lower-left": 300.0}
    measured = PanelLookup(tokenizer, "Outline the larger of the two breast masses.", areas.get)
    assert tokenizer.decode(measured.tokens(tokenizer.encode(size))) == " lower-left"   # the larger lesion's panel
    smaller = size.replace("the larger", "the smaller")
    assert tokenizer.decode(measured.tokens(tokenizer.encode(smaller))) == " upper-left"
    tie = PanelLookup(tokenizer, "Outline the larger of the two breast masses.", lambda place: 5.0)
    assert tie.tokens(tokenizer.encode(size)) == []                                      # equal: the reasoner's
    sampled = ids + lookup.tokens(ids) + tokenizer.encode(" panel, a colonoscopy view.")
    assert [tokenizer.decode([t]) for t, w in zip(sampled, lookup.written(sampled)) if w] == [" upper", "-", "right"]
    other = ids + tokenizer.encode(" lower-left panel.")   # not what the lookup writes: the policy's own
    assert not any(lookup.written(other))

    asks = tokenizer.encode(f"{listed} The question asks for a polyp, which a colonoscopy view shows;")
    denial = tokenizer.encode(" none of the panels is")
    assert lookup.opens(asks) and lookup.tokens(asks) == [] and lookup.banned(asks) == denial[:1]   # listed: no denial
    absent = tokenizer.encode(f"{listed} The question asks for a pigmented lesion, which a dermoscopy image shows;")
    assert lookup.tokens(absent) == denial and lookup.banned(absent) == []                        # not listed: denied
    unlisted = tokenizer.encode("<think> It asks for a polyp, which a colonoscopy view shows;")
    assert lookup.tokens(unlisted) == [] and lookup.banned(unlisted) == []                        # no list: free
    assert lookup.banned(ids) == [] and lookup.banned(asks[:-1]) == []
    sampled = absent + denial + tokenizer.encode(" a dermoscopy image.")
    assert [tokenizer.decode([t]) for t, w in zip(sampled, lookup.written(sampled)) if w] == [
        tokenizer.decode([t]) for t in denial]

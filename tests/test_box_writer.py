"""The box writer (coreseg/modeling/box_writer.py): answer boxes written by a pointer at each opening bracket."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from coreseg.answer import parse_answer, render_answer
from coreseg.config import ModelConfig, SegmenterConfig
from coreseg.mask_boxes import mask_boxes
from coreseg.metrics import box_iou, mask_box
from coreseg.modeling.box_writer import Brackets, coordinate_text
from coreseg.modeling.core_seg import CoreSeg
from coreseg.modeling.tokenizer import build_tokenizer
from coreseg.predictor import CoreSegPredictor
from test_probe import SIZE, TINY_REASONER, scene
from tiny_models import TINY_VIT


def test_written_coordinates_are_the_tokens_the_answer_spells():
    """The writer's tokens are what the tokenizer makes of the same answer written whole, and the one parser reads
    the box back; the openings are the brackets of the answer only."""
    tokenizer = build_tokenizer()
    boxes = [(12, 34, 156, 178), (0, 7, 256, 90)]
    text = "<think>A [bracket] in the reasoning.</think><answer>" + render_answer("", "lesions", boxes).split(
        "<answer>")[1]
    ids = tokenizer.encode(text, add_special_tokens=False)
    at = Brackets.of(tokenizer).openings(ids)
    assert len(at) == 2
    for k, box in zip(at, boxes):
        written = tokenizer.encode(coordinate_text(torch.tensor(box) / 256, 256), add_special_tokens=False)
        assert ids[k + 1:k + 1 + len(written)] == written
    assert parse_answer(tokenizer.decode(ids), (256, 256)).answer.boxes == tuple(boxes)
    # normalised boxes are rounded, ordered, kept inside the frame and at least one pixel wide
    assert coordinate_text(torch.tensor([0.5, 1.2, 0.5, -0.1]), 256) == "128, 0, 129, 256"


def _two_blob_model() -> tuple[CoreSeg, np.ndarray, list[int], list, torch.Tensor]:
    torch.manual_seed(0)
    config = ModelConfig(reasoner=TINY_REASONER, box_writer=True,
                         segmenter=SegmenterConfig(kind="sam", image_size=256, vit=TINY_VIT, pixel_scale="imagenet"))
    model = CoreSeg.build(config, pretrained_segmenter=False).eval()
    image, blobs = scene()
    frame = model.config.box_frame
    boxes = [tuple(int(round(v * frame / SIZE)) for v in mask_boxes(blob)[0]) for blob in blobs]
    completion = model.encode_target(render_answer("Two dark oval regions.", "lesions", boxes))
    from coreseg.geometry import mask_to_low_res

    return model, image, completion, boxes, mask_to_low_res(blobs[0] | blobs[1])


def test_the_writer_learns_the_box_of_each_bracket():
    """Trained alone on one teacher-forced answer with two boxes (the reasoner frozen), the writer puts each
    bracket's box on its own blob: the second bracket's state, which has read the first box, points elsewhere."""
    model, image, completion, boxes, target = _two_blob_model()
    embedding = model.segmenter.encode(image)
    optimizer = torch.optim.AdamW(model.box_writer.parameters(), lr=3e-3)
    with torch.no_grad():
        _, hidden, states = model.reasoner.forward_completions([image], embedding, ["Outline the lesions."],
                                                               [completion])
    for _ in range(150):
        model.box_writer_loss(hidden, [completion], states, [boxes], target).backward()
        optimizer.step()
        optimizer.zero_grad()
    at = model.brackets.openings(completion)
    written, _ = model.box_writer(torch.stack([hidden[0][k] for k in at]), states * 2)
    ious = [box_iou(tuple(box.tolist()), truth) for box, truth in zip(written.detach() * 256, boxes)]
    print(ious)
    assert min(ious) > 0.6


@pytest.mark.slow  # the shipped model or the real encoder: the full run (CI) has it
def test_the_predictor_writes_the_pointer_boxes(tmp_path):
    """Sampling through the predictor (the shipped model with its trained writer, saved and loaded as a checkpoint):
    each box of each candidate is the writer's box for the state at its bracket, recomputed by a teacher-forced pass
    over the candidate's own tokens, and the `<seg>` mask is the one drawn from those tokens."""
    from coreseg.checkpoint import load_checkpoint, save_checkpoint
    from coreseg.config import DEFAULT_CHECKPOINT
    from coreseg.geometry import Frames
    from coreseg.metrics import dice

    torch.set_num_threads(1)
    shipped, _ = load_checkpoint(DEFAULT_CHECKPOINT, device="cpu")
    save_checkpoint(shipped, tmp_path / "writer", "writer-test")
    predictor = CoreSegPredictor.from_checkpoint(tmp_path / "writer", "cpu")
    model = predictor.model
    assert model.box_writer is not None
    # the sampled tokens themselves: claim revision rewrites words before the brackets and keeps the written boxes
    model.config = dataclasses.replace(model.config, revise_claims=False)
    image = np.zeros((96, 80, 3), dtype=np.uint8)
    image[30:60, 20:50] = 180
    question = "Outline the lesion."
    candidates = predictor.predict(image, question, n_candidates=4, temperature=0.9, seed=1)
    embedding = predictor.embedding(image)
    tokenizer = model.reasoner.tokenizer
    checked = parsed = 0
    for candidate in candidates:
        ids = candidate.token_ids
        with torch.no_grad():
            _, hidden, states = model.reasoner.forward_completions([image], embedding, [question], [ids])
        writing = model.box_writing(states[0], embedding)
        at = model.brackets.openings(ids)
        written_boxes = []
        for k in at:
            written = writing.write(hidden[0][k], hidden[0][:k + 1], ids[:k + 1])
            assert ids[k + 1:k + 1 + len(written)] == written
            assert ids[k + 1 + len(written)] in writing.closers  # no digit appended to the last coordinate
            written_boxes.append([int(v) for v in tokenizer.decode(written).split(",")])
            checked += 1
        answer = parse_answer(candidate.text, image.shape[:2]).answer
        if answer is not None and answer.boxes:  # the text shows them in the scan's pixels
            assert list(answer.boxes) == Frames(image.shape[:2]).boxes(written_boxes, "box", "image")
            parsed += 1
        forced = predictor.score_completions(image, question, [ids])[0]
        assert candidate.mask.any() == forced.mask.any()
        assert not candidate.mask.any() or dice(candidate.mask, forced.mask) > 0.99
    assert checked >= 3 and parsed >= 1
    # the writer's box is refined as MedSAM is used: a loose box around the bright square as a box prompt comes
    # back as the box of the mask drawn in it, tighter on the square
    truth = torch.tensor([[20 / 80, 30 / 96, 50 / 80, 60 / 96]])
    loose = torch.tensor([10 / 80, 18 / 96, 62 / 80, 74 / 96])
    refined, logits = model.refined_box(embedding, loose)
    assert torch.equal(torch.tensor(mask_box((logits[0] > 0).numpy()), dtype=torch.float32) / logits.shape[-1], refined)
    from torchvision.ops import box_iou as iou

    assert float(iou(refined[None], truth)) > max(0.7, float(iou(loose[None], truth)) + 0.3)


def test_grpo_leaves_the_written_coordinates_out_of_the_policy_loss():
    """With a box writer, the tokens GRPO's policy loss counts are all but the coordinates between each opening
    bracket and the bracket that closes it, and the panel the lookup wrote; without either, all."""
    from trainers.grpo_loop import _chosen_tokens

    model, _, completion, boxes, _ = _two_blob_model()
    tokenizer = model.reasoner.tokenizer
    question = "Outline the lesion."
    lookup = model.panel_lookup(question)
    chosen = [tokenizer.decode([completion[k]]) for k in _chosen_tokens(model, completion, lookup)]
    left_out = [tokenizer.decode([t]) for k, t in enumerate(completion)
                if k not in _chosen_tokens(model, completion, model.panel_lookup(question))]
    assert "".join(left_out).replace(" ", "") == "".join(f"{x1},{y1},{x2},{y2}" for x1, y1, x2, y2 in boxes)
    assert "<seg>" in chosen and " [[" in chosen and "]]." in chosen and "<answer>" in chosen
    # on a composite the panel the lookup wrote after "points to the" is left out too (and only that)
    pointing = tokenizer.encode("<think> The image is a composite of two panels: a breast ultrasound (left), a "
                                "colonoscopy view (right). The question asks for a polyp, which a colonoscopy view "
                                "shows; it points to the right panel.")
    left_out = [tokenizer.decode([t]) for k, t in enumerate(pointing + completion)
                if k not in _chosen_tokens(model, pointing + completion, model.panel_lookup("Outline the polyp."))]
    assert "".join(left_out).replace(" ", "") == "right" + "".join(f"{x1},{y1},{x2},{y2}" for x1, y1, x2, y2 in boxes)
    model.box_writer = None
    assert _chosen_tokens(model, completion, model.panel_lookup(question)) == list(range(len(completion)))


def test_a_grown_writer_starts_from_the_seg_pointer_and_keeps_the_sampling_guesses():
    """`with_box_writer` on a model without one: every weight kept, the writer a copy of the `<seg>` box pointer, the
    drafter's guesses kept (a checkpoint saved from it samples as fast as its parent)."""
    from dataclasses import replace

    model, _, completion, _, _ = _two_blob_model()
    bare = CoreSeg.build(replace(model.config, box_writer=False), tokenizer=model.reasoner.tokenizer,
                         pretrained_segmenter=False)
    bare.reasoner.drafter.learn(completion)
    grown = bare.with_box_writer()
    assert grown.box_writer is not None and grown.reasoner.drafter is bare.reasoner.drafter
    for name, value in bare.trainable_state_dict().items():
        assert torch.equal(grown.state_dict()[name], value), name
    for name, value in bare.adapter.pointer.state_dict().items():
        assert torch.equal(grown.box_writer.state_dict()[name], value), name


def test_the_text_reader_moves_each_box_to_the_blob_its_words_name():
    """Two answers that differ in one word before the bracket ("left" / "right"): the bracket's state alone barely
    tells them apart (the writer writes nearly one box for both). A writer grown by a text reader first writes the
    boxes it wrote before (the reader starts at zero); trained on the two answers it puts each box on the blob its word
    names, while the same training without the reader still writes nearly one box for both."""
    model, image, _, boxes, _ = _two_blob_model()
    from coreseg.geometry import mask_to_low_res

    _, blobs = scene()
    texts = [model.encode_target(render_answer(f"One dark oval region on the {side}.", "lesion", [box]))
             for side, box in zip(("left", "right"), boxes)]
    embedding = model.segmenter.encode(image).expand(2, -1, -1, -1)
    with torch.no_grad():
        _, hidden, states = model.reasoner.forward_completions([image] * 2, embedding, ["Outline the lesion."] * 2,
                                                               texts)
    at = [model.brackets.openings(t)[0] for t in texts]
    targets = torch.cat([mask_to_low_res(blob) for blob in blobs])

    def written(m):
        out, _ = m.box_writer(torch.stack([h[k] for h, k in zip(hidden, at)]), states,
                              texts=[h[:k + 1] for h, k in zip(hidden, at)])
        return out.detach() * 256

    def trained(m):
        optimizer = torch.optim.AdamW(m.box_writer.parameters(), lr=3e-3)
        for _ in range(150):
            m.box_writer_loss(hidden, texts, states, [[box] for box in boxes], targets).backward()
            optimizer.step()
            optimizer.zero_grad()
        out = written(m)
        return [box_iou(tuple(box.tolist()), truth) for box, truth in zip(out, boxes)], float((out[0] - out[1]).abs().max())

    before = written(model)
    assert float((before[0] - before[1]).abs().max()) < 2  # pixels: one box for both answers
    reading = model.with_box_writer(reads_text=True)
    assert reading.box_writer.reader is not None and torch.allclose(written(reading), before)
    with pytest.raises(ValueError, match="texts"):
        reading.box_writer(hidden[0][at[0]][None], states[:1])
    (with_reader, _), (without, apart) = trained(reading), trained(model)
    print(with_reader, without, apart)
    assert min(with_reader) > 0.6 and apart < 20 and min(without) < 0.45


def test_a_box_goes_on_the_panel_the_reasoning_names():
    """Where the reasoning says which panel of a composite the question points to, the writer points only among that
    panel's cells and the written box (after SAM's refinement) stays on it; with the rule off, the same untrained
    writer writes one box whatever panel the text names."""
    model, image, _, _, _ = _two_blob_model()
    embedding = model.segmenter.encode(image)
    frame = model.config.box_frame
    halves = {"left": (0, 0, frame // 2, frame), "right": (frame // 2, 0, frame, frame),
              "upper-right": (frame // 2, 0, frame, frame // 2), "lower-left": (0, frame // 2, frame // 2, frame)}

    def box_for(panel, follows):
        text = render_answer(f"The question points to the {panel} panel. A dark oval region.", "lesion", [(1, 2, 3, 4)])
        ids = model.encode_target(text)
        with torch.no_grad():
            _, hidden, states = model.reasoner.forward_completions([image], embedding, ["Outline the lesion."], [ids])
        writing = model.box_writing(states[0], embedding)
        writing.follows_panel = follows
        k = model.brackets.openings(ids)[0]
        written = writing.write(hidden[0][k], hidden[0][:k + 1], ids[:k + 1])
        return [int(v) for v in model.reasoner.tokenizer.decode(written).split(",")]

    assert model.config.box_writer_follows_panel
    bounded = {panel: box_for(panel, True) for panel in halves}
    for panel, (x1, y1, x2, y2) in halves.items():
        box = bounded[panel]
        assert x1 <= box[0] < box[2] <= x2 and y1 <= box[1] < box[3] <= y2, (panel, box)
    free = [box_for(panel, False) for panel in halves]
    assert all(abs(a - b) <= 2 for box in free for a, b in zip(box, free[0])), free
    assert any(box != free[0] for box in bounded.values())


@pytest.mark.slow  # the shipped model or the real encoder: the full run (CI) has it
def test_where_the_reasoning_names_a_panel_the_written_box_also_prompts_the_mask():
    """`ModelConfig.box_prompt = "panel"` (the default): an answer whose reasoning names a composite's panel has its
    mask drawn with its first box beside the probe (the same mask as "always" gives it), and the box moves it onto
    that panel; the same answer without the pointing sentence keeps the probe's mask ("never"). Served
    (`mask_within_panel`), the named answer's mask is then cut to its panel and the other left as drawn."""
    from dataclasses import replace

    import cv2

    from coreseg.config import DEFAULT_CHECKPOINT
    from coreseg.findings import panel_region, share_on
    from coreseg.metrics import dice
    from pathlib import Path

    torch.set_num_threads(1)
    predictor = CoreSegPredictor.from_checkpoint(DEFAULT_CHECKPOINT, "cpu")
    assert predictor.model.config.box_prompt == "panel"
    examples = Path(DEFAULT_CHECKPOINT).parent / "examples"
    tiles = [cv2.resize(cv2.imread(str(examples / name))[:, :, ::-1], (128, 256))
             for name in ("bus_0165-r.png", "cju2htabevq9108015qjei0x7.jpg")]
    canvas = np.ascontiguousarray(np.concatenate(tiles, axis=1))  # 256 × 256: a breast mass left, a polyp right
    body = ("The image is a composite of two panels: a breast ultrasound (left), a colonoscopy view (right). "
            "A focal lesion occupies the middle portion of the view.")
    assert predictor.model.config.box_frame == 256  # the model's box frame is the canvas's pixels
    box = (20, 90, 100, 170)  # on the left panel, where the probe alone does not draw
    named, plain = (predictor.model.encode_target(render_answer(text, "lesion", [box]))
                    for text in (f"The question points to the left panel. {body}", body))
    served = predictor.model.config
    predictor.model.config = replace(served, mask_within_panel=False)   # the decoder's own masks, not cut
    masks = {rule: [c.mask for c in predictor.score_completions(canvas, "Outline the lesion.", [named, plain], rule)]
             for rule in (None, "never", "always")}
    left = panel_region("left", canvas.shape[:2])
    assert dice(masks[None][0], masks["always"][0]) == 1.0 and dice(masks[None][1], masks["never"][1]) == 1.0
    assert share_on(masks[None][0], left) >= 0.8 > share_on(masks["never"][0], left), \
        (share_on(masks[None][0], left), share_on(masks["never"][0], left))

    predictor.model.config = served   # `mask_within_panel` (the default): the named answer's mask is cut to its panel
    assert served.mask_within_panel
    cut = [c.mask for c in predictor.score_completions(canvas, "Outline the lesion.", [named, plain], "never")]
    assert (masks["never"][0] & ~left).any() and cut[0].any()
    assert np.array_equal(cut[0], masks["never"][0] & left) and np.array_equal(cut[1], masks["never"][1])


@pytest.mark.slow  # the shipped model
def test_with_the_panel_lookup_the_shipped_model_points_where_its_question_and_its_own_list_say():
    """`ModelConfig.panel_lookup` (the default): on a two-panel composite (a breast mass left, a polyp right) every
    sampled answer to a kind question points to the panel its own list gives that kind's modality, and to a place
    question the panel the question names; the masks follow onto that panel. (Without the lookup the shipped model
    points a breast mass question to the right panel.)"""
    import re

    import cv2

    from coreseg.composites import build_composite
    from coreseg.config import DEFAULT_CHECKPOINT
    from coreseg.findings import MODALITY_WORDS, panel_region, read_panel, share_on
    from pathlib import Path

    torch.set_num_threads(1)
    predictor = CoreSegPredictor.from_checkpoint(DEFAULT_CHECKPOINT, "cpu")
    assert predictor.model.config.panel_lookup  # the default
    examples = Path(DEFAULT_CHECKPOINT).parent / "examples"
    tiles = [cv2.imread(str(examples / name))[:, :, ::-1] for name in ("bus_0165-r.png", "cju2htabevq9108015qjei0x7.jpg")]
    canvas, _ = build_composite(tiles, [np.zeros(t.shape[:2], bool) for t in tiles], (1, 2), [0, 1])  # as trained
    asked = {"Outline the breast mass.": MODALITY_WORDS["busbra"], "Outline the polyp.": MODALITY_WORDS["kvasir"],
             "Segment the lesion in the left part of the image.": None}
    on_panel = []
    for question, modality in asked.items():
        for candidate in predictor.predict(canvas, question, n_candidates=3, temperature=0.7, seed=2):
            place = read_panel(candidate.text)
            assert place is not None, candidate.text[:300]
            if modality is None:
                assert place == "left", candidate.text[:300]
            else:
                listed = [p for m, p in re.findall(r"(a [a-z ]+?) \((left|right)\)", candidate.text)
                          if m == modality]
                assert len(listed) == 1 and place == listed[0], candidate.text[:300]
            on_panel.append(share_on(candidate.mask, panel_region(place, canvas.shape[:2])) >= 0.8)
    assert np.mean(on_panel) >= 0.8, on_panel


@pytest.mark.slow  # the shipped model
def test_a_size_question_points_to_the_panel_where_the_segmenter_draws_that_lesion():
    """A composite of one breast scan beside a half-size copy of it (the lesion a quarter of the area): prompted with
    each panel's box alone, the segmenter draws the larger lesion on the left; every sampled answer to "the smaller
    of the two" whose own list reads two breast ultrasounds points to the right panel, "the larger" to the left."""
    import re

    import cv2

    from coreseg.composites import build_composite
    from coreseg.config import DEFAULT_CHECKPOINT
    from coreseg.findings import MODALITY_WORDS, read_panel
    from pathlib import Path

    torch.set_num_threads(1)
    predictor = CoreSegPredictor.from_checkpoint(DEFAULT_CHECKPOINT, "cpu")
    scan = cv2.imread(str(Path(DEFAULT_CHECKPOINT).parent / "examples" / "bus_0165-r.png"))[:, :, ::-1]
    half = np.zeros_like(scan)
    h, w = scan.shape[:2]
    half[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = cv2.resize(scan, (w // 2, h // 2))
    canvas, _ = build_composite([scan, half], [np.zeros((h, w), bool)] * 2, (1, 2), [0, 1])
    embedding = predictor.embedding(canvas)
    left, right = (predictor.model.panel_lesion_area(embedding, p, canvas.shape[:2]) for p in ("left", "right"))
    assert left > 2 * right > 0, (left, right)
    read_two = 0
    for question, expected in (("Outline the smaller of the two breast masses.", "right"),
                               ("Outline the larger of the two breast masses.", "left")):
        for candidate in predictor.predict(canvas, question, n_candidates=3, temperature=0.7, seed=3):
            listed = re.findall(r"(a [a-z ]+?) \((left|right)\)", candidate.text)
            if [m for m, _ in listed] == [MODALITY_WORDS["busbra"]] * 2 and "asks for the" in candidate.text:
                read_two += 1
                assert read_panel(candidate.text) == expected, candidate.text[:400]
    assert read_two >= 3, read_two

"""The CORE-Seg model core on real classes: the compact profile with the real LiteMedSAM weights,
the full profile with a tiny Qwen2.5-VL and a tiny SAM saved to a folder and loaded like real ones."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coreseg.answer import parse_answer, render_answer
from coreseg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from coreseg.config import ModelConfig, ReasonerConfig
from coreseg.geometry import mask_to_low_res, scale_boxes
from coreseg.metrics import dice
from coreseg.modeling.core_seg import CoreSeg
from coreseg.predictor import CoreSegPredictor
from tiny_models import full_config as make_full_config

SMALL_REASONER = ReasonerConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_new_tokens=40)


def lesion_image(height=200, width=260, centre=(90, 130), axes=(30, 45)):
    """An ultrasound-like picture: speckled bright tissue with a dark ellipse (the 'lesion')."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2 <= 1
    grey = np.where(inside, 40, 170) + rng.normal(0, 12, (height, width))
    image = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2), inside


@pytest.fixture(scope="module")
def compact():
    torch.manual_seed(0)
    model = CoreSeg.build(ModelConfig(reasoner=SMALL_REASONER)).eval()
    return CoreSegPredictor(model, "test-compact", trained=False)


@pytest.fixture(scope="module")
def tiny_full_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    return make_full_config(folder, max_new_tokens=24)


def test_compact_predict_returns_n_candidates_of_image_size(compact):
    image, _ = lesion_image()
    candidates = compact.predict(image, "Outline the breast mass.", n_candidates=4, seed=3)
    assert len(candidates) == 4
    for c in candidates:
        assert c.mask.shape == image.shape[:2] and c.mask.dtype == bool
        assert len(c.token_ids) == len(c.token_logprobs) > 0
        assert all(lp <= 0 for lp in c.token_logprobs)
        assert c.trained is False and c.model_version == "test-compact"
    # one image encoding serves all candidates
    assert len(compact.cache) == 1
    # sampling is seeded: the same seed gives the same tokens, another seed other tokens
    again = compact.predict(image, "Outline the breast mass.", n_candidates=4, seed=3)
    assert [c.token_ids for c in again] == [c.token_ids for c in candidates]
    other = compact.predict(image, "Outline the breast mass.", n_candidates=4, seed=4)
    assert [c.token_ids for c in other] != [c.token_ids for c in candidates]


def test_refine_clicks_grow_and_shrink_the_mask(compact):
    """Real LiteMedSAM: a box around the dark ellipse gives the lesion; a positive click on tissue
    outside adds there, a negative click inside removes there."""
    image, truth = lesion_image()
    base = compact.predict(image, "Outline the lesion.", n_candidates=1, seed=0)[0]
    boxed = compact.refine(image, base, clicks=[], box=(80, 55, 180, 125))
    assert dice(boxed.mask, truth) > 0.8
    grown = compact.refine(image, boxed, clicks=[(230, 180, 1)])
    assert grown.mask[180, 230] and not boxed.mask[180, 230]
    assert grown.mask.sum() > boxed.mask.sum()
    shrunk = compact.refine(image, boxed, clicks=[(130, 90, 0)])
    assert not shrunk.mask[90, 130] and boxed.mask[90, 130]
    assert shrunk.mask.sum() < boxed.mask.sum()


def test_a_click_paints_its_disc_even_at_the_border():
    """`enforce_clicks`: a click the mask disagrees with adds (or cuts) exactly the disc of radius 2 % of the
    longer side around it, clipped at the image's edge; a click the mask already agrees with changes nothing."""
    from coreseg.predictor import enforce_clicks

    mask = np.zeros((120, 300), bool)
    mask[40:80, 100:200] = True
    yy, xx = np.mgrid[:120, :300]
    for x, y, label in [(0, 0, 1), (299, 119, 1), (150, 60, 0), (5, 60, 1), (150, 1, 1)]:
        out = enforce_clicks(mask, [(x, y, label)])
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= 6 ** 2
        assert np.array_equal(out, (mask | disc) if label else (mask & ~disc)), (x, y, label)
    assert np.array_equal(enforce_clicks(mask, [(150, 60, 1), (10, 10, 0)]), mask)


def test_answer_boxes_are_converted_at_the_model_boundary(compact):
    size = (200, 260)
    text = render_answer("A dark oval region.", "breast mass", [(80, 55, 180, 125)])
    model_text = compact.to_model_frame(text, size)
    model_box = parse_answer(model_text, (256, 256)).answer.boxes[0]
    assert model_box == tuple(scale_boxes([(80, 55, 180, 125)], size, (256, 256))[0])
    assert parse_answer(compact.to_image_frame(model_text, size), size).answer.boxes[0] == pytest.approx(
        (80, 55, 180, 125), abs=1)


def test_compact_checkpoint_round_trip_and_version_check(compact, tmp_path, monkeypatch):
    from coreseg.modeling.drafting import NgramDrafter

    drafter = NgramDrafter()
    drafter.learn([5, 6, 7, 8, 9])
    monkeypatch.setattr(compact.model.reasoner, "drafter", drafter)
    path = save_checkpoint(compact.model, tmp_path / "ckpt", "v-test", trained=True)
    loaded, info = load_checkpoint(path, device="cpu")
    assert info.model_version == "v-test" and info.trained
    assert loaded.reasoner.drafter.draft([], 8) == [5, 6, 7, 8, 9], "the sampling guesses travel with the weights"
    for key, value in compact.model.trainable_state_dict().items():
        assert torch.equal(loaded.trainable_state_dict()[key].float(), value.float().half().float()), key
    meta = json.loads((path / "coreseg.json").read_text())
    meta["format_version"] = 99
    (path / "coreseg.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a CORE-Seg checkpoint"):
        load_checkpoint(tmp_path)


def _sft_step_changes_only_trainable(model: CoreSeg, image: np.ndarray, truth: np.ndarray, frame: int):
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen_before and trainable_before
    text = render_answer("Normal tissue; a dark oval region.", "lesion",
                         scale_boxes([(80, 55, 180, 125)], image.shape[:2], (frame, frame)))
    completion = model.reasoner.tokenizer.encode(text, add_special_tokens=False)
    embedding = model.segmenter.encode(image)
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    losses = model([image], embedding, ["Outline the lesion."], [completion], mask_to_low_res(truth))
    losses["loss"].backward()
    optimizer.step()
    model.eval()
    assert torch.isfinite(losses["lm"]) and torch.isfinite(losses["mask"])
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), f"frozen {n} changed"
    changed = [n for n, p in model.named_parameters() if n in trainable_before and not torch.equal(p, trainable_before[n])]
    groups = {"adapter": "adapter.", "decoder": "segmenter.mask_decoder.", "reasoner": "reasoner."}
    for group, prefix in groups.items():
        assert any(n.startswith(prefix) for n in changed), f"no {group} weight changed"


def test_compact_sft_step_updates_trainable_and_keeps_frozen_bitwise():
    torch.manual_seed(0)
    model = CoreSeg.build(ModelConfig(reasoner=SMALL_REASONER))
    image, truth = lesion_image()
    _sft_step_changes_only_trainable(model, image, truth, 256)
    assert not any(p.requires_grad for p in model.segmenter.image_encoder.parameters())


@pytest.mark.slow  # the shipped model or the real encoder: the full run (CI) has it
def test_an_image_encoded_in_training_mode_gets_its_inference_embedding():
    """LiteMedSAM's encoder has batch norms: in a model switched to training it must still encode an image as
    at inference (trainers that encode on the fly would otherwise train on other embeddings)."""
    torch.manual_seed(0)
    model = CoreSeg.build(ModelConfig(reasoner=SMALL_REASONER))
    image, _ = lesion_image()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.segmenter.image_encoder.modules())
    built = model.segmenter.encode(image)  # a module is built in training mode
    inference = model.eval().segmenter.encode(image)
    training = model.train().segmenter.encode(image)
    assert model.segmenter.mask_decoder.training and not model.segmenter.image_encoder.training
    assert torch.equal(training, inference) and torch.equal(built, inference)


def test_full_profile_tiny_weights_load_predict_train_and_checkpoint(tiny_full_config, tmp_path):
    model = CoreSeg.build(tiny_full_config).eval()
    lora = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("reasoner.")]
    assert lora and all("lora_" in n or "trainable_tokens_delta" in n for n in lora), \
        "only LoRA weights and the answer tokens' rows of the reasoner train"
    predictor = CoreSegPredictor(model, "tiny-full")
    image, truth = lesion_image(120, 160, (60, 80), (20, 30))
    candidates = predictor.predict(image, "Outline the lesion.", n_candidates=2, seed=1)
    assert len(candidates) == 2 and all(c.mask.shape == (120, 160) for c in candidates)
    assert all(len(c.token_ids) == len(c.token_logprobs) for c in candidates)
    _sft_step_changes_only_trainable(model, image, truth, 1000)
    path = save_checkpoint(model, tmp_path / "full", "tiny-full-1")
    loaded, info = load_checkpoint(path, device="cpu")
    assert info.config.reasoner.kind == "qwen2_5_vl"
    for key, value in model.trainable_state_dict().items():
        assert torch.allclose(loaded.trainable_state_dict()[key].float(), value.float(), atol=1e-3), key


def test_shipped_compact_model_loads_and_answers_in_format():
    """The app's embedded default: the trained checkpoint in assets/ loads through the real path and
    answers each bundled example's question (the app offers them) validly, naming its finding, with a mask."""
    from coreseg.config import ASSETS_DIR, DEFAULT_CHECKPOINT
    from coreseg.scan_io import read_scan

    predictor = CoreSegPredictor.from_checkpoint(DEFAULT_CHECKPOINT, "cpu")
    card = (ASSETS_DIR / "coreseg-compact" / "MODEL_CARD.md").read_text()
    assert predictor.trained and f"(`{predictor.model_version}`)" in card.splitlines()[0], "the card names the model"
    targets = {"US": "breast mass", "endoscopy": "polyp"}
    for example in json.loads((ASSETS_DIR / "examples" / "examples.json").read_text()):  # the app's examples
        scan = read_scan(ASSETS_DIR / "examples" / example["file"])
        candidate = predictor.predict(scan.display, example["question"], 1, temperature=0.0)[0]
        assert candidate.parsed.ok, (example["file"], candidate.parsed.errors)
        assert candidate.parsed.answer.target == targets[example["modality"]], (example["file"], candidate.text)
        # a mask, not the whole frame (the Kvasir example's polyp covers 46 % of its image)
        assert 0 < candidate.mask.sum() < 0.7 * candidate.mask.size, example["file"]


def test_a_run_overrides_config_fields_by_name_and_type():
    """`coreseg.config.overridden` (`coreseg.eval --set`): each value is read as its field's type; an unknown field
    or a setting without "=" is refused, and the config given is left as it was."""
    from coreseg.config import ModelConfig, overridden

    config = ModelConfig()
    changed = overridden(config, ["box_prompt=never", "box_writer_reach=none", "box_writer_follows_panel=false",
                                  "box_frame=512"])
    assert (changed.box_prompt, changed.box_writer_reach, changed.box_writer_follows_panel, changed.box_frame) == \
        ("never", None, False, 512)
    assert overridden(changed, ["box_writer_reach=2"]).box_writer_reach == 2  # from None: an integer
    assert (config.box_prompt, config.box_writer_reach, config.box_writer_follows_panel) == ("panel", 1, True)
    for bad in (["no_such_field=1"], ["box_prompt"]):
        with pytest.raises(ValueError, match="FIELD=VALUE"):
            overridden(config, bad)

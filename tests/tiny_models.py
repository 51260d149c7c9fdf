"""Tiny stand-ins of the real model classes, built offline and saved to a folder, so the tests
exercise the same loading code as real weights (a Qwen2.5-VL, a SAM ViT, a tokenizer)."""
from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]  # Qwen2.5-VL's own; the answer tags are NOT among them: the project adds those
CORPUS = ["The lesion is located at [[1, 2, 3, 4]]. The mask is <seg>. Outline the mass.",
          "<think> A dark oval region. </think><answer> The lesion is located at [[10, 20, 30, 40]]. </answer>"]


def tiny_qwen2_tokenizer():
    """A byte-level BPE trained here and wrapped in transformers' real `Qwen2Tokenizer` (Qwen2's
    normaliser and regex + ByteLevel pre-tokenizer), with Qwen2.5-VL's special tokens only."""
    import json

    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", additional_special_tokens=QWEN_SPECIAL[1:])
    return tokenizer


def save_tiny_qwen2_5_vl(folder: Path) -> Path:
    """A ≈1 M-parameter Qwen2.5-VL with its processor, saved like a hub snapshot."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    folder = Path(folder)
    tokenizer = tiny_qwen2_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                     "pad_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                       "fullatt_block_indexes": [1]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
                                    tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                                    chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "window_size": 4,
            "decoder_mlp_dim": 64}


def save_tiny_sam(path: Path) -> Path:
    """A random segment_anything SAM at 256 px with a 2-block ViT, saved as a .pth state dict."""
    from coreseg.config import SegmenterConfig
    from coreseg.modeling.segmenter import Segmenter

    torch.manual_seed(0)
    seg = Segmenter(SegmenterConfig(kind="sam", image_size=256, vit=TINY_VIT, pixel_scale="imagenet"),
                    pretrained=False)
    state = {f"{name}.{k}": v for name in ("image_encoder", "prompt_encoder", "mask_decoder")
             for k, v in getattr(seg, name).state_dict().items()}
    torch.save(state, path)
    return Path(path)


def full_config(folder: Path, max_new_tokens: int):
    """A full-profile `ModelConfig` (tiny Qwen2.5-VL + tiny SAM, saved under `folder`): the real loading path."""
    from coreseg.config import ModelConfig, ReasonerConfig, SegmenterConfig

    qwen = save_tiny_qwen2_5_vl(folder / "qwen")
    sam = save_tiny_sam(folder / "sam.pth")
    return ModelConfig(profile="full",
                       reasoner=ReasonerConfig(kind="qwen2_5_vl", pretrained=str(qwen), max_new_tokens=max_new_tokens),
                       segmenter=SegmenterConfig(kind="sam", image_size=256, checkpoint=str(sam), vit=TINY_VIT,
                                                 pixel_scale="imagenet"),
                       box_frame=1000)

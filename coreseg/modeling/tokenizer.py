"""Tokenizers. The compact reasoner's: a byte-level BPE built in memory (no hub), digits one by one
so that box coordinates are spelt digit by digit, the answer tags as single special tokens. Any other
base tokenizer (Qwen2.5-VL's) gets the answer tags added by `add_answer_tokens`: a byte-level
pre-tokenizer would otherwise split "is <seg>." into `Ġ<`, `seg`, `>.` and no `<seg>` state exists."""
from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from coreseg.answer import ANSWER_CLOSE, ANSWER_OPEN, SEG_TOKEN, THINK_CLOSE, THINK_OPEN

PAD, IM_START, IM_END, IMAGE_PAD = "<|pad|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"
ANSWER_TOKENS = [THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, SEG_TOKEN]
SPECIAL_TOKENS = [PAD, IM_START, IM_END, IMAGE_PAD, *ANSWER_TOKENS]
END_OF_TURN = IM_END  # ends every assistant turn (compact and Qwen chat formats): SFT targets end with it

BASE_CORPUS = [
    "Outline the suspicious breast mass. Segment the polyp. Where is the pigmented skin lesion?",
    "The breast mass is located at [[12, 34, 156, 178]]. The mask is <seg>.",
    "In a healthy breast, ultrasound shows layered fat and glandular tissue with smooth echogenic lines.",
    "Here a hypoechoic region with an irregular, indistinct margin interrupts the normal pattern.",
    "Normal colon mucosa is smooth, pink and glistening with a fine vascular pattern.",
    "A raised lesion protrudes from the mucosa; its surface is lobulated and redder than its surroundings.",
    "Healthy skin shows an even tone; the lesion is darker, asymmetric, with several colours.",
    "The lesion lies in the upper left, centre, lower right of the field; small, moderate, large, oval, round.",
    "Conclusion: BI-RADS category four, malignant, benign; common nevus, atypical nevus, melanoma.",
    "0 1 2 3 4 5 6 7 8 9",
]


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a BPE on `corpus` (plus a small base corpus) and wrap it for transformers."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(BASE_CORPUS) + list(corpus or []), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=IM_END,
                                      additional_special_tokens=SPECIAL_TOKENS[3:])
    return wrapped


def add_answer_tokens(tokenizer) -> list[int]:
    """Make each answer tag (`<think>`, `</think>`, `<answer>`, `</answer>`, `<seg>`) one added token of
    `tokenizer` (in place; a no-op for tags it already has as single tokens). Returns the ids of all five,
    in `ANSWER_TOKENS` order. Raises if a tag still does not encode to a single id."""
    missing = [t for t in ANSWER_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, single_word=False, lstrip=False,
                                         rstrip=False) for t in missing], special_tokens=True)
    ids = []
    for token in ANSWER_TOKENS:
        encoded = tokenizer.encode(f"The mask is {token}.", add_special_tokens=False)
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id not in encoded:
            raise ValueError(f"{token} does not encode to one token of this tokenizer")
        ids.append(int(token_id))
    return ids


def end_of_turn_id(tokenizer) -> int:
    """The id of the end-of-turn token (`<|im_end|>`), which ends SFT targets and stops generation."""
    token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {END_OF_TURN} token")
    return int(token_id)

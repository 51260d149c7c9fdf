"""Claims in an answer, read back and checked against a mask: the findings a clinician sees.

`read_statements` reads what a reasoning text says (location, size, shape, margin, impression) in the
vocabulary's keys; `check_answer` checks every claim of one answer (that the finding is present, each
box, the location, size, shape and number of parts) against that answer's OWN mask and returns
`Finding`s (claim, stated, measured, agrees), so that the UI shows where text and mask disagree;
`check_statements` checks a text against the truth (evaluation); `unsupported_claims` lists what an
image cannot show (histology, biopsy or pathology results, a confirmed diagnosis).

Writer (`trainers.reasoning`) and reader share one vocabulary table (`VOCAB`), so what one writes the
other reads. Reasoning texts never hold a digit: numbers are spelled out ("BI-RADS category four").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from coreseg.answer import parse_answer
from coreseg.lesion_facts import MaskFacts, measure_mask, thumbnail
from coreseg.mask_boxes import mask_boxes
from coreseg.metrics import box_iou

ROWS, COLUMNS = ("upper", "middle", "lower"), ("left", "central", "right")

# --------------------------------------------------------------------------------------------- vocabulary
# One table for writer and reader: key → phrases (the first is canonical). Builders pick among the
# phrases; the checker looks for any of them.
VOCAB: dict[str, dict[str, list[str]]] = {
    "location": {
        "upper left": ["upper left", "upper-left", "top left"],
        "upper central": ["upper central", "upper middle", "top central"],
        "upper right": ["upper right", "upper-right", "top right"],
        "middle left": ["middle left", "mid-left", "left-central"],
        "central": ["central", "middle", "centre", "center"],
        "middle right": ["middle right", "mid-right", "right-central"],
        "lower left": ["lower left", "lower-left", "bottom left"],
        "lower central": ["lower central", "lower middle", "bottom central"],
        "lower right": ["lower right", "lower-right", "bottom right"],
    },
    "size": {
        "small": ["small", "tiny", "minute"],
        "moderate": ["moderate-sized", "medium-sized", "moderately sized", "mid-sized", "moderate"],
        "large": ["large", "sizeable", "big"],
        "very large": ["very large", "extensive", "huge", "very big"],
    },
    "shape": {
        "round": ["round", "circular", "rounded"],
        "oval": ["oval", "ovoid", "elliptical"],
        "lobulated": ["lobulated", "multilobulated", "lobed"],
        "irregular": ["irregular", "irregularly shaped", "misshapen"],
    },
    "margin": {
        "sharp": ["sharp", "well-defined", "circumscribed", "crisp"],
        "indistinct": ["indistinct", "ill-defined", "blurred", "poorly defined"],
    },
    "echo": {
        "hypoechoic": ["hypoechoic", "darker than the surrounding tissue"],
        "isoechoic": ["isoechoic", "of similar echogenicity to the surrounding tissue"],
        "hyperechoic": ["hyperechoic", "brighter than the surrounding tissue"],
    },
    "intensity": {
        "darker": ["darker than", "darker in tone than"],
        "similar": ["similar in brightness to", "close in brightness to"],
        "lighter": ["lighter than", "brighter than"],
    },
    "orientation": {
        "parallel": ["parallel to the skin", "wider than tall"],
        "taller-than-wide": ["taller than wide", "not parallel to the skin"],
    },
    "removal": {"yes": ["removal", "removed", "resection", "resected", "polypectomy", "excision"]},
    # hedged imaging impressions: what the writer closes with (BI-RADS assessments; PH2 patterns)
    "impression": {
        "benign": ["the features favour a benign process", "the features are probably benign"],
        "suspicious": ["the features are suspicious for malignancy", "the features raise concern for malignancy"],
        "highly suspicious": ["the features are highly suggestive of malignancy",
                              "the features are highly suspicious for malignancy"],
        "common nevus": ["favour a common nevus", "suggest an ordinary common nevus"],
        "atypical nevus": ["suggest an atypical melanocytic lesion", "favour an atypical nevus"],
        "melanoma": ["raise concern for melanoma", "are suspicious for melanoma"],
    },
}
# why a shape word was chosen, said after it ("The outline is lobulated (with gentle undulations of its contour)")
SHAPE_WHY = {"round": "smooth and about as long in every direction", "oval": "smooth and elongated",
             "lobulated": "with gentle undulations of its contour", "irregular": "with an uneven, angulated contour"}
# whole sentences the writer says orientation (BUS-BRA) and the number of parts in; "{n}" is a number in words
ORIENTATION_SENTENCES = {
    "parallel": ["Its long axis runs parallel to the skin, so it is wider than tall.",
                 "It is oriented parallel to the skin, wider than tall."],
    "taller-than-wide": ["It is taller than wide, not parallel to the skin, a suspicious orientation.",
                         "Its orientation is not parallel to the skin: it is taller than wide."],
}
PARTS_SENTENCES = {"several": ["It consists of {n} separate parts.", "The finding is split into {n} separate parts."],
                   "one": ["It forms a single connected region.", "It is one continuous region."]}
PH2_DIAGNOSIS_KEYS = {0: "common nevus", 1: "atypical nevus", 2: "melanoma"}
_LOCATION_NOUNS = r"(?:part|portion|area|region|zone|sector|aspect|quadrant|third|side)"
_FIELD_NOUNS = r"(?:image|field|view|frame|picture|scan|field of view|photograph)"

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """0 … 999 in English words ("forty-two"); larger numbers digit by digit in words."""
    n = int(n)
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def share_words(fraction: float) -> str:
    """A lesion's share of the image in words: "about four percent", "less than one percent"."""
    pct = int(round(100 * fraction))
    return "less than one percent" if pct < 1 else f"about {number_words(pct)} percent"


SHARE = re.compile(r"\b(?:about [a-z]+(?:[- ][a-z]+)* percent|less than one percent)\b", re.I)


def spell_digits(text: str) -> str:
    """Every run of digits written as words (labels are free text; reasoning must hold no digit)."""
    return re.sub(r"\d+", lambda m: number_words(int(m.group())), str(text))


def words_to_int(word: str) -> int | None:
    word = word.lower()
    if word.isdigit():
        return int(word)
    return _ONES.index(word) if word in _ONES else None


# --------------------------------------------------------------------------------------------- reading
_NEGATION = re.compile(r"\b(?:no|not|without|non|rather than|rules? out|excludes?)\W+(?:\w+\W+){0,2}$", re.I)
_ROW_ONLY = {"upper": "upper", "top": "upper", "lower": "lower", "bottom": "lower"}
_COLUMN_ONLY = {"left": "left", "left-hand": "left", "right": "right", "right-hand": "right"}


def _alternation(phrases) -> str:
    return "|".join(re.escape(p) for p in sorted(set(phrases), key=len, reverse=True))


def first_match(text: str, table: dict[str, list[str]], suffix: str = "",
                 skip_negated: bool = False) -> tuple[str, re.Match] | None:
    """The key and match (group 1: the phrase) of the first phrase of `table` found in `text` (word-bounded,
    longest phrase first); None where there is none."""
    owner = {p.lower(): k for k, phrases in table.items() for p in phrases}
    pattern = re.compile(rf"\b({_alternation(owner)})\b{suffix}", re.I)
    for match in pattern.finditer(text):
        if skip_negated and _NEGATION.search(text[:match.start()]):
            continue
        return owner[match.group(1).lower()], match
    return None


def _first(text: str, table: dict[str, list[str]], suffix: str = "", skip_negated: bool = False) -> str | None:
    """The key of the first phrase of `table` found in `text` (`first_match`), or None."""
    found = first_match(text, table, suffix, skip_negated)
    return found[0] if found else None


def _location_of(key: str) -> tuple[str, str]:
    if key == "central":
        return "middle", "central"
    row, col = key.split(" ")
    return row, col


def location_cells() -> dict[str, tuple[str | None, str | None]]:
    """Every location phrase the reader knows (lower case) → the (row, column) it names; a half statement
    ("upper", "right") leaves the other None."""
    cells = {}
    for key, phrases in VOCAB["location"].items():
        for p in phrases:
            cells[p.lower()] = _location_of(key)
    for p, row in _ROW_ONLY.items():
        cells.setdefault(p, (row, None))
    for p, col in _COLUMN_ONLY.items():
        cells.setdefault(p, (None, col))
    return cells


def location_match(text: str) -> re.Match | None:
    """The first location statement of a text ("upper left part of the image", "in the centre"); its one
    matched group is the location phrase. None where the text states no location."""
    words = _alternation(location_cells())
    pattern = re.compile(
        rf"\b({words})\s+(?:{_LOCATION_NOUNS}|half|corner)\b"
        rf"|\b({words})\s+(?:of|in)\s+(?:the\s+)?{_FIELD_NOUNS}\b"
        rf"|\bin\s+the\s+(centre|center|middle)\b(?!\s*(?:left|right|-))", re.I)
    return pattern.search(text)


def read_location(text: str) -> tuple[str | None, str | None] | None:
    """(row, column) the text states, either may be None for a half statement ("upper part"); None if none."""
    match = location_match(text)
    if match is None:
        return None
    phrase = next(g for g in match.groups() if g)
    return location_cells()[phrase.lower()]


SIZE_SUFFIX = r"(?!\s+(?:bowel|intestine))"   # "small bowel" is no size statement
PARTS_MANY = re.compile(r"\b(\w+) separate parts\b", re.I)
ONE_PART = re.compile(r"\b(?:single connected region|one continuous region)\b", re.I)


def read_statements(text: str) -> dict:
    """What a reasoning text states, in the vocabulary's keys (None where it states nothing)."""
    size = _first(text, VOCAB["size"], suffix=SIZE_SUFFIX)
    birads = re.search(r"\bBI-?RADS\W+(?:category\W+)?(\w+)", text, re.I)
    parts = PARTS_MANY.search(text)
    return {
        "location": read_location(text),
        "size": size,
        "shape": _first(text, VOCAB["shape"]),
        "margin": _first(text, VOCAB["margin"]),
        "parts": (words_to_int(parts.group(1)) if parts else
                  1 if ONE_PART.search(text) else None),
        "birads": words_to_int(birads.group(1)) if birads else None,
        "impression": _first(text, VOCAB["impression"]),
        "polyp": re.search(r"\bpolyps?\b", text, re.I) is not None,
    }


def _set_key(set_name) -> str:
    key = str(set_name or "").lower()
    return {"kvasir-seg": "kvasir", "bus-bra": "busbra"}.get(key, key)


def _fact(facts, name):
    return facts.get(name) if isinstance(facts, dict) else getattr(facts, name)


def location_agrees(said, truth_key: str) -> bool:
    truth_row, truth_col = _location_of(truth_key)
    return said is not None and said[0] in (None, truth_row) and said[1] in (None, truth_col)


def birads_impression(birads: int) -> str:
    """The impression key a BI-RADS category reads as (2–3 benign, 4 suspicious, 5 highly suspicious)."""
    return "benign" if birads <= 3 else "suspicious" if birads == 4 else "highly suspicious"


def check_statements(text: str, facts, set_name: str | None = None, labels: dict | None = None) -> dict[str, bool]:
    """Whether the text's location, size word, shape word (and, for a known set with labels, its
    impression) agree with the truth. A statement the text does not make counts as False.

    `facts` is a LesionFacts or its dict. Impression rules: BUS-BRA, the hedged impression must be the
    one the true BI-RADS category reads as, and a stated category must match; PH2, the impression must
    name the true diagnosis' pattern; Kvasir-SEG, the text must name a polyp.
    """
    said = read_statements(text or "")
    result = {"location": location_agrees(said["location"], _fact(facts, "location")),
              "size": said["size"] == _fact(facts, "size"),
              "shape": said["shape"] == _fact(facts, "shape")}
    key, labels = _set_key(set_name), labels or {}
    if key == "busbra" and labels.get("birads") is not None:
        ok = said["impression"] == birads_impression(int(labels["birads"]))
        if said["birads"] is not None:
            ok = ok and said["birads"] == int(labels["birads"])
        result["impression"] = ok
    elif key == "ph2" and labels.get("diagnosis") in PH2_DIAGNOSIS_KEYS:
        result["impression"] = said["impression"] == PH2_DIAGNOSIS_KEYS[labels["diagnosis"]]
    elif key == "kvasir":
        result["impression"] = said["polyp"]
    return result


# --------------------------------------------------------------------------------------------- own mask
@dataclass(frozen=True)
class Finding:
    """One claim of an answer checked against its own mask."""

    claim: str        # "present", "box 1", "panel", "location", "size", "shape", "parts"
    stated: str
    measured: str
    agrees: bool

    def to_json(self) -> dict:
        return {"claim": self.claim, "stated": self.stated, "measured": self.measured, "agrees": self.agrees}


BOX_AGREES_IOU = 0.5
PANEL_SHARE = 0.8  # a mask "is on" a panel when this share of it lies there (also the referring accuracy's rule)
PLACE_WORDS = "upper-left|upper-right|lower-left|lower-right|left|right|upper|lower"   # a composite's panels
MODALITY_WORDS = {"busbra": "a breast ultrasound", "kvasir": "a colonoscopy view", "ph2": "a dermoscopy image"}
POINTING = "points to the"   # the words before the panel a composite's reasoning picks
ASKS = "shows;"              # "… which a colonoscopy view shows;": the words before a composite's present or absent
PRESENT = "that is"                  # "… which M shows; that is M (upper-left), so …"
NO_PANEL = "none of the panels is"    # "… which M shows; none of the panels is M."
_PANEL = re.compile(rf"\b{POINTING} ({PLACE_WORDS}) panel\b", re.I)
_PLACE = re.compile(rf"\b({PLACE_WORDS})\b", re.I)
_MODALITY = "|".join(MODALITY_WORDS.values())
_LISTED = re.compile(rf"({_MODALITY}) \(({PLACE_WORDS})\)")
_ASKED = re.compile(rf"which ({_MODALITY}) shows")
_SIZE_ASKED = re.compile(r"asks for the (larger|smaller)\b")
_ASKED_LAST = re.compile(rf"which ({_MODALITY}) {ASKS}$")


def read_panel(text: str) -> str | None:
    """The panel a composite's reasoning says the question points to ("upper-left", "right", …), or None."""
    match = _PANEL.search(text or "")
    return match.group(1).lower() if match else None


def lookup_places(question: str, text: str) -> list[str]:
    """The panels a composite's reasoning (`text`, the words so far) may point to next: the place its question
    names ("Segment the lesion in the upper-left part …"), else the places its own panel list gives the modality it
    said the question asks for ("… which a colonoscopy view shows; …"); [] where neither is written. The rule
    `coreseg.modeling.panel_lookup` holds the reasoning to: a copy of what the question and the reasoning's own
    reading of the image already said (only a composite's reasoning writes "points to the")."""
    place = _PLACE.search(question or "")
    if place is not None:
        return [place.group(1).lower()]
    asked = _ASKED.findall(text)
    if not asked:
        return []
    return list(dict.fromkeys(p.lower() for m, p in _LISTED.findall(text) if m == asked[-1]))


def size_asked(text: str) -> str | None:
    """"larger" or "smaller" where a composite's reasoning says the question asks for the larger or smaller of two
    findings of a kind ("The question asks for the larger of the two polyps, …"), else None."""
    asked = _SIZE_ASKED.findall(text)
    return asked[-1] if asked else None


def lookup_presence(text: str) -> str | None:
    """What a composite's reasoning (`text`, the words so far, ending "… which M shows;") writes next by its own
    panel list: `PRESENT` where the list has M, `NO_PANEL` where it lists other modalities only; None where the text
    does not end so or no list is written. The rule `coreseg.modeling.panel_lookup` holds the reasoning to (the
    shipped model wrote "none of the panels is M" in 4 of 24 validation kind questions whose own list had M)."""
    asked = _ASKED_LAST.search(text)
    listed = _LISTED.findall(text)
    if asked is None or not listed:
        return None
    return PRESENT if any(m == asked.group(1) for m, _ in listed) else NO_PANEL


def panel_box(place: str, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A panel of a composite frame (`shape`) as a box (x1, y1, x2, y2, exclusive ends): a half for "left"/"right"/
    "upper"/"lower", a quadrant for "upper-left" …, as `coreseg.composites` tiles its square canvas."""
    height, width = shape
    y1, y2 = (0, height // 2) if "upper" in place else (height // 2, height) if "lower" in place else (0, height)
    x1, x2 = (0, width // 2) if "left" in place else (width // 2, width) if "right" in place else (0, width)
    return x1, y1, x2, y2


def panel_region(place: str, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of a panel of a composite frame (`shape`, `panel_box`)."""
    x1, y1, x2, y2 = panel_box(place, shape)
    region = np.zeros(shape, bool)
    region[y1:y2, x1:x2] = True
    return region


def share_on(mask: np.ndarray, region: np.ndarray) -> float:
    """The share of a mask's pixels inside `region` (0 for an empty mask)."""
    area = int(mask.sum())
    return float((mask & region).sum()) / area if area else 0.0


def _location_words(said) -> str:
    row, col = said
    return " ".join(w for w in (row, col) if w) or "?"


def own_mask_measure(mask: np.ndarray) -> tuple[MaskFacts, list[tuple[int, int, int, int]]]:
    """What an answer's claims are checked on: the mask's facts, measured as training measures them (on a
    thumbnail), and its part boxes at full size (count and boxes only: no part masks)."""
    _, small_mask = thumbnail(None, np.asarray(mask).astype(bool))
    return measure_mask(small_mask), mask_boxes(mask)


def check_answer(text: str, mask: np.ndarray, image: np.ndarray | None = None,
                 modality: str | None = None) -> list[Finding]:
    """Every checkable claim of an answer against the answer's own `mask` (original pixels).

    Claims: whether the finding is present (an absent answer claims an empty mask), each stated box
    (agrees when its IoU with the best-matching part box of the mask is ≥ 0.5), the panel of a composite the
    reasoning says the question points to (agrees when ≥ `PANEL_SHARE` of the mask lies in it), and what the
    reasoning says of location, size, shape and number of parts. Statements the text does not make are not
    claims. An unparsable answer has no claims. Every claim checked is measured on the mask alone
    (`measure_mask`, on the thumbnail training measures on); `image` and `modality` are accepted for margin, echo and
    colour checks to come, and `image` must match the mask's size when given.
    """
    mask = np.asarray(mask).astype(bool)
    if image is not None and np.asarray(image).shape[:2] != mask.shape:
        raise ValueError(f"image {np.asarray(image).shape[:2]} and mask {mask.shape} differ in size")
    answer = parse_answer(text, mask.shape).answer
    if answer is None:
        return []
    has_mask = bool(mask.any())
    out = [Finding("present", "yes" if answer.present else "no", "yes" if has_mask else "no",
                   answer.present == has_mask)]
    if not answer.present or not has_mask:
        return out
    facts, part_boxes = own_mask_measure(mask)
    for i, box in enumerate(answer.boxes, 1):
        best = max((box_iou(box, b) for b in part_boxes), default=0.0)
        out.append(Finding(f"box {i}", str(list(box)), f"IoU {best:.2f} with the mask's nearest part", best >= BOX_AGREES_IOU))
    panel = read_panel(answer.reasoning)
    if panel is not None:
        share = share_on(mask, panel_region(panel, mask.shape))
        out.append(Finding("panel", panel, f"{share:.0%} of the mask in it", share >= PANEL_SHARE))
    said = read_statements(answer.reasoning)
    if said["location"] is not None:
        out.append(Finding("location", _location_words(said["location"]), facts.location,
                           location_agrees(said["location"], facts.location)))
    for claim in ("size", "shape"):
        if said[claim] is not None:
            out.append(Finding(claim, said[claim], getattr(facts, claim), said[claim] == getattr(facts, claim)))
    stated_parts = said["parts"] if said["parts"] is not None else (len(answer.boxes) if answer.boxes else None)
    if stated_parts is not None:
        out.append(Finding("parts", str(stated_parts), str(len(part_boxes)), stated_parts == len(part_boxes)))
    return out


def claim_agreement(findings: list[Finding]) -> float | None:
    """The share of claims that agree with the mask (None when there are no claims)."""
    return sum(f.agrees for f in findings) / len(findings) if findings else None


# --------------------------------------------------------------------------------------------- unknowable
# What an image cannot show: tissue results and certainty about a diagnosis.
_UNSUPPORTED = [
    (r"\bbiops(?:y|ies|ied)\s+(?:showed|shows|revealed|confirmed|proved|result)", "a biopsy result"),
    (r"\bhistolog\w*|\bcytolog\w*|\bhistopatholog\w*", "histology"),
    (r"\bpatholog(?:y|ical|ic)\b(?!\s+(?:is\s+)?(?:cannot|not))", "a pathology result"),
    (r"\b(?:confirmed|proven|definite|definitive|diagnostic of|certainly|without doubt)\b", "certainty about a diagnosis"),
    (r"\b(?:invasive|ductal|lobular)\s+carcinoma|\bfibroadenoma|\bpapilloma|\bphyllodes|\badenosis|"
     r"\bfibrocystic|\bcarcinoma\b|\badenocarcinoma|\bsarcoma|\blymphoma", "a histological type"),
    (r"\b(?:the|this|it)\s+(?:lesion\s+|mass\s+|finding\s+)?is\s+(?:a|an)\s+(?:melanoma|common nevus|atypical nevus|"
     r"benign|malignant)\b", "a diagnosis stated as fact"),
    (r"\bthe\s+(?:pathology|diagnosis)\s+is\b", "a diagnosis stated as fact"),
]
_UNSUPPORTED = [(re.compile(p, re.I), why) for p, why in _UNSUPPORTED]


def unsupported_claims(text: str) -> list[str]:
    """Phrases of `text` that claim what no image can show (histology, biopsy or pathology results, a
    confirmed diagnosis), each as "phrase (why)"; empty when the text says only what a scan shows."""
    found = []
    for pattern, why in _UNSUPPORTED:
        found += [f"{m.group(0)!r} ({why})" for m in pattern.finditer(text or "")]
    return found

"""Reasoning chains for training, written from what can be measured on an image and its mask.

`build_reasoning` turns a lesion's measured facts (`coreseg.lesion_facts`) and its set into a varied
`<think>` text in the paper's order: the normal appearance, how the lesion differs from it (location,
size, shape, margin, echo or colour, orientation, parts), then an imaging impression in hedged words.
It says only what an image can show: never a histology, biopsy or pathology result and never a
confirmed diagnosis (labels may choose the impression's words, e.g. a BI-RADS category, which is an
imaging assessment); `coreseg.findings.unsupported_claims` is the test of that. The vocabulary is
shared with the checker (`coreseg.findings.VOCAB`), so what this writes the checker reads.
"""
from __future__ import annotations

import random
from dataclasses import asdict

from coreseg.answer import render_answer
from coreseg.findings import (ORIENTATION_SENTENCES, PARTS_SENTENCES, PH2_DIAGNOSIS_KEYS, SHAPE_WHY, VOCAB,
                              number_words, share_words, spell_digits)
from coreseg.lesion_facts import ECHO_OF, LesionFacts, colour_name, describe_lesion

# --------------------------------------------------------------------------------------------- writing
# Phrases only the reader accepts (informal or awkward in our own sentences); the writer uses the rest.
READ_ONLY = {"centre", "center", "minute", "moderate", "big", "huge", "very big", "misshapen", "irregularly shaped",
             "rounded", "multilobulated", "lobed", "crisp", "poorly defined", "malignancy",
             "common naevus", "atypical naevus", "dysplastic naevus", "typical nevus", "tiny", "sizeable"}
# lesion nouns, tissue words and normal appearance per set; unknown sets use "generic"
NOUNS = {"busbra": ["mass", "lesion", "focal lesion"], "kvasir": ["polyp", "raised lesion", "protruding lesion"],
         "ph2": ["pigmented lesion", "lesion", "melanocytic lesion"], "generic": ["lesion", "abnormal region"]}
TISSUE = {"busbra": ["breast tissue", "glandular tissue"], "kvasir": ["mucosa", "colonic mucosa"],
          "ph2": ["skin", "normal skin"], "generic": ["tissue", "background"]}
FIELDS = ["image", "field of view", "view", "frame"]
NORMAL = {
    "busbra": [
        "In a healthy breast, ultrasound shows a thin bright skin line, a layer of mid-grey subcutaneous fat, brighter "
        "fibroglandular tissue with a fine striped texture and the chest wall deeper down.",
        "Normal breast tissue on ultrasound is layered: echogenic skin, grey fat lobules, echogenic fibroglandular "
        "bands and the pectoral muscle at depth, with no focal mass.",
        "A normal breast scan shows smooth layers of skin, fat and glandular tissue crossed by thin echogenic Cooper "
        "ligaments, and nothing interrupts the pattern.",
        "On a healthy breast ultrasound the tissue planes follow the skin, fat appears mid-grey, glandular tissue "
        "brighter, and no focal finding breaks the layers.",
    ],
    "kvasir": [
        "Healthy colonic mucosa looks smooth and glistening pink, with a fine branching vascular pattern and regular "
        "folds.",
        "In a normal colonoscopy view the lining is flat and even in colour, the submucosal vessels form a delicate "
        "network and the folds are regular.",
        "The normal colon wall shows a moist, pink, featureless surface with a clear vascular pattern and no raised "
        "tissue.",
        "A healthy bowel lining is evenly pink with a visible lattice of fine vessels and regular haustral folds, and "
        "nothing protrudes into the lumen.",
    ],
    "ph2": [
        "Normal skin under dermoscopy shows an even light background with a faint, regular pattern of skin furrows "
        "and no focal pigmentation.",
        "Healthy skin seen through the dermatoscope is evenly coloured, with fine skin lines and at most a faint, "
        "evenly spaced network.",
        "Normal skin appears in dermoscopy as a pale, homogeneous background without pigment structures.",
        "In normal dermoscopy the skin is smooth and evenly toned, and any pigment is faint and regular.",
    ],
    "generic": [
        "Normal tissue in this {modality} image has an even texture and intensity without any focal abnormality.",
        "Healthy structures in this {modality} image appear homogeneous, with continuous boundaries and nothing that "
        "stands out.",
        "Without disease, this {modality} image would show a uniform pattern and no discrete focal finding.",
    ],
}
MODALITY_OF = {"busbra": "ultrasound", "kvasir": "endoscopy", "ph2": "dermoscopy"}


from coreseg.questions import as_random as _as_random  # noqa: E402


def _written(kind: str, key: str) -> list[str]:
    return [p for p in VOCAB[kind][key] if p not in READ_ONLY] or VOCAB[kind][key][:1]


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeio" else "a ") + phrase


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _set_key(set_name) -> str:
    key = str(set_name or "").lower()
    key = {"kvasir-seg": "kvasir", "bus-bra": "busbra"}.get(key, key)
    return key if key in NORMAL else "generic"


def _fact(facts, name):
    return facts.get(name) if isinstance(facts, dict) else getattr(facts, name)


def _criteria_sentence(labels: dict, rng: random.Random) -> str:
    """PH2 criteria from the labels, in words ('' when the table holds none)."""
    clauses = []
    asymmetry = labels.get("asymmetry")
    if asymmetry in (0, 1, 2):
        clauses.append(("is symmetric in both axes", "is asymmetric in one axis", "is asymmetric in both axes")[asymmetry])
    for key, name in (("pigment_network", "pigment network"), ("dots_globules", "dots and globules"),
                      ("streaks", "streaks"), ("regression_areas", "regression areas"),
                      ("blue_whitish_veil", "blue-whitish veil")):
        value = labels.get(key)
        if value in ("typical", "atypical"):
            phrase = f"{value} {name}"
            clauses.append("shows " + (_a(phrase) if key == "pigment_network" else phrase))
        elif value == "present":
            clauses.append("shows " + (_a(name) if key == "blue_whitish_veil" else name))
    colours = list(labels.get("colours") or [])
    if colours:
        words = colours[0] if len(colours) == 1 else ", ".join(colours[:-1]) + " and " + colours[-1]
        clauses.append(f"holds {number_words(len(colours))} colour{'s' if len(colours) > 1 else ''} ({words})")
    if not clauses:
        return ""
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return rng.choice(["On dermoscopic criteria the lesion {}.", "By the dermoscopic criteria it {}."]).format(body)


def _impression(set_key: str, labels: dict, rng: random.Random) -> str:
    """The closing imaging impression, in hedged words. Labels choose the words (a BI-RADS category is
    an imaging assessment; a diagnosis picks which pattern the features are said to favour) but are
    never stated as results: no histology, biopsy or pathology, no confirmed diagnosis."""
    labels = labels or {}
    if set_key == "busbra":
        birads = labels.get("birads")
        if birads is None:
            return ""
        birads = int(birads)
        category = f"BI-RADS category {number_words(birads)}"
        lead = rng.choice([f"The imaging features correspond to {category}",
                           f"On imaging this is {_a(category)} finding",
                           f"The sonographic appearance fits {category}"])
        key = "benign" if birads <= 3 else "suspicious" if birads == 4 else "highly suspicious"
        return f"{lead}: {rng.choice(_written('impression', key))}."
    if set_key == "kvasir":
        return rng.choice([
            "The appearance is that of a colonic polyp, which may be considered for removal.",
            "The endoscopic appearance favours a polyp; removal may be considered.",
            "These features suggest a colonic polyp.",
        ])
    if set_key == "ph2":
        criteria = _criteria_sentence(labels, rng)
        diagnosis = labels.get("diagnosis")
        if diagnosis not in PH2_DIAGNOSIS_KEYS:
            return criteria
        verdict = rng.choice(_written("impression", PH2_DIAGNOSIS_KEYS[diagnosis]))
        return (criteria + " " + rng.choice([f"The dermoscopic features {verdict}.",
                                             f"Overall the pattern would {verdict}."])).strip()
    return ""

def build_reasoning(facts: LesionFacts, set_name: str | None, labels: dict | None = None, rng=None,
                    modality: str | None = None) -> str:
    """A varied reasoning text for these facts: normal appearance, the lesion, the conclusion. No digits."""
    rng = _as_random(rng)
    key = _set_key(set_name)
    modality = modality or MODALITY_OF.get(key, "")
    noun = rng.choice(NOUNS[key])
    tissue = rng.choice(TISSUE[key])
    field_word = rng.choice(FIELDS)
    out = [rng.choice(NORMAL[key]).format(modality=modality or "medical").replace("  ", " ")]

    # where and how big
    loc = rng.choice(_written("location", _fact(facts, "location")))
    size = rng.choice(_written("size", _fact(facts, "size")))
    share = share_words(float(_fact(facts, "size_fraction")))
    opener = rng.choice(["Here", "In this image", "In contrast", "By comparison"])
    place = rng.choice([
        f"{opener}, {_a(size + ' ' + noun)} lies in the {loc} part of the {field_word}, covering {share} of it.",
        f"{opener}, there is {_a(noun)} in the {loc} {rng.choice(['part', 'region', 'area'])} of the {field_word}. "
        f"It is {size}, taking up {share} of the {field_word}.",
        f"{opener}, {_a(noun)} occupies the {loc} portion of the {field_word}; it is {size}, {share} of the area.",
    ])
    out.append(place)

    shape = rng.choice(_written("shape", _fact(facts, "shape")))
    margin = rng.choice(_written("margin", _fact(facts, "margin")))
    shape_why = SHAPE_WHY[_fact(facts, "shape")]
    margin_why = {"sharp": "the change in brightness happens abruptly at its boundary",
                  "indistinct": "it fades gradually into the surrounding " + tissue}[_fact(facts, "margin")]
    out.append(rng.choice([
        f"Its shape is {shape}, {shape_why}, and its margin is {margin}: {margin_why}.",
        f"It is {_a(shape)} lesion, {shape_why}. The margin is {margin}, since {margin_why}.",
        f"The outline is {shape} ({shape_why}) with {_a(margin)} margin, as {margin_why}.",
    ]))

    intensity = _fact(facts, "intensity")
    if modality == "ultrasound":
        echo, plain = VOCAB["echo"][ECHO_OF[intensity]][:2]
        out.append(rng.choice([f"Compared with the surrounding {tissue} it is {echo}.",
                               f"It is {echo} relative to the {tissue} around it.",
                               f"It is {echo}, that is, {plain}."]))
    else:
        tone = rng.choice(_written("intensity", intensity))
        sentence = f"It looks {tone} the {tissue} around it"
        rgb = _fact(facts, "colour_rgb")
        if rgb is not None:
            colour = colour_name(rgb, modality)
            sentence += rng.choice([f", with a mostly {colour} colour", f" and its colour is mainly {colour}"])
        out.append(sentence + ".")

    if key == "busbra" or (modality == "ultrasound" and key == "generic"):
        out.append(rng.choice(ORIENTATION_SENTENCES[_fact(facts, "orientation")]))

    parts = int(_fact(facts, "parts"))
    if parts > 1:
        out.append(rng.choice(PARTS_SENTENCES["several"]).format(n=number_words(parts)))
    elif rng.random() < 0.4:
        out.append(rng.choice(PARTS_SENTENCES["one"]))

    conclusion = _impression(key, labels or {}, rng)
    if conclusion:
        out.append(conclusion)
    return spell_digits(" ".join(out))


FOUND_IN = {"busbra": "breast tissue on ultrasound", "kvasir": "the colonic mucosa at endoscopy",
            "ph2": "the skin under dermoscopy"}
SHOWS = {"busbra": "breast tissue", "kvasir": "colonic mucosa", "ph2": "skin"}


def describe_absence(asked_set: str, present_sets: list[str | None], rng=None) -> str:
    """Why the asked kind of finding cannot be outlined: what the image shows instead (no digits)."""
    from coreseg.questions import KINDS

    rng = _as_random(rng)
    kind = KINDS[asked_set][0]
    shown = sorted({SHOWS.get(_set_key(s), "other tissue") for s in present_sets})
    shown_text = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
    return rng.choice([
        f"The image shows {shown_text}. {_cap(_a(kind))} is a finding of {FOUND_IN[asked_set]}, and no such "
        f"finding is seen here.",
        f"What is visible is {shown_text}; {_a(kind)} would appear in {FOUND_IN[asked_set]}, and nothing of the kind "
        f"is present.",
    ])


def target_name(set_name: str | None, parts: int = 1) -> str:
    """The noun the answer names: the set's target ("lesion" for unknown sets), plural for several parts."""
    from coreseg.datasets import set_info

    info = set_info(set_name) if set_name else None
    noun = info.target if info else "lesion"
    if parts > 1:
        noun = noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")
    return noun


def build_sample(item, rng=None, *, question: str | None = None, modality: str | None = None) -> dict:
    """A training sample from a LabelledImage or an (image, mask, set_name, labels) tuple.

    Returns {question, reasoning, target, boxes, answer_text, facts, set_name, image_id}; `answer_text` is
    `render_answer(reasoning, target, boxes)`, `facts` is `asdict(describe_lesion(...))` plus `echo`.
    """
    from coreseg.datasets import LabelledImage, read_image, read_mask
    from coreseg.questions import sample_question

    rng = _as_random(rng)
    if isinstance(item, LabelledImage):
        image, mask, set_name, labels, image_id = read_image(item), read_mask(item), item.set_name, item.labels, item.image_id
    elif isinstance(item, dict):
        image, mask = item["image"], item["mask"]
        set_name, labels, image_id = item.get("set_name"), item.get("labels") or {}, item.get("image_id")
    else:
        image, mask, set_name, labels = item
        image_id = None
    modality = modality or MODALITY_OF.get(_set_key(set_name))
    facts = describe_lesion(image, mask, modality)
    reasoning = build_reasoning(facts, set_name, labels, rng, modality=modality)
    target = target_name(set_name, len(facts.boxes))
    boxes = [list(b) for b in facts.boxes]
    return {
        "question": question or sample_question(_set_key(set_name), labels, rng),
        "reasoning": reasoning,
        "target": target,
        "boxes": boxes,
        "answer_text": render_answer(reasoning, target, boxes),
        "facts": {**asdict(facts), "echo": facts.echo},
        "set_name": set_name,
        "image_id": image_id,
    }



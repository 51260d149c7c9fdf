"""Questions: the short clinical requests a sample is paired with, for training, evaluation and the UI.

Questions name what to find, never what only a label table knows: "Outline the polyp." names a kind of
finding; "Segment the melanoma." would name a diagnosis that the image cannot show and would leak the
label into the prompt, so no question here does. Composite scans (`trainers.composites`) add questions
that pick one finding among several: by kind ("the polyp"), by place ("the lesion in the upper-left
part"), by attribute ("the larger of the two masses"), or all of them; and questions about a kind of
finding the scan does not show (answered "No … is visible.").
"""
from __future__ import annotations

import random

import numpy as np

PLAIN: dict[str, list[str]] = {
    "busbra": [
        "Segment the breast mass in this ultrasound.",
        "Outline the breast mass.",
        "Where is the breast lesion? Find it and identify its boundaries.",
        "Locate and segment the breast tumour.",
        "Using this ultrasound image, outline the mass.",
        "Find the focal lesion in this breast scan and mark its extent.",
        "Segment the lesion in this breast ultrasound.",
        "Where is the mass? Outline it.",
    ],
    "kvasir": [
        "Outline the polyp.",
        "Segment the polyp in this colonoscopy image.",
        "Where is the polyp? Find it and identify its boundaries.",
        "Locate and segment the colon polyp.",
        "Using this endoscopy image, outline the lesion.",
        "Find the polyp and mark its extent.",
        "Segment the raised lesion in this colonoscopy frame.",
        "Where is the lesion? Find it and identify its boundaries.",
    ],
    "ph2": [
        "Using this image, outline the pigmented lesion.",
        "Segment the skin lesion in this dermoscopy image.",
        "Where is the lesion? Find it and identify its boundaries.",
        "Outline the mole.",
        "Locate and segment the pigmented skin lesion.",
        "Find the melanocytic lesion and mark its border.",
        "Segment the lesion in this dermoscopic photograph.",
        "Where is the pigmented lesion? Outline it.",
    ],
}

GENERIC = [
    "Where is the lesion? Find it and identify its boundaries.",
    "Locate and segment the lesion.",
    "Outline the abnormal region in this image.",
    "Find the lesion and mark its extent.",
    "Segment the most suspicious finding.",
]

# The kind of finding each set shows: (singular, plural), as questions and answers name it.
KINDS: dict[str, tuple[str, str]] = {
    "busbra": ("breast mass", "breast masses"),
    "kvasir": ("polyp", "polyps"),
    "ph2": ("pigmented skin lesion", "pigmented skin lesions"),
}
BY_KIND = ["Outline the {kind}.", "Segment the {kind} in this image.",
           "Where is the {kind}? Find it and identify its boundaries.", "Locate and segment the {kind}."]
# How people ask about one kind beyond the plain bank: with a clinical qualifier. Training asks present and
# absent findings in the same words, so that only the kind named tells the model what to answer.
QUALIFIED = ["Segment the {kind} that most warrants a biopsy.", "Outline the most suspicious {kind}.",
             "Is there a {kind}? Outline it.", "Show the {kind} and its borders."]
BY_PLACE = ["Segment the lesion in the {place} part of the image.", "Outline the finding in the {place} panel.",
            "Where is the lesion in the {place} part? Outline it."]
BY_SIZE = ["Outline the {which} of the two {kinds}.", "Segment the {which} {kind}."]
ALL = ["Segment every lesion in this image.", "Outline all the findings in this image.",
       "Find all the lesions and mark their extent."]


def as_random(rng) -> random.Random:
    """One way to turn a seed, a numpy Generator or a Random into a Random."""
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(0, 2**63 - 1)))
    return random.Random(rng)


def set_key(set_name) -> str:
    key = str(set_name or "").lower()
    return {"kvasir-seg": "kvasir", "bus-bra": "busbra"}.get(key, key)


def question_bank(set_name: str) -> list[str]:
    """The plain questions for a set; unknown sets get the generic bank."""
    return PLAIN.get(set_key(set_name), GENERIC)


def sample_question(set_name: str, labels: dict | None = None, rng=None) -> str:
    """One plain question for a single scan of this set (`labels` are not used: questions never name them)."""
    return as_random(rng).choice(question_bank(set_name))


def kind_question(set_name: str, rng=None) -> str:
    """A question naming the kind of finding a set shows (also how an absent kind is asked for)."""
    return as_random(rng).choice(BY_KIND).format(kind=KINDS[set_key(set_name)][0])


def worded_question(set_name: str, rng=None) -> str:
    """A question naming the set's kind of finding in any wording users give it (plain or qualified):
    training's question for a present finding as well as for an absent one."""
    return as_random(rng).choice(BY_KIND + QUALIFIED).format(kind=KINDS[set_key(set_name)][0])


def place_question(place: str, rng=None) -> str:
    return as_random(rng).choice(BY_PLACE).format(place=place)


def size_question(set_name: str, larger: bool, rng=None) -> str:
    kind, kinds = KINDS[set_key(set_name)]
    return as_random(rng).choice(BY_SIZE).format(which="larger" if larger else "smaller", kind=kind, kinds=kinds)


def all_question(rng=None) -> str:
    return as_random(rng).choice(ALL)


SUGGESTIONS: dict[str, list[str]] = {
    "ultrasound": [
        "Segment the mass in this ultrasound.",
        "Where is the lesion? Find it and identify its boundaries.",
        "Outline the hypoechoic lesion.",
        "Outline the suspicious breast mass.",
    ],
    "endoscopy": [
        "Outline the polyp.",
        "Find the polyp and mark its extent.",
        "Where is the lesion? Find it and identify its boundaries.",
        "Segment the raised lesion on the mucosa.",
    ],
    "dermoscopy": [
        "Using this image, outline the pigmented lesion.",
        "Outline the pigmented lesion and its border.",
        "Where is the lesion? Find it and identify its boundaries.",
        "Segment the skin lesion.",
    ],
    "ct": [
        "Locate and segment the lesion in this CT slice.",
        "Where is the tumour? Find it and identify its boundaries.",
        "Outline the hypodense lesion.",
        "Segment the most suspicious finding.",
    ],
    "mr": [
        "Locate and segment the lesion in this MR image.",
        "Where is the tumour? Find it and identify its boundaries.",
        "Outline the peritumoral oedema.",
        "Segment the abnormal signal region.",
    ],
    "xray": [
        "Where is the lesion on this radiograph? Outline it.",
        "Segment the bone lesion.",
        "Locate and segment the opacity.",
        "Find the abnormal region and mark its extent.",
    ],
    "mammography": [
        "Segment the mass on this mammogram.",
        "Outline the suspicious density.",
        "Where is the lesion? Find it and identify its boundaries.",
    ],
    "generic": GENERIC[:4],
}

_MODALITY_ALIASES = {
    "us": "ultrasound", "ultrasound": "ultrasound", "ultrasonography": "ultrasound", "sonography": "ultrasound",
    "echo": "ultrasound",
    "es": "endoscopy", "endoscopy": "endoscopy", "colonoscopy": "endoscopy", "gastroscopy": "endoscopy",
    "dermoscopy": "dermoscopy", "dermatoscopy": "dermoscopy", "dermatology": "dermoscopy", "xc": "dermoscopy",
    "ct": "ct", "computed tomography": "ct",
    "mr": "mr", "mri": "mr", "magnetic resonance": "mr",
    "cr": "xray", "dx": "xray", "xr": "xray", "x-ray": "xray", "xray": "xray", "radiograph": "xray",
    "radiography": "xray",
    "mg": "mammography", "mammography": "mammography", "mammogram": "mammography",
}


def normalise_modality(modality: str | None) -> str:
    """A DICOM code or a word ("US", "MRI", "colonoscopy") → a key of SUGGESTIONS ("generic" if unknown)."""
    return _MODALITY_ALIASES.get(str(modality or "").strip().lower(), "generic")


def suggested_questions(modality: str | None) -> list[str]:
    """Questions the UI offers for an image of this modality."""
    return list(SUGGESTIONS[normalise_modality(modality)])

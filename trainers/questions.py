"""Question banks: the short clinical requests a sample is paired with, and the UI's suggestions.

Plain questions name the target; implicit ones ask for it through what its labels say ("the breast mass
that most warrants a biopsy"), so the model must reason about the finding, as the paper's hard cases do.
Implicit questions are only drawn when the labels support them (a BI-RADS category three mass is
never asked for as "the mass that most warrants a biopsy").
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


def _implicit(set_name: str, labels: dict) -> list[str]:
    """Questions that only make sense given these labels (empty when the labels say nothing)."""
    labels = labels or {}
    if set_name == "busbra":
        birads, pathology = labels.get("birads"), labels.get("pathology")
        questions = [
            "Find the finding a radiologist would describe in the report and outline it.",
            "Which region of this breast scan is abnormal? Segment it.",
        ]
        if birads is not None and birads >= 4:
            questions += [
                "Segment the breast mass that most warrants a biopsy.",
                "Outline the suspicious lesion that needs tissue sampling.",
                "Find the mass with suspicious features and mark its extent.",
            ]
        elif birads is not None:
            questions += [
                "Outline the mass that looks probably benign.",
                "Segment the lesion that can be followed up rather than biopsied.",
            ]
        if pathology == "malignant":
            questions += ["Locate the breast cancer and outline it.", "Segment the malignant tumour in this scan."]
        elif pathology == "benign":
            questions += ["Segment the benign breast lesion."]
        if labels.get("histology") == "cyst":
            questions += ["Outline the cyst."]
        if labels.get("histology") == "fibroadenoma":
            questions += ["Segment the fibroadenoma."]
        return questions
    if set_name == "kvasir":
        return [
            "Find the polyp that should be removed and mark its extent.",
            "Outline the lesion an endoscopist would resect.",
            "Which part of the colon wall is abnormal? Segment it.",
            "Segment the growth that protrudes from the mucosa.",
        ]
    if set_name == "ph2":
        diagnosis = labels.get("diagnosis")
        questions = [
            "Is the pigmented lesion suspicious for melanoma? Outline it.",
            "Outline the lesion and judge whether it needs a biopsy.",
            "Segment the lesion and assess its dermoscopic features.",
        ]
        if diagnosis == 2:
            questions += ["Segment the melanoma.", "Outline the lesion that should be excised."]
        elif diagnosis == 1:
            questions += ["Outline the atypical mole.", "Segment the lesion that needs follow-up."]
        elif diagnosis == 0:
            questions += ["Outline the common mole."]
        return questions
    return []


def _as_random(rng) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(0, 2**63 - 1)))
    return random.Random(rng)


def question_bank(set_name: str, labels: dict | None = None) -> tuple[list[str], list[str]]:
    """(plain, implicit) questions for a set and its labels; unknown sets get the generic bank."""
    key = str(set_name).lower()
    key = {"kvasir-seg": "kvasir", "bus-bra": "busbra"}.get(key, key)
    return PLAIN.get(key, GENERIC), _implicit(key, labels or {})


def sample_question(set_name: str, labels: dict | None, rng=None, implicit_share: float = 0.4) -> str:
    """One question: implicit (label-aware) with probability `implicit_share` when the labels allow it."""
    rng = _as_random(rng)
    plain, implicit = question_bank(set_name, labels)
    if implicit and rng.random() < implicit_share:
        return rng.choice(implicit)
    return rng.choice(plain)


SUGGESTIONS: dict[str, list[str]] = {
    "ultrasound": [
        "Segment the mass in this ultrasound.",
        "Where is the lesion? Find it and identify its boundaries.",
        "Outline the hypoechoic lesion.",
        "Segment the breast mass that most warrants a biopsy.",
    ],
    "endoscopy": [
        "Outline the polyp.",
        "Find the polyp that should be removed and mark its extent.",
        "Where is the lesion? Find it and identify its boundaries.",
        "Segment the raised lesion on the mucosa.",
    ],
    "dermoscopy": [
        "Using this image, outline the pigmented lesion.",
        "Is the pigmented lesion suspicious for melanoma? Outline it.",
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

"""Reasoning chains built from what can be measured on an image and its mask, and a checker for them.

`describe_lesion` measures a mask (and the image under it) and names what it finds in words;
`build_reasoning` turns those facts and the set's labels into a varied `<think>` text in the paper's
order (normal appearance first, then how the lesion differs, then a conclusion); `check_statements`
reads a reasoning text (ours or a model's) back and says whether its location, size, shape and
conclusion agree with the truth. Builder and checker share one vocabulary table (`VOCAB`), so what one
writes the other reads.

Reasoning texts never hold a digit (the paper keeps coordinates out of the reasoning; `parse_answer`
rejects digit pairs inside <think>): numbers are spelled out ("BI-RADS category four").

Measurements and thresholds (all on the mask at its original size):

* location: the centroid of the whole mask in a 3×3 grid of the image → "upper left" … "central" …
  "lower right".
* size: mask area / image area; small < 2 %, moderate < 10 %, large < 30 %, very large otherwise.
* shape (largest part, upsampled to about a hundred pixels across when smaller): solidity = pixels /
  pixels of the filled convex hull, axis ratio = minor / major axis of the
  moment ellipse (the ellipse with the mask's second moments), roughness = perimeter of the contour
  (simplified to within one pixel) / hull perimeter. irregular when solidity < 0.85 or roughness > 1.25; lobulated when solidity < 0.93; else
  round when axis ratio ≥ 0.85, oval otherwise.
* margin: bands by distance to the boundary, d = max(2, 4 % of the equivalent diameter) pixels.
  near contrast = |mean(inside, ≤ d) − mean(outside, ≤ d)|, far contrast = the same for the bands
  d … 3d. sharp when the near contrast keeps ≥ 50 % of the far contrast (the step happens at the
  boundary, not over many pixels) and the far contrast is ≥ 0.3 image standard deviations; else indistinct.
* intensity: mean grey inside vs the ring 3d outside, in image standard deviations: darker < −0.2,
  lighter > 0.2, else similar (ultrasound: hypoechoic / hyperechoic / isoechoic).
* colour (RGB images only): the lesion's median colour named from HSV; skin words (brown, dark brown,
  pink, blue-grey …) by default, mucosa words (red, pink, pale, yellowish …) for endoscopy.
* orientation: the largest part's box: wider than (or as wide as) tall → "parallel", else "taller-than-wide".
* parts and boxes: 8-connected parts of ≥ 20 px (the largest always counts), boxes via `mask_box`,
  exclusive ends, largest part first.
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from coreseg.answer import render_answer
from coreseg.metrics import mask_box

MIN_PART = 20
SHAPE_MIN_DIAMETER = 100  # px: smaller parts are upsampled (up to 8×) before the shape is measured
SIZE_LIMITS = (("small", 0.02), ("moderate", 0.10), ("large", 0.30), ("very large", float("inf")))
SOLIDITY_IRREGULAR, SOLIDITY_LOBULATED, ROUGHNESS_IRREGULAR, ROUND_AXIS_RATIO = 0.85, 0.93, 1.25, 0.85
MARGIN_KEEP, MARGIN_MIN_CONTRAST, INTENSITY_DELTA = 0.50, 0.30, 0.20

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
    "pathology": {
        "benign": ["benign"],
        "malignant": ["malignant", "malignancy"],
    },
    "diagnosis": {  # PH2 clinical diagnosis, codes as in PH2_dataset.txt
        "common nevus": ["common nevus", "common naevus", "benign nevus", "typical nevus"],
        "atypical nevus": ["atypical nevus", "atypical naevus", "dysplastic nevus", "dysplastic naevus"],
        "melanoma": ["melanoma"],
    },
    "removal": {"yes": ["removal", "removed", "resection", "resected", "polypectomy", "excision"]},
}
IMPLIED_MALIGNANT = ["carcinoma", "cancer", "sarcoma", "lymphoma"]  # read only when no pathology word is stated
ECHO_OF = {"darker": "hypoechoic", "similar": "isoechoic", "lighter": "hyperechoic"}
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


def spell_digits(text: str) -> str:
    """Every run of digits written as words (labels are free text; reasoning must hold no digit)."""
    return re.sub(r"\d+", lambda m: number_words(int(m.group())), str(text))


def _words_to_int(word: str) -> int | None:
    word = word.lower()
    if word.isdigit():
        return int(word)
    return _ONES.index(word) if word in _ONES else None


# --------------------------------------------------------------------------------------------- facts
@dataclass
class LesionFacts:
    """What the mask (and the image under it) shows, in numbers and in the vocabulary's words."""

    height: int
    width: int
    area: int                      # mask pixels
    centroid: tuple[float, float]  # (x, y) as fractions of width, height
    location: str                  # key of VOCAB["location"]
    size_fraction: float           # area / image area
    size: str                      # key of VOCAB["size"]
    solidity: float
    axis_ratio: float
    roughness: float
    shape: str                     # key of VOCAB["shape"]
    margin_ratio: float            # near contrast / far contrast
    margin_contrast: float         # far contrast / image std
    margin: str                    # key of VOCAB["margin"]
    intensity_delta: float         # (inside − around) / image std
    intensity: str                 # darker | similar | lighter
    colour: str | None             # RGB images: the lesion's colour name; None for grey images
    colour_rgb: tuple[int, int, int] | None  # the lesion's median colour; None for grey images
    orientation: str               # parallel | taller-than-wide
    parts: int
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def echo(self) -> str:
        """Ultrasound wording of the intensity: hypoechoic | isoechoic | hyperechoic."""
        return ECHO_OF[self.intensity]


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] >= 3:
        return cv2.cvtColor(np.ascontiguousarray(image[..., :3]).astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    if image.ndim == 3:
        return image[..., 0].astype(np.float32)
    return image.astype(np.float32)


def _is_colour(image: np.ndarray) -> bool:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3:
        return False
    sample = image[::4, ::4, :3].astype(np.int16)
    return bool(np.abs(sample[..., 0] - sample[..., 1]).mean() + np.abs(sample[..., 1] - sample[..., 2]).mean() > 2)


def colour_name(rgb, modality: str | None = None) -> str:
    """A plain colour word for an RGB triple (0–255); endoscopy gets mucosa words, others skin words."""
    r, g, b = (float(v) for v in rgb[:3])
    hsv = cv2.cvtColor(np.uint8([[[r, g, b]]]), cv2.COLOR_RGB2HSV)[0, 0]
    hue, sat, val = float(hsv[0]) * 2.0, float(hsv[1]) / 255.0, float(hsv[2]) / 255.0
    if modality == "endoscopy":
        if val < 0.25:
            return "dark red"
        if sat < 0.25:
            return "whitish" if val > 0.75 else "pale"
        if hue >= 330 or hue < 25:
            return "red" if sat > 0.55 else "pink"
        if hue < 70:
            return "yellowish"
    if val < 0.18:
        return "black"
    if sat < 0.15:
        return "whitish" if val > 0.75 else "grey"
    if 180 <= hue < 270:
        return "blue-grey" if sat < 0.4 else "bluish"
    if 270 <= hue < 330:
        return "purplish"
    if 45 <= hue < 75:
        return "yellowish"
    if 75 <= hue < 180:
        return "greenish"
    if hue >= 330 or hue < 15:
        if val < 0.4:
            return "dark brown"
        return "pink" if sat < 0.5 and val > 0.6 else "red"
    if val < 0.4:  # orange-brown hues
        return "dark brown"
    if val < 0.7 or sat > 0.6:
        return "brown"
    return "light brown"


def _parts(mask: np.ndarray) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return [], []
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = [int(i) for i in np.argsort(-areas, kind="stable")]
    keep = [i for i in order if areas[i] >= MIN_PART] or order[:1]
    part_masks = [labels == (i + 1) for i in keep]
    boxes = [mask_box(m) for m in part_masks]
    return part_masks, boxes


def _shape(part: np.ndarray) -> tuple[float, float, float, str]:
    """(solidity, axis ratio, roughness, shape word) of one connected part."""
    ys, xs = np.nonzero(part)
    if xs.size >= 3:
        cov = np.cov(np.stack([xs, ys]).astype(np.float64))
        eig = np.sort(np.linalg.eigvalsh(cov))
        axis_ratio = float(np.sqrt(max(eig[0], 0.0) / eig[1])) if eig[1] > 0 else 1.0
    else:
        axis_ratio = 1.0
    # small parts are measured on a smoothly upsampled copy, so pixel staircases do not read as concavities
    diameter = float(np.sqrt(4.0 * xs.size / np.pi))
    scale = int(np.clip(np.ceil(SHAPE_MIN_DIAMETER / max(diameter, 1.0)), 1, 8))
    x0, y0 = max(int(xs.min()) - 2, 0), max(int(ys.min()) - 2, 0)
    part = part[y0:int(ys.max()) + 3, x0:int(xs.max()) + 3]
    if scale > 1:
        big = cv2.resize(np.pad(part, 2).astype(np.float32), None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        smooth_part = cv2.GaussianBlur(big, (0, 0), 0.6 * scale) > 0.5
        part = smooth_part if smooth_part.any() else part  # a speck of a few pixels blurs away: keep it
    contours, _ = cv2.findContours(part.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    hull = cv2.convexHull(contour)
    # pixel counts (not polygon areas), so that small digital discs still count as convex
    filled = np.zeros(part.shape, np.uint8)
    cv2.fillConvexPoly(filled, hull, 1)
    hull_pixels = int(np.count_nonzero(filled | part))
    solidity = float(part.sum()) / hull_pixels if hull_pixels else 1.0
    hull_perimeter = float(cv2.arcLength(hull, True))
    # a smoothed contour, so pixel staircases do not count as roughness
    smooth = cv2.approxPolyDP(contour, 1.0, True)
    roughness = float(cv2.arcLength(smooth, True)) / hull_perimeter if hull_perimeter > 0 else 1.0
    if solidity < SOLIDITY_IRREGULAR or roughness > ROUGHNESS_IRREGULAR:
        word = "irregular"
    elif solidity < SOLIDITY_LOBULATED:
        word = "lobulated"
    else:
        word = "round" if axis_ratio >= ROUND_AXIS_RATIO else "oval"
    return float(solidity), axis_ratio, roughness, word


def _bands(mask: np.ndarray):
    m8 = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m8, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - m8, cv2.DIST_L2, 5)
    return inside, outside


def _mean(values: np.ndarray, where: np.ndarray) -> float | None:
    return float(values[where].mean()) if where.any() else None


def describe_lesion(image: np.ndarray, mask: np.ndarray, modality: str | None = None) -> LesionFacts:
    """Measure a lesion: `image` H×W or H×W×3 (uint8), `mask` H×W (bool or 0/1/255).

    `modality` only picks the colour words ("endoscopy": mucosa words; otherwise skin words).
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    height, width = mask.shape
    if np.asarray(image).shape[:2] != mask.shape:
        raise ValueError(f"image {np.asarray(image).shape[:2]} and mask {mask.shape} differ in size")
    area = int(mask.sum())
    if area == 0:
        raise ValueError("the mask is empty: nothing to describe")
    grey = _grey(image)
    std = float(grey.std()) + 1e-6

    ys, xs = np.nonzero(mask)
    cx, cy = (float(xs.mean()) + 0.5) / width, (float(ys.mean()) + 0.5) / height
    row, col = min(int(cy * 3), 2), min(int(cx * 3), 2)
    location = "central" if (row, col) == (1, 1) else f"{ROWS[row]} {COLUMNS[col]}"

    fraction = area / float(height * width)
    size = next(word for word, limit in SIZE_LIMITS if fraction < limit)

    part_masks, boxes = _parts(mask)
    solidity, axis_ratio, roughness, shape = _shape(part_masks[0])
    x1, y1, x2, y2 = boxes[0]
    orientation = "parallel" if (x2 - x1) >= (y2 - y1) else "taller-than-wide"

    d = max(2.0, 0.04 * np.sqrt(4.0 * area / np.pi))
    inside, outside = _bands(mask)
    near_in, near_out = (inside > 0) & (inside <= d), (outside > 0) & (outside <= d)
    far_in, far_out = (inside > d) & (inside <= 3 * d), (outside > d) & (outside <= 3 * d)
    values = [_mean(grey, w) for w in (near_in, near_out, far_in, far_out)]
    if values[2] is None:  # a thin lesion: no far band inside, use the whole inside
        values[2] = values[0]
    if values[3] is None:
        values[3] = values[1]
    if None in values:  # the lesion fills the image: no outside to compare with
        near, far = 0.0, 0.0
    else:
        near, far = abs(values[0] - values[1]), abs(values[2] - values[3])
    margin_ratio = near / far if far > 1e-6 else 0.0
    margin_contrast = far / std
    margin = "sharp" if margin_ratio >= MARGIN_KEEP and margin_contrast >= MARGIN_MIN_CONTRAST else "indistinct"

    around = (outside > 0) & (outside <= 3 * d)
    around_mean = _mean(grey, around)
    delta = 0.0 if around_mean is None else (float(grey[mask].mean()) - around_mean) / std
    intensity = "darker" if delta < -INTENSITY_DELTA else "lighter" if delta > INTENSITY_DELTA else "similar"

    colour, colour_rgb = None, None
    if _is_colour(image):
        colour_rgb = tuple(int(v) for v in np.median(np.asarray(image)[mask][:, :3], axis=0))
        colour = colour_name(colour_rgb, modality)

    return LesionFacts(
        height=height, width=width, area=area, centroid=(round(cx, 4), round(cy, 4)), location=location,
        size_fraction=round(fraction, 5), size=size, solidity=round(solidity, 4), axis_ratio=round(axis_ratio, 4),
        roughness=round(roughness, 4), shape=shape, margin_ratio=round(float(margin_ratio), 4),
        margin_contrast=round(float(margin_contrast), 4), margin=margin, intensity_delta=round(float(delta), 4),
        intensity=intensity, colour=colour, colour_rgb=colour_rgb, orientation=orientation, parts=len(boxes),
        boxes=[tuple(int(v) for v in b) for b in boxes],
    )


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


from trainers.questions import _as_random  # noqa: E402  (one way to turn a seed or generator into a Random)


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


def _percent_words(fraction: float) -> str:
    pct = int(round(100 * fraction))
    return "less than one percent" if pct < 1 else f"about {number_words(pct)} percent"


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


def _conclusion(set_key: str, labels: dict, rng: random.Random) -> str:
    labels = labels or {}
    if set_key == "busbra":
        birads, pathology, histology = labels.get("birads"), labels.get("pathology"), labels.get("histology")
        sentences = []
        if birads is not None:
            category = f"BI-RADS category {number_words(int(birads))}"
            sentences.append(rng.choice([
                f"These features place it in {category}.",
                f"Overall this is {_a(category)} finding.",
                f"The appearance corresponds to {category}.",
            ]))
        if pathology in ("benign", "malignant"):
            word = rng.choice(_written("pathology", pathology))
            if histology:
                sentences.append(rng.choice([
                    f"Biopsy showed {_a(histology)}, a {word} lesion.",
                    f"Histology confirmed {_a(histology)}, which is {word}.",
                    f"The pathology is {word}: {_a(histology)}.",
                ]))
            else:
                sentences.append(f"The pathology is {word}.")
        return " ".join(sentences)
    if set_key == "kvasir":
        return rng.choice([
            "This is a polyp that should be considered for removal.",
            "The finding is a colonic polyp and it should be considered for removal.",
            "It is a polyp, a candidate for endoscopic removal.",
            "Such a polyp should be considered for polypectomy and removed.",
        ])
    if set_key == "ph2":
        diagnosis = labels.get("diagnosis")
        criteria = _criteria_sentence(labels, rng)
        if diagnosis not in PH2_DIAGNOSIS_KEYS:
            return criteria
        name = rng.choice(_written("diagnosis", PH2_DIAGNOSIS_KEYS[diagnosis]))
        verdict = rng.choice([
            f"The picture is most consistent with {_a(name)}.",
            f"Taken together, this is {_a(name)}.",
            f"The lesion is {_a(name)}.",
        ])
        return (criteria + " " + verdict).strip()
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
    share = _percent_words(float(_fact(facts, "size_fraction")))
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
    shape_why = {"round": "smooth and about as long in every direction", "oval": "smooth and elongated",
                 "lobulated": "with gentle undulations of its contour",
                 "irregular": "with an uneven, angulated contour"}[_fact(facts, "shape")]
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
        if _fact(facts, "orientation") == "parallel":
            out.append(rng.choice(["Its long axis runs parallel to the skin, so it is wider than tall.",
                                   "It is oriented parallel to the skin, wider than tall."]))
        else:
            out.append(rng.choice(["It is taller than wide, not parallel to the skin, a suspicious orientation.",
                                   "Its orientation is not parallel to the skin: it is taller than wide."]))

    parts = int(_fact(facts, "parts"))
    if parts > 1:
        out.append(rng.choice([f"It consists of {number_words(parts)} separate parts.",
                               f"The finding is split into {number_words(parts)} separate parts."]))
    elif rng.random() < 0.4:
        out.append(rng.choice(["It forms a single connected region.", "It is one continuous region."]))

    conclusion = _conclusion(key, labels or {}, rng)
    if conclusion:
        out.append(conclusion)
    return spell_digits(" ".join(out))


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
    from trainers.questions import sample_question

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


# --------------------------------------------------------------------------------------------- reading
_NEGATION = re.compile(r"\b(?:no|not|without|non|rather than|rules? out|excludes?)\W+(?:\w+\W+){0,2}$", re.I)
_ROW_ONLY = {"upper": "upper", "top": "upper", "lower": "lower", "bottom": "lower"}
_COLUMN_ONLY = {"left": "left", "left-hand": "left", "right": "right", "right-hand": "right"}


def _alternation(phrases) -> str:
    return "|".join(re.escape(p) for p in sorted(set(phrases), key=len, reverse=True))


def _first(text: str, table: dict[str, list[str]], suffix: str = "", skip_negated: bool = False) -> str | None:
    """The key of the first phrase of `table` found in `text` (word-bounded, longest phrase first)."""
    owner = {p.lower(): k for k, phrases in table.items() for p in phrases}
    pattern = re.compile(rf"\b({_alternation(owner)})\b{suffix}", re.I)
    for match in pattern.finditer(text):
        if skip_negated and _NEGATION.search(text[:match.start()]):
            continue
        return owner[match.group(1).lower()]
    return None


def _location_of(key: str) -> tuple[str, str]:
    if key == "central":
        return "middle", "central"
    row, col = key.split(" ")
    return row, col


def read_location(text: str) -> tuple[str | None, str | None] | None:
    """(row, column) the text states, either may be None for a half statement ("upper part"); None if none."""
    cells = {}
    for key, phrases in VOCAB["location"].items():
        for p in phrases:
            cells[p.lower()] = _location_of(key)
    for p, row in _ROW_ONLY.items():
        cells.setdefault(p, (row, None))
    for p, col in _COLUMN_ONLY.items():
        cells.setdefault(p, (None, col))
    words = _alternation(cells)
    pattern = re.compile(
        rf"\b({words})\s+(?:{_LOCATION_NOUNS}|half|corner)\b"
        rf"|\b({words})\s+(?:of|in)\s+(?:the\s+)?{_FIELD_NOUNS}\b"
        rf"|\bin\s+the\s+(centre|center|middle)\b(?!\s*(?:left|right|-))", re.I)
    match = pattern.search(text)
    if match is None:
        return None
    phrase = next(g for g in match.groups() if g)
    return cells[phrase.lower()]


def read_statements(text: str) -> dict:
    """What a reasoning text states, in the vocabulary's keys (None where it states nothing)."""
    size = _first(text, VOCAB["size"], suffix=r"(?!\s+(?:bowel|intestine))")
    birads = re.search(r"\bBI-?RADS\W+(?:category\W+)?(\w+)", text, re.I)
    pathology = _first(text, VOCAB["pathology"], skip_negated=True)
    if pathology is None:  # no explicit word: a named cancer still states malignancy
        pathology = _first(text, {"malignant": IMPLIED_MALIGNANT}, skip_negated=True)
    return {
        "location": read_location(text),
        "size": size,
        "shape": _first(text, VOCAB["shape"]),
        "margin": _first(text, VOCAB["margin"]),
        "birads": _words_to_int(birads.group(1)) if birads else None,
        "pathology": pathology,
        "diagnosis": _first(text, VOCAB["diagnosis"], skip_negated=True),
        "removal": _first(text, VOCAB["removal"], skip_negated=True) is not None,
        "polyp": re.search(r"\bpolyps?\b", text, re.I) is not None,
    }


def check_statements(text: str, facts, set_name: str | None = None, labels: dict | None = None) -> dict[str, bool]:
    """Whether the text's location, size word, shape word (and, for a known set with labels, its
    conclusion) agree with the truth. A statement the text does not make counts as False.

    `facts` is a LesionFacts or its dict (as in build_sample's "facts"). Conclusion rules: BUS-BRA, the
    pathology word must match and a stated BI-RADS category must match; PH2, the diagnosis must match;
    Kvasir-SEG, the text must name a polyp and its removal.
    """
    said = read_statements(text or "")
    result = {}
    location = said["location"]
    truth_row, truth_col = _location_of(_fact(facts, "location"))
    result["location"] = location is not None and (location[0] in (None, truth_row)) and (location[1] in (None, truth_col))
    result["size"] = said["size"] == _fact(facts, "size")
    result["shape"] = said["shape"] == _fact(facts, "shape")
    key, labels = _set_key(set_name), labels or {}
    if key == "busbra" and labels.get("pathology") in ("benign", "malignant"):
        ok = said["pathology"] == labels["pathology"]
        if said["birads"] is not None and labels.get("birads") is not None:
            ok = ok and said["birads"] == int(labels["birads"])
        result["conclusion"] = ok
    elif key == "ph2" and labels.get("diagnosis") in PH2_DIAGNOSIS_KEYS:
        result["conclusion"] = said["diagnosis"] == PH2_DIAGNOSIS_KEYS[labels["diagnosis"]]
    elif key == "kvasir":
        result["conclusion"] = said["polyp"] and said["removal"]
    return result

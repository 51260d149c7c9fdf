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
* shape (largest part): solidity = contour area / convex-hull area, axis ratio = minor / major axis of the
  moment ellipse (the ellipse with the mask's second moments), roughness = contour perimeter / hull
  perimeter. irregular when solidity < 0.85 or roughness > 1.25; lobulated when solidity < 0.93; else
  round when axis ratio ≥ 0.85, oval otherwise.
* margin: bands by distance to the boundary, d = max(2, 4 % of the equivalent diameter) pixels.
  near contrast = |mean(inside, ≤ d) − mean(outside, ≤ d)|, far contrast = the same for the bands
  d … 3d. sharp when the near contrast keeps ≥ 60 % of the far contrast (the step happens at the
  boundary, not over many pixels) and the far contrast is ≥ 0.3 image standard deviations; else indistinct.
* intensity: mean grey inside vs the ring 3d outside, in image standard deviations: darker < −0.2,
  lighter > 0.2, else similar (ultrasound: hypoechoic / hyperechoic / isoechoic).
* colour (RGB images only): the lesion's median colour named from HSV (dark brown, pink, …).
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
SIZE_LIMITS = (("small", 0.02), ("moderate", 0.10), ("large", 0.30), ("very large", float("inf")))
SOLIDITY_IRREGULAR, SOLIDITY_LOBULATED, ROUGHNESS_IRREGULAR, ROUND_AXIS_RATIO = 0.85, 0.93, 1.25, 0.85
MARGIN_KEEP, MARGIN_MIN_CONTRAST, INTENSITY_DELTA = 0.60, 0.30, 0.20

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
        "malignant": ["malignant", "malignancy", "carcinoma", "cancer"],
    },
    "diagnosis": {  # PH2 clinical diagnosis, codes as in PH2_dataset.txt
        "common nevus": ["common nevus", "common naevus", "benign nevus", "typical nevus"],
        "atypical nevus": ["atypical nevus", "atypical naevus", "dysplastic nevus", "dysplastic naevus"],
        "melanoma": ["melanoma"],
    },
    "removal": {"yes": ["removal", "removed", "resection", "resected", "polypectomy", "excision"]},
}
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


def colour_name(rgb) -> str:
    """A plain colour word for an RGB triple (0–255), tuned to skin and mucosa tones."""
    r, g, b = (float(v) for v in rgb[:3])
    hsv = cv2.cvtColor(np.uint8([[[r, g, b]]]), cv2.COLOR_RGB2HSV)[0, 0]
    hue, sat, val = float(hsv[0]) * 2.0, float(hsv[1]) / 255.0, float(hsv[2]) / 255.0
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
    # orange-brown hues
    if val < 0.4:
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
    contours, _ = cv2.findContours(part.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    hull = cv2.convexHull(contour)
    hull_area, area = float(cv2.contourArea(hull)), float(cv2.contourArea(contour))
    solidity = area / hull_area if hull_area > 0 else 1.0
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


def _bands(mask: np.ndarray, d: float):
    m8 = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m8, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - m8, cv2.DIST_L2, 5)
    return inside, outside


def _mean(values: np.ndarray, where: np.ndarray) -> float | None:
    return float(values[where].mean()) if where.any() else None


def describe_lesion(image: np.ndarray, mask: np.ndarray) -> LesionFacts:
    """Measure a lesion: `image` H×W or H×W×3 (uint8), `mask` H×W (bool or 0/1/255)."""
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
    inside, outside = _bands(mask, d)
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

    colour = None
    if _is_colour(image):
        colour = colour_name(np.median(np.asarray(image)[mask][:, :3], axis=0))

    return LesionFacts(
        height=height, width=width, area=area, centroid=(round(cx, 4), round(cy, 4)), location=location,
        size_fraction=round(fraction, 5), size=size, solidity=round(solidity, 4), axis_ratio=round(axis_ratio, 4),
        roughness=round(roughness, 4), shape=shape, margin_ratio=round(float(margin_ratio), 4),
        margin_contrast=round(float(margin_contrast), 4), margin=margin, intensity_delta=round(float(delta), 4),
        intensity=intensity, colour=colour, orientation=orientation, parts=len(boxes),
        boxes=[tuple(int(v) for v in b) for b in boxes],
    )

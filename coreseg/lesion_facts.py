"""Measuring a lesion: what a mask (and the image under it) shows, in numbers and in words.

Used to write training reasoning (`trainers.reasoning`) and to check any answer's claims against a mask
(`coreseg.findings`): one measurement for writer and checker. `measure_mask` reads the mask alone (location,
size, shape, orientation, parts: what answers are checked on); `describe_lesion` adds margin, intensity and colour
from the pixels under it. Parts and boxes come from the one mask → boxes rule, `coreseg.mask_boxes`.

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
* parts and boxes: `coreseg.mask_boxes.lesion_parts` (largest first, exclusive ends).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from coreseg.mask_boxes import lesion_parts

SHAPE_MIN_DIAMETER = 100  # px: smaller parts are upsampled (up to 8×) before the shape is measured
SIZE_LIMITS = (("small", 0.02), ("moderate", 0.10), ("large", 0.30), ("very large", float("inf")))
SOLIDITY_IRREGULAR, SOLIDITY_LOBULATED, ROUGHNESS_IRREGULAR, ROUND_AXIS_RATIO = 0.85, 0.93, 1.25, 0.85
MARGIN_KEEP, MARGIN_MIN_CONTRAST, INTENSITY_DELTA = 0.50, 0.30, 0.20

ROWS, COLUMNS = ("upper", "middle", "lower"), ("left", "central", "right")
THUMB = 384  # px: lesions are measured on an aspect-preserving copy with this longest side

ECHO_OF = {"darker": "hypoechoic", "similar": "isoechoic", "lighter": "hyperechoic"}


@dataclass
class MaskFacts:
    """What the mask alone shows (no pixels needed): where, how large, what shape, how many parts. The facts an
    answer's claims are checked on (`coreseg.findings`)."""

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
    orientation: str               # parallel | taller-than-wide
    parts: int
    boxes: list[tuple[int, int, int, int]]


@dataclass
class LesionFacts(MaskFacts):
    """What the mask and the image under it show, in numbers and in the vocabulary's words."""

    margin_ratio: float            # near contrast / far contrast
    margin_contrast: float         # far contrast / image std
    margin: str                    # key of VOCAB["margin"]
    intensity_delta: float         # (inside − around) / image std
    intensity: str                 # darker | similar | lighter
    colour: str | None             # RGB images: the lesion's median colour name; None for grey images
    colour_rgb: tuple[int, int, int] | None  # the lesion's median colour; None for grey images

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


def measure_mask(mask: np.ndarray) -> MaskFacts:
    """Location, size, shape, orientation and parts of a non-empty mask H×W (bool or 0/1/255)."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    height, width = mask.shape
    area = int(mask.sum())
    if area == 0:
        raise ValueError("the mask is empty: nothing to describe")
    ys, xs = np.nonzero(mask)
    cx, cy = (float(xs.mean()) + 0.5) / width, (float(ys.mean()) + 0.5) / height
    row, col = min(int(cy * 3), 2), min(int(cx * 3), 2)
    location = "central" if (row, col) == (1, 1) else f"{ROWS[row]} {COLUMNS[col]}"
    fraction = area / float(height * width)
    size = next(word for word, limit in SIZE_LIMITS if fraction < limit)
    part_masks, boxes = lesion_parts(mask)
    solidity, axis_ratio, roughness, shape = _shape(part_masks[0])
    x1, y1, x2, y2 = boxes[0]
    orientation = "parallel" if (x2 - x1) >= (y2 - y1) else "taller-than-wide"
    return MaskFacts(
        height=height, width=width, area=area, centroid=(round(cx, 4), round(cy, 4)), location=location,
        size_fraction=round(fraction, 5), size=size, solidity=round(solidity, 4), axis_ratio=round(axis_ratio, 4),
        roughness=round(roughness, 4), shape=shape, orientation=orientation, parts=len(boxes),
        boxes=[tuple(int(v) for v in b) for b in boxes])


def describe_lesion(image: np.ndarray, mask: np.ndarray, modality: str | None = None) -> LesionFacts:
    """Measure a lesion: `image` H×W or H×W×3 (uint8), `mask` H×W (bool or 0/1/255): `measure_mask` plus
    margin, intensity and colour from the pixels.

    `modality` only picks the colour words ("endoscopy": mucosa words; otherwise skin words).
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if np.asarray(image).shape[:2] != mask.shape:
        raise ValueError(f"image {np.asarray(image).shape[:2]} and mask {mask.shape} differ in size")
    shape_facts = measure_mask(mask)
    area = shape_facts.area
    grey = _grey(image)
    std = float(grey.std()) + 1e-6

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
        **vars(shape_facts), margin_ratio=round(float(margin_ratio), 4), margin_contrast=round(float(margin_contrast), 4),
        margin=margin, intensity_delta=round(float(delta), 4), intensity=intensity, colour=colour,
        colour_rgb=colour_rgb)


def thumbnail(image: np.ndarray | None, mask: np.ndarray, side: int = THUMB) -> tuple[np.ndarray | None, np.ndarray]:
    """An aspect-preserving copy of image and mask with longest side `side` (unchanged when smaller):
    where lesions are measured, for training texts and for checking answers alike (`image` None: the mask only)."""
    scale = side / max(mask.shape[:2])
    if scale >= 1:
        return image, mask
    size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
    small = None if image is None else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return small, small_mask

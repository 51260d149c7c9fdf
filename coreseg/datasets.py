"""Reading the labelled lesion sets (BUS-BRA, Kvasir-SEG, PH2) and any user folder of image/mask pairs.

The data live outside the project (see `shared/data/README.md`): every function takes the folder as an
argument; `resolve_data_dir(None)` falls back to the `CORESEG_DATA` environment variable.

Fixed splits (keep numbers comparable across the project):

* BUS-BRA: `kFold` 1–3 of `5-fold-cv.csv` = train, `kFold` 4 = val (patient-level folds); images that
  the fold file does not list (or lists in fold 5) are only in `all`.
* Kvasir-SEG: ids sorted by name, the last 100 = val, the rest = train.
* PH2: ids sorted by name, index % 5 == 4 = val, the rest = train.

Split rules apply to the pairs present on disk (an image counts only if its mask is there too).

Masks: `read_mask` always converts to 8-bit grey first (BUS-BRA masks are 1-bit PNGs, where a `> 127`
test on the raw booleans gives empty masks), thresholds at 127 (or at 0 for label maps whose maximum is
below 128) and, for JPEG masks (Kvasir-SEG), drops connected specks under `MIN_SPECK` pixels, which are
compression artefacts that would stretch a lesion's box to the image edge.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from coreseg.scan_io import read_scan

DATA_ENV = "CORESEG_DATA"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_SPECK = 20  # pixels: connected parts of a JPEG mask smaller than this are artefacts
SPLITS = ("train", "val", "all")
DEV_EVERY = 20  # every 20th training case is held out to choose checkpoints on: the val split never chooses

# Mask stems that differ from the image stem: prefixes / suffixes seen in public sets (matched case-insensitively).
_MASK_PREFIXES = ("mask_", "masks_", "seg_", "gt_", "label_", "bus_")
_MASK_SUFFIXES = ("_lesion", "_mask", "_masks", "_segmentation", "_seg", "_gt", "_label", "_labels", "-mask", "_anno")


@dataclass(frozen=True)
class SetInfo:
    """What the project knows about one labelled set."""

    name: str        # key in SETS
    folder: str      # folder under the data directory
    modality: str    # "ultrasound" | "endoscopy" | "dermoscopy"
    target: str      # the noun the answer names ("The {target} is located at …")
    region: str      # body region, for the UI and the reasoning's normal-anatomy sentence


SETS: dict[str, SetInfo] = {
    "busbra": SetInfo("busbra", "busbra", "ultrasound", "breast mass", "breast"),
    "kvasir": SetInfo("kvasir", "kvasir-seg", "endoscopy", "polyp", "colon"),
    "ph2": SetInfo("ph2", "ph2", "dermoscopy", "pigmented skin lesion", "skin"),
}
_ALIASES = {"bus-bra": "busbra", "bus_bra": "busbra", "kvasir-seg": "kvasir", "kvasirseg": "kvasir", "kvasir_seg": "kvasir"}


@dataclass(frozen=True)
class LabelledImage:
    """One image/mask pair with the labels its set ships beside it.

    labels: BUS-BRA {pathology, birads (int), histology, side, device, case (patient number)};
    PH2 {diagnosis (0 common nevus, 1 atypical nevus, 2 melanoma), diagnosis_name, the criteria the
    table holds (asymmetry int, pigment_network / dots_globules / streaks / regression_areas /
    blue_whitish_veil as "absent"/"present"/"typical"/"atypical", colours list) and `criteria`, the
    names of the findings present}; Kvasir-SEG and user folders: {}.
    """

    set_name: str
    image_id: str
    image_path: Path
    mask_path: Path
    labels: dict = field(default_factory=dict, hash=False)


def set_info(set_name: str) -> SetInfo | None:
    """The SetInfo of a known set (aliases such as "kvasir-seg" accepted), else None."""
    key = str(set_name).strip().lower()
    return SETS.get(_ALIASES.get(key, key))


def resolve_data_dir(data_dir=None) -> Path:
    """The data directory: the argument, else $CORESEG_DATA."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV)
        if not data_dir:
            raise FileNotFoundError(f"no data directory given and ${DATA_ENV} is not set")
    return Path(data_dir)


# ----------------------------------------------------------------------------------------------- pairing
def _mask_key(stem: str) -> str:
    """A mask's stem with the known prefixes/suffixes removed, lower-case."""
    key = stem.lower()
    for prefix in _MASK_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            key = key[len(prefix):]
            break
    for suffix in _MASK_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
            break
    return key


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def pair_files(images_dir, masks_dir) -> list[tuple[str, Path, Path]]:
    """(image_id, image_path, mask_path) for every image with a mask, sorted by image_id.

    A mask matches when its stem equals the image stem (any extension), else when both stems agree after
    removing known prefixes/suffixes ("mask_0001-l" ↔ "bus_0001-l", "IMD002_lesion" ↔ "IMD002").
    Images without a mask are skipped.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    masks = _image_files(masks_dir)
    exact = {p.stem: p for p in masks}
    loose: dict[str, list[Path]] = {}
    for p in masks:
        loose.setdefault(_mask_key(p.stem), []).append(p)
    pairs = []
    for image in _image_files(images_dir):
        mask = exact.get(image.stem)
        if mask is None:
            found = loose.get(_mask_key(image.stem), [])
            if len(found) == 1:
                mask = found[0]
        if mask is not None:
            pairs.append((image.stem, image, mask))
    return sorted(pairs, key=lambda t: t[0])


# ----------------------------------------------------------------------------------------------- labels
def read_busbra_labels(folder) -> dict[str, dict]:
    """bus_data.csv → {image id: {pathology, birads, histology, side, device, case}}; {} if absent."""
    path = Path(folder) / "bus_data.csv"
    if not path.exists():
        return {}
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            labels = {
                "pathology": row.get("Pathology", "").lower(),
                "birads": _int_or_none(row.get("BIRADS")),
                "histology": row.get("Histology", "").lower(),
                "side": row.get("Side", "").lower(),
                "device": row.get("Device", ""),
                "case": _int_or_none(row.get("Case")),
            }
            out[row["ID"]] = labels
    return out


def read_busbra_folds(folder, filename: str = "5-fold-cv.csv") -> dict[str, int]:
    """The fold file → {image id: kFold}; {} if absent."""
    path = Path(folder) / filename
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["ID"].strip(): int(row["kFold"]) for row in csv.DictReader(fh) if row.get("kFold", "").strip()}


def _int_or_none(value):
    try:
        return int(float(str(value).strip()))
    except (TypeError, ValueError):
        return None


PH2_DIAGNOSES = {0: "common nevus", 1: "atypical nevus", 2: "melanoma"}
PH2_ASYMMETRY = {0: "fully symmetric", 1: "symmetric in one axis", 2: "fully asymmetric"}
PH2_FEATURE_VALUES = {"A": "absent", "P": "present", "T": "typical", "AT": "atypical"}
PH2_COLOURS = {1: "white", 2: "red", 3: "light brown", 4: "dark brown", 5: "blue-grey", 6: "black"}
PH2_FEATURES = {  # normalised header → label key, human name
    "pigment_network": "pigment network",
    "dots_globules": "dots and globules",
    "streaks": "streaks",
    "regression_areas": "regression areas",
    "blue_whitish_veil": "blue-whitish veil",
}
_PH2_ID = re.compile(r"^IMD\d+$", re.I)


def _norm_header(cell: str) -> str:
    return re.sub(r"[^a-z]+", "_", cell.lower()).strip("_")


def _split_row(line: str) -> list[str]:
    if "|" in line:  # the original release: "|| Name || Histological Diagnosis || Clinical Diagnosis || …"
        cells = line.split("|")
        return [c.strip() for c in cells][1:-1] if line.strip().startswith("|") else [c.strip() for c in cells]
    if "\t" in line:
        return [c.strip() for c in line.split("\t")]
    return [c.strip() for c in re.split(r"\s{2,}", line.strip())]


def parse_ph2_table(text: str) -> dict[str, dict]:
    """Parse PH2_dataset.txt (the original `||` table or a tab-separated export) → {id: labels}.

    Columns are found by their header names, so a table that keeps only some criteria (the shared copy has
    Name, Clinical Diagnosis and Asymmetry) gives labels with just those. Legend lines are ignored.
    """
    lines = [ln.rstrip("\r\n") for ln in text.splitlines()]
    header_index = next((i for i, ln in enumerate(lines) if re.search(r"\bname\b", ln, re.I)), None)
    if header_index is None:
        return {}
    header_cells = _split_row(lines[header_index])
    if "|" in lines[header_index]:  # "||" separators give an empty cell between every pair of bars
        keep = [i for i, c in enumerate(header_cells) if c]
    else:
        keep = list(range(len(header_cells)))
    names = [_norm_header(header_cells[i]) for i in keep]
    out: dict[str, dict] = {}
    for line in lines[header_index + 1:]:
        cells = _split_row(line)
        cells = [cells[i] if i < len(cells) else "" for i in keep]
        row = dict(zip(names, cells))
        image_id = row.get("name", "")
        if not _PH2_ID.match(image_id):
            continue
        out[image_id.upper()] = _ph2_labels(row)
    return out


def _ph2_labels(row: dict[str, str]) -> dict:
    labels: dict = {}
    criteria: list[str] = []
    diagnosis = _int_or_none(row.get("clinical_diagnosis"))
    if diagnosis is None:  # some exports use one X-marked column per diagnosis
        for code, key in ((0, "common_nevus"), (1, "atypical_nevus"), (2, "melanoma")):
            if row.get(key, "").strip().upper() == "X":
                diagnosis = code
    if diagnosis is not None:
        labels["diagnosis"] = diagnosis
        labels["diagnosis_name"] = PH2_DIAGNOSES.get(diagnosis, "")
    if row.get("histological_diagnosis"):
        labels["histology"] = row["histological_diagnosis"].lower()
    asymmetry = _int_or_none(row.get("asymmetry"))
    if asymmetry is not None:
        labels["asymmetry"] = asymmetry
        if asymmetry > 0:
            criteria.append("asymmetry in one axis" if asymmetry == 1 else "asymmetry in both axes")
    for key, name in PH2_FEATURES.items():
        value = PH2_FEATURE_VALUES.get(row.get(key, "").strip().upper())
        if value is None:
            continue
        labels[key] = value
        if value == "present":
            criteria.append(name)
        elif value in ("typical", "atypical"):
            criteria.append(f"{value} {name}")
    colour_cell = row.get("colors") or row.get("colours") or ""
    colours = [PH2_COLOURS[int(c)] for c in re.findall(r"\d", colour_cell) if int(c) in PH2_COLOURS]
    if colour_cell.strip():
        labels["colours"] = colours
        if len(colours) >= 3:
            criteria.append("multiple colours")
    labels["criteria"] = criteria
    return labels


def read_ph2_labels(folder) -> dict[str, dict]:
    path = Path(folder) / "PH2_dataset.txt"
    if not path.exists():
        return {}
    return parse_ph2_table(path.read_text(encoding="utf-8", errors="replace"))


def _labels_for(set_name: str, folder: Path) -> dict[str, dict]:
    info = set_info(set_name)
    if info is None:
        return {}
    if info.name == "busbra":
        return read_busbra_labels(folder)
    if info.name == "ph2":
        return read_ph2_labels(folder)
    return {}


# ----------------------------------------------------------------------------------------------- loading
def load_folder(folder, set_name: str) -> list[LabelledImage]:
    """Every image with a mask in `folder/images` and `folder/masks`, sorted by image_id.

    Known sets (busbra, kvasir, ph2) also get their labels when the label file lies in `folder`;
    any other `set_name` is kept as given, with empty labels.
    """
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise FileNotFoundError(f"{folder} needs images/ and masks/ folders")
    info = set_info(set_name)
    name = info.name if info else str(set_name)
    table = _labels_for(name, folder)
    return [LabelledImage(name, image_id, image, mask, dict(table.get(image_id, table.get(image_id.upper(), {}))))
            for image_id, image, mask in pair_files(images_dir, masks_dir)]


def load_split(data_dir, set_name: str, split: str) -> list[LabelledImage]:
    """The fixed split (train | val | all) of a known set, sorted by image_id.

    `data_dir` holds the set folders (busbra/, kvasir-seg/, ph2/); a set folder itself is accepted too.
    """
    info = set_info(set_name)
    if info is None:
        raise ValueError(f"unknown set {set_name!r}; known: {', '.join(SETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    root = resolve_data_dir(data_dir)
    folder = root / info.folder if (root / info.folder).is_dir() else root
    items = load_folder(folder, info.name)
    if split == "all":
        return items
    if info.name == "busbra":
        folds = read_busbra_folds(folder)
        wanted = {1, 2, 3} if split == "train" else {4}
        return [it for it in items if folds.get(it.image_id) in wanted]
    if info.name == "kvasir":
        return items[:-100] if split == "train" else items[-100:]
    return [it for i, it in enumerate(items) if (i % 5 == 4) == (split == "val")]  # ph2


def interleave(lists: list[list]) -> list:
    """Round-robin over the sets (the trainers' order: a partial run covers all of them)."""
    out, longest = [], max((len(x) for x in lists), default=0)
    for i in range(longest):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def held_out(cases: list, every: int = DEV_EVERY) -> tuple[list, list]:
    """(training, development): every `every`-th case is held out to choose checkpoints on, so the
    reported validation split is never looked at during training."""
    if every <= 1:
        return cases, []
    if len(cases) < every:  # a small set still keeps one case apart
        return cases[:-1], cases[-1:]
    return ([c for i, c in enumerate(cases) if i % every != every - 1],
            [c for i, c in enumerate(cases) if i % every == every - 1])


def development_items(data_dir, sets: list[str], every: int = DEV_EVERY) -> list[LabelledImage]:
    """The development images: the training split's held-out share, in the trainers' order (the sets
    interleaved; with every training image in the feature cache, the images SFT and GRPO never trained on)."""
    return held_out(interleave([load_split(data_dir, s, "train") for s in sets]), every)[1]


# ----------------------------------------------------------------------------------------------- pixels
def read_image(item) -> np.ndarray:
    """The image as uint8 RGB, H×W×3: the display image `coreseg.scan_io.read_scan` makes, the one the app
    serves (EXIF orientation applied, 16-bit and float images percentile-windowed, alpha on black, grey
    repeated over the channels), so that training and serving see the same pixels."""
    path = item.image_path if isinstance(item, LabelledImage) else Path(item)
    return read_scan(path).display


def remove_specks(mask: np.ndarray, min_size: int = MIN_SPECK) -> np.ndarray:
    """Drop 8-connected parts under `min_size` pixels (the largest part is always kept)."""
    mask = np.asarray(mask, dtype=bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(count, dtype=bool)
    keep[1:] = areas >= min_size
    keep[1 + int(np.argmax(areas))] = True
    return keep[labels]


def read_mask(item) -> np.ndarray:
    """The mask as a bool H×W array (see the module notes for the per-format rules)."""
    path = item.mask_path if isinstance(item, LabelledImage) else Path(item)
    with Image.open(path) as im:
        grey = np.asarray(ImageOps.exif_transpose(im).convert("L"))  # upright, as `read_image` reads the image
    mask = grey > (127 if int(grey.max(initial=0)) > 127 else 0)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        mask = remove_specks(mask)
    return mask

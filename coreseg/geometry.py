"""Coordinate frames, in one place (after segment-anything's `ResizeLongestSide`).

One image is seen in several frames; `Frames` converts boxes, points and masks between them:

  image       original pixels (H × W): what callers, the store and the UI speak
  box         the square `box_frame` the model writes its answer's boxes in (image squashed)
  segmenter   the square `image_size` frame the segmenter's prompts (points, boxes) are given in
  low_res     the decoder's 256 × 256 logits and the mask targets trained against them
  display     the image as the app shows it (`display_scale` × the image size)

Any (height, width) may stand for a frame too (e.g. the aspect-preserving thumbnail the reasoning is
measured on). Every frame here is the image squashed to another size, so a conversion is a scale
per axis. Boxes are integer pixels with exclusive ends: rounded, ordered, clipped inside the target
frame and at least one pixel wide; points are floats and not clipped (the prompt encoder takes
sub-pixel points); logits are upsampled bilinearly and thresholded at 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LOW_RES = 256                    # SAM decoders emit 256 × 256 logits
MAX_DISPLAY_SIDE = 1024          # larger scans are shown downscaled (clicks are mapped back)
MIN_DISPLAY_SIDE = 512           # smaller ones are shown enlarged by a whole factor, so clicks land precisely

Size = tuple[int, int]           # (height, width)
IntBox = tuple[int, int, int, int]


def scale_boxes(boxes, from_size: Size, to_size: Size) -> list[IntBox]:
    """Boxes (x1, y1, x2, y2) from a (height, width) frame to another, rounded and clipped to the target
    frame (exclusive ends, at least one pixel wide and high)."""
    (fh, fw), (th, tw) = from_size, to_size
    out = []
    for x1, y1, x2, y2 in boxes:
        nx1, nx2 = sorted((round(x1 * tw / fw), round(x2 * tw / fw)))
        ny1, ny2 = sorted((round(y1 * th / fh), round(y2 * th / fh)))
        nx1, ny1 = max(0, min(nx1, tw - 1)), max(0, min(ny1, th - 1))
        nx2, ny2 = max(nx1 + 1, min(nx2, tw)), max(ny1 + 1, min(ny2, th))
        out.append((nx1, ny1, nx2, ny2))
    return out


def scale_points(points, from_size: Size, to_size: Size) -> list[tuple[float, float]]:
    """Points (x, y) from a (height, width) frame to another, as floats (not rounded, not clipped)."""
    (fh, fw), (th, tw) = from_size, to_size
    return [(x * tw / fw, y * th / fh) for x, y in points]


def logits_to_mask(low_res: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Low-resolution logits → a bool mask of height × width (upsample the scores, then threshold)."""
    up = F.interpolate(low_res.float().reshape(1, 1, *low_res.shape[-2:]), size=(height, width), mode="bilinear",
                       align_corners=False)
    return (up[0, 0] > 0).cpu().numpy()


def mask_to_low_res(mask: np.ndarray) -> torch.Tensor:
    """A bool mask of any size → 1 × 1 × 256 × 256 float target in the decoder's frame."""
    x = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    return (F.interpolate(x, size=(LOW_RES, LOW_RES), mode="bilinear", align_corners=False) > 0.5).float()


def display_scale(height: int, width: int) -> float:
    """Factor from scan pixels to shown pixels: large scans shrink to MAX_DISPLAY_SIDE, small ones grow
    by a whole factor towards MIN_DISPLAY_SIDE."""
    side = max(height, width, 1)
    if side > MAX_DISPLAY_SIDE:
        return MAX_DISPLAY_SIDE / side
    return float(max(1, MIN_DISPLAY_SIDE // side))


def scan_to_display(x: float, y: float, scale: float) -> tuple[int, int]:
    """A scan pixel position → the shown pixel (rounded)."""
    return int(round(x * scale)), int(round(y * scale))


def display_to_scan(x: float, y: float, scale: float, height: int, width: int) -> tuple[int, int]:
    """A point on the shown image → the scan pixel under it (clipped inside the scan)."""
    sx, sy = int(x / scale), int(y / scale)
    return min(max(sx, 0), width - 1), min(max(sy, 0), height - 1)


@dataclass(frozen=True)
class Frames:
    """The frames of one image of `size` (height, width), for a model with `box_frame` and a
    segmenter of `image_size`. Frame arguments are names ("image", "box", "segmenter", "low_res",
    "display") or any (height, width)."""

    size: Size
    box_frame: int = 256
    image_size: int = 256
    display: float | None = None   # display scale; None = `display_scale(size)`

    @classmethod
    def of(cls, model, size: Size) -> "Frames":
        """The frames of an image of `size` for a CoreSeg model (its config's box frame, its segmenter)."""
        return cls((int(size[0]), int(size[1])), model.config.box_frame, model.segmenter.image_size)

    @property
    def display_scale(self) -> float:
        return display_scale(*self.size) if self.display is None else self.display

    def frame(self, name) -> Size:
        """A frame's (height, width)."""
        if not isinstance(name, str):
            return int(name[0]), int(name[1])
        height, width = self.size
        sizes = {"image": (height, width), "box": (self.box_frame, self.box_frame),
                 "segmenter": (self.image_size, self.image_size), "low_res": (LOW_RES, LOW_RES),
                 "display": (max(1, round(height * self.display_scale)), max(1, round(width * self.display_scale)))}
        if name not in sizes:
            raise ValueError(f"unknown frame {name!r}; frames are {sorted(sizes)} or a (height, width)")
        return sizes[name]

    def boxes(self, boxes, src="image", dst="box") -> list[IntBox]:
        """Boxes from frame `src` to frame `dst` (rounded, clipped, exclusive ends)."""
        return scale_boxes(boxes, self.frame(src), self.frame(dst))

    def box(self, box, src="image", dst="box") -> IntBox:
        return self.boxes([box], src, dst)[0]

    def points(self, points, src="image", dst="segmenter") -> list[tuple[float, float]]:
        """Points from frame `src` to frame `dst` (floats)."""
        return scale_points(points, self.frame(src), self.frame(dst))

    def whole_box(self, frame="image") -> IntBox:
        """The box covering all of a frame."""
        height, width = self.frame(frame)
        return 0, 0, width, height

    def mask(self, low_res: torch.Tensor) -> np.ndarray:
        """Decoder logits → the bool mask in original pixels."""
        return logits_to_mask(low_res, *self.size)

    def to_display(self, x: float, y: float) -> tuple[int, int]:
        return scan_to_display(x, y, self.display_scale)

    def to_scan(self, x: float, y: float) -> tuple[int, int]:
        return display_to_scan(x, y, self.display_scale, *self.size)

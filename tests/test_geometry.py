"""The one coordinate-frame object (coreseg.geometry): round trips, exclusive box ends, clipping, masks, display."""
import numpy as np
import pytest
import torch

from coreseg.geometry import (LOW_RES, Frames, display_scale, display_to_scan, logits_to_mask, mask_to_low_res,
                              scale_boxes, scan_to_display)


def test_frame_sizes():
    f = Frames((300, 400), box_frame=1000, image_size=1024)
    assert f.frame("image") == (300, 400)
    assert f.frame("box") == (1000, 1000)
    assert f.frame("segmenter") == (1024, 1024)
    assert f.frame("low_res") == (LOW_RES, LOW_RES)
    assert f.frame((7, 9)) == (7, 9)
    assert f.whole_box() == (0, 0, 400, 300)
    with pytest.raises(ValueError, match="unknown frame"):
        f.frame("thumbnail")


def test_boxes_round_trip_image_box_image():
    f = Frames((300, 400), box_frame=1000)
    boxes = [(0, 0, 400, 300), (80, 55, 180, 125), (10, 20, 11, 21)]
    there = f.boxes(boxes, "image", "box")
    assert there[0] == (0, 0, 1000, 1000)
    assert there[1] == (200, 183, 450, 417)
    back = f.boxes(there, "box", "image")
    assert back[:2] == boxes[:2]   # a coarser-to-finer-to-coarser trip is exact
    for (x1, y1, x2, y2), (bx1, by1, bx2, by2) in zip(boxes, back):
        assert abs(x1 - bx1) <= 1 and abs(y2 - by2) <= 1


def test_box_ends_are_exclusive_and_at_least_one_pixel():
    f = Frames((1000, 1000), box_frame=10)
    # a 1-pixel box at the far corner stays inside the 10 × 10 frame and 1 pixel wide
    assert f.box((999, 999, 1000, 1000), "image", "box") == (9, 9, 10, 10)
    # a box that rounds to zero width keeps one pixel
    assert f.box((500, 500, 501, 501), "image", "box") == (5, 5, 6, 6)
    # the whole image maps to the whole frame: x2 == width, not width − 1
    assert f.box(f.whole_box(), "image", "box") == (0, 0, 10, 10)


def test_boxes_are_clipped_and_ordered():
    f = Frames((100, 200), box_frame=256)
    assert f.box((-50, -5, 900, 130), "image", "box") == (0, 0, 256, 256)
    assert f.box((150, 80, 50, 20), "image", "box") == (64, 51, 192, 205)   # swapped corners are ordered
    assert scale_boxes([(300, 300, 400, 400)], (100, 100), (10, 10)) == [(9, 9, 10, 10)]  # outside → last pixel


def test_points_are_floats_and_round_trip():
    f = Frames((300, 400), image_size=1024)
    pts = [(0.0, 0.0), (399.5, 299.5), (123.25, 45.75)]
    there = f.points(pts, "image", "segmenter")
    assert there[1] == pytest.approx((399.5 * 1024 / 400, 299.5 * 1024 / 300))
    assert np.allclose(f.points(there, "segmenter", "image"), pts)
    assert np.allclose(f.points([(-10.0, 500.0)], "image", "segmenter"), [(-25.6, 500 * 1024 / 300)])  # no clip


def test_logits_to_mask_and_low_res_target():
    truth = np.zeros((120, 90), dtype=bool)
    truth[30:90, 20:70] = True
    target = mask_to_low_res(truth)
    assert target.shape == (1, 1, LOW_RES, LOW_RES) and set(target.unique().tolist()) <= {0.0, 1.0}
    logits = target * 20 - 10
    mask = Frames((120, 90)).mask(logits[0])
    assert mask.shape == (120, 90) and mask.dtype == bool
    assert (mask != truth).sum() <= 2 * (60 + 50)   # only the border may move by a pixel
    assert np.array_equal(mask, logits_to_mask(logits, 120, 90))
    assert not Frames((5, 7)).mask(torch.full((LOW_RES, LOW_RES), -1.0)).any()


def test_display_scale_and_round_trip():
    assert display_scale(2048, 1000) == 0.5
    assert display_scale(100, 128) == 4.0
    assert display_scale(600, 600) == 1.0
    f = Frames((128, 100))
    assert f.display_scale == 4.0 and f.frame("display") == (512, 400)
    for x, y in [(0, 0), (45, 55), (99, 127)]:
        assert f.to_scan(*f.to_display(x, y)) == (x, y)
        assert f.to_scan(f.to_display(x, y)[0] + 3, f.to_display(x, y)[1] + 3) == (x, y)  # anywhere in the pixel
    assert f.to_scan(10_000, -5) == (99, 0)   # clipped inside the scan
    assert scan_to_display(10, 20, 0.5) == (5, 10)
    assert display_to_scan(5.9, 10.9, 0.5, 100, 100) == (11, 21)
    assert Frames((128, 100), display=2.0).to_display(3, 4) == (6, 8)

"""coreseg.datasets on tiny fake data folders shaped like the shipped sets (no shared data needed)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from coreseg.datasets import (SETS, LabelledImage, load_folder, load_split, pair_files, parse_ph2_table, read_image,
                              read_mask, resolve_data_dir)
from coreseg.metrics import mask_box


def _blob(h=32, w=40, box=(10, 8, 30, 24)):
    mask = np.zeros((h, w), bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def _make_busbra(root):
    folder = root / "busbra"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    ids = ["bus_0001-l", "bus_0001-r", "bus_0002-s", "bus_0003-l", "bus_0004-s", "bus_0005-s", "bus_0006-s"]
    folds = [1, 1, 2, 3, 4, 5, 4]
    rows, fold_rows = [], []
    for i, (image_id, fold) in enumerate(zip(ids, folds)):
        Image.fromarray(np.full((32, 40), 90 + i, np.uint8)).save(folder / "images" / f"{image_id}.png")
        Image.fromarray(_blob()).convert("1").save(folder / "masks" / (image_id.replace("bus_", "mask_") + ".png"))
        pathology = "malignant" if i % 2 else "benign"
        rows.append(f'{image_id},{i + 1},fibroadenoma,{pathology},{2 + i % 4},GE Logiq 7 @10-14MHz,40,32,left,'
                    f'"[10,8,20,16]"')
        fold_rows.append(f"{image_id},{pathology},{fold},1,1,NaN,1,1")
    # a csv row without an image is ignored; the image list decides
    (folder / "bus_data.csv").write_text("ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX\n"
                                         + "\n".join(rows) + "\n")
    (folder / "5-fold-cv.csv").write_text("ID,Pathology,kFold,valid_1,valid_2,valid_3,valid_4,valid_5\n"
                                          + "\n".join(fold_rows) + "\n")
    return folder


def _make_kvasir(root, n=104):
    folder = root / "kvasir-seg"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        name = f"ck{i:04d}"
        Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(folder / "images" / f"{name}.jpg")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(folder / "masks" / f"{name}.jpg", quality=95)
    return folder


PH2_TAB = ("Name\tClinical Diagnosis\tAsymmetry\r\n" + "".join(f"IMD{i:03d}\t{i % 3}\t{(i + 1) % 3}\r\n" for i in range(1, 11))
           + "\t\t\r\ngends f\t\"ules, Streaks, Regr\"\t\"ion Areas,\"\r\n0 - Co\t\t\r\n")

PH2_BARS = """||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry || Pigment Network || Dots/Globules || Streaks || Regression Areas || Blue-Whitish Veil ||   Colors   ||
||  IMD003  ||                        ||         0          ||     0     ||        T        ||       A       ||    A    ||        A         ||         A         ||   3  4     ||
||  IMD058  ||      Melanoma          ||         2          ||     2     ||        AT       ||       AT      ||    P    ||        P         ||         P         ||  3 4 5 6   ||

Legends for Clinical Diagnosis
0 - Common Nevus
"""


def _make_ph2(root):
    folder = root / "ph2"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(1, 11):
        Image.fromarray(np.full((24, 24, 3), 150, np.uint8)).save(folder / "images" / f"IMD{i:03d}.jpg")
        Image.fromarray((_blob(24, 24, (5, 5, 15, 15)) * 255).astype(np.uint8)).save(
            folder / "masks" / f"IMD{i:03d}_lesion.png")
    (folder / "PH2_dataset.txt").write_bytes(PH2_TAB.encode())
    return folder


def test_busbra_split_labels_and_one_bit_masks(tmp_path):
    folder = _make_busbra(tmp_path)
    raw = np.array(Image.open(folder / "masks" / "mask_0001-l.png"))
    assert raw.dtype == bool and not (raw > 127).any()  # the trap the reader must avoid
    train = load_split(tmp_path, "busbra", "train")
    val = load_split(tmp_path, "busbra", "val")
    every = load_split(tmp_path, "busbra", "all")
    assert [i.image_id for i in train] == ["bus_0001-l", "bus_0001-r", "bus_0002-s", "bus_0003-l"]
    assert [i.image_id for i in val] == ["bus_0004-s", "bus_0006-s"]
    assert len(every) == 7 and [i.image_id for i in every] == sorted(i.image_id for i in every)
    item = train[1]
    assert item.set_name == "busbra" and item.mask_path.name == "mask_0001-r.png"
    assert item.labels["pathology"] == "malignant" and item.labels["birads"] == 3 and item.labels["case"] == 2
    assert item.labels["histology"] == "fibroadenoma" and item.labels["side"] == "left"
    mask = read_mask(item)
    assert mask.dtype == bool and mask.shape == (32, 40) and mask.sum() == 20 * 16
    assert mask_box(mask) == (10, 8, 30, 24)
    image = read_image(item)
    assert image.dtype == np.uint8 and image.shape == (32, 40, 3)
    # the set folder itself is accepted as data_dir
    assert len(load_split(folder, "busbra", "val")) == 2


def test_kvasir_split_and_jpeg_speck_dropped(tmp_path):
    folder = _make_kvasir(tmp_path)
    speck_mask = np.zeros((40, 40), np.uint8)
    speck_mask[10:30, 12:32] = 255
    speck_mask[0:3, 37:40] = 255  # a corner speck, as JPEG artefacts leave
    Image.fromarray(speck_mask).save(folder / "masks" / "ck0000.jpg", quality=95)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "images" / "ck0000.jpg")
    raw = np.array(Image.open(folder / "masks" / "ck0000.jpg").convert("L")) > 127
    assert raw[:3, 37:].any()
    train, val = load_split(tmp_path, "kvasir-seg", "train"), load_split(tmp_path, "kvasir", "val")
    assert len(train) == 4 and len(val) == 100
    assert val[0].image_id == "ck0004" and val[-1].image_id == "ck0103" and train[-1].image_id == "ck0003"
    assert train[0].labels == {}
    mask = read_mask(train[0])
    assert not mask[:3, 37:].any()
    assert mask_box(mask) == (12, 10, 32, 30)


def test_ph2_tab_table_split_and_masks(tmp_path):
    _make_ph2(tmp_path)
    train, val = load_split(tmp_path, "ph2", "train"), load_split(tmp_path, "ph2", "val")
    assert [i.image_id for i in val] == ["IMD005", "IMD010"]
    assert len(train) == 8
    labels = val[0].labels
    assert labels["diagnosis"] == 2 and labels["diagnosis_name"] == "melanoma"
    assert labels["asymmetry"] == 0 and labels["criteria"] == []
    assert train[0].labels["asymmetry"] == 2 and "asymmetry in both axes" in train[0].labels["criteria"]
    mask = read_mask(val[0])
    assert mask.sum() == 100 and mask_box(mask) == (5, 5, 15, 15)


def test_ph2_original_bar_table():
    table = parse_ph2_table(PH2_BARS)
    assert set(table) == {"IMD003", "IMD058"}
    nevus, melanoma = table["IMD003"], table["IMD058"]
    assert nevus["diagnosis"] == 0 and nevus["pigment_network"] == "typical" and nevus["streaks"] == "absent"
    assert nevus["colours"] == ["light brown", "dark brown"]
    assert nevus["criteria"] == ["typical pigment network"]
    assert melanoma["diagnosis_name"] == "melanoma" and melanoma["histology"] == "melanoma"
    assert melanoma["blue_whitish_veil"] == "present" and melanoma["dots_globules"] == "atypical"
    assert melanoma["colours"] == ["light brown", "dark brown", "blue-grey", "black"]
    assert {"asymmetry in both axes", "atypical pigment network", "streaks", "regression areas",
            "blue-whitish veil", "multiple colours"} <= set(melanoma["criteria"])


def test_load_folder_matches_masks_by_stem(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a.png", "b.jpg", "c.png", "d.tif"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / name)
    one = (_blob(8, 8, (2, 2, 6, 6)) * 255).astype(np.uint8)
    for name in ("a_mask.png", "mask_b.png", "d.png", "zzz.png"):
        Image.fromarray(one).save(tmp_path / "masks" / name)
    (tmp_path / "masks" / "notes.txt").write_text("not an image")
    items = load_folder(tmp_path, "my scans")
    assert [(i.image_id, i.mask_path.name) for i in items] == [("a", "a_mask.png"), ("b", "mask_b.png"), ("d", "d.png")]
    assert all(isinstance(i, LabelledImage) and i.set_name == "my scans" and i.labels == {} for i in items)
    assert read_mask(items[0]).sum() == 16
    assert len(pair_files(tmp_path / "images", tmp_path / "masks")) == 3
    with pytest.raises(FileNotFoundError):
        load_folder(tmp_path / "images", "x")


def test_errors_sets_and_env(tmp_path, monkeypatch):
    with pytest.raises(ValueError):
        load_split(tmp_path, "lidc", "train")
    with pytest.raises(ValueError):
        load_split(tmp_path, "ph2", "test")
    assert {s.modality for s in SETS.values()} == {"ultrasound", "endoscopy", "dermoscopy"}
    assert SETS["ph2"].target == "pigmented skin lesion" and SETS["kvasir"].folder == "kvasir-seg"
    monkeypatch.setenv("CORESEG_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    monkeypatch.delenv("CORESEG_DATA")
    with pytest.raises(FileNotFoundError):
        resolve_data_dir(None)


def test_training_and_serving_read_the_same_pixels(tmp_path):
    """One image reader: `read_image` (training) gives exactly the display image `scan_io` serves, for a
    PNG with an EXIF orientation tag (applied: the image is upright) and for a 16-bit PNG (windowed alike)."""
    from coreseg.scan_io import read_scan

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:5, :, 0] = 255                     # a red band along the top of the stored pixels
    rgb[:, :3, 1] = 200
    exif = Image.Exif()
    exif[0x0112] = 6                        # "rotate 90° clockwise to display"
    oriented = tmp_path / "oriented.png"
    Image.fromarray(rgb).save(oriented, exif=exif)
    mask = np.zeros((20, 30), np.uint8)
    mask[:5, :] = 255
    oriented_mask = tmp_path / "oriented_mask.png"
    Image.fromarray(mask).save(oriented_mask, exif=exif)
    trained = read_image(oriented)
    assert trained.shape == (30, 20, 3)     # upright: the tag was applied
    assert np.array_equal(trained, read_scan(oriented).display)
    assert np.array_equal(trained[:, -5:, 0], np.full((30, 5), 255))   # the top band is now on the right
    upright_mask = read_mask(oriented_mask)
    assert upright_mask.shape == trained.shape[:2] and upright_mask[:, -5:].all() and not upright_mask[:, :-5].any()

    deep = tmp_path / "sixteen.png"
    values = (np.arange(40 * 50).reshape(40, 50) * 20 + 1000).astype(np.uint16)
    values[0, 0] = 65535                    # one hot pixel: min-max scaling would darken everything else
    Image.fromarray(values).save(deep)
    assert Image.open(deep).mode.startswith("I")
    trained = read_image(deep)
    assert trained.dtype == np.uint8 and trained.shape == (40, 50, 3)
    assert np.array_equal(trained, read_scan(deep).display)
    assert trained[20, 25, 0] > 100          # windowed on percentiles, not squashed by the outlier


def test_the_development_share_is_every_20th_case_of_the_interleaved_sets():
    """One rule, in `coreseg.datasets`, for what SFT and GRPO hold out and what `coreseg.eval --split dev` scores."""
    from coreseg.datasets import DEV_EVERY, held_out, interleave

    lists = [[("busbra", i) for i in range(30)], [("kvasir", i) for i in range(25)], [("ph2", i) for i in range(5)]]
    merged = interleave(lists)
    assert merged[:4] == [("busbra", 0), ("kvasir", 0), ("ph2", 0), ("busbra", 1)] and len(merged) == 60
    train, dev = held_out(merged)
    assert DEV_EVERY == 20 and dev == [merged[19], merged[39], merged[59]]
    assert len(train) == 57 and not set(train) & set(dev)
    assert held_out(merged[:5]) == (merged[:4], merged[4:5])  # a small set still keeps one case apart

"""Scan intake: real files (pydicom/nibabel samples and files built here), no mocks."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import time
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIB_DATA
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array

from coreseg.scan_io import (
    CT_WINDOWS,
    CorruptFileError,
    NoPixelDataError,
    Scan,
    ScanError,
    TooLargeError,
    UnsupportedFormatError,
    from_png_bytes,
    read_scan,
    scan_info,
    to_png_bytes,
    write_nifti_mask,
)

IDENTIFIERS = ("Doe^John", "Doe", "MRN-98765", "St Example Hospital", "20240229", "1.2.3.4.5.6.7.8.9")


def dicom_sample(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def nifti_sample(name: str) -> str:
    return os.path.join(NIB_DATA, name)


def assert_no_identifiers(text: str) -> None:
    for ident in IDENTIFIERS:
        assert ident not in text


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width × height (1-bit grey); its pixel data is far too short."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_bytes(img: Image.Image, **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save_args)
    return buf.getvalue()


def identified_ct(tmp_path, **changes) -> tuple[pydicom.Dataset, str]:
    """CT_small with identifiers filled in, saved under an identifying file name."""
    ds = pydicom.dcmread(dicom_sample("CT_small.dcm"))
    ds.PatientName = "Doe^John"
    ds.PatientID = "MRN-98765"
    ds.InstitutionName = "St Example Hospital"
    ds.StudyDate = ds.SeriesDate = ds.PatientBirthDate = "20240229"
    ds.StudyInstanceUID = "1.2.3.4.5.6.7.8.9"
    ds.BodyPartExamined = "Doe^John"  # free text where a code is expected
    ds.private_block(0x0011, "ACME 1.0", create=True).add_new(0x01, "LO", "Doe^John")
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path = tmp_path / "Doe^John_MRN-98765.dcm"
    ds.save_as(path)
    return ds, str(path)


# ----------------------------------------------------------------------------- DICOM


def test_ct_pixels_are_hounsfield_units_after_rescale():
    path = dicom_sample("CT_small.dcm")
    ds = pydicom.dcmread(path)
    scan = read_scan(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(ds.RescaleIntercept) == -1024
    np.testing.assert_array_equal(scan.pixels, expected)
    assert scan.pixels.dtype == np.int16
    assert scan.display.dtype == np.uint8 and scan.display.shape == (128, 128, 3)
    m = scan.meta
    assert (m["source_format"], m["modality"], m["height"], m["width"]) == ("dicom", "CT", 128, 128)
    assert m["window"] == {"name": "soft_tissue", "level": 50.0, "width": 400.0}
    assert m["spacing"] == pytest.approx([float(v) for v in ds.PixelSpacing])
    json.dumps(m)


def test_ct_window_presets_change_display():
    path = dicom_sample("CT_small.dcm")
    displays = {name: read_scan(path, window=name).display for name in CT_WINDOWS}
    assert not np.array_equal(displays["brain"], displays["bone"])
    assert not np.array_equal(displays["soft_tissue"], displays["lung"])
    # brain is [0, 80] HU: the explicit (level, width) gives the same picture
    explicit = read_scan(path, window=(40, 80))
    np.testing.assert_array_equal(explicit.display, displays["brain"])
    assert explicit.meta["window"]["name"] == "custom"
    hu = explicit.pixels
    assert (explicit.display[hu <= 0] == 0).all() and (explicit.display[hu >= 80] == 255).all()
    with pytest.raises(ScanError, match="Unknown window"):
        read_scan(path, window="mediastinum")


def test_mr_percentile_window_is_a_choice():
    scan = read_scan(dicom_sample("MR_small.dcm"), window="percentile")
    window = scan.meta["window"]
    assert window["name"] == "percentile" and window["low"] < window["high"]
    assert scan.display.min() == 0 and scan.display.max() == 255


def _windowed_dicom(tmp_path, modality: str = "MR", name: str = "windowed", **elements) -> tuple[np.ndarray, str]:
    """A 16-bit signed DICOM written here with pydicom: a ramp from -500 to 1000 and the given VOI elements."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    values = np.linspace(-500, 1000, 32 * 48).reshape(32, 48).round().astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, modality
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 32, 48, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = values.tobytes()
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return values, str(path)


def test_dicom_own_window_is_the_default_and_presets_are_choices(tmp_path):
    values, path = _windowed_dicom(tmp_path, "CT", WindowCenter=40, WindowWidth=400)
    scan = read_scan(path)
    window = scan.meta["window"]
    assert (window["name"], window["level"], window["width"], window["function"]) == ("file", 40.0, 400.0, "LINEAR")
    grey = scan.display[..., 0].astype(int)
    assert (grey[values <= -160] == 0).all() and (grey[values >= 240] == 255).all()  # [40 − 200, 40 + 200]
    inside = (values > -150) & (values < 230)
    expected = (values[inside] - (40 - 0.5)) / (400 - 1) + 0.5  # DICOM's LINEAR function, PS3.3 C.11.2.1.2.1
    assert np.abs(grey[inside] - expected * 255).max() <= 1.0
    np.testing.assert_array_equal(read_scan(path, window="file").display, scan.display)
    info = scan_info(path)
    assert info["default_window"] == "file" and info["windows"][0] == "file" and set(CT_WINDOWS) <= set(info["windows"])
    bone = read_scan(path, window="bone")  # a preset is still a choice, and gives another picture
    assert bone.meta["window"]["name"] == "bone" and not np.array_equal(bone.display, scan.display)
    np.testing.assert_array_equal(bone.pixels, scan.pixels)
    # a file without a window of its own keeps the modality's default and says so when asked for "file"
    _, plain = _windowed_dicom(tmp_path, "CT", name="plain")
    assert read_scan(plain).meta["window"]["name"] == "soft_tissue" and scan_info(plain)["default_window"] == "soft_tissue"
    with pytest.raises(ScanError, match="no display window of its own"):
        read_scan(plain, window="file")


def test_monochrome1_is_inverted_for_display(tmp_path):
    normal = read_scan(dicom_sample("MR_small.dcm"))
    ds = pydicom.dcmread(dicom_sample("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    inverted = read_scan(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(inverted.pixels, normal.pixels)
    np.testing.assert_array_equal(inverted.display, 255 - normal.display)
    assert inverted.meta["photometric"] == "MONOCHROME1" and inverted.meta["display_inverted"] is True


def test_multiframe_frame_choice():
    path = dicom_sample("rtdose.dcm")
    ds = pydicom.dcmread(path)
    n = int(ds.NumberOfFrames)
    assert read_scan(path).meta["frame"] == n // 2  # default: the middle frame
    first, last = read_scan(path, frame=0), read_scan(path, frame=n - 1)
    np.testing.assert_array_equal(first.pixels, pixel_array(ds, index=0))
    np.testing.assert_array_equal(last.pixels, pixel_array(ds, index=n - 1))
    assert not np.array_equal(first.pixels, last.pixels)
    assert first.content_hash != last.content_hash
    assert last.meta["n_frames"] == n
    with pytest.raises(ScanError, match="out of range"):
        read_scan(path, frame=n)


def test_jpeg2000_decodes_losslessly():
    j2k = read_scan(dicom_sample("MR_small_jp2klossless.dcm"))
    raw = read_scan(dicom_sample("MR_small.dcm"))
    np.testing.assert_array_equal(j2k.pixels, raw.pixels)
    assert j2k.content_hash == raw.content_hash


def test_ybr_is_converted_to_rgb():
    scan = read_scan(dicom_sample("SC_ybr_full_422_uncompressed.dcm"))
    assert scan.pixels.shape == (100, 100, 3) and scan.meta["photometric"] == "RGB"
    red, green, blue = (int(v) for v in scan.pixels[0, 0])
    assert red > 240 and green < 15 and blue < 15  # the sample's top rows are pure red
    assert scan.meta["window"] is None
    np.testing.assert_array_equal(scan.display, scan.pixels)


def test_no_identifiers_in_meta_or_errors(tmp_path):
    ds, path = identified_ct(tmp_path)
    scan = read_scan(path)
    text = json.dumps(scan.meta)
    assert_no_identifiers(text)
    assert scan.meta["body_part"] is None
    assert "MRN" not in text and "ACME" not in text
    # same file read from bytes with the identifying name as a hint
    with open(path, "rb") as f:
        assert_no_identifiers(json.dumps(read_scan(f.read(), filename=os.path.basename(path)).meta))
    # errors do not quote the file name either
    _, no_pixels = identified_ct(tmp_path, PixelData=None)
    with pytest.raises(NoPixelDataError) as err:
        read_scan(no_pixels)
    assert_no_identifiers(str(err.value))
    with pytest.raises(ScanError) as err:
        read_scan(tmp_path / "Doe^John_missing.dcm")
    assert_no_identifiers(str(err.value))
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_text_file_named_dcm_gets_a_clear_error(tmp_path):
    path = tmp_path / "Doe^John.dcm"
    path.write_text("Patient: Doe^John\nthis is a note, not an image\n" * 20)
    with pytest.raises(CorruptFileError) as err:
        read_scan(path)
    message = str(err.value)
    assert "not a readable DICOM file (no DICM header)" in message and "uploaded file" in message
    assert_no_identifiers(message)
    with pytest.raises(UnsupportedFormatError, match="not a supported scan"):
        read_scan(path.read_bytes(), filename="notes.txt")


def test_dicom_without_pixel_data(tmp_path):
    _, path = identified_ct(tmp_path, PixelData=None)
    with pytest.raises(NoPixelDataError, match="no pixel data"):
        read_scan(path)
    with pytest.raises(NoPixelDataError):
        read_scan(dicom_sample("rtstruct.dcm"))  # no preamble, no image


def test_dicom_seg_is_refused(tmp_path):
    _, built = identified_ct(tmp_path, Modality="SEG")
    paths = [built]
    shipped = get_testdata_file("liver_1frame.dcm", download=False)
    if shipped and pydicom.dcmread(shipped, stop_before_pixels=True).Modality == "SEG":
        paths.append(shipped)
    for path in paths:
        with pytest.raises(UnsupportedFormatError, match="DICOM-SEG holds a segmentation"):
            read_scan(path)


# ----------------------------------------------------------------------------- PNG / JPEG / TIFF


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(60000, 60000))
    start = time.perf_counter()
    with pytest.raises(TooLargeError, match="3,600,000,000 pixels"):
        read_scan(bomb)
    assert time.perf_counter() - start < 2
    # under Pillow's own limit but over ours: the message gives the size
    with pytest.raises(TooLargeError, match="8000 × 6000 pixels; the limit is 40,000,000"):
        read_scan(png_header_only(8000, 6000))


def test_file_byte_limit(tmp_path):
    data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    assert len(data) > 1000
    with pytest.raises(TooLargeError, match="bytes; the limit is 1,000 bytes"):
        read_scan(data, max_bytes=1000)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    with pytest.raises(TooLargeError):
        read_scan(path, max_bytes=1000)


def test_gzip_bomb_is_stopped(tmp_path):
    with pytest.raises(TooLargeError, match="unpacks to more than"):
        read_scan(gzip.compress(b"\0" * (4 << 20)), filename="brain.nii.gz", max_bytes=1 << 20)


def test_gzip_bomb_is_never_unpacked_past_the_limit():
    """A 64 KB .nii.gz that unpacks to 64 MB: reading and `scan_info` stop at the 8 MB limit given, and memory
    never holds much more than that limit (the stream is unpacked 1 MB at a time)."""
    import tracemalloc

    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    limit = 8 << 20
    for call in (lambda: read_scan(bomb, filename="a.nii.gz", max_bytes=limit),
                 lambda: scan_info(bomb, filename="a.nii.gz", max_bytes=limit)):
        tracemalloc.start()
        try:
            with pytest.raises(TooLargeError, match="unpacks to more than 8.0 MB"):
                call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < limit + (4 << 20), f"{peak / 2**20:.1f} MB held for an 8 MB limit"


def test_scan_info_default_limit_is_the_apps():
    import inspect

    from coreseg.config import AppConfig
    from coreseg.scan_io import MAX_BYTES

    assert MAX_BYTES == AppConfig().max_upload_bytes == 200 * 2**20  # not a second, larger limit
    for reader in (scan_info, read_scan):
        assert inspect.signature(reader).parameters["max_bytes"].default == MAX_BYTES


def test_empty_and_truncated_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        read_scan(tmp_path / "empty.png")
    rng = np.random.default_rng(0)
    data = png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)))
    with pytest.raises(CorruptFileError, match="damaged or truncated"):
        read_scan(data[: len(data) // 2])
    with pytest.raises(CorruptFileError):
        read_scan(data[:20], filename="x.png")  # too short to identify; the name says PNG


def test_16bit_png_keeps_uint16_pixels():
    values = (np.arange(48 * 32, dtype=np.uint16).reshape(48, 32) * 41).astype(np.uint16)
    scan = read_scan(png_bytes(Image.fromarray(values)))
    assert scan.pixels.dtype == np.uint16
    np.testing.assert_array_equal(scan.pixels, values)
    assert scan.meta["bit_depth"] == 16 and scan.meta["window"]["name"] == "percentile"
    assert (scan.meta["source_format"], scan.meta["modality"]) == ("png", "OT")


def test_8bit_grey_is_shown_as_is():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    scan = read_scan(png_bytes(Image.fromarray(values)))
    np.testing.assert_array_equal(scan.pixels, values)
    np.testing.assert_array_equal(scan.display[..., 1], values)
    assert scan.meta["window"] is None


def test_rgba_is_composited_on_black():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, 0, 3], rgba[1, 1, 3], rgba[2, 2, 3] = 255, 0, 128
    scan = read_scan(png_bytes(Image.fromarray(rgba, "RGBA")))
    assert scan.pixels.shape == (4, 4, 3) and scan.pixels.dtype == np.uint8
    assert scan.pixels[0, 0].tolist() == [200, 100, 50]
    assert scan.pixels[1, 1].tolist() == [0, 0, 0]
    assert scan.pixels[2, 2].tolist() == [100, 50, 25]


def test_palette_and_cmyk_become_rgb():
    palette = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).convert("P")
    assert read_scan(png_bytes(palette)).pixels.shape == (4, 4, 3)
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, format="TIFF")
    scan = read_scan(buf.getvalue())
    assert scan.meta["source_format"] == "tiff"
    assert scan.pixels[0, 0].tolist() == [255, 0, 0]


def test_exif_is_dropped(tmp_path):
    img = Image.fromarray(np.full((16, 24, 3), 128, np.uint8))
    exif = Image.Exif()
    exif[0x013B] = "Doe^John"  # Artist
    exif[0x010E] = "MRN-98765 St Example Hospital"  # ImageDescription
    exif[0x0112] = 6  # Orientation: rotate 90° to be upright
    path = tmp_path / "Doe^John.jpg"
    img.save(path, format="JPEG", exif=exif.tobytes())
    scan = read_scan(path)
    assert_no_identifiers(json.dumps(scan.meta))
    assert scan.meta["source_format"] == "jpeg"
    assert scan.pixels.shape == (24, 16, 3)  # orientation applied, then only pixels kept


# ----------------------------------------------------------------------------- NIfTI


def canonical_data(path: str) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def test_nifti_3d_slice_and_axis_choice():
    path = nifti_sample("anatomical.nii")
    canon = canonical_data(path)
    nx, ny, nz = canon.shape
    for axis, shape in ((0, (nz, ny)), (1, (nz, nx)), (2, (ny, nx))):
        scan = read_scan(path, axis=axis)
        assert scan.pixels.shape == shape
        assert scan.meta["slice"] == canon.shape[axis] // 2 and scan.meta["n_slices"] == canon.shape[axis]
    scan = read_scan(path, slice_index=5, axis=2)
    np.testing.assert_array_equal(scan.pixels, np.rot90(canon[:, :, 5]))
    scan = read_scan(path, slice_index=3, axis=0)
    np.testing.assert_array_equal(scan.pixels, np.rot90(canon[3, :, :]))
    assert scan.meta["source_format"] == "nifti" and scan.meta["window"]["name"] == "percentile"
    json.dumps(scan.meta)
    with pytest.raises(ScanError, match="out of range"):
        read_scan(path, slice_index=nz, axis=2)


def test_nifti_4d_volume_choice_and_bytes_input():
    path = nifti_sample("example4d.nii.gz")
    with open(path, "rb") as f:
        data = f.read()
    first, second = read_scan(data, frame=0), read_scan(data, frame=1)  # gz bytes, no name given
    assert first.meta["n_frames"] == 2 and first.meta["volume_shape"] == [128, 96, 24, 2]
    assert not np.array_equal(first.pixels, second.pixels)
    with pytest.raises(ScanError, match="out of range"):
        read_scan(path, frame=2)
    info = scan_info(path)
    assert info["n_frames"] == 2 and info["n_slices"] == [128, 96, 24]


def test_nifti_5d_is_refused(tmp_path):
    path = tmp_path / "five.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2, 2), np.int16), np.eye(4)), path)
    with pytest.raises(UnsupportedFormatError, match="5 dimensions"):
        read_scan(path)


def oblique_volume(tmp_path) -> tuple[str, np.ndarray, np.ndarray]:
    """A volume stored as (P→A flipped, S, L) axes, values unique per voxel."""
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    affine = np.array([[0, 0, -1.5, 40], [-2.0, 0, 0, 30], [0, 2.5, 0, -20], [0, 0, 0, 1]])
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path), data, affine


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_write_nifti_mask_round_trip(tmp_path, axis):
    src, data, affine = oblique_volume(tmp_path)
    assert nib.aff2axcodes(affine) == ("P", "S", "L")
    scan = read_scan(src, axis=axis, slice_index=1)
    mask = np.zeros(scan.pixels.shape, bool)
    mask[0, :] = True  # asymmetric: top row and one more pixel
    mask[-1, -1] = True
    out = tmp_path / "mask.nii.gz"
    write_nifti_mask(mask, scan.meta, out)
    written = nib.load(out)
    assert written.shape == data.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, affine)
    volume = np.asanyarray(written.dataobj)
    assert set(np.unique(volume)) == {0, 1} and volume.sum() == mask.sum()
    # the mask marks exactly the source voxels the user saw under it
    np.testing.assert_array_equal(np.sort(data[volume == 1]), np.sort(scan.pixels[mask]))
    back = read_scan(out, axis=axis, slice_index=1)
    np.testing.assert_array_equal(back.pixels, mask.astype(np.uint8))


def test_write_nifti_mask_for_4d_source_uses_the_3d_part(tmp_path):
    src = nifti_sample("example4d.nii.gz")
    scan = read_scan(src, frame=1)
    mask = np.zeros(scan.pixels.shape, np.uint8)
    mask[10:20, 30:60] = 1
    out = tmp_path / "mask.nii"
    write_nifti_mask(mask, scan.meta, out)
    written = nib.load(out)
    assert written.shape == (128, 96, 24)
    np.testing.assert_allclose(written.affine, nib.load(src).affine)
    np.testing.assert_array_equal(read_scan(out).pixels, mask)
    with pytest.raises(ScanError, match="not NIfTI"):
        write_nifti_mask(mask, read_scan(dicom_sample("CT_small.dcm")).meta, tmp_path / "x.nii")


# ----------------------------------------------------------------------------- storage helpers


@pytest.mark.parametrize(
    "array",
    [
        np.arange(30, dtype=np.uint8).reshape(5, 6),
        (np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000).astype(np.uint16),
        np.arange(90, dtype=np.uint8).reshape(5, 6, 3),
    ],
)
def test_png_bytes_round_trip_bit_for_bit(array):
    back = from_png_bytes(to_png_bytes(array))
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert to_png_bytes(back) == to_png_bytes(array)


def test_png_bytes_bool_mask_and_bad_dtype():
    mask = np.eye(4, dtype=bool)
    back = from_png_bytes(to_png_bytes(mask))
    assert back.dtype == np.uint8 and back.tolist() == mask.astype(np.uint8).tolist()
    with pytest.raises(ValueError, match="uint8/uint16"):
        to_png_bytes(np.zeros((4, 4), np.int16))


def test_content_hash_depends_on_pixels_display_and_meta():
    a = np.zeros((4, 4), np.uint8)
    h = Scan(a, a, {"x": 1}).content_hash
    assert h == Scan(a.copy(), a.copy(), {"x": 1}).content_hash and len(h) == 64
    assert h != Scan(a.astype(np.uint16), a, {"x": 1}).content_hash
    assert h != Scan(a.reshape(2, 8), a, {"x": 1}).content_hash
    assert h != Scan(a, a + 1, {"x": 1}).content_hash          # another display image
    assert h != Scan(a, a, {"x": 1, "source_format": "dicom"}).content_hash  # another file's meta


def test_a_dicom_with_the_pixels_of_a_png_is_a_scan_of_its_own(tmp_path):
    """The same pixel values from a PNG and from a DICOM (its own window): two identities, each keeping its
    meta and display image."""
    values = (np.arange(32 * 48).reshape(32, 48) % 251).astype(np.uint8)
    png = read_scan(png_bytes(Image.fromarray(values)))
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = "OT", 32, 48, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth = 60, 100
    ds.PixelData = values.tobytes()
    ds.save_as(tmp_path / "same.dcm", enforce_file_format=True)
    dcm = read_scan(tmp_path / "same.dcm")
    np.testing.assert_array_equal(dcm.pixels, png.pixels)
    assert not np.array_equal(dcm.display, png.display)
    assert dcm.content_hash != png.content_hash


def test_scan_info_is_cheap_and_anonymous(tmp_path):
    _, path = identified_ct(tmp_path)
    info = scan_info(path)
    assert info["modality"] == "CT" and info["default_window"] == "soft_tissue"
    assert set(CT_WINDOWS) <= set(info["windows"])
    assert_no_identifiers(json.dumps(info))
    png = scan_info(png_bytes(Image.new("RGB", (10, 7))))
    assert (png["source_format"], png["width"], png["height"], png["n_frames"]) == ("png", 10, 7, 1)

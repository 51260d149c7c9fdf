"""NIfTI intake (.nii, .nii.gz; 2D/3D/4D): one slice along a RAS axis, upright, with the geometry to write a
mask back into the source volume. A .nii.gz is unpacked in a stream that stops at the byte limit.
"""

from __future__ import annotations

import os
import struct
import zlib

import nibabel as nib
import numpy as np

from coreseg.scan_core import (CorruptFileError, Scan, ScanError, TooLargeError, UnsupportedFormatError, build,
                               check_pixels, pick, size_text, window_spec, windows_for)

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # decompressed bytes per step of the stream
_RAS = np.array([[0, 1], [1, 1], [2, 1]], float)  # nibabel orientation of a canonical (RAS) array
_SUPPORTED = "PNG, JPEG, TIFF, BMP, DICOM (.dcm) or NIfTI (.nii, .nii.gz)"


def nifti_version(data: bytes) -> int:
    """1 or 2 when data starts with a single-file NIfTI header (either byte order), else 0."""
    if len(data) < 348:
        return 0
    sizes = {struct.unpack("<i", data[:4])[0], struct.unpack(">i", data[:4])[0]}
    if 348 in sizes and data[344:347] == b"n+1":
        return 1
    if 540 in sizes and data[4:7] == b"n+2":
        return 2
    return 0


def gunzip(data: bytes, max_bytes: int) -> bytearray:
    """Decompress a gzip stream (members one after another) in steps of at most 1 MB of output, stopping with
    TooLargeError as soon as more than max_bytes come out: a small bomb never grows past the limit."""
    out = bytearray()
    rest = data
    try:
        while rest:
            stream = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member, header and trailer checked
            pending = rest
            while True:
                piece = stream.decompress(pending, min(_CHUNK, max_bytes + 1 - len(out)))
                out += piece
                if len(out) > max_bytes:
                    raise TooLargeError(f"The uploaded file unpacks to more than {size_text(max_bytes)}, the limit.")
                pending = stream.unconsumed_tail
                if stream.eof or (not piece and not pending):
                    break
            if not stream.eof:
                raise CorruptFileError("The uploaded file is a damaged gzip archive.")
            rest = stream.unused_data.lstrip(b"\0")  # padding after the last member is allowed
    except zlib.error:
        raise CorruptFileError("The uploaded file is a damaged gzip archive.") from None
    return out  # no copy: nibabel reads a bytearray as it is


def nifti_image(data: bytes, max_bytes: int) -> nib.Nifti1Image:
    """A lazily loaded NIfTI-1/2 image from .nii or .nii.gz bytes."""
    if data[:2] == GZIP_MAGIC:
        data = gunzip(data, max_bytes)
    version = nifti_version(data)
    if not version:
        raise UnsupportedFormatError(f"The uploaded compressed file holds no NIfTI image; upload {_SUPPORTED}.")
    try:
        img = (nib.Nifti1Image if version == 1 else nib.Nifti2Image).from_bytes(data)
    except Exception:  # nibabel raises many types on damaged headers
        raise CorruptFileError("The uploaded NIfTI file is damaged and could not be read.") from None
    if not 2 <= len(img.shape) <= 4:
        raise UnsupportedFormatError(
            f"The uploaded NIfTI image has {len(img.shape)} dimensions; 2D, 3D and 4D images are supported."
        )
    dtype = img.get_data_dtype()
    if dtype.names or dtype.kind not in "uif":
        raise UnsupportedFormatError(f"The uploaded NIfTI image has {dtype} voxels; only real numbers are supported.")
    return img


def spatial_shape(shape) -> tuple[int, ...]:
    """The spatial part of a NIfTI shape: the first three dims (two for a 2D image)."""
    return tuple(int(n) for n in shape[:3])


def _nifti_geometry(img: nib.Nifti1Image) -> dict:
    """How the source volume maps to canonical RAS: orientation, shapes and affines."""
    spatial = spatial_shape(img.shape)
    spatial3 = spatial + (1,) * (3 - len(spatial))
    ornt = nib.io_orientation(img.affine)
    if np.isnan(ornt).any():  # degenerate affine: keep the array as stored
        ornt = _RAS.copy()
    canonical_shape = [0, 0, 0]
    for source_axis, (target_axis, _) in enumerate(ornt):
        canonical_shape[int(target_axis)] = spatial3[source_axis]
    canonical_affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, spatial3)
    return {
        "volume_shape": [int(n) for n in img.shape], "spatial3": spatial3, "reorient": ornt,
        "canonical_shape": canonical_shape, "zooms": np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0)),
        "n_frames": int(img.shape[3]) if len(img.shape) == 4 else 1,
    }  # fmt: skip


def nifti_info(img: nib.Nifti1Image) -> dict:
    """scan_info for a NIfTI image (header only)."""
    geo = _nifti_geometry(img)
    n_slices = list(geo["canonical_shape"])
    return {"source_format": "nifti", "modality": "OT", "volume_shape": geo["volume_shape"],
            "n_frames": geo["n_frames"], "default_frame": 0, "n_slices": n_slices, "default_axis": 2,
            "default_slice": [n // 2 for n in n_slices], **windows_for("volume")}


def read_nifti(img: nib.Nifti1Image, frame, slice_index, axis: int, window, max_pixels: int) -> Scan:
    """Reorient to RAS, take one slice along axis and rotate it upright (recorded for write-back)."""
    if axis not in (0, 1, 2):
        raise ScanError("The slice axis must be 0 (sagittal), 1 (coronal) or 2 (axial).")
    geo = _nifti_geometry(img)
    frame = pick(frame, geo["n_frames"], 0, "frame")
    n_slices = geo["canonical_shape"][axis]
    slice_index = pick(slice_index, n_slices, n_slices // 2, "slice")
    a, b = (i for i in range(3) if i != axis)  # slice array is [a, b]; after rot90 rows ~ b, cols ~ a
    check_pixels(geo["canonical_shape"][a], geo["canonical_shape"][b], max_pixels)
    try:
        volume = np.asanyarray(img.dataobj[..., frame] if img.ndim == 4 else img.dataobj)
    except Exception:  # truncated or damaged voxel data
        raise CorruptFileError("The uploaded NIfTI file is damaged or truncated.") from None
    canonical = nib.orientations.apply_orientation(volume.reshape(geo["spatial3"]), geo["reorient"])
    pixels = np.rot90(np.take(canonical, slice_index, axis=axis))
    if pixels.dtype == np.float64:
        pixels = pixels.astype(np.float32)
    zooms = geo["zooms"]
    return build(
        pixels, window_spec(window, "percentile"), source_format="nifti",
        bit_depth=img.get_data_dtype().itemsize * 8, spacing=[float(zooms[b]), float(zooms[a])],
        frame=frame, n_frames=geo["n_frames"], slice=slice_index, n_slices=n_slices, axis=axis,
        affine=img.affine.tolist(), volume_shape=geo["volume_shape"], canonical_shape=geo["canonical_shape"],
        reorient=geo["reorient"].astype(int).tolist(), rot90=1,
    )  # fmt: skip


def write_nifti_mask(mask: np.ndarray, meta: dict, path: str | os.PathLike) -> None:
    """Write a 2D mask (as shown by ``read_scan``) into a uint8 label volume with the source geometry.

    The volume has the source's spatial shape (the 3D part of a 4D source) and affine; the mask is
    placed at meta's slice/axis after undoing the display rotation and the RAS reorientation.
    ``path`` must end in .nii or .nii.gz.
    """
    if meta.get("source_format") != "nifti":
        raise ScanError("A mask can only be written back into a NIfTI volume; this scan is not NIfTI.")
    m = mask_uint8(mask)
    if m.shape != (meta["height"], meta["width"]):
        raise ValueError(f"mask shape {m.shape} does not match the slice ({meta['height']}, {meta['width']})")
    canonical = np.zeros(meta["canonical_shape"], np.uint8)
    index = [slice(None)] * 3
    index[meta["axis"]] = meta["slice"]
    canonical[tuple(index)] = np.rot90(m, -meta["rot90"])
    to_source = nib.orientations.ornt_transform(_RAS, np.asarray(meta["reorient"], float))
    volume = nib.orientations.apply_orientation(canonical, to_source)
    volume = np.ascontiguousarray(volume).reshape(spatial_shape(meta["volume_shape"]))
    img = nib.Nifti1Image(volume, np.asarray(meta["affine"], float))
    img.set_data_dtype(np.uint8)
    img.header.set_intent("label")
    nib.save(img, os.fspath(path))


def mask_uint8(mask: np.ndarray) -> np.ndarray:
    """A 2D bool/integer label mask as uint8 (values must fit 0–255)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    if m.dtype != bool and m.size and (m.min() < 0 or m.max() > 255 or not np.array_equal(m, np.round(m))):
        raise ValueError("mask values must be integers in 0–255")
    return m.astype(np.uint8)

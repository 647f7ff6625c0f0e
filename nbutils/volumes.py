"""One NIfTI volume: load, check, reorient, put on the MNI 1 mm grid, normalise, slice.

Conventions
-----------
* Arrays are in canonical RAS voxel order (nibabel ``as_closest_canonical``).
* The reference grid is FSL's MNI152 1 mm grid, 182 x 218 x 182, here in RAS order
  (origin at x=-91, y=-126, z=-72 mm). Coronal slices are 182 x 182.
* A coronal slice is shown with superior at the top and the subject's left on the
  left (neurological convention): ``slice2d = rot90(vol[:, y, :])``.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

MNI_SHAPE = (182, 218, 182)
MNI_AFFINE = np.array([[1.0, 0, 0, -91], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])


class DataError(ValueError):
    """Bad input data. The message names the file, what is wrong and what to do."""


def check_header(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file and check what its header alone tells, without reading the voxels: a
    NIfTI image, 3-D (or ``X x Y x Z x 1``), with a finite, invertible affine. Returns the
    (lazy) image; raises :class:`DataError` naming the file, what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path (relative paths in a CSV are "
                        "taken relative to the CSV's folder).")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise DataError(f"{path}: not a readable NIfTI file ({exc.__class__.__name__}: {exc}); "
                        "give a .nii or .nii.gz T1 volume (convert DICOM with dcm2niix).") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: is a {type(img).__name__}, not NIfTI; convert it to .nii.gz "
                        "(e.g. nibabel.save(nibabel.Nifti1Image(data, affine), 'x.nii.gz')).")
    shape = img.shape
    if len(shape) == 4 and shape[3] != 1:
        raise DataError(f"{path}: is a 4-D series of {shape[3]} volumes {shape}; a T1 volume is "
                        "3-D. Extract the volume you want first (e.g. fslroi, or img.slicer[..., i]).")
    if len(shape) not in (3, 4):
        raise DataError(f"{path}: has {len(shape)} dimensions {shape}; expected a 3-D volume.")
    affine = img.affine
    axes = np.linalg.svd(affine[:3, :3], compute_uv=False) if np.isfinite(affine).all() else np.zeros(3)
    if axes.min() <= 1e-6 * axes.max():  # voxel sizes in any unit pass; a flat or NaN axis does not
        raise DataError(f"{path}: its affine (voxel → mm) is not finite or maps an axis to nothing; the file "
                        "has no usable orientation. Write it again from its registration step.")
    need = int(getattr(img.dataobj, "offset", 0)) + int(np.prod(shape)) * img.get_data_dtype().itemsize
    if _stored_bytes(path, need) < need:
        raise DataError(f"{path}: the file is truncated or corrupt (its voxels end before its header says); "
                        "copy or export it again.")
    return img


def _stored_bytes(path: Path, need: int) -> int:
    """How many bytes of the (uncompressed) image ``path`` holds, up to ``need``. A ``.nii`` file's
    size; a gzip file's own record of its length (its last 4 bytes) when that equals ``need``; else
    (another member layout, another compression nibabel reads: ``.bz2``, ``.zst``) the bytes that
    actually decompress (a truncated file stops early)."""
    name = path.name.lower()
    if name.endswith(".nii"):
        return path.stat().st_size
    if name.endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == need % 2 ** 32:
                return need
    got = 0
    try:
        with nib.openers.ImageOpener(str(path), "rb") as f:
            while got < need and (chunk := f.read(1 << 22)):
                got += len(chunk)
    except Exception:  # EOFError, zlib.error, OSError, the decompressors' own errors: cut short or corrupt
        pass
    return got


def load_volume(path: str | Path) -> nib.Nifti1Image:
    """Load a 3-D NIfTI volume in canonical RAS orientation, with finite float32 data.

    Refuses (with :class:`DataError`) what :func:`check_header` refuses (files that are not
    NIfTI, real 4-D series, no usable affine), truncated or corrupt files, NaN/Inf voxels and
    constant volumes. A trailing singleton 4th axis (``X x Y x Z x 1``) is squeezed.
    """
    path = Path(path)
    img = check_header(path)
    if len(img.shape) == 4:
        img = img.slicer[..., 0]
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise DataError(f"{path}: the file is truncated or corrupt ({exc.__class__.__name__}: "
                        f"{exc}); copy or export it again.") from exc
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DataError(f"{path}: {bad} voxels are NaN or Inf; fix the preprocessing step that "
                        "made them (or set them to 0 with numpy.nan_to_num) and try again.")
    if float(data.max()) == float(data.min()):
        raise DataError(f"{path}: the volume is constant (every voxel = {float(data.min()):g}); "
                        "it holds no image. Check that the right file was exported.")
    img = nib.Nifti1Image(data, img.affine, img.header)
    return nib.as_closest_canonical(img)


def normalisation_range(data: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> tuple[float, float]:
    """(lo, hi): the volume's ``low_pct`` percentile (background) and the ``high_pct``
    percentile of its foreground (voxels above the Otsu threshold)."""
    from skimage.filters import threshold_otsu

    data = np.asarray(data, dtype=np.float32)
    lo = float(np.percentile(data, low_pct))
    fg = data[data > threshold_otsu(data)]
    hi = float(np.percentile(fg, high_pct)) if fg.size else float(data.max())
    return lo, (hi if hi > lo else float(data.max()))


def robust_normalise(data: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Map intensities to [0, 1]: lo -> 0 and hi -> 1 (see :func:`normalisation_range`), clipped."""
    lo, hi = normalisation_range(data, low_pct, high_pct)
    return np.clip((np.asarray(data, np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def regrid(data: np.ndarray, vox: np.ndarray, shape: tuple, order: int = 1) -> np.ndarray:
    """``data`` resampled onto a grid of ``shape`` whose voxel v reads ``data`` at ``vox @ v``
    (a 4 x 4 voxel-to-voxel affine; zeros outside). A shift by whole voxels (within 1e-3 voxel) is
    copied, which for an exact shift is what interpolating at whole voxels gives."""
    shift = vox[:3, 3]
    if not (np.allclose(vox[:3, :3], np.eye(3), atol=1e-4) and np.allclose(shift, np.round(shift), atol=1e-3)):
        return ndimage.affine_transform(data, vox[:3, :3], shift, output_shape=tuple(shape),
                                        order=order, cval=0.0).astype(np.float32)
    out = np.zeros(shape, np.float32)
    s = np.round(shift).astype(int)
    src = [slice(max(s[i], 0), min(s[i] + shape[i], data.shape[i])) for i in range(3)]
    dst = [slice(sl.start - s[i], sl.stop - s[i]) for i, sl in enumerate(src)]
    if all(sl.stop > sl.start for sl in src):
        out[tuple(dst)] = data[tuple(src)]
    return out


def to_mni_grid(img: nib.Nifti1Image, source: str | Path = "", order: int = 1) -> np.ndarray:
    """Resample a canonical volume onto the MNI 1 mm 182 x 218 x 182 grid (zeros outside).

    The volume must already be *registered* to MNI space (its affine maps voxels to MNI
    millimetres): this only changes the grid. Grids that differ by a whole-voxel shift
    (e.g. nilearn's 197 x 233 x 189 template, or a slab) are copied exactly; others are
    interpolated (``order`` 1 = trilinear).
    """
    data = np.asarray(img.dataobj, dtype=np.float32)
    out = regrid(data, np.linalg.inv(img.affine) @ MNI_AFFINE, MNI_SHAPE, order)  # MNI voxel -> source voxel
    inside, total = float(np.abs(out).sum()), float(np.abs(data).sum())
    # the resampled grid has ~1 voxel per mm^3 of the source: compare masses per mm^3
    voxel_mm3 = abs(float(np.linalg.det(img.affine[:3, :3])))
    if total > 0 and inside < 0.5 * total * voxel_mm3:
        raise DataError(f"{source or 'volume'}: less than half of the image falls inside the MNI "
                        "182x218x182 grid; it does not look registered to MNI space. Register it "
                        "to MNI152 1 mm first (e.g. FSL flirt/fnirt or ANTs), then try again.")
    return out


def coronal_slice(vol: np.ndarray, y: int) -> np.ndarray:
    """Coronal slice ``y`` of a RAS volume, superior up, subject's left on the left."""
    return np.rot90(vol[:, y, :])


def coronal_to_volume(slice2d: np.ndarray) -> np.ndarray:
    """Inverse of :func:`coronal_slice`: the (x, z) plane of a RAS volume."""
    return np.rot90(slice2d, k=-1)


def brain_mask(slice2d: np.ndarray, threshold: float) -> np.ndarray:
    """Filled foreground mask of a normalised slice (smoothed, thresholded, holes filled)."""
    smooth = ndimage.gaussian_filter(np.asarray(slice2d, np.float32), 1.5)
    mask = smooth > threshold
    mask = ndimage.binary_closing(mask, iterations=2)
    return ndimage.binary_fill_holes(mask)

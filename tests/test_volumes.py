import bz2
import gzip
import re

import nibabel as nib
import numpy as np
import pytest

from nbutils.volumes import (MNI_AFFINE, MNI_SHAPE, DataError, check_header, coronal_slice, coronal_to_volume,
                             load_volume, regrid, robust_normalise, to_mni_grid)
from conftest import blob_volume


def test_loads_3d_as_canonical_float(write_volume):
    img = load_volume(write_volume("a.nii.gz"))
    assert img.shape == MNI_SHAPE
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.get_data_dtype() == np.float32


def test_radiological_orientation_gives_the_same_voxels(write_volume):
    ras = blob_volume(3)
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = MNI_SHAPE[0] - 1
    las = nib.Nifti1Image(np.asarray(ras.dataobj)[::-1].copy(), ras.affine @ flip)
    assert nib.aff2axcodes(las.affine)[0] == "L"
    a = load_volume(write_volume("ras.nii.gz", ras)).get_fdata()
    b = load_volume(write_volume("las.nii.gz", las)).get_fdata()
    np.testing.assert_array_equal(a, b)


def test_singleton_fourth_axis_is_squeezed(write_volume):
    img = blob_volume()
    four = nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine)
    assert load_volume(write_volume("a4.nii.gz", four)).shape == MNI_SHAPE


@pytest.mark.parametrize("case, message", [
    ("text", "not a readable NIfTI"),
    ("truncated", "truncated or corrupt"),
    ("series", "4-D series of 3 volumes"),
    ("nan", "NaN or Inf"),
    ("constant", "constant"),
    ("missing", "no such file"),
])
def test_bad_volumes_are_refused_with_the_file_named(tmp_path, write_volume, case, message):
    path = tmp_path / f"{case}.nii.gz"
    data = np.asarray(blob_volume().dataobj)
    if case == "text":
        path.write_text("this is not an image")
    elif case == "truncated":
        full = write_volume("full.nii.gz")
        raw = full.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif case == "series":
        nib.save(nib.Nifti1Image(np.stack([data] * 3, -1), MNI_AFFINE), str(path))
    elif case == "nan":
        data = data.copy()
        data[5, 5, 5] = np.nan
        nib.save(nib.Nifti1Image(data, MNI_AFFINE), str(path))
    elif case == "constant":
        nib.save(nib.Nifti1Image(np.full((8, 8, 8), 7, np.float32), MNI_AFFINE), str(path))
    with pytest.raises(DataError) as err:
        load_volume(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("case, message", [
    ("series", "4-D series of 3 volumes"),
    ("five", "has 5 dimensions"),
    ("singular", "affine (voxel → mm) is not finite or maps an axis to nothing"),
    ("truncated", "the file is truncated"),
    ("truncated.gz", "the file is truncated"),
])
def test_the_header_alone_refuses_what_it_can_tell(tmp_path, case, message):
    path = tmp_path / (f"{case}.nii" if case != "truncated.gz" else "cut.nii.gz")
    data = np.ones((4, 4, 4), np.float32)
    if case == "series":
        nib.save(nib.Nifti1Image(np.stack([data] * 3, -1), MNI_AFFINE), str(path))
    elif case == "five":
        nib.save(nib.Nifti1Image(data[..., None, None].repeat(2, 4), MNI_AFFINE), str(path))
    elif case == "singular":
        img = nib.Nifti1Image(data, None)
        img.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=2)  # a flat y axis (a broken export)
        nib.save(img, str(path))
    elif case == "truncated":
        nib.save(nib.Nifti1Image(data, MNI_AFFINE), str(path))
        path.write_bytes(path.read_bytes()[:-10])
    else:  # a .nii.gz cut in its voxels: its header still reads
        noisy = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)  # does not compress away
        nib.save(nib.Nifti1Image(noisy, MNI_AFFINE), str(path))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(message)) as err:
        check_header(path)
    assert str(path) in str(err.value)
    if case != "singular":  # load_volume refuses it as well (it reads the voxels after the header)
        with pytest.raises(DataError, match=re.escape(message)):
            load_volume(path)
    good = tmp_path / "good.nii"
    nib.save(nib.Nifti1Image(data[..., None], MNI_AFFINE), str(good))
    assert check_header(good).shape == (4, 4, 4, 1)
    packed = tmp_path / "packed.nii.bz2"  # another compression nibabel reads: whole, then cut short
    packed.write_bytes(bz2.compress(good.read_bytes()))
    assert check_header(packed).shape == (4, 4, 4, 1)
    packed.write_bytes(packed.read_bytes()[:-20])  # bzip2 cut in its one block: not even the header reads
    with pytest.raises(DataError, match="packed.nii.bz2: not a readable NIfTI"):
        check_header(packed)
    tiny = tmp_path / "tiny.nii.gz"  # 0.01 mm voxels: an odd unit, not a broken affine
    nib.save(nib.Nifti1Image(data, np.diag([0.01, 0.01, 0.01, 1.0])), str(tiny))
    assert check_header(tiny).shape == (4, 4, 4)


def test_truncated_gzip_really_is_truncated(write_volume):
    raw = write_volume("f.nii.gz").read_bytes()
    with pytest.raises(EOFError):
        gzip.decompress(raw[: len(raw) // 2])


def test_whole_voxel_shift_is_copied_exactly():
    # nilearn's template grid: 197 x 233 x 189 with origin (-98, -134, -72); FSL's grid sits inside
    big_affine = np.array([[1.0, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((197, 233, 189)).astype(np.float32)
    out = to_mni_grid(nib.Nifti1Image(data, big_affine))
    assert out.shape == MNI_SHAPE
    np.testing.assert_array_equal(out, data[7:189, 8:226, 0:182])


@pytest.mark.parametrize("shift", [(3, -2, 0), (-5, 4, 7), (0, 0, 0)])
@pytest.mark.parametrize("order", [0, 1])
def test_a_whole_voxel_shift_is_regridded_as_interpolation_would(shift, order, monkeypatch):
    """Both ways between grids (onto MNI and back onto the input's, larger and smaller): the exact
    copy equals trilinear or nearest interpolation at those whole voxels, zeros outside."""
    data = np.random.default_rng(1).random((20, 17, 23)).astype(np.float32)
    vox = np.eye(4)
    vox[:3, 3] = shift
    from scipy import ndimage
    for shape in ((20, 17, 23), (25, 12, 30)):
        want = ndimage.affine_transform(data, vox[:3, :3], vox[:3, 3], output_shape=shape, order=order, cval=0.0)
        np.testing.assert_array_equal(regrid(data, vox, shape, order), want)
    import nbutils.volumes as volumes
    monkeypatch.setattr(volumes.ndimage, "affine_transform", lambda *a, **k: pytest.fail("interpolated a shift"))
    regrid(data, vox, (25, 12, 30), order)  # the copy, not the interpolation
    monkeypatch.undo()
    half = np.diag([0.5, 0.5, 0.5, 1.0])  # not a shift: interpolated
    np.testing.assert_allclose(regrid(data, half, (30, 30, 30), order),
                               ndimage.affine_transform(data, half[:3, :3], half[:3, 3], output_shape=(30, 30, 30),
                                                        order=order, cval=0.0))


def test_other_grids_are_interpolated_onto_mni():
    img = blob_volume()
    vol = np.asarray(img.dataobj)
    half = nib.Nifti1Image(vol[::2, ::2, ::2].copy(), MNI_AFFINE @ np.diag([2.0, 2, 2, 1]))
    out = to_mni_grid(half)
    assert out.shape == MNI_SHAPE
    inside = vol > 0
    assert np.abs(out - vol)[inside].mean() < 0.1 * vol[inside].mean()


def test_unregistered_volume_is_refused():
    img = blob_volume()
    far = img.affine.copy()
    far[:3, 3] += 400  # 40 cm away from MNI space
    with pytest.raises(DataError, match="registered to MNI"):
        to_mni_grid(nib.Nifti1Image(np.asarray(img.dataobj), far), source="far.nii.gz")


def test_robust_normalise_maps_to_unit_range():
    vol = np.asarray(blob_volume().dataobj) * 3 + 100
    out = robust_normalise(vol)
    assert out.min() == 0 and out.max() == 1
    assert np.median(out[vol > 1500]) > 0.9  # the bright tissue sits near the top
    assert np.median(out[vol < 150]) == 0  # background (100 after the offset) goes to 0


def test_robust_normalise_ignores_gain_and_offset():
    vol = np.asarray(blob_volume().dataobj)
    np.testing.assert_allclose(robust_normalise(vol), robust_normalise(vol * 7.5 + 30), atol=1e-4)


def test_coronal_slice_orientation_and_inverse():
    vol = np.zeros(MNI_SHAPE, np.float32)
    vol[0, 100, -1] = 1  # subject's right-most x=0 is LEFT in RAS voxels; z top = superior
    s = coronal_slice(vol, 100)
    assert s.shape == (182, 182)
    assert s[0, 0] == 1  # superior row first, subject's left (low x) on the left
    np.testing.assert_array_equal(coronal_to_volume(s), vol[:, 100, :])
